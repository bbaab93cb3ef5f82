"""Cycle-consistency checks that decide which estimates become pseudo-labels (pure functions).

Flow (docs/method.md, "Flow labels"): a pixel x of frame t keeps its forward flow f when
  |f(x) + b(x + f(x))| <= alpha * (|f(x)| + |b(x)|) + beta       (Euclidean norms, not squared;
                                                                  b sampled bilinearly with zero
                                                                  padding, |b| taken at x itself)
  mean_c |I_{t+1}(x + f(x)) - I_t(x)| < color_thresh            (images on the [-0.5, 0.5] scale,
                                                                  a correct warp)
  |f(x)| < max_flow.
Two options adapt the colour test to real cameras (both off in the reference):
  color_noise  the threshold becomes max(color_thresh, the difference two correct matches show
               under the sensor noise measured in the pair; `noise_color_threshold`)
  color_gain   I_{t+1} is first scaled per channel by the ratio of the two images' means over the
               pixels that pass the forward-backward test (auto-exposure and lighting drift)
Tracks (docs/method.md, "Track labels"): a track is kept when the backward track (run from the forward end point on the
time-reversed clip, flipped back) stays within tau px of the forward one at every frame.

Shapes: flows (B, H, W, 2) px; images (B, H, W, 3) in [0, 255]; tracks (B, S, N, 2) px.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from refine_jax.models import corr as corr_lib


@dataclasses.dataclass(frozen=True)
class FlowCheck:
    alpha: float = 0.002
    beta: float = 0.1
    color_thresh: float = 0.005
    max_flow: float = 400.0
    color_noise: bool = False
    color_gain: bool = False


# Immerkaer's noise estimator: this kernel cancels locally planar signal and keeps white noise,
# with sum(k^2) = 36, so sigma = sqrt(pi / 2) / 6 * mean |I * k| for Gaussian noise.
_NOISE_KERNEL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], np.float32)


def noise_sigma(image):
    """Sensor noise sigma of each image (B, H, W, 3) in grey levels (Immerkaer 1996, over the
    channels): (B,). Texture adds to it, so it errs on the side of a looser colour test."""
    x = jnp.moveaxis(image.astype(jnp.float32), -1, 1)                     # (B, 3, H, W)
    b, c, h, w = x.shape
    r = jax.lax.conv_general_dilated(x.reshape(b * c, 1, h, w), jnp.asarray(_NOISE_KERNEL)[None, None],
                                     (1, 1), "VALID", precision=jax.lax.Precision.HIGHEST)
    return jnp.sqrt(jnp.pi / 2) / 6.0 * jnp.abs(r).reshape(b, -1).mean(-1)


def noise_color_threshold(sigma):
    """The colour threshold (on the [-0.5, 0.5] scale) that two correct matches pass under
    independent Gaussian noise of `sigma` grey levels in each image: a channel difference is
    N(0, 2 sigma^2), its absolute value has mean 2 sigma / sqrt(pi) = 1.128 sigma and std
    0.853 sigma, the mean over 3 channels has std 0.492 sigma; mean + 2.5 std = 2.36 sigma."""
    return (2.0 / np.sqrt(np.pi) + 2.5 * np.sqrt(2.0 * (1.0 - 2.0 / np.pi) / 3.0)) * sigma / 255.0


def _grid(h: int, w: int):
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    return jnp.stack([xs, ys], -1)


def warp(image, flow):
    """Sample image (B, H, W, C) at x + flow(x) (B, H, W, 2), bilinear, zero outside."""
    grid = _grid(*flow.shape[1:3])
    return jax.vmap(corr_lib.sample_zeros)(image, grid + flow)


def flow_cycle_check(flow_fw, flow_bw, image1, image2, check: FlowCheck = FlowCheck()):
    """Returns (valid (B,H,W) bool, cycle_error (B,H,W) float, color_error (B,H,W) float).

    cycle_error is |f + b_w| / (alpha (|f| + |b|) + beta): <= 1 passes, so it doubles as a per-pixel
    confidence (lower is more confident). color_error is the mean absolute difference on [-0.5, 0.5].
    """
    b_w = warp(flow_bw, flow_fw)
    norm = lambda v: jnp.sqrt(jnp.sum(jnp.square(v), -1))
    diff = norm(flow_fw + b_w)
    thr = check.alpha * (norm(flow_fw) + norm(flow_bw)) + check.beta
    cycle_error = diff / thr
    i1 = image1.astype(jnp.float32) / 255.0 - 0.5
    w2 = warp(image2.astype(jnp.float32) / 255.0 - 0.5, flow_fw)  # zero padding = mid-grey outside
    consistent = (diff <= thr) & (norm(flow_fw) < check.max_flow)
    if check.color_gain:  # per-channel gain of image 1 over warped image 2 where the match is trusted
        m = (consistent & _inside(flow_fw))[..., None]
        gain = (jnp.sum((i1 + 0.5) * m, (1, 2)) + 1e-3) / (jnp.sum((w2 + 0.5) * m, (1, 2)) + 1e-3)
        w2 = (w2 + 0.5) * gain[:, None, None, :] - 0.5
    color_error = jnp.mean(jnp.abs(w2 - i1), -1)
    color_thresh = jnp.float32(check.color_thresh)
    if check.color_noise:
        sigma = jnp.maximum(noise_sigma(image1), noise_sigma(image2))
        color_thresh = jnp.maximum(color_thresh, noise_color_threshold(sigma))[:, None, None]
    valid = consistent & (color_error < color_thresh)
    return valid, cycle_error, color_error


def _inside(flow):
    """(B, H, W) whether x + flow(x) lies inside the image."""
    h, w = flow.shape[1:3]
    p = _grid(h, w) + flow
    return (p[..., 0] >= 0) & (p[..., 0] <= w - 1) & (p[..., 1] >= 0) & (p[..., 1] <= h - 1)


def track_cycle_check(fwd, bwd, tau: float):
    """fwd, bwd (B, S, N, 2) px, bwd already flipped back to forward time. Returns
    (keep (B, N) bool: |fwd - bwd| < tau at every frame, max_error (B, N) px)."""
    err = jnp.sqrt(jnp.sum(jnp.square(fwd - bwd), -1))  # (B, S, N)
    max_err = err.max(axis=1)
    return max_err < tau, max_err


# ------------------------------------------------------------------------------------------------
# Query selection and re-balancing (numpy; they run on the host between model calls).

def grid_points(h: int, w: int, n: int, margin: float = 8.0) -> np.ndarray:
    """(n*n, 2) integer-valued (x, y) points on a regular grid, `margin` px from the border."""
    xs = np.round(np.linspace(margin, w - 1 - margin, n))
    ys = np.round(np.linspace(margin, h - 1 - margin, n))
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.unique(np.stack([gx.ravel(), gy.ravel()], -1), axis=0).astype(np.float32)


def densify(points: np.ndarray, window: int, h: int, w: int) -> np.ndarray:
    """Integer queries in a window x window square around each point (x in [floor(x0) - window/2,
    floor(x0) + window/2 - 1], likewise y), deduplicated and clipped to the image (docs/method.md, "Track labels")."""
    half = window // 2
    offs = np.arange(-half, window - half)
    out = []
    for x0, y0 in np.floor(np.asarray(points, np.float64)):
        gy, gx = np.meshgrid(y0 + offs, x0 + offs, indexing="ij")
        out.append(np.stack([gx.ravel(), gy.ravel()], -1))
    if not out:
        return np.zeros((0, 2), np.float32)
    q = np.unique(np.concatenate(out), axis=0)
    inside = (q[:, 0] >= 0) & (q[:, 0] <= w - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h - 1)
    return q[inside].astype(np.float32)


def mean_speed(tracks: np.ndarray) -> np.ndarray:
    """(N, S, 2) -> (N,) mean displacement per step, px/frame."""
    return np.linalg.norm(np.diff(tracks, axis=1), axis=-1).mean(axis=1)


def rebalance(tracks: np.ndarray, bins: Sequence[float], cap_per_bin: int, min_speed: float,
              rng: np.random.Generator) -> np.ndarray:
    """Indices of kept tracks after dropping slow ones (mean speed < min_speed) and keeping at most
    `cap_per_bin` per speed bin (edges `bins`, px/frame; the last bin is open), chosen at random."""
    speed = mean_speed(tracks)
    keep = np.nonzero(speed >= min_speed)[0]
    which = np.digitize(speed[keep], bins)
    out = []
    for b in np.unique(which):
        ids = keep[which == b]
        if cap_per_bin and len(ids) > cap_per_bin:
            ids = rng.choice(ids, cap_per_bin, replace=False)
        out.append(np.sort(ids))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def speed_histogram(tracks: np.ndarray, bins: Sequence[float]) -> Dict[str, int]:
    """Track counts per speed bin, keyed '[lo,hi)'."""
    speed = mean_speed(tracks)
    edges = [0.0, *bins, np.inf]
    return {f"[{lo:g},{hi:g})": int(((speed >= lo) & (speed < hi)).sum())
            for lo, hi in zip(edges[:-1], edges[1:])}
