"""Shift study: does refinement help for each kind of appearance shift, and how much could it?

  python -m refine_jax.tools.study --config=configs/raft.py --workdir=runs/study_raft \
      [--shifts=default,motion_blur,fog,noise,brightness,defocus,jpeg,textures] \
      [--severities=1,2] [--seeds=0,1,2] [--config.FIELD=VALUE ...]

Every cell (shift, severity, seed) runs the config's demo stages on a procedural target with only
that shift at that severity ('default': every shift of the demo's combined target at it) and
target seed, in WORKDIR/<shift>_<severity>/seed<seed>; a cell finished with the same config and
model is read back, so the study resumes (another config or model in the same folder is refused);
with --reeval its eval stage alone runs again on the models it trained. Then it prints, per shift
and severity, the primary metric of the trivial baseline, the model before and after refinement
and the oracle (mean +- std over seeds), the relative change, and how many seeds improved, and
writes WORKDIR/study.md, study.json and study.png.
"""
from __future__ import annotations

import copy
import os
from typing import Dict, List, Optional

import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from refine_jax import fs, paths, settings
from refine_jax.demo import shifts as shifts_lib
from refine_jax.demo import synthetic

def define_flags() -> None:
    """The command line; defined only when this module is the program, so that importing it beside
    refine_jax.main (which owns the same flag names) is fine."""
    config_flags.DEFINE_config_file("config", None, "ml_collections config file[:preset]", lock_config=False)
    flags.DEFINE_string("workdir", None, "study folder (resumed if it exists)")
    flags.DEFINE_list("shifts", ["default", *shifts_lib.NAMES], "shifts to study")
    flags.DEFINE_list("severities", ["1", "2"], "severities")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "target seeds")
    flags.DEFINE_bool("oracle", True, "run the oracle stage in every cell (off: the proxy study needs "
                      "only before and after, at about 60 % of the time)")
    flags.DEFINE_bool("reeval", False, "measure the finished cells again with the eval stage alone, on the models "
                      "they trained (after a change to the evaluation, e.g. a new proxy); cells not "
                      "finished run whole")


def shift_spec(shift: str, severity: float) -> str:
    """The demo.target_shifts string of one cell."""
    if shift == "default":
        return ",".join(f"{n}:{severity:g}" for n, _ in synthetic.TARGET_SHIFTS)
    shifts_lib.check(((shift, severity),))
    return f"{shift}:{severity:g}"


CELL_JSON = "cell.json"


def cell_config(config, shift: str, severity: float, seed: int, oracle: bool = True):
    """The config one cell runs: the study's, with the cell's target shift and seed (and without
    the oracle stage unless `oracle`)."""
    c = copy.deepcopy(config)
    if not oracle:
        c.stages = tuple(s for s in c.stages if s != "oracle")
    c.demo.target_shifts = shift_spec(shift, severity)
    c.demo.seed = seed
    c.eval.curve = False
    return c


def cell_key(config, workdir: str) -> dict:
    """What a cell's results depend on: its config (with the model path it resolves to in
    `workdir`) and the sha256 of that model's weights."""
    from refine_jax import checkpoints
    from refine_jax import pipeline
    c = pipeline.resolve(copy.deepcopy(config), workdir)
    recorded = settings.as_dict(c)
    if "pretrain" in pipeline.stage_names(c):  # the cell makes its model from its own config: that is the key
        return {"config": recorded, "model_sha256": "pretrained by the cell"}
    init = c.init.rstrip("/")
    weights = os.path.join(init, checkpoints.VARIABLES) if fs.isdir(init) else init
    return {"config": recorded, "model_sha256": checkpoints.fingerprint(weights) if fs.exists(weights) else None}


def _key_defaults() -> dict:
    """The settings' defaults, for a cell key saved before a setting existed."""
    from refine_jax.settings import EvalConfig
    from refine_jax.settings import LabelConfig
    from refine_jax.settings import AugmentConfig
    from refine_jax.settings import TrainConfig
    return {"config": settings.dataclass_defaults(train=TrainConfig, augment=AugmentConfig, label=LabelConfig,
                                                  eval=EvalConfig)}


