"""Track labels: forward + time-reversed PIPs on windows of a clip, the all-frames track check,
re-balancing by speed, and the label statistics of each window."""
from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Iterator, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from refine_jax import parallel
from refine_jax.data import shards
from refine_jax.labels import cycle
from refine_jax.speed import SPEED_BINS
from refine_jax.labels.stats import add as _add
from refine_jax.models.pips import Pips, PipsConfig
from refine_jax.settings import LabelConfig


# The level-0 correlation volumes of one chunk of queries: queries x S x (H/stride) x (W/stride)
# float32. PIPs tracks every query independently, so chunking changes memory, not the tracks.
CORR_BUDGET_BYTES = 1 << 30


def auto_query_chunk(n: int, s: int, fmap_hw: Tuple[int, int], budget: int = CORR_BUDGET_BYTES) -> int:
    """The queries to track at once: all n when their level-0 correlation volumes (n x s x h x w
    float32) fit `budget` bytes, else the largest multiple of 128 (at least 128) that does.
    CroHD (9216 queries, 8 frames, 192x320 maps at stride 4): 18 GB at once, 512 per chunk."""
    per_query = s * fmap_hw[0] * fmap_hw[1] * 4
    if n * per_query <= budget:
        return n
    return max(128, budget // per_query // 128 * 128)


def _merge_chunks(stacked, axis: int, n: int):
    """(m, ...) outputs of m query chunks, whose query axis is `axis` in each chunk's output ->
    one output with the first n queries along that axis."""
    o = jnp.moveaxis(stacked, 0, axis)                        # (..., m, chunk, ...)
    o = o.reshape(o.shape[:axis] + (o.shape[axis] * o.shape[axis + 1],) + o.shape[axis + 2:])
    return jax.lax.slice_in_dim(o, 0, n, axis=axis)


@functools.lru_cache(maxsize=8)
def label_fn(cfg: PipsConfig, iters: int, mesh, query_chunk: int = 0):
    """The jitted forward + time-reversed tracking + check, shared like `labels.flow.label_fn`.

    (variables, frames (B, S, H, W, 3), xys (B, N, 2) px, tau) -> (coords (B, S, N, 2) px,
    visible (B, S, N), keep (B, N), cycle error). The queries go through the tracker in chunks of
    `query_chunk` (0: `auto_query_chunk`), one after another, so memory is bounded for any N."""
    model = Pips(cfg)

    def track(variables, fmaps, xys, tau):
        fwd = model.apply(variables, fmaps, xys, iters, method=Pips.track)
        bwd = model.apply(variables, fmaps[:, ::-1], fwd["coords"][:, -1], iters, method=Pips.track)
        keep, err = cycle.track_cycle_check(fwd["coords"], bwd["coords"][:, ::-1], tau)
        return fwd["coords"], jax.nn.sigmoid(fwd["vis_logits"]) > 0.5, keep, err

    def fn(variables, frames, xys, tau):
        fmaps = model.apply(variables, frames, method=Pips.encode)  # reversed clip: reversed fmaps
        b, n = xys.shape[:2]
        c = min(n, query_chunk or auto_query_chunk(n, fmaps.shape[1], fmaps.shape[2:4]))
        if c == n:
            return track(variables, fmaps, xys, tau)
        m = -(-n // c)
        padded = jnp.concatenate([xys, jnp.broadcast_to(xys[:, :1], (b, m * c - n, 2))], 1)
        chunks = padded.reshape(b, m, c, 2).swapaxes(0, 1)                  # (m, B, c, 2)
        outs = jax.lax.map(lambda q: track(variables, fmaps, q, tau), chunks)
        return tuple(_merge_chunks(o, axis, n) for o, axis in zip(outs, (2, 2, 1, 1)))

    b, r = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    return jax.jit(fn, in_shardings=(r, b, b, r), out_shardings=(b, b, b, b))


class TrackLabeler:
    """Forward + time-reversed PIPs on 8-frame windows and the all-frames track check."""

    def __init__(self, cfg: PipsConfig, variables, lc: LabelConfig, mesh):
        self.cfg = dataclasses.replace(cfg, stride=lc.stride)
        self.variables, self.lc, self.mesh = variables, lc, mesh
        b, r = parallel.batch_sharding(mesh), parallel.replicated(mesh)
        jitted = label_fn(self.cfg, lc.iters or 6, mesh, lc.query_chunk)
        self.variables = parallel.put(variables, r)
        tau = parallel.put(np.float32(lc.tau), r)
        self.fn = lambda v, frames, xys: jitted(v, parallel.put(frames, b), parallel.put(xys, b), tau)

    def _rng(self, clip, start) -> np.random.Generator:
        """The re-balancing draw for one window: a function of (seed, video, window) only, so labels do
        not depend on which process labels the shard, or on a resumed run's starting point."""
        key = zlib.crc32(f"{clip.video_id}:{clip.clip_start + start * clip.frame_stride}".encode())
        return np.random.default_rng([self.lc.seed, key])

    def _queries(self, clip, start, h, w):
        """(max_queries, 2) padded queries, their count, and how many leading ones are GT points."""
        lc = self.lc
        parts, n_gt = [], 0
        if lc.use_gt_points and clip.tracks is not None:
            vis0 = clip.visible[:, start]
            gt = clip.tracks[vis0, start]
            inside = (gt[:, 0] >= 0) & (gt[:, 0] <= w - 1) & (gt[:, 1] >= 0) & (gt[:, 1] <= h - 1)
            gt = gt[inside]
            parts.append(gt)
            n_gt = len(gt)
            if lc.densify_window:
                parts.append(cycle.densify(gt, lc.densify_window, h, w))
        if lc.grid:
            parts.append(cycle.grid_points(h, w, lc.grid))
        if not parts:  # footage without points under a config that queries only at ground-truth points
            raise ValueError(f"{clip.video_id}: nothing to query: the clip carries no ground-truth tracks "
                             f"{'to query at ' if lc.use_gt_points else '(label.use_gt_points is off) '}"
                             f"and label.grid is 0; set --config.label.grid=16 for a 16x16 grid of queries")
        q = np.concatenate(parts)
        if n_gt < len(q):  # deduplicate the rest, keep GT points first and in order
            rest = np.unique(q[n_gt:], axis=0)
            q = np.concatenate([q[:n_gt], rest])
        if len(q) > lc.max_queries:
            q = q[:lc.max_queries]
            n_gt = min(n_gt, lc.max_queries)
        n = len(q)
        pad = np.zeros((lc.max_queries, 2), np.float32)
        pad[:n] = q
        if n:
            pad[n:] = q[0]
        return pad, n, n_gt

    def estimate(self, clip: shards.Clip):
        """Per labelling window of the clip: (start, tracks (n, S, 2) px, keep (n,) bool, visible
        (n, S) bool, n_gt, cycle error (n,) px) for its n queries (GT points first, then the grid)."""
        s = self.cfg.S
        t, h, w = clip.frames.shape[:3]
        starts = list(range(0, t - s + 1, self.lc.window_hop))
        bs = parallel.padded_size(min(self.lc.batch, max(len(starts), 1)), self.mesh)
        for k in range(0, len(starts), bs):
            ws = starts[k:k + bs]
            qs = [self._queries(clip, st, h, w) for st in ws]
            frames = parallel.pad_batch(np.stack([clip.frames[st:st + s] for st in ws]), bs)
            xys = parallel.pad_batch(np.stack([q for q, _, _ in qs]), bs)
            coords, vis, keep, err = (np.asarray(x)[:len(ws)] for x in self.fn(self.variables, frames, xys))
            for j, st in enumerate(ws):
                _, n, n_gt = qs[j]
                yield st, coords[j].transpose(1, 0, 2)[:n], keep[j][:n], vis[j].T[:n], n_gt, err[j][:n]

    def label_clip(self, clip: shards.Clip, stats: dict) -> Iterator[shards.Clip]:
        s = self.cfg.S
        if clip.frames.shape[0] < s:
            _add(stats, "short_clips_skipped", 1)
            return
        for st, tracks, keep, vis, n_gt, _ in self.estimate(clip):
            n = len(tracks)
            kept = np.nonzero(keep)[0]
            self.gt_stats(stats, clip, st, tracks, keep, n_gt)
            chosen = kept[cycle.rebalance(tracks[kept], self.lc.speed_bins, self.lc.cap_per_bin,
                                          self.lc.min_speed, self._rng(clip, st))] if len(kept) else kept
            _add(stats, "samples", 1)
            _add(stats, "total", n)
            _add(stats, "kept", len(kept))
            _add(stats, "written", len(chosen))
            v = stats.setdefault("per_video", {}).setdefault(clip.video_id, {})
            _add(v, "total", n)
            _add(v, "kept", len(kept))
            _add(v, "written", len(chosen))
            hist_all = cycle.speed_histogram(tracks, self.lc.speed_bins)
            hist_kept = cycle.speed_histogram(tracks[kept], self.lc.speed_bins)
            for key in hist_all:
                b = stats.setdefault("per_speed_bin", {}).setdefault(key, {})
                _add(b, "total", hist_all[key])
                _add(b, "kept", hist_kept[key])
            if len(chosen) == 0:
                continue
            tr = tracks[chosen].astype(np.float32)
            yield shards.Clip(clip.video_id, clip.frames[st:st + s],
                              clip_start=clip.clip_start + st * clip.frame_stride,
                              frame_stride=clip.frame_stride, fps=clip.fps, tracks=tr,
                              visible=vis[chosen],
                              query_points=np.concatenate([np.zeros((len(tr), 1)), tr[:, 0]], -1))

    @staticmethod
    def gt_stats(stats, clip, st, tracks, keep, n_gt):
        if not n_gt:
            return
        s = tracks.shape[1]
        vis0 = clip.visible[:, st]
        gt = clip.tracks[vis0][:, st:st + s]
        gvis = clip.visible[vis0][:, st:st + s]
        inside = (gt[:, 0, 0] >= 0) & (gt[:, 0, 0] <= clip.frames.shape[2] - 1) & \
                 (gt[:, 0, 1] >= 0) & (gt[:, 0, 1] <= clip.frames.shape[1] - 1)
        gt, gvis = gt[inside][:n_gt], gvis[inside][:n_gt]
        err = np.linalg.norm(tracks[:n_gt] - gt, axis=-1)          # (n_gt, S)
        # signed, as for flow: the distance the estimate has travelled from the query point minus the
        # truth's, negative where the track lags behind the point
        lag = (np.linalg.norm(tracks[:n_gt] - tracks[:n_gt, :1], axis=-1)
               - np.linalg.norm(gt - gt[:, :1], axis=-1))
        m = gvis.copy()
        m[:, 0] = False                                           # the query frame is pinned
        g = stats.setdefault("gt", {})
        speed = cycle.mean_speed(gt)
        edges = (0.0, *SPEED_BINS, np.inf)
        for name, sel in [("", m)] + [(f"[{lo:g},{hi:g})", m & ((speed >= lo) & (speed < hi))[:, None])
                                      for lo, hi in zip(edges[:-1], edges[1:])]:
            into = g.setdefault("per_speed_bin", {}).setdefault(name, {}) if name else g
            _add(into, "all_sum", float(err[sel].sum()))
            _add(into, "all_n", int(sel.sum()))
            km = sel & keep[:n_gt, None]
            _add(into, "kept_sum", float(err[km].sum()))
            _add(into, "kept_n", int(km.sum()))
            _add(into, "all_speed_sum", float(lag[sel].sum()))
            _add(into, "kept_speed_sum", float(lag[km].sum()))
        _add(g, "points", int(n_gt))
        _add(g, "points_kept", int(keep[:n_gt].sum()))

