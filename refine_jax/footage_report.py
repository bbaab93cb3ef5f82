"""The reports of `refine`: OUT/report.md, a self-contained OUT/report.html (every picture and
video inlined), OUT/summary.json, and the one-screen summary printed at the end.

Pictures: for flow, a few pairs spread over the evaluated clips, each row the first frame, the
flow before and after refinement on one colour scale and, where ground truth exists, the truth,
the end-point error before and after and their difference (blue: the error fell, red: it rose).
For tracks, the first evaluated clip with a grid of queries tracked by both models, as the last
frame with the tracks drawn and as an mp4 each.
"""
from __future__ import annotations

import base64
import html
import io
import os
import time
from typing import Dict, List

import numpy as np

from refine_jax import checkpoints, fs, parallel, paths, tasks, viz
from refine_jax.evaluation import report

PICTURE_ROWS = 3


def verdict(result: dict) -> tuple:
    """('better' | 'worse' | 'no change' | 'cannot tell', one sentence) from the eval stage's result."""
    p, b, a = result["primary"], result["before"], result.get("after")
    if not a:
        return "cannot tell", "the refined model was not evaluated"
    change = a[p] - b[p]
    if not result.get("ground_truth", True):
        v = result.get("verdict")
        if v and v.get("rule"):
            return v["verdict"], ("no ground truth; the label-free verdict from " + "; ".join(v["because"]))
        return "cannot tell", ("no ground truth: the label-free diagnostics (the share of estimates that "
                               f"pass the cycle check, {b[p]:.4f} before and {a[p]:.4f} after) are not a "
                               "verdict on accuracy; evaluate on footage with ground truth (--eval)")
    better = report.improved(p, b[p], a[p])
    word = "no change" if change == 0 else ("better" if better else "worse")
    base = result["baseline"].get(p)
    tail = f"; {result['baseline_name']} {base:.4f}" if base is not None else ""
    return word, (f"{p} {b[p]:.4f} before, {a[p]:.4f} after ({100 * change / b[p]:+.1f} %, "
                  f"{'lower' if result['lower_is_better'] else 'higher'} is better){tail}")


def _clips(config) -> list:
    from refine_jax.settings import EvalConfig
    from refine_jax.stages import evaluate
    return evaluate.evaluation_clips(EvalConfig.from_config(config.get("eval")), config)[0]


