"""TPU readiness without the hardware: compile a config's label, train and eval steps for a Cloud
TPU topology on this (CPU) host with libtpu, and report per device what the compiler says.

  pip install -e ".[tpu]"      # libtpu from PyPI
  python -m refine_jax.tools.bench tpu --topology=v5e:2x4 --config=configs/raft.py:sintel [--steps=train,label,eval]

For each step: HBM in use per device (arguments, outputs, temporaries) against its capacity (a
chip's, or its share of one where a chip holds several devices, as libtpu describes v4: one per
TensorCore); the convolution and matmul FLOPs per step, counted from the traced program with every
scan iteration (XLA's cost analysis counts a loop body once; its FLOPs and bytes are printed too);
every collective of the optimised HLO with its kind, size and the JAX operation it came from; and a
roofline time max(FLOPs / peak, bytes / bandwidth) from the chip's bf16 peak (a lower bound: XLA's
bytes have loop bodies once, and float32 'highest' products run several bf16 passes). The steps are
the real ones of the stages (trainer.make_train_step, the labelers' jitted functions, the eval
tracker), traced as for a TPU (lookup.compiling_for): the accelerator's scan loop and the
gather-free lookups of 'auto'.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, Iterator, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from refine_jax import checkpoints, models, parallel, tasks
from refine_jax.models import lookup


@dataclasses.dataclass(frozen=True)
class Chip:
    bf16_flops: float      # peak FLOP/s
    hbm_bytes: float
    hbm_bandwidth: float   # bytes/s


CHIPS = {"v4": Chip(275e12, 32 * 2 ** 30, 1.2e12), "v5e": Chip(197e12, 16e9, 819e9),
         "v5p": Chip(459e12, 95e9, 2.77e12), "v6e": Chip(918e12, 32e9, 1.64e12)}
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8, "u8": 1, "s8": 1,
                "pred": 1, "f64": 8}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def topology(name: str) -> Tuple[list, Chip]:
    """The devices of a TPU topology ('v5e:2x4') and its chip's specs."""
    from jax.experimental import topologies
    kind = name.split(":")[0]
    if kind not in CHIPS:
        raise ValueError(f"{name}: unknown chip {kind!r}; expected one of {', '.join(CHIPS)} (e.g. v5e:2x4)")
    # Only compiling here: several processes may load libtpu at once (by default the first JAX
    # process on a host holds /tmp/libtpu_lockfile and every other one fails).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(name, "tpu")
    except Exception as e:  # libtpu missing, locked, or a shape it does not know
        msg = " ".join(str(e).split())[:300]
        hint = ("another JAX process loaded libtpu first; start this one with ALLOW_MULTIPLE_LIBTPU_LOAD=1"
                if "lockfile" in msg else "install libtpu with pip install -e '.[tpu]'")
        raise ValueError(f"{name}: cannot describe this TPU topology ({msg}); {hint}") from None
    devices = list(desc.devices)
    return devices, per_device(CHIPS[kind], devices)


