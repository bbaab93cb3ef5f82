"""Label-free proxies of flow accuracy: numbers a user's footage gives without ground truth.

Per clip, for one model (each a mean over the clip; docs/verdict.md says how well each predicts
the ground-truth change):
  kw_epe     known-warp EPE (px, lower better): a pair made from the clip's middle frame with an
             exact flow (evaluation/known_warp.py), so it has the footage's appearance
  fb_auc     area under the forward-backward error's CDF over [0, FB_MAX] px, as a share (higher
             better): 1 when every pixel returns exactly, 0 when none comes within FB_MAX
  fb_1px     the share of pixels whose forward-backward error is under 1 px (higher better)
  fb_atc     the share of pixels whose forward-backward error is under the model's own threshold,
             calibrated on the procedural source clips so that there it equals the share within
             ATC_EPE px of the true flow (average thresholded confidence, Garg et al., ICLR 2022):
             an estimate of the footage's 1 px accuracy (higher better); NaN without source clips
  fb_auc@[lo,hi)  fb_auc over the pixels whose estimated flow is lo-hi px long (speed.SPEED_BINS;
             a pixel's bin follows the model being measured); NaN where a clip has none
  chain_err  chain consistency (px, lower better): |f(t, t+2) - (f(t, t+1) + f(t+1, t+2) sampled at
             x + f(t, t+1))| over the pixels whose chain stays in the frame; NaN for 2-frame clips.
             Zero flow is perfectly chain-consistent: read it beside the model's motion.
  chain_rel  the same error over the summed |f(t, t+2)| of those pixels (a share, lower better): a
             model that shrinks its motion does not lower it by shrinking alone
  flow_mag   the mean estimated flow magnitude (px): the scale the others are read against
  census_err a control: the soft census distance (7 x 7 ternary codes, as UnFlow's and SMURF's
             losses) between frame t and frame t+1 warped back by the estimated flow, both blurred
             alike (CENSUS_BLUR), a share in [0, 1) (lower better), over a fixed mask: the pixels of
             frame t whose blurred grey gradient is at least TEXTURE grey levels per px,
             CENSUS_RADIUS px from the edge. The mask comes from the frame alone, so every model is
             scored on the same pixels (the cycle check's photometric_error is not: its mask is each
             model's own). Occluded pixels stay in: no test of visibility is free of a model.
Per procedural source clip (source drift: did refinement damage what the model knew):
  source_epe EPE (px, lower better) on SOURCE_CLIPS two-frame videos of the procedural source
             domain, rendered at the evaluation's frame size with fixed seeds
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from refine_jax import speed
from refine_jax.evaluation import known_warp

FB_MAX = 3.0  # px
ATC_EPE = 1.0  # px: fb_atc estimates the share of pixels within this end-point error
CENSUS_RADIUS = 3  # px: 7 x 7 census windows
# px: the Gaussian blur of both grey frames before census_err compares them; unblurred, sensor noise
# of a few grey levels flips the ternary codes (measured on the demo's noisy target: the true flow
# scored no better than zero flow), and the bilinear warp smooths one frame only
CENSUS_BLUR = 1.5
TEXTURE = 2.0  # grey levels per px: the central-difference gradient of a pixel census_err reads
FB_BIN_KEYS = tuple(f"fb_auc@{b}" for b in speed.bin_names())
# the per-clip proxies (evaluate's rows), and the keys its multi-process gather fills
ROW_KEYS = ("fb_auc", "fb_1px", "fb_atc", *FB_BIN_KEYS, "flow_mag", "kw_epe", "chain_err", "chain_rel",
            "census_err")
SOURCE_SEED = 424242  # the drift clips' dataset seed: none of the demo's sets uses it
# the direction of each proxy, flow's and tracks' (True: lower is better; None: a scale, no
# direction), with the evaluation's older label-free diagnostics (evaluation/flow.py) beside them
LOWER_IS_BETTER = {"kw_epe": True, "fb_auc": False, "fb_1px": False, "fb_atc": False, "chain_err": True,
                   "chain_rel": True, "census_err": True, "source_epe": True,
                   "flow_mag": None, "cycle_pass": False, "photometric_error": True,
                   # tracks (evaluation/track_proxies.py)
                   "kw_track_err": True, "requery_err": True, "requery_rel": True, "source_ate": True,
                   "track_mag": None}


def direction(name: str) -> Optional[bool]:
    """LOWER_IS_BETTER of a proxy, per speed bin too ('fb_auc@[1,4)' is fb_auc's); None: no direction."""
    return LOWER_IS_BETTER.get(name.split("@")[0])


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


def fb_by_speed(fb: np.ndarray, flow: np.ndarray) -> Dict[str, float]:
    """fb_auc per speed bin of the estimated flow: forward-backward errors `fb` (..., H, W) px of
    flows `flow` (..., H, W, 2) px; NaN for a bin without pixels."""
    bins = speed.bin_of(np.linalg.norm(flow, axis=-1))
    return {key: fb_scores(fb[bins == k])["fb_auc"] if (bins == k).any() else float("nan")
            for k, key in enumerate(FB_BIN_KEYS)}


def atc_threshold(fb: np.ndarray, epe: np.ndarray) -> float:
    """The forward-backward error (px) under which the share of pixels equals the share whose
    end-point error `epe` is under ATC_EPE (the same pixels; source clips with exact flow)."""
    share = float(np.mean(np.asarray(epe) < ATC_EPE))
    return float("inf") if share >= 1.0 else float(np.quantile(np.asarray(fb, np.float64), share))


def grey(frames: np.ndarray) -> np.ndarray:
    """(..., H, W) float32 grey levels (0-255, ITU-R 601 luma) of RGB frames (..., H, W, 3)."""
    return frames[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def census_distance(g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """(H, W) the soft census distance in [0, 1) of two grey images (H, W): per neighbour of a
    7 x 7 window, each image's difference d from its centre coded as d / sqrt(0.81 + d^2), and
    the codes' squared difference e as e / (0.1 + e), averaged over the 48 neighbours (the
    images' edge values extend them)."""
    r = CENSUS_RADIUS
    h, w = g1.shape
    p1, p2 = (np.pad(g.astype(np.float32), r, mode="edge") for g in (g1, g2))
    total = np.zeros((h, w), np.float32)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy or dx:
                d1 = p1[r + dy:r + dy + h, r + dx:r + dx + w] - g1
                d2 = p2[r + dy:r + dy + h, r + dx:r + dx + w] - g2
                e = (d1 / np.sqrt(0.81 + d1 * d1) - d2 / np.sqrt(0.81 + d2 * d2)) ** 2
                total += e / (0.1 + e)
    return total / ((2 * r + 1) ** 2 - 1)


def census_mask(g: np.ndarray) -> np.ndarray:
    """(H, W) the textured pixels of a grey image (H, W) at least CENSUS_RADIUS px from its edge."""
    gy, gx = np.gradient(g.astype(np.float32))
    m = np.hypot(gx, gy) >= TEXTURE
    r = CENSUS_RADIUS
    m[:r], m[-r:], m[:, :r], m[:, -r:] = False, False, False, False
    return m


def census_error(frame1: np.ndarray, frame2: np.ndarray, flow: np.ndarray) -> Tuple[float, int]:
    """(sum of the soft census distance, pixel count) over census_mask of frame1: frames (H, W, 3)
    uint8, both blurred by CENSUS_BLUR px; flow (H, W, 2) px from frame1 to frame2, frame2 sampled
    back bilinearly along it."""
    g1, g2 = (ndimage.gaussian_filter(grey(f), CENSUS_BLUR) for f in (frame1, frame2))
    h, w = g1.shape
    back = known_warp.sample(g2[..., None].astype(np.float64), known_warp.pixel_grid(h, w) + flow)[..., 0]
    dist = census_distance(g1, back.astype(np.float32))
    m = census_mask(g1)
    return float(dist[m].sum()), int(m.sum())


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


def clip_row(fw: np.ndarray, fb: np.ndarray, known, frames: np.ndarray,
             fb_threshold: Optional[float] = None) -> Dict[str, float]:
    """The proxies (ROW_KEYS) of one clip's `frames` (T, H, W, 3) uint8 from the model's outputs on
    `proxy_pairs`: flows `fw` (P, H, W, 2) and forward-backward errors `fb` (P, H, W) px;
    `fb_threshold` (px): the model's atc_threshold, None when it has none (fb_atc NaN)."""
    t = len(frames)
    step, chain, kw = fw[:t - 1], fw[t - 1:2 * t - 3], fw[2 * t - 3]
    row = {**fb_scores(fb[:t - 1]), **fb_by_speed(fb[:t - 1], step),
           "fb_atc": float(np.mean(fb[:t - 1] < fb_threshold)) if fb_threshold is not None else float("nan"),
           "flow_mag": float(np.linalg.norm(step, axis=-1).mean())}
    gt, valid = known
    row["kw_epe"] = float(np.linalg.norm(kw - gt, axis=-1)[valid].mean()) if valid.any() else float("nan")
    if len(chain):
        sums = np.array([chain_error(step[k], step[k + 1], chain[k]) for k in range(len(chain))]).sum(0)
        row["chain_err"] = sums[0] / sums[1] if sums[1] else float("nan")
        row["chain_rel"] = sums[0] / sums[2] if sums[2] else float("nan")
    else:
        row["chain_err"] = row["chain_rel"] = float("nan")
    census_sum, census_n = np.array([census_error(frames[k], frames[k + 1], step[k]) for k in range(t - 1)]).sum(0)
    row["census_err"] = float(census_sum / census_n) if census_n else float("nan")
    return row


@functools.lru_cache(maxsize=4)
def source_clips(h: int, w: int, n: int) -> tuple:
    """`n` two-frame procedural source-domain clips of (h, w) with exact flow (fixed seeds)."""
    from refine_jax.demo import synthetic
    dom = synthetic.domain("source")
    return tuple(synthetic.render_video(dom, synthetic.video_seed(SOURCE_SEED, i), 2, h, w) for i in range(n))


def source_rows(labeler, h: int, w: int, n: int, batch: int) -> Tuple[List[Dict[str, float]], Optional[float]]:
    """(source_epe of each of the `n` source clips (EPE over the pixels with known flow), the
    model's atc_threshold on those pixels (None when none)), run in batches of `batch` (the
    evaluation's, so that nothing compiles again)."""
    clips = source_clips(h, w, n)
    est, _, _, fb = labeler.pairs(np.stack([c.frames[0] for c in clips]), np.stack([c.frames[1] for c in clips]),
                                  "procedural source frames", batch=batch)
    epe = [np.linalg.norm(e - c.flow[0], axis=-1)[c.flow_valid[0]] for e, c in zip(est, clips)]
    known = [f[c.flow_valid[0]] for f, c in zip(fb, clips)]
    threshold = atc_threshold(np.concatenate(known), np.concatenate(epe)) if sum(map(len, epe)) else None
    return [{"source_epe": float(e.mean()) if e.size else float("nan")} for e in epe], threshold


def pair_count(frames: int) -> int:
    """How many pairs `proxy_pairs` makes of a clip of `frames` frames."""
    return 2 * frames - 2


def means(rows: List[Dict[str, float]]) -> Dict[str, float]:
    """The mean of each proxy over the rows (clips), NaN rows left out."""
    keys = rows[0].keys() if rows else ()
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows], np.float64)
        v = v[np.isfinite(v)]
        out[k] = float(v.mean()) if v.size else float("nan")
    return out
