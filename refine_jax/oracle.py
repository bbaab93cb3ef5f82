"""The `oracle` stage: the refinement's training run on ground truth instead of pseudo-labels.

Same init, same settings, same number of steps as the `train` stage, but the samples are the
evaluation videos with their ground truth (every consecutive pair with its exact flow and validity
for RAFT; the ground-truth tracks of every 8-frame window for PIPs). Its result is the ceiling
of what the pseudo-labels could teach in that budget; the `eval` stage reports it beside the
refined model. Writes WORKDIR/oracle/{checkpoints,model}.
"""
from __future__ import annotations

import copy
import os

from refine_jax.train import trainer


def oracle_dir(workdir: str) -> str:
    return os.path.join(workdir, "oracle")


def run(config, workdir: str) -> dict:
    c = copy.deepcopy(config)
    c.train.data = config.eval.get("data") or config.data.videos
    c.train.keep_checkpoints = 1
    return trainer.run(c, oracle_dir(workdir), init=config.init)
