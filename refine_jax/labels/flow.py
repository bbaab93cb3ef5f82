"""Flow labels: forward + backward RAFT and the flow cycle check, jitted and sharded over pairs,
and the label statistics of each pair (yield per estimated speed bin; precision and speed bias
per ground-truth speed bin where the clip carries ground truth)."""
from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from refine_jax import parallel
from refine_jax.data import shards
from refine_jax.labels import cycle
from refine_jax.speed import SPEED_BINS
from refine_jax.labels.stats import add as _add
from refine_jax.models.raft import RAFT, RAFTConfig, check_image_size, pad_images, unpad
from refine_jax.settings import LabelConfig


@functools.lru_cache(maxsize=8)
def label_fn(cfg: RAFTConfig, iters: int, check: cycle.FlowCheck, mesh, pad_mode: str = "sintel"):
    """The jitted forward + backward + check, shared by every labeler of the same settings (the
    variables are an argument, so evaluating several models compiles it once)."""
    model = RAFT(cfg)

    def fn(variables, im1, im2):
        p1, lrtb = pad_images(im1.astype(jnp.float32), pad_mode)
        p2, _ = pad_images(im2.astype(jnp.float32), pad_mode)
        b = p1.shape[0]
        interleave = lambda x, y: jnp.stack([x, y], 1).reshape(2 * b, *x.shape[1:])  # pair k: rows 2k, 2k+1
        out = model.apply(variables, interleave(p1, p2), interleave(p2, p1), iters=iters)
        flows = unpad(out["flow_up"], lrtb).reshape(b, 2, *im1.shape[1:3], 2)  # a device keeps its pairs
        fw, bw = flows[:, 0], flows[:, 1]
        valid, cyc, color = cycle.flow_cycle_check(fw, bw, im1, im2, check)
        fb = jnp.sqrt(jnp.sum(jnp.square(fw + cycle.warp(bw, fw)), -1))  # forward-backward error, px
        return fw, valid, cyc, color, fb

    b, r = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    return jax.jit(fn, in_shardings=(r, b, b), out_shardings=(b, b, b, b, b))


class FlowLabeler:
    """Forward + backward RAFT and the flow check, jitted and sharded over the batch of pairs."""

    def __init__(self, cfg: RAFTConfig, variables, lc: LabelConfig, mesh):
        self.variables, self.lc, self.mesh = variables, lc, mesh
        iters = lc.iters or 32
        if lc.pad_mode not in ("sintel", "kitti"):
            raise ValueError(f"pad_mode must be 'sintel' or 'kitti' (RAFT's InputPadder modes), got {lc.pad_mode!r}")
        check = cycle.FlowCheck(lc.alpha, lc.beta, lc.color_thresh, lc.max_flow, lc.color_noise, lc.color_gain)
        self.check = check
        b, r = parallel.batch_sharding(mesh), parallel.replicated(mesh)
        jitted = label_fn(cfg, iters, check, mesh, lc.pad_mode)
        self.variables = parallel.put(variables, r)
        self.fn = lambda v, im1, im2: jitted(v, parallel.put(im1, b), parallel.put(im2, b))

    def estimate(self, frames: np.ndarray, what: str = "frames"):
        """Forward flow, label mask and colour error of every consecutive pair of uint8 frames
        (T, H, W, 3): (T-1, H, W, 2) px, (T-1, H, W) bool, (T-1, H, W) on the [-0.5, 0.5] scale."""
        return self.pairs(frames[:-1], frames[1:], what)[:3]

    def batch_for(self, n: int) -> int:
        """The batch `pairs` runs `n` pairs in: the labelling batch, or n where that is fewer (in
        a multiple of the devices)."""
        return parallel.padded_size(min(self.lc.batch, n), self.mesh)

    def pairs(self, first: np.ndarray, second: np.ndarray, what: str = "frames", batch: int = 0):
        """(forward flow (N, H, W, 2) px, label mask (N, H, W), colour error (N, H, W) on the
        [-0.5, 0.5] scale, forward-backward error (N, H, W) px) of the pairs first[k] -> second[k]
        (uint8 (N, H, W, 3)), in batches of `batch` (default `batch_for(N)`; each batch size
        compiles the model once)."""
        n, h, w = first.shape[:3]
        check_image_size(h, w, what)
        bs = batch or self.batch_for(n)
        out = []
        for k in range(0, n, bs):
            im1, im2 = parallel.pad_batch(first[k:k + bs], bs), parallel.pad_batch(second[k:k + bs], bs)
            fw, valid, _, color, fb = (np.asarray(x)[:min(bs, n - k)] for x in self.fn(self.variables, im1, im2))
            out.append((fw, valid, color, fb))
        return tuple(np.concatenate(x) for x in zip(*out))

    def label_clip(self, clip: shards.Clip, stats: dict) -> Iterator[shards.Clip]:
        fw, valid, _ = self.estimate(clip.frames, f"frames of {clip.video_id}")
        for i in range(len(fw)):
            self.pair_stats(stats, clip, i, fw[i], valid[i])
            yield shards.Clip(clip.video_id, clip.frames[i:i + 2],
                              clip_start=clip.clip_start + i * clip.frame_stride,
                              frame_stride=clip.frame_stride, fps=clip.fps,
                              flow=fw[i][None], flow_valid=valid[i][None])

    @staticmethod
    def pair_stats(stats, clip, i, fw, valid):
        n, kept = valid.size, int(valid.sum())
        _add(stats, "samples", 1)
        _add(stats, "total", n)
        _add(stats, "kept", kept)
        v = stats.setdefault("per_video", {}).setdefault(clip.video_id, {})
        _add(v, "total", n)
        _add(v, "kept", kept)
        mag = np.linalg.norm(fw, axis=-1)
        edges = (0.0, *SPEED_BINS, np.inf)
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (mag >= lo) & (mag < hi)
            b = stats.setdefault("per_speed_bin", {}).setdefault(f"[{lo:g},{hi:g})", {})
            _add(b, "total", int(sel.sum()))
            _add(b, "kept", int((sel & valid).sum()))
        if clip.flow is not None:  # precision of the labels, overall and per ground-truth speed bin
            gt_ok = clip.flow_valid[i] if clip.flow_valid is not None else np.ones_like(valid)
            epe = np.linalg.norm(fw - clip.flow[i], axis=-1)
            gt_mag = np.linalg.norm(clip.flow[i], axis=-1)
            # signed: negative where the estimate is slower than the truth. A bias that forward and
            # backward estimates share passes the cycle check, so the kept labels carry it too.
            speed = mag - gt_mag
            g = stats.setdefault("gt", {})
            for name, sel in [("", gt_ok)] + [(f"[{lo:g},{hi:g})", gt_ok & (gt_mag >= lo) & (gt_mag < hi))
                                              for lo, hi in zip(edges[:-1], edges[1:])]:
                into = g.setdefault("per_speed_bin", {}).setdefault(name, {}) if name else g
                _add(into, "all_sum", float(epe[sel].sum()))
                _add(into, "all_n", int(sel.sum()))
                _add(into, "kept_sum", float(epe[sel & valid].sum()))
                _add(into, "kept_n", int((sel & valid).sum()))
                _add(into, "all_speed_sum", float(speed[sel].sum()))
                _add(into, "kept_speed_sum", float(speed[sel & valid].sum()))

