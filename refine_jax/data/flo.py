"""Middlebury `.flo` optical-flow files (little-endian): float32 magic 202021.25, int32 width,
int32 height, then H*W*2 float32 (u, v) interleaved in row-major order. Flow is (H, W, 2) pixels."""
from __future__ import annotations

import numpy as np

from refine_jax import fs

MAGIC = np.float32(202021.25)


def write_flo(path: str, flow: np.ndarray) -> None:
    """Write (H, W, 2) flow atomically (temporary name, then rename); `path` may be a URL."""
    flow = np.asarray(flow, dtype="<f4")
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"{path}: flow must be (H, W, 2), got {flow.shape}")
    h, w, _ = flow.shape
    fs.write_bytes_atomic(path, np.array([MAGIC], "<f4").tobytes() + np.array([w, h], "<i4").tobytes()
                          + flow.tobytes())


def read_flo(path: str) -> np.ndarray:
    """Read a .flo file (a path or URL) -> float32 (H, W, 2)."""
    with fs.open_file(path, "rb") as f:
        data = f.read()
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != MAGIC:
        raise ValueError(f"{path}: not a .flo file (magic number 202021.25 missing)")
    w, h = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    expected = 12 + 4 * 2 * w * h
    if w <= 0 or h <= 0 or len(data) != expected:
        raise ValueError(f"{path}: .flo header says {w}x{h} ({expected} bytes), file has {len(data)} bytes")
    return np.frombuffer(data[12:], "<f4").reshape(h, w, 2).astype(np.float32)
