"""The precision policy of the models' convs and matmuls (config field `precision`).

  highest  float32 inputs, float32 products (Precision.HIGHEST): the parity path and the default.
  bf16     convs and dense layers take bfloat16 inputs and weights (stored in float32) and
           accumulate and return float32 (`preferred_element_type`). Coordinates, flow, the
           correlation volumes and every lookup stay float32, as the RAFT authors require.

The policy is set for the duration of a model call (`with policy(cfg.precision):`) and read when
the layers are built, so the layer code stays one path: `conv()` and `dense()` below.

On a CPU with bfloat16 dot instructions (AMX or AVX512-BF16), XLA runs a bfloat16 matmul with
float32 accumulation several times faster than a float32 one (about 1.5 vs 0.28 TFLOP/s on 2 cores),
but its bfloat16 convolutions no faster than float32 ones. There, 'bf16' computes a wide conv
(at least TAPS_MIN_CHANNELS input channels) as one such matmul per kernel tap, summed in float32:
the same products and accumulation type, 2.6-2.9x faster for RAFT's update-block convs. Narrow
convs (RGB input, 2-channel flow, the 64-channel full-resolution layers) are memory-bound as taps
and keep the native conv.

When compiling for a CPU, some convs compute their weight gradient as one matmul per kernel tap
(`cpu_conv`); the forward pass and the input gradient stay the native conv, so values are
unchanged. Which ones depends on the CPU (`bench conv`, docs/speed.md): on an AVX2 CPU without
bfloat16 dots XLA's weight-gradient conv ran 2-5x slower than the taps for every conv of at least
2 GFLOP (PIPs' encoder conv2, 416 -> 256 channels at 8x64x112: 20.7 s against 4.6 s); on an
AVX-512 CPU with bfloat16 dots it is as fast as the taps or faster, except from 256 output
channels on, where it runs 2-12x slower (RAFT's 1x1 convc1, 324 -> 256: 32 against 2.7 ms).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
from typing import Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from refine_jax.models import lookup  # owns the platform being compiled for

POLICIES = ("highest", "bf16")
_CURRENT = contextvars.ContextVar("refine_jax_precision", default="highest")


def check(name: str) -> str:
    if name not in POLICIES:
        raise ValueError(f"precision must be one of {', '.join(POLICIES)}, got {name!r}")
    return name


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    token = _CURRENT.set(check(name))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> str:
    return _CURRENT.get()


TAPS_MIN_CHANNELS = 128


@functools.lru_cache(maxsize=None)
def cpu_has_bf16_dots() -> bool:
    """Whether this host's CPU has bfloat16 dot instructions (Linux /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def _bf16_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, **kwargs):
    kwargs.pop("preferred_element_type", None)
    if _taps_apply(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count):
        return taps_conv(lhs, rhs, window_strides, padding)  # float32 in: the taps' gradients sum in float32
    lhs, rhs = lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16)
    return cpu_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                    feature_group_count, preferred_element_type=jnp.float32, **kwargs)


# the weight-gradient FLOPs from which `cpu_conv` may compute them by taps: below it the conv is
# cheap either way and the taps' extra ops only lengthen compilation (tests, the demo's small frames)
TAP_GRAD_MIN_FLOPS = 2e9
# on a CPU with bfloat16 dots, the output channels from which XLA's weight-gradient conv is slow
# (and the FLOPs from which the taps pay for their compilation there)
TAP_GRAD_MIN_OUT_CHANNELS = 256
TAP_GRAD_MIN_FLOPS_WIDE = 2e8


def _taps_weight_grad_pays(lhs_shape, rhs_shape, strides) -> bool:
    """Whether `cpu_conv` computes this channels-last conv's weight gradient by taps (module
    docstring): by its FLOPs on a CPU without bfloat16 dots; by its output channels with one."""
    out_points = lhs_shape[0] * np.prod([-(-n // s) for n, s in zip(lhs_shape[1:-1], strides)])
    flops = 2 * out_points * np.prod(rhs_shape)
    if not cpu_has_bf16_dots():
        return flops >= TAP_GRAD_MIN_FLOPS
    return (rhs_shape[-1] >= TAP_GRAD_MIN_OUT_CHANNELS and all(s == 1 for s in strides)
            and flops >= TAP_GRAD_MIN_FLOPS_WIDE)


def _channels_last(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, groups) -> bool:
    """Whether a conv is a plain channels-last one (NWC/NHWC x WIO/HWIO, no groups or dilation)."""
    if groups != 1 or lhs.ndim not in (3, 4) or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ())):
        return False
    spatial = "HW"[-(lhs.ndim - 2):]
    layout = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    return (jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, layout))


