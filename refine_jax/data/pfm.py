"""Portable float maps (`.pfm`), the format of Middlebury stereo disparities: a text header ('Pf' for
one channel or 'PF' for three, then 'W H', then a scale whose sign gives the byte order, negative =
little-endian), then float32 rows from the bottom of the image to the top. Unknown values are inf."""
from __future__ import annotations

import numpy as np

from refine_jax import fs


def read_pfm(path: str) -> np.ndarray:
    """Read a .pfm file (a path or URL) -> float32 (H, W) or (H, W, 3), top row first."""
    with fs.open_file(path, "rb") as f:
        data = f.read()
    fields, pos = [], 0
    while len(fields) < 4 and pos < min(len(data), 256):  # the header: 4 whitespace-separated fields
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace():
            pos += 1
        fields.append(data[start:pos])
    pos += 1  # the single whitespace byte that ends the header
    try:
        kind, w, h, scale = fields[0].decode(), int(fields[1]), int(fields[2]), float(fields[3])
    except (IndexError, ValueError, UnicodeDecodeError):
        raise ValueError(f"{path}: not a PFM file (expected a 'Pf' or 'PF', width, height, scale header)") from None
    if kind not in ("Pf", "PF") or w <= 0 or h <= 0:
        raise ValueError(f"{path}: not a PFM file (header {fields[0]!r} {w}x{h})")
    channels = 3 if kind == "PF" else 1
    expected = pos + 4 * w * h * channels
    if len(data) != expected:
        raise ValueError(f"{path}: PFM header says {w}x{h}x{channels} ({expected} bytes), file has {len(data)} bytes")
    values = np.frombuffer(data[pos:], "<f4" if scale < 0 else ">f4").reshape(h, w, channels)[::-1]
    return (values[..., 0] if channels == 1 else values).astype(np.float32)


def write_pfm(path: str, values: np.ndarray) -> None:
    """Write float (H, W) or (H, W, 3) values atomically as little-endian PFM."""
    values = np.asarray(values, np.float32)
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[-1] != 3):
        raise ValueError(f"{path}: PFM holds (H, W) or (H, W, 3) values, got {values.shape}")
    h, w = values.shape[:2]
    header = f"{'PF' if values.ndim == 3 else 'Pf'}\n{w} {h}\n-1.0\n".encode()
    fs.write_bytes_atomic(path, header + np.ascontiguousarray(values[::-1], "<f4").tobytes())
