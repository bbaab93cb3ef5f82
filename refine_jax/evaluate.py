"""The `eval` stage: the model before and after refinement on shards with ground truth.

Before = config.init (or the pre-trained model of the embedded demo); after = WORKDIR/model (the
train stage's export); the curve = every training checkpoint kept in WORKDIR/checkpoints.
RAFT: all consecutive pairs of every clip at full resolution, EPE over all pixels (Sintel "all")
and the 1/3/5 px rates; primary 'epe' (lower is better).
PIPs: chained tracking of every clip from the GT query points; TAP-Vid metrics in the configured
query mode, at the resolution of the shards or rescaled to 256x256 (`eval.tapvid_256`), plus
ATE/MTE and survival; primary 'delta_avg' (higher is better).
Writes WORKDIR/eval/metrics.json ({'primary', 'lower_is_better', 'before', 'after', 'curve', ...}),
report.md and PNG figures.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from refine_jax import checkpoints, fs, metrics, parallel, viz
from refine_jax import settings
from refine_jax.data import shards


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    data: str = ""                 # shard folder(s) with GT; default config.data.videos
    iters: int = 0                 # RAFT 32 / PIPs 6 when 0
    stride: int = 4                # PIPs
    query_mode: str = "first"
    tapvid_256: bool = False
    max_clips: int = 0             # 0 = all
    curve: bool = True

    @classmethod
    def from_config(cls, c) -> "EvalConfig":
        return settings.from_section(cls, c, "eval")


FLOW_KEYS = ("epe", "1px", "3px", "5px", "pixels")
TRACK_KEYS = ("occlusion_accuracy", *(f"{m}_{x:g}" for x in metrics.THRESHOLDS for m in ("delta", "jaccard")),
              "delta_avg", "average_jaccard", "ate", "mte", "survival")


def _clips(ec: EvalConfig, config) -> List[shards.Clip]:
    dirs = [d for d in (ec.data or config.data.videos).split(",") if d]
    out = []
    for d in dirs:
        for c in shards.read_clips(d):
            out.append(c)
            if ec.max_clips and len(out) >= ec.max_clips:
                return out
    return out


def eval_flow(cfg, variables, clips, iters: int) -> Tuple[Dict[str, float], Optional[np.ndarray]]:
    """Flow metrics over every consecutive pair of `clips` (this process's share, gathered from all
    processes): the pixel-weighted mean of per-pair metrics = the metrics over all pixels."""
    from refine_jax.models.raft import make_flow_fn
    fn = make_flow_fn(cfg, iters)
    rows, first = [], None
    for c in clips:
        if c.flow is None:
            continue
        for t in range(len(c.frames) - 1):
            f, _ = fn(variables, c.frames[t][None], c.frames[t + 1][None])
            pred = np.asarray(f[0])
            rows.append({**metrics.flow_metrics(pred, c.flow[t]), "pixels": float(pred[..., 0].size)})
            first = pred if first is None else first
    table = _gather_rows(rows, FLOW_KEYS)
    if not table:
        raise ValueError("no evaluation clip carries ground-truth flow")
    w = np.array([r.pop("pixels") for r in table])
    return {k: float(np.sum(w * np.array([r[k] for r in table])) / w.sum()) for k in table[0]}, first


def eval_tracks(cfg, variables, clips, ec: EvalConfig) -> Tuple[Dict[str, float], Optional[tuple]]:
    """Track metrics per clip (chained tracking from the GT queries), averaged over the clips of
    every process."""
    from refine_jax.models.pips_chain import ChainedTracker
    tracker = ChainedTracker(dataclasses.replace(cfg, stride=ec.stride), variables, iters=ec.iters or 6)
    rows, first = [], None
    for c in clips:
        if c.tracks is None:
            continue
        q = c.query_points
        out = tracker(c.frames, q)
        h, w = c.frames.shape[1:3]
        gt, pred = c.tracks, out["tracks"]
        if ec.tapvid_256:
            gt, pred = metrics.rescale_tracks(gt, (h, w)), metrics.rescale_tracks(pred, (h, w))
        m = metrics.tapvid_metrics(q, gt, ~c.visible, pred, ~out["visible"], ec.query_mode)
        m.update(metrics.ate_mte(gt, pred, q, c.visible))
        m["survival"] = metrics.survival(gt, pred, q)
        rows.append(m)
        first = first or (c, out)
    table = _gather_rows(rows, TRACK_KEYS)
    if not table:
        raise ValueError("no evaluation clip carries ground-truth tracks")
    return {k: float(np.nanmean([m[k] for m in table])) for k in table[0]}, first


def _gather_rows(rows: List[Dict[str, float]], keys: Sequence[str]) -> List[Dict[str, float]]:
    """Every process's metric rows (dicts over `keys`), in process order; with one process, `rows`."""
    if jax.process_count() == 1:
        return rows
    counts = parallel.allgather(np.asarray(len(rows)))
    local = np.full((int(counts.max()), len(keys)), np.nan)
    for i, r in enumerate(rows):
        local[i] = [r[k] for k in keys]
    table = parallel.allgather(local)
    return [dict(zip(keys, map(float, table[p, i]))) for p in range(len(table)) for i in range(counts[p])]