def _spread(items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return buf.getvalue()


def flow_pictures(models: Dict[str, "checkpoints.LoadedModel"], clips, config, iters: int) -> bytes:
    """One PNG: a row per pair (up to PICTURE_ROWS, spread over `clips`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from refine_jax.evaluation.common import label_config
    from refine_jax.labels.flow import FlowLabeler
    rows = _spread(clips, PICTURE_ROWS)
    labeler = FlowLabeler(models["before"].cfg, models["before"].variables, label_config(config, iters),
                          parallel.make_mesh(1, local=True))
    flows = {}
    for name, m in models.items():  # one compiled function: the weights are its argument
        labeler.variables = m.variables
        flows[name] = [labeler.estimate(c.frames[:2])[0][0] for c in rows]
    has_gt = all(c.flow is not None for c in rows)
    cols = 7 if has_gt else 3
    fig, axes = plt.subplots(len(rows), cols, figsize=(3 * cols, 2.4 * len(rows)), squeeze=False)
    for r, c in enumerate(rows):
        before, after = flows["before"][r], flows["after"][r]
        gt = c.flow[0] if has_gt else None
        scale = float(np.linalg.norm(gt if gt is not None else before, axis=-1).max()) or 1.0
        panels = [(c.frames[0], f"{c.video_id} frame {c.clip_start}"),
                  (viz.flow_to_color(before, scale), "flow before"), (viz.flow_to_color(after, scale), "flow after")]
        for ax, (img, title) in zip(axes[r], panels):
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
        if has_gt:
            e_b, e_a = (np.linalg.norm(f - gt, axis=-1) for f in (before, after))
            top = float(np.percentile(np.concatenate([e_b.ravel(), e_a.ravel()]), 99)) or 1.0
            d = e_a - e_b
            lim = float(np.percentile(np.abs(d), 99)) or 1.0
            axes[r][3].imshow(viz.flow_to_color(gt, scale))
            axes[r][3].set_title("ground truth", fontsize=9)
            for ax, e, t in ((axes[r][4], e_b, f"error before ({e_b.mean():.2f} px)"),
                             (axes[r][5], e_a, f"error after ({e_a.mean():.2f} px)")):
                ax.imshow(e, cmap="magma", vmin=0, vmax=top)
                ax.set_title(t, fontsize=9)
            axes[r][6].imshow(d, cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[r][6].set_title(f"after - before ({d.mean():+.2f} px)", fontsize=9)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def track_pictures(models, clips, out_dir: str, iters: int) -> Dict[str, bytes]:
    """{'tracks_<model>.png': the last frame with the tracks, 'tracks_<model>.mp4': the overlay}
    for the first clip and an 8x8 grid of queries on its first frame."""
    from refine_jax import infer
    from refine_jax.data import frames as frames_lib
    from refine_jax.models.pips_chain import ChainedTracker
    clip = clips[0]
    video = clip.frames
    h, w = video.shape[1:3]
    queries = infer.grid_queries(8, h, w)
    out = {}
    for name, m in models.items():
        tr = ChainedTracker(m.cfg, m.variables, iters=iters)(video, queries)
        frames = infer.overlay_video(video, tr["tracks"], tr["visible"])
        buf = io.BytesIO()
        from PIL import Image
        Image.fromarray(frames[-1]).save(buf, format="png")
        out[f"tracks_{name}.png"] = buf.getvalue()
        path = os.path.join(out_dir, f"tracks_{name}.mp4")
        frames_lib.write_video(path, frames, clip.fps or 10.0)
        out[f"tracks_{name}.mp4"] = _read(path)
    return out


def _read(path: str) -> bytes:
    with fs.open_file(path, "rb") as f:
        return f.read()


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _video(data: bytes) -> str:
    return (f'<video controls loop muted autoplay src="data:video/mp4;base64,'
            f'{base64.b64encode(data).decode()}"></video>')


def _metrics_table(r: dict) -> str:
    b, a = r["before"], r.get("after") or {}
    head = ["metric", "better", r["baseline_name"], "before", "after", "change"] + (["oracle"] if r.get("oracle") else [])
    rows = []
    for k, v in b.items():
        if isinstance(v, float) and np.isnan(v) and "@" in k:
            continue
        av = a.get(k)
        ch = "" if av is None or v is None else f"{av - v:+.4f}"
        imp = r.get("improved", {}).get(k)
        cls = {True: "good", False: "bad"}.get(imp, "")
        cells = [k, "lower" if report.lower_is_better(k) else "higher", report.fmt(r["baseline"].get(k)),
                 report.fmt(v), report.fmt(av), ch] + ([report.fmt(r["oracle"].get(k))] if r.get("oracle") else [])
        rows.append(f'<tr class="{cls}">' + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>")


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}tr.good td:nth-child(5){background:#d8f0d8}
tr.bad td:nth-child(5){background:#f6d5d5}img,video{max-width:100%}.verdict{font-size:1.3em;padding:.5em;
border-left:6px solid #888;background:#f4f4f4}.better{border-color:#2a2}.worse{border-color:#c22}
code{background:#eee;padding:0 3px}table.pics{width:100%}table.pics td{width:50%;text-align:center}
table.pics img,table.pics video{width:100%;image-rendering:pixelated}.caption{color:#555;font-size:.9em}"""


def write_html(path: str, title: str, facts: List[str], word: str, sentence: str, result: dict,
               pictures: Dict[str, bytes], eval_dir: str) -> None:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f'<p class="verdict {word.replace(" ", "-")}"><b>{html.escape(word)}</b>: {html.escape(sentence)}</p>',
             "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>",
             "<h2>Metrics</h2>", _metrics_table(result)]
    if "flow.png" in pictures:
        parts += ["<h2>Before and after</h2>", _img(pictures["flow.png"], "flow before and after"),
                  '<p class="caption">Flow on one colour scale per row (hue: direction, saturation: speed). '
                  'Error maps: black is none, bright is large, one scale per row. The difference: blue where '
                  'the error fell, red where it rose.</p>']
    if "tracks_before.png" in pictures:
        parts += ["<h2>Before and after</h2><table class='pics'><tr><th>before</th><th>after</th></tr><tr>",
                  *(f"<td>{_img(pictures[f'tracks_{n}.png'], n)}<br>{_video(pictures[f'tracks_{n}.mp4'])}</td>"
                    for n in ("before", "after")), "</tr></table>"]
    curve = os.path.join(eval_dir, "curve.png")
    if fs.exists(curve) and len(result.get("curve", [])) > 1:
        parts += ["<h2>During training</h2>", _img(_read(curve), "metric per checkpoint")]
    parts.append("</body></html>")
    fs.write_text_atomic(path, "\n".join(parts))


