"""Label-free proxies of flow accuracy: numbers a user's footage gives without ground truth.

Per clip, for one model (each a mean over the clip; docs/verdict.md says how well each predicts
the ground-truth change):
  kw_epe     known-warp EPE (px, lower better): a pair made from the clip's middle frame with an
             exact flow (evaluation/known_warp.py), so it has the footage's appearance
  fb_auc     area under the forward-backward error's CDF over [0, FB_MAX] px, as a share (higher
             better): 1 when every pixel returns exactly, 0 when none comes within FB_MAX
  fb_1px     the share of pixels whose forward-backward error is under 1 px (higher better)
  chain_err  chain consistency (px, lower better): |f(t, t+2) - (f(t, t+1) + f(t+1, t+2) sampled at
             x + f(t, t+1))| over the pixels whose chain stays in the frame; NaN for 2-frame clips.
             Zero flow is perfectly chain-consistent: read it beside the model's motion.
  chain_rel  the same error over the summed |f(t, t+2)| of those pixels (a share, lower better): a
             model that shrinks its motion does not lower it by shrinking alone
  flow_mag   the mean estimated flow magnitude (px): the scale the others are read against
Per procedural source clip (source drift: did refinement damage what the model knew):
  source_epe EPE (px, lower better) on SOURCE_CLIPS two-frame videos of the procedural source
             domain, rendered at the evaluation's frame size with fixed seeds
"""
from __future__ import annotations

import functools
from typing import Dict, List, Tuple

import numpy as np

from refine_jax.evaluation import known_warp

FB_MAX = 3.0  # px
SOURCE_SEED = 424242  # the drift clips' dataset seed: none of the demo's sets uses it
# the direction of each proxy, flow's and tracks' (True: lower is better; None: a scale, no
# direction), with the evaluation's older label-free diagnostics (evaluation/flow.py) beside them
LOWER_IS_BETTER = {"kw_epe": True, "fb_auc": False, "fb_1px": False, "chain_err": True, "chain_rel": True,
                   "source_epe": True,
                   "flow_mag": None, "cycle_pass": False, "photometric_error": True,
                   # tracks (evaluation/track_proxies.py)
                   "kw_track_err": True, "requery_err": True, "requery_rel": True, "source_ate": True,
                   "track_mag": None}


def fb_scores(fb: np.ndarray) -> Dict[str, float]:
    """fb_auc and fb_1px of forward-backward errors (any shape, px)."""
    e = np.asarray(fb, np.float64).ravel()
    return {"fb_auc": float(np.mean(1.0 - np.minimum(e, FB_MAX) / FB_MAX)), "fb_1px": float(np.mean(e < 1.0))}


def chain_error(f12: np.ndarray, f23: np.ndarray, f13: np.ndarray) -> Tuple[float, int, float]:
    """(sum of |f13 - (f12 + f23(x + f12))| px, pixel count, sum of |f13| px) over the pixels whose
    chain stays in the frame; flows (H, W, 2)."""
    h, w = f12.shape[:2]
    end = known_warp.pixel_grid(h, w) + f12
    f23_at = known_warp.sample(f23.astype(np.float64), end)
    inside = known_warp.inside_frame(end, h, w)
    err = np.linalg.norm(f13 - (f12 + f23_at), axis=-1)
    return float(err[inside].sum()), int(inside.sum()), float(np.linalg.norm(f13, axis=-1)[inside].sum())


def proxy_pairs(clip):
    """The pairs one clip's proxies need, to run in one call (one compiled batch size):
    (first, second (P, H, W, 3) uint8, known-warp (flow, valid)): the T-1 consecutive pairs, then
    the T-2 pairs (t, t+2), then the known-warp pair made from the middle frame."""
    frames = clip.frames
    t = len(frames)
    im1, im2, gt, valid = known_warp.make_pair(frames[t // 2], known_warp.clip_seed(clip.video_id, clip.clip_start))
    first = np.concatenate([frames[:-1], frames[:-2], im1[None]])
    second = np.concatenate([frames[1:], frames[2:], im2[None]])
    return first, second, (gt, valid)


def clip_row(fw: np.ndarray, fb: np.ndarray, known, frames: int) -> Dict[str, float]:
    """The proxies of one clip of `frames` frames from the model's outputs on `proxy_pairs`:
    flows `fw` (P, H, W, 2) and forward-backward errors `fb` (P, H, W) px."""
    t = frames
    step, chain, kw = fw[:t - 1], fw[t - 1:2 * t - 3], fw[2 * t - 3]
    row = {**fb_scores(fb[:t - 1]), "flow_mag": float(np.linalg.norm(step, axis=-1).mean())}
    gt, valid = known
    row["kw_epe"] = float(np.linalg.norm(kw - gt, axis=-1)[valid].mean()) if valid.any() else float("nan")
    if len(chain):
        sums = np.array([chain_error(step[k], step[k + 1], chain[k]) for k in range(len(chain))]).sum(0)
        row["chain_err"] = sums[0] / sums[1] if sums[1] else float("nan")
        row["chain_rel"] = sums[0] / sums[2] if sums[2] else float("nan")
    else:
        row["chain_err"] = row["chain_rel"] = float("nan")
    return row


@functools.lru_cache(maxsize=4)
def source_clips(h: int, w: int, n: int) -> tuple:
    """`n` two-frame procedural source-domain clips of (h, w) with exact flow (fixed seeds)."""
    from refine_jax.demo import synthetic
    dom = synthetic.domain("source")
    return tuple(synthetic.render_video(dom, synthetic.video_seed(SOURCE_SEED, i), 2, h, w) for i in range(n))


def source_rows(labeler, h: int, w: int, n: int, batch: int) -> List[Dict[str, float]]:
    """source_epe of each of the `n` source clips (EPE over the pixels with known flow), run in
    batches of `batch` (the evaluation's, so that nothing compiles again)."""
    clips = source_clips(h, w, n)
    est = labeler.pairs(np.stack([c.frames[0] for c in clips]), np.stack([c.frames[1] for c in clips]),
                        "procedural source frames", batch=batch)[0]
    return [{"source_epe": float(np.linalg.norm(e - c.flow[0], axis=-1)[c.flow_valid[0]].mean())}
            for e, c in zip(est, clips)]


def means(rows: List[Dict[str, float]]) -> Dict[str, float]:
    """The mean of each proxy over the rows (clips), NaN rows left out."""
    keys = rows[0].keys() if rows else ()
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows], np.float64)
        v = v[np.isfinite(v)]
        out[k] = float(v.mean()) if v.size else float("nan")
    return out
