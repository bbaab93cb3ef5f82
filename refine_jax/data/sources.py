"""Where clips come from: a shard folder (data/shards.py) or a TFDS dataset.

A source is a shard folder (local or gs://) or `tfds:NAME[/CONFIG]:SPLIT[@DATA_DIR]`, e.g.
`tfds:mpi_sintel/final:train` or `tfds:procedural_video/target:train[:8]@gs://bucket/tfds`
(data/tfds_datasets.py builds them; without @DATA_DIR, TFDS's default or $TFDS_DATA_DIR).
Several sources are joined with commas. Every stage that reads videos goes through here:
- `read_clips(source)`: decoded numpy Clips (eval, tools);
- `units(source)`: resumable pieces for the label stage (a shard file; a TFDS shard's sub-split);
- `tfds_records(spec, ...)`: a TFDS split as the pipeline's encoded records (data/pipeline.py).
"""
from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Callable, Iterator, List, Optional

import numpy as np

from refine_jax import fs
from refine_jax.data import shards
from refine_jax.data.shards import Clip

PREFIX = "tfds:"
_SKIP = ("frames", "flow", "flow_valid", "tracks", "visible", "query_points")


def split_sources(text) -> List[str]:
    """'a,tfds:b:train' -> ['a', 'tfds:b:train'] (a list or tuple is returned as a list)."""
    if isinstance(text, str):
        return [v.strip() for v in text.split(",") if v.strip()]
    return [v for v in text if v]


def check_holdout(every: int, name: str = "eval.holdout") -> None:
    """A holdout is 0 (nothing held out) or at least 2 (1 would hold out every clip)."""
    if every < 0 or every == 1:
        raise ValueError(f"{name} must be 0 (no clip held out of training) or at least 2 (one clip in that "
                         f"many), got {every}")


def held_out(index: int, every: int) -> bool:
    """Whether the `index`-th clip of a source (0-based, in the source's order) is held out of
    labelling and training by eval.holdout = `every`: clips every//2, every//2 + every, ... (the
    middle of each run of `every`, so that a source of three clips already holds one out); none
    when `every` is 0."""
    return every > 0 and index % every == every // 2


def is_tfds(source: str) -> bool:
    return source.startswith(PREFIX)


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    name: str                       # NAME[/CONFIG]
    split: str                      # a TFDS split string: train, train[:50%], ...
    data_dir: Optional[str] = None

    @classmethod
    def parse(cls, source: str) -> "TfdsSpec":
        m = re.fullmatch(r"tfds:([\w/.-]+):([^@]+)(?:@(.+))?", source)
        if not m:
            raise ValueError(f"{source}: expected tfds:NAME[/CONFIG]:SPLIT[@DATA_DIR]")
        return cls(m.group(1), m.group(2), m.group(3))

    def __str__(self) -> str:
        return f"{PREFIX}{self.name}:{self.split}" + (f"@{self.data_dir}" if self.data_dir else "")


def builder(spec: TfdsSpec):
    """The prepared TFDS builder of a spec; a clear error if it is not built."""
    import tensorflow_datasets as tfds
    importlib.import_module("refine_jax.data.tfds_datasets")  # registers the datasets with TFDS
    try:
        b = tfds.builder(spec.name, data_dir=spec.data_dir)
    except Exception as e:  # tfds raises its own DatasetNotFoundError / registration errors
        raise ValueError(f"{spec}: no such TFDS dataset ({' '.join(str(e).split())[:200]})") from None
    if not b.is_prepared():
        raise FileNotFoundError(f"{spec}: not built in {b.data_dir}; build it with python -m "
                                f"refine_jax.data.tfds_datasets {spec.name} --manual_dir=...")
    return b


def _host_split(spec: TfdsSpec, process_index: int, process_count: int):
    if process_count == 1:
        return spec.split
    import tensorflow_datasets as tfds
    return tfds.even_splits(spec.split, n=process_count, drop_remainder=False)[process_index]


def clip_from_example(ex: dict) -> Clip:
    """A decoded TFDS example (numpy) -> Clip (None for the absent flow or tracks)."""
    vid = ex["video_id"]
    clip = Clip(vid.decode() if isinstance(vid, bytes) else str(vid), np.asarray(ex["frames"]),
                clip_start=int(ex["clip_start"]), frame_stride=int(ex["frame_stride"]), fps=float(ex["fps"]))
    if len(ex["flow"]):
        clip.flow, clip.flow_valid = np.asarray(ex["flow"], np.float32), np.asarray(ex["flow_valid"], bool)
    if len(ex["tracks"]):
        clip.tracks, clip.visible = np.asarray(ex["tracks"], np.float32), np.asarray(ex["visible"], bool)
        clip.query_points = np.asarray(ex["query_points"], np.float32)
    return clip


