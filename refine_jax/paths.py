"""Where the stages read and write in a work directory: the one map every stage uses.

  WORKDIR/
    labels/          the label stage's shards and manifest.json (label.out names another folder)
    checkpoints/     the train stage's Orbax checkpoints (resume, the metric curve)
    tensorboard/     training metrics
    model/           the refined model, exported by the train stage (its last step)
    exported/        the model the eval stage's guard hands back: the refined one when the verdict
                     is 'better' (or eval.guard is off), else the initial one
    oracle/          the oracle stage: the same training on ground truth (checkpoints/, model/)
    eval/            metrics.json, report.md and the figures
    round<k>/        with label.rounds > 1: round k's labels, checkpoints and model
    data/, pretrain/ the demo's generated videos and pre-trained model (demo/stages.py)
"""
from __future__ import annotations

import os


def labels(workdir: str, config=None) -> str:
    """The label shards of WORKDIR: WORKDIR/<config.label.out> (default 'labels')."""
    section = (config.get("label") if config is not None else None) or {}
    return os.path.join(workdir, section.get("out", "labels") or "labels")


def checkpoints(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


def tensorboard(workdir: str) -> str:
    return os.path.join(workdir, "tensorboard")


def model(workdir: str) -> str:
    """The model a training stage exported in WORKDIR."""
    return os.path.join(workdir, "model")


def exported(workdir: str) -> str:
    """The model the eval stage's guard chose (evaluation/verdict.py)."""
    return os.path.join(workdir, "exported")


def oracle(workdir: str) -> str:
    """The oracle stage's own work directory (its checkpoints and model inside)."""
    return os.path.join(workdir, "oracle")


def evaluation(workdir: str) -> str:
    return os.path.join(workdir, "eval")


def round_dir(workdir: str, r: int) -> str:
    """Round r's work directory with label.rounds > 1 (round 1 is WORKDIR itself)."""
    return workdir if r == 1 else os.path.join(workdir, f"round{r}")