def per_device(chip: Chip, devices) -> Chip:
    """A chip's specs per JAX device. libtpu describes a v4 slice with one device per TensorCore
    (v4:2x2x1 is 8 devices on 4 chips), and those two cores share the chip's HBM and peak."""
    chips = {tuple(getattr(d, "coords", (i,))) for i, d in enumerate(devices)}
    cores = max(1, len(devices) // max(1, len(chips)))
    return Chip(chip.bf16_flops / cores, chip.hbm_bytes / cores, chip.hbm_bandwidth / cores)


def collectives(hlo: str) -> List[Dict]:
    """Every collective of an optimised HLO module: kind, result bytes, the JAX op it came from."""
    out = []
    pattern = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
    for line in hlo.splitlines():
        m = pattern.search(line)
        if not m or line.strip().startswith("ROOT %tuple") or "-done" in line.split("=")[-1][:40]:
            continue
        shapes = re.findall(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]", m.group(1))
        size = sum(_DTYPE_BYTES[d] * int(np.prod([int(v) for v in dims.split(",") if v] or [1])) for d, dims in shapes)
        op = re.search(r'op_name="([^"]+)"', line)
        out.append({"kind": m.group(2), "bytes": size, "op": op.group(1) if op else ""})
    return out


def matmul_flops(jaxpr) -> float:
    """FLOPs of the convolutions and dot products of a (closed) jaxpr, scan bodies times their
    lengths: XLA's cost analysis counts a loop body once, which undercounts RAFT's 12-32 and PIPs'
    4-6 scanned iterations several-fold. A while loop, whose trip count is not static, counts once;
    a cond counts its costliest branch. Elementwise work is left out (small beside these)."""
    from jax.extend import core as jex_core
    total = 0.0
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            k = np.prod([eqn.invars[0].aval.shape[d] for d in lhs_contract])
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * k
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec       # (out, in, *spatial) positions
            per_output = rhs[spec[1]] * np.prod([rhs[d] for d in spec[2:]])
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * per_output
        subs = [v for v in eqn.params.values() if isinstance(v, (jex_core.Jaxpr, jex_core.ClosedJaxpr))]
        subs += [b for v in eqn.params.values() if isinstance(v, tuple) for b in v
                 if isinstance(b, (jex_core.Jaxpr, jex_core.ClosedJaxpr))]
        if name == "cond":  # one branch runs
            total += max(matmul_flops(b) for b in eqn.params["branches"])
            continue
        times = eqn.params.get("length", 1) if name == "scan" else 1
        total += times * sum(matmul_flops(sub) for sub in subs)
    return total


def analyse(compiled, chip: Chip, flops: Optional[float] = None) -> Dict:
    """Memory, cost, collectives and the roofline time of one compiled step (per device).

    flops: the step's convolution and matmul FLOPs per device with loops counted in full
    (`matmul_flops`); XLA's own count, which has each loop body once, is kept as 'xla_flops'.
    'bytes' is XLA's count (loop bodies once too), so the roofline is a lower bound.
    """
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    flops = xla_flops if flops is None else flops
    hbm = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    return {"arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
            "temporaries": mem.temp_size_in_bytes, "aliased": mem.alias_size_in_bytes, "hbm": hbm,
            "hbm_fraction": hbm / chip.hbm_bytes, "flops": flops, "xla_flops": xla_flops, "bytes": nbytes,
            "roofline_s": max(flops / chip.bf16_flops, nbytes / chip.hbm_bandwidth),
            "collectives": collectives(compiled.as_text())}


def _abstract(tree, sharding):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _round_up(n: int, k: int) -> int:
    return max(k, -(-n // k) * k)


def train_step(model_cfg, config, mesh, size):
    """(jitted step, abstract args, global batch) of the train stage's step."""
    from refine_jax import settings
    from refine_jax.train import trainer
    tc = settings.TrainConfig.from_config(config.get("train"))
    ac = settings.AugmentConfig.from_config(config.get("augment", {"enabled": False}))
    batch = _round_up(tc.batch_size, mesh.size)
    tx = trainer.make_optimizer(tc)
    variables = init_shapes(model_cfg)
    params, stats = variables["params"], variables.get("batch_stats", {})
    state = trainer.TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, stats,
                               jax.eval_shape(tx.init, params), jax.eval_shape(lambda: jax.random.PRNGKey(0)))
    rep, bat = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    h, w = size
    if tasks.of(model_cfg) is tasks.TRACKS:
        s, n = model_cfg.S, tc.max_tracks
        b = {"frames": ((batch, s, h, w, 3), jnp.uint8), "tracks": ((batch, n, s, 2), jnp.float32),
             "visible": ((batch, n, s), jnp.bool_), "track_valid": ((batch, n), jnp.bool_)}
    else:
        b = {"frames": ((batch, 2, h, w, 3), jnp.uint8), "flow": ((batch, 1, h, w, 2), jnp.float32),
             "flow_valid": ((batch, 1, h, w), jnp.bool_)}
    b = {k: jax.ShapeDtypeStruct(shape, dt, sharding=bat) for k, (shape, dt) in b.items()}
    step = trainer.make_train_step(model_cfg, tc, tx, mesh, tc.freeze_bn, ac)
    return step, (_abstract(state, rep), b), batch


def init_shapes(cfg):
    return models.abstract_variables(cfg)


def label_step(model_cfg, config, mesh, size, iters: Optional[int] = None):
    """(jitted function, abstract args, batch) of the label stage's forward-backward-check call."""
    from refine_jax.labels import cycle
    from refine_jax import settings
    from refine_jax.labels import flow as flow_labels, tracks as track_labels
    lc = settings.LabelConfig.from_config(config.get("label"))
    rep, bat = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    variables = _abstract(init_shapes(model_cfg), rep)
    batch = _round_up(lc.batch, mesh.size)
    h, w = size
    if tasks.of(model_cfg) is tasks.TRACKS:
        cfg = dataclasses.replace(model_cfg, stride=lc.stride)
        fn = track_labels.label_fn(cfg, iters or lc.iters or 6, mesh, lc.query_chunk)
        return fn, (variables, jax.ShapeDtypeStruct((batch, cfg.S, h, w, 3), jnp.float32, sharding=bat),
                    jax.ShapeDtypeStruct((batch, lc.max_queries, 2), jnp.float32, sharding=bat),
                    jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)), batch
    check = cycle.FlowCheck(lc.alpha, lc.beta, lc.color_thresh, lc.max_flow, lc.color_noise, lc.color_gain)
    fn = flow_labels.label_fn(model_cfg, iters or lc.iters or 32, check, mesh)
    im = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8, sharding=bat)
    return fn, (variables, im, im), batch


