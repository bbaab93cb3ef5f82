"""The `label` stage: run the frozen model over video shards and keep what passes the cycle check.

RAFT: every consecutive pair of every clip; forward and backward flow in one jitted, mesh-sharded
call; label = forward flow, valid = the flow cycle check (labels/cycle.py).
PIPs: 8-frame windows of every clip; queries on a grid, plus dense windows around the clip's
ground-truth points when it has them; forward and backward (time-reversed, from the forward end
point) tracks in one call; keep tracks consistent within tau px at every frame; then re-balance by
speed. Labels carry the forward track's visibility.

Output (`WORKDIR/labels/`): one label shard per input shard, in the video-clip schema of
data/shards.py (a flow label is a 2-frame clip with `flow` and `flow_valid`; a track label is an
8-frame clip with `tracks`, `visible` and `query_points`), and `manifest.json` with the shards, the
labelling config, the model fingerprint, counts and yield statistics, and, when the inputs carry
ground truth, the error of the kept labels against it next to the error of all estimates.
A shard counts as done once its stats file exists (written after the shard was renamed into place),
so an interrupted run redoes only unfinished shards and never leaves a finished-looking partial one.
The stats file records the label settings and the model's sha256; a re-run with other ones refuses
the finished shards instead of mixing two runs' labels under one manifest.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import zlib
from typing import Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from refine_jax import settings
from refine_jax import checkpoints, cli, fs, parallel
from refine_jax.data import shards, sources
from refine_jax.labels import cycle
from refine_jax.models.pips import Pips, PipsConfig
from refine_jax.models.raft import RAFT, RAFTConfig, pad_images, unpad, check_image_size

FLOW_SPEED_BINS = (1.0, 4.0, 16.0)  # |flow| px: bins [0,1), [1,4), [4,16), [16,inf)


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Labelling settings (config.label). Flow: alpha, beta, color_thresh, max_flow, color_noise,
    color_gain (labels/cycle.py). Tracks: tau,
    grid (points per side), densify_window (0 = off), use_gt_points, window_hop, stride, speed_bins
    (px/frame), cap_per_bin (0 = no cap), min_speed, max_queries (padded query count per window),
    query_chunk (queries tracked at once; 0 = as many as `auto_query_chunk` allows)."""
    out: str = "labels"
    batch: int = 8
    iters: int = 0             # 0: the model's reference count (RAFT 32, PIPs 6)
    alpha: float = 0.002
    beta: float = 0.1
    color_thresh: float = 0.005
    max_flow: float = 400.0
    color_noise: bool = False
    color_gain: bool = False
    tau: float = 3.0
    grid: int = 16
    densify_window: int = 0
    use_gt_points: bool = True
    window_hop: int = 8
    stride: int = 4
    speed_bins: Tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    cap_per_bin: int = 0
    min_speed: float = 0.0
    max_queries: int = 512
    query_chunk: int = 0
    num_devices: int = 0       # 0: all devices (of this process)
    seed: int = 0
    rounds: int = 1            # label-and-train rounds; the loop is in main.py
    pad_mode: str = "sintel"   # RAFT's InputPadder: 'sintel' splits the padding, 'kitti' pads below only

    @classmethod
    def from_config(cls, c) -> "LabelConfig":
        return settings.from_section(cls, c, "label")


def _add(stats: dict, key: str, value) -> None:
    stats[key] = stats.get(key, 0) + value


def _merge(into: dict, other: dict) -> None:
    for k, v in other.items():
        if isinstance(v, dict):
            _merge(into.setdefault(k, {}), v)
        else:
            into[k] = into.get(k, 0) + v


# ------------------------------------------------------------------------------------------ flow

