"""How correlation windows and feature samples are read: by gathers, by gather-free contractions,
or (RAFT) from correlations computed on the fly instead of a stored volume.

Gather-free ('einsum'): a bilinear sample at a fractional position x along an axis of length n is
a dot product with a two-hot vector, (1 - f) at floor(x) and f at floor(x) + 1 (zero where that
falls outside: zero padding). A (2r+1)^2 window around (x, y) in a map V is then Wy V Wx^T with
(2r+1, H) and (2r+1, W) two-hot matrices, one matrix product per point instead of a gather (and,
in the backward pass, instead of a scatter). TPUs run these as matmuls; gathers and scatters are
slow there (tapnet's TAPIR samples with depthwise convs for the same reason). CPUs and GPUs
gather fast, and the contractions cost O(H + W) more arithmetic per point, so 'auto' picks
'einsum' only when compiling for a TPU. On CPU the two cost about the same in training: a PIPs
step (stride 4, 8x128x128, batch 2, 4 iterations) took 2.4-2.5 s with either on 2 cores (2026-11-27;
an earlier measurement gave 2.58 s for 'einsum' against 4.3 s for 'gather', the scatter of a gather's
gradient, which is why configs/pips.py:pretrain sets 'einsum').

On the fly ('alt', RAFT's alternate correlation): the level-l correlation of a point is
<f1, pool_l(f2)> / sqrt(C), linear in f2, so a window of it is the (2r+2)^2 integer patch of
pooled features around the point, dotted with f1, then interpolated like a volume patch. Memory is
O(points x (2r+2)^2 x C) per chunk of points instead of O((H W / 64)^2) for the volume, which is
what makes 1080p frames fit (1080x1920: 4.2 GB for the level-0 volume alone). 'auto' switches to
it above ALT_ABOVE points.

Coordinates are (x, y) pixels of the map; windows are x-offset-major (channel a*(2r+1) + b, as
the official code orders them).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, List

import jax
import jax.numpy as jnp

from refine_jax.models import corr as corr_lib

LOOKUPS = ("auto", "gather", "einsum")
CORRS = ("auto", "volume", "alt")
ALT_ABOVE = 128 * 240      # 1/8-resolution points of a 1024x1920 frame: above it, 'auto' = 'alt'
ALT_CHUNK = 2048           # points per step of the on-the-fly correlation
_TARGET = contextvars.ContextVar("refine_jax_target_platform", default="")


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
    """Trace as for `platform` ('tpu', 'gpu', 'cpu') whatever backend this host has, e.g. when
    compiling for a Cloud TPU topology on a CPU host."""
    token = _TARGET.set(platform)
    try:
        yield
    finally:
        _TARGET.reset(token)


def target_platform() -> str:
    return _TARGET.get() or jax.default_backend()


def resolve_lookup(impl: str) -> str:
    if impl not in LOOKUPS:
        raise ValueError(f"lookup must be one of {', '.join(LOOKUPS)}, got {impl!r}")
    if impl == "auto":
        return "einsum" if target_platform() == "tpu" else "gather"
    return impl


def resolve_corr(impl: str, points: int) -> str:
    if impl not in CORRS:
        raise ValueError(f"corr must be one of {', '.join(CORRS)}, got {impl!r}")
    if impl == "auto":
        return "alt" if points > ALT_ABOVE else "volume"
    return impl


# ---------------------------------------------------------------------------------- two-hot

def two_hot(x, n: int, clamp: bool = False):
    """(..., n) bilinear weights of fractional positions x (...) on an axis of length n: zero
    padding, or with `clamp` PIPs' border-clamped taps (the weights of taps outside go to the
    border index)."""
    x0 = jnp.floor(x)
    f = (x - x0)[..., None]
    i0 = x0.astype(jnp.int32)[..., None]
    i1 = i0 + 1
    if clamp:
        i0, i1 = jnp.clip(i0, 0, n - 1), jnp.clip(i1, 0, n - 1)
    iota = jnp.arange(n, dtype=jnp.int32)
    return (1 - f) * (iota == i0) + f * (iota == i1)


def window_einsum(volume, xy, radius: int):
    """As corr.lookup_volume, without gathers: volume (P, H, W), xy (P, 2) -> (P, (2r+1)^2)."""
    p, h, w = volume.shape
    offs = jnp.arange(-radius, radius + 1, dtype=xy.dtype)
    wy = two_hot(xy[:, 1:2] + offs, h)                  # (P, 2r+1 [b: y offset], H)
    wx = two_hot(xy[:, 0:1] + offs, w)                  # (P, 2r+1 [a: x offset], W)
    win = jnp.einsum("pbh,phw,paw->pab", wy, volume, wx, precision=jax.lax.Precision.HIGHEST)
    return win.reshape(p, (2 * radius + 1) ** 2)


def window(volume, xy, radius: int, impl: str = "gather"):
    """Window lookup in per-point maps by the resolved implementation."""
    if resolve_lookup(impl) == "einsum":
        return window_einsum(volume, xy, radius)
    return corr_lib.lookup_volume(volume, xy, radius)


def sample_clamped(img, xy, impl: str = "gather"):
    """PIPs' border-clamped bilinear sample of img (H, W, C) at xy (..., 2) -> (..., C)."""
    if resolve_lookup(impl) == "gather":
        return corr_lib.sample_clamped(img, xy)
    h, w, _ = img.shape
    wy = two_hot(xy[..., 1], h, clamp=True)
    wx = two_hot(xy[..., 0], w, clamp=True)
    return jnp.einsum("...h,hwc,...w->...c", wy, img, wx, precision=jax.lax.Precision.HIGHEST)


