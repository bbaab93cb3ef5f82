"""What the flow and track evaluations share: the labelling settings their label-free diagnostics
run the cycle check with."""
from __future__ import annotations

import dataclasses

from refine_jax import settings


def label_config(config, iters: int, pad_mode: str = "sintel") -> settings.LabelConfig:
    """config.label with the evaluation's iterations and padding."""
    lc = settings.LabelConfig.from_config(config.get("label", {}))
    return dataclasses.replace(lc, iters=iters, pad_mode=pad_mode)