@functools.lru_cache(maxsize=8)
def _flow_label_fn(cfg: RAFTConfig, iters: int, check: cycle.FlowCheck, mesh, pad_mode: str = "sintel"):
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
        return fw, valid, cyc, color

    b, r = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    return jax.jit(fn, in_shardings=(r, b, b), out_shardings=(b, b, b, b))


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
        jitted = _flow_label_fn(cfg, iters, check, mesh, lc.pad_mode)
        self.variables = parallel.put(variables, r)
        self.fn = lambda v, im1, im2: jitted(v, parallel.put(im1, b), parallel.put(im2, b))

    def estimate(self, frames: np.ndarray, what: str = "frames"):
        """Forward flow, label mask and colour error of every consecutive pair of uint8 frames
        (T, H, W, 3): (T-1, H, W, 2) px, (T-1, H, W) bool, (T-1, H, W) on the [-0.5, 0.5] scale."""
        t, h, w = frames.shape[:3]
        check_image_size(h, w, what)
        pairs = list(range(t - 1))
        bs = parallel.padded_size(min(self.lc.batch, len(pairs)), self.mesh)
        out = []
        for k in range(0, len(pairs), bs):
            idx = pairs[k:k + bs]
            im1 = parallel.pad_batch(frames[idx], bs)
            im2 = parallel.pad_batch(frames[[i + 1 for i in idx]], bs)
            fw, valid, _, color = (np.asarray(x)[:len(idx)] for x in self.fn(self.variables, im1, im2))
            out.append((fw, valid, color))
        return tuple(np.concatenate(x) for x in zip(*out))

    def label_clip(self, clip: shards.Clip, stats: dict) -> Iterator[shards.Clip]:
        fw, valid, _ = self.estimate(clip.frames, f"frames of {clip.video_id}")
        for i in range(len(fw)):
            self._stats(stats, clip, i, fw[i], valid[i])
            yield shards.Clip(clip.video_id, clip.frames[i:i + 2],
                              clip_start=clip.clip_start + i * clip.frame_stride,
                              frame_stride=clip.frame_stride, fps=clip.fps,
                              flow=fw[i][None], flow_valid=valid[i][None])

    @staticmethod
    def _stats(stats, clip, i, fw, valid):
        n, kept = valid.size, int(valid.sum())
        _add(stats, "samples", 1)
        _add(stats, "total", n)
        _add(stats, "kept", kept)
        v = stats.setdefault("per_video", {}).setdefault(clip.video_id, {})
        _add(v, "total", n)
        _add(v, "kept", kept)
        mag = np.linalg.norm(fw, axis=-1)
        edges = (0.0, *FLOW_SPEED_BINS, np.inf)
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


# ------------------------------------------------------------------------------------------ tracks

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
def _track_label_fn(cfg: PipsConfig, iters: int, mesh, query_chunk: int = 0):
    """The jitted forward + time-reversed tracking + check, shared like `_flow_label_fn`.

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
        jitted = _track_label_fn(self.cfg, lc.iters or 6, mesh, lc.query_chunk)
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
        (n, S) bool, n_gt) for its n queries (GT points first, then the grid)."""
        s = self.cfg.S
        t, h, w = clip.frames.shape[:3]
        starts = list(range(0, t - s + 1, self.lc.window_hop))
        bs = parallel.padded_size(min(self.lc.batch, max(len(starts), 1)), self.mesh)
        for k in range(0, len(starts), bs):
            ws = starts[k:k + bs]
            qs = [self._queries(clip, st, h, w) for st in ws]
            frames = parallel.pad_batch(np.stack([clip.frames[st:st + s] for st in ws]), bs)
            xys = parallel.pad_batch(np.stack([q for q, _, _ in qs]), bs)
            coords, vis, keep, _ = (np.asarray(x)[:len(ws)] for x in self.fn(self.variables, frames, xys))
            for j, st in enumerate(ws):
                _, n, n_gt = qs[j]
                yield st, coords[j].transpose(1, 0, 2)[:n], keep[j][:n], vis[j].T[:n], n_gt

    def label_clip(self, clip: shards.Clip, stats: dict) -> Iterator[shards.Clip]:
        s = self.cfg.S
        if clip.frames.shape[0] < s:
            _add(stats, "short_clips_skipped", 1)
            return
        for st, tracks, keep, vis, n_gt in self.estimate(clip):
            n = len(tracks)
            kept = np.nonzero(keep)[0]
            self._gt_stats(stats, clip, st, tracks, keep, n_gt)
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
    def _gt_stats(stats, clip, st, tracks, keep, n_gt):
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
        edges = (0.0, *FLOW_SPEED_BINS, np.inf)
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


