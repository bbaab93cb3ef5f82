"""`python -m refine_jax.infer flow` on real files: a PNG folder, an mp4 (PyAV), bad inputs."""
import os

import av
import numpy as np
import pytest
from PIL import Image

import golden
from refine_jax import infer, viz
from refine_jax.data import flo, frames as frames_lib
from refine_jax.models import raft as raft_lib


def _write_pngs(folder, images):
    os.makedirs(folder, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(os.path.join(folder, f"frame_{i:04d}.png"))
    return str(folder)


def _write_mp4(path, images, fps=10):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width = images[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for im in images:
            for pkt in s.encode(av.VideoFrame.from_ndarray(im, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return str(path)


@pytest.fixture(scope="module")
def frames3():
    g = golden.golden("raft_small_seed1")
    return [g["image1"], g["image2"], g["image1"]]


def test_flow_on_folder_matches_model(converted, recipe_pth, frames3, tmp_path):
    folder = _write_pngs(tmp_path / "frames", frames3)
    out = tmp_path / "out"
    assert infer.main(["flow", f"--weights={recipe_pth('raft_small')}", f"--frames={folder}",
                       f"--out={out}", "--iters=3"]) == 0
    assert sorted(os.listdir(out)) == ["flow_00000.flo", "flow_00000.png", "flow_00001.flo",
                                       "flow_00001.png"]
    cfg, variables = converted("raft_small")
    want, _ = raft_lib.make_flow_fn(cfg, 3)(variables, frames3[1][None], frames3[2][None])
    got = flo.read_flo(str(out / "flow_00001.flo"))
    np.testing.assert_allclose(got, np.asarray(want[0]), atol=1e-4)
    png = np.asarray(Image.open(out / "flow_00001.png"))
    assert png.shape == (224, 320, 3)
    np.testing.assert_array_equal(png, viz.flow_to_color(got))


def test_labels_and_evaluation_pad_in_the_configured_mode(converted, frames3):
    """label.pad_mode / eval.pad_mode reach the model: 'kitti' (rows padded below only, as RAFT's
    KITTI evaluation) gives InputPadder('kitti')'s flow, which differs from the 'sintel' padding."""
    from refine_jax import parallel
    from refine_jax.labels.flow import FlowLabeler
    from refine_jax.settings import LabelConfig
    cfg, variables = converted("raft_small")
    frames = np.stack(frames3[:2])[:, :124, :132]  # 4 rows and 4 columns of padding to place
    lc = LabelConfig(iters=3, batch=1, pad_mode="kitti")
    fw, _, _ = FlowLabeler(cfg, variables, lc, parallel.make_mesh(1)).estimate(frames)
    kitti, _ = raft_lib.make_flow_fn(cfg, 3, "kitti")(variables, frames[:1], frames[1:])
    sintel, _ = raft_lib.make_flow_fn(cfg, 3, "sintel")(variables, frames[:1], frames[1:])
    np.testing.assert_allclose(fw, np.asarray(kitti), atol=1e-4)
    assert np.abs(fw - np.asarray(sintel)).max() > 1e-2
    with pytest.raises(ValueError, match="pad_mode must be 'sintel' or 'kitti'"):
        FlowLabeler(cfg, variables, LabelConfig(pad_mode="top"), parallel.make_mesh(1))


def test_flow_on_video(recipe_pth, frames3, tmp_path):
    video = _write_mp4(tmp_path / "clip.mp4", frames3)
    assert len(frames_lib.read_frames(video)) == 3
    out = tmp_path / "out"
    assert infer.main(["flow", f"--weights={recipe_pth('raft_small')}", f"--frames={video}",
                       f"--out={out}", "--iters=3", "--pairs=first"]) == 0
    flows = [flo.read_flo(str(out / f"flow_{i:05d}.flo")) for i in range(2)]
    assert all(f.shape == (224, 320, 2) and np.isfinite(f).all() for f in flows)


def test_flow_confidence_outputs(recipe_pth, frames3, tmp_path):
    folder = _write_pngs(tmp_path / "frames", frames3[:2])
    out = tmp_path / "out"
    assert infer.main(["flow", f"--weights={recipe_pth('raft_small')}", f"--frames={folder}",
                       f"--out={out}", "--iters=3", "--confidence"]) == 0
    cyc = np.load(out / "flow_00000_cycle.npy")
    mask = np.asarray(Image.open(out / "flow_00000_valid.png"))[..., 0]
    assert cyc.shape == mask.shape == (224, 320) and (cyc >= 0).all()
    assert not mask[cyc > 1].any()  # a pixel failing the cycle test is never in the mask


def test_bad_inputs_give_one_sentence(recipe_pth, frames3, tmp_path, capsys):
    weights = f"--weights={recipe_pth('raft_small')}"
    small = _write_pngs(tmp_path / "small", [np.zeros((100, 100, 3), np.uint8)] * 2)
    assert infer.main(["flow", weights, f"--frames={small}", f"--out={tmp_path / 'o1'}"]) == 2
    assert "100x100 px pad to 104x104" in capsys.readouterr().err
    mixed = _write_pngs(tmp_path / "mixed", [frames3[0], frames3[1][:200]])
    assert infer.main(["flow", weights, f"--frames={mixed}", f"--out={tmp_path / 'o2'}"]) == 2
    err = capsys.readouterr().err
    assert "frame_0001.png: frame is 200x320" in err and "224x320" in err
    broken = _write_pngs(tmp_path / "broken", frames3[:2])
    open(os.path.join(broken, "frame_0001.png"), "wb").write(b"\x89PNG garbage")
    assert infer.main(["flow", weights, f"--frames={broken}", f"--out={tmp_path / 'o3'}"]) == 2
    assert "frame_0001.png: cannot be decoded as an image" in capsys.readouterr().err
    assert infer.main(["flow", weights, f"--frames={tmp_path / 'none'}", f"--out={tmp_path / 'o4'}"]) == 2
    assert "no such video file or frame folder" in capsys.readouterr().err
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    assert infer.main(["flow", weights, f"--frames={tmp_path / 'bad.mp4'}", f"--out={tmp_path / 'o5'}"]) == 2
    assert "bad.mp4: cannot be opened as a video" in capsys.readouterr().err


def test_flo_round_trip_and_corrupt(tmp_path):
    f = np.random.default_rng(0).normal(size=(5, 7, 2)).astype(np.float32)
    flo.write_flo(str(tmp_path / "a.flo"), f)
    np.testing.assert_array_equal(flo.read_flo(str(tmp_path / "a.flo")), f)
    raw = (tmp_path / "a.flo").read_bytes()
    (tmp_path / "b.flo").write_bytes(raw[:-4])
    with pytest.raises(ValueError, match="b.flo: .flo header says 7x5"):
        flo.read_flo(str(tmp_path / "b.flo"))


def test_colour_wheel_basics():
    flow = np.zeros((2, 2, 2), np.float32)
    flow[0, 0] = (1, 0)
    img = viz.flow_to_color(flow)
    assert tuple(img[1, 1]) == (255, 255, 255)  # no motion is white
    assert img[0, 0].tolist() != [255, 255, 255]


def test_forward_interpolate_moves_flow():
    f = np.zeros((6, 8, 2), np.float32)
    f[..., 0] = 2.0
    out = infer.forward_interpolate(f)
    assert out.shape == f.shape and np.allclose(out[..., 0], 2.0)
