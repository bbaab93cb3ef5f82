"""Refinement settings over many target and training seeds, in memory: which setting helps on most
targets, not on one.

  python -m refine_jax.tools.sweep --config=configs/raft.py --out=runs/sweep.jsonl \
      --target_seeds=0,1,2,3,4,5 --train_seeds=0,1 --wise=0.5 \
      --variant=default: --variant='lr5e-5:train.lr=5e-5' --variant='fnet:train.frozen=("fnet",)'

For the RAFT demo config: render `demo.target_videos` target videos per target seed (as the
`generate` stage does, so seeds 0, 1, 2 are the demo's videos), label them with the frozen model
(label section) and, per variant, train (train and augment sections with the variant's
overrides) once per (target seed, training seed), then measure the model before and after on the
target videos against their ground truth. Training seed k starts the train step's RNG at
train.seed + k and draws the samples in a seeded shuffled order (epochs of every labelled pair);
the demo's tf.data pipeline orders them otherwise, so a cell is not the demo's number, and a GPU
rounds differently from a CPU. No shards, checkpoints or TensorFlow: it runs where only JAX does,
and a variant compiles its train step once for all its cells.

`--wise=A,...` also measures each trained model interpolated with the frozen one
(params_0 + A (params - params_0), WiSE-FT). Every cell is a line of the --out JSON lines file
(before: one line per target seed); the table at the end gives per variant the mean and range of
the EPE change, how many cells pass the demo's checks (EPE >= 5 % lower; no speed bin holding
>= 5 % of pixels worse; the 1 px and 3 px shares higher) and the mean change per speed bin.
"""
from __future__ import annotations

import ast
import collections
import copy
import dataclasses
import json
import os
import time
from typing import Dict, List, Sequence

import numpy as np

from refine_jax import fs

BINS = ("[0,1)", "[1,4)", "[4,16)", "[16,inf)")


def parse_variant(text: str):
    """'NAME:section.key=value;section.key=value' -> (NAME, {'section.key': value}); values are
    Python literals (a bare word stays a string)."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"--variant={text!r}: expected NAME:section.key=value;...")
    overrides = {}
    for item in filter(None, (x.strip() for x in rest.split(";"))):
        key, eq, value = item.partition("=")
        if not eq or key.count(".") != 1:
            raise ValueError(f"--variant={text!r}: {item!r} is not section.key=value")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return name, overrides


def variant_config(config, overrides: dict):
    """A copy of `config` with the variant's overrides (a key the config lacks is an error)."""
    c = copy.deepcopy(config)
    for key, value in overrides.items():
        section, field = key.split(".")
        if section not in c or field not in c[section]:
            raise ValueError(f"variant override {key}: the config has no such field")
        c[section][field] = tuple(value) if isinstance(value, list) else value
    return c


def _render(args):
    from refine_jax.demo import synthetic
    dom, seed, i, frames, size = args
    return synthetic.render_video(dom, synthetic.video_seed(seed, i), frames, size[0], size[1], 0,
                                  video_id=f"target-{seed}-{i:05d}")


def render_targets(config, seeds: Sequence[int], workers: int = 1) -> Dict[int, list]:
    """{seed: [Clip]}: the demo's target videos of each seed (demo.target_shifts, size, frames)."""
    from refine_jax.demo import stages as demo
    d = config.demo
    dom = demo.target_domain(d)
    jobs = [(dom, s, i, d.frames, tuple(d.size)) for s in seeds for i in range(d.target_videos)]
    if workers > 1:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            clips = pool.map(_render, jobs)
    else:
        clips = list(map(_render, jobs))
    return {s: [c for job, c in zip(jobs, clips) if job[1] == s] for s in seeds}


def label_samples(labeler, clips) -> List[dict]:
    """The label stage's training samples of `clips` (FlowLabeler.label_clip): frames uint8
    (2, H, W, 3), flow (1, H, W, 2) px, flow_valid (1, H, W) bool, one per consecutive pair."""
    return [{"frames": p.frames, "flow": p.flow, "flow_valid": p.flow_valid}
            for c in clips for p in labeler.label_clip(c, {})]


