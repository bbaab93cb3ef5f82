"""Device meshes and shardings. Parallelism is `jax.jit` with `NamedSharding` on a `Mesh`; the batch
axis is split over the mesh axis 'data'."""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D ('data',) mesh over the first `num_devices` devices (default: all of them)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices, {len(devices)} are available")
    return Mesh(np.asarray(devices[:n]), ("data",), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data', the rest replicated."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def padded_size(n: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh size that holds n items."""
    k = mesh.size
    return max(k, -(-n // k) * k)


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Pad the leading axis to `size` by repeating the last item (results for it are discarded)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def is_main_process() -> bool:
    return jax.process_index() == 0
