"""The `oracle` stage: the refinement's training run on ground truth instead of pseudo-labels.

Same init, same settings, same number of steps as the `train` stage, but the samples are the
evaluation videos with their ground truth (every consecutive pair with its exact flow and validity
for RAFT; the ground-truth tracks of every 8-frame window for PIPs). Its result is the ceiling
of what the pseudo-labels could teach in that budget; the `eval` stage reports it beside the
refined model. Writes WORKDIR/oracle/{checkpoints,model}.
"""
from __future__ import annotations

import copy

from refine_jax import paths
from refine_jax.data import sources
from refine_jax.settings import EvalConfig
from refine_jax.stages import train as train_stage


def data_of(config) -> str:
    """The oracle's training data: the evaluation videos."""
    return config.eval.get("data") or config.data.videos


def check_ground_truth(config) -> None:
    """Refuse, in one sentence, evaluation videos whose first clip carries no ground-truth flow or
    tracks (a user's own footage): there is nothing for the oracle to train on."""
    for source in sources.split_sources(data_of(config)):
        clip = next(iter(sources.read_clips(source, checksum=False)), None)
        if clip is not None and clip.flow is None and clip.tracks is None:
            raise ValueError(f"{source}: the oracle stage trains on ground-truth flow or tracks, and its first clip "
                             f"({clip.video_id}) carries neither; leave the stage out "
                             f"(--config.stages=label,train,eval reports the label-free diagnostics)")


def check_no_holdout(config) -> None:
    """Refuse eval.holdout without eval.data: the oracle would train on the held-out clips that the
    refined model is judged on, a ceiling the refinement was never allowed to reach."""
    if EvalConfig.from_config(config.get("eval")).held_out_every():
        raise ValueError(f"eval.holdout={config.eval.holdout}: the oracle stage trains on the evaluated clips, "
                         f"which are then the clips held out of the refinement's training; leave the oracle "
                         f"stage out or set eval.holdout=0")


def run(config, workdir: str) -> dict:
    check_ground_truth(config)
    check_no_holdout(config)
    c = copy.deepcopy(config)
    c.train.data = data_of(config)
    c.train.keep_checkpoints = 1
    return train_stage.run(c, paths.oracle(workdir), init=config.init)