# ------------------------------------------------------------------------ on-the-fly (RAFT)

def feature_pyramid(fmap2, levels: int) -> List[jax.Array]:
    """(B, h, w, C) -> `levels` maps, each 2x2-average-pooled (floor) from the previous: the volume
    pyramid's pooling moved onto the features (pooling commutes with the dot product)."""
    out = [fmap2.astype(jnp.float32)]
    for _ in range(levels - 1):
        out.append(corr_lib.avg_pool2(out[-1]))
    return out


def _alt_level(f1, f2, xy, radius: int):
    """Windows of one level for points f1 (P, C) at xy (P, 2) in f2 (h, w, C) -> (P, (2r+1)^2)."""
    h, w, c = f2.shape
    x0, y0, fx, fy = corr_lib.bilinear_taps(xy[:, 0], xy[:, 1])
    ys, xs, inside = corr_lib.patch_indices(x0, y0, radius, h, w)       # (P, 2r+2, 2r+2)
    patch = f2[ys, xs]                                                    # (P, 2r+2, 2r+2, C)
    corr = jnp.einsum("pyxc,pc->pyx", patch, f1, precision=jax.lax.Precision.HIGHEST) / jnp.sqrt(jnp.float32(c))
    return corr_lib.window_from_patch(jnp.where(inside, corr, 0.0), fx, fy, radius)


def alt_windows(fmap1, pyramid, coords, radius: int, chunk: int = ALT_CHUNK):
    """Correlation windows computed on the fly: fmap1 (B, h, w, C), pyramid from feature_pyramid,
    coords (B, h, w, 2) level-0 pixels -> (B, h, w, levels*(2r+1)^2), as lookup_pyramid on the
    volume. Points go through in chunks so memory stays bounded."""
    b, h, w, c = fmap1.shape
    n = h * w
    pad = (-n) % chunk if n > chunk else 0
    size = chunk if n > chunk else n
    f1 = jnp.pad(fmap1.reshape(b, n, c).astype(jnp.float32), ((0, 0), (0, pad), (0, 0)))
    xy = jnp.pad(coords.reshape(b, n, 2), ((0, 0), (0, pad), (0, 0)))

    def per_image(f1_i, xy_i, levels_i):
        def one_chunk(args):
            fc, xc = args
            return jnp.concatenate([_alt_level(fc, lv, xc / (2 ** k), radius) for k, lv in enumerate(levels_i)], -1)
        parts = jax.lax.map(one_chunk, (f1_i.reshape(-1, size, c), xy_i.reshape(-1, size, 2)))
        return parts.reshape(-1, parts.shape[-1])[:n]
    out = jax.vmap(per_image)(f1, xy, pyramid)
    return out.reshape(b, h, w, -1)