def _tfds_clips(spec: TfdsSpec) -> Iterator[Clip]:
    import tensorflow_datasets as tfds
    ds = builder(spec).as_dataset(split=spec.split, shuffle_files=False)
    for ex in tfds.as_numpy(ds):
        yield clip_from_example(ex)


def read_clips(source: str, checksum: bool = True, keep: Optional[Callable[[int], bool]] = None) -> Iterator[Clip]:
    """The clips of one source, decoded, in order; with `keep`, only those whose index in the
    source (0-based) it accepts (a shard folder's others are skipped undecoded)."""
    if is_tfds(source):
        for index, clip in enumerate(_tfds_clips(TfdsSpec.parse(source))):
            if keep is None or keep(index):
                yield clip
    else:
        yield from shards.read_clips(source, checksum, keep)


@dataclasses.dataclass(frozen=True)
class Unit:
    """A piece of a source the label stage finishes (or redoes) as a whole: `name` is file-name
    safe and stable, `source` a shard file or a tfds spec of a sub-split."""
    name: str
    source: str
    records: Optional[int] = None   # clips in it, where the manifest or TFDS says

    def clips(self) -> Iterator[Clip]:
        if is_tfds(self.source):
            return _tfds_clips(TfdsSpec.parse(self.source))
        return shards.read_file(self.source)


def first_indices(units_of_source: List[Unit]) -> List[int]:
    """The index within its source of each unit's first clip (the clips of the units before it),
    from the units' record counts; a unit after one whose count is unknown cannot be placed."""
    out, n = [], 0
    for k, u in enumerate(units_of_source):
        out.append(n)
        if u.records is None and k + 1 < len(units_of_source):
            raise ValueError(f"{u.source}: its clip count is not recorded (manifest 'records'), so the clips of "
                             f"the units after it cannot be numbered for eval.holdout")
        n += u.records or 0
    return out


def units(source: str) -> List[Unit]:
    """A shard folder's files (checked against the manifest), or a TFDS split cut into as many
    even sub-splits as it has shards."""
    import os
    if not is_tfds(source):
        counts = {f["file"]: f.get("records") for f in shards.load_manifest(source).get("files", [])}
        return [Unit(os.path.basename(p).removesuffix(".tfrecord"), p, counts.get(os.path.basename(p)))
                for p in shards.verify_shards(source)]
    spec = TfdsSpec.parse(source)
    info = builder(spec).info.splits[spec.split]
    stem = re.sub(r"[^\w.-]+", "-", f"{spec.name}-{spec.split}").strip("-")
    if "[" in spec.split or info.num_shards <= 1:  # a slice already: one unit
        return [Unit(stem, source)]
    n, k = info.num_examples, info.num_shards
    return [Unit(f"{stem}-{i:05d}-of-{k:05d}",
                 str(dataclasses.replace(spec, split=f"{spec.split}[{i * n // k}:{(i + 1) * n // k}]")),
                 (i + 1) * n // k - i * n // k)
            for i in range(k)]


def tfds_records(source: str, process_index: int = 0, process_count: int = 1):
    """A TFDS split (this host's even share of it) as the encoded records of the shard schema
    (shards.parse_example_tf): frames stay PNG/JPEG bytes and flow/tracks raw bytes until the
    pipeline decodes the windows it keeps."""
    import tensorflow_datasets as tfds
    tf = fs.tf()
    spec = TfdsSpec.parse(source)
    ds = builder(spec).as_dataset(split=_host_split(spec, process_index, process_count), shuffle_files=False,
                                  decoders={k: tfds.decode.SkipDecoding() for k in _SKIP})

    def per_pair(raw, shape, itemsize):
        """The raw bytes of a (P, ...) array cut into P strings, one per pair (as shards store flow)."""
        p = shape[0]
        size = tf.reduce_prod(shape[1:]) * itemsize
        return tf.strings.substr(tf.fill([p], raw), tf.range(p) * size, tf.fill([p], size))

    def record(ex):
        n_pairs = ex["flow"]["shape"][0]
        return {"video_id": ex["video_id"], "clip_start": ex["clip_start"], "frame_stride": ex["frame_stride"],
                "height": ex["height"], "width": ex["width"], "fps": ex["fps"],
                "num_frames": tf.cast(tf.shape(ex["frames"])[0], tf.int64), "frame_format": tf.constant(b"png"),
                "flow_dtype": tf.where(n_pairs > 0, tf.constant(b"float32"), tf.constant(b"")),
                "num_tracks": tf.cast(ex["tracks"]["shape"][0], tf.int64), "tracks": ex["tracks"]["value"],
                "visible": ex["visible"]["value"],
                "query_points": ex["query_points"],  # one unknown dimension: TFDS keeps no shape for it
                "frames": ex["frames"], "flow": per_pair(ex["flow"]["value"], ex["flow"]["shape"], 4),
                "flow_valid": per_pair(ex["flow_valid"]["value"], ex["flow_valid"]["shape"], 1)}
    return ds.map(record)