def batches(n_samples: int, batch_size: int, steps: int, seed: int) -> List[List[int]]:
    """Sample indices of `steps` batches: epochs of seeded permutations, batches spanning epochs."""
    rng = np.random.default_rng(seed)
    order: List[int] = []
    while len(order) < steps * batch_size:
        order += [int(i) for i in rng.permutation(n_samples)]
    return [order[k * batch_size:(k + 1) * batch_size] for k in range(steps)]


def checks(before: dict, after: dict) -> Dict[str, bool]:
    """The demo's RAFT checks of one cell: EPE >= 5 % lower, no speed bin with >= 5 % of the pixels
    worse, 1 px and 3 px shares higher. `before` carries the bin shares as 'share@BIN'."""
    bins_ok = all(not (before.get(f"share@{k}", 0) >= 0.05 and after[f"epe@{k}"] > before[f"epe@{k}"])
                  for k in BINS)
    return {"epe": after["epe"] <= 0.95 * before["epe"], "bins": bins_ok,
            "1px": after["1px"] > before["1px"], "3px": after["3px"] > before["3px"]}


def summarise(rows: List[dict]) -> str:
    """The table of a sweep's JSON lines (see the module docstring)."""
    before = {r["target_seed"]: r["metrics"] for r in rows if r["variant"] == "before"}
    by = collections.defaultdict(list)
    for r in rows:
        if r["variant"] != "before":
            by[r["variant"]].append(r)
    head = ("| variant | cells | EPE change, mean (min / max) | pass all | fail: EPE / bins / 1px / 3px | "
            + " | ".join(f"{k} change (worse)" for k in BINS) + " |")
    lines = [head, "|" + "---|" * (5 + len(BINS))]
    for name, rs in by.items():
        change, fails, per_bin = [], collections.Counter(), collections.defaultdict(list)
        passed = 0
        for r in rs:
            b, a = before[r["target_seed"]], r["metrics"]
            change.append(100 * (a["epe"] / b["epe"] - 1))
            c = checks(b, a)
            fails.update(k for k, ok in c.items() if not ok)
            passed += all(c.values())
            for k in BINS:
                if b.get(f"share@{k}", 0) >= 0.05:
                    per_bin[k].append(100 * (a[f"epe@{k}"] / b[f"epe@{k}"] - 1))
        bins = " | ".join(f"{np.mean(v):+.1f} % ({sum(x > 0 for x in v)})" if v else "-"
                          for v in (per_bin[k] for k in BINS))
        lines.append(f"| {name} | {len(rs)} | {np.mean(change):+.1f} % ({min(change):+.1f} / {max(change):+.1f}) | "
                     f"{passed}/{len(rs)} | {fails['epe']} / {fails['bins']} / {fails['1px']} / {fails['3px']} | {bins} |")
    return "\n".join(lines)