# ------------------------------------------------------------------------------------------ stage

def _precision(g: dict) -> dict:
    """Mean ground-truth error of all estimates and of the kept ones, and the yield, from sums;
    also the mean speed bias (px) of both: |estimate| - |truth| for flow, for tracks the distance
    from the query point travelled by the estimate minus the truth's."""
    out = {"error_all": g["all_sum"] / max(g["all_n"], 1),
           "error_kept": g["kept_sum"] / g["kept_n"] if g["kept_n"] else float("nan"),
           "yield": g["kept_n"] / max(g["all_n"], 1), "n": g["all_n"]}
    if "all_speed_sum" in g:
        out["speed_bias_all"] = g["all_speed_sum"] / max(g["all_n"], 1)
        out["speed_bias_kept"] = g["kept_speed_sum"] / g["kept_n"] if g["kept_n"] else float("nan")
    return out


def _summary(stats: dict) -> dict:
    out = dict(stats)
    if stats.get("total"):
        out["yield"] = stats["kept"] / stats["total"]
    g = stats.get("gt")
    if g and g.get("all_n"):
        out["gt_error_all"] = g["all_sum"] / g["all_n"]
        out["gt_error_kept"] = g["kept_sum"] / max(g["kept_n"], 1)
        if g.get("per_speed_bin"):
            out["gt_per_speed_bin"] = {k: _precision(v) for k, v in g["per_speed_bin"].items()}
    return out


# Label settings that only split the work (or name the folder, or count rounds): a resumed run may
# change them. Any other setting, or another model, makes other labels.
WORK_SPLIT_ONLY = frozenset({"out", "batch", "num_devices", "query_chunk", "rounds"})


def _label_key(lc: LabelConfig, model_sha256: str) -> dict:
    """What a label shard depends on besides its input: the settings and the model's weights
    (as JSON holds them, so that a stored key compares equal)."""
    values = {k: v for k, v in dataclasses.asdict(lc).items() if k not in WORK_SPLIT_ONLY}
    return json.loads(json.dumps({"label_settings": values, "model_sha256": model_sha256}))


def _check_same_key(entry: dict, key: dict, stats_path: str) -> None:
    """Raise when a finished shard (its stats file) was labelled with other settings or another
    model than this run's, naming the differences. Shards from before keys were stored pass."""
    if "label_settings" not in entry:
        return
    diffs = settings.differences({"label": entry["label_settings"], "model_sha256": entry.get("model_sha256")},
                                 {"label": key["label_settings"], "model_sha256": key["model_sha256"]},
                                 defaults=settings.dataclass_defaults(label=LabelConfig))
    if diffs:
        raise ValueError(f"{stats_path} marks a shard labelled with other settings ({'; '.join(diffs)}); "
                         f"label into a new work directory (or label.out) or use that run's settings")


