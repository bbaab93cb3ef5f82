"""The embedded default: procedural source/target videos and a brief supervised pre-training on the
source domain (a stand-in for the synthetic pre-training of the official checkpoints).

Stages (each `run(config, workdir) -> dict`):
  generate  WORKDIR/data/{source,target}: shards with exact flow and tracks (data/synthetic.py)
  pretrain  WORKDIR/pretrain/model: the model trained from random init on source ground truth
"""
from __future__ import annotations

import copy
import os

from refine_jax import checkpoints, fs, models, parallel
from refine_jax.data import shards, synthetic


def source_dir(workdir):
    return os.path.join(workdir, "data", "source")


def target_dir(workdir):
    return os.path.join(workdir, "data", "target")


def pretrained_dir(workdir):
    return os.path.join(workdir, "pretrain", "model")


def generate(config, workdir: str) -> dict:
    """Write the source and target shards (the main process; the others wait for it)."""
    d = config.demo
    for name, videos, seed in (("source", d.source_videos, d.seed), ("target", d.target_videos, d.seed + 1)):
        path = os.path.join(workdir, "data", name)
        if parallel.is_main_process() and not fs.exists(os.path.join(path, shards.MANIFEST)):
            synthetic.write_dataset(path, name, videos, d.frames, tuple(d.size), d.tracks, seed=seed)
    parallel.barrier("generate: shards written")
    return {name: shards.load_manifest(os.path.join(workdir, "data", name))["records"]
            for name in ("source", "target")}


def pretrain(config, workdir: str) -> dict:
    from refine_jax.train import trainer
    d = config.demo
    root = os.path.join(workdir, "pretrain")
    init = os.path.join(root, "init")
    parallel.barrier("pretrain: before init")  # every process sees the same folder
    if not fs.exists(os.path.join(init, checkpoints.MODEL_JSON)):
        cfg = models.model_config(d.arch, dict(d.get("model", {})))
        checkpoints.init_model(init, cfg, seed=config.seed)
    c = copy.deepcopy(config)
    c.train.update(dict(d.pretrain))
    c.train.data = source_dir(workdir)
    c.augment.enabled = False
    return trainer.run(c, root, init=init)