def tap_weight_grad(x, dy, kernel, strides, padding, precision=None, preferred_element_type=None):
    """The weight gradient of a channels-last conv as one matmul per kernel tap.

    x (N, *S, Cin) the conv's input, dy (N, *So, Cout) the cotangent of its output, kernel the
    spatial kernel shape, padding ((lo, hi), ...) per spatial dim -> dW (*kernel, Cin, Cout)."""
    x = jnp.pad(x, ((0, 0), *map(tuple, padding), (0, 0)))
    if all(s == 1 for s in strides):
        return _flat_tap_weight_grad(x, dy, kernel, precision, preferred_element_type)
    lead = tuple(range(x.ndim - 1))
    taps = []
    for offsets in itertools.product(*(range(k) for k in kernel)):
        limit = (x.shape[0], *(o + s * (n - 1) + 1 for o, s, n in zip(offsets, strides, dy.shape[1:-1])),
                 x.shape[-1])
        tap = jax.lax.slice(x, (0, *offsets, 0), limit, (1, *strides, 1))
        taps.append(jax.lax.dot_general(tap, dy.astype(tap.dtype), ((lead, lead), ((), ())), precision=precision,
                                        preferred_element_type=preferred_element_type))
    return jnp.stack(taps).reshape(*kernel, x.shape[-1], dy.shape[-1])


def _flat_tap_weight_grad(xp, dy, kernel, precision, preferred_element_type):
    """`tap_weight_grad` of a stride-1 conv on its padded input xp (N, *Sp, Cin), without a
    strided copy per tap: with the padded grid flattened to one axis of Q points, a tap is a shift
    by a constant number of points, so its input is one contiguous block of rows of xp. dy, laid
    into the padded grid (zeros past each image's output), meets only points of its own image."""
    n, *spatial, cin = xp.shape
    q = n * int(np.prod(spatial))
    dy = jnp.pad(dy, ((0, 0), *((0, p - o) for p, o in zip(spatial, dy.shape[1:-1])), (0, 0)))
    point_strides = [int(np.prod(spatial[d + 1:])) for d in range(len(spatial))]
    shifts = [sum(o * s for o, s in zip(offsets, point_strides))
              for offsets in itertools.product(*(range(k) for k in kernel))]
    rows = q - max(shifts)  # the last image's last output point is row rows - 1
    xf = xp.reshape(q, cin)
    dyf = dy.reshape(q, dy.shape[-1])[:rows].astype(xp.dtype)
    taps = [jax.lax.dot_general(jax.lax.slice(xf, (s, 0), (s + rows, cin)), dyf, (((0,), (0,)), ((), ())),
                                precision=precision, preferred_element_type=preferred_element_type)
            for s in shifts]
    return jnp.stack(taps).reshape(*kernel, cin, dy.shape[-1])


def cpu_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, **kwargs):
    """`lax.conv_general_dilated` whose weight gradient, when compiling a plain channels-last conv
    for a CPU, is `tap_weight_grad` (the forward pass and the input gradient are the native conv)."""
    native = functools.partial(jax.lax.conv_general_dilated, window_strides=window_strides,
                               lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                               dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                               **kwargs)
    if lookup.target_platform() != "cpu" or not _channels_last(
            lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count):
        return native(lhs, rhs, padding=padding)
    if not _taps_weight_grad_pays(lhs.shape, rhs.shape, window_strides):
        return native(lhs, rhs, padding=padding)
    pads = (jax.lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
            if isinstance(padding, str) else tuple(map(tuple, padding)))

    @jax.custom_vjp
    def conv(x, w):
        return native(x, w, padding=pads)

    def forward(x, w):
        return conv(x, w), (x, w)

    def backward(res, dy):
        x, w = res
        dx = jax.vjp(lambda x: native(x, w, padding=pads), x)[1](dy)[0]
        dw = tap_weight_grad(x, dy, w.shape[:-2], window_strides, pads, kwargs.get("precision"),
                             jnp.float32 if w.dtype == jnp.bfloat16 else None)
        return dx, dw.astype(w.dtype)

    conv.defvjp(forward, backward)
    return conv(lhs, rhs)


