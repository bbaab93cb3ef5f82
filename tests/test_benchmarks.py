"""Benchmark readers on tiny datasets fabricated in the real on-disk formats."""
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from refine_jax.data import benchmarks, flo, shards

RNG = np.random.default_rng(0)


def _img(path, h=12, w=16):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(im).save(path)
    return im


def test_sintel(tmp_path):
    root = tmp_path / "Sintel"
    frames = [_img(str(root / "training/clean/alley_1" / f"frame_{i:04d}.png")) for i in range(1, 4)]
    flows = []
    for i in range(1, 3):
        f = RNG.normal(size=(12, 16, 2)).astype(np.float32)
        flows.append(f)
        os.makedirs(root / "training/flow/alley_1", exist_ok=True)
        flo.write_flo(str(root / "training/flow/alley_1" / f"frame_{i:04d}.flo"), f)
    occ = np.zeros((12, 16), np.uint8)
    occ[:3] = 255
    os.makedirs(root / "training/occlusions/alley_1", exist_ok=True)
    Image.fromarray(occ).save(root / "training/occlusions/alley_1/frame_0001.png")
    m = benchmarks.write_benchmark("sintel", str(tmp_path / "out"), str(root), passes=("clean",))
    assert m["records"] == 1 and m["frames"] == 3
    (clip,) = shards.read_clips(str(tmp_path / "out"))
    assert clip.video_id == "clean/alley_1"
    np.testing.assert_array_equal(clip.frames, np.stack(frames))
    np.testing.assert_array_equal(clip.flow, np.stack(flows))
    assert not clip.flow_valid[0, :3].any() and clip.flow_valid[0, 3:].all() and clip.flow_valid[1].all()


def test_tapvid_pickle_and_its_safety(tmp_path):
    video = RNG.integers(0, 256, (5, 10, 20, 3), dtype=np.uint8)
    points = RNG.uniform(0, 1, (3, 5, 2)).astype(np.float32)
    occluded = np.zeros((3, 5), bool)
    occluded[1, :2] = True
    with open(tmp_path / "tapvid_davis.pkl", "wb") as f:
        pickle.dump({"bear": {"video": video, "points": points, "occluded": occluded}}, f)
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
    for i in range(1, 10):
        _img(str(root / "HT21/train/HT21-01/img1" / f"{i:06d}.jpg"))
    rows = []
    for fr in range(1, 10):
        rows.append(f"{fr},1,{fr},2,4,6,1,1,1")           # head 1: every frame, moves right
        if fr <= 5:
            rows.append(f"{fr},2,10,5,2,2,1,1,{int(fr != 3)}")  # head 2: frames 1..5, hidden at 3
    gt = root / "HT21Labels/train/HT21-01/gt"
    os.makedirs(gt)
    (gt / "gt.txt").write_text("\n".join(rows) + "\n")
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
    images, anns = [], []
    for i, name in enumerate(["labeled-data/Brownhorse/0002.png", "labeled-data/Brownhorse/0001.png",
                              "labeled-data/Greyhorse/0001.png"]):
        _img(str(root / name))
        images.append({"id": i, "file_name": name})
        kp = np.zeros((22, 3))
        kp[:, 0], kp[:, 1], kp[:, 2] = i + 1, 2 * i, 2
        kp[5, 2] = 0
        anns.append({"image_id": i, "keypoints": kp.ravel().tolist()})
    jf = tmp_path / "horse10-train-split1.json"
    jf.write_text(json.dumps({"images": images, "annotations": anns}))
    clips = list(benchmarks.horse10_clips(str(root), [str(jf)]))
    assert [c.video_id for c in clips] == ["Brownhorse", "Greyhorse"]
    b = clips[0]
    assert b.tracks.shape == (22, 2, 2)
    np.testing.assert_allclose(b.tracks[0, :, 0], [2, 1])  # sorted by path: 0001 (id 1) then 0002 (id 0)
    assert not b.visible[5].any() and b.visible[0].all()
