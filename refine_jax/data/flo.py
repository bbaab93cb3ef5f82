"""Middlebury `.flo` optical-flow files (little-endian): float32 magic 202021.25, int32 width,
int32 height, then H*W*2 float32 (u, v) interleaved in row-major order. Flow is (H, W, 2) pixels."""
from __future__ import annotations

import os

import numpy as np

MAGIC = np.float32(202021.25)


def write_flo(path: str, flow: np.ndarray) -> None:
    """Write (H, W, 2) flow atomically (temporary name, then rename)."""
    flow = np.asarray(flow, dtype="<f4")
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"{path}: flow must be (H, W, 2), got {flow.shape}")
    h, w, _ = flow.shape
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.array([MAGIC], "<f4").tofile(f)
        np.array([w, h], "<i4").tofile(f)
        flow.tofile(f)
    os.replace(tmp, path)


def read_flo(path: str) -> np.ndarray:
    """Read a .flo file -> float32 (H, W, 2)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != MAGIC:
        raise ValueError(f"{path}: not a .flo file (magic number 202021.25 missing)")
    w, h = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    expected = 12 + 4 * 2 * w * h
    if w <= 0 or h <= 0 or len(data) != expected:
        raise ValueError(f"{path}: .flo header says {w}x{h} ({expected} bytes), file has {len(data)} bytes")
    return np.frombuffer(data[12:], "<f4").reshape(h, w, 2).astype(np.float32)