def write(req, config, init: str, result: dict, manifest: dict, trained: dict, seconds: dict,
          pth_path: str, budget) -> dict:
    """Every report of a finished refinement; prints the one-screen summary. Main process only
    writes; every process returns the summary."""
    word, sentence = verdict(result)
    model_dir = paths.model(req.out)
    exported = result.get("exported") or {}
    eval_dir = paths.evaluation(req.out)
    stats = manifest.get("stats", {})
    summary = {"verdict": word, "verdict_reason": sentence, "primary": result["primary"],
               "before": result["before"].get(result["primary"]),
               "after": (result.get("after") or {}).get(result["primary"]),
               "ground_truth": result.get("ground_truth", True), "weights": fs.abspath(init),
               "model": fs.abspath(model_dir), "pth": fs.abspath(pth_path) if pth_path else "",
               "report_md": os.path.join(req.out, "report.md"), "report_html": os.path.join(req.out, "report.html"),
               "videos": config.data.videos, "eval": config.eval.data or config.data.videos,
               "eval_clips": result["clips"], "eval_clips_held_out": result.get("clips_held_out", False),
               "labelled_samples": stats.get("samples"),
               "label_yield": stats.get("yield"), "clips_over_budget": stats.get("clips_over_budget", 0),
               "train_steps": trained.get("step"), "crop": trained.get("crop"),
               "batch_size": int(config.train.batch_size), "stage_seconds": seconds,
               "label_free_verdict": (result.get("verdict") or {}).get("verdict"),
               "exported": exported.get("model", "refined"),
               "exported_model": exported.get("path", fs.abspath(model_dir)),
               "seconds": None,  # the wall time of the command, set below
               "budget_seconds": None if budget.seconds == float("inf") else budget.seconds}
    if not parallel.is_main_process():
        return summary
    t0 = time.time()
    pictures = _pictures(config, init, model_dir, result)
    seconds["pictures"] = round(time.time() - t0, 1)
    summary["seconds"] = round(time.time() - budget.start, 1)
    facts = [f"weights: {summary['weights']}", f"videos: {summary['videos']}",
             f"labelled {summary['labelled_samples']} samples, {100 * (summary['label_yield'] or 0):.1f} % of "
             f"estimates kept by the cycle check"
             + (f"; {summary['clips_over_budget']} clips left unlabelled by the time budget" if summary["clips_over_budget"] else ""),
             f"trained {summary['train_steps']} steps, batch {summary['batch_size']}"
             + (f", {summary['crop'][0]}x{summary['crop'][1]} crops" if summary["crop"] else "")
             + (" (the steps the time budget held)" if trained.get("budget_steps") else ""),
             f"evaluated on {result['clips']} clips of {summary['eval']}" + report.held_out_words(result),
             f"refined model (last step): {summary['model']}",
             f"exported: the {summary['exported']} model, {summary['exported_model']}"
             + (f" and {summary['pth']} (official layout)" if pth_path else "")
             + (f" (label-free verdict: {summary['label_free_verdict']}; "
                + ("the guard keeps the initial model unless it is 'better'" if config.eval.guard
                   else "guard off: the last step regardless") + ")" if summary["label_free_verdict"] else ""),
             "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + f"; {summary['seconds']:.0f} in all"]
    write_html(os.path.join(req.out, "report.html"), "refine_jax: refinement report", facts, word, sentence,
               result, pictures, eval_dir)
    md_path = os.path.join(eval_dir, "report.md")
    md = _read(md_path).decode() if fs.exists(md_path) else ""
    fs.write_text_atomic(os.path.join(req.out, "report.md"),
                         "\n".join([f"# Refinement: {word}", "", sentence + ".", ""] + [f"- {f}" for f in facts]
                                   + ["", md.replace("# Evaluation report", "## Evaluation", 1)]))
    fs.write_json_atomic(os.path.join(req.out, "summary.json"), report.json_safe(summary))
    print_summary(summary, facts)
    return summary


def _pictures(config, init, model_dir, result) -> Dict[str, bytes]:
    models = {"before": checkpoints.load_model(init, config.get("runtime")),
              "after": checkpoints.load_model(model_dir, config.get("runtime"))}
    clips = _clips(config)
    iters = int(config.eval.iters or 12)
    if tasks.of(models["before"].cfg) is tasks.FLOW:
        return {"flow.png": flow_pictures(models, clips, config, iters)}
    return track_pictures(models, clips, paths.evaluation(os.path.dirname(model_dir)), iters)


def print_summary(summary: dict, facts: List[str]) -> None:
    line = "-" * 72
    print(line)
    print(f"refinement: {summary['verdict'].upper()} - {summary['verdict_reason']}")
    for f in facts:
        print(f"  {f}")
    print(f"  report: {summary['report_html']} (and report.md, summary.json)")
    if summary.get("budget_seconds"):
        print(f"  wall time {summary['seconds']:.0f} s of a {summary['budget_seconds']:.0f} s budget")
    print(line, flush=True)
