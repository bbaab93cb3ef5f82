"""Gather-free lookups and on-the-fly correlation at parity with the gather / volume paths (forward
and gradient), on random maps and on the golden RAFT and PIPs cases; the bf16 policy's distance."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import golden
from refine_jax.models import corr as corr_lib, lookup
from refine_jax.models.pips import Pips
from refine_jax.models.raft import RAFT, pad_images, unpad

RNG = np.random.default_rng(0)


def test_window_and_clamped_sample_without_gathers():
    vol = jnp.asarray(RNG.normal(size=(40, 9, 11)), jnp.float32)
    xy = jnp.asarray(np.concatenate([RNG.uniform(-4, 14, (36, 2)), [[0, 0], [10, 8], [-3.5, 2.2], [12.7, -1.1]]]),
                     jnp.float32)
    for r in (3, 4):
        np.testing.assert_allclose(lookup.window_einsum(vol, xy, r), corr_lib.lookup_volume(vol, xy, r), atol=1e-5)
        g_e = jax.grad(lambda v: jnp.sum(lookup.window_einsum(v, xy, r) ** 2))(vol)
        g_g = jax.grad(lambda v: jnp.sum(corr_lib.lookup_volume(v, xy, r) ** 2))(vol)
        np.testing.assert_allclose(g_e, g_g, atol=1e-4)
    img = jnp.asarray(RNG.normal(size=(9, 11, 5)), jnp.float32)
    np.testing.assert_allclose(lookup.sample_clamped(img, xy, "einsum"), corr_lib.sample_clamped(img, xy), atol=1e-5)
    # the contraction path has no gather, and its gradient no scatter
    def ops(fn):
        fwd = jax.jit(lambda v: jnp.sum(fn(v, xy, 3))).lower(vol).as_text()
        bwd = jax.jit(jax.grad(lambda v: jnp.sum(fn(v, xy, 3)))).lower(vol).as_text()
        return "gather" in fwd, "scatter" in bwd
    assert ops(lookup.window_einsum) == (False, False) and ops(corr_lib.lookup_volume) == (True, True)
    assert lookup.resolve_lookup("auto") == "gather"
    with lookup.compiling_for("tpu"):
        assert lookup.resolve_lookup("auto") == "einsum"
    assert lookup.resolve_corr("auto", 135 * 240) == "alt" and lookup.resolve_corr("auto", 46 * 62) == "volume"


@functools.lru_cache(maxsize=None)
def _raft(cfg, iters):
    model = RAFT(cfg)

    def run(variables, im1, im2):
        p1, lrtb = pad_images(im1)
        p2, _ = pad_images(im2)
        return unpad(model.apply(variables, p1, p2, iters=iters)["flow_up"], lrtb)
    return jax.jit(run)


_GRADS = {}


def _raft_grad(cfg, variables, im1, im2):
    """The gradient of a flow loss (2 iterations) with respect to every parameter; the reference
    path's is computed once for both variants."""
    if cfg not in _GRADS:
        rest = {k: v for k, v in variables.items() if k != "params"}
        padded = [pad_images(x)[0] for x in (im1, im2)]
        loss = lambda p: jnp.mean(jnp.abs(RAFT(cfg).apply({"params": p, **rest}, *padded, iters=2)["flow_up"]))
        _GRADS[cfg] = jax.jit(jax.grad(loss))(variables["params"])  # compiled: half the time of eager
    return _GRADS[cfg]


@pytest.mark.parametrize("variant", [{"lookup": "einsum"}, {"corr": "alt"}])
def test_raft_paths_match_on_the_golden_pair(converted, variant):
    cfg, variables = converted("raft")
    g = golden.golden("raft_large_seed0")
    im1, im2 = (jnp.asarray(g[f"pair2_image{i}"][None], jnp.float32) for i in (1, 2))
    ref = _raft(cfg, 12)(variables, im1, im2)
    other = dataclasses.replace(cfg, **variant)
    out = _raft(other, 12)(variables, im1, im2)
    # the paths sum in other orders; over 12 recurrent iterations float32 rounding reaches 1.2e-4 px
    # on flows of ~13 px on an AMD EPYC (below 1e-4 where this test was first run): a third of the bar
    # the official outputs are matched to (1e-3)
    assert float(jnp.abs(out - ref).max()) < 3e-4, variant
    np.testing.assert_allclose(ref, g["pair2_flow_up"], atol=1e-3)
    # the gradient that training takes: of a flow loss with respect to every parameter
    g_ref = _raft_grad(cfg, variables, im1, im2)
    g_new = _raft_grad(other, variables, im1, im2)
    num = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_new)))
    den = max(float(jnp.abs(a).max()) for a in jax.tree_util.tree_leaves(g_ref))
    assert num < 1e-4 * den, (variant, num, den)


def test_pips_gather_free_matches_on_the_golden_clip(converted):
    cfg, variables = converted("pips")
    g = golden.golden("pips_seed2_s8")
    frames, xys = jnp.asarray(g["frames"][None], jnp.float32), jnp.asarray(g["xys"])
    runs = {impl: Pips(dataclasses.replace(cfg, stride=8, lookup=impl)).apply(variables, xys, frames, iters=2)
            for impl in ("gather", "einsum")}
    a, b = runs["gather"], runs["einsum"]
    assert float(jnp.abs(a["coords_iters"][0] - b["coords_iters"][0]).max()) < 1e-4
    assert float(jnp.abs(a["ffeat"] - b["ffeat"]).max()) < 1e-5
    np.testing.assert_allclose(b["coords_iters"][0], g["coords_iters"][0], atol=1e-3)


def test_bf16_policy_stays_near_highest_on_the_golden_pair(converted):
    cfg, variables = converted("raft")
    g = golden.golden("raft_large_seed0")
    im1, im2 = (jnp.asarray(g[f"pair1_image{i}"][None], jnp.float32) for i in (1, 2))
    ref = _raft(cfg, 12)(variables, im1, im2)
    bf = _raft(dataclasses.replace(cfg, precision="bf16"), 12)(variables, im1, im2)
    err = float(jnp.linalg.norm(bf - ref, axis=-1).mean())
    assert 0 < err < 0.05 * float(jnp.linalg.norm(ref, axis=-1).mean()), err
