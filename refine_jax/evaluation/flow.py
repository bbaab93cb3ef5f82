"""Flow evaluation: EPE, the 1 / 3 / 5 px rates and KITTI's Fl over every consecutive pair, per
ground-truth speed bin, beside zero flow; and the label-free diagnostics (cycle pass, photometric
error) that need no ground truth, beside zero flow through the same check.

Rows are sums per pair, so that processes can gather them (parallel.gather_rows) and divide once.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from refine_jax import parallel
from refine_jax.evaluation import proxies
from refine_jax.evaluation.common import label_config
from refine_jax.speed import bin_names, bin_of
from refine_jax.settings import EvalConfig


def flow_sums(pred: np.ndarray, gt: np.ndarray, prefix: str, known: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Sums that give EPE, the px rates and KITTI's Fl (outliers: EPE > 3 px and > 5 % of |gt|)
    over the pixels with known GT (`known`, default all), and EPE per GT speed bin, when divided."""
    sel = slice(None) if known is None else np.asarray(known, bool).ravel()
    epe = np.linalg.norm(pred.astype(np.float64) - gt, axis=-1).ravel()[sel]
    gt_mag = np.linalg.norm(gt, axis=-1).ravel()[sel]
    which = bin_of(gt_mag)
    out = {f"{prefix}epe": epe.sum(), f"{prefix}1px": (epe < 1).sum(), f"{prefix}3px": (epe < 3).sum(),
           f"{prefix}5px": (epe < 5).sum(), f"{prefix}fl": ((epe > 3) & (epe > 0.05 * gt_mag)).sum()}
    for k, name in enumerate(bin_names()):
        out[f"{prefix}epe@{name}"] = epe[which == k].sum()
    return out


def flow_row(fw, gt, known: Optional[np.ndarray] = None) -> Dict[str, float]:
    """One pair with ground truth: the sums of `flow_sums` for the model and for zero flow over the
    pixels whose GT is known (`known` (H, W) bool, default all), and the pixel counts."""
    sel = slice(None) if known is None else np.asarray(known, bool).ravel()
    row = {**flow_sums(fw, gt, "", known), **flow_sums(np.zeros_like(gt), gt, "zero:", known),
           "pixels": float(np.linalg.norm(gt, axis=-1).ravel()[sel].size), "all_pixels": float(gt[..., 0].size)}
    which = bin_of(np.linalg.norm(gt, axis=-1).ravel()[sel])
    for k, name in enumerate(bin_names()):
        row[f"pixels@{name}"] = float((which == k).sum())
    return row


def label_free_row(valid, color) -> Dict[str, float]:
    """One pair, any footage: pixels (H, W) `valid` that pass the cycle check, the sum of their
    colour error (`color` on the [-0.5, 0.5] scale) in grey levels, and the pixel count."""
    valid = np.asarray(valid, bool)
    return {"passed": float(valid.sum()), "photo_sum": float(255.0 * np.asarray(color)[valid].sum()),
            "all_pixels": float(valid.size)}


def flow_metrics(rows: List[Dict[str, float]], prefix: str) -> Dict[str, float]:
    total = lambda k: sum(r[k] for r in rows)
    n = total("pixels")
    out = {k: total(prefix + k) / n for k in ("epe", "1px", "3px", "5px", "fl")}
    for name in bin_names():
        m = total(f"pixels@{name}")
        out[f"epe@{name}"] = total(f"{prefix}epe@{name}") / m if m else float("nan")
    return out


def label_free_metrics(rows: List[Dict[str, float]]) -> Dict[str, float]:
    """cycle_pass (share of all pixels) and photometric_error (grey levels, over those passing)."""
    passed, photo = sum(r["passed"] for r in rows), sum(r["photo_sum"] for r in rows)
    return {"cycle_pass": passed / sum(r["all_pixels"] for r in rows),
            "photometric_error": photo / passed if passed else float("nan")}


@functools.lru_cache(maxsize=None)
def _zero_flow_check(check):
    """The labelling check applied to zero flow, jitted: (valid, colour error) of uint8 image pairs
    (B, H, W, 3). The label-free diagnostics' trivial baseline: zero motion is perfectly
    cycle-consistent, so only its colour error decides which pixels pass."""
    from refine_jax.labels import cycle

    def fn(im1, im2):
        zero = jnp.zeros((*im1.shape[:3], 2), jnp.float32)
        valid, _, color = cycle.flow_cycle_check(zero, zero, im1, im2, check)
        return valid, color
    return jax.jit(fn)


