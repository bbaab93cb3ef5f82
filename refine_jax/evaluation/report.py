"""The evaluation's outputs: metrics.json values (`json_safe`), the direction of each metric, the
figures and report.md (every metric with its direction, the baseline and the oracle)."""
from __future__ import annotations

import io
import os
import re
from typing import Optional

import numpy as np

from refine_jax import fs, viz
from refine_jax.evaluation import proxies


LOWER_IS_BETTER = ("epe", "fl", "ate", "mte",
                   *(k for k, lower in proxies.LOWER_IS_BETTER.items() if lower))
# a scale to read other numbers against, neither better nor worse
NO_DIRECTION = tuple(k for k, lower in proxies.LOWER_IS_BETTER.items() if lower is None)


def lower_is_better(metric: str) -> bool:
    """Direction of a metric by name: errors are lower-better, rates and accuracies higher-better."""
    return metric.split("@")[0] in LOWER_IS_BETTER


# Shares of pixels, points or queries that pass a threshold; every other metric is a mean of errors.
_THRESHOLDED = re.compile(r"^(\d+px|fl|cycle_pass|fb_1px|fb_atc|delta_[\d.]+|delta_avg|jaccard_[\d.]+|"
                          r"average_jaccard|occlusion_accuracy|survival)$")


def metric_kind(metric: str) -> str:
    """'fraction' for a share of pixels or points under a threshold (1 / 3 / 5 px, KITTI's Fl, the
    cycle-pass share, the forward-backward shares, TAP-Vid's delta, Jaccard and occlusion accuracy,
    survival): one pixel on the other side of its threshold moves it by 1 / count, whatever the
    error's size. 'mean' for a mean of errors (EPE, ATE, photometric error), which moves with the
    errors themselves."""
    return "fraction" if _THRESHOLDED.match(metric.split("@")[0]) else "mean"


def json_safe(obj):
    """The result with NaN (an empty speed bin) as null and numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items() if k != "example"}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def improved(metric: str, before: float, after: float) -> Optional[bool]:
    if metric in NO_DIRECTION or not (np.isfinite(before) and np.isfinite(after)) or after == before:
        return None
    return bool((after < before) == lower_is_better(metric))


def curve_figure(out_dir, result) -> None:
    """curve.png: the primary metric over the training steps, beside the baseline and the oracle."""
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


def flow_figures(out_dir, clips, examples) -> None:
    """flow_<model>.png of the first pair (and flow_gt.png) on one colour scale."""
    gt = next((c.flow[0] for c in clips if c.flow is not None), None)
    scale = float(np.linalg.norm(examples["before"] if gt is None else gt, axis=-1).max())
    if gt is not None:
        viz.save_png(os.path.join(out_dir, "flow_gt.png"), viz.flow_to_color(gt, scale))
    for name, ex in examples.items():
        viz.save_png(os.path.join(out_dir, f"flow_{name}.png"), viz.flow_to_color(ex, scale))


def track_figures(out_dir, examples) -> None:
    """tracks_<model>.png: the tracks of the first clip with ground-truth queries on its last frame."""
    for name, (clip, out) in ((k, v) for k, v in examples.items() if v is not None):  # GT queries only
        t = len(clip.frames) - 1
        img = viz.draw_tracks(clip.frames[t], out["tracks"][:, t], out["visible"][:, t],
                              tails=out["tracks"][:, :t + 1])
        viz.save_png(os.path.join(out_dir, f"tracks_{name}.png"), img)


def fmt(v) -> str:
    """A metric to 4 decimals; '' for none or NaN."""
    return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4f}"


def selection_lines(r) -> list:
    """report.md's table of the judged training checkpoints (eval.select_checkpoint), if any."""
    sel = r.get("selection")
    if not sel:
        return []
    p = r["primary"]
    chosen = sel["chosen_step"]
    lines = ["Checkpoint selection: every kept training checkpoint judged by the same rule; "
             + (f"step {chosen} is exported (the 'better' one that clears the rule by the most)." if chosen is not None
                else "none is 'better', so the initial model is exported."), "",
             f"| step | verdict | clearance (points) | {p} |", "|---|---|---|---|"]
    for j in sel["checkpoints"]:
        lines.append(f"| {j['step']} | {j['verdict']} | {j['clearance']:+.2f} | {fmt(j['metrics'].get(p))} |")
    return lines + [""]


