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
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

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
    lhs, rhs = lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16)
    if _taps_apply(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count):
        return taps_conv(lhs, rhs, window_strides, padding)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count,
                                        preferred_element_type=jnp.float32, **kwargs)


def _taps_apply(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups) -> bool:
    if lookup.target_platform() != "cpu" or not cpu_has_bf16_dots():
        return False
    plain = (groups == 1 and lhs.ndim == 4 and not isinstance(padding, str)
             and all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1))))
    if not plain or rhs.shape[2] < TAPS_MIN_CHANNELS:
        return False
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    return jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc


def taps_conv(x, w, strides, padding):
    """NHWC x HWIO conv as a float32 sum of one bfloat16 matmul per kernel tap: x (N,H,W,Cin) and
    w (kh,kw,Cin,Cout) in bfloat16, padding ((top, bottom), (left, right)) -> (N,Ho,Wo,Cout) float32."""
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
            y = jnp.einsum("nhwc,cd->nhwd", tap, w[i, j], preferred_element_type=jnp.float32)
            out = y if out is None else out + y
    return out


def _bf16_dot(lhs, rhs, *args, **kwargs):
    kwargs.pop("preferred_element_type", None)
    return jax.lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), *args,
                               preferred_element_type=jnp.float32, **kwargs)


def layer_kwargs() -> dict:
    """Keyword arguments of nn.Conv / nn.Dense under the current policy."""
    if current() == "bf16":
        return {"precision": None}
    return {"precision": jax.lax.Precision.HIGHEST}


def conv(features: int, kernel_size, name: Optional[str] = None, **kwargs) -> nn.Conv:
    """nn.Conv under the current policy."""
    extra = {"conv_general_dilated": _bf16_conv} if current() == "bf16" else {}
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