def _taps_apply(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups) -> bool:
    if lookup.target_platform() != "cpu" or not cpu_has_bf16_dots():
        return False
    if lhs.ndim != 4 or isinstance(padding, str) or rhs.shape[2] < TAPS_MIN_CHANNELS:
        return False
    return _channels_last(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _bf16_matmul(a, b, a_dtype, b_dtype):
    return jax.lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), (((a.ndim - 1,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)


def _bf16_matmul_forward(a, b, a_dtype, b_dtype):
    a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    return _bf16_matmul(a, b, a_dtype, b_dtype), (a, b)


def _bf16_matmul_backward(a_dtype, b_dtype, res, g):
    a, b = res
    g = g.astype(jnp.bfloat16)
    lead = tuple(range(a.ndim - 1))
    da = jax.lax.dot_general(g, b, (((g.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    db = jax.lax.dot_general(a, g, ((lead, lead), ((), ())), preferred_element_type=jnp.float32)
    return da.astype(a_dtype), db.astype(b_dtype)


_bf16_matmul.defvjp(_bf16_matmul_forward, _bf16_matmul_backward)


def bf16_matmul(a, b):
    """a (..., C) @ b (C, D) -> (..., D) float32, from bfloat16 products summed in float32; its
    gradients are bfloat16 matmuls summed in float32 too, returned in a's and b's dtypes.

    Autodiff of a bfloat16 matmul would multiply the float32 cotangent by a bfloat16 operand,
    which promotes the product to a float32 matmul: on a CPU with bfloat16 dots that made the
    backward pass 2-3x slower than `highest` (`bench train`, docs/speed.md)."""
    return _bf16_matmul(a, b, jnp.dtype(a.dtype), jnp.dtype(b.dtype))


def taps_conv(x, w, strides, padding):
    """NHWC x HWIO conv as a float32 sum of one bfloat16 matmul per kernel tap (`bf16_matmul`):
    x (N,H,W,Cin) and w (kh,kw,Cin,Cout) in any float dtype (cast to bfloat16 for the products;
    their gradients come back in it), padding ((top, bottom), (left, right)) -> (N,Ho,Wo,Cout) float32."""
    kh, kw, cin, _ = w.shape
    sh, sw = strides
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    n, hp, wp, _ = x.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = jax.lax.slice(x, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                                (1, sh, sw, 1))
            y = bf16_matmul(tap, w[i, j])
            out = y if out is None else out + y
    return out


def _bf16_dot(lhs, rhs, dimension_numbers, *args, **kwargs):
    kwargs.pop("preferred_element_type", None)
    if rhs.ndim == 2 and dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())):  # nn.Dense's
        return bf16_matmul(lhs, rhs)
    args = (dimension_numbers, *args)
    return jax.lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), *args,
                               preferred_element_type=jnp.float32, **kwargs)


def layer_kwargs() -> dict:
    """Keyword arguments of nn.Conv / nn.Dense under the current policy."""
    if current() == "bf16":
        return {"precision": None}
    return {"precision": jax.lax.Precision.HIGHEST}


def conv(features: int, kernel_size, name: Optional[str] = None, **kwargs) -> nn.Conv:
    """nn.Conv under the current policy."""
    extra = {"conv_general_dilated": _bf16_conv if current() == "bf16" else cpu_conv}
    return nn.Conv(features, kernel_size, name=name, **layer_kwargs(), **extra, **kwargs)


def dense(features: int, name: Optional[str] = None) -> nn.Dense:
    """nn.Dense under the current policy."""
    extra = {"dot_general": _bf16_dot} if current() == "bf16" else {}
    return nn.Dense(features, name=name, **layer_kwargs(), **extra)


def wrapped(fn):
    """Decorator for a module method: run it under `self.cfg.precision`."""
    @functools.wraps(fn)
    def inner(self, *args, **kwargs):
        with policy(getattr(self.cfg, "precision", "highest")):
            return fn(self, *args, **kwargs)
    return inner
