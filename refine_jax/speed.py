"""The speed bins every metric and label statistic is reported in: |flow| in px for flow, the mean
px/frame of a track for tracks."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

SPEED_BINS = (1.0, 4.0, 16.0)  # bins [0,1), [1,4), [4,16), [16,inf)


def bin_names(bins: Sequence[float] = SPEED_BINS) -> List[str]:
    """'[lo,hi)' names of the bins, as metrics and label statistics key them."""
    edges = (0.0, *bins, np.inf)
    return [f"[{lo:g},{hi:g})" for lo, hi in zip(edges[:-1], edges[1:])]


def bin_of(values: np.ndarray, bins: Sequence[float] = SPEED_BINS) -> np.ndarray:
    """The bin index of every value (0 .. len(bins))."""
    return np.digitize(values, bins)
