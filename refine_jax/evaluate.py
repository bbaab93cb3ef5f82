"""The `eval` stage: did refinement help, and why.

Models: before = config.init; after = TRAINED/model (the train stage's export); oracle =
WORKDIR/oracle/model when the oracle stage ran (the same training on ground truth: the ceiling for
the pseudo-labels); and the trivial baseline, computed from the ground truth alone: zero flow, or
the query point held still with every point visible. A collapse towards no motion therefore shows
up as 'after' drifting towards the baseline, and per speed bin.

RAFT: every consecutive pair of every clip at full resolution; EPE over all pixels (Sintel "all";
only the pixels with known ground truth where the data says flow_valid marks them, as Middlebury)
and the 1/3/5 px rates, also per ground-truth speed bin (|flow| < 1, 1-4, 4-16, >= 16 px).
PIPs: chained tracking of every clip from the GT query points; TAP-Vid metrics in the configured
query mode (at the stored resolution, or rescaled to 256x256 with `eval.tapvid_256`), ATE/MTE,
survival, and ATE per ground-truth speed bin (mean px/frame over the clip).
Label-free diagnostics, computable on a user's footage without ground truth, for every model:
the share of estimates that pass the labelling cycle check (config.label) and their photometric
error (mean absolute colour difference in grey levels between a pixel / query and where the model
sends it). Consistency alone cannot tell a collapse (zero flow is perfectly consistent), which is
why the photometric error stands beside it, and zero motion through the same check is their
baseline. On clips without ground truth they are all the report holds (primary: cycle_pass).
Label precision comes from the label manifest: yield and the GT error of kept labels against all
estimates, overall and per speed bin.

Writes WORKDIR/eval/metrics.json, report.md (every metric with its direction and whether it
improved) and PNG figures.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import os
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from refine_jax import checkpoints, fs, metrics, parallel, viz
from refine_jax import settings
from refine_jax.data import shards, sources

SPEED_BINS = (1.0, 4.0, 16.0)  # px (flow) or px/frame (tracks): [0,1), [1,4), [4,16), [16,inf)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    data: str = ""                 # shard folder(s) with GT; default config.data.videos
    iters: int = 0                 # RAFT 32 / PIPs 6 when 0
    stride: int = 4                # PIPs
    query_mode: str = "first"
    tapvid_256: bool = False
    max_clips: int = 0             # 0 = all
    curve: bool = True
    label_free: bool = True        # the cycle-check and photometric diagnostics
    # RAFT's InputPadder mode: 'auto' pads as the official evaluation of the data does ('kitti', all
    # rows below, for KITTI shard folders; 'sintel', split evenly, for everything else)
    pad_mode: str = "auto"

    @classmethod
    def from_config(cls, c) -> "EvalConfig":
        return settings.from_section(cls, c, "eval")


def bin_names(bins: Sequence[float] = SPEED_BINS) -> List[str]:
    edges = (0.0, *bins, np.inf)
    return [f"[{lo:g},{hi:g})" for lo, hi in zip(edges[:-1], edges[1:])]


def _bin_of(values: np.ndarray, bins: Sequence[float] = SPEED_BINS) -> np.ndarray:
    return np.digitize(values, bins)


LOWER_IS_BETTER = ("epe", "fl", "ate", "mte", "photometric_error")


def lower_is_better(metric: str) -> bool:
    """Direction of a metric by name: errors are lower-better, rates and accuracies higher-better."""
    return metric.split("@")[0] in LOWER_IS_BETTER


def _clips(ec: EvalConfig, config) -> List[shards.Clip]:
    out = []
    for d in sources.split_sources(ec.data or config.data.videos):
        for c in sources.read_clips(d):
            out.append(c)
            if ec.max_clips and len(out) >= ec.max_clips:
                return out
    return out


def _label_config(config, iters: int, pad_mode: str = "sintel"):
    from refine_jax.labels.generate import LabelConfig
    lc = LabelConfig.from_config(config.get("label", {}))
    return dataclasses.replace(lc, iters=iters, pad_mode=pad_mode)


PAD_MODES = ("auto", "sintel", "kitti")


def resolve_pad_mode(ec: EvalConfig, config) -> str:
    """The padding the evaluation runs RAFT with: eval.pad_mode, or for 'auto' 'kitti' when every
    evaluation source is a KITTI shard folder (`benchmarks kitti`, as RAFT's KITTI evaluation pads)
    and 'sintel' otherwise."""
    if ec.pad_mode not in PAD_MODES:
        raise ValueError(f"eval.pad_mode must be one of {', '.join(PAD_MODES)}, got {ec.pad_mode!r}")
    if ec.pad_mode != "auto":
        return ec.pad_mode
    kinds = []
    for d in sources.split_sources(ec.data or config.data.videos):
        try:
            kinds.append(None if sources.is_tfds(d) else shards.load_manifest(d).get("benchmark"))
        except shards.ShardError:  # a video file or frame folder
            kinds.append(None)
    return "kitti" if kinds and all(k == "kitti" for k in kinds) else "sintel"


# ---------------------------------------------------------------------------------------------- flow

def _flow_sums(pred: np.ndarray, gt: np.ndarray, prefix: str, known: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Sums that give EPE, the px rates and KITTI's Fl (outliers: EPE > 3 px and > 5 % of |gt|)
    over the pixels with known GT (`known`, default all), and EPE per GT speed bin, when divided."""
    sel = slice(None) if known is None else np.asarray(known, bool).ravel()
    epe = np.linalg.norm(pred.astype(np.float64) - gt, axis=-1).ravel()[sel]
    gt_mag = np.linalg.norm(gt, axis=-1).ravel()[sel]
    which = _bin_of(gt_mag)
    out = {f"{prefix}epe": epe.sum(), f"{prefix}1px": (epe < 1).sum(), f"{prefix}3px": (epe < 3).sum(),
           f"{prefix}5px": (epe < 5).sum(), f"{prefix}fl": ((epe > 3) & (epe > 0.05 * gt_mag)).sum()}
    for k, name in enumerate(bin_names()):
        out[f"{prefix}epe@{name}"] = epe[which == k].sum()
    return out


def _flow_row(fw, gt, known: Optional[np.ndarray] = None) -> Dict[str, float]:
    """One pair with ground truth: the sums of `_flow_sums` for the model and for zero flow over the
    pixels whose GT is known (`known` (H, W) bool, default all), and the pixel counts."""
    sel = slice(None) if known is None else np.asarray(known, bool).ravel()
    row = {**_flow_sums(fw, gt, "", known), **_flow_sums(np.zeros_like(gt), gt, "zero:", known),
           "pixels": float(np.linalg.norm(gt, axis=-1).ravel()[sel].size), "all_pixels": float(gt[..., 0].size)}
    which = _bin_of(np.linalg.norm(gt, axis=-1).ravel()[sel])
    for k, name in enumerate(bin_names()):
        row[f"pixels@{name}"] = float((which == k).sum())
    return row


def _label_free_row(valid, color) -> Dict[str, float]:
    """One pair, any footage: pixels (H, W) `valid` that pass the cycle check, the sum of their
    colour error (`color` on the [-0.5, 0.5] scale) in grey levels, and the pixel count."""
    valid = np.asarray(valid, bool)
    return {"passed": float(valid.sum()), "photo_sum": float(255.0 * np.asarray(color)[valid].sum()),
            "all_pixels": float(valid.size)}


def _flow_metrics(rows: List[Dict[str, float]], prefix: str) -> Dict[str, float]:
    total = lambda k: sum(r[k] for r in rows)
    n = total("pixels")
    out = {k: total(prefix + k) / n for k in ("epe", "1px", "3px", "5px", "fl")}
    for name in bin_names():
        m = total(f"pixels@{name}")
        out[f"epe@{name}"] = total(f"{prefix}epe@{name}") / m if m else float("nan")
    return out


def _label_free_metrics(rows: List[Dict[str, float]]) -> Dict[str, float]:
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


def _zero_flow_rows(labeler, frames: np.ndarray) -> List[Dict[str, float]]:
    """`_label_free_row` of zero flow on every consecutive pair of uint8 frames (T, H, W, 3), in
    chunks of the labelling batch."""
    fn, out, bs, pairs = _zero_flow_check(labeler.check), [], max(labeler.lc.batch, 1), len(frames) - 1
    for k in range(0, pairs, bs):
        end = min(k + bs, pairs)
        valid, color = map(np.asarray, fn(frames[k:end], frames[k + 1:end + 1]))
        out += [_label_free_row(v, c) for v, c in zip(valid, color)]
    return out


def eval_flow(loaded, clips, ec: EvalConfig, config) -> dict:
    """{'model', 'baseline' (zero flow), 'bins' (pixel share per GT speed bin), 'example'} over
    every consecutive pair of `clips` (this process's share; rows are gathered from all). EPE and
    the px rates come from the clips with ground-truth flow; the label-free diagnostics (with
    `eval.label_free`) from every clip, so footage without ground truth still gets a report."""
    from refine_jax.labels.generate import FlowLabeler
    mesh = parallel.make_mesh(1, local=True)
    pad_mode = "sintel" if ec.pad_mode == "auto" else ec.pad_mode  # run() resolves 'auto'
    labeler = FlowLabeler(loaded.cfg, loaded.variables, _label_config(config, ec.iters or 32, pad_mode), mesh)
    rows, free, zero_free, example = [], [], [], None
    for c in clips:
        fw, valid, color = labeler.estimate(c.frames, f"frames of {c.video_id}")
        if ec.label_free:
            free += [_label_free_row(v, col) for v, col in zip(valid, color)]
            zero_free += _zero_flow_rows(labeler, c.frames)
        if c.flow is not None:
            rows += [_flow_row(fw[t], c.flow[t], None if c.flow_gt_known is None else c.flow_gt_known[t])
                     for t in range(len(fw))]
        example = fw[0] if example is None else example
    z = np.zeros((1, 1, 2))
    rows = _gather(rows, _flow_row(z, z))
    free_template = _label_free_row(np.zeros((1, 1), bool), np.zeros((1, 1)))
    free, zero_free = _gather(free, free_template), _gather(zero_free, free_template)
    if not rows and not free:
        raise ValueError("no evaluation clip carries ground-truth flow and the label-free diagnostics are "
                         "off (eval.label_free): there is nothing to measure")
    model = {**(_flow_metrics(rows, "") if rows else {}), **(_label_free_metrics(free) if free else {})}
    baseline = {**(_flow_metrics(rows, "zero:") if rows else {}),
                **(_label_free_metrics(zero_free) if zero_free else {})}
    n = sum(r["pixels"] for r in rows)
    return {"model": model, "baseline": baseline,
            "bins": {name: sum(r[f"pixels@{name}"] for r in rows) / n for name in bin_names()} if n else {},
            "gt_known": n / sum(r["all_pixels"] for r in rows) if rows else 0.0, "example": example}


# -------------------------------------------------------------------------------------------- tracks

def _track_bins(gt, vis) -> np.ndarray:
    """(N,) GT speed bin of each track: mean displacement per frame over consecutive visible frames."""
    step = np.linalg.norm(np.diff(gt, axis=1), axis=-1)
    both = vis[:, 1:] & vis[:, :-1]
    speed = np.where(both.any(1), (step * both).sum(1) / np.maximum(both.sum(1), 1), 0.0)
    return _bin_of(speed)


def _track_row(q, gt, vis, pred, pred_vis, ec: EvalConfig, hw) -> Dict[str, float]:
    if ec.tapvid_256:
        gt, pred = metrics.rescale_tracks(gt, hw), metrics.rescale_tracks(pred, hw)
    m = metrics.tapvid_metrics(q, gt, ~vis, pred, ~pred_vis, ec.query_mode)
    m.update(metrics.ate_mte(gt, pred, q, vis))
    m["survival"] = metrics.survival(gt, pred, q)
    err = metrics.trajectory_errors(gt, pred, q, vis)
    which = _track_bins(gt, vis)
    for k, name in enumerate(bin_names()):
        sel = (which == k) & np.isfinite(err)
        m[f"ate_sum@{name}"], m[f"tracks@{name}"] = float(err[sel].sum()), float(sel.sum())
    return m


def _track_metrics(rows: List[Dict[str, float]]) -> Dict[str, float]:
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


_TRACK_FREE_SUMS = ("queries", "passed", "photo_sum", "photo_n", "still_photo_sum", "still_photo_n")


def _track_label_free(labeler, clip) -> Dict[str, float]:
    """Grid queries on every labelling window of the clip, any footage: how many pass the cycle
    check, the photometric error sums (grey levels) of the passing tracks against their query's
    colour, and of every query held still (the trivial baseline, which passes any cycle check)."""
    out = dict.fromkeys(_TRACK_FREE_SUMS, 0.0)
    for st, tracks, keep, _, _ in labeler.estimate(clip):
        frames = clip.frames[st:st + tracks.shape[1]]
        still = np.repeat(tracks[:, :1], tracks.shape[1], axis=1)
        out["queries"] += len(keep)
        out["passed"] += int(keep.sum())
        out["photo_sum"] += _photo_sum(frames, tracks[keep])
        out["photo_n"] += int(keep.sum()) * (tracks.shape[1] - 1)
        out["still_photo_sum"] += _photo_sum(frames, still)
        out["still_photo_n"] += len(keep) * (tracks.shape[1] - 1)
    return out


def _track_label_free_metrics(rows: List[Dict[str, float]], still: bool = False) -> Dict[str, float]:
    """cycle_pass (share of grid queries) and photometric_error (grey levels, over the passing
    tracks' frames) of the model, or with `still` of the queries held still."""
    total = lambda k: sum(r[k] for r in rows)
    if still:
        n = total("still_photo_n")
        return {"cycle_pass": 1.0 if total("queries") else float("nan"),
                "photometric_error": total("still_photo_sum") / n if n else float("nan")}
    return {"cycle_pass": total("passed") / max(total("queries"), 1),
            "photometric_error": total("photo_sum") / total("photo_n") if total("photo_n") else float("nan")}


def eval_tracks(loaded, clips, ec: EvalConfig, config) -> dict:
    """{'model', 'baseline' (query held still, always visible), 'bins' (track share per GT speed
    bin), 'example'}: TAP-Vid and ATE metrics per clip with ground-truth tracks, averaged over the
    clips of every process; the label-free diagnostics (with `eval.label_free`) over every clip,
    so footage without ground truth still gets a report."""
    from refine_jax.labels.generate import TrackLabeler
    from refine_jax.models.pips_chain import ChainedTracker
    tracker = ChainedTracker(dataclasses.replace(loaded.cfg, stride=ec.stride), loaded.variables,
                             iters=ec.iters or 6)
    labeler = None
    if ec.label_free:
        lc = _label_config(config, ec.iters or 6)  # grid queries: they need no ground truth
        lc = dataclasses.replace(lc, stride=ec.stride, use_gt_points=False, grid=lc.grid or 12,
                                 densify_window=0, max_queries=max(lc.grid or 12, 1) ** 2)
        labeler = TrackLabeler(loaded.cfg, loaded.variables, lc, parallel.make_mesh(1, local=True))
    rows, base_rows, free, example = [], [], [], None
    for c in clips:
        if labeler is not None:
            free.append(_track_label_free(labeler, c))
        if c.tracks is None:
            continue
        q, hw = c.query_points, c.frames.shape[1:3]
        out = tracker(c.frames, q)
        rows.append(_track_row(q, c.tracks, c.visible, out["tracks"], out["visible"], ec, hw))
        still = np.repeat(q[:, None, 1:], c.tracks.shape[1], axis=1)
        base_rows.append(_track_row(q, c.tracks, c.visible, still, np.ones_like(c.visible), ec, hw))
        example = example or (c, out)
    q, z, v = np.zeros((1, 3)), np.zeros((1, 2, 2)), np.ones((1, 2), bool)
    template = _track_row(q, z, v, z, v, ec, (1, 1))
    rows, base_rows = _gather(rows, template), _gather(base_rows, template)
    free = _gather(free, dict.fromkeys(_TRACK_FREE_SUMS, 0.0))
    if not rows and not free:
        raise ValueError("no evaluation clip carries ground-truth tracks and the label-free diagnostics are "
                         "off (eval.label_free): there is nothing to measure")
    model = {**(_track_metrics(rows) if rows else {}), **(_track_label_free_metrics(free) if free else {})}
    baseline = {**(_track_metrics(base_rows) if base_rows else {}),
                **(_track_label_free_metrics(free, still=True) if free else {})}
    n = sum(sum(r[f"tracks@{name}"] for name in bin_names()) for r in rows)
    return {"model": model, "baseline": baseline,
            "bins": {name: sum(r[f"tracks@{name}"] for r in rows) / n for name in bin_names()} if n else {},
            "example": example}


def _gather(rows: List[Dict[str, float]], template: Dict[str, float]) -> List[Dict[str, float]]:
    """Every process's rows (dicts with the keys of `template`), in process order; with one
    process, `rows`."""
    if jax.process_count() == 1:
        return rows
    keys = sorted(template)
    counts = parallel.allgather(np.asarray(len(rows)))
    local = np.full((int(counts.max()), len(keys)), np.nan)
    for i, r in enumerate(rows):
        local[i] = [r[k] for k in keys]
    table = parallel.allgather(local)
    return [dict(zip(keys, map(float, table[p, i]))) for p in range(len(table)) for i in range(counts[p])]


def measure(loaded, clips, ec: EvalConfig, config) -> dict:
    """The metrics of one model and of the trivial baseline on `clips` (see eval_flow/eval_tracks)."""
    from refine_jax.models.raft import RAFTConfig
    if isinstance(loaded.cfg, RAFTConfig):
        return eval_flow(loaded, clips, ec, config)
    return eval_tracks(loaded, clips, ec, config)


def _checkpoint_variables(workdir: str):
    """(step, variables) of every training checkpoint kept in WORKDIR/checkpoints."""
    import orbax.checkpoint as ocp
    ck = fs.abspath(os.path.join(workdir, "checkpoints"))
    if not fs.isdir(ck):
        return []
    out = []
    with ocp.CheckpointManager(ck) as m:
        for step in m.all_steps():
            r = parallel.to_host(m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"])
            v = {"params": r["params"], **({"batch_stats": r["batch_stats"]} if r.get("batch_stats") else {})}
            out.append((int(step), v))
    return out


def _label_precision(trained: str) -> Optional[dict]:
    """Yield and GT error of the kept labels vs all estimates, from TRAINED/labels/manifest.json."""
    path = os.path.join(trained, "labels", shards.MANIFEST)
    if not fs.exists(path):
        return None
    st = fs.read_json(path).get("stats", {})
    out = {"yield": st.get("yield"), "kept": st.get("kept"), "total": st.get("total"),
           "error_all": st.get("gt_error_all"), "error_kept": st.get("gt_error_kept"),
           "per_speed_bin": st.get("gt_per_speed_bin"), "yield_per_estimated_speed_bin": {
               k: (v["kept"] / v["total"] if v.get("total") else None)
               for k, v in st.get("per_speed_bin", {}).items()}}
    if out["error_all"] and out["error_kept"] is not None:
        out["kept_over_all"] = out["error_kept"] / out["error_all"]
    return out


def _check_not_unfinished(model_dir: str, name: str) -> None:
    """A training run whose checkpoints beside `model_dir` go further than the model it exported
    there (none, or an earlier run's) was stopped, preempted or killed: reporting now would drop
    the `name` row or show a stale model in it."""
    import orbax.checkpoint as ocp
    ckpt_dir = fs.abspath(os.path.join(os.path.dirname(model_dir), "checkpoints"))
    if not fs.isdir(ckpt_dir):
        return
    with ocp.CheckpointManager(ckpt_dir) as m:
        steps = list(m.all_steps())
    if steps and max(steps) > (checkpoints.exported_steps(model_dir) or 0):
        raise ValueError(f"{ckpt_dir}: the training run for the '{name}' row stopped at step {max(steps)} "
                         f"without exporting its model to {model_dir}; rerun its stage to finish it")


def run(config, workdir: str, init: Optional[str] = None, progress: bool = True,
        trained: Optional[str] = None) -> dict:
    """Evaluate `init` (default config.init), the refined model in TRAINED/model (default
    WORKDIR; the last round's folder with label.rounds > 1) with the curve over TRAINED/checkpoints,
    the oracle in WORKDIR/oracle/model, and the trivial baseline; write WORKDIR/eval."""
    from refine_jax.oracle import oracle_dir
    trained = trained or workdir
    rows = (("after", os.path.join(trained, "model")), ("oracle", os.path.join(oracle_dir(workdir), "model")))
    for name, folder in rows:
        _check_not_unfinished(folder, name)
    ec = EvalConfig.from_config(config.get("eval"))
    ec = dataclasses.replace(ec, pad_mode=resolve_pad_mode(ec, config))
    before = checkpoints.load_model(init or config.init, config.get("runtime"))
    all_clips = _clips(ec, config)
    clips = parallel.process_share(all_clips)  # each process its share; metrics are gathered
    out_dir = os.path.join(workdir, "eval")
    fs.makedirs(out_dir)
    is_flow = before.cfg.arch != "pips"
    m_before = measure(before, clips, ec, config)
    primary = "epe" if is_flow else "delta_avg"
    has_gt = primary in m_before["model"]
    if not has_gt:  # a user's footage: the label-free diagnostics are all there is to report
        primary = "cycle_pass"
    result = {"primary": primary, "lower_is_better": lower_is_better(primary),
              "before": m_before["model"], "after": None, "oracle": None, "baseline": m_before["baseline"],
              "baseline_name": "zero flow" if is_flow else "query point held still",
              "speed_bins": m_before["bins"], "labels": _label_precision(trained),
              "model_before": fs.abspath(init or config.init), "clips": len(all_clips),
              "resolution": "256x256 (rescaled)" if (ec.tapvid_256 and not is_flow)
              else f"{all_clips[0].frames.shape[1]}x{all_clips[0].frames.shape[2]} (as stored)",
              "query_mode": None if is_flow or not has_gt else ec.query_mode,
              "curve": [[0, m_before["model"][primary]]], "gt_known": m_before.get("gt_known", 1.0),
              "ground_truth": has_gt, "kind": "flow" if is_flow else "tracks",
              "pad_mode": ec.pad_mode if is_flow else None}
    examples = {"before": m_before["example"]}
    for name, folder in rows:
        if not fs.isdir(folder):
            continue
        loaded = checkpoints.load_model(folder, config.get("runtime"))
        m = measure(loaded, clips, ec, config)
        result[name], result[f"model_{name}"], examples[name] = m["model"], fs.abspath(folder), m["example"]
        if name == "after" and ec.curve:
            for step, v in _checkpoint_variables(trained):
                curve_ec = dataclasses.replace(ec, label_free=not has_gt)  # only what the primary needs
                mc = measure(checkpoints.LoadedModel(loaded.cfg, v, {}), clips, curve_ec, config)
                result["curve"].append([step, mc["model"][primary]])
    result["curve"].sort()
    if result["after"]:
        result["improved"] = {k: _improved(k, v, result["after"][k]) for k, v in result["before"].items()}
    if parallel.is_main_process():
        fs.write_json_atomic(os.path.join(out_dir, "metrics.json"), _json_safe(result))
        _figures(out_dir, result, is_flow, clips, examples)
        _report(out_dir, result)
    parallel.barrier("eval: report written")
    return result


def _json_safe(obj):
    """The result with NaN (an empty speed bin) as null and numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items() if k != "example"}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _improved(metric: str, before: float, after: float) -> Optional[bool]:
    if not (np.isfinite(before) and np.isfinite(after)) or after == before:
        return None
    return bool((after < before) == lower_is_better(metric))


def _figures(out_dir, result, is_flow, clips, examples):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3))
    steps, vals = zip(*result["curve"])
    ax.plot(steps, vals, "o-", label="refined")
    if result["primary"] in result["baseline"]:
        ax.axhline(result["baseline"][result["primary"]], color="grey", ls="--", label=result["baseline_name"])
    if result.get("oracle"):
        ax.axhline(result["oracle"][result["primary"]], color="green", ls=":", label="oracle (GT labels)")
    ax.set_xlabel("training step")
    ax.set_ylabel(result["primary"])
    ax.set_title(f"{result['primary']} over refinement")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fs.write_bytes_atomic(os.path.join(out_dir, "curve.png"), buf.getvalue())
    plt.close(fig)
    if is_flow:
        gt = next((c.flow[0] for c in clips if c.flow is not None), None)
        scale = float(np.linalg.norm(examples["before"] if gt is None else gt, axis=-1).max())
        if gt is not None:
            viz.save_png(os.path.join(out_dir, "flow_gt.png"), viz.flow_to_color(gt, scale))
        for name, ex in examples.items():
            viz.save_png(os.path.join(out_dir, f"flow_{name}.png"), viz.flow_to_color(ex, scale))
    else:
        for name, (clip, out) in ((k, v) for k, v in examples.items() if v is not None):  # GT queries only
            t = len(clip.frames) - 1
            img = viz.draw_tracks(clip.frames[t], out["tracks"][:, t], out["visible"][:, t],
                                  tails=out["tracks"][:, :t + 1])
            viz.save_png(os.path.join(out_dir, f"tracks_{name}.png"), img)


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4f}"


def _report(out_dir, r):
    """report.md: a verdict, then every metric with its direction, the baseline and the oracle."""
    p, b, a = r["primary"], r["before"], r["after"]
    lines = ["# Evaluation report", "",
             f"{r['clips']} clips, resolution {r['resolution']}"
             + (f", query mode '{r['query_mode']}'" if r["query_mode"] else "") + ". "
             f"Trivial baseline: {r['baseline_name']}."
             + (f" Flow metrics over the {100 * r['gt_known']:.1f} % of pixels with known ground truth."
                if 0 < r.get("gt_known", 1.0) < 1 else "")
             + (f" Frames padded to multiples of 8 in RAFT's '{r['pad_mode']}' mode." if r.get("pad_mode") else ""),
             ""]
    if not r.get("ground_truth", True):
        lines += ["**No evaluation clip carries ground truth**: this report holds the label-free diagnostics "
                  "only. A better model passes the cycle check more often at an equal or lower photometric "
                  "error; neither alone proves it (see the note below the table).", ""]
    if a:
        change = a[p] - b[p]
        lines += [f"**{p}** ({'lower' if r['lower_is_better'] else 'higher'} is better): "
                  f"{b[p]:.4f} before, {a[p]:.4f} after ({change:+.4f}, {100 * change / b[p]:+.1f} %): "
                  f"{'improved' if r['improved'][p] else 'not improved'}; {r['baseline_name']} "
                  f"{_fmt(r['baseline'].get(p))}" + (f"; oracle {r['oracle'][p]:.4f}" if r.get("oracle") else "") + ".", ""]
        base = r["baseline"].get(p, float("nan"))
        for name in ("before", "after"):
            if r.get("ground_truth", True) and not _improved(p, base, r[name][p]):
                lines += [f"**The model {name} refinement is no better than {r['baseline_name']}** "
                          f"({r[name][p]:.4f} vs {base:.4f}): a gain next to it can be a collapse towards no motion.", ""]
        worse = [k for k, v in r["improved"].items() if v is False]
        if worse:
            lines += [f"Worse after refinement: {', '.join(worse)}.", ""]
    lines += ["| metric | better | baseline | before | after | change | improved | oracle |",
              "|---|---|---|---|---|---|---|---|"]
    for k, v in b.items():
        if isinstance(v, float) and np.isnan(v) and "@" in k:
            continue  # a speed bin without pixels or tracks
        av = a[k] if a else None
        ch = "" if av is None else f"{av - v:+.4f}"
        imp = {True: "yes", False: "**no**", None: ""}[r["improved"][k]] if a else ""
        orc = _fmt(r["oracle"][k]) if r.get("oracle") else ""
        lines.append(f"| {k} | {'lower' if lower_is_better(k) else 'higher'} | {_fmt(r['baseline'].get(k))} | "
                     f"{_fmt(v)} | {_fmt(av)} | {ch} | {imp} | {orc} |")
    unit = "pixels" if r["kind"] == "flow" else "tracks"
    lines += [""]
    if r["speed_bins"]:
        lines += [f"Share of {unit} per ground-truth speed bin ({'px' if unit == 'pixels' else 'px/frame'}): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["speed_bins"].items()) + ".", ""]
    lab = r.get("labels")
    if lab and lab.get("error_all") is not None:
        lines += ["## Pseudo-labels", "",
                  f"Yield {lab['yield']:.4f} ({lab['kept']} of {lab['total']}); ground-truth error of the kept "
                  f"labels {_fmt(lab['error_kept'])} against {_fmt(lab['error_all'])} for all estimates "
                  f"(ratio {_fmt(lab.get('kept_over_all'))}).", ""]
        if lab.get("per_speed_bin"):
            bias = any("speed_bias_kept" in v for v in lab["per_speed_bin"].values())
            lines += ["| GT speed bin | yield | error kept | error all |" + (" speed bias kept | speed bias all |" if bias else ""),
                      "|---|---|---|---|" + ("---|---|" if bias else "")]
            for k, v in sorted(lab["per_speed_bin"].items(), key=lambda kv: float(kv[0][1:].split(",")[0])):
                if not v.get("n", 1):
                    continue  # no labelled pixel or track moves at this speed
                lines.append(f"| {k} | {v['yield']:.4f} | {_fmt(v['error_kept'])} | {_fmt(v['error_all'])} |"
                             + (f" {_fmt(v.get('speed_bias_kept'))} | {_fmt(v.get('speed_bias_all'))} |" if bias else ""))
            if bias:
                lines.append("")
                lines.append("Speed bias: the mean of |estimate| - |truth| in px ("
                             + ("of the flow vectors" if unit == "pixels" else "of the distance from the query point, per frame")
                             + "), negative where the estimates are too slow. A bias the forward and backward "
                             "estimates share passes the cycle check, so the kept labels carry it and refinement learns it.")
            lines.append("")
    elif lab:
        lines += ["## Pseudo-labels", "", f"Yield {_fmt(lab.get('yield'))} (no ground truth in the labelled videos).", ""]
    lines += ["cycle_pass and photometric_error need no ground truth: the share of estimates that pass the "
              "labelling cycle check and their photometric error in grey levels. Zero motion is perfectly "
              "cycle-consistent: the baseline column shows it (flow: only the colour check removes pixels, "
              "those that change colour; a point held still passes every track check), and its photometric "
              "error is what exposes a collapse towards it.", "",
              f"Before: `{r['model_before']}`  ", f"After: `{r.get('model_after', '(no refined model)')}`  ",
              f"Oracle: `{r.get('model_oracle', '(no oracle run)')}`", "", "![curve](curve.png)", ""]
    gt = r.get("ground_truth", True)
    if unit == "pixels":
        lines += [("![ground truth](flow_gt.png) " if gt else "") + "![before](flow_before.png) ![after](flow_after.png)"
                  + (" ![oracle](flow_oracle.png)" if r.get("oracle") else "")]
    elif gt:
        lines += ["![before](tracks_before.png) ![after](tracks_after.png)"]
    fs.write_text_atomic(os.path.join(out_dir, "report.md"), "\n".join(lines) + "\n")
