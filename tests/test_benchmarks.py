"""Benchmark readers on tiny datasets fabricated in the real on-disk formats."""
import os
import pickle

import numpy as np
import pytest

import fabricate
from refine_jax import settings
from refine_jax.data import benchmarks, shards

RNG = np.random.default_rng(0)


def test_sintel(tmp_path):
    root = tmp_path / "Sintel"
    frames = [RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(3)]
    flows = [RNG.normal(size=(12, 16, 2)).astype(np.float32) for _ in range(2)]
    fabricate.sintel(str(root), frames, flows, occluded_rows=3)
    m = benchmarks.write_benchmark("sintel", str(tmp_path / "out"), str(root), passes=("clean",))
    assert m["records"] == 1 and m["frames"] == 3
    (clip,) = shards.read_clips(str(tmp_path / "out"))
    assert clip.video_id == "clean/alley_1"
    np.testing.assert_array_equal(clip.frames, np.stack(frames))
    np.testing.assert_array_equal(clip.flow, np.stack(flows))
    assert not clip.flow_valid[0, :3].any() and clip.flow_valid[0, 3:].all() and clip.flow_valid[1].all()
    assert clip.flow_gt_known is None  # Sintel's mask is occlusion: its EPE counts every pixel


def test_tapvid_pickle_and_its_safety(tmp_path):
    d = fabricate.tapvid(str(tmp_path / "tapvid_davis.pkl"), RNG)
    points, occluded = d["points"], d["occluded"]
    m = benchmarks.write_benchmark("tapvid", str(tmp_path / "out"), str(tmp_path / "tapvid_davis.pkl"))
    (clip,) = shards.read_clips(str(tmp_path / "out"))
    assert m["records"] == 1 and clip.video_id == "bear"
    np.testing.assert_allclose(clip.tracks, points * np.array([20, 10]), atol=1e-5)
    np.testing.assert_array_equal(clip.visible, ~occluded)
    np.testing.assert_allclose(clip.query_points[1], [2, *(points[1, 2] * [20, 10])], atol=1e-5)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(ValueError, match="evil.pkl: not a TAP-Vid pickle.*refusing to load"):
        benchmarks.load_tapvid_pickle(str(tmp_path / "evil.pkl"))


def test_crohd(tmp_path):
    root = tmp_path / "crohd"
    fabricate.crohd(str(root), RNG)
    clips = list(benchmarks.crohd_clips(str(root), clip_len=3, stride=2, block=4))
    assert [c.clip_start for c in clips] == [0, 4]
    a = clips[0]  # frames 1, 3, 5 (1-indexed): both heads present
    assert a.tracks.shape == (2, 3, 2)
    np.testing.assert_allclose(a.tracks[0, :, 0], [1 + 2, 3 + 2, 5 + 2])  # box centre x
    assert a.visible[1].tolist() == [True, False, True]
    assert clips[1].tracks.shape[0] == 1  # frames 5, 7, 9: only head 1 throughout
    (root / "HT21Labels/train/HT21-01/gt/gt.txt").write_text("1,x,2\n")
    with pytest.raises(ValueError, match="gt.txt: malformed MOT line"):
        list(benchmarks.crohd_clips(str(root)))


def test_horse10(tmp_path):
    root = tmp_path / "horse10"
    jf = fabricate.horse10(str(root), RNG, str(tmp_path / "horse10-train-split1.json"))
    clips = list(benchmarks.horse10_clips(str(root), [str(jf)]))
    assert [c.video_id for c in clips] == ["Brownhorse", "Greyhorse"]
    b = clips[0]
    assert b.tracks.shape == (22, 2, 2)
    np.testing.assert_allclose(b.tracks[0, :, 0], [2, 1])  # sorted by path: 0001 (id 1) then 0002 (id 0)
    assert not b.visible[5].any() and b.visible[0].all()


def test_middlebury_stereo_as_flow(tmp_path):
    im0, im1, disp = fabricate.middlebury(str(tmp_path / "midd"), RNG)
    m = benchmarks.write_benchmark("middlebury", str(tmp_path / "out"), str(tmp_path / "midd"))
    (clip,) = shards.read_clips(str(tmp_path / "out"))
    assert m["records"] == 1 and clip.video_id == "Motorcycle"
    np.testing.assert_array_equal(clip.frames, np.stack([im0, im1]))
    known = np.isfinite(disp)
    np.testing.assert_array_equal(clip.flow_valid[0], known)
    # the manifest says flow_valid marks known ground truth, so evaluation skips the unknown pixels
    assert m["flow_valid_means"] == "gt_known"
    np.testing.assert_array_equal(clip.flow_gt_known, clip.flow_valid)
    np.testing.assert_array_equal(clip.flow[0][known], np.stack([-disp, np.zeros_like(disp)], -1)[known])
    # the shard stores flow_gt_known as flow_valid, so the two must agree
    bad = shards.Clip("x", clip.frames, flow=clip.flow, flow_valid=clip.flow_valid, flow_gt_known=~clip.flow_valid)
    with pytest.raises(ValueError, match="x: flow_gt_known is stored as flow_valid and must equal it"):
        with shards.ShardWriter(str(tmp_path / "bad"), "bad") as w:
            w.write_clip(bad)
    # one folder's manifest gives flow_valid one meaning: a known-GT clip and a masked one cannot share it
    masked = shards.Clip("y", clip.frames, flow=clip.flow, flow_valid=clip.flow_valid)
    with pytest.raises(ValueError, match="y: its flow_valid is a validity mask but in Motorcycle, written "
                                         "earlier to .*mixed, it marks known ground truth"):
        with shards.ShardWriter(str(tmp_path / "mixed"), "mixed") as w:
            w.write_clip(clip)
            w.write_clip(masked)
    # a scene folder itself is a root too; halving the size halves the flow (nearest to pixel centres)
    (half,) = benchmarks.middlebury_clips(str(tmp_path / "midd" / "Motorcycle"), scale=0.5)
    assert half.frames.shape == (2, 3, 4, 3)
    np.testing.assert_array_equal(half.flow_valid[0], known[1::2, 1::2])
    np.testing.assert_allclose(half.flow[0][half.flow_valid[0]][:, 0], -disp[1::2, 1::2][half.flow_valid[0]] * 0.5,
                               rtol=1e-6)
    (tmp_path / "midd" / "Motorcycle" / "disp0.pfm").write_bytes(b"Pf\n8 6\n-1.0\n" + bytes(10))
    with pytest.raises(ValueError, match=r"disp0.pfm: PFM header says 8x6x1 \(204 bytes\), file has 22 bytes"):
        list(benchmarks.middlebury_clips(str(tmp_path / "midd")))


