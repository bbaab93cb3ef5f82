"""Augmentation applied consistently to frames and labels, inside the jitted train step (JAX),
seeded per step (docs/method.md, "Training").

Order: colour jitter (brightness, contrast, saturation, hue; the same draw for every frame of a
sample, or, with probability `asym_prob`, an independent draw per frame), eraser (optional: boxes
in the later frames filled with the mean colour), random crop, horizontal flip, vertical flip.
Flow labels move with the crop and change sign under flips; track coordinates move likewise and
a track point outside the crop becomes invisible. Colour jitter applies its four factors in a fixed
order (torchvision draws a random order).

Batches: frames uint8 (B, T, H, W, 3); RAFT flow (B, 1, H, W, 2) and flow_valid (B, 1, H, W);
PIPs tracks (B, N, T, 2) and visible (B, N, T).
"""
from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp

from refine_jax.settings import AugmentConfig


def _grey(img):
    return (0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2])[..., None]


def _rgb_to_hsv(rgb):
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = mx - mn
    safe = jnp.where(d > 0, d, 1.0)
    h = jnp.where(mx == r, ((g - b) / safe) % 6, jnp.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = jnp.where(d > 0, h / 6.0, 0.0)
    s = jnp.where(mx > 0, d / jnp.where(mx > 0, mx, 1.0), 0.0)
    return h, s, mx


def _hsv_to_rgb(h, s, v):
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(jnp.int32) % 6
    sel = lambda a: jnp.select([i == k for k in range(6)], a)
    return jnp.stack([sel([v, q, p, p, t, v]), sel([t, v, v, q, p, p]), sel([p, p, t, v, v, q])], -1)


def colour_jitter(img, factors):
    """img float (..., H, W, 3) in [0, 1]; factors (4,) = brightness, contrast, saturation, hue shift."""
    b, c, s, h = factors
    img = jnp.clip(img * b, 0, 1)
    mean = _grey(img).mean(axis=(-3, -2, -1), keepdims=True)
    img = jnp.clip((img - mean) * c + mean, 0, 1)
    g = _grey(img)
    img = jnp.clip((img - g) * s + g, 0, 1)
    hh, ss, vv = _rgb_to_hsv(img)
    return jnp.clip(_hsv_to_rgb((hh + h) % 1.0, ss, vv), 0, 1)


def _draw_factors(key, ac: AugmentConfig, n: int):
    kb, kc, ks, kh = jax.random.split(key, 4)
    u = lambda k, lo, hi: jax.random.uniform(k, (n,), minval=lo, maxval=hi)
    return jnp.stack([u(kb, 1 - ac.brightness, 1 + ac.brightness), u(kc, 1 - ac.contrast, 1 + ac.contrast),
                      u(ks, 1 - ac.saturation, 1 + ac.saturation), u(kh, -ac.hue, ac.hue)], -1)


def _augment_one(key, sample: Dict[str, jax.Array], ac: AugmentConfig) -> Dict[str, jax.Array]:
    k_sym, k_asym, k_which, k_erase, k_crop, k_h, k_v = jax.random.split(key, 7)
    frames = sample["frames"].astype(jnp.float32) / 255.0           # (T, H, W, 3)
    t, h, w, _ = frames.shape
    sym = jnp.repeat(_draw_factors(k_sym, ac, 1), t, axis=0)
    asym = _draw_factors(k_asym, ac, t)
    factors = jnp.where(jax.random.uniform(k_which) < ac.asym_prob, asym, sym)
    frames = jax.vmap(colour_jitter)(frames, factors)
    out = dict(sample)
    if ac.eraser > 0:
        ke1, ke2, ke3 = jax.random.split(k_erase, 3)
        cy = jax.random.uniform(ke1, (), minval=0, maxval=h)
        cx = jax.random.uniform(ke2, (), minval=0, maxval=w)
        half = jax.random.uniform(ke3, (2,), minval=h / 16, maxval=h / 8)
        yy, xx = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
        box = (jnp.abs(yy - cy) < half[0]) & (jnp.abs(xx - cx) < half[1])
        erase = (jax.random.uniform(ke1, ()) < ac.eraser) & box
        mean = frames[1:].mean(axis=(1, 2), keepdims=True)
        later = jnp.where(erase[None, ..., None], mean, frames[1:])
        frames = jnp.concatenate([frames[:1], later], 0)
    dy = dx = 0
    if ac.crop:
        ch, cw = ac.crop
        dy = jax.random.randint(k_crop, (), 0, max(h - ch, 1))  # high end excluded, as the reference
        dx = jax.random.randint(jax.random.fold_in(k_crop, 1), (), 0, max(w - cw, 1))
        frames = jax.lax.dynamic_slice(frames, (0, dy, dx, 0), (t, ch, cw, 3))
        if "flow" in out:
            out["flow"] = jax.lax.dynamic_slice(out["flow"], (0, dy, dx, 0), (out["flow"].shape[0], ch, cw, 2))
            out["flow_valid"] = jax.lax.dynamic_slice(out["flow_valid"], (0, dy, dx),
                                                      (out["flow_valid"].shape[0], ch, cw))
        h, w = ch, cw
    hflip = jax.random.uniform(k_h) < ac.hflip
    vflip = jax.random.uniform(k_v) < ac.vflip
    frames = jnp.where(hflip, frames[:, :, ::-1], frames)
    frames = jnp.where(vflip, frames[:, ::-1], frames)
    out["frames"] = jnp.round(frames * 255.0).astype(jnp.uint8)
    if "flow" in out:
        f, v = out["flow"], out["flow_valid"]
        f = jnp.where(hflip, f[:, :, ::-1] * jnp.array([-1.0, 1.0]), f)
        v = jnp.where(hflip, v[:, :, ::-1], v)
        f = jnp.where(vflip, f[:, ::-1] * jnp.array([1.0, -1.0]), f)
        v = jnp.where(vflip, v[:, ::-1], v)
        out["flow"], out["flow_valid"] = f, v
    if "tracks" in out:
        tr = out["tracks"] - jnp.array([dx, dy], jnp.float32)
        tr = jnp.where(hflip, tr * jnp.array([-1.0, 1.0]) + jnp.array([w - 1.0, 0.0]), tr)
        tr = jnp.where(vflip, tr * jnp.array([1.0, -1.0]) + jnp.array([0.0, h - 1.0]), tr)
        inside = (tr[..., 0] >= 0) & (tr[..., 0] <= w - 1) & (tr[..., 1] >= 0) & (tr[..., 1] <= h - 1)
        out["tracks"], out["visible"] = tr, out["visible"] & inside
        if "track_valid" in out:
            # a track is queried at its frame-0 position: one whose query the crop cut away asks
            # the model to follow a point it cannot see (3 in 4 of them for a 128 crop of 256x256)
            out["track_valid"] = out["track_valid"] & inside[:, 0]
    return out


def augment_batch(key, batch: Dict[str, jax.Array], ac: AugmentConfig) -> Dict[str, jax.Array]:
    """Augment every sample of a batch with its own key (split from `key`)."""
    if not ac.enabled:
        return batch
    keys = jax.random.split(key, batch["frames"].shape[0])
    return jax.vmap(lambda k, s: _augment_one(k, s, ac))(keys, batch)
