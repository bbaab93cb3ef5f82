"""The compile report: the real train and label steps of tiny RAFT and PIPs configs, compiled for a
4-device mesh, need exactly the gradient all-reduce (train, compiled for a Cloud TPU v5e 2x2 topology
through libtpu, as `bench tpu` does for the full configs) and no collective at all (label, on 4 CPU
devices): no permutes, all-to-alls or all-gathers of activations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from refine_jax import checkpoints, cli, models
from refine_jax.tools import compile_report

TINY = {"raft_small": ("configs/raft.py:runlocal", (128, 128)), "pips": ("configs/pips.py:runlocal", (128, 128))}


def _tiny(arch):
    spec, size = TINY[arch]
    config = cli.load_config(spec)
    config.train.update({"iters": 1, "batch_size": 4})
    config.label.update({"iters": 1, "batch": 4})
    overrides = dict(config.demo.model) if arch == "pips" else {}
    return config, models.model_config(arch, overrides), size


def _kinds(hlo):
    return sorted(c["kind"] for c in compile_report.collectives(hlo))


def _gradient_bytes_at_least_half_the_parameters(collectives, cfg):
    params = sum(int(np.prod(x.shape)) * 4 for x in jax.tree_util.tree_leaves(
        compile_report.init_shapes(cfg)["params"]))
    return max(c["bytes"] for c in collectives) >= 0.5 * params


@pytest.mark.parametrize("arch", ["raft_small", "pips"])
def test_data_parallel_label_steps_need_no_collective(arch):
    config, cfg, size = _tiny(arch)
    mesh = Mesh(np.asarray(jax.devices()[:4]), ("data",))
    fn, args, batch = compile_report.label_step(cfg, config, mesh, size)
    assert batch == 4
    assert _kinds(fn.lower(*args).compile().as_text()) == []


def check_tpu_train_step(arch):
    """The real train step (augmentation, model, sequence loss, AdamW) of a tiny config, compiled
    for a Cloud TPU v5e 2x2 through libtpu: data parallel over the 4 chips with one combined
    gradient all-reduce, no permutes, all-gathers or all-to-alls. Compiled under the bf16 policy, the
    one a TPU run uses: libtpu expands every float32 'highest' product into bf16 passes and took 2.7x
    longer on RAFT-small (248 s against 92 s on 2 cores); the sharding does not depend on it."""
    pytest.importorskip("libtpu")
    config, cfg, size = _tiny(arch)
    config.runtime.precision = "bf16"
    (row,) = compile_report.report(config, arch, "v5e:2x2", size, ("train",), model=dict(config.demo.model))
    assert row["devices"] == 4 and row["batch"] == 4
    assert {c["kind"] for c in row["collectives"]} == {"all-reduce"}   # gradients and the loss/metrics
    assert _gradient_bytes_at_least_half_the_parameters(row["collectives"], cfg)
    assert 0 < row["hbm"] < compile_report.CHIPS["v5e"].hbm_bytes and row["flops"] > 0 and row["roofline_s"] > 0
    assert "all-reduce" in compile_report.summarise(row)


def test_tpu_train_step_of_raft_small_needs_only_the_gradient_all_reduce():
    """(The reduced PIPs' is in test_compile_report_pips.py, so that the two long compiles run on
    different pytest-xdist workers.)"""
    check_tpu_train_step("raft_small")


def test_runtime_settings_a_pips_config_lacks_are_ignored():
    assert checkpoints.with_runtime(models.model_config("pips"), {"corr": "alt"}).arch == "pips"


def test_tpu_compile_of_a_data_parallel_lookup_step_has_no_gathers_and_one_all_reduce():
    """Compiled for a Cloud TPU v5e 2x2 through libtpu, a data-parallel gradient step through a
    correlation window lookup and a PIPs feature sample ('auto' picks the two-hot contractions when
    compiling for a TPU) has neither gathers nor scatters, and needs only the gradient all-reduce."""
    pytest.importorskip("libtpu")
    from jax.sharding import NamedSharding, PartitionSpec as P
    from refine_jax.models import lookup

    devices, chip = compile_report.topology("v5e:2x2")
    mesh = Mesh(np.asarray(devices), ("data",))

    def loss(w, images, xy):
        f = jax.lax.conv_general_dilated(images, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        b, h, wd, c = f.shape
        vol = jnp.einsum("bpc,bqc->bpq", f.reshape(b, h * wd, c), f.reshape(b, h * wd, c)).reshape(b * h * wd, h, wd)
        pts = jnp.broadcast_to(xy, (b * h * wd, 2))
        win = lookup.window(vol, pts, 2, "auto")
        feat = jax.vmap(lambda img: lookup.sample_clamped(img, xy[None], "auto"))(f)
        return jnp.mean(win ** 2) + jnp.mean(feat ** 2)

    step = jax.jit(jax.grad(loss), out_shardings=NamedSharding(mesh, P()))
    args = (jax.ShapeDtypeStruct((3, 3, 3, 8), jnp.float32, sharding=NamedSharding(mesh, P())),
            jax.ShapeDtypeStruct((8, 16, 16, 3), jnp.float32, sharding=NamedSharding(mesh, P("data"))),
            jax.ShapeDtypeStruct((2,), jnp.float32, sharding=NamedSharding(mesh, P())))
    with lookup.compiling_for("tpu"):
        compiled = step.lower(*args).compile()
    hlo = compiled.as_text()
    assert " gather(" not in hlo and " scatter(" not in hlo
    assert _kinds(hlo) == ["all-reduce"]
    row = compile_report.analyse(compiled, chip)
    assert 0 < row["hbm"] < chip.hbm_bytes and row["flops"] > 0 and row["roofline_s"] > 0
    with pytest.raises(ValueError, match="unknown chip"):
        compile_report.topology("v9:2x2")


def test_v4_devices_are_tensorcores_that_share_a_chip():
    """libtpu describes v4:2x2x1 (4 chips) as 8 devices, one per TensorCore: each has half a chip's
    HBM and peak, while a v5e chip is one device."""
    pytest.importorskip("libtpu")
    devices, core = compile_report.topology("v4:2x2x1")
    v4 = compile_report.CHIPS["v4"]
    assert len(devices) == 8
    assert (core.hbm_bytes, core.bf16_flops, core.hbm_bandwidth) == (v4.hbm_bytes / 2, v4.bf16_flops / 2,
                                                                     v4.hbm_bandwidth / 2)
    devices, chip = compile_report.topology("v5e:2x2")
    assert len(devices) == 4 and chip == compile_report.CHIPS["v5e"]


def test_matmul_flops_count_every_loop_iteration_forward_and_backward():
    """XLA's cost analysis counts a loop body once; the report's count has every iteration."""
    w, x = jnp.ones((8, 8)), jnp.ones((4, 8))

    def f(w, x):
        c, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=5)
        return c.sum()
    # forward c @ w, backward dz @ c^T and dz @ w^T: 3 products of 2*4*8*8 per iteration
    assert compile_report.matmul_flops(jax.make_jaxpr(jax.jit(jax.grad(f)))(w, x)) == 5 * 3 * 2 * 4 * 8 * 8
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert compile_report.matmul_flops(jax.make_jaxpr(conv)(jnp.ones((2, 10, 10, 3)), jnp.ones((3, 3, 3, 16)))) \
        == 2 * (2 * 10 * 10 * 16) * (3 * 3 * 3)


def test_a_step_that_does_not_fit_is_reported_not_raised():
    pytest.importorskip("libtpu")
    from jax.sharding import NamedSharding, PartitionSpec as P
    devices, chip = compile_report.topology("v5e:2x2")
    one = NamedSharding(Mesh(np.asarray(devices[:1]), ("data",)), P())
    n = 80_000  # an 80000^2 float32 output: 25.6 GB, more than a v5e chip's 16 GB
    fn = jax.jit(lambda x: x[:, None] * x[None, :])
    compiled, jaxpr, seconds, error = compile_report.compile_step(
        fn, (jax.ShapeDtypeStruct((n,), jnp.float32, sharding=one),))
    assert compiled is None and seconds > 0 and "RESOURCE_EXHAUSTED" in error
    assert "mul" in [e.primitive.name for e in jaxpr.eqns]  # the step's trace still comes back
    row = {"step": "train", "topology": "v5e:2x2", "batch": 1, "size": "8x8", "compile_s": seconds, "error": error}
    assert "DOES NOT FIT" in compile_report.summarise(row)
