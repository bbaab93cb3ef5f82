"""bench.time_call times jitted functions and functions that call them (the labelers' `fn`)."""
import jax
import jax.numpy as jnp

from refine_jax.tools import bench


def test_time_call_takes_jitted_and_plain_functions():
    jitted = jax.jit(lambda x: x * 2)
    for fn in (jitted, lambda x: jitted(x) + 1):
        compile_s, median, times = bench.time_call(fn, jnp.ones(4), repeats=2)
        assert compile_s > 0 and len(times) == 2 and min(times) <= median <= max(times)


def test_official_checkout_is_imported_in_isolation_and_restored(tmp_path, capsys):
    """The harness imports a checkout's top-level modules (RAFT's `core/*.py`, PIPs' `utils`) without
    keeping them, and points PIPs' CUDA defaults at the CPU only while it runs."""
    import sys
    import types

    import pytest
    import torch

    from refine_jax.tools import official
    core = tmp_path / "RAFT" / "core"
    (core / "utils").mkdir(parents=True)
    (core / "utils" / "__init__.py").write_text("MARK = 'checkout'\n")
    (core / "raft.py").write_text("import utils\nclass RAFT:\n    pass\n")
    sys.modules["utils"] = types.ModuleType("utils")  # someone else's top-level `utils`
    mine = sys.modules["utils"]
    with official.isolated_path(str(core)):
        import importlib
        assert importlib.import_module("raft").utils.MARK == "checkout"
    assert sys.modules["utils"] is mine and "raft" not in sys.modules and str(core) not in sys.path
    del sys.modules["utils"]
    basic = types.SimpleNamespace(meshgrid2d=lambda B, device="cuda": device,
                                  gridcloud2d=lambda B, device="cuda": device)
    cuda = torch.Tensor.cuda
    with official.on_cpu(basic):
        assert basic.meshgrid2d(1) == "cpu" and basic.gridcloud2d(1) == "cpu"
        t = torch.zeros(1)
        assert t.cuda() is t
    assert basic.meshgrid2d(1) == "cuda" and torch.Tensor.cuda is cuda
    with pytest.raises(FileNotFoundError, match="not a checkout of aharley/pips"):
        official.pips(str(tmp_path), None, None, 1)
    assert bench.main(["data", f"--official={tmp_path}"]) == 2
    assert "only 'raft', 'pips', 'train' and 'label' time the official code" in capsys.readouterr().err


def test_bench_tpu_compiles_the_demo_stand_in_for_demo_configs_and_the_published_model_otherwise():
    _, arch, model, size = bench.tpu_target("configs/raft.py")
    assert (arch, model, size) == ("raft_small", {}, (256, 320))
    _, arch, model, size = bench.tpu_target("configs/pips.py:pretrain")
    assert arch == "pips" and model["latent_dim"] == 64 and size == (256, 256)
    _, arch, model, size = bench.tpu_target("configs/raft.py:sintel")
    assert (arch, model, size) == ("raft", None, (436, 1024))
    _, arch, model, size = bench.tpu_target("configs/pips.py:crohd", size="512,640")
    assert (arch, model, size) == ("pips", None, (512, 640))
    _, arch, model, _ = bench.tpu_target("configs/raft.py", arch="raft")   # --arch picks the published one
    assert (arch, model) == ("raft", None)
