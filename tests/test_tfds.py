"""TFDS datasets built from the fabricated benchmark files and the generator; the pipeline, label,
train and eval read `tfds:NAME[/CONFIG]:SPLIT` as they read shard folders, with the same numbers."""
import json

import numpy as np
import pytest

import fabricate
from refine_jax import checkpoints
from refine_jax import pipeline as stage_pipeline
from refine_jax.data import benchmarks, pipeline, shards, sources, tfds_datasets
from refine_jax.demo import synthetic
from refine_jax.models.raft import RAFTConfig
from test_recipes import load_config

RNG = np.random.default_rng(1)


def _same_clips(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.video_id == y.video_id and x.clip_start == y.clip_start
        for k in ("frames", "flow", "flow_valid", "tracks", "visible", "query_points"):
            u, v = getattr(x, k), getattr(y, k)
            assert (u is None) == (v is None), k
            if u is not None:
                np.testing.assert_array_equal(u, v, err_msg=k)


def _batches(source, **kw):
    cfg = pipeline.PipelineConfig((source,), shuffle=False, epochs=1, **kw)
    return list(pipeline.ClipIterator(cfg))


@pytest.mark.parametrize("kind", ["tapvid", "crohd", "horse10"])
def test_track_benchmarks_build_and_read_like_shards(kind, tmp_path):
    manual = tmp_path / "manual"
    if kind == "tapvid":
        fabricate.tapvid(str(manual / "tapvid_davis.pkl"), RNG, t=8, h=16, w=20)
        name, args, kw = "tapvid/davis", (str(manual / "tapvid_davis.pkl"),), {}
    elif kind == "crohd":
        fabricate.crohd(str(manual), RNG, frames=24)
        name, args, kw = "crohd", (str(manual),), {}
    else:
        fabricate.horse10(str(manual), RNG)
        name = "horse10"
        args, kw = benchmarks.reader_args("horse10", str(manual))
    b = tfds_datasets.build(name, str(manual), str(tmp_path / "tfds"))
    split = "test" if kind == "tapvid" else "train"
    spec = f"tfds:{name}:{split}@{tmp_path / 'tfds'}"
    benchmarks.write_benchmark(kind, str(tmp_path / "shards"), *args, **kw)
    _same_clips(list(sources.read_clips(spec)), list(shards.read_clips(str(tmp_path / "shards"))))
    assert b.info.splits[split].num_examples == shards.load_manifest(str(tmp_path / "shards"))["records"]
    clip_len = 2 if kind == "horse10" else 3
    a = _batches(spec, clip_len=clip_len, max_tracks=32)
    s = _batches(str(tmp_path / "shards"), clip_len=clip_len, max_tracks=32)
    assert len(a) == len(s) > 0
    for x, y in zip(a, s):
        for k in ("frames", "tracks", "visible", "track_valid", "clip_start"):
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_procedural_builder_and_host_split(tmp_path):
    cfg = tfds_datasets.ProceduralConfig(name="tiny", preset="target", videos=3, frames=3, height=32, width=40,
                                         tracks=4, seed=2)
    b = tfds_datasets.ProceduralVideo(config=cfg, data_dir=str(tmp_path))
    b.download_and_prepare()
    clips = list(sources.read_clips(f"tfds:procedural_video/tiny:train@{tmp_path}"))
    ref = synthetic.render_video(synthetic.domain("target"), 2 * 100_003 + 1, 3, 32, 40, 4)
    np.testing.assert_array_equal(clips[1].frames, ref.frames)
    np.testing.assert_array_equal(clips[1].flow, ref.flow)
    np.testing.assert_array_equal(clips[1].tracks, ref.tracks)
    spec = f"tfds:procedural_video/tiny:train@{tmp_path}"
    one = [v for b_ in _batches(spec, clip_len=3, with_flow=True) for v in b_["video_id"]]
    two = [[v for b_ in pipeline.ClipIterator(pipeline.PipelineConfig((spec,), clip_len=3, shuffle=False, epochs=1),
                                              process_index=i, process_count=2) for v in b_["video_id"]]
           for i in range(2)]
    assert sorted(two[0] + two[1]) == sorted(one) and len(one) == 3 and two[0] and two[1]
    with pytest.raises(FileNotFoundError, match="not built"):
        list(sources.read_clips(f"tfds:procedural_video/source:train@{tmp_path / 'empty'}"))
    with pytest.raises(ValueError, match="expected tfds:NAME"):
        sources.TfdsSpec.parse("tfds:nosplit")


@pytest.mark.slow
def test_sintel_through_label_train_eval_equals_the_shard_route(tmp_path):
    clip = synthetic.render_video(synthetic.domain("target"), 3, 3, 128, 136)
    fabricate.sintel(str(tmp_path / "Sintel"), clip.frames, clip.flow, pas="final")
    tfds_datasets.build("mpi_sintel/final", str(tmp_path / "Sintel"), str(tmp_path / "tfds"))
    benchmarks.write_benchmark("sintel", str(tmp_path / "shards"), str(tmp_path / "Sintel"), passes=("final",))
    checkpoints.init_model(str(tmp_path / "init"), RAFTConfig(small=True))
    results = {}
    for route, videos in (("tfds", f"tfds:mpi_sintel/final:train@{tmp_path / 'tfds'}"),
                          ("shards", str(tmp_path / "shards"))):
        c = load_config("raft")
        c.stages = ("label", "train", "eval")
        c.init, c.data.videos = str(tmp_path / "init"), videos
        c.label.update({"iters": 1, "num_devices": 1, "beta": 5.0, "color_thresh": 0.1})
        c.augment.crop = (128, 128)
        c.train.update({"steps": 2, "batch_size": 2, "iters": 1, "save_every": 2, "num_devices": 2})
        c.eval.update({"iters": 1, "curve": False, "proxies": False})  # the routes' metrics, not the verdict
        stage_pipeline.run(c, str(tmp_path / route))
        labels = json.loads((tmp_path / route / "labels" / "manifest.json").read_text())
        results[route] = (labels["stats"], json.loads((tmp_path / route / "eval" / "metrics.json").read_text()))
    (ls_t, m_t), (ls_s, m_s) = results["tfds"], results["shards"]
    for k in ("kept", "total", "samples", "gt_error_all", "gt_error_kept"):
        assert ls_t[k] == ls_s[k], k
    assert m_t["before"] == m_s["before"] and m_t["after"] == m_s["after"]
