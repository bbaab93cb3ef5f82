"""Building blocks shared by RAFT and PIPs, matching PyTorch numerics (docs/method.md, "Numerics of the port").

All tensors are NHWC. Module names follow the PyTorch attribute names so that the checkpoint map is
mechanical: `layer2.0.norm3` in PyTorch is `layer2_0/norm3` here.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from refine_jax.models import precision

EPS = 1e-5  # PyTorch's eps for BatchNorm, InstanceNorm, LayerNorm and GroupNorm.


def conv(features: int, kernel, stride: int = 1, padding=0, name: Optional[str] = None) -> nn.Conv:
    """A conv with PyTorch's explicit symmetric padding (never 'SAME', trap T2), in the current
    precision policy (models/precision.py; HIGHEST float32 by default).

    kernel: int or (kh, kw); padding: int or (ph, pw), applied on both sides.
    """
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return precision.conv(features, (kh, kw), strides=(stride, stride), padding=((ph, ph), (pw, pw)), name=name)


def instance_norm(x):
    """nn.InstanceNorm2d defaults: no affine, no state, eps 1e-5, two-pass biased variance."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return (x - mean) / jnp.sqrt(var + EPS)


class BatchNorm(nn.Module):
    """nn.BatchNorm2d with PyTorch semantics.

    With `use_running_average` the running statistics normalise (eval mode and RAFT's `freeze_bn`).
    Otherwise the batch statistics normalise (biased variance) and the running statistics are updated
    with momentum 0.1 using the *unbiased* variance, as PyTorch does (Flax uses the biased one, T4).
    Variables: params `scale`, `bias`; batch_stats `mean`, `var`, `num_batches_tracked` (int32, kept so
    that a checkpoint round-trips exactly).
    """
    use_running_average: bool = True
    momentum: float = 0.1

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        count = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            if not self.is_initializing():
                n = x.size // c
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
                ra_var.value = (1 - m) * ra_var.value + m * jax.lax.stop_gradient(unbiased)
                count.value = count.value + 1
        return (x - mean) / jnp.sqrt(var + EPS) * scale + bias


def norm_layer(kind: str, name: str, use_running_average: bool):
    """A norm whose variables sit directly under `name` (as the PyTorch attribute), or None."""
    if kind == "batch":
        return BatchNorm(use_running_average=use_running_average, name=name)
    if kind == "instance":
        return instance_norm
    if kind == "none":
        return lambda x: x
    raise ValueError(f"unknown norm_fn {kind!r}; expected 'instance', 'batch' or 'none'")


class ResidualBlock(nn.Module):
    """RAFT/PIPs ResidualBlock: two 3x3 convs, optional 1x1 strided shortcut with `norm3`."""
    planes: int
    norm_fn: str
    stride: int = 1
    use_running_average: bool = True

    @nn.compact
    def __call__(self, x):
        ura = self.use_running_average
        y = conv(self.planes, 3, self.stride, 1, name="conv1")(x)
        y = nn.relu(norm_layer(self.norm_fn, "norm1", ura)(y))
        y = conv(self.planes, 3, 1, 1, name="conv2")(y)
        y = nn.relu(norm_layer(self.norm_fn, "norm2", ura)(y))
        if self.stride != 1:
            x = conv(self.planes, 1, self.stride, 0, name="downsample_0")(x)
            x = norm_layer(self.norm_fn, "norm3", ura)(x)
        return nn.relu(x + y)


class BottleneckBlock(nn.Module):
    """RAFT-small BottleneckBlock: 1x1 -> 3x3 (strided) -> 1x1, shortcut with `norm4`."""
    planes: int
    norm_fn: str
    stride: int = 1
    use_running_average: bool = True

    @nn.compact
    def __call__(self, x):
        ura = self.use_running_average
        q = self.planes // 4
        y = nn.relu(norm_layer(self.norm_fn, "norm1", ura)(conv(q, 1, 1, 0, name="conv1")(x)))
        y = nn.relu(norm_layer(self.norm_fn, "norm2", ura)(conv(q, 3, self.stride, 1, name="conv2")(y)))
        y = nn.relu(norm_layer(self.norm_fn, "norm3", ura)(conv(self.planes, 1, 1, 0, name="conv3")(y)))
        if self.stride != 1:
            x = conv(self.planes, 1, self.stride, 0, name="downsample_0")(x)
            x = norm_layer(self.norm_fn, "norm4", ura)(x)
        return nn.relu(x + y)


def _stage(block, planes, norm_fn, stride, ura, name):
    """Two blocks named `{name}_0` and `{name}_1`, the first one strided."""
    return [block(planes, norm_fn, stride, ura, name=f"{name}_0"),
            block(planes, norm_fn, 1, ura, name=f"{name}_1")]


class BasicEncoder(nn.Module):
    """RAFT BasicEncoder: 7x7/2 conv, 3 residual stages (64, 96, 128), 1x1 to `output_dim`; 1/8 res."""
    output_dim: int
    norm_fn: str
    use_running_average: bool = True

    @nn.compact
    def __call__(self, x):
        ura = self.use_running_average
        x = conv(64, 7, 2, 3, name="conv1")(x)
        x = nn.relu(norm_layer(self.norm_fn, "norm1", ura)(x))
        for planes, stride, name in ((64, 1, "layer1"), (96, 2, "layer2"), (128, 2, "layer3")):
            for blk in _stage(ResidualBlock, planes, self.norm_fn, stride, ura, name):
                x = blk(x)
        return conv(self.output_dim, 1, 1, 0, name="conv2")(x)


class SmallEncoder(nn.Module):
    """RAFT-small SmallEncoder: 7x7/2 conv (32), bottleneck stages (32, 64, 96), 1x1 to `output_dim`."""
    output_dim: int
    norm_fn: str
    use_running_average: bool = True

    @nn.compact
    def __call__(self, x):
        ura = self.use_running_average
        x = conv(32, 7, 2, 3, name="conv1")(x)
        x = nn.relu(norm_layer(self.norm_fn, "norm1", ura)(x))
        for planes, stride, name in ((32, 1, "layer1"), (64, 2, "layer2"), (96, 2, "layer3")):
            for blk in _stage(BottleneckBlock, planes, self.norm_fn, stride, ura, name):
                x = blk(x)
        return conv(self.output_dim, 1, 1, 0, name="conv2")(x)
