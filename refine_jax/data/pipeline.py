"""tf.data pipelines over video shards, handing numpy batches to JAX.

Records are interleaved, cut into windows of `clip_len` frames taken every `frame_stride` source
frames (a new window every `hop` frames of a record), shuffled, and only then decoded (only the
window's frames), resized to `size`, batched and prefetched. Epochs follow one another in one
continuous tf.data stream, built once, so a batch may take its last samples from the next epoch
(a clip with fewer samples than one batch still trains) and an epoch boundary costs nothing.
The order within an epoch is a pure function of (seed, epoch), and the position {epoch, sample}
(the samples of that epoch already handed out) can be saved and restored, so a resumed run sees
exactly the batches the uninterrupted run would have. TensorFlow is kept off GPUs/TPUs.

Several hosts split the work in one of two ways (`split`):
- 'files': each host reads its own files (`files[process_index::process_count]`) and makes batches
  of `batch_size` from them. Cheapest; the samples seen depend on the number of hosts.
- 'rows': every host reads every file in the same order, forms the same global batches of
  `batch_size`, and decodes only its rows of each (host p: rows [p B / P, (p + 1) B / P)). The
  batches do not depend on the number of hosts, so a run gives the same result on one host or many
  (training uses this); reading, not decoding, is repeated on every host.

Batch dict (numpy): frames uint8 (B, T, H, W, 3); video_id (B,) bytes; clip_start (B,) int64 (source
index of the window's first frame); and when the shards carry it and it is asked for: flow float32
(B, T-1, H, W, 2) px and flow_valid bool (B, T-1, H, W) (frame_stride 1 only); tracks float32
(B, N, T, 2) px, visible bool (B, N, T) and track_valid bool (B, N), padded to `max_tracks`.
B is this host's share of the batch.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from refine_jax import fs
from refine_jax.data import shards


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    shard_dirs: Tuple[str, ...]       # shard folders and/or tfds:NAME[/CONFIG]:SPLIT (data/sources.py)
    clip_len: int = 8
    frame_stride: int = 1
    hop: int = 0                     # window start step in source frames; 0 = clip_len * frame_stride
    size: Optional[Tuple[int, int]] = None  # (H, W) bilinear resize; None keeps the stored size
    batch_size: int = 1              # per host ('files') or global ('rows')
    shuffle: bool = True
    shuffle_buffer: int = 64
    seed: int = 0
    epochs: Optional[int] = None     # None repeats forever
    with_flow: bool = False
    max_tracks: int = 0              # >0: output tracks padded/truncated to this many
    checksum: bool = True            # verify shard sha256 against the manifest before reading
    drop_remainder: bool = True
    split: str = "files"             # how hosts share the data: 'files' or 'rows' (see above)


def host_files(files: Sequence[str], process_index: int, process_count: int) -> List[str]:
    """This host's share of the files: every process_count-th, starting at process_index."""
    if len(files) < process_count:
        raise ValueError(f"{len(files)} shard files cannot be split over {process_count} hosts; "
                         f"write more shards (smaller max_shard_bytes)")
    return list(files)[process_index::process_count]


def _windows(cfg: PipelineConfig):
    """A tf function: one parsed record -> a dataset of its windows, still encoded (`_select`)."""
    tf = fs.tf()
    span = (cfg.clip_len - 1) * cfg.frame_stride + 1
    hop = cfg.hop or cfg.clip_len * cfg.frame_stride

    def fn(rec):
        n = tf.shape(rec["frames"])[0]
        starts = tf.range(0, tf.maximum(n - span + 1, 0), hop)
        return tf.data.Dataset.from_tensor_slices(starts).map(lambda s: _select(rec, s, cfg))
    return fn


NO_FLOW = "a record without flow in data read for flow"  # the marker of that error in TF's message


