"""The compile report: the real train and label steps of tiny RAFT and PIPs configs, compiled for a
4-device mesh, need exactly the gradient all-reduce (train) and no collective at all (label): no
permutes, all-to-alls or all-gathers of activations. Once on 4 CPU devices (fast), once for a Cloud
TPU v5e 2x2 topology through libtpu (what `bench tpu` does for the full configs)."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from refine_jax import checkpoints, cli, compile_report, models

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


@pytest.mark.parametrize("arch", ["raft_small", "pips"])
def test_data_parallel_steps_need_only_the_gradient_all_reduce(arch):
    config, cfg, size = _tiny(arch)
    mesh = Mesh(np.asarray(jax.devices()[:4]), ("data",))
    step, args, batch = compile_report.train_step(cfg, config, mesh, size)
    assert batch == 4
    hlo = step.lower(*args).compile().as_text()
    kinds = _kinds(hlo)
    assert set(kinds) == {"all-reduce"}, kinds   # gradients (combined) and the loss/metrics
    grads = max(c["bytes"] for c in compile_report.collectives(hlo))
    params = sum(int(np.prod(x.shape)) * 4 for x in jax.tree_util.tree_leaves(
        compile_report._init_shapes(cfg)["params"]))
    assert grads >= 0.5 * params
    fn, args, _ = compile_report.label_step(cfg, config, mesh, size)
    assert _kinds(fn.lower(*args).compile().as_text()) == []


def test_tpu_topology_report_for_a_tiny_raft():
    pytest.importorskip("libtpu")
    config, _, size = _tiny("raft_small")
    (row,) = compile_report.report(config, "raft_small", "v5e:2x2", size, ("train",))
    assert row["chips"] == 4 and row["batch"] == 4
    assert {c["kind"] for c in row["collectives"]} == {"all-reduce"}
    assert 0 < row["hbm"] < compile_report.CHIPS["v5e"].hbm_bytes and row["flops"] > 0 and row["roofline_s"] > 0
    assert "all-reduce" in compile_report.summarise(row)
    with pytest.raises(ValueError, match="unknown chip"):
        compile_report.topology("v9:2x2")
    assert checkpoints.with_runtime(models.model_config("pips"), {"corr": "alt"}).arch == "pips"
