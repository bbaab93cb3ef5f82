"""Video clip shards: TFRecord files of `tf.train.SequenceExample`, with a manifest.

One record is one clip:
  context   video_id (bytes), clip_start (int: index of the clip's first frame in the source video),
            frame_stride (int), height, width (int), fps (float), num_frames (int), frame_format
            ('png' | 'jpeg'); optional ground truth as raw little-endian bytes:
            tracks float32 (N, T, 2) px (x, y), visible uint8 (N, T), query_points float32 (N, 3)
            rows (t, x, y), num_tracks (int)
  sequence  frames: encoded image bytes, one per frame;
            optional flow: float16/32 (H, W, 2) bytes per consecutive pair (flow_dtype in context),
            flow_valid: uint8 (H, W) bytes per pair.

A folder of shards holds `NAME-00000-of-00004.tfrecord` ... and `manifest.json` with the files,
their record counts, sizes and sha256, the number of source frames overall and per video, and
the distinct frame sizes [H, W] (`frame_sizes`; absent where the writer did not record them).
flow_valid marks the pixels to train on (not occluded, as Sintel's masks); a manifest with
`"flow_valid_means": "gt_known"` says it marks where the ground truth is known at all (Middlebury,
KITTI), and evaluation then skips the other pixels (`Clip.flow_gt_known`).
Shards and the manifest are written under temporary names and renamed when complete.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from refine_jax import fs

MANIFEST = "manifest.json"
SCHEMA = "refine_jax.video_clip.v1"


class ShardError(ValueError):
    """A missing, corrupt or inconsistent shard; the message names the file."""


@dataclasses.dataclass
class Clip:
    """One clip in memory. frames uint8 (T, H, W, 3); optional ground truth as documented above."""
    video_id: str
    frames: np.ndarray
    clip_start: int = 0
    frame_stride: int = 1
    fps: float = 0.0
    flow: Optional[np.ndarray] = None          # (T-1, H, W, 2) float32 px
    flow_valid: Optional[np.ndarray] = None    # (T-1, H, W) bool
    tracks: Optional[np.ndarray] = None        # (N, T, 2) float32 px
    visible: Optional[np.ndarray] = None       # (N, T) bool
    query_points: Optional[np.ndarray] = None  # (N, 3) float32 (t, x, y)
    # (T-1, H, W) bool where the GT flow is known; None: everywhere. Not stored per record: set from
    # flow_valid when the folder's manifest says flow_valid_means 'gt_known'.
    flow_gt_known: Optional[np.ndarray] = None


GT_KNOWN = "gt_known"  # manifest["flow_valid_means"]: flow_valid marks known ground truth


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"frame format must be 'png' or 'jpeg', got {fmt!r}")
    return buf.getvalue()


def clip_to_example(clip: Clip, fmt: str = "png", flow_dtype: str = "float32") -> bytes:
    """Serialise a Clip as a SequenceExample."""
    tf = fs.tf()
    t, h, w, _ = clip.frames.shape
    b = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
    i = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
    f = lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
    ctx = {"video_id": b(clip.video_id.encode()), "clip_start": i(clip.clip_start),
           "frame_stride": i(clip.frame_stride), "height": i(h), "width": i(w), "fps": f(clip.fps),
           "num_frames": i(t), "frame_format": b(fmt.encode()), "schema": b(SCHEMA.encode())}
    seq = {"frames": tf.train.FeatureList(feature=[b(encode_image(im, fmt)) for im in clip.frames])}
    if clip.flow is not None:
        if clip.flow.shape != (t - 1, h, w, 2):
            raise ValueError(f"{clip.video_id}: flow must be ({t - 1}, {h}, {w}, 2), got {clip.flow.shape}")
        valid = np.ones((t - 1, h, w), bool) if clip.flow_valid is None else clip.flow_valid
        ctx["flow_dtype"] = b(flow_dtype.encode())
        seq["flow"] = tf.train.FeatureList(feature=[b(fl.astype("<" + np.dtype(flow_dtype).str[1:]).tobytes())
                                                    for fl in clip.flow])
        seq["flow_valid"] = tf.train.FeatureList(feature=[b(v.astype(np.uint8).tobytes()) for v in valid])
    if clip.tracks is not None:
        n = clip.tracks.shape[0]
        if clip.tracks.shape != (n, t, 2):
            raise ValueError(f"{clip.video_id}: tracks must be (N, {t}, 2), got {clip.tracks.shape}")
        vis = np.ones((n, t), bool) if clip.visible is None else clip.visible
        q = (np.stack([np.zeros(n), clip.tracks[:, 0, 0], clip.tracks[:, 0, 1]], -1)
             if clip.query_points is None else clip.query_points)
        ctx.update(num_tracks=i(n), tracks=b(clip.tracks.astype("<f4").tobytes()),
                   visible=b(vis.astype(np.uint8).tobytes()),
                   query_points=b(np.asarray(q, "<f4").tobytes()))
    ex = tf.train.SequenceExample(context=tf.train.Features(feature=ctx),
                                  feature_lists=tf.train.FeatureLists(feature_list=seq))
    return ex.SerializeToString(deterministic=True)  # sorted map keys: reproducible bytes and sha256


def parse_example_tf(serialized):
    """TF-graph parse of one record: a dict of tensors (frames still encoded)."""
    tf = fs.tf()
    ctx_spec = {
        "video_id": tf.io.FixedLenFeature([], tf.string),
        "clip_start": tf.io.FixedLenFeature([], tf.int64),
        "frame_stride": tf.io.FixedLenFeature([], tf.int64, default_value=1),
        "height": tf.io.FixedLenFeature([], tf.int64), "width": tf.io.FixedLenFeature([], tf.int64),
        "fps": tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
        "num_frames": tf.io.FixedLenFeature([], tf.int64),
        "frame_format": tf.io.FixedLenFeature([], tf.string, default_value=b"png"),
        "flow_dtype": tf.io.FixedLenFeature([], tf.string, default_value=b""),
        "num_tracks": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "tracks": tf.io.FixedLenFeature([], tf.string, default_value=b""),
        "visible": tf.io.FixedLenFeature([], tf.string, default_value=b""),
        "query_points": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    }
    seq_spec = {"frames": tf.io.FixedLenSequenceFeature([], tf.string),
                "flow": tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
                "flow_valid": tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True)}
    ctx, seq = tf.io.parse_single_sequence_example(serialized, ctx_spec, seq_spec)
    return {**ctx, **seq}


def decode_record(parsed: Dict) -> Clip:
    """Eager/numpy decode of a parsed record (tests, tools; the pipeline decodes in TF)."""
    tf = fs.tf()
    g = lambda k: parsed[k].numpy() if hasattr(parsed[k], "numpy") else parsed[k]
    frames = np.stack([tf.io.decode_image(x, channels=3).numpy() for x in g("frames")])
    t, h, w = frames.shape[:3]
    clip = Clip(video_id=g("video_id").decode(), frames=frames, clip_start=int(g("clip_start")),
                frame_stride=int(g("frame_stride")), fps=float(g("fps")))
    if len(g("flow")):
        dt = np.dtype(g("flow_dtype").decode()).newbyteorder("<")
        clip.flow = np.stack([np.frombuffer(x, dt).reshape(h, w, 2) for x in g("flow")]).astype(np.float32)
        clip.flow_valid = np.stack([np.frombuffer(x, np.uint8).reshape(h, w) for x in g("flow_valid")]) > 0
    n = int(g("num_tracks"))
    if n:
        clip.tracks = np.frombuffer(g("tracks"), "<f4").reshape(n, t, 2).copy()
        clip.visible = np.frombuffer(g("visible"), np.uint8).reshape(n, t) > 0
        clip.query_points = np.frombuffer(g("query_points"), "<f4").reshape(n, 3).copy()
    return clip


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with fs.open_file(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ShardWriter:
    """Write records into size-bounded shards and a manifest; use as a context manager.

    Shards are written as `.NAME-00003.tfrecord.tmp` and renamed to `NAME-00003-of-00008.tfrecord`
    when all are complete; the manifest is written last. An interrupted run leaves only temporary
    names, never a shard or manifest that looks finished.
    """

    def __init__(self, out_dir: str, name: str = "clips", max_shard_bytes: int = 256 << 20,
                 extra: Optional[dict] = None):
        self.out_dir, self.name, self.max_bytes = out_dir, name, max_shard_bytes
        self.extra = dict(extra or {})
        fs.makedirs(out_dir)
        self._tmp: List[str] = []
        self._counts: List[int] = []
        self._writer = None
        self._bytes = 0
        self._valid_meaning: Optional[Tuple[str, str]] = None  # (meaning, first clip's video id)
        self.frames_per_video: Dict[str, int] = {}
        self.frame_sizes: set = set()  # (H, W) of the clips given to write_clip
        self.manifest: Optional[dict] = None  # set by close()

    def _open(self):
        tf = fs.tf()
        path = os.path.join(self.out_dir, f".{self.name}-{len(self._tmp):05d}.tfrecord.tmp")
        self._tmp.append(path)
        self._counts.append(0)
        self._writer = tf.io.TFRecordWriter(path)
        self._bytes = 0

    def write(self, record: bytes, video_id: str, source_frames: int) -> None:
        """Add one serialised record; `source_frames` new source frames of `video_id` it covers."""
        if self._writer is None or (self._bytes and self._bytes + len(record) > self.max_bytes):
            if self._writer is not None:
                self._writer.close()
            self._open()
        self._writer.write(record)
        self._bytes += len(record)
        self._counts[-1] += 1
        self.frames_per_video[video_id] = self.frames_per_video.get(video_id, 0) + source_frames

    def write_clip(self, clip: Clip, fmt: str = "png", source_frames: Optional[int] = None) -> None:
        n = len(clip.frames) * clip.frame_stride if source_frames is None else source_frames
        if clip.flow_gt_known is not None:  # stored as flow_valid, its meaning in the manifest
            if clip.flow_valid is None or not np.array_equal(clip.flow_gt_known, clip.flow_valid):
                raise ValueError(f"{clip.video_id}: flow_gt_known is stored as flow_valid and must equal it")
        if clip.flow_valid is not None:
            self._check_valid_meaning(clip)
        self.frame_sizes.add(tuple(int(v) for v in clip.frames.shape[1:3]))
        self.write(clip_to_example(clip, fmt), clip.video_id, n)

    def _check_valid_meaning(self, clip: Clip) -> None:
        """One folder's flow_valid has one meaning (the manifest records it once): known ground
        truth, or a validity/occlusion mask that evaluation counts every pixel of."""
        means = GT_KNOWN if clip.flow_gt_known is not None else "mask"
        if self._valid_meaning is None:
            self._valid_meaning = (means, clip.video_id)
        first = self._valid_meaning
        if first[0] != means:
            what = {GT_KNOWN: "marks known ground truth", "mask": "is a validity mask"}
            raise ValueError(f"{clip.video_id}: its flow_valid {what[means]} but in {first[1]}, written "
                             f"earlier to {self.out_dir}, it {what[first[0]]}; write the two kinds to "
                             f"separate folders")
        if means == GT_KNOWN:
            self.extra["flow_valid_means"] = GT_KNOWN

    def close(self) -> dict:
        if self._writer is not None:
            self._writer.close()
        total = len(self._tmp)
        files = []
        for k, (tmp, count) in enumerate(zip(self._tmp, self._counts)):
            final = os.path.join(self.out_dir, f"{self.name}-{k:05d}-of-{total:05d}.tfrecord")
            fs.replace(tmp, final)
            files.append({"file": os.path.basename(final), "records": count,
                          "bytes": fs.size(final), "sha256": sha256_file(final)})
        manifest = {"schema": SCHEMA, "name": self.name, "files": files,
                    "records": sum(f["records"] for f in files),
                    "frames": sum(self.frames_per_video.values()),
                    "videos": dict(sorted(self.frames_per_video.items())),
                    **({"frame_sizes": sorted(map(list, self.frame_sizes))} if self.frame_sizes else {}), **self.extra}
        fs.write_json_atomic(os.path.join(self.out_dir, MANIFEST), manifest)
        self.manifest = manifest
        return manifest

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        elif self._writer is not None:
            self._writer.close()  # leave only temporary names behind


def load_manifest(shard_dir: str) -> dict:
    path = os.path.join(shard_dir, MANIFEST)
    if not fs.isdir(shard_dir):
        raise ShardError(f"{shard_dir}: shard folder not found")
    if not fs.exists(path):
        raise ShardError(f"{path}: missing; {shard_dir} is not a finished shard folder "
                         f"(written by refine_jax ingest or a data generator)")
    try:
        return fs.read_json(path)
    except json.JSONDecodeError as e:
        raise ShardError(f"{path}: not valid JSON ({e})") from None


def verify_shards(shard_dir: str, checksum: bool = True) -> List[str]:
    """Check every shard of the manifest exists with its size (and sha256); return their paths."""
    manifest = load_manifest(shard_dir)
    paths = []
    for entry in manifest["files"]:
        path = os.path.join(shard_dir, entry["file"])
        if not fs.exists(path):
            raise ShardError(f"{path}: shard listed in {MANIFEST} is missing")
        size = fs.size(path)
        if size != entry["bytes"]:
            raise ShardError(f"{path}: shard is {size} bytes, {MANIFEST} says {entry['bytes']} "
                             f"(truncated or replaced)")
        if checksum and sha256_file(path) != entry["sha256"]:
            raise ShardError(f"{path}: shard content does not match its sha256 in {MANIFEST} (corrupt)")
        paths.append(path)
    return paths


def read_file(path: str) -> Iterator[Clip]:
    """Every clip of one shard file, decoded to numpy; a corrupt file is named in the error."""
    for rec in _records(path):
        yield _decode(path, rec)


def _records(path: str):
    """The serialized records of one shard file, undecoded."""
    tf = fs.tf()
    try:
        yield from tf.data.TFRecordDataset(path)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise _corrupt(path, e) from None


def _decode(path: str, rec) -> Clip:
    tf = fs.tf()
    try:
        return decode_record(parse_example_tf(rec))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise _corrupt(path, e) from None


def _corrupt(path: str, e) -> ShardError:
    return ShardError(f"{path}: corrupt TFRecord shard ({e.message.splitlines()[0]})")


def read_clips(shard_dir: str, checksum: bool = True,
               keep: Optional[Callable[[int], bool]] = None) -> Iterator[Clip]:
    """The clips of a shard folder, in file order, decoded to numpy; with `keep`, only those whose
    index in the folder (0-based, across its files) it accepts, the rest never decoded."""
    gt_known = load_manifest(shard_dir).get("flow_valid_means") == GT_KNOWN
    records = ((path, rec) for path in verify_shards(shard_dir, checksum) for rec in _records(path))
    for index, (path, rec) in enumerate(records):
        if keep is not None and not keep(index):
            continue
        clip = _decode(path, rec)
        if gt_known and clip.flow_valid is not None:
            clip.flow_gt_known = clip.flow_valid
        yield clip
