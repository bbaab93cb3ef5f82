"""Label-free proxies of tracking accuracy: the track equivalents of evaluation/proxies.py.

Per clip, for one model (grid queries, so any footage has them):
  fb_auc, fb_1px  the forward-backward track error (the labelling check's: the largest distance,
                  over a window's frames, between the forward track and the time-reversed track
                  started from its end) as for flow: the area under its CDF over [0, FB_MAX] px
                  and the share under 1 px (higher better)
  kw_track_err    known-warp track error (px, lower better): a clip of the model's window length
                  made from the clip's middle frame with exact tracks (known_warp.make_clip, TRACK_WARP);
                  the mean distance to the truth over the frames after the query where it is visible
  requery_err     re-query consistency (px, lower better): each grid track of the clip's first
                  window, queried again at the window's middle frame from where the model put it,
                  against the first track over the other frames (where it is predicted visible)
  requery_rel     the same over the first track's distance from its middle-frame point (a share,
                  lower better): points held still are perfectly consistent, and do not score by it
  track_mag       the mean distance a grid track moves per frame (px): the scale to read them by
Per procedural source clip (source drift):
  source_ate      mean track error (px, lower better) of SOURCE_TRACKS ground-truth tracks on
                  procedural source-domain clips rendered at the evaluation's frame size
"""
from __future__ import annotations

import functools
from typing import Dict, List

import numpy as np

from refine_jax.evaluation import known_warp
from refine_jax.evaluation.proxies import SOURCE_SEED, fb_scores
from refine_jax.labels import cycle

GRID = 12            # grid queries per side on the known-warp clip
# the known-warp clip's range: the pair's warp doubled (and the cut-out's 8-32 px), so that over a
# window of 8 frames the points move about 0.5-2 px per frame (10th-90th percentile on a 256x256
# target frame; the cut-out faster)
TRACK_WARP = known_warp.WarpRange(shift=12.0, rotate=6.0, scale=0.06, perspective=4e-5, field=3.0,
                                  layer_motion=(8.0, 32.0))
SOURCE_TRACKS = 64   # ground-truth tracks per source clip

ROW_KEYS = ("fb_auc", "fb_1px", "kw_track_err", "requery_err", "requery_rel", "track_mag")


def _mean_error(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean distance (px) between tracks (N, T, 2) over the mask (N, T); NaN where it is empty."""
    err = np.linalg.norm(pred - truth, axis=-1)[mask]
    return float(err.mean()) if err.size else float("nan")


def known_warp_error(tracker, clip, num_frames: int) -> float:
    """kw_track_err of one clip: grid queries on frame 0 of the clip's known-warp clip."""
    frame = clip.frames[len(clip.frames) // 2]
    h, w = frame.shape[:2]
    pts = cycle.grid_points(h, w, GRID)
    frames, truth, visible = known_warp.make_clip(frame, known_warp.clip_seed(clip.video_id, clip.clip_start),
                                                  num_frames, pts, TRACK_WARP)
    pred = tracker(frames, np.concatenate([np.zeros((len(pts), 1), np.float32), pts], -1))["tracks"]
    later = visible.copy()
    later[:, 0] = False  # the query frame is given
    return _mean_error(pred, truth, later)


def requery_errors(tracker, frames: np.ndarray, tracks: np.ndarray, visible: np.ndarray) -> Dict[str, float]:
    """requery_err, requery_rel and track_mag of one window: `frames` (S, H, W, 3), the model's
    `tracks` (N, S, 2) px from queries at frame 0 and their predicted `visible` (N, S)."""
    t_len, h, w = frames.shape[:3]
    mag = float(np.linalg.norm(np.diff(tracks, axis=1), axis=-1).mean()) if t_len > 1 else float("nan")
    k = t_len // 2
    mid = tracks[:, k]
    ok = visible[:, k] & known_warp.inside_frame(mid, h, w)
    if not ok.any() or t_len < 2:
        return {"requery_err": float("nan"), "requery_rel": float("nan"), "track_mag": mag}
    again = tracker(frames, np.concatenate([np.full((int(ok.sum()), 1), k, np.float32), mid[ok]], -1))["tracks"]
    mask = visible[ok].copy()
    mask[:, k] = False
    err = np.linalg.norm(again - tracks[ok], axis=-1)[mask]
    moved = np.linalg.norm(tracks[ok] - mid[ok][:, None], axis=-1)[mask]
    return {"requery_err": float(err.mean()) if err.size else float("nan"),
            "requery_rel": float(err.sum() / moved.sum()) if moved.sum() > 0 else float("nan"),
            "track_mag": mag}


def clip_row(tracker, windows, clip, num_frames: int) -> Dict[str, float]:
    """The proxies of one clip from `windows`, the labelling check's output on the clip's grid
    queries (TrackLabeler.estimate; evaluation/tracks.py runs that check anyway): every window's
    forward-backward errors, and the first window's tracks for the re-query; `num_frames` is the
    known-warp clip's length (the model's window)."""
    fb = np.concatenate([w[5] for w in windows]) if windows else np.zeros(0)
    row = {**fb_scores(fb), "kw_track_err": known_warp_error(tracker, clip, num_frames)}
    if windows:
        st, tracks, _, visible = windows[0][:4]
        row.update(requery_errors(tracker, clip.frames[st:st + tracks.shape[1]], tracks, visible))
    else:  # a clip shorter than the model's window
        row.update({"requery_err": float("nan"), "requery_rel": float("nan"), "track_mag": float("nan")})
    return row


@functools.lru_cache(maxsize=4)
def source_clips(h: int, w: int, n: int, num_frames: int) -> tuple:
    """`n` procedural source-domain clips of (num_frames, h, w) with SOURCE_TRACKS exact tracks."""
    from refine_jax.demo import synthetic
    dom = synthetic.domain("source")
    return tuple(synthetic.render_video(dom, synthetic.video_seed(SOURCE_SEED, i), num_frames, h, w,
                                        num_tracks=SOURCE_TRACKS) for i in range(n))


def source_rows(tracker, h: int, w: int, n: int, num_frames: int) -> List[Dict[str, float]]:
    """source_ate of each of `n` source clips: the mean error of the tracks from their frame-0
    queries over the later frames where the truth is visible."""
    rows = []
    for c in source_clips(h, w, n, num_frames):
        pred = tracker(c.frames, c.query_points)["tracks"]
        later = c.visible.copy()
        later[:, 0] = False
        rows.append({"source_ate": _mean_error(pred, c.tracks, later)})
    return rows
