"""Processes, device meshes and shardings.

Parallelism is `jax.jit` with `NamedSharding` on a `Mesh`; the batch axis is split over the mesh
axis 'data'. A run may span several processes (hosts), each owning its local devices:

- `initialize` joins the processes into one JAX runtime (`jax.distributed`). It must run before
  anything touches a device.
- Training uses the global mesh over every device of every process. Each process feeds its rows of
  the global batch (`global_batch`).
- Labelling and evaluation are independent per item, so each process works on its share of the
  inputs (`process_share`) on a mesh of its own devices (`make_mesh(local=True)`). Results meet on
  disk or through `allgather`.
- Only the main process writes manifests, reports and logs; `barrier` orders the writes.

On CPUs the cross-process collectives run over gloo, which connects the processes of a device group
the first time a collective uses that group and gives up after 30 s if one process is not there yet
(a process still compiling its train step, or writing a shard). `initialize` therefore connects the
groups that later steps use while every process stands at the same point, and `barrier` waits on
the coordination service rather than on a collective.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

ENV_COORDINATOR = "REFINE_JAX_COORDINATOR"     # host:port of process 0
ENV_NUM_PROCESSES = "REFINE_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "REFINE_JAX_PROCESS_ID"
BARRIER_TIMEOUT_S = 3600     # a barrier waits this long for the slowest process (its share of a stage)
_barrier_count = itertools.count()  # every process passes the same barriers in the same order


def _on_multi_worker_tpu() -> bool:
    """A Cloud TPU VM of a multi-host slice: the runtime lists its workers itself."""
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
    """Join a multi-process run if this process is one of several; returns whether it joined.

    The arguments take precedence over the environment (REFINE_JAX_COORDINATOR,
    REFINE_JAX_NUM_PROCESSES, REFINE_JAX_PROCESS_ID). On the workers of a multi-host Cloud TPU slice
    JAX finds all three itself. With none of them this is a single-process run and nothing happens.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if coordinator or (num_processes or 1) > 1:
        missing = [n for n, v in (("coordinator", coordinator), ("num_processes", num_processes),
                                  ("process_id", process_id)) if v is None]
        if missing:
            raise ValueError(f"a multi-process run needs coordinator, num_processes and process_id; "
                             f"missing {', '.join(missing)} (flags or {ENV_COORDINATOR}, "
                             f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id {process_id} is not in [0, {num_processes})")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        _connect_cpu_collectives()
        return True
    if _on_multi_worker_tpu():
        jax.distributed.initialize()
        return True
    return False


def _coordination_client():
    from jax._src import distributed  # the runtime's client, as Orbax and jax's own serialization use it
    return distributed.global_state.client


def _connect_cpu_collectives() -> None:
    """Connect, while the processes stand together, the gloo groups of later collectives: all
    devices (a training step's gradient and metric all-reduce) and one device per process
    (`allgather`). Without this the first train step's all-reduce connects them, and a process that
    reaches it more than 30 s before another aborts with "Gloo context initialization failed"."""
    if jax.default_backend() != "cpu":
        return
    barrier("connect collectives")
    mesh = make_mesh()
    ones = global_batch(np.ones((jax.local_device_count(),), np.float32), mesh)
    total = float(jax.jit(lambda x: x.sum(), out_shardings=replicated(mesh))(ones))
    if total != jax.device_count():
        raise RuntimeError(f"the all-reduce over {jax.device_count()} devices gave {total}")
    allgather(np.zeros(1, np.float32))


def make_mesh(num_devices: Optional[int] = None, local: bool = False) -> Mesh:
    """A 1-D ('data',) mesh over the first `num_devices` devices (default: all of them): the
    devices of every process, or with `local` only this process's own."""
    devices = jax.local_devices() if local else jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices, {len(devices)} are available"
                         + (" to this process" if local else ""))
    if not local and n != len(devices) and jax.process_count() > 1:
        raise ValueError(f"a multi-process mesh spans all {len(devices)} devices; got num_devices={n}")
    return Mesh(np.asarray(devices[:n]), ("data",), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data', the rest replicated."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put(tree: Any, sharding: NamedSharding) -> Any:
    """Place host arrays that every process holds in full on `sharding` (a local mesh's, or a
    replicated one)."""
    return jax.device_put(tree, sharding)


def global_batch(local: Any, mesh: Mesh) -> Any:
    """The global batch, split over 'data', from this process's rows of it (numpy leaves).

    Process p holds rows [p * B / P, (p + 1) * B / P) of the global batch of B rows; with one
    process that is the whole batch."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def to_host(tree: Any) -> Any:
    """Numpy copies of fully replicated (or single-process) arrays."""
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def padded_size(n: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh size that holds n items."""
    k = mesh.size
    return max(k, -(-n // k) * k)


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Pad the leading axis to `size` by repeating the last item (results for it are discarded)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def process_share(items: Sequence, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> list:
    """This process's items: every process_count-th, starting at process_index."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    return list(items)[pi::pc]


def is_main_process() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op with one process), on the coordination service:
    no collective, so no device group to connect (module docstring)."""
    if jax.process_count() > 1:
        _coordination_client().wait_at_barrier(f"{name} #{next(_barrier_count)}",
                                               timeout_in_ms=BARRIER_TIMEOUT_S * 1000)


def shutdown() -> None:
    """Leave a multi-process run together: every process waits for the others, then disconnects
    from the coordinator. Called at the end of a job rather than left to the interpreter's exit,
    where a late process (a slow host, a thread still finishing) would meet the coordinator's
    shutdown deadline and abort the others."""
    if jax.process_count() > 1:
        barrier("job finished")
        jax.distributed.shutdown()


def allgather(x: np.ndarray) -> np.ndarray:
    """Stack one same-shaped host array from every process: (process_count, *x.shape)."""
    if jax.process_count() == 1:
        return np.asarray(x)[None]
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=False))


def gather_rows(rows: List[Dict[str, float]], template: Dict[str, float]) -> List[Dict[str, float]]:
    """Every process's rows (dicts with the keys of `template`), in process order; with one
    process, `rows`."""
    if jax.process_count() == 1:
        return rows
    keys = sorted(template)
    counts = allgather(np.asarray(len(rows)))
    local = np.full((int(counts.max()), len(keys)), np.nan)
    for i, r in enumerate(rows):
        local[i] = [r[k] for k in keys]
    table = allgather(local)
    return [dict(zip(keys, map(float, table[p, i]))) for p in range(len(table)) for i in range(counts[p])]
