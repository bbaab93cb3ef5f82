"""The embedded demo and the recipe of its stand-in pre-trained models.

The demo refines a procedural stand-in (committed in refine_jax/demo/standins/, made by the
`pretrain` presets of configs/raft.py and configs/pips.py, run on a GPU by demo/stream.py; their
model.json says how) on a target domain with the source's
motion and a different appearance (demo/shifts.py). These stand-ins are ours, trained from random
init on procedural video; they are not the official RAFT or PIPs weights.

Stages (each `run(config, workdir) -> dict`):
  generate  the procedural shards the config's `demo` section asks for: WORKDIR/data/source (the
            pre-training set), data/source_eval (new source videos), data/target (the videos to
            refine on, with ground truth for the evaluation)
  pretrain  WORKDIR/pretrain/model: trained from random init on the source ground truth, then
            measured on data/source_eval against the trivial baseline; model.json records the
            recipe (the whole config), steps, seeds, those metrics and the sha256 of the weights
"""
from __future__ import annotations

import copy
import dataclasses
import os

from refine_jax import checkpoints, fs, models, parallel, settings, tasks
from refine_jax.data import shards
from refine_jax.demo import synthetic
from refine_jax.demo import shifts as shifts_lib

STANDINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standins")


def data_dir(workdir, name):
    return os.path.join(workdir, "data", name)


def target_dir(workdir):
    return data_dir(workdir, "target")


def pretrained_dir(workdir):
    return os.path.join(workdir, "pretrain", "model")


def standin_dir(arch: str) -> str:
    """The committed stand-in pre-trained model of `arch` ('raft_small' or 'pips')."""
    path = os.path.join(STANDINS, arch)
    if not fs.exists(os.path.join(path, checkpoints.MODEL_JSON)):
        raise FileNotFoundError(f"{path}: no stand-in model for {arch!r}; make one with the recipe "
                                f"(python -m refine_jax.main --config=configs/"
                                f"{'pips' if arch == 'pips' else 'raft'}.py:pretrain) or pass --config.init")
    return path


def target_domain(d) -> synthetic.DomainConfig:
    """The target domain of a demo section: the 'target' preset with `target_shifts` ('default':
    the preset's combined shifts; 'none': no shift; else 'name:severity,...')."""
    spec = d.get("target_shifts", "default")
    return synthetic.domain("target", None if spec == "default" else shifts_lib.parse("" if spec == "none" else spec))


def _datasets(d):
    """(name, videos, frames, seed, shifts or None, tracks, flow dtype) of every set to write."""
    frames = d.get("source_frames", 0) or d.frames
    target = target_domain(d)
    pips = tasks.of_arch(d.arch) is tasks.TRACKS  # the pre-training set: flow for RAFT, tracks for PIPs
    return [("source", d.source_videos, frames, d.source_seed, synthetic.domain("source"), d.tracks if pips else 0,
             "" if pips else "float16"),
            ("source_eval", d.source_eval_videos, d.frames, d.source_seed + 1, synthetic.domain("source"),
             d.tracks, "float32"),
            ("target", d.target_videos, d.frames, d.seed, target, d.tracks, "float32")]


def generate(config, workdir: str) -> dict:
    """Write the procedural shard folders with videos > 0 (the main process; the others wait)."""
    d = config.demo
    out = {}
    for name, videos, frames, seed, dom, tracks, flow_dtype in _datasets(d):
        if not videos:
            continue
        path = data_dir(workdir, name)
        if parallel.is_main_process() and not fs.exists(os.path.join(path, shards.MANIFEST)):
            synthetic.write_dataset(path, dom, videos, frames, tuple(d.size), tracks, seed=seed,
                                    workers=int(d.get("workers", 1)), name=name, flow_dtype=flow_dtype)
        out[name] = path
    parallel.barrier("generate: shards written")
    return {name: shards.load_manifest(path)["records"] for name, path in out.items()}


def pretrain_config(config):
    """The settings the stand-in recipes train with: config.train overlaid with demo.pretrain,
    config.augment with demo.pretrain_augment (a copy)."""
    c = copy.deepcopy(config)
    c.train.update(dict(c.demo.pretrain))
    c.augment.update(dict(c.demo.get("pretrain_augment", {"enabled": False})))
    return c


def pretrain(config, workdir: str) -> dict:
    """Train the stand-in from random init on WORKDIR/data/source, then measure it on
    WORKDIR/data/source_eval next to the trivial baseline and record the recipe in model.json."""
    from refine_jax.stages import train as train_stage
    d = config.demo
    root = os.path.join(workdir, "pretrain")
    init = os.path.join(root, "init")
    parallel.barrier("pretrain: before init")  # every process sees the same folder
    if not fs.exists(os.path.join(init, checkpoints.MODEL_JSON)):
        cfg = models.model_config(d.arch, dict(d.get("model", {})))
        checkpoints.init_model(init, cfg, seed=config.seed)
    c = pretrain_config(config)
    c.train.data = data_dir(workdir, "source")
    out = train_stage.run(c, root, init=init)
    if out.get("preempted"):
        return out
    model = pretrained_dir(workdir)
    if fs.exists(data_dir(workdir, "source_eval")):
        measure_source(config, model, data_dir(workdir, "source_eval"),
                       {"steps": out["step"], "seeds": {"init": config.seed, "train": c.train.get("seed", 0),
                                                        "source_data": d.source_seed,
                                                        "source_eval_data": d.source_seed + 1}})
    out["source_metrics"] = fs.read_json(os.path.join(model, checkpoints.MODEL_JSON))["provenance"].get("source_metrics")
    return out


def measure_source(config, model: str, eval_dir: str, provenance: dict) -> None:
    """Measure a stand-in on new source videos (eval_dir) next to the trivial baseline and record
    those metrics, the recipe (the whole config, unless the trainer recorded the one it ran),
    `provenance` and the sha256 of the weights in its model.json; nothing to do when it holds
    source metrics already."""
    from refine_jax.evaluation import report
    from refine_jax.stages import evaluate
    meta = fs.read_json(os.path.join(model, checkpoints.MODEL_JSON))
    if "source_metrics" in meta["provenance"]:
        return
    loaded = checkpoints.load_model(model, config.get("runtime"))
    # ground-truth metrics against the baseline; the label-free proxies judge refinement on footage
    # and have nothing to say about a source model on its own domain
    ec = dataclasses.replace(settings.EvalConfig.from_config(config.get("eval")), proxies=False)
    clips = parallel.process_share(list(shards.read_clips(eval_dir)))
    result = evaluate.measure(loaded, clips, ec, config)
    if parallel.is_main_process():
        meta["provenance"].update({
            "source": "refine_jax procedural stand-in (not official weights)",
            # the recipe a trainer recorded (the settings it ran) stands; else the config's
            "recipe": meta["provenance"].get("recipe") or settings.as_dict(config),
            **provenance,
            "source_metrics": report.json_safe({"clips": len(clips), "model": result["model"],
                                                   "baseline": result["baseline"], "speed_bins": result["bins"]}),
            "variables_sha256": checkpoints.fingerprint(os.path.join(model, checkpoints.VARIABLES))})
        fs.write_json_atomic(os.path.join(model, checkpoints.MODEL_JSON), meta)
    parallel.barrier("pretrain: provenance written")