def _evaluate(loaded, clips, ec):
    from refine_jax.models.raft import RAFTConfig
    if isinstance(loaded.cfg, RAFTConfig):
        return eval_flow(loaded.cfg, loaded.variables, clips, ec.iters or 32)
    return eval_tracks(loaded.cfg, loaded.variables, clips, ec)


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


def run(config, workdir: str, init: Optional[str] = None, progress: bool = True,
        trained: Optional[str] = None) -> dict:
    """Evaluate `init` (default config.init) and the refined model in TRAINED/model (default
    WORKDIR; the last round's folder with label.rounds > 1) with the curve over TRAINED/checkpoints;
    write WORKDIR/eval."""
    ec = EvalConfig.from_config(config.get("eval"))
    before = checkpoints.load_model(init or config.init)
    all_clips = _clips(ec, config)
    clips = parallel.process_share(all_clips)  # each process its share; metrics are gathered
    out_dir = os.path.join(workdir, "eval")
    fs.makedirs(out_dir)
    is_flow = before.cfg.arch != "pips"
    primary, lower = ("epe", True) if is_flow else ("delta_avg", False)
    m_before, ex_before = _evaluate(before, clips, ec)
    result = {"primary": primary, "lower_is_better": lower, "before": m_before, "after": None,
              "model_before": fs.abspath(init or config.init), "clips": len(all_clips),
              "resolution": "256x256 (rescaled)" if (ec.tapvid_256 and not is_flow)
              else f"{clips[0].frames.shape[1]}x{clips[0].frames.shape[2]} (as stored)",
              "query_mode": None if is_flow else ec.query_mode, "curve": [[0, m_before[primary]]]}
    trained = trained or workdir
    model_dir = os.path.join(trained, "model")
    ex_after = None
    if fs.isdir(model_dir):
        after = checkpoints.load_model(model_dir)
        result["after"], ex_after = _evaluate(after, clips, ec)
        result["model_after"] = fs.abspath(model_dir)
        if ec.curve:
            for step, v in _checkpoint_variables(trained):
                m, _ = _evaluate(checkpoints.LoadedModel(after.cfg, v, {}), clips, ec)
                result["curve"].append([step, m[primary]])
    result["curve"].sort()
    if parallel.is_main_process():
        fs.write_json_atomic(os.path.join(out_dir, "metrics.json"), result)
        _figures(out_dir, result, is_flow, clips, ex_before, ex_after)
        _report(out_dir, result)
    parallel.barrier("eval: report written")
    return result


def _figures(out_dir, result, is_flow, clips, ex_before, ex_after):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3))
    steps, vals = zip(*result["curve"])
    ax.plot(steps, vals, "o-")
    ax.set_xlabel("training step")
    ax.set_ylabel(result["primary"])
    ax.set_title(f"{result['primary']} over refinement")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fs.write_bytes_atomic(os.path.join(out_dir, "curve.png"), buf.getvalue())
    plt.close(fig)
    if is_flow:
        gt = next(c.flow[0] for c in clips if c.flow is not None)
        scale = float(np.linalg.norm(gt, axis=-1).max())
        viz.save_png(os.path.join(out_dir, "flow_gt.png"), viz.flow_to_color(gt, scale))
        viz.save_png(os.path.join(out_dir, "flow_before.png"), viz.flow_to_color(ex_before, scale))
        if ex_after is not None:
            viz.save_png(os.path.join(out_dir, "flow_after.png"), viz.flow_to_color(ex_after, scale))
    else:
        for name, ex in (("before", ex_before), ("after", ex_after)):
            if ex is None:
                continue
            clip, out = ex
            t = len(clip.frames) - 1
            img = viz.draw_tracks(clip.frames[t], out["tracks"][:, t], out["visible"][:, t],
                                  tails=out["tracks"][:, :t + 1])
            viz.save_png(os.path.join(out_dir, f"tracks_{name}.png"), img)


def _report(out_dir, r):
    lines = ["# Evaluation report", "",
             f"Primary metric: **{r['primary']}** ({'lower' if r['lower_is_better'] else 'higher'} is better), "
             f"{r['clips']} clips, resolution {r['resolution']}"
             + (f", query mode '{r['query_mode']}'" if r["query_mode"] else "") + ".", "",
             "| metric | before | after | change |", "|---|---|---|---|"]
    for k, v in r["before"].items():
        a = r["after"][k] if r["after"] else None
        ch = "" if a is None else f"{a - v:+.4f}" + (f" ({100 * (a - v) / v:+.1f} %)" if v else "")
        lines.append(f"| {k} | {v:.4f} | {'' if a is None else f'{a:.4f}'} | {ch} |")
    lines += ["", f"Before: `{r['model_before']}`  ", f"After: `{r.get('model_after', '(no refined model)')}`",
              "", "![curve](curve.png)", ""]
    lines += (["![ground truth](flow_gt.png) ![before](flow_before.png) ![after](flow_after.png)"]
              if r["primary"] == "epe" else ["![before](tracks_before.png) ![after](tracks_after.png)"])
    fs.write_text_atomic(os.path.join(out_dir, "report.md"), "\n".join(lines) + "\n")
