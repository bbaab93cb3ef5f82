"""Motion metrics (numpy). Coordinates are (x, y) pixels; tracks (N, T, 2), occlusion / visibility
(N, T) bool, queries (N, 3) rows (t, x, y). Each function states the resolution it works at.

- TAP-Vid (the tapnet definitions): evaluation points are all frames but the query frame
  ('strided'), or additionally only frames after the query ('first'); occlusion accuracy; delta^x
  = fraction of visible evaluation points within x px for x in 1, 2, 4, 8, 16 and their mean
  delta_avg; Jaccard^x = TP / (GT visible + FP) and their mean AJ. Thresholds are in pixels of the
  resolution the tracks are given at; TAP-Vid reports them at 256x256 (`rescale_tracks`).
- ATE / MTE: per-track mean L2 error over frames (the query frame excluded unless asked), then the
  mean (ATE) and median (MTE) over tracks.
- Survival: per track, the fraction of frames after the query before the error first exceeds a
  threshold (50 px at 256x256 in PIPs); the mean over tracks.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

THRESHOLDS = (1, 2, 4, 8, 16)


def rescale_tracks(tracks: np.ndarray, hw: Sequence[int], to_hw: Sequence[int] = (256, 256)) -> np.ndarray:
    """Scale (…, 2) pixel coordinates from an (H, W) frame to `to_hw` (TAP-Vid's 256x256)."""
    return np.asarray(tracks) * np.array([to_hw[1] / hw[1], to_hw[0] / hw[0]])


def evaluation_points(queries: np.ndarray, num_frames: int, query_mode: str) -> np.ndarray:
    """(N, T) frames that count: not the query frame; in 'first' mode also none before it."""
    t_q = np.round(queries[:, 0]).astype(int)
    frames = np.arange(num_frames)[None]
    if query_mode == "strided":
        return frames != t_q[:, None]
    if query_mode == "first":
        return frames > t_q[:, None]
    raise ValueError(f"query_mode must be 'first' or 'strided', got {query_mode!r}")


def tapvid_metrics(queries, gt_tracks, gt_occluded, pred_tracks, pred_occluded,
                   query_mode: str = "strided", thresholds: Sequence[float] = THRESHOLDS) -> Dict[str, float]:
    """TAP-Vid metrics of one video (or any set of tracks)."""
    gt_occ = np.asarray(gt_occluded, bool)
    pred_occ = np.asarray(pred_occluded, bool)
    ev = evaluation_points(np.asarray(queries), gt_occ.shape[1], query_mode)
    vis, pred_vis = ~gt_occ, ~pred_occ
    out = {"occlusion_accuracy": float(((pred_occ == gt_occ) & ev).sum() / max(ev.sum(), 1))}
    d2 = np.sum(np.square(np.asarray(pred_tracks, np.float64) - gt_tracks), -1)
    deltas, jacs = [], []
    for x in thresholds:
        within = d2 < x * x
        correct = within & vis
        deltas.append((correct & ev).sum() / max((vis & ev).sum(), 1))
        tp = (correct & pred_vis & ev).sum()
        fp = ((pred_vis & ~vis) | (pred_vis & vis & ~within)) & ev
        jacs.append(tp / max((vis & ev).sum() + fp.sum(), 1))
        out[f"delta_{x:g}"] = float(deltas[-1])
        out[f"jaccard_{x:g}"] = float(jacs[-1])
    out["delta_avg"] = float(np.mean(deltas))
    out["average_jaccard"] = float(np.mean(jacs))
    return out


def trajectory_errors(gt_tracks, pred_tracks, queries=None, visible=None,
                      include_query_frame: bool = False) -> np.ndarray:
    """(N,) per-track mean L2 error over the counted frames (visible ones if `visible` is given)."""
    err = np.linalg.norm(np.asarray(pred_tracks, np.float64) - gt_tracks, axis=-1)  # (N, T)
    m = np.ones_like(err, bool) if visible is None else np.asarray(visible, bool).copy()
    if queries is not None and not include_query_frame:
        m &= evaluation_points(np.asarray(queries), err.shape[1], "strided")
    return np.array([err[i][m[i]].mean() if m[i].any() else np.nan for i in range(len(err))])


def ate_mte(gt_tracks, pred_tracks, queries=None, visible=None, include_query_frame: bool = False):
    """{'ate': mean over tracks, 'mte': median over tracks} of `trajectory_errors`, in px."""
    e = trajectory_errors(gt_tracks, pred_tracks, queries, visible, include_query_frame)
    e = e[np.isfinite(e)]
    return {"ate": float(e.mean()) if len(e) else float("nan"),
            "mte": float(np.median(e)) if len(e) else float("nan")}


def survival(gt_tracks, pred_tracks, queries, threshold: float = 50.0) -> float:
    """Mean over tracks of the fraction of frames after the query before the error first exceeds
    `threshold` px (a track that never fails survives 1.0)."""
    err = np.linalg.norm(np.asarray(pred_tracks, np.float64) - gt_tracks, axis=-1)
    t_q = np.round(np.asarray(queries)[:, 0]).astype(int)
    out = []
    for i in range(len(err)):
        after = err[i, t_q[i] + 1:]
        if len(after) == 0:
            continue
        fail = np.nonzero(after > threshold)[0]
        out.append((fail[0] if len(fail) else len(after)) / len(after))
    return float(np.mean(out)) if out else float("nan")