def eval_step(model_cfg, config, device, size):
    """(jitted function, abstract args, batch) of the eval stage's per-call work on one chip: RAFT's
    forward-backward (the eval stage measures with the labeler's function), PIPs' tracking window."""
    from refine_jax.settings import EvalConfig
    ec = EvalConfig.from_config(config.get("eval"))
    mesh = Mesh(np.asarray([device]), ("data",))
    if tasks.of(model_cfg) is tasks.FLOW:
        return label_step(model_cfg, config, mesh, size, iters=ec.iters or 32)
    from refine_jax.models.pips_chain import chain_fns
    cfg = dataclasses.replace(model_cfg, stride=ec.stride)
    _, _, window = chain_fns(cfg, ec.iters or 6)
    one = NamedSharding(mesh, P())
    variables = _abstract(init_shapes(cfg), one)
    h, w = size[0] // cfg.stride, size[1] // cfg.stride
    n = 256
    return window, (variables, jax.ShapeDtypeStruct((cfg.S, h, w, cfg.latent_dim), jnp.float32, sharding=one),
                    jax.ShapeDtypeStruct((n, 2), jnp.float32, sharding=one),
                    jax.ShapeDtypeStruct((n, cfg.latent_dim), jnp.float32, sharding=one)), 1


# Frame sizes of the data each preset refines on (label and eval); training uses config.train.size
# when the preset sets one (CroHD: 512x852 crops of 768x1280 frames).
DATA_SIZES = {("raft", "sintel"): (436, 1024), ("pips", "crohd"): (768, 1280),
              ("pips", "horse10"): (256, 448), ("pips", "tapvid_davis"): (256, 256)}


def compile_step(fn, args):
    """(compiled step or None, its jaxpr, seconds, None or the compiler's one-line reason when the
    step does not fit the device's memory). One trace serves both the compile and the FLOP count."""
    import time
    t0 = time.perf_counter()
    traced = fn.trace(*args)
    try:
        return traced.lower().compile(), traced.jaxpr, time.perf_counter() - t0, None
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return None, traced.jaxpr, time.perf_counter() - t0, " ".join(str(e).split())[:300]


def report(config, arch: str, topo: str, size: Tuple[int, int],
           steps=("train", "label", "eval"), model: Optional[Dict] = None) -> Iterator[Dict]:
    """Compile each step for the topology; one row per step (see `analyse`), yielded as it is done.
    `model` overrides the architecture's published widths (e.g. a reduced PIPs)."""
    devices, chip = topology(topo)
    mesh = Mesh(np.asarray(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    model_cfg = checkpoints.with_runtime(models.model_config(arch, model), config.get("runtime"))
    for name in steps:
        with lookup.compiling_for("tpu"):  # entered per step: a suspended generator must not leak it
            row = _step_row(name, topo, model_cfg, config, mesh, devices, chip, size)
        yield row


def _step_row(name, topo, model_cfg, config, mesh, devices, chip, size) -> Dict:
    if name == "train":
        size = tuple(config.train.get("size") or size)  # a preset may train on other frames
        fn, args, batch = train_step(model_cfg, config, mesh, size)
    elif name == "label":
        fn, args, batch = label_step(model_cfg, config, mesh, size)
    elif name == "eval":
        fn, args, batch = eval_step(model_cfg, config, devices[0], size)
    else:
        raise ValueError(f"unknown step {name!r}; expected train, label or eval")
    devices_used = mesh.size if name != "eval" else 1
    row = {"step": name, "topology": topo, "devices": devices_used, "batch": batch,
           "size": f"{size[0]}x{size[1]}"}
    compiled, jaxpr, row["compile_s"], error = compile_step(fn, args)
    if compiled is None:
        return {**row, "error": error}
    flops = matmul_flops(jaxpr) / devices_used
    return {**row, **analyse(compiled, chip, flops)}


def summarise(row: Dict) -> str:
    head = f"{row['step']:<5} {row['topology']} batch {row['batch']} at {row['size']}: "
    if "error" in row:
        return head + f"DOES NOT FIT ({row['error']}) | compiled in {row['compile_s']:.0f} s"
    kinds: Dict[str, List[int]] = {}
    for c in row["collectives"]:
        kinds.setdefault(c["kind"], []).append(c["bytes"])
    coll = ", ".join(f"{len(v)} {k} ({sum(v) / 2 ** 20:.1f} MiB)" for k, v in sorted(kinds.items())) or "none"
    return (head + "HBM/device "
            f"{row['hbm'] / 2 ** 30:.2f} GiB ({100 * row['hbm_fraction']:.0f} % of its share; args "
            f"{row['arguments'] / 2 ** 30:.2f}, temps {row['temporaries'] / 2 ** 30:.2f}, out "
            f"{row['outputs'] / 2 ** 30:.2f}) | {row['flops']:.3g} conv/matmul FLOPs ({row['xla_flops']:.3g} by "
            f"XLA, loop bodies once), {row['bytes']:.3g} B | roofline >= "
            f"{1000 * row['roofline_s']:.1f} ms | collectives: {coll} | compiled in {row['compile_s']:.0f} s")
