"""Correlation pyramids, window lookups and the three bilinear samplers (one place for all of them).

Coordinates are (x, y) in pixels of the map being sampled, pixel centres at integers. Maps are
channels-last. The three samplers follow the official PyTorch code exactly (docs/method.md, "Numerics of the port"):

* `sample_zeros`: `grid_sample(align_corners=True, padding_mode='zeros')`; every out-of-bounds tap
  contributes 0 and the weights are not renormalised (correlation lookup, flow warps).
* `sample_clamped`: PIPs' `bilinear_sample2d`; the tap indices are clamped to the border while the
  weights come from the unclamped neighbours (template sampling).
* `resize_align_corners`: `F.interpolate(bilinear, align_corners=True)` (PIPs encoder, RAFT-small
  `upflow8`). Not `jax.image.resize`, which uses half-pixel centres and antialiasing.
"""
from __future__ import annotations

import jax.numpy as jnp


def bilinear_taps(x, y):
    """Integer top-left tap and the fractional offsets, as grid_sample computes them."""
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    return x0.astype(jnp.int32), y0.astype(jnp.int32), x - x0, y - y0


def _gather2d(img, yi, xi, zero_outside: bool):
    """img (H, W, C); yi, xi integer arrays of one shape S -> (S..., C)."""
    h, w = img.shape[0], img.shape[1]
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    vals = img[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
    if zero_outside:
        vals = vals * inside[..., None].astype(vals.dtype)
    return vals


def sample_zeros(img, xy):
    """Bilinear sample of `img` (H, W, C) at `xy` (..., 2) pixels, zero padding per tap -> (..., C)."""
    x0, y0, fx, fy = bilinear_taps(xy[..., 0], xy[..., 1])
    g = lambda yi, xi: _gather2d(img, yi, xi, zero_outside=True)
    fx, fy = fx[..., None], fy[..., None]
    return ((1 - fx) * (1 - fy) * g(y0, x0) + fx * (1 - fy) * g(y0, x0 + 1)
            + (1 - fx) * fy * g(y0 + 1, x0) + fx * fy * g(y0 + 1, x0 + 1))


def sample_clamped(img, xy):
    """PIPs `bilinear_sample2d`: img (H, W, C), xy (..., 2) -> (..., C), border-clamped indices.

    The weights are (x1 - x)(y1 - y) etc. with x1 = floor(x) + 1 unclamped, exactly as the official
    sampler, so a point left of the image takes column 0 at full weight.
    """
    x, y = xy[..., 0], xy[..., 1]
    x0, y0, _, _ = bilinear_taps(x, y)
    x0f, y0f = x0.astype(x.dtype), y0.astype(y.dtype)
    x1f, y1f = x0f + 1, y0f + 1
    g = lambda yi, xi: _gather2d(img, yi, xi, zero_outside=False)
    w00 = ((x1f - x) * (y1f - y))[..., None]
    w01 = ((x - x0f) * (y1f - y))[..., None]
    w10 = ((x1f - x) * (y - y0f))[..., None]
    w11 = ((x - x0f) * (y - y0f))[..., None]
    return (w00 * g(y0, x0) + w01 * g(y0, x0 + 1) + w10 * g(y0 + 1, x0) + w11 * g(y0 + 1, x0 + 1))


def _align_corners_axis(n_in: int, n_out: int):
    """Source index pairs and weights of a 1-D align_corners=True linear resize."""
    if n_out == 1 or n_in == 1:
        src = jnp.zeros((n_out,), jnp.float32)
    else:
        scale = jnp.float32(n_in - 1) / jnp.float32(n_out - 1)
        src = scale * jnp.arange(n_out, dtype=jnp.float32)
    i0 = jnp.floor(src).astype(jnp.int32)
    i0 = jnp.clip(i0, 0, n_in - 1)
    i1 = jnp.minimum(i0 + 1, n_in - 1)
    lam = src - i0.astype(jnp.float32)
    return i0, i1, lam


def resize_align_corners(x, out_hw):
    """Bilinear resize with align_corners=True, no antialiasing. x (..., H, W, C) -> (..., h, w, C)."""
    h_in, w_in = x.shape[-3], x.shape[-2]
    h_out, w_out = out_hw
    if (h_in, w_in) == (h_out, w_out):
        return x
    r0, r1, ly = _align_corners_axis(h_in, h_out)
    c0, c1, lx = _align_corners_axis(w_in, w_out)
    ly = ly[:, None, None]
    lx = lx[:, None]
    top = jnp.take(x, r0, axis=-3)
    bot = jnp.take(x, r1, axis=-3)
    rows = (1 - ly) * top + ly * bot
    left = jnp.take(rows, c0, axis=-2)
    right = jnp.take(rows, c1, axis=-2)
    return (1 - lx) * left + lx * right


def avg_pool2(x):
    """2x2 average pool, stride 2, floor mode, over axes (-3, -2) of (..., H, W, C)."""
    h, w = x.shape[-3] // 2 * 2, x.shape[-2] // 2 * 2
    x = x[..., :h, :w, :]
    x = x.reshape(*x.shape[:-3], h // 2, 2, w // 2, 2, x.shape[-1])
    return x.mean(axis=(-4, -2))


def window_from_patch(patch, fx, fy, radius: int):
    """Bilinear (2r+1)^2 window from an integer (2r+2)x(2r+2) patch of scalars.

    patch (..., 2r+2 [rows y], 2r+2 [cols x]) gathered with its top-left at (floor(x) - r,
    floor(y) - r); fx, fy (...) fractional offsets. Returns (..., (2r+1)^2) with the x offset as the
    major index and the y offset as the minor one (channel = a*(2r+1) + b, spec trap T1).
    All window points share the same four weights because the offsets are integers.
    """
    fx = fx[..., None, None]
    fy = fy[..., None, None]
    win = ((1 - fx) * (1 - fy) * patch[..., :-1, :-1] + fx * (1 - fy) * patch[..., :-1, 1:]
           + (1 - fx) * fy * patch[..., 1:, :-1] + fx * fy * patch[..., 1:, 1:])  # (..., b=y, a=x)
    win = jnp.swapaxes(win, -1, -2)  # (..., a, b): x offset major
    return win.reshape(*win.shape[:-2], (2 * radius + 1) ** 2)


def patch_indices(x0, y0, radius: int, h: int, w: int):
    """Indices of the (2r+2)^2 patch whose top-left is (x0 - r, y0 - r), and its inside mask."""
    offs = jnp.arange(-radius, radius + 2, dtype=jnp.int32)
    ys = y0[..., None, None] + offs[:, None]
    xs = x0[..., None, None] + offs[None, :]
    ys, xs = jnp.broadcast_arrays(ys, xs)
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    return jnp.clip(ys, 0, h - 1), jnp.clip(xs, 0, w - 1), inside


def lookup_volume(volume, xy, radius: int):
    """Window lookup in per-point correlation maps (RAFT and PIPs).

    volume (P, H, W): one map per query point; xy (P, 2) in that map's pixels.
    Returns (P, (2r+1)^2), zero outside the map.
    """
    p, h, w = volume.shape
    x0, y0, fx, fy = bilinear_taps(xy[:, 0], xy[:, 1])
    ys, xs, inside = patch_indices(x0, y0, radius, h, w)
    flat = (ys * w + xs).reshape(p, -1)
    patch = jnp.take_along_axis(volume.reshape(p, h * w), flat, axis=1).reshape(ys.shape)
    patch = jnp.where(inside, patch, 0.0)
    return window_from_patch(patch, fx, fy, radius)
