"""Chained PIPs over videos of any length (docs/method.md, "PIPs"), batched over points.

The official loop tracks each point on its own: run an 8-frame window from the point's current
frame (padding past the end by repeating the last frame), keep the frame-0 template feature of the
first window, write the window's estimates into the trajectory (newer windows overwrite), then jump
to the latest window frame si in 7..2 whose visibility exceeds a threshold (0.9, lowered by 0.02
after each unsuccessful sweep) and re-anchor there; stop once the current frame passes the end.

Here all points run at once. Points that share a current frame share a model call, and the point
with the earliest current frame always goes first. Every point still waiting therefore only needs
frames at or after that frame, so each frame is encoded exactly once and at most 8 frames' feature
maps are held, whatever the video length. Queries may start at any frame: frames after the query
are tracked forward, frames before it by the same chain on the time-reversed video.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from refine_jax.models.pips import Pips, PipsConfig, check_frame_size


def choose_jump(vis: np.ndarray, start_thr: float = 0.9, step: float = 0.02) -> int:
    """The official re-anchoring rule for one point: vis (S,) probabilities of one window.

    Scan window frames S-1 down to 2 for vis > thr; after a sweep without success lower thr by
    `step` and rescan. Frame 1 is never chosen. Returns the jump (2..S-1).
    """
    last = len(vis) - 1
    thr, si = start_thr, last
    while True:
        if vis[si] > thr:
            return si
        si -= 1
        if si == 1:
            thr, si = thr - step, last


@dataclasses.dataclass
class ChainStats:
    """What the scheduler did: frames encoded, the most feature maps held, every window run."""
    encoded: int = 0
    max_cached: int = 0
    windows: List[dict] = dataclasses.field(default_factory=list)


def _bucket(n: int, cap: int) -> int:
    """Pad a point count to a power of two (>= 8, <= cap) so few shapes get compiled."""
    return min(cap, max(8, 1 << (n - 1).bit_length()))


@functools.lru_cache(maxsize=8)
def chain_fns(cfg: PipsConfig, iters: int):
    """Jitted encode, template and window functions, shared by every tracker of the same settings
    (the variables are an argument, so tracking with several models compiles them once)."""
    model = Pips(cfg)
    encode = jax.jit(lambda v, f: model.apply(v, f[None, None], method=Pips.encode)[0, 0])
    template = jax.jit(lambda v, fm, xy: model.apply(v, fm[None], xy[None], method=Pips.template)[0])

    @jax.jit
    def window(v, fmaps, xys, feat):
        out = model.apply(v, fmaps[None], xys[None], iters=iters, feat_init=feat[None], method=Pips.track)
        return out["coords"][0], jax.nn.sigmoid(out["vis_logits"][0])
    return encode, template, window


class ChainedTracker:
    """Track queries through a whole video with chained 8-frame PIPs windows.

    frames: any sequence of uint8 (H, W, 3) frames (an array, or a lazy reader with len and
    indexing). queries: (N, 3) rows (t, x, y), pixels, t an integer frame index.
    """

    def __init__(self, cfg: PipsConfig, variables, iters: int = 6, max_points: int = 256,
                 keep_log: bool = False):
        self.cfg, self.variables, self.iters = cfg, variables, iters
        self.max_points, self.keep_log = max_points, keep_log
        self._encode, self._template, self._window = chain_fns(cfg, iters)

    def validate(self, queries: np.ndarray, num_frames: int, h: int, w: int) -> np.ndarray:
        """Check queries against the video; one sentence naming the first bad query."""
        q = np.asarray(queries, np.float32)
        if q.ndim != 2 or q.shape[1] != 3:
            raise ValueError(f"queries must be an (N, 3) array of rows (t, x, y), got shape {q.shape}")
        for i, (t, x, y) in enumerate(q):
            if t != np.floor(t) or not 0 <= t < num_frames:
                raise ValueError(f"query {i} (t={t:g}, x={x:g}, y={y:g}): frame index must be an "
                                 f"integer in [0, {num_frames - 1}] for this {num_frames}-frame video")
            if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
                raise ValueError(f"query {i} (t={t:g}, x={x:g}, y={y:g}): point is outside the "
                                 f"{w}x{h} frame (x in [0, {w - 1}], y in [0, {h - 1}])")
        return q

    def __call__(self, frames: Sequence[np.ndarray], queries: np.ndarray,
                 progress: Optional[Callable[[int], None]] = None) -> Dict[str, np.ndarray]:
        """Returns {'tracks': (N, T, 2) px, 'visible': (N, T) bool, 'vis_prob': (N, T)} and
        `self.stats` (ChainStats) for the forward and backward passes together."""
        t_len = len(frames)
        h, w = frames[0].shape[:2]
        check_frame_size(h, w, self.cfg.stride)
        q = self.validate(queries, t_len, h, w)
        n = len(q)
        start = q[:, 0].astype(np.int64)
        self.stats = ChainStats()
        tracks = np.zeros((n, t_len, 2), np.float32)
        vis_prob = np.zeros((n, t_len), np.float32)
        if n == 0:
            return {"tracks": tracks, "visible": vis_prob > 0.5, "vis_prob": vis_prob}
        feats = self._templates(frames, q)
        self._chain(frames, np.arange(n), start, q[:, 1:], feats, tracks, vis_prob, progress, False)
        back = np.nonzero(start > 0)[0]
        if len(back):
            rev = _Reversed(frames)
            tr_b = np.zeros((len(back), t_len, 2), np.float32)
            vp_b = np.zeros((len(back), t_len), np.float32)
            self._chain(rev, np.arange(len(back)), t_len - 1 - start[back], q[back, 1:], feats[back],
                        tr_b, vp_b, progress, True)
            for j, i in enumerate(back):  # frames before the query come from the reversed pass
                s = start[i]
                tracks[i, :s] = tr_b[j, ::-1][:s]
                vis_prob[i, :s] = vp_b[j, ::-1][:s]
        vis_prob[np.arange(n), start] = 1.0  # a query is visible at its own frame by definition
        return {"tracks": tracks, "visible": vis_prob > 0.5, "vis_prob": vis_prob}

    def _templates(self, frames, q) -> np.ndarray:
        """Frame-0 template features: sampled at each query in its own frame."""
        feats = np.zeros((len(q), self.cfg.latent_dim), np.float32)
        for t in np.unique(q[:, 0].astype(np.int64)):
            ids = np.nonzero(q[:, 0] == t)[0]
            fmap = self._encode(self.variables, jnp.asarray(frames[t], jnp.float32))
            self.stats.encoded += 1
            feats[ids] = np.asarray(self._template(self.variables, fmap, jnp.asarray(q[ids, 1:])))
        return feats

    def _chain(self, frames, ids, cur, xy0, feats, tracks, vis_prob, progress, reverse: bool):
        """One direction. Fills tracks[ids] / vis_prob[ids] from each point's start frame on.
        `reverse` only labels the logged windows (frames are already reversed then)."""
        t_len, s = len(frames), self.cfg.S
        cur = cur.copy()
        for i, c in zip(ids, cur):
            tracks[i, c] = xy0[i]
        cache: Dict[int, jax.Array] = {}
        while True:
            active = ids[cur[ids] < t_len]
            if len(active) == 0:
                break
            c = int(cur[active].min())
            for f in [k for k in cache if k < c]:
                del cache[f]
            for f in range(c, min(c + s, t_len)):
                if f not in cache:
                    cache[f] = self._encode(self.variables, jnp.asarray(frames[f], jnp.float32))
                    self.stats.encoded += 1
            self.stats.max_cached = max(self.stats.max_cached, len(cache))
            fmaps = jnp.stack([cache[min(c + j, t_len - 1)] for j in range(s)])
            here = active[cur[active] == c]
            real = min(s, t_len - c)
            for k in range(0, len(here), self.max_points):
                chunk = here[k:k + self.max_points]
                m = _bucket(len(chunk), self.max_points)
                pad = np.concatenate([chunk, np.full(m - len(chunk), chunk[0])])
                coords, vis = self._window(self.variables, fmaps, jnp.asarray(tracks[pad, c]),
                                           jnp.asarray(feats[pad]))
                coords = np.asarray(coords)[:, :len(chunk)]  # (S, n, 2)
                vis = np.asarray(vis)[:, :len(chunk)]        # (S, n)
                tracks[chunk, c:c + real] = coords[:real].transpose(1, 0, 2)
                vis_prob[chunk, c:c + real] = vis[:real].T
                jumps = np.array([choose_jump(vis[:, j]) for j in range(len(chunk))])
                if self.keep_log:
                    self.stats.windows.append({"reverse": reverse, "start": c, "points": chunk.copy(), "vis": vis.copy(),
                                               "jumps": jumps.copy(), "coords": coords.copy()})
                cur[chunk] = c + jumps
            if progress is not None:
                progress(c)


class _Reversed:
    """A time-reversed view of a frame sequence."""

    def __init__(self, frames):
        self.frames = frames

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, t):
        return self.frames[len(self.frames) - 1 - t]