def verdict_section(r) -> list:
    """report.md's lines on the label-free verdict, the guard's choice and the proxies' record."""
    from refine_jax.evaluation import verdict as verdict_lib
    v, ex = r["verdict"], r.get("exported") or {}
    lines = ["## Did refinement help? (label-free verdict)", "",
             f"**Verdict: {v['verdict']}.** " + (
                 f"Exported: the **{ex.get('model')}** model"
                 + (f" of step {ex['step']}" if ex.get("model") == "refined" and ex.get("step") else "")
                 + f" ({ex.get('path')})" if ex else "")
             + ("" if v.get("guard", True) else " - the guard is off, so the last training step is exported "
                "whatever the verdict") + ".", ""]
    lines += [f"- {line}" for line in v["because"]] + [""]
    lines += selection_lines(r)
    if r.get("proxy_changes"):
        lines += ["| proxy | better | change % | 90 % interval | clips |", "|---|---|---|---|---|"]
        for k, c in r["proxy_changes"].items():
            lines.append(f"| {k} | {'lower' if lower_is_better(k) else 'higher'} | {c['change']:+.2f} | "
                         f"[{c['lo']:+.2f}, {c['hi']:+.2f}] | {c['clips']} |")
        lines.append("")
    lines += verdict_lib.record_lines(r.get("kind", "flow"))
    return lines


def held_out_words(result: dict) -> str:
    """How the evaluated clips relate to the training: held out of it, or the clips trained on."""
    if result.get("clips_held_out"):
        return f" held out of labelling and training (one in {result['holdout']} of each source)"
    if result.get("holdout"):
        return (f" (eval.holdout {result['holdout']} held none out: too few clips per source, so these are "
                f"the clips trained on)")
    return ""


def write_markdown(out_dir, r):
    """report.md: a verdict, then every metric with its direction, the baseline and the oracle."""
    p, b, a = r["primary"], r["before"], r["after"]
    lines = ["# Evaluation report", "",
             f"{r['clips']} clips" + held_out_words(r) + f", resolution {r['resolution']}"
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
                  f"{fmt(r['baseline'].get(p))}" + (f"; oracle {r['oracle'][p]:.4f}" if r.get("oracle") else "") + ".", ""]
        base = r["baseline"].get(p, float("nan"))
        for name in ("before", "after"):
            if r.get("ground_truth", True) and not improved(p, base, r[name][p]):
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
        orc = fmt(r["oracle"].get(k)) if r.get("oracle") else ""
        better = "" if k in NO_DIRECTION else "lower" if lower_is_better(k) else "higher"
        lines.append(f"| {k} | {better} | {fmt(r['baseline'].get(k))} | "
                     f"{fmt(v)} | {fmt(av)} | {ch} | {imp} | {orc} |")
    unit = "pixels" if r["kind"] == "flow" else "tracks"
    lines += [""]
    if r.get("verdict"):
        lines += verdict_section(r)
    if r["speed_bins"]:
        lines += [f"Share of {unit} per ground-truth speed bin ({'px' if unit == 'pixels' else 'px/frame'}): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["speed_bins"].items()) + ".", ""]
    lab = r.get("labels")
    if lab and lab.get("error_all") is not None:
        lines += ["## Pseudo-labels", "",
                  f"Yield {lab['yield']:.4f} ({lab['kept']} of {lab['total']}); ground-truth error of the kept "
                  f"labels {fmt(lab['error_kept'])} against {fmt(lab['error_all'])} for all estimates "
                  f"(ratio {fmt(lab.get('kept_over_all'))}).", ""]
        if lab.get("per_speed_bin"):
            bias = any("speed_bias_kept" in v for v in lab["per_speed_bin"].values())
            lines += ["| GT speed bin | yield | error kept | error all |" + (" speed bias kept | speed bias all |" if bias else ""),
                      "|---|---|---|---|" + ("---|---|" if bias else "")]
            for k, v in sorted(lab["per_speed_bin"].items(), key=lambda kv: float(kv[0][1:].split(",")[0])):
                if not v.get("n", 1):
                    continue  # no labelled pixel or track moves at this speed
                lines.append(f"| {k} | {v['yield']:.4f} | {fmt(v['error_kept'])} | {fmt(v['error_all'])} |"
                             + (f" {fmt(v.get('speed_bias_kept'))} | {fmt(v.get('speed_bias_all'))} |" if bias else ""))
            if bias:
                lines.append("")
                lines.append("Speed bias: the mean of |estimate| - |truth| in px ("
                             + ("of the flow vectors" if unit == "pixels" else "of the distance from the query point, per frame")
                             + "), negative where the estimates are too slow. A bias the forward and backward "
                             "estimates share passes the cycle check, so the kept labels carry it and refinement learns it.")
            lines.append("")
    elif lab:
        lines += ["## Pseudo-labels", "", f"Yield {fmt(lab.get('yield'))} (no ground truth in the labelled videos).", ""]
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