def run(config, variants: Dict[str, dict], target_seeds: Sequence[int], train_seeds: Sequence[int],
        out: str, wise: Sequence[float] = (), workers: int = 1, log=print) -> List[dict]:
    """Run the sweep (see the module docstring); append its rows to `out` and return them."""
    import jax
    from refine_jax import checkpoints, parallel
    from refine_jax.demo import stages as demo
    from refine_jax.stages import evaluate
    from refine_jax.labels.flow import FlowLabeler
    from refine_jax.settings import LabelConfig
    from refine_jax import settings, tasks
    from refine_jax.train import trainer
    t0 = time.time()
    loaded = checkpoints.load_model(config.init or demo.standin_dir(config.demo.arch), config.get("runtime"))
    if tasks.of(loaded.cfg) is not tasks.FLOW:
        raise ValueError("refine_jax.tools.sweep runs RAFT configs (configs/raft.py); PIPs is not supported yet")
    mesh = parallel.make_mesh(1)
    clips = render_targets(config, target_seeds, workers)
    log(f"sweep: rendered {sum(map(len, clips.values()))} target videos in {time.time() - t0:.1f} s")
    labeler = FlowLabeler(loaded.cfg, loaded.variables, LabelConfig.from_config(config.label), mesh)
    samples = {s: label_samples(labeler, clips[s]) for s in target_seeds}
    ec = dataclasses.replace(settings.EvalConfig.from_config(config.eval), label_free=False)
    frozen = {"params": loaded.variables["params"], "batch_stats": loaded.variables.get("batch_stats", {})}

    def measure(variables, seed) -> dict:
        v = {"params": variables["params"], **({"batch_stats": variables["batch_stats"]} if variables["batch_stats"] else {})}
        e = evaluate.measure(dataclasses.replace(loaded, variables=v), clips[seed], ec, config)
        return {**{k: float(x) for k, x in e["model"].items()},
                **{f"share@{k}": float(x) for k, x in e["bins"].items()},
                **{f"zero:{k}": float(x) for k, x in e["baseline"].items()}}

    fs.makedirs(os.path.dirname(os.path.abspath(out)))
    rows: List[dict] = []

    def emit(row):  # appended as measured, so an interrupted sweep keeps its cells
        rows.append(row)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")

    before = {}
    for s in target_seeds:
        before[s] = measure(frozen, s)
        emit({"variant": "before", "target_seed": s, "metrics": before[s],
              "label_yield": float(np.mean([x["flow_valid"].mean() for x in samples[s]]))})
    interp = jax.jit(lambda a, b, t: jax.tree_util.tree_map(lambda x, y: x + t * (y - x), a, b))
    for name, overrides in variants.items():
        c = variant_config(config, overrides)
        tc = settings.TrainConfig.from_config(c.train)
        ac = settings.AugmentConfig.from_config(c.augment)
        tx = trainer.make_optimizer(tc)
        step_fn = trainer.make_train_step(loaded.cfg, tc, tx, mesh, tc.freeze_bn, ac)
        for k in train_seeds:
            for s in target_seeds:
                t1 = time.time()
                state = trainer.initial_state(frozen, tx, tc.seed + k)
                data = samples[s]
                for idx in batches(len(data), tc.batch_size, tc.steps, 1000 * k + s):
                    state, _ = step_fn(state, {key: np.stack([data[i][key] for i in idx]) for key in data[0]})
                trained = jax.block_until_ready({"params": state.params, "batch_stats": state.batch_stats})
                seconds = time.time() - t1  # the steps run asynchronously: wait for the last one
                models = {name: trained, **{f"{name} wise{a:g}": interp(frozen, trained, a) for a in wise}}
                for model_name, variables in models.items():
                    emit({"variant": model_name, "target_seed": s, "train_seed": k,
                          "overrides": {key: repr(v) for key, v in overrides.items()},
                          "metrics": measure(variables, s), "train_seconds": round(seconds, 2)})
                log(f"sweep: {name} train seed {k} target seed {s}: EPE {before[s]['epe']:.4f} -> "
                    f"{rows[-len(models)]['metrics']['epe']:.4f} ({time.time() - t1:.1f} s)")
    return rows


def define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "configs/raft.py (the demo's target and settings)",
                                    lock_config=False)
    flags.DEFINE_string("out", None, "JSON lines file the cells are appended to")
    flags.DEFINE_list("target_seeds", ["0", "1", "2"], "demo target seeds")
    flags.DEFINE_list("train_seeds", ["0"], "training seeds (train.seed + k)")
    flags.DEFINE_multi_string("variant", ["default:"], "NAME:section.key=value;... (repeatable)")
    flags.DEFINE_list("wise", [], "also measure the frozen/trained interpolations at these weights")
    flags.DEFINE_integer("workers", 1, "processes rendering the target videos")


def main(argv) -> None:
    del argv
    from absl import flags, logging
    from refine_jax import cli
    logging.set_verbosity(logging.WARNING)
    cli.enable_compilation_cache()
    f = flags.FLAGS
    variants = dict(parse_variant(v) for v in f.variant)
    rows = run(f.config, variants, [int(s) for s in f.target_seeds], [int(s) for s in f.train_seeds], f.out,
               [float(a) for a in f.wise], f.workers, log=lambda s: print(s, flush=True))
    print(summarise(rows))


if __name__ == "__main__":
    from refine_jax import cli
    define_flags()
    cli.absl_run(main, required=["config", "out"])