def _select(rec, start, cfg: PipelineConfig):
    """The encoded pieces of one window, all of fixed shape so windows can be batched before
    decoding: frame bytes (clip_len,), flow bytes (clip_len - 1,), tracks as stored."""
    tf = fs.tf()
    idx = start + tf.range(cfg.clip_len) * cfg.frame_stride
    out = {"video_id": rec["video_id"], "idx": idx,
           "clip_start": rec["clip_start"] + tf.cast(start, tf.int64) * rec["frame_stride"],
           "height": tf.cast(rec["height"], tf.int32), "width": tf.cast(rec["width"], tf.int32),
           "frames": tf.gather(rec["frames"], idx)}
    if cfg.with_flow:
        if cfg.frame_stride != 1:
            raise ValueError("ground-truth flow is stored for consecutive frames; use frame_stride=1")
        has_flow = tf.debugging.assert_positive(tf.size(rec["flow"]), message=NO_FLOW)
        with tf.control_dependencies([has_flow]):
            pidx = start + tf.range(cfg.clip_len - 1)
        out.update(flow_dtype=rec["flow_dtype"], flow=tf.gather(rec["flow"], pidx),
                   flow_valid=tf.gather(rec["flow_valid"], pidx))
    if cfg.max_tracks:
        out.update(num_tracks=tf.cast(rec["num_tracks"], tf.int32),
                   num_frames=tf.cast(rec["num_frames"], tf.int32),
                   tracks=rec["tracks"], visible=rec["visible"])
    return out


def _listed_sizes(shard_dirs: Sequence[str]) -> Optional[set]:
    """The (H, W) frame sizes the folders' manifests list; None when a folder (a TFDS split, an
    older manifest) does not say."""
    from refine_jax.data import sources
    sizes = set()
    for d in sources.split_sources(shard_dirs):
        listed = None if sources.is_tfds(d) else shards.load_manifest(d).get("frame_sizes")
        if not listed:
            return None
        sizes.update(tuple(v) for v in listed)
    return sizes


def frame_size(shard_dirs: Sequence[str]) -> Optional[Tuple[int, int]]:
    """(min H, min W) of the frames the folders hold: the largest size every sample can be cut
    to; None when a folder does not say."""
    sizes = _listed_sizes(shard_dirs)
    return (min(h for h, _ in sizes), min(w for _, w in sizes)) if sizes else None


def common_size(shard_dirs: Sequence[str]) -> Optional[Tuple[int, int]]:
    """`frame_size` when the folders list more than one frame size (KITTI's scenes are 370-376 x
    1224-1242), so that every sample is cut to it; None when all frames have one size."""
    sizes = _listed_sizes(shard_dirs)
    return frame_size(shard_dirs) if sizes and len(sizes) > 1 else None


