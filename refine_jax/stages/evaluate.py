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

Both get label-free proxies per clip (RAFT: evaluation/proxies.py; PIPs: track_proxies.py), their
paired changes with bootstrap intervals, and a verdict from them (evaluation/verdict.py: better /
worse / cannot tell, by the task's rule);
the guard saves WORKDIR/exported: the refined model only on 'better' (or with eval.guard off),
else the initial one. With eval.select_checkpoint every kept training checkpoint is judged the same
way and the 'better' one that clears the rule by the most is exported (else the initial model).
metrics.json keeps 'after' (the last refined step) and adds 'verdict', 'exported' (which model and
step, and its metrics) and, when selecting, 'selection' (each checkpoint's verdict).

Writes WORKDIR/eval/metrics.json, report.md (every metric with its direction and whether it
improved) and PNG figures.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Tuple

from refine_jax import checkpoints, fs, parallel, paths, tasks
from refine_jax.data import shards, sources
from refine_jax.evaluation import report
from refine_jax.settings import EvalConfig


def evaluation_clips(ec: EvalConfig, config) -> Tuple[List[shards.Clip], bool]:
    """(the clips evaluated, whether they were held out of training): eval.data when set; else
    data.videos' clips that eval.holdout kept out of labelling (data/sources.py `held_out`), or all
    of them when it is 0 or held none out (sources of fewer than eval.holdout // 2 + 1 clips); the
    first eval.max_clips."""
    every = ec.held_out_every()
    sources.check_holdout(every)
    names = sources.split_sources(ec.data or config.data.videos)
    if every:
        held = _read(names, ec.max_clips, lambda i: sources.held_out(i, every))
        if held:
            return held, True
    return _read(names, ec.max_clips, None), False


def _read(names, max_clips: int, keep) -> List[shards.Clip]:
    """The clips of the sources `names` whose index within their source passes `keep` (None: all;
    the others are not decoded), the first `max_clips` (0: all)."""
    out = []
    for d in names:
        for c in sources.read_clips(d, keep=keep):
            out.append(c)
            if max_clips and len(out) >= max_clips:
                return out
    return out


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


def measure(loaded, clips, ec: EvalConfig, config) -> dict:
    """The metrics of one model and of the trivial baseline on `clips` (evaluation/flow.py,
    evaluation/tracks.py): {'model', 'baseline', 'bins', 'example', ...}."""
    return tasks.of(loaded.cfg).measure(loaded, clips, ec, config)


def _checkpoint_variables(workdir: str):
    """(step, variables) of every training checkpoint kept in WORKDIR/checkpoints."""
    import orbax.checkpoint as ocp
    ck = fs.abspath(paths.checkpoints(workdir))
    if not fs.isdir(ck):
        return []
    out = []
    with ocp.CheckpointManager(ck) as m:
        for step in m.all_steps():
            r = parallel.to_host(m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"])
            v = {"params": r["params"], **({"batch_stats": r["batch_stats"]} if r.get("batch_stats") else {})}
            out.append((int(step), v))
    return out


def _label_precision(trained: str, config) -> Optional[dict]:
    """Yield and GT error of the kept labels vs all estimates, from the label manifest of TRAINED."""
    path = os.path.join(paths.labels(trained, config), shards.MANIFEST)
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
    ckpt_dir = fs.abspath(paths.checkpoints(os.path.dirname(model_dir)))
    if not fs.isdir(ckpt_dir):
        return
    with ocp.CheckpointManager(ckpt_dir) as m:
        steps = list(m.all_steps())
    if steps and max(steps) > (checkpoints.exported_steps(model_dir) or 0):
        raise ValueError(f"{ckpt_dir}: the training run for the '{name}' row stopped at step {max(steps)} "
                         f"without exporting its model to {model_dir}; rerun its stage to finish it")


def judge(m_before: dict, m_after: dict, ec: EvalConfig, kind: str) -> dict:
    """The proxies' paired changes and the verdict (evaluation/verdict.py, the rule of the task
    `kind`) from the per-clip rows of two measurements (`measure`) and their aggregate
    diagnostics (verdict.AGGREGATES, as the study that chose the rule read them):
    {'proxy_changes', 'verdict'}."""
    from refine_jax.evaluation import verdict
    rows = m_before.get("proxy_rows", [])
    ch = {**verdict.changes(rows, m_after.get("proxy_rows", [])),
          **verdict.changes(m_before.get("source_rows", []), m_after.get("source_rows", []))}
    if not ch:
        v = {"verdict": "cannot tell", "because": ["no label-free proxy was measured (eval.proxies is off)"],
             "rule": None}
    else:  # the rule may read the aggregates as the study did (tools/proxy_study.py)
        ch.update(verdict.aggregate_changes(m_before.get("model", {}), m_after.get("model", {}), len(rows)))
        v = verdict.decide(ch, verdict.installed_rule(kind))
    v["guard"] = ec.guard
    return {"proxy_changes": ch, "verdict": v}


def judge_checkpoint(step: int, m_before: dict, m_step: dict, ec: EvalConfig, kind: str) -> dict:
    """One kept checkpoint judged as the last step is (`judge`): {'step', 'verdict', 'because',
    'clearance' (verdict.clearance), 'metrics' (its measurement's model metrics), 'proxy_changes'
    (so that a study can judge it again by another rule)}."""
    from refine_jax.evaluation import verdict
    j = judge(m_before, m_step, ec, kind)
    return {"step": int(step), "verdict": j["verdict"]["verdict"], "because": j["verdict"]["because"],
            "clearance": verdict.clearance(j["proxy_changes"], verdict.installed_rule(kind)),
            "metrics": m_step["model"], "proxy_changes": j["proxy_changes"]}


def _over_checkpoints(trained: str, cfg, clips, m_before: dict, m_after: dict, after_step: int, ec: EvalConfig,
                      config, kind: str, primary: str, has_gt: bool, selecting: bool):
    """Measure every checkpoint kept in TRAINED/checkpoints once: ([[step, primary metric]], the
    checkpoints judged (`judge_checkpoint`, its model) when `selecting`). Selecting measures each as
    the last step was (its proxies, to judge it; the last step's measurement `m_after` is reused);
    the curve alone only what the primary needs."""
    ck_ec = ec if selecting else dataclasses.replace(ec, label_free=not has_gt, proxies=False)
    curve, judged = [], []
    for step, v in _checkpoint_variables(trained):
        ck = checkpoints.LoadedModel(cfg, v, {})
        mc = m_after if selecting and step == after_step else measure(ck, clips, ck_ec, config)
        curve.append([step, mc["model"][primary]])
        if selecting:
            judged.append((judge_checkpoint(step, m_before, mc, ec, kind), ck))
    return curve, judged


def _select(judged):
    """(the chosen (judgement, model) or None, metrics.json's 'selection') from `_over_checkpoints`."""
    from refine_jax.evaluation import verdict
    best = verdict.choose_checkpoint([j for j, _ in judged])
    chosen = next(((j, ck) for j, ck in judged if best is not None and j["step"] == best["step"]), None)
    return chosen, {"checkpoints": [j for j, _ in judged], "chosen_step": best["step"] if best else None}


def export(workdir: str, result: dict, before, refined, init_path: str, selected=None) -> dict:
    """Save the model the guard hands back to WORKDIR/exported and say which, with its metrics:
    the refined one when the verdict is 'better' or the guard is off, else the initial one; with
    checkpoint selection (result['selection']) the selected checkpoint (`selected`: (its judgement,
    its model), None when no checkpoint is 'better'), else the initial one."""
    from refine_jax.evaluation import verdict
    v = result["verdict"]
    if "selection" in result and v["guard"]:
        decision = selected[0] if selected else {"verdict": v["verdict"], "because": v["because"]}
        which = "refined" if selected else "initial"
        pick = (selected[1], selected[0]["metrics"], selected[0]["step"]) if selected else None
    else:
        decision = {"verdict": v["verdict"], "because": v["because"]}
        which = verdict.exported_model(v["verdict"], v["guard"])
        pick = (refined, result["after"], result.get("after_step"))
    model, metrics, step = pick if which == "refined" else (before, result["before"], 0)
    source = result["model_after"] if which == "refined" else fs.abspath(init_path)
    provenance = {"exported_by": "refine_jax eval stage guard", "exported": which, "from": source, "step": step,
                  "verdict": decision["verdict"], "because": decision["because"], "guard": v["guard"]}
    checkpoints.save_model(paths.exported(workdir), model.cfg, model.variables, provenance, replace=True)
    return {"model": which, "path": fs.abspath(paths.exported(workdir)), "from": source, "step": step,
            "metrics": metrics}


def run(config, workdir: str, init: Optional[str] = None, progress: bool = True,
        trained: Optional[str] = None) -> dict:
    """Evaluate `init` (default config.init), the refined model in TRAINED/model (default
    WORKDIR; the last round's folder with label.rounds > 1) with the curve over TRAINED/checkpoints,
    the oracle in WORKDIR/oracle/model, and the trivial baseline; write WORKDIR/eval."""
    from tqdm import tqdm
    trained = trained or workdir
    rows = (("after", paths.model(trained)), ("oracle", paths.model(paths.oracle(workdir))))
    for name, folder in rows:
        _check_not_unfinished(folder, name)
    ec = EvalConfig.from_config(config.get("eval"))
    ec = dataclasses.replace(ec, pad_mode=resolve_pad_mode(ec, config))
    before = checkpoints.load_model(init or config.init, config.get("runtime"))
    all_clips, held_out = evaluation_clips(ec, config)
    clips = parallel.process_share(all_clips)  # each process its share; metrics are gathered
    out_dir = paths.evaluation(workdir)
    fs.makedirs(out_dir)
    task = tasks.of(before.cfg)
    is_flow = task is tasks.FLOW
    bar = lambda name: tqdm(clips, desc=f"eval ({name})", unit="clip",
                            disable=not (progress and parallel.is_main_process()))
    m_before = measure(before, bar("before"), ec, config)
    primary = task.primary
    has_gt = primary in m_before["model"]
    if not has_gt:  # a user's footage: the label-free diagnostics are all there is to report
        primary = "cycle_pass"
    result = {"primary": primary, "lower_is_better": report.lower_is_better(primary),
              "before": m_before["model"], "after": None, "oracle": None, "baseline": m_before["baseline"],
              "baseline_name": task.baseline_name,
              "speed_bins": m_before["bins"], "labels": _label_precision(trained, config),
              "model_before": fs.abspath(init or config.init), "clips": len(all_clips),
              "clips_held_out": held_out, "holdout": ec.held_out_every(),
              "resolution": "256x256 (rescaled)" if (ec.tapvid_256 and not is_flow)
              else f"{all_clips[0].frames.shape[1]}x{all_clips[0].frames.shape[2]} (as stored)",
              "query_mode": None if is_flow or not has_gt else ec.query_mode,
              "curve": [[0, m_before["model"][primary]]], "gt_known": m_before.get("gt_known", 1.0),
              "ground_truth": has_gt, "kind": task.kind,
              "pad_mode": ec.pad_mode if is_flow else None}
    examples = {"before": m_before["example"]}
    refined = selected = None
    selecting = ec.select_checkpoint and ec.guard and ec.proxies
    for name, folder in rows:
        if not fs.isdir(folder):
            continue
        loaded = checkpoints.load_model(folder, config.get("runtime"))
        # The verdict reads only before/after; the oracle is a ground-truth reference, so its
        # label-free proxies would cost a third of the eval stage for numbers nobody reads.
        m_ec = ec if name == "after" else dataclasses.replace(ec, proxies=False)
        m = measure(loaded, bar(name), m_ec, config)
        result[name], result[f"model_{name}"], examples[name] = m["model"], fs.abspath(folder), m["example"]
        if name == "after":
            refined = loaded
            result["after_step"] = checkpoints.exported_steps(folder)
            result.update(judge(m_before, m, ec, task.kind))
        if name == "after" and (ec.curve or selecting):
            curve, judged = _over_checkpoints(trained, loaded.cfg, clips, m_before, m, result["after_step"],
                                              ec, config, task.kind, primary, has_gt, selecting)
            result["curve"] += curve if ec.curve else []
            if selecting:
                selected, result["selection"] = _select(judged)
    result["curve"].sort()
    if result["after"]:
        result["improved"] = {k: report.improved(k, v, result["after"][k]) for k, v in result["before"].items()}
        result["exported"] = export(workdir, result, before, refined, init or config.init, selected)
    if parallel.is_main_process():
        fs.write_json_atomic(os.path.join(out_dir, "metrics.json"), report.json_safe(result))
        report.curve_figure(out_dir, result)
        task.figures(out_dir, result, clips, examples)
        report.write_markdown(out_dir, result)
    parallel.barrier("eval: report written")
    return result
