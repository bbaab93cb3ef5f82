"""TFDS datasets: the four benchmarks and the procedural generator, built once, versioned and
checksummed, on a local disk or a gs:// data_dir, in the clip schema of data/shards.py.

  python -m refine_jax.data.tfds_datasets mpi_sintel/final --manual_dir=MPI-Sintel --data_dir=~/tensorflow_datasets
  python -m refine_jax.data.tfds_datasets tapvid/davis --manual_dir=DIR_WITH_tapvid_davis.pkl
  python -m refine_jax.data.tfds_datasets crohd --manual_dir=CroHD
  python -m refine_jax.data.tfds_datasets horse10 --manual_dir=Horse10
  python -m refine_jax.data.tfds_datasets procedural_video/target

(With apache-beam installed, `tfds build --imports=refine_jax.data.tfds_datasets mpi_sintel/final
--manual_dir=...` does the same; tensorflow-datasets 4.9's `tfds` command needs beam to start.)
Then anything that takes a shard folder takes `tfds:NAME[/CONFIG]:SPLIT[@DATA_DIR]`, e.g.
`--config.data.videos=tfds:mpi_sintel/final:train` (data/sources.py).

Features of every dataset (one example is one clip, as one shard record):
  video_id (text), clip_start, frame_stride, height, width (int64), fps (float32),
  frames: Sequence(Image) uint8 (T, H, W, 3), PNG (lossless: what the source decodes to),
  flow: float32 (T-1, H, W, 2) px, flow_valid: bool (T-1, H, W)   (0 pairs if no flow),
  tracks: float32 (N, T, 2) px (x, y), visible: bool (N, T), query_points: float32 (N, 3) (t, x, y)
  (N = 0 if no tracks). Splits: 'train' (Sintel, CroHD and Horse-10 training data, the procedural
  videos), 'test' (TAP-Vid).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Tuple

import numpy as np
import tensorflow_datasets as tfds

from refine_jax import cli
from refine_jax.data import benchmarks
from refine_jax.data.shards import Clip

_BYTES = tfds.features.Encoding.BYTES


def clip_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "video_id": tfds.features.Text(),
        "clip_start": np.int64, "frame_stride": np.int64, "fps": np.float32, "height": np.int64, "width": np.int64,
        "frames": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3), encoding_format="png")),
        "flow": tfds.features.Tensor(shape=(None, None, None, 2), dtype=np.float32, encoding=_BYTES),
        "flow_valid": tfds.features.Tensor(shape=(None, None, None), dtype=np.bool_, encoding=_BYTES),
        "tracks": tfds.features.Tensor(shape=(None, None, 2), dtype=np.float32, encoding=_BYTES),
        "visible": tfds.features.Tensor(shape=(None, None), dtype=np.bool_, encoding=_BYTES),
        "query_points": tfds.features.Tensor(shape=(None, 3), dtype=np.float32, encoding=_BYTES),
    })


def example(clip: Clip) -> dict:
    """A Clip as a TFDS example (the inverse of data/sources.clip_from_example)."""
    t, h, w = clip.frames.shape[:3]
    no_flow = clip.flow is None
    n = 0 if clip.tracks is None else len(clip.tracks)
    return {
        "video_id": clip.video_id, "clip_start": clip.clip_start, "frame_stride": clip.frame_stride,
        "fps": clip.fps, "height": h, "width": w, "frames": clip.frames,
        "flow": np.zeros((0, h, w, 2), np.float32) if no_flow else clip.flow.astype(np.float32),
        "flow_valid": np.zeros((0, h, w), bool) if no_flow else (
            np.ones(clip.flow.shape[:3], bool) if clip.flow_valid is None else clip.flow_valid.astype(bool)),
        "tracks": np.zeros((0, t, 2), np.float32) if n == 0 else clip.tracks.astype(np.float32),
        "visible": np.zeros((0, t), bool) if n == 0 else (
            np.ones((n, t), bool) if clip.visible is None else clip.visible.astype(bool)),
        "query_points": np.zeros((0, 3), np.float32) if n == 0 else (
            benchmarks.first_visible_queries(clip.tracks, np.ones((n, t), bool) if clip.visible is None
                                             else clip.visible)
            if clip.query_points is None else clip.query_points.astype(np.float32)),
    }


def _keyed(clips: Iterator[Clip]) -> Iterator[Tuple[str, dict]]:
    for clip in clips:
        yield f"{clip.video_id}@{clip.clip_start}", example(clip)


class _ClipBuilder(tfds.core.GeneratorBasedBuilder):
    """What every dataset here shares: the features and a homepage."""
    HOMEPAGE = ""

    def _info(self) -> tfds.core.DatasetInfo:
        # the readers' order (scenes, videos, clips), as in a shard folder, not TFDS's key hash
        return self.dataset_info_from_configs(features=clip_features(), homepage=self.HOMEPAGE,
                                              disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(dl_manager.manual_dir)}


class MpiSintel(_ClipBuilder):
    """MPI-Sintel training set, one example per scene with every pair's flow and occlusion."""
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="clean"), tfds.core.BuilderConfig(name="final")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Unpack MPI-Sintel-complete (training/{clean,final,flow,occlusions}) here."
    HOMEPAGE = "http://sintel.is.tue.mpg.de/"

    def _generate_examples(self, root):
        return _keyed(benchmarks.sintel_clips(os.fspath(root), passes=(self.builder_config.name,)))


