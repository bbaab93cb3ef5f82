"""KITTI's flow maps: 16-bit RGB PNG files, channel 0 = u, 1 = v as 64 * flow + 2**15, channel 2 =
1 where the ground truth is known (the KITTI devkit's format; 1/64 px steps, +-512 px)."""
from __future__ import annotations

import numpy as np

from refine_jax import fs

_OFFSET, _SCALE = 2.0 ** 15, 64.0


def read_flow_png(path: str):
    """A KITTI flow PNG (path or URL) -> (flow float32 (H, W, 2) px, known bool (H, W)); flow is 0
    where it is unknown."""
    import tensorflow as tf
    try:
        with fs.open_file(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: flow file not found") from None
    try:
        img = tf.io.decode_png(data, channels=3, dtype=tf.uint16).numpy()
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        raise ValueError(f"{path}: not a 16-bit flow PNG as KITTI writes it ({str(e).splitlines()[0]})") from None
    known = img[..., 2] > 0
    flow = (img[..., :2].astype(np.float32) - _OFFSET) / _SCALE
    return np.where(known[..., None], flow, 0.0).astype(np.float32), known


def write_flow_png(path: str, flow: np.ndarray, known: np.ndarray) -> None:
    """(H, W, 2) px flow and (H, W) known mask -> a KITTI flow PNG, written under a temporary name
    and renamed."""
    import tensorflow as tf
    uv = np.clip(np.round(np.asarray(flow, np.float64) * _SCALE + _OFFSET), 0, 2 ** 16 - 1)
    img = np.concatenate([uv, np.asarray(known, bool)[..., None]], -1).astype(np.uint16)
    fs.write_bytes_atomic(path, tf.io.encode_png(img).numpy())
