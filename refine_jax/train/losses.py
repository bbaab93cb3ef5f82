"""Supervised losses of RAFT and PIPs against (pseudo-)labels (docs/method.md, "Training").

Shapes: RAFT predictions (I, B, H, W, 2) px, label (B, H, W, 2), valid (B, H, W). PIPs predictions
(I, B, S, N, 2) px, label tracks (B, S, N, 2), valid (B, S, N).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from refine_jax.models import build_model, lookup

EPS = 1e-6  # the official reduce_masked_mean's epsilon


def masked_mean(x, mask):
    """sum(x * mask) / (sum(mask) + 1e-6), as the official PIPs utility. A mask that broadcasts
    against x (the score maps' one per iteration) counts once per element of x it covers."""
    mask = jnp.broadcast_to(mask, x.shape).astype(x.dtype)
    return jnp.sum(x * mask) / (jnp.sum(mask) + EPS)


def raft_sequence_loss(preds, label, valid, gamma: float = 0.85, max_flow: float = 400.0,
                       mask_mode: str = "per_sample"):
    """sum_i gamma^(I-1-i) * mean_{b,c,x}(w * |pred_i - label|), the mean over all pixels.

    mask_mode 'per_sample' (RAFT's loss, the default): w = valid_b(x) & |label_b(x)| < max_flow.
    'batch_mean' reproduces the reference refinement code, whose broadcast weights every sample's
    pixel by the batch mean of that mask at the same location (docs/method.md, "Training").
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


# ------------------------------------------------------------------------- training objectives

def unroll(tc) -> int:
    """Unroll the iterations when training on CPU (conv weight gradients inside an XLA:CPU loop
    are ~20x slower); keep the loop on accelerators, where compile time matters more. The target
    is the platform being compiled for (lookup.compiling_for), not only this host's."""
    return tc.iters if lookup.target_platform() == "cpu" else 1


def flow_objective(model_cfg, tc, freeze_bn: bool):
    """RAFT's training objective: `loss(params, batch_stats, batch) -> (value, (metrics, batch_stats))`
    on a batch of pairs with flow labels: the sequence loss over every iteration's upsampled flow."""
    model = build_model(model_cfg, use_running_average=freeze_bn, unroll=unroll(tc))

    def loss(params, batch_stats, batch):
        frames = batch["frames"].astype(jnp.float32)
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        mutable = False if (freeze_bn or not batch_stats) else ["batch_stats"]
        out = model.apply(variables, frames[:, 0], frames[:, 1], iters=tc.iters, all_flow_up=True,
                          mutable=mutable)
        out, upd = out if mutable else (out, {})
        value = raft_sequence_loss(out["flow_up_iters"], batch["flow"][:, 0], batch["flow_valid"][:, 0],
                                          tc.gamma, tc.max_flow, tc.mask_mode)
        epe = jnp.linalg.norm(out["flow_up"] - batch["flow"][:, 0], axis=-1)
        v = batch["flow_valid"][:, 0]
        metrics = {"loss": value, "epe": jnp.sum(epe * v) / jnp.maximum(jnp.sum(v), 1)}
        return value, (metrics, upd.get("batch_stats", batch_stats))
    return loss


def track_objective(model_cfg, tc, freeze_bn: bool = False):
    """PIPs' training objective, as `flow_objective`, on clips with track labels: the sequence
    loss, plus the score-map and visibility losses when `train` asks for them."""
    del freeze_bn  # PIPs has no batch norm
    model = build_model(model_cfg, unroll=unroll(tc))

    def loss(params, batch_stats, batch):
        tracks = jnp.swapaxes(batch["tracks"], 1, 2)               # (B, S, N, 2)
        visible = jnp.swapaxes(batch["visible"], 1, 2)
        valid = jnp.broadcast_to(batch["track_valid"][:, None, :], visible.shape)
        out = model.apply({"params": params}, tracks[:, 0], batch["frames"].astype(jnp.float32),
                          iters=tc.iters, with_score_maps=tc.score_map_loss)
        value = pips_sequence_loss(out["coords_iters"], tracks, valid, tc.gamma)
        if tc.score_map_loss:
            value = value + score_map_loss(out["score_maps"], tracks, visible, valid, model_cfg.stride)
        if tc.vis_loss:
            value = value + visibility_loss(out["vis_logits"], visible, valid)
        err = jnp.linalg.norm(out["coords"] - tracks, axis=-1)
        metrics = {"loss": value, "track_error": masked_mean(err, valid)}
        return value, (metrics, batch_stats)
    return loss