class Tapvid(_ClipBuilder):
    """TAP-Vid pickles (DAVIS, RGB-Stacking: one file; Kinetics: a folder of pickles), points in
    pixels, queries at each track's first visible frame."""
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in ("davis", "rgb_stacking", "kinetics")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Place tapvid_davis.pkl, tapvid_rgb_stacking.pkl or the folder "
                                    "tapvid_kinetics/ (of .pkl files) here.")
    HOMEPAGE = "https://tapvid.github.io/"

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples(dl_manager.manual_dir)}

    def _generate_examples(self, root):
        name = self.builder_config.name
        path = os.path.join(os.fspath(root), f"tapvid_{name}")
        files = ([os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".pkl")]
                 if os.path.isdir(path) else [path + ".pkl"])
        for f in files:
            yield from _keyed(benchmarks.tapvid_clips(f))


class Crohd(_ClipBuilder):
    """CroHD (HT21) training videos: 8 frames every 3, the heads present in all of them."""
    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Unpack HT21 and HT21Labels (HT21/train, HT21Labels/train) here."
    HOMEPAGE = "https://motchallenge.net/data/Head_Tracking_21/"

    def _generate_examples(self, root):
        return _keyed(benchmarks.crohd_clips(os.fspath(root)))


class Horse10(_ClipBuilder):
    """Horse-10: one example per horse, its labelled frames in order and the 22 keypoint tracks."""
    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Unpack Horse-10 (labeled-data/, annotations/*.json) here."
    HOMEPAGE = "http://www.mackenziemathislab.org/horse10"

    def _generate_examples(self, root):
        args, kwargs = benchmarks.reader_args("horse10", os.fspath(root))
        return _keyed(benchmarks.horse10_clips(*args, **kwargs))


@dataclasses.dataclass
class ProceduralConfig(tfds.core.BuilderConfig):
    """A procedural domain (demo/synthetic.py) at a size; `shifts` '' keeps the preset's."""
    preset: str = "source"
    shifts: str = ""
    videos: int = 64
    frames: int = 8
    height: int = 256
    width: int = 320
    tracks: int = 64
    seed: int = 0


class ProceduralVideo(_ClipBuilder):
    """The procedural generator's domains with exact flow, occlusion and tracks."""
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [ProceduralConfig(name="source", preset="source"),
                       ProceduralConfig(name="target", preset="target", seed=1)]

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(None)}

    def _generate_examples(self, root):
        from refine_jax.demo import shifts as shifts_lib, synthetic
        c = self.builder_config
        dom = synthetic.domain(c.preset, shifts_lib.parse(c.shifts) if c.shifts else None)
        for i in range(c.videos):
            clip = synthetic.render_video(dom, synthetic.video_seed(c.seed, i), c.frames, c.height, c.width, c.tracks,
                                          video_id=f"{c.name}-{c.seed}-{i:05d}")
            yield clip.video_id, example(clip)


BUILDERS = {"mpi_sintel": MpiSintel, "tapvid": Tapvid, "crohd": Crohd, "horse10": Horse10,
            "procedural_video": ProceduralVideo}


def build(name: str, manual_dir: str = "", data_dir: str = "") -> tfds.core.DatasetBuilder:
    """Build NAME[/CONFIG] (once; an existing build is kept) and return its builder."""
    builder = tfds.builder(name, data_dir=data_dir or None)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None))
    return builder


@cli.guarded
def main(argv) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m refine_jax.data.tfds_datasets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help=f"NAME[/CONFIG]: {', '.join(BUILDERS)}")
    p.add_argument("--manual_dir", default="", help="the downloaded dataset (benchmarks)")
    p.add_argument("--data_dir", default="", help="TFDS data_dir (default ~/tensorflow_datasets; gs:// works)")
    a = p.parse_args(argv)
    if a.name.split("/")[0] not in BUILDERS:
        raise ValueError(f"{a.name}: unknown dataset; expected one of {', '.join(BUILDERS)}[/CONFIG]")
    b = build(a.name, a.manual_dir, a.data_dir)
    splits = ", ".join(f"{k}: {v.num_examples} examples in {v.num_shards} shards" for k, v in b.info.splits.items())
    print(f"built {b.info.full_name} in {b.data_dir} ({splits})")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