def _decode(win, cfg: PipelineConfig, crop: Optional[Tuple[int, int]] = None):
    """One window from `_select` -> the decoded, resized sample of the batch dict; `crop` (H, W)
    first cuts the centre of frames of another size (records of several sizes batch together)."""
    tf = fs.tf()
    h, w = win["height"], win["width"]
    frames = tf.map_fn(lambda b: tf.io.decode_image(b, channels=3, expand_animations=False),
                       win["frames"], fn_output_signature=tf.uint8)
    frames = tf.ensure_shape(frames, [cfg.clip_len, None, None, 3])
    out = {"video_id": win["video_id"], "clip_start": win["clip_start"]}
    y0 = x0 = 0
    if crop is not None:
        y0, x0 = (h - crop[0]) // 2, (w - crop[1]) // 2
        frames = frames[:, y0:y0 + crop[0], x0:x0 + crop[1]]
    sy = sx = None
    if cfg.size is not None:
        sy = cfg.size[0] / tf.cast(h, tf.float32)
        sx = cfg.size[1] / tf.cast(w, tf.float32)
        frames = tf.cast(tf.round(tf.clip_by_value(
            tf.image.resize(tf.cast(frames, tf.float32), cfg.size, "bilinear"), 0, 255)), tf.uint8)
    out["frames"] = frames
    if cfg.with_flow:
        half = tf.equal(win["flow_dtype"], "float16")

        def decode_flow(b):
            f = tf.cond(half, lambda: tf.cast(tf.io.decode_raw(b, tf.float16), tf.float32),
                        lambda: tf.io.decode_raw(b, tf.float32))
            return tf.reshape(f, [h, w, 2])
        flow = tf.map_fn(decode_flow, win["flow"], fn_output_signature=tf.float32)
        valid = tf.map_fn(lambda b: tf.reshape(tf.io.decode_raw(b, tf.uint8), [h, w]),
                          win["flow_valid"], fn_output_signature=tf.uint8)
        if crop is not None:
            flow, valid = flow[:, y0:y0 + crop[0], x0:x0 + crop[1]], valid[:, y0:y0 + crop[0], x0:x0 + crop[1]]
        if cfg.size is not None:
            flow = tf.image.resize(flow, cfg.size, "bilinear") * tf.stack([sx, sy])
            valid = tf.image.resize(valid[..., None], cfg.size, "nearest")[..., 0]
        out["flow"], out["flow_valid"] = flow, valid > 0
    if cfg.max_tracks:
        n, t_all, idx = win["num_tracks"], win["num_frames"], win["idx"]
        tracks = tf.reshape(tf.io.decode_raw(win["tracks"], tf.float32), [n, t_all, 2])
        vis = tf.reshape(tf.io.decode_raw(win["visible"], tf.uint8), [n, t_all])
        tracks, vis = tf.gather(tracks, idx, axis=1), tf.gather(vis, idx, axis=1) > 0
        if crop is not None:
            tracks = tracks - tf.cast(tf.stack([x0, y0]), tf.float32)
        if cfg.size is not None:  # half-pixel resize: x' = (x + 0.5) * sx - 0.5
            tracks = (tracks + 0.5) * tf.stack([sx, sy]) - 0.5
        k = tf.minimum(n, cfg.max_tracks)
        pad = cfg.max_tracks - k
        out["tracks"] = tf.pad(tracks[:k], [[0, pad], [0, 0], [0, 0]])
        out["visible"] = tf.pad(vis[:k], [[0, pad], [0, 0]])
        out["track_valid"] = tf.pad(tf.ones([k], tf.bool), [[0, pad]])
    return out


