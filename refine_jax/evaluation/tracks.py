"""Track evaluation: TAP-Vid metrics in the configured query mode, ATE / MTE, survival and ATE per
ground-truth speed bin, beside the query point held still; and the label-free diagnostics (cycle
pass of grid queries, photometric error of the passing tracks), beside the points held still.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List

import numpy as np

from refine_jax import parallel
from refine_jax.evaluation import metrics, proxies, track_proxies
from refine_jax.evaluation.common import label_config
from refine_jax.speed import bin_names, bin_of
from refine_jax.settings import EvalConfig


def track_bins(gt, vis) -> np.ndarray:
    """(N,) GT speed bin of each track: mean displacement per frame over consecutive visible frames."""
    step = np.linalg.norm(np.diff(gt, axis=1), axis=-1)
    both = vis[:, 1:] & vis[:, :-1]
    speed = np.where(both.any(1), (step * both).sum(1) / np.maximum(both.sum(1), 1), 0.0)
    return bin_of(speed)


def track_row(q, gt, vis, pred, pred_vis, ec: EvalConfig, hw) -> Dict[str, float]:
    if ec.tapvid_256:
        gt, pred = metrics.rescale_tracks(gt, hw), metrics.rescale_tracks(pred, hw)
    m = metrics.tapvid_metrics(q, gt, ~vis, pred, ~pred_vis, ec.query_mode)
    m.update(metrics.ate_mte(gt, pred, q, vis))
    m["survival"] = metrics.survival(gt, pred, q)
    err = metrics.trajectory_errors(gt, pred, q, vis)
    which = track_bins(gt, vis)
    for k, name in enumerate(bin_names()):
        sel = (which == k) & np.isfinite(err)
        m[f"ate_sum@{name}"], m[f"tracks@{name}"] = float(err[sel].sum()), float(sel.sum())
    return m


def track_metrics(rows: List[Dict[str, float]]) -> Dict[str, float]:
    out = {}
    for k in rows[0]:
        if "@" in k:
            continue
        out[k] = float(np.nanmean([r[k] for r in rows]))
    for name in bin_names():
        n = sum(r[f"tracks@{name}"] for r in rows)
        out[f"ate@{name}"] = sum(r[f"ate_sum@{name}"] for r in rows) / n if n else float("nan")
    return out


def _sample_colours(frame: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear colours (N, 3) of a uint8 frame at (N, 2) pixel points (clamped to the frame)."""
    h, w = frame.shape[:2]
    x = np.clip(xy[:, 0], 0, w - 1)
    y = np.clip(xy[:, 1], 0, h - 1)
    x0, y0 = np.minimum(np.floor(x).astype(int), w - 2), np.minimum(np.floor(y).astype(int), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    f = frame.astype(np.float64)
    return ((1 - fx) * (1 - fy) * f[y0, x0] + fx * (1 - fy) * f[y0, x0 + 1]
            + (1 - fx) * fy * f[y0 + 1, x0] + fx * fy * f[y0 + 1, x0 + 1])


def _photo_sum(frames: np.ndarray, tracks: np.ndarray) -> float:
    """Sum over tracks (N, S, 2) and frames 1..S-1 of the mean absolute colour difference (grey
    levels) from the track's colour in frame 0."""
    ref = _sample_colours(frames[0], tracks[:, 0])
    return sum(float(np.abs(_sample_colours(frames[t], tracks[:, t]) - ref).mean(-1).sum())
               for t in range(1, tracks.shape[1]))


TRACK_FREE_SUMS = ("queries", "passed", "photo_sum", "photo_n", "still_photo_sum", "still_photo_n")


def track_label_free(windows, clip) -> Dict[str, float]:
    """Grid queries on every labelling window of the clip (`windows`: TrackLabeler.estimate's
    output), any footage: how many pass the cycle check, the photometric error sums (grey levels)
    of the passing tracks against their query's colour, and of every query held still (the
    trivial baseline, which passes any cycle check)."""
    out = dict.fromkeys(TRACK_FREE_SUMS, 0.0)
    for st, tracks, keep, _, _, _ in windows:
        frames = clip.frames[st:st + tracks.shape[1]]
        still = np.repeat(tracks[:, :1], tracks.shape[1], axis=1)
        out["queries"] += len(keep)
        out["passed"] += int(keep.sum())
        out["photo_sum"] += _photo_sum(frames, tracks[keep])
        out["photo_n"] += int(keep.sum()) * (tracks.shape[1] - 1)
        out["still_photo_sum"] += _photo_sum(frames, still)
        out["still_photo_n"] += len(keep) * (tracks.shape[1] - 1)
    return out


def track_label_free_metrics(rows: List[Dict[str, float]], still: bool = False) -> Dict[str, float]:
    """cycle_pass (share of grid queries) and photometric_error (grey levels, over the passing
    tracks' frames) of the model, or with `still` of the queries held still."""
    total = lambda k: sum(r[k] for r in rows)
    if still:
        n = total("still_photo_n")
        return {"cycle_pass": 1.0 if total("queries") else float("nan"),
                "photometric_error": total("still_photo_sum") / n if n else float("nan")}
    return {"cycle_pass": total("passed") / max(total("queries"), 1),
            "photometric_error": total("photo_sum") / total("photo_n") if total("photo_n") else float("nan")}


def evaluate(loaded, clips, ec: EvalConfig, config) -> dict:
    """{'model', 'baseline' (query held still, always visible), 'bins' (track share per GT speed
    bin), 'example'}: TAP-Vid and ATE metrics per clip with ground-truth tracks, averaged over the
    clips of every process; the label-free diagnostics (with `eval.label_free`) over every clip,
    so footage without ground truth still gets a report; with `eval.proxies`, 'proxy_rows' (per
    clip) and 'source_rows' (per source clip) of evaluation/track_proxies.py."""
    from refine_jax.labels.tracks import TrackLabeler
    from refine_jax.models.pips_chain import ChainedTracker
    tracker = ChainedTracker(dataclasses.replace(loaded.cfg, stride=ec.stride), loaded.variables,
                             iters=ec.iters or 6)
    labeler = None
    if ec.label_free or ec.proxies:
        lc = label_config(config, ec.iters or 6)  # grid queries: they need no ground truth
        lc = dataclasses.replace(lc, stride=ec.stride, use_gt_points=False, grid=lc.grid or 12,
                                 densify_window=0, max_queries=max(lc.grid or 12, 1) ** 2)
        labeler = TrackLabeler(loaded.cfg, loaded.variables, lc, parallel.make_mesh(1, local=True))
    rows, base_rows, free, proxy_rows, example, clips_hw = [], [], [], [], None, None
    for c in clips:
        clips_hw = c.frames.shape[1:3]
        windows = list(labeler.estimate(c)) if labeler is not None else []
        if ec.label_free:
            free.append(track_label_free(windows, c))
        if ec.proxies:
            proxy_rows.append(track_proxies.clip_row(tracker, windows, c, loaded.cfg.S))
        if c.tracks is None:
            continue
        q, hw = c.query_points, c.frames.shape[1:3]
        out = tracker(c.frames, q)
        rows.append(track_row(q, c.tracks, c.visible, out["tracks"], out["visible"], ec, hw))
        still = np.repeat(q[:, None, 1:], c.tracks.shape[1], axis=1)
        base_rows.append(track_row(q, c.tracks, c.visible, still, np.ones_like(c.visible), ec, hw))
        example = example or (c, out)
    q, z, v = np.zeros((1, 3)), np.zeros((1, 2, 2)), np.ones((1, 2), bool)
    template = track_row(q, z, v, z, v, ec, (1, 1))
    rows, base_rows = parallel.gather_rows(rows, template), parallel.gather_rows(base_rows, template)
    free = parallel.gather_rows(free, dict.fromkeys(TRACK_FREE_SUMS, 0.0))
    proxy_rows = parallel.gather_rows(proxy_rows, dict.fromkeys(track_proxies.ROW_KEYS, 0.0))
    source = (track_proxies.source_rows(tracker, *clips_hw, ec.source_clips, loaded.cfg.S)
              if ec.proxies and ec.source_clips and clips_hw else [])
    if not rows and not free and not proxy_rows:
        raise ValueError("no evaluation clip carries ground-truth tracks and the label-free diagnostics and "
                         "proxies are off (eval.label_free, eval.proxies): there is nothing to measure")
    model = {**(track_metrics(rows) if rows else {}), **(track_label_free_metrics(free) if free else {}),
             **proxies.means(proxy_rows), **proxies.means(source)}
    baseline = {**(track_metrics(base_rows) if base_rows else {}),
                **(track_label_free_metrics(free, still=True) if free else {})}
    n = sum(sum(r[f"tracks@{name}"] for name in bin_names()) for r in rows)
    return {"model": model, "baseline": baseline,
            "bins": {name: sum(r[f"tracks@{name}"] for r in rows) / n for name in bin_names()} if n else {},
            "example": example, "proxy_rows": proxy_rows, "source_rows": source}