def zero_flow_rows(labeler, frames: np.ndarray) -> List[Dict[str, float]]:
    """`label_free_row` of zero flow on every consecutive pair of uint8 frames (T, H, W, 3), in
    chunks of the labelling batch."""
    fn, out, bs, pairs = _zero_flow_check(labeler.check), [], max(labeler.lc.batch, 1), len(frames) - 1
    for k in range(0, pairs, bs):
        end = min(k + bs, pairs)
        valid, color = map(np.asarray, fn(frames[k:end], frames[k + 1:end + 1]))
        out += [label_free_row(v, c) for v, c in zip(valid, color)]
    return out


def evaluate(loaded, clips, ec: EvalConfig, config) -> dict:
    """{'model', 'baseline' (zero flow), 'bins' (pixel share per GT speed bin), 'example',
    'proxy_rows' (per clip), 'source_rows' (per source clip)} over every consecutive pair of
    `clips` (this process's share; rows are gathered from all). EPE and the px rates come from the
    clips with ground-truth flow; the label-free diagnostics (with `eval.label_free`) and the
    proxies (with `eval.proxies`; evaluation/proxies.py) from every clip, so footage without
    ground truth still gets a report."""
    from refine_jax.labels.flow import FlowLabeler
    mesh = parallel.make_mesh(1, local=True)
    pad_mode = "sintel" if ec.pad_mode == "auto" else ec.pad_mode  # run() resolves 'auto'
    labeler = FlowLabeler(loaded.cfg, loaded.variables, label_config(config, ec.iters or 32, pad_mode), mesh)
    rows, free, zero_free, proxy_rows, example = [], [], [], [], None
    source, threshold, batch = [], None, 0
    for c in clips:
        t = len(c.frames)
        if not batch:  # the first clip's pairs (with the proxies': one call per clip) set the batch
            batch = labeler.batch_for(proxies.pair_count(t) if ec.proxies else t - 1)
            if ec.proxies and ec.source_clips:  # before any clip's proxies: fb_atc's threshold is set there
                source, threshold = proxies.source_rows(labeler, *c.frames.shape[1:3], ec.source_clips, batch)
        if ec.proxies:
            first, second, known = proxies.proxy_pairs(c)
        else:
            first, second = c.frames[:-1], c.frames[1:]
        fw, valid, color, fb = labeler.pairs(first, second, f"frames of {c.video_id}", batch=batch)
        if ec.proxies:
            proxy_rows.append(proxies.clip_row(fw, fb, known, c.frames, threshold))
        fw, valid, color = fw[:t - 1], valid[:t - 1], color[:t - 1]
        if ec.label_free:
            free += [label_free_row(v, col) for v, col in zip(valid, color)]
            zero_free += zero_flow_rows(labeler, c.frames)
        if c.flow is not None:
            rows += [flow_row(fw[t], c.flow[t], None if c.flow_gt_known is None else c.flow_gt_known[t])
                     for t in range(len(fw))]
        example = fw[0] if example is None else example
    z = np.zeros((1, 1, 2))
    rows = parallel.gather_rows(rows, flow_row(z, z))
    proxy_rows = parallel.gather_rows(proxy_rows, dict.fromkeys(proxies.ROW_KEYS, 0.0)) if ec.proxies else []
    free_template = label_free_row(np.zeros((1, 1), bool), np.zeros((1, 1)))
    free, zero_free = parallel.gather_rows(free, free_template), parallel.gather_rows(zero_free, free_template)
    if not rows and not free:
        raise ValueError("no evaluation clip carries ground-truth flow and the label-free diagnostics are "
                         "off (eval.label_free): there is nothing to measure")
    model = {**(flow_metrics(rows, "") if rows else {}), **(label_free_metrics(free) if free else {}),
             **proxies.means(proxy_rows), **proxies.means(source)}
    baseline = {**(flow_metrics(rows, "zero:") if rows else {}),
                **(label_free_metrics(zero_free) if zero_free else {})}
    n = sum(r["pixels"] for r in rows)
    return {"model": model, "baseline": baseline,
            "bins": {name: sum(r[f"pixels@{name}"] for r in rows) / n for name in bin_names()} if n else {},
            "gt_known": n / sum(r["all_pixels"] for r in rows) if rows else 0.0, "example": example,
            "proxy_rows": proxy_rows, "source_rows": source}