def run(config, workdir: str, init: Optional[str] = None, progress: bool = True) -> dict:
    """Label every input shard into WORKDIR/<label.out>; returns the manifest. Finished shards
    are kept (resume) when they were labelled with the same settings and model, refused otherwise."""
    from tqdm import tqdm
    lc = LabelConfig.from_config(config.get("label"))
    init = init or config.init
    loaded = checkpoints.load_model(init, config.get("runtime"))
    mesh = parallel.make_mesh(lc.num_devices or None, local=True)
    labeler = (FlowLabeler if isinstance(loaded.cfg, RAFTConfig) else TrackLabeler)(
        loaded.cfg, loaded.variables, lc, mesh)
    inputs = []
    for d in sources.split_sources(config.data.videos):
        inputs.extend(sources.units(d))
    out_dir = os.path.join(workdir, lc.out)
    fs.makedirs(out_dir)
    key = _label_key(lc, checkpoints.fingerprint(init))
    start, done_records = time.time(), 0
    mine = parallel.process_share(inputs)
    bar = tqdm(mine, desc=f"label ({loaded.arch})", unit="shard",
               disable=not (progress and parallel.is_main_process()))
    for unit in bar:
        final, stats_path = _outputs(out_dir, unit)
        if fs.exists(stats_path) and fs.exists(final):
            _check_same_key(fs.read_json(stats_path), key, stats_path)
            continue
        tmp = f"{final}.tmp"
        stats: dict = {}
        records, sizes = 0, set()
        tf = shards._tf()
        with tf.io.TFRecordWriter(tmp) as writer:
            for clip in unit.clips():
                for label in labeler.label_clip(clip, stats):
                    writer.write(shards.clip_to_example(label, "png"))
                    records += 1
                    sizes.add(tuple(int(v) for v in label.frames.shape[1:3]))
                done_records += 1
                bar.set_postfix(clips_per_s=f"{done_records / (time.time() - start):.2f}")
        fs.replace(tmp, final)
        entry = {"file": os.path.basename(final), "records": records, "bytes": fs.size(final),
                 "sha256": shards.sha256_file(final), "source": unit.name, "stats": stats,
                 "frame_sizes": sorted(map(list, sizes)), **key}
        fs.write_json_atomic(stats_path, entry)
    parallel.barrier("label: shards written")
    manifest = _manifest(inputs, out_dir, lc, init, loaded, key["model_sha256"])
    if parallel.is_main_process():
        fs.write_json_atomic(os.path.join(out_dir, shards.MANIFEST), manifest)
    parallel.barrier("label: manifest written")
    return manifest


def _outputs(out_dir: str, unit: "sources.Unit") -> Tuple[str, str]:
    """The label shard of an input unit (a shard file, a TFDS sub-split) and its stats file
    (which marks it finished)."""
    return (os.path.join(out_dir, f"{unit.name}.labels.tfrecord"), os.path.join(out_dir, f".{unit.name}.stats.json"))


def _manifest(inputs, out_dir, lc, init, loaded, model_sha256: str) -> dict:
    """The label manifest over every input shard's stats file, in input order."""
    per_shard = []
    for unit in inputs:
        per_shard.append(fs.read_json(_outputs(out_dir, unit)[1]))
    total: dict = {}
    for e in per_shard:
        _merge(total, e["stats"])
    manifest = {"schema": shards.SCHEMA, "name": "labels", "kind": "flow" if isinstance(loaded.cfg, RAFTConfig) else "tracks",
                "files": [{k: e[k] for k in ("file", "records", "bytes", "sha256", "source")} for e in per_shard],
                "records": sum(e["records"] for e in per_shard),
                "frame_sizes": sorted(map(list, {tuple(v) for e in per_shard for v in e.get("frame_sizes", ())})),
                "label_config": dataclasses.asdict(lc), "model": fs.abspath(init),
                "model_sha256": model_sha256, "model_arch": loaded.arch,
                "stats": _summary(total)}
    return manifest


@cli.guarded
def main(argv) -> int:
    """`python -m refine_jax.labels.generate --init=CKPT --videos=DIR[,DIR] --workdir=DIR
    [--label='{"tau": 1.5, ...}']`: the label stage alone."""
    import argparse
    import ml_collections
    p = argparse.ArgumentParser(prog="python -m refine_jax.labels.generate", description=main.__doc__)
    p.add_argument("--init", required=True)
    p.add_argument("--videos", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--label", default="{}", help="JSON of label settings")
    a = p.parse_args(argv)
    cfg = ml_collections.ConfigDict({"init": a.init, "data": {"videos": a.videos},
                                     "label": json.loads(a.label)})
    m = run(cfg, a.workdir)
    print(json.dumps(m["stats"], indent=1)[:2000])
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
