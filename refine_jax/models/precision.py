"""The precision policy of the models' convs and matmuls (config field `precision`).

  highest  float32 inputs, float32 products (Precision.HIGHEST): the parity path and the default.
  bf16     convs and dense layers take bfloat16 inputs and weights (stored in float32) and
           accumulate and return float32 (`preferred_element_type`). Coordinates, flow, the
           correlation volumes and every lookup stay float32, as the RAFT authors require.

The policy is set for the duration of a model call (`with policy(cfg.precision):`) and read when
the layers are built, so the layer code stays one path: `conv()` and `dense()` below.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def _bf16_conv(lhs, rhs, *args, **kwargs):
    kwargs.pop("preferred_element_type", None)
    return jax.lax.conv_general_dilated(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), *args,
                                        preferred_element_type=jnp.float32, **kwargs)


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
