"""Video shards, the tf.data pipeline, ingest, procedural ground truth."""
import dataclasses
import itertools
import json
import os

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from refine_jax.data import ingest as ingest_lib, pipeline, shards
from refine_jax.demo import synthetic
from refine_jax.demo import shifts as shifts_lib
from refine_jax.data import frames as frames_lib


def _clip(i, t=10, h=16, w=20, gt=True):
    rng = np.random.default_rng(i)
    c = shards.Clip(f"vid{i}", rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8), clip_start=3 * i,
                    fps=25.0)
    if gt:
        c.flow = rng.normal(size=(t - 1, h, w, 2)).astype(np.float32)
        c.flow_valid = rng.uniform(size=(t - 1, h, w)) > 0.3
        c.tracks = rng.uniform(0, 15, (5, t, 2)).astype(np.float32)
        c.visible = rng.uniform(size=(5, t)) > 0.2
        c.query_points = rng.uniform(0, 9, (5, 3)).astype(np.float32)
    return c


def _write(tmp_path, clips, max_bytes=1 << 30, name="clips"):
    with shards.ShardWriter(str(tmp_path), name, max_bytes) as w:
        for c in clips:
            w.write_clip(c, "png")
    return w.manifest


def test_write_then_read_is_identical(tmp_path):
    clips = [_clip(i) for i in range(5)]
    m = _write(tmp_path, clips, max_bytes=30_000)
    assert len(m["files"]) > 1 and m["records"] == 5
    assert m["files"][0]["file"] == f"clips-00000-of-{len(m['files']):05d}.tfrecord"
    assert m["frames"] == 50 and m["videos"]["vid3"] == 10
    assert not [f for f in os.listdir(tmp_path) if "tmp" in f]
    back = list(shards.read_clips(str(tmp_path)))
    for a, b in zip(clips, back):
        assert a.video_id == b.video_id and a.clip_start == b.clip_start and b.fps == 25.0
        for k in ("frames", "flow", "flow_valid", "tracks", "visible", "query_points"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def test_read_with_keep_decodes_only_the_kept_clips(tmp_path, monkeypatch):
    """Held-out evaluation keeps one clip in N by its index across a folder's files; the others are
    skipped before they are decoded."""
    from refine_jax.data import sources
    clips = [_clip(i) for i in range(5)]
    assert len(_write(tmp_path, clips, max_bytes=30_000)["files"]) > 1
    decoded = []
    real = shards.decode_record
    monkeypatch.setattr(shards, "decode_record", lambda parsed: decoded.append(1) or real(parsed))
    back = list(sources.read_clips(str(tmp_path), keep=lambda i: i in (1, 3)))
    assert [c.video_id for c in back] == ["vid1", "vid3"] and len(decoded) == 2
    np.testing.assert_array_equal(back[1].frames, clips[3].frames)
    assert list(sources.read_clips(str(tmp_path), keep=lambda i: False)) == [] and len(decoded) == 2


def test_missing_and_corrupt_shards_are_named(tmp_path):
    _write(tmp_path, [_clip(i) for i in range(4)], max_bytes=30_000)
    m = json.loads((tmp_path / "manifest.json").read_text())
    victim = tmp_path / m["files"][1]["file"]
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF  # flipped byte, same size
    victim.write_bytes(bytes(data))
    with pytest.raises(shards.ShardError, match=f"{victim.name}: shard content does not match its sha256"):
        shards.verify_shards(str(tmp_path))
    with pytest.raises(shards.ShardError, match=f"{victim.name}: corrupt TFRecord shard"):
        list(shards.read_clips(str(tmp_path), checksum=False))  # TFRecord CRC catches it too
    victim.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(shards.ShardError, match=f"{victim.name}: shard is .* bytes.*truncated"):
        shards.verify_shards(str(tmp_path))
    victim.unlink()
    with pytest.raises(shards.ShardError, match=f"{victim.name}: shard listed in manifest.json is missing"):
        pipeline.ClipIterator(pipeline.PipelineConfig((str(tmp_path),)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(shards.ShardError, match="manifest.json: missing"):
        shards.load_manifest(str(tmp_path / "empty"))


def test_flow_read_from_records_without_flow_is_named(tmp_path):
    """A user's ingested footage given as training data for flow: one sentence, not 'corrupt'."""
    _write(tmp_path, [_clip(i, gt=False) for i in range(2)], name="mine")
    cfg = pipeline.PipelineConfig((str(tmp_path),), clip_len=2, hop=1, batch_size=2, with_flow=True)
    with pytest.raises(shards.ShardError, match=r"mine-00000-of-00001.tfrecord: a record carries no flow, and "
                                                r"training a flow model needs flow in every record"):
        next(iter(pipeline.ClipIterator(cfg)))


def test_a_shard_folder_without_records_is_named(tmp_path):
    """What a label stage that kept no label leaves: its shard file, empty; not 'too short'."""
    (tmp_path / "labels-00000-of-00001.labels.tfrecord").write_bytes(b"")
    (tmp_path / "manifest.json").write_text(json.dumps({"records": 0, "files": [
        {"file": "labels-00000-of-00001.labels.tfrecord", "bytes": 0, "records": 0,
         "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}]}))
    with pytest.raises(ValueError, match=f"{tmp_path}: no record to read \\(a label stage that kept no label"):
        next(iter(pipeline.ClipIterator(pipeline.PipelineConfig((str(tmp_path),), clip_len=8))))


def test_clips_cut_at_stride_with_gt(tmp_path):
    c = _clip(0, t=12)
    _write(tmp_path, [c])
    cfg = pipeline.PipelineConfig((str(tmp_path),), clip_len=4, frame_stride=3, hop=2, shuffle=False,
                                  epochs=1, max_tracks=8)
    batches = list(pipeline.ClipIterator(cfg))
    # windows start at 0, 2 (span 10 of 12 frames): frames 0,3,6,9 and 2,5,8,11
    assert [int(b["clip_start"][0]) for b in batches] == [0, 2]
    np.testing.assert_array_equal(batches[1]["frames"][0], c.frames[[2, 5, 8, 11]])
    np.testing.assert_array_equal(batches[1]["tracks"][0, :5], c.tracks[:, [2, 5, 8, 11]])
    np.testing.assert_array_equal(batches[1]["visible"][0, :5], c.visible[:, [2, 5, 8, 11]])
    assert batches[1]["track_valid"][0].tolist() == [True] * 5 + [False] * 3
    cfg = pipeline.PipelineConfig((str(tmp_path),), clip_len=3, shuffle=False, epochs=1, with_flow=True)
    b = list(pipeline.ClipIterator(cfg))
    assert len(b) == 4 and b[1]["flow"].shape == (1, 2, 16, 20, 2)
    np.testing.assert_array_equal(b[1]["flow"][0], c.flow[3:5])
    np.testing.assert_array_equal(b[1]["flow_valid"][0], c.flow_valid[3:5])


def test_resize_scales_ground_truth(tmp_path):
    c = _clip(1, t=4, h=16, w=20)
    c.flow[:] = 2.0
    c.tracks[:] = np.array([9.5, 7.5])
    _write(tmp_path, [c])
    cfg = pipeline.PipelineConfig((str(tmp_path),), clip_len=2, size=(32, 10), shuffle=False, epochs=1,
                                  with_flow=True, max_tracks=5)
    b = next(iter(pipeline.ClipIterator(cfg)))
    assert b["frames"].shape == (1, 2, 32, 10, 3)
    np.testing.assert_allclose(b["flow"][0, 0, 5, 5], [1.0, 4.0], atol=1e-5)  # x halves, y doubles
    np.testing.assert_allclose(b["tracks"][0, 0, 0], [(9.5 + .5) / 2 - .5, (7.5 + .5) * 2 - .5], atol=1e-5)


def test_frames_of_several_sizes_batch_as_their_common_centre(tmp_path):
    small, large = _clip(1, t=2, h=16, w=20), _clip(2, t=2, h=19, w=26)  # KITTI's scenes differ by a few px
    m = _write(tmp_path, [small, large])
    assert m["frame_sizes"] == [[16, 20], [19, 26]]
    cfg = pipeline.PipelineConfig((str(tmp_path),), clip_len=2, batch_size=2, shuffle=False, epochs=1,
                                  with_flow=True, max_tracks=5)
    b = next(iter(pipeline.ClipIterator(cfg)))
    assert b["frames"].shape == (2, 2, 16, 20, 3) and b["flow"].shape == (2, 1, 16, 20, 2)
    k = list(b["video_id"]).index(b"vid2")  # the larger clip: rows 1..16, columns 3..22
    np.testing.assert_array_equal(b["frames"][k], large.frames[:, 1:17, 3:23])
    np.testing.assert_array_equal(b["flow"][k, 0], large.flow[0, 1:17, 3:23])
    np.testing.assert_array_equal(b["flow_valid"][k, 0], large.flow_valid[0, 1:17, 3:23])
    np.testing.assert_allclose(b["tracks"][k], large.tracks - np.array([3.0, 1.0]), atol=1e-6)
    np.testing.assert_array_equal(b["frames"][1 - k], small.frames)


def test_host_split_covers_every_file_once(tmp_path):
    files = [f"f{i:02d}" for i in range(11)]
    for hosts in (1, 2, 4):
        parts = [pipeline.host_files(files, i, hosts) for i in range(hosts)]
        assert sorted(sum(parts, [])) == files
    with pytest.raises(ValueError, match="cannot be split over 4 hosts"):
        pipeline.host_files(files[:3], 0, 4)
    _write(tmp_path, [_clip(i, gt=False) for i in range(8)], max_bytes=9_000)
    n_files = len(json.loads((tmp_path / "manifest.json").read_text())["files"])
    assert n_files >= 4
    seen = []
    for hosts in (1, 2, 4):
        ids = []
        for i in range(hosts):
            cfg = pipeline.PipelineConfig((str(tmp_path),), clip_len=10, shuffle=False, epochs=1)
            ids += [b["video_id"][0] for b in pipeline.ClipIterator(cfg, process_index=i, process_count=hosts)]
        seen.append(sorted(ids))
    assert seen[0] == seen[1] == seen[2] and len(seen[0]) == 8


def test_deterministic_and_resumable(tmp_path):
    _write(tmp_path, [_clip(i, t=8, gt=False) for i in range(6)], max_bytes=8_000)
    cfg = pipeline.PipelineConfig((str(tmp_path),), clip_len=4, batch_size=2, seed=7, shuffle_buffer=8)
    take = lambda it, n: [(tuple(b["video_id"]), tuple(b["clip_start"])) for b in itertools.islice(it, n)]
    full = take(pipeline.ClipIterator(cfg), 15)  # 6 batches per epoch -> crosses two epoch ends
    assert full == take(pipeline.ClipIterator(cfg), 15)
    assert full[:6] != full[6:12]  # each epoch has its own order
    it = pipeline.ClipIterator(cfg)
    first = take(it, 7)
    state = it.state()
    assert state == {"epoch": 1, "sample": 2}
    resumed = take(pipeline.ClipIterator(cfg, state=state), 8)
    assert first + resumed == full


def test_ingest_mp4_folder_and_bad_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    video = (rng.uniform(0, 255, (1, 1, 3)) + np.zeros((12, 32, 48, 3))).astype(np.uint8)
    src = tmp_path / "src"
    src.mkdir()
    frames_lib.write_video(str(src / "a.mp4"), video, fps=12)
    folder = src / "b"
    folder.mkdir()
    from PIL import Image
    for i in range(7):
        Image.fromarray(video[i]).save(folder / f"{i:03d}.png")
    (src / "broken.mp4").write_bytes(b"\x00\x01garbage" * 100)
    out = tmp_path / "shards"
    rc = ingest_lib.main([f"--videos={src}", f"--out={out}", "--clip_len=3", "--stride=2",
                          "--size=16,24", "--format=png"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "warning: skipping" in err and "broken.mp4" in err and "skipped 1" in err
    m = json.loads((out / "manifest.json").read_text())
    assert m["skipped"][0].endswith("broken.mp4") and m["records"] == 2 + 1  # a: 6 kept -> 2; b: 4 -> 1
    clips = list(shards.read_clips(str(out)))
    assert {c.video_id for c in clips} == {"a", "b"}
    a = [c for c in clips if c.video_id == "a"]
    assert a[1].clip_start == 6 and a[1].frame_stride == 2 and a[0].frames.shape == (3, 16, 24, 3)
    assert abs(a[0].fps - 6.0) < 1e-6


def test_synthetic_ground_truth_is_exact():
    clip = synthetic.render_video(synthetic.PRESETS["source"], 5, 6, 64, 80, num_tracks=40)
    h, w = 64, 80
    yy, xx = np.mgrid[0:h, 0:w]
    for t in range(5):
        f, v = clip.flow[t], clip.flow_valid[t]
        warp = np.stack([map_coordinates(clip.frames[t + 1][..., k].astype(float),
                                         [yy + f[..., 1], xx + f[..., 0]], order=1) for k in range(3)], -1)
        err = np.abs(warp - clip.frames[t]).mean(-1)
        still = np.abs(clip.frames[t + 1].astype(float) - clip.frames[t]).mean(-1)
        moving = v & (np.linalg.norm(f, axis=-1) > 1.5)  # sharp textures interpolate to ~1 grey level
        assert v.mean() > 0.8 and np.median(err[v]) < 1.0, (t, np.median(err[v]))
        assert not moving.any() or err[moving].mean() < 0.3 * still[moving].mean(), t
    # tracks land on the same texture point: the colour at the track matches the query's colour
    q = clip.query_points
    c0 = np.stack([map_coordinates(clip.frames[0][..., k].astype(float), [q[:, 2], q[:, 1]], order=1)
                   for k in range(3)], -1)
    for t in range(1, 6):
        vis = clip.visible[:, t]
        ct = np.stack([map_coordinates(clip.frames[t][..., k].astype(float),
                                       [clip.tracks[vis, t, 1], clip.tracks[vis, t, 0]], order=1)
                       for k in range(3)], -1)
        assert np.median(np.abs(ct - c0[vis])) < 2.0
    np.testing.assert_allclose(clip.tracks[:, 0], q[:, 1:], atol=1e-4)


def test_target_shifts_change_appearance_not_geometry(tmp_path):
    src = synthetic.render_video(synthetic.PRESETS["source"], 1, 4, 64, 80, num_tracks=16)
    tgt = synthetic.render_video(synthetic.PRESETS["target"], 1, 4, 64, 80, num_tracks=16)
    for k in ("flow", "flow_valid", "tracks", "visible", "query_points"):
        np.testing.assert_array_equal(getattr(src, k), getattr(tgt, k), err_msg=k)
    assert np.abs(src.frames.astype(float) - tgt.frames).mean() > 5
    src = synthetic.render_video(synthetic.PRESETS["source"], 1, 3, 64, 80)
    for name in shifts_lib.NAMES:
        one = synthetic.render_video(synthetic.domain("source", [(name, 1.0)]), 1, 3, 64, 80)
        two = synthetic.render_video(synthetic.domain("source", [(name, 2.0)]), 1, 3, 64, 80)
        np.testing.assert_array_equal(one.flow, src.flow, err_msg=name)
        d1 = np.abs(one.frames.astype(float) - src.frames).mean()
        d2 = np.abs(two.frames.astype(float) - src.frames).mean()
        assert 0 < d1 < d2 or (name == "textures" and d1 > 0 and d2 > 0), (name, d1, d2)
    with pytest.raises(ValueError, match="unknown shift 'rain'"):
        synthetic.domain("target", [("rain", 1.0)])
    assert shifts_lib.parse("fog:1, noise:2.5") == (("fog", 1.0), ("noise", 2.5))
    synthetic.main(["--preset=target", f"--out={tmp_path}", "--videos=2", "--frames=4", "--size=32,40",
                    "--tracks=8", "--shifts=jpeg:1"])
    m = shards.load_manifest(str(tmp_path))
    assert m["records"] == 2 and m["preset"] == "target" and m["frames"] == 8 and m["shifts"] == "jpeg 1"
    clips = list(shards.read_clips(str(tmp_path)))
    assert clips[0].tracks.shape == (8, 4, 2) and clips[0].flow.shape == (3, 32, 40, 2)


def test_shapes_and_motion_statistics():
    from matplotlib.path import Path
    rng = np.random.default_rng(0)
    pts = rng.uniform(-60, 60, (4000, 2))
    for _ in range(5):  # the sector test is the polygon test, holes included
        shape = synthetic.random_shape("holed", rng, 50.0)
        outer = Path(np.stack([shape.radii * np.cos(shape.angles), shape.radii * np.sin(shape.angles)], -1))
        inner = Path(np.stack([shape.hole.radii * np.cos(shape.hole.angles),
                               shape.hole.radii * np.sin(shape.hole.angles)], -1))
        expect = outer.contains_points(pts) & ~inner.contains_points(pts)
        assert (shape.contains(pts) == expect).mean() > 0.995
        assert shape.contains(np.zeros((1, 2)))[0] == False  # noqa: E712 (the hole holds the centre)
    bar = synthetic.random_shape("bar", rng, 40.0)
    assert bar.half[1] <= 0.2 * bar.half[0]
    cfg = synthetic.PRESETS["source"]
    speeds = np.array([synthetic.layer_speed(cfg, rng, 256) for _ in range(4000)])
    assert speeds.max() <= 0.15 * 256 + 1e-9 and (speeds > 0.1 * 256).any()       # up to 15 % of the side
    assert np.median(speeds) < 0.7 * speeds.mean()                                  # heavy-tailed
    assert 0.05 < (speeds < 0.5).mean() < 0.3                                        # some layers stand still
    assert 0.8 * 0.025 * 256 < speeds.mean() < 1.1 * 0.025 * 256


def test_few_samples_fill_batches_across_epochs(tmp_path):
    _write(tmp_path, [_clip(i, t=2, gt=False) for i in range(3)])
    cfg = pipeline.PipelineConfig((str(tmp_path),), clip_len=2, hop=1, batch_size=4, seed=3)
    take = lambda it, n: [tuple(b["video_id"]) for b in itertools.islice(it, n)]
    full = take(pipeline.ClipIterator(cfg), 6)  # 3 samples an epoch, 4 a batch
    assert all(len(b) == 4 for b in full)
    assert sorted(sum(map(list, full), [])[:3]) == [b"vid0", b"vid1", b"vid2"]  # epoch 0 first
    it = pipeline.ClipIterator(cfg)
    first = take(it, 2)
    assert it.state() == {"epoch": 2, "sample": 2}
    assert first + take(pipeline.ClipIterator(cfg, state=it.state()), 4) == full
    # the state of the earlier per-epoch pipeline (whole batches within an epoch) still resumes
    assert pipeline.ClipIterator(cfg, state={"epoch": 1, "batch": 0}).state() == {"epoch": 1, "sample": 0}
    # two hosts splitting the rows of each global batch see the one-host batches
    halves = [take(pipeline.ClipIterator(dataclasses.replace(cfg, split="rows"), process_index=p,
                                         process_count=2), 6) for p in range(2)]
    assert [a + b for a, b in zip(*halves)] == full
    short = tmp_path / "short"
    _write(short, [_clip(0, t=2, gt=False)])
    with pytest.raises(ValueError, match="no window of 3 frames"):
        next(pipeline.ClipIterator(pipeline.PipelineConfig((str(short),), clip_len=3)))


def test_synthetic_textures_from_an_image_folder(tmp_path):
    from PIL import Image
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
            tmp_path / f"t{i}.jpg")
    cfg = synthetic.DomainConfig(textures=("images",), texture_dir=str(tmp_path), layers=2)
    clip = synthetic.render_video(cfg, 0, 3, 32, 40)
    assert clip.frames.shape == (3, 32, 40, 3) and clip.frames.std() > 5
    with pytest.raises(ValueError, match="needs DomainConfig.texture_dir"):
        synthetic.render_video(synthetic.DomainConfig(textures=("images",)), 0, 2, 16, 16)