def test_pfm_round_trip(tmp_path):
    from refine_jax.data import pfm
    for shape in ((3, 5), (3, 5, 3)):
        v = RNG.normal(size=shape).astype(np.float32)
        pfm.write_pfm(str(tmp_path / "v.pfm"), v)
        np.testing.assert_array_equal(pfm.read_pfm(str(tmp_path / "v.pfm")), v)


def test_kitti_flow_pairs_and_videos(tmp_path):
    root = tmp_path / "data_scene_flow" / "training"
    scenes = fabricate.kitti(str(root), RNG)
    m = benchmarks.write_benchmark("kitti", str(tmp_path / "out"), str(root))
    assert m["records"] == 2 and m["flow_valid_means"] == "gt_known"
    for clip in shards.read_clips(str(tmp_path / "out")):
        ims, flow, known = scenes[clip.video_id]
        np.testing.assert_array_equal(clip.frames, np.stack([ims[10], ims[11]]))
        np.testing.assert_array_equal(clip.flow_gt_known[0], known)
        np.testing.assert_array_equal(clip.flow[0][known], flow[known])  # 1/64 px steps are exact
        assert not clip.flow[0][~known].any()
    # the multiview package: every frame of a scene, no ground truth; KITTI 2012 names its camera colored_0
    multi = tmp_path / "data_stereo_flow_multiview" / "training"
    views = fabricate.kitti(str(multi), RNG, scenes=("000007",), images="colored_0", frames=range(5))
    (clip,) = benchmarks.kitti_videos(str(multi))
    assert clip.video_id == "000007" and clip.flow is None
    np.testing.assert_array_equal(clip.frames, np.stack([views["000007"][0][t] for t in range(5)]))
    with pytest.raises(FileNotFoundError, match=r"out: no image_2 or colored_0 folder; expected a KITTI"):
        list(benchmarks.kitti_clips(str(tmp_path / "out")))
    (root / "flow_occ" / "000001_10.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"000001_10.png: not a 16-bit flow PNG as KITTI writes it"):
        list(benchmarks.kitti_clips(str(root)))
    _evaluation_pads_kitti_shards_as_raft_does(str(tmp_path / "out"), str(tmp_path))


def _evaluation_pads_kitti_shards_as_raft_does(kitti_shards, tmp):
    """eval.pad_mode 'auto' is RAFT's KITTI padding (all rows below) for KITTI shard folders only."""
    import ml_collections
    from refine_jax.stages import evaluate
    other = os.path.join(tmp, "other")
    with shards.ShardWriter(other, "vid") as w:
        w.write_clip(shards.Clip("v", np.zeros((2, 8, 8, 3), np.uint8)))
    resolve = lambda data, mode="auto": evaluate.resolve_pad_mode(
        settings.EvalConfig(data=data, pad_mode=mode), ml_collections.ConfigDict({"data": {"videos": ""}}))
    assert resolve(kitti_shards) == "kitti"
    assert resolve(f"{kitti_shards},{kitti_shards}") == "kitti"
    assert resolve(other) == "sintel" and resolve(f"{kitti_shards},{other}") == "sintel"
    assert resolve(os.path.join(tmp, "clip.mp4")) == "sintel"  # not a shard folder
    assert resolve(other, "kitti") == "kitti" and resolve(kitti_shards, "sintel") == "sintel"
    with pytest.raises(ValueError, match="eval.pad_mode must be one of auto, sintel, kitti, got 'top'"):
        resolve(kitti_shards, "top")


def test_flow_png_round_trip(tmp_path):
    from refine_jax.data import flow_png
    flow = RNG.uniform(-300, 300, (5, 7, 2)).astype(np.float32)
    known = RNG.random((5, 7)) < 0.5
    flow_png.write_flow_png(str(tmp_path / "f.png"), flow, known)
    back, k = flow_png.read_flow_png(str(tmp_path / "f.png"))
    np.testing.assert_array_equal(k, known)
    np.testing.assert_allclose(back[known], flow[known], atol=0.5 / 64)
