"""RAFT parity with the official PyTorch outputs (tests/data/raft_*.npz), through the real path:
seed-recipe weights -> official-layout .pth -> refine_jax.convert -> our model."""
import functools

import jax
import jax.numpy as jnp
import chex
import numpy as np
import pytest

import golden
from refine_jax.models import raft as raft_lib


@functools.lru_cache(maxsize=None)
def _forward(cfg, iters, all_flow_up, warm):
    model = raft_lib.RAFT(cfg)

    def run(variables, im1, im2, flow_init):
        p1, lrtb = raft_lib.pad_images(im1)
        p2, _ = raft_lib.pad_images(im2)
        out, inter = model.apply(
            variables, p1, p2, iters=iters, all_flow_up=all_flow_up,
            flow_init=flow_init if warm else None,
            capture_intermediates=lambda mdl, _: mdl.name in ("fnet", "cnet"), mutable=["intermediates"])
        out["flow_up"] = raft_lib.unpad(out["flow_up"], lrtb)
        if all_flow_up:
            out["flow_up_iters"] = raft_lib.unpad(out["flow_up_iters"], lrtb)
        out["fmap1"] = inter["intermediates"]["fnet"]["__call__"][0][:1]
        out["cnet"] = inter["intermediates"]["cnet"]["__call__"][0]
        out["corr_iter1"] = raft_lib.lookup_pyramid(
            raft_lib.build_corr_pyramid(inter["intermediates"]["fnet"]["__call__"][0][:1],
                                        inter["intermediates"]["fnet"]["__call__"][0][1:], cfg.corr_levels),
            raft_lib.coords_grid(1, p1.shape[1] // 8, p1.shape[2] // 8), cfg.corr_radius)
        return out
    return jax.jit(run)


def _run(converted, arch, g, prefix, iters=12, all_flow_up=True, warm=False):
    cfg, variables = converted(arch)
    im1 = jnp.asarray(g[prefix + "image1"][None], jnp.float32)
    im2 = jnp.asarray(g[prefix + "image2"][None], jnp.float32)
    flow_init = jnp.asarray(g["flow_init"]) if warm else None
    return jax.device_get(_forward(cfg, iters, all_flow_up, warm)(variables, im1, im2, flow_init))


LOW_TOL = 1e-3 / 8  # low-res flow is in 1/8-res pixels: 1e-3 full-resolution pixels


@pytest.fixture(scope="module")
def large_pair1(converted):
    g = golden.golden("raft_large_seed0")
    return g, _run(converted, "raft", g, "pair1_")


def test_large_encoders(large_pair1):
    g, out = large_pair1
    chex.assert_trees_all_close(out["fmap1"], g["pair1_fmap1"], atol=1e-4, rtol=0)
    chex.assert_trees_all_close(out["cnet"], g["pair1_cnet"], atol=1e-4, rtol=0)


def test_large_first_lookup(large_pair1):
    g, out = large_pair1
    ref = g["pair1_corr_iter1"]
    chex.assert_trees_all_close(out["corr_iter1"], ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_large_every_iteration(large_pair1):
    g, out = large_pair1
    for k in range(12):
        chex.assert_trees_all_close(out["flow_low_iters"][k], g["pair1_flow_low_iters"][k], atol=LOW_TOL, rtol=0, custom_message=str(k))
    chex.assert_trees_all_close(out["flow_up_iters"][0], g["pair1_flow_up_iter1"], atol=1e-3, rtol=0)
    chex.assert_trees_all_close(out["flow_up_iters"][5], g["pair1_flow_up_iter6"], atol=1e-3, rtol=0)
    chex.assert_trees_all_close(out["flow_up"], g["pair1_flow_up"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("pair", ["pair2", "pair3"])
def test_large_padded_pairs(converted, pair):
    """Odd sizes: symmetric (pair2) and asymmetric (pair3) sintel-mode padding."""
    g = golden.golden("raft_large_seed0")
    assert tuple(g[f"{pair}_pad_lrtb"]) == raft_lib.pad_amounts(*g[f"{pair}_image1"].shape[:2])
    out = _run(converted, "raft", g, f"{pair}_", all_flow_up=False)
    for k in range(12):
        chex.assert_trees_all_close(out["flow_low_iters"][k], g[f"{pair}_flow_low_iters"][k], atol=LOW_TOL, rtol=0, custom_message=str(k))
    chex.assert_trees_all_close(out["flow_up"], g[f"{pair}_flow_up"], atol=1e-3, rtol=0)


def test_large_warm_start(converted):
    g = golden.golden("raft_large_warm_seed0")
    out = _run(converted, "raft", g, "", iters=4, warm=True)
    for k in range(4):
        chex.assert_trees_all_close(out["flow_low_iters"][k], g["flow_low_iters"][k], atol=LOW_TOL, rtol=0, custom_message=str(k))
    chex.assert_trees_all_close(out["flow_up_iters"][0], g["flow_up_iter1"], atol=1e-3, rtol=0)
    chex.assert_trees_all_close(out["flow_up"], g["flow_up"], atol=1e-3, rtol=0)


def test_small_everything(converted):
    g = golden.golden("raft_small_seed1")
    out = _run(converted, "raft_small", g, "")
    chex.assert_trees_all_close(out["fmap1"], g["fmap1"], atol=1e-4, rtol=0)
    chex.assert_trees_all_close(out["cnet"], g["cnet"], atol=1e-4, rtol=0)
    chex.assert_trees_all_close(out["corr_iter1"], g["corr_iter1"], atol=1e-4 * np.abs(g["corr_iter1"]).max(), rtol=0)
    for k in range(12):
        chex.assert_trees_all_close(out["flow_low_iters"][k], g["flow_low_iters"][k], atol=LOW_TOL, rtol=0, custom_message=str(k))
    chex.assert_trees_all_close(out["flow_up_iters"][0], g["flow_up_iter1"], atol=1e-3, rtol=0)
    chex.assert_trees_all_close(out["flow_up_iters"][5], g["flow_up_iter6"], atol=1e-3, rtol=0)
    chex.assert_trees_all_close(out["flow_up"], g["flow_up"], atol=1e-3, rtol=0)


def test_make_flow_fn_matches_golden(converted):
    """The user-facing jitted function (padding included) gives the same flow."""
    cfg, variables = converted("raft")
    g = golden.golden("raft_large_seed0")
    flow_fn = raft_lib.make_flow_fn(cfg, iters=12)
    flow_up, flow_low = flow_fn(variables, g["pair2_image1"][None], g["pair2_image2"][None])
    chex.assert_trees_all_close(flow_up, g["pair2_flow_up"], atol=1e-3, rtol=0)
    chex.assert_trees_all_close(flow_low, g["pair2_flow_low"], atol=LOW_TOL, rtol=0)


def test_backward_fence_is_the_identity_with_the_identity_gradient():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 5, 3)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)
    np.testing.assert_array_equal(raft_lib.backward_fence(x), x)
    fenced = jax.jit(jax.grad(lambda v: jnp.sum(jnp.tanh(raft_lib.backward_fence(v)) * w)))(x)
    plain = jax.jit(jax.grad(lambda v: jnp.sum(jnp.tanh(v) * w)))(x)
    np.testing.assert_array_equal(fenced, plain)
