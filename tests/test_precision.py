"""The bf16 policy's conv as per-tap matmuls (CPUs with bfloat16 dot instructions): the same
products as XLA's bfloat16 conv, forward and gradient, and chosen only where it pays. On CPU every
conv's weight gradient as per-tap matmuls: the native conv's values and gradients."""
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


def _dot_operand_dtypes(fn, *args):
    """The operand dtypes of every dot_general in the jaxpr of `fn(*args)` (custom VJPs included)."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
            for p in eqn.params.values():
                for j in (p if isinstance(p, (tuple, list)) else (p,)):
                    inner = getattr(j, "jaxpr", None)
                    if inner is not None and hasattr(inner, "eqns"):
                        walk(inner)
    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("lead", [(6,), (2, 5, 3)])
def test_bf16_matmul_gradients_are_bf16_products_summed_in_float32(lead):
    """bf16_matmul (the bf16 policy's dense layers and conv taps): the forward and both gradients
    equal float32 matmuls of the bfloat16-rounded operands and cotangent, up to summation order,
    every product in the backward pass is a bfloat16 one (autodiff would promote it to float32),
    and the gradients come back in the operands' dtypes."""
    a = jnp.asarray(RNG.normal(size=(*lead, 64)), jnp.float32)
    b = jnp.asarray(RNG.normal(size=(64, 24)) * 0.1, jnp.float32)
    g = jnp.asarray(RNG.normal(size=(*lead, 24)), jnp.float32)
    r = lambda v: v.astype(jnp.bfloat16).astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    out, pullback = jax.vjp(precision.bf16_matmul, a, b)
    da, db = pullback(g)
    assert out.dtype == da.dtype == db.dtype == jnp.float32
    np.testing.assert_allclose(out, jnp.matmul(r(a), r(b), precision=hi), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(da, jnp.matmul(r(g), r(b).T, precision=hi), rtol=1e-2, atol=1e-2)
    flat = lambda v: v.reshape(-1, v.shape[-1])
    np.testing.assert_allclose(db, jnp.matmul(flat(r(a)).T, flat(r(g)), precision=hi), rtol=1e-2, atol=1e-2)
    loss = lambda a, b: jnp.sum(jnp.sin(precision.bf16_matmul(a, b)))
    dtypes = _dot_operand_dtypes(jax.grad(loss, (0, 1)), a, b)
    assert len(dtypes) == 3 and all(d == ("bfloat16", "bfloat16") for d in dtypes), dtypes
    _, pb16 = jax.vjp(precision.bf16_matmul, a.astype(jnp.bfloat16), b)
    assert [x.dtype for x in pb16(g)] == [jnp.bfloat16, jnp.float32]


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


@pytest.mark.parametrize("shape,kernel,strides,padding", [((2, 17, 19, 5), (3, 3), (1, 1), ((1, 1), (1, 1))),
                                                          ((2, 17, 19, 5), (7, 7), (2, 2), ((3, 3), (3, 3))),
                                                          ((2, 9, 9, 4), (1, 1), (1, 1), "SAME"),
                                                          ((3, 8, 6), (1,), (1,), "VALID")])
def test_cpu_conv_weight_gradient_by_taps(shape, kernel, strides, padding, monkeypatch):
    """cpu_conv: the native conv forward (bit for bit) and input gradient; the weight gradient as
    one matmul per tap (stride 1: shifted blocks of the flattened padded input; else strided
    slices), equal to the native one up to float32 summation order."""
    monkeypatch.setattr(precision, "_taps_weight_grad_pays", lambda *args: True)  # these convs are small
    x = jnp.asarray(RNG.normal(size=shape), jnp.float32)
    w = jnp.asarray(RNG.normal(size=(*kernel, shape[-1], 7)), jnp.float32)
    spatial = "HW"[-len(kernel):]
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
    hi = jax.lax.Precision.HIGHEST
    native = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn, precision=hi)
    ours = lambda x, w: precision.cpu_conv(x, w, strides, padding, dimension_numbers=dn, precision=hi)
    np.testing.assert_array_equal(ours(x, w), native(x, w))
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
    (gx_ref, gw_ref), (gx, gw) = (jax.grad(loss(c), (0, 1))(x, w) for c in (native, ours))
    np.testing.assert_array_equal(gx, gx_ref)
    np.testing.assert_allclose(gw, gw_ref, rtol=0, atol=1e-5 * float(jnp.abs(gw_ref).max()))
    if jax.default_backend() == "cpu":  # convs: the forward and the input gradient's, not the weights'
        count = lambda conv: jax.jit(jax.grad(loss(conv), (0, 1))).lower(x, w).as_text().count("convolution(")
        assert (count(ours), count(native)) == (2, 3)


def test_which_convs_take_the_weight_gradient_by_taps(monkeypatch):
    """Without bfloat16 dots: every conv from TAP_GRAD_MIN_FLOPS on. With them: only stride-1
    convs to at least TAP_GRAD_MIN_OUT_CHANNELS channels (XLA's own is as fast below)."""
    pays = precision._taps_weight_grad_pays
    big = ((2, 64, 64, 256), (3, 3, 256, 256), (1, 1))
    narrow = ((2, 64, 64, 256), (3, 3, 256, 192), (1, 1))
    strided = ((2, 64, 64, 256), (3, 3, 256, 256), (2, 2))
    monkeypatch.setattr(precision, "cpu_has_bf16_dots", lambda: False)
    assert pays(*big) and pays(*narrow) and not pays((2, 8, 8, 256), (3, 3, 256, 256), (1, 1))
    monkeypatch.setattr(precision, "cpu_has_bf16_dots", lambda: True)
    assert pays(*big) and pays((2, 32, 40, 324), (1, 1, 324, 256), (1, 1))
    assert not pays(*narrow) and not pays(*strided)
