"""Supervised losses of RAFT and PIPs against (pseudo-)labels (spec/method.md sections 4 and 7).

Shapes: RAFT predictions (I, B, H, W, 2) px, label (B, H, W, 2), valid (B, H, W). PIPs predictions
(I, B, S, N, 2) px, label tracks (B, S, N, 2), valid (B, S, N).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-6  # the official reduce_masked_mean's epsilon


def masked_mean(x, mask):
    """sum(x * mask) / (sum(mask) + 1e-6), as the official PIPs utility."""
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask) / (jnp.sum(mask) + EPS)


def raft_sequence_loss(preds, label, valid, gamma: float = 0.85, max_flow: float = 400.0,
                       mask_mode: str = "per_sample"):
    """sum_i gamma^(I-1-i) * mean_{b,c,x}(w * |pred_i - label|), the mean over all pixels.

    mask_mode 'per_sample' (RAFT's loss, the default): w = valid_b(x) & |label_b(x)| < max_flow.
    'batch_mean' reproduces the reference refinement code, whose broadcast weights every sample's
    pixel by the batch mean of that mask at the same location (method.md Q1).
    """
    v = (valid > 0.5) & (jnp.linalg.norm(label, axis=-1) < max_flow)
    w = v.astype(jnp.float32)
    if mask_mode == "batch_mean":
        w = jnp.broadcast_to(w.mean(axis=0, keepdims=True), w.shape)
    elif mask_mode != "per_sample":
        raise ValueError(f"mask_mode must be 'per_sample' or 'batch_mean', got {mask_mode!r}")
    n = preds.shape[0]
    weights = gamma ** jnp.arange(n - 1, -1, -1, dtype=jnp.float32)
    per_iter = jnp.mean(w[None, ..., None] * jnp.abs(preds - label[None]), axis=(1, 2, 3, 4))
    return jnp.sum(weights * per_iter)


def pips_sequence_loss(preds, tracks, valid, gamma: float = 0.8):
    """(1/I) sum_i gamma^(I-1-i) * masked mean over (b, s, n) of mean_xy |pred_i - label|."""
    n = preds.shape[0]
    weights = gamma ** jnp.arange(n - 1, -1, -1, dtype=jnp.float32)
    err = jnp.mean(jnp.abs(preds - tracks[None]), axis=-1)  # (I, B, S, N)
    per_iter = jax.vmap(lambda e: masked_mean(e, valid))(err)
    return jnp.sum(weights * per_iter) / n


def balanced_logistic_loss(logits, positive, negative):
    """Mean softplus(-logit) over positives + mean softplus(logit) over negatives."""
    return (masked_mean(jax.nn.softplus(-logits), positive)
            + masked_mean(jax.nn.softplus(logits), negative))


def score_map_loss(score_maps, tracks, visible, valid, stride: int):
    """The PIPs score-map loss: score_maps (I, B, S, N, h, w) logits at 1/stride resolution; the
    positive is the one cell at round(track / stride); (b, s, n) entries whose cell is outside the
    map, invisible or invalid are dropped."""
    h, w = score_maps.shape[-2:]
    xy = jnp.round(tracks / stride).astype(jnp.int32)               # (B, S, N, 2)
    ok = ((xy[..., 0] >= 0) & (xy[..., 0] <= w - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= h - 1)
          & (visible > 0) & (valid > 0))
    onehot = (jax.nn.one_hot(xy[..., 1], h)[..., :, None] * jax.nn.one_hot(xy[..., 0], w)[..., None, :])
    keep = ok[None, ..., None, None]
    positive = (onehot[None] > 0.5) & keep
    negative = (onehot[None] < 0.5) & keep
    return balanced_logistic_loss(score_maps, positive, negative)


def visibility_loss(vis_logits, visible, valid):
    """Balanced BCE of the visibility logits (B, S, N) (optional; the reference does not train it)."""
    v = valid > 0
    return balanced_logistic_loss(vis_logits, (visible > 0) & v, (visible <= 0) & v)