def run_cell(config, workdir: str, shift: str, severity: float, seed: int, oracle: bool = True,
             reeval: bool = False) -> Optional[dict]:
    """One cell's eval metrics: read back when the cell finished with the same config and model
    (with `reeval`, measured again by the eval stage alone, on its trained models), else run;
    None when a SIGTERM stopped it (saved, to resume). A cell folder left by another config or
    model is an error, not a silent reuse."""
    from refine_jax import pipeline
    c = cell_config(config, shift, severity, seed, oracle)
    path, key_path = os.path.join(paths.evaluation(workdir), "metrics.json"), os.path.join(workdir, CELL_JSON)
    key = cell_key(c, workdir)
    if fs.exists(key_path) or fs.exists(path):
        old = fs.read_json(key_path) if fs.exists(key_path) else None
        diffs = (["it records no cell.json"] if old is None
                 else settings.differences(old, key, defaults=_key_defaults()))
        if diffs:
            raise ValueError(f"{workdir}: this study cell was run with another config or model "
                             f"({diffs[0]}); pass a new --workdir or delete the folder")
    else:
        fs.makedirs(workdir)
        fs.write_json_atomic(key_path, key)
    if reeval and fs.exists(path):
        c.stages = ("eval",)
        pipeline.run(c, workdir, progress=False)
    elif not fs.exists(path) and pipeline.run(c, workdir).get("preempted"):
        return None
    return fs.read_json(path)


def summarise(cells: Dict[tuple, dict]) -> List[dict]:
    """Rows per (shift, severity): mean and std over seeds of the primary metric per model."""
    rows = []
    for shift, sev in sorted({k[:2] for k in cells}, key=lambda k: (k[0] != "default", k)):
        runs = [cells[k] for k in cells if k[:2] == (shift, sev)]
        p, lower = runs[0]["primary"], runs[0]["lower_is_better"]
        get = lambda name: np.array([r[name][p] if r.get(name) else np.nan for r in runs], np.float64)
        before, after = get("before"), get("after")
        change = 100 * (after - before) / before
        rows.append({"shift": shift, "severity": sev, "seeds": len(runs), "metric": p, "lower_is_better": lower,
                     **{f"{n}_{s}": float(f(get(n))) for n in ("baseline", "before", "after", "oracle")
                        for s, f in (("mean", np.nanmean), ("std", np.nanstd))},
                     "change_pct_mean": float(np.nanmean(change)), "change_pct_std": float(np.nanstd(change)),
                     "improved": int(np.sum((after < before) if lower else (after > before)))})
    return rows


def table(rows: List[dict]) -> str:
    if not rows:
        return "(no cells)"
    p = rows[0]["metric"]
    lines = [f"| shift | severity | {p} baseline | before | after | oracle | change % | improved |",
             "|---|---|---|---|---|---|---|---|"]
    pm = lambda r, n: f"{r[n + '_mean']:.4f} ± {r[n + '_std']:.4f}"
    for r in rows:
        lines.append(f"| {r['shift']} | {r['severity']:g} | {pm(r, 'baseline')} | {pm(r, 'before')} | "
                     f"{pm(r, 'after')} | {pm(r, 'oracle')} | {r['change_pct_mean']:+.1f} ± {r['change_pct_std']:.1f} | "
                     f"{r['improved']}/{r['seeds']} |")
    return "\n".join(lines)


def plot(rows: List[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['shift']}\n{r['severity']:g}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows)), 3.5))
    for k, (name, colour) in enumerate((("baseline", "grey"), ("before", "tab:red"), ("after", "tab:blue"),
                                        ("oracle", "tab:green"))):
        ax.bar(x + (k - 1.5) * 0.2, [r[f"{name}_mean"] for r in rows], 0.2,
               yerr=[r[f"{name}_std"] for r in rows], label=name, color=colour)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel(rows[0]["metric"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fs.write_bytes_atomic(path, buf.getvalue())
    plt.close(fig)


def main(argv):
    del argv
    from refine_jax import cli
    logging.set_verbosity(logging.WARNING)
    cli.enable_compilation_cache()
    f = flags.FLAGS
    config, root = f.config, f.workdir
    cells = {}
    for shift in f.shifts:
        for sev in map(float, f.severities):
            for seed in map(int, f.seeds):
                wd = os.path.join(root, f"{shift}_{sev:g}", f"seed{seed}")
                print(f"study: {shift} {sev:g} seed {seed} in {wd}", flush=True)
                cell = run_cell(config, wd, shift, sev, seed, f.oracle, f.reeval)
                if cell is None:
                    print(f"study: preempted in {wd} (saved); rerun the same command to resume", flush=True)
                    return
                cells[(shift, sev, seed)] = cell
    rows = summarise(cells)
    text = table(rows)
    print(text)
    fs.write_text_atomic(os.path.join(root, "study.md"), "# Shift study\n\n" + text + "\n")
    fs.write_json_atomic(os.path.join(root, "study.json"), rows)
    plot(rows, os.path.join(root, "study.png"))


if __name__ == "__main__":
    from refine_jax import cli
    define_flags()
    cli.absl_run(main, required=["config", "workdir"])