class ClipIterator:
    """Deterministic, resumable iterator of numpy batches over shard folders.

    `state()` returns {'epoch', 'sample'}: the next batch starts at that sample of that epoch's
    order; `ClipIterator(cfg, state=...)` continues from there (a saved {'epoch', 'batch'} of the
    earlier per-epoch pipeline, whose batches never crossed epochs, means sample = batch * B).
    """

    def __init__(self, cfg: PipelineConfig, state: Optional[Dict[str, int]] = None,
                 process_index: Optional[int] = None, process_count: Optional[int] = None):
        import jax
        from refine_jax.data import sources
        self.cfg = cfg
        files, self.tfds = [], []
        for d in sources.split_sources(cfg.shard_dirs):
            if sources.is_tfds(d):
                sources.builder(sources.TfdsSpec.parse(d))  # fail now if it is not built
                self.tfds.append(d)
            else:
                files.extend(shards.verify_shards(d, cfg.checksum))
        if not files and not self.tfds:
            raise ValueError(f"no shard folder or TFDS split to read (got {cfg.shard_dirs!r})")
        pi = jax.process_index() if process_index is None else process_index
        pc = jax.process_count() if process_count is None else process_count
        self.host = (pi, pc) if cfg.split == "files" else (0, 1)  # TFDS splits: this host's share
        if cfg.split == "files":
            self.files = host_files(sorted(files), pi, pc) if files else []
            self.rows = (0, cfg.batch_size)
        elif cfg.split == "rows":
            if cfg.batch_size % pc:
                raise ValueError(f"the global batch of {cfg.batch_size} cannot be split over {pc} hosts")
            per = cfg.batch_size // pc
            self.files, self.rows = sorted(files), (pi * per, (pi + 1) * per)
        else:
            raise ValueError(f"split must be 'files' or 'rows', got {cfg.split!r}")
        # frames of several sizes are cut to the smallest before batching (the train step crops
        # its augmentation crop out of that); a resize to cfg.size makes them one size anyway
        self.crop = None if cfg.size is not None or cfg.batch_size == 1 else common_size(cfg.shard_dirs)
        state = state or {}
        self.epoch = int(state.get("epoch", 0))
        self.sample = int(state.get("sample", int(state.get("batch", 0)) * cfg.batch_size))
        self._it: Optional[Iterator] = None

    def state(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "sample": self.sample}

    def _epoch(self, epoch):
        """The encoded windows of one epoch (epoch: an int64 scalar tensor), in that epoch's order,
        each tagged with its epoch and its index in that order."""
        from refine_jax.data import sources
        tf = fs.tf()
        cfg = self.cfg
        parts = []
        if self.files:
            files = tf.constant(self.files)
            if cfg.shuffle:
                files = tf.random.experimental.stateless_shuffle(
                    files, seed=tf.stack([tf.constant(cfg.seed, tf.int64), epoch]))
            ds = tf.data.Dataset.from_tensor_slices(files)
            ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(self.files)),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            parts.append(ds.map(shards.parse_example_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
        parts += [sources.tfds_records(t, *self.host) for t in self.tfds]
        ds = parts[0]
        for part in parts[1:]:
            ds = ds.concatenate(part)
        ds = ds.flat_map(_windows(cfg))
        if cfg.shuffle:
            ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
        return ds.enumerate().map(lambda i, w: {**w, "_epoch": epoch, "_index": i})

    def _shard_error(self, e) -> shards.ShardError:
        """One sentence for a TF error met while reading this host's shards."""
        files = ", ".join(self.files + self.tfds)
        if NO_FLOW in e.message:
            return shards.ShardError(f"{files}: a record carries no flow, and training a flow model needs flow in "
                                     f"every record (pseudo-labels from the label stage, or ground truth)")
        return shards.ShardError(f"a shard of this host ({files}) is corrupt: {e.message.splitlines()[0]}")

    def _check_not_empty(self):
        tf = fs.tf()
        try:
            empty = not list(self._epoch(tf.constant(0, tf.int64)).take(1))
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise self._shard_error(e) from None
        if empty and not self.tfds:
            from refine_jax.data import sources
            dirs = sources.split_sources(self.cfg.shard_dirs)
            if not any(shards.load_manifest(d).get("records") for d in dirs):
                raise ValueError(f"{', '.join(dirs)}: no record to read (a label stage that kept no label writes "
                                 f"none: see the yield in its manifest.json)")
        if empty:
            raise ValueError(f"{', '.join(self.files + self.tfds)}: no window of {self.cfg.clip_len} frames "
                             f"(every {self.cfg.frame_stride} frames) in any record; the clips are too short")

    def _dataset(self):
        """Every epoch from the saved position on, as global batches of `batch_size`, of which this
        host decodes its rows; each sample carries the position after its global batch."""
        tf = fs.tf()
        cfg = self.cfg
        last = cfg.epochs if cfg.epochs is not None else np.iinfo(np.int64).max
        ds = self._epoch(tf.constant(self.epoch, tf.int64)).skip(self.sample)
        ds = ds.concatenate(tf.data.Dataset.range(self.epoch + 1, last).flat_map(self._epoch))
        lo, hi = self.rows
        full = cfg.drop_remainder or cfg.split == "rows"

        def rows(b):
            out = {k: v[lo:hi] for k, v in b.items() if not k.startswith("_")}
            n = tf.shape(out["idx"])[0]
            out["_next_epoch"] = tf.fill([n], b["_epoch"][-1])
            out["_next_sample"] = tf.fill([n], b["_index"][-1] + 1)
            return out
        ds = ds.batch(cfg.batch_size, drop_remainder=full).map(rows).unbatch()
        ds = ds.map(lambda w: {**_decode(w, cfg, self.crop), "_next_epoch": w["_next_epoch"], "_next_sample": w["_next_sample"]},
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(hi - lo, drop_remainder=full)
        opts = tf.data.Options()
        opts.deterministic = True
        return ds.with_options(opts).prefetch(2)

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, np.ndarray]:
        tf = fs.tf()
        if self._it is None:
            if self.cfg.epochs is not None and self.epoch >= self.cfg.epochs:
                raise StopIteration
            self._check_not_empty()
            self._it = iter(self._dataset().as_numpy_iterator())
        try:
            batch = next(self._it)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise self._shard_error(e) from None
        self.epoch = int(batch.pop("_next_epoch")[-1])
        self.sample = int(batch.pop("_next_sample")[-1])
        return batch
