"""The bf16 policy's conv as per-tap matmuls (CPUs with bfloat16 dot instructions): the same
products as XLA's bfloat16 conv, forward and gradient, and chosen only where it pays."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refine_jax.models import lookup, precision

RNG = np.random.default_rng(0)
DN = ("NHWC", "HWIO", "NHWC")


def _native(x, w, strides, padding):
    return jax.lax.conv_general_dilated(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), strides, padding,
                                        dimension_numbers=DN, preferred_element_type=jnp.float32)


@pytest.mark.parametrize("kernel,strides,padding", [((3, 3), (1, 1), ((1, 1), (1, 1))),
                                                    ((1, 5), (1, 1), ((0, 0), (2, 2))),
                                                    ((1, 1), (2, 2), ((0, 0), (0, 0))),
                                                    ((3, 3), (2, 2), ((1, 0), (2, 1)))])
def test_taps_conv_matches_the_bf16_conv_forward_and_gradient(kernel, strides, padding):
    x = jnp.asarray(RNG.normal(size=(2, 11, 13, 128)), jnp.float32)
    w = jnp.asarray(RNG.normal(size=(*kernel, 128, 24)) * 0.1, jnp.float32)
    taps = lambda x, w: precision.taps_conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), strides, padding)
    ref = _native(x, w, strides, padding)
    out = taps(x, w)
    assert out.shape == ref.shape and out.dtype == jnp.float32
    # identical bfloat16 products, float32 sums in another order
    np.testing.assert_allclose(out, ref, atol=1e-4 * float(jnp.abs(ref).max()))
    g_ref = jax.grad(lambda x, w: jnp.sum(_native(x, w, strides, padding) ** 2), (0, 1))(x, w)
    g_out = jax.grad(lambda x, w: jnp.sum(taps(x, w) ** 2), (0, 1))(x, w)
    for a, b in zip(g_out, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-2 * float(jnp.abs(b).max()))


def _ops(features_in, monkeypatch, has_bf16_dots=True):
    """The HLO ops of a bf16 nn.Conv call, with the CPU's bf16 support as given."""
    monkeypatch.setattr(precision, "cpu_has_bf16_dots", lambda: has_bf16_dots)
    x = jnp.ones((1, 8, 8, features_in), jnp.float32)
    with precision.policy("bf16"):
        layer = precision.conv(16, (3, 3), padding=((1, 1), (1, 1)))
        variables = layer.init(jax.random.PRNGKey(0), x)
        return jax.jit(layer.apply).lower(variables, x).as_text()


def test_taps_only_for_wide_convs_on_cpus_with_bf16_dots(monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("the taps path is the CPU's")
    assert "convolution" not in _ops(precision.TAPS_MIN_CHANNELS, monkeypatch)
    assert "convolution" in _ops(precision.TAPS_MIN_CHANNELS // 2, monkeypatch)  # narrow: memory-bound
    assert "convolution" in _ops(precision.TAPS_MIN_CHANNELS, monkeypatch, has_bf16_dots=False)
    with lookup.compiling_for("tpu"):  # the TPU's native bf16 conv
        assert "convolution" in _ops(precision.TAPS_MIN_CHANNELS, monkeypatch)



def test_other_convs_keep_the_native_bf16_conv(monkeypatch):
    """PIPs' 1-D convs over (B, N, C) and 'SAME'-padded convs are not 2-D NHWC with explicit
    padding: they run XLA's conv, with the same result as without the policy's taps path."""
    monkeypatch.setattr(precision, "cpu_has_bf16_dots", lambda: True)
    x = jnp.asarray(RNG.normal(size=(2, 8, precision.TAPS_MIN_CHANNELS)), jnp.float32)
    with precision.policy("bf16"):
        for layer in (precision.conv(16, (1,), padding="VALID"), precision.conv(16, (3,), padding="SAME")):
            variables = layer.init(jax.random.PRNGKey(0), x)
            assert "convolution" in jax.jit(layer.apply).lower(variables, x).as_text()
            assert layer.apply(variables, x).dtype == jnp.float32
