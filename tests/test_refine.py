"""`python -m refine_jax.refine` end to end on H.264 footage, its resume and refusals, and the
pieces it adds: sizes from the input, windows spread over a video, the batch fitted to the labels,
the time budget of the train stage."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import golden
from refine_jax import checkpoints, footage, pth, refine
from refine_jax.data import frames as frames_lib, ingest, shards
from refine_jax.demo import stages as demo, synthetic
from refine_jax.stages import train as train_stage

TINY = ["--set=label.iters=2", "--set=train.iters=2", "--set=eval.iters=2"]


@pytest.fixture(scope="module")
def footage_with_truth(tmp_path_factory):
    """Two procedural clips as H.264 mp4 files (names with a space and non-ASCII letters), their
    exact ground truth as a shard folder, and the RAFT-small stand-in as an official .pth."""
    d = tmp_path_factory.mktemp("footage")
    with shards.ShardWriter(str(d / "truth"), "target") as w:
        for i in range(2):
            clip = synthetic.render_video(synthetic.PRESETS["target"], 40 + i, 4, 136, 160, 0, video_id=f"v{i}")
            frames_lib.write_video(str(d / f"prise de vue é{i}.mp4"), clip.frames, 10)
            w.write_clip(clip, "png")
    standin = checkpoints.load_model(demo.standin_dir("raft_small"))
    pth.export_pth(standin.variables, standin.cfg, str(d / "raft-small.pth"))
    return d


def test_refine_mp4_with_ground_truth_end_to_end(footage_with_truth, tmp_path, capsys):
    d, out = footage_with_truth, tmp_path / "run"
    args = [f"--weights={d / 'raft-small.pth'}", f"--videos={d}/*.mp4", f"--eval={d / 'truth'}",
            f"--out={out}", "--steps=2", "--no_progress", *TINY]
    assert refine.main(args) == 0
    shown = capsys.readouterr().out
    assert "refinement: " in shown and "report.html" in shown

    summary = json.loads((out / "summary.json").read_text())
    assert summary["ground_truth"] and summary["primary"] == "epe" and summary["train_steps"] == 2
    assert summary["verdict"] in ("better", "worse", "no change")
    assert summary["crop"] == [136, 160] and summary["eval_clips"] == 2
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert np.isfinite(metrics["before"]["epe"]) and np.isfinite(metrics["after"]["epe"])
    assert np.isfinite(metrics["baseline"]["epe"])   # zero flow, beside them
    assert summary["before"] == pytest.approx(metrics["before"]["epe"])
    report_md = (out / "report.md").read_text()
    for value in (metrics["before"]["epe"], metrics["after"]["epe"], metrics["baseline"]["epe"]):
        assert f"{value:.4f}" in report_md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 and "<table>" in page and "src=\"file" not in page

    # the guard: the label-free verdict decides what is exported (the refined model only on 'better')
    v, ex = metrics["verdict"], metrics["exported"]
    assert v["verdict"] in ("better", "worse", "cannot tell") and v["guard"] is True and v["because"]
    assert ex["model"] == ("refined" if v["verdict"] == "better" else "initial")
    assert summary["exported"] == ex["model"] and summary["label_free_verdict"] == v["verdict"]
    assert {"kw_epe", "fb_auc", "chain_err", "source_epe"} <= set(metrics["proxy_changes"])
    assert "## Did refinement help? (label-free verdict)" in report_md
    # the exported .pth is the official layout and holds the exported model's weights exactly
    state = torch.load(str(out / "refined.pth"), map_location="cpu", weights_only=True)
    assert set(state) == golden.official_keys("raft_small")
    chosen = checkpoints.load_model(str(out / ("model" if ex["model"] == "refined" else "init")))
    assert_same_weights(str(out / "refined.pth"), chosen)
    assert_same_weights(str(out / "refined.pth"), checkpoints.load_model(str(out / "exported")))
    assert (out / "init" / "model.json").exists()  # converted once, strictly

    # the command again resumes: nothing relabelled or retrained; with --guard=off (the guard is not
    # a setting of the run) only eval and export run again, and export the last step whatever the verdict
    stamps = lambda: [os.path.getmtime(p) for p in (out / "model" / "model.json", out / "init" / "model.json",
                                                     *sorted((out / "labels").glob("*.tfrecord")))]
    before = stamps()
    assert refine.main(args + ["--guard=off"]) == 0
    assert stamps() == before and json.loads((out / "summary.json").read_text())["train_steps"] == 2
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["exported"]["model"] == "refined" and metrics["verdict"]["guard"] is False
    assert_same_weights(str(out / "refined.pth"), checkpoints.load_model(str(out / "model")))
    # another setting is refused, by name
    capsys.readouterr()
    assert refine.main(args + ["--max_side=256"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_side: 512 then, 256 now" in err[0]


def assert_same_weights(pth_path, loaded):
    cfg, variables, _ = pth.convert_file(pth_path)
    assert cfg == loaded.cfg
    for a, b in zip(*(jax_leaves(v) for v in (variables, loaded.variables))):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_refine_refuses_in_one_line(footage_with_truth, tmp_path, capsys):
    d = footage_with_truth
    cases = [
        ([f"--videos={d}/*.mp4", f"--out={tmp_path / 'a'}", "--steps=2", "--minutes=1"], "not both"),
        ([f"--videos={d}/*.mp4", f"--out={tmp_path / 'b'}", f"--weights={tmp_path / 'none.pth'}"],
         "none.pth: no such checkpoint file or folder"),
        ([f"--videos={tmp_path / 'nothing*.mp4'}", f"--out={tmp_path / 'c'}"], "matches no video file"),
        ([f"--videos={d}/*.mp4", f"--out={tmp_path / 'd'}", "--set=train.nope=1"], "has no field 'nope'"),
    ]
    for args, expected in cases:
        assert refine.main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (args, err)


def test_the_command_line_starts_quietly(footage_with_truth, tmp_path):
    """No libtpu, TensorFlow or absl lines before the first progress bar; the refusal is one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "JAX_PLATFORMS"))}
    p = subprocess.run([sys.executable, "-m", "refine_jax.refine", f"--videos={tmp_path}/none*.mp4",
                        f"--out={tmp_path / 'o'}"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: {tmp_path}/none*.mp4: matches no video file or frame folder"]


# -- sizes, windows, batch, budget ------------------------------------------------------------------

def test_fitted_size_keeps_the_aspect_in_multiples_of_8():
    assert ingest.fitted_size((138, 160)) == (136, 160)
    assert ingest.fitted_size((1080, 1920), 512) == (288, 512)
    assert ingest.fitted_size((1920, 1080), 512) == (512, 288)       # portrait stays portrait
    assert ingest.fitted_size((97, 161), 0) == (96, 160)
    assert ingest.fitted_size((3, 5)) == (8, 8)


def test_spread_order_prefixes_cover_the_whole_range():
    order = ingest.spread_order(16)
    assert sorted(order) == list(range(16))
    assert order[:4] == [0, 8, 4, 12]
    assert ingest.spread_order(1) == [0]


def test_fit_batch_to_the_labelled_samples():
    import ml_collections
    c = ml_collections.ConfigDict({"train": {"batch_size": 6}})
    assert footage.fit_batch(c, 4, 1) == "train: batch 6 -> 4 (4 labelled samples, 1 devices)"
    assert c.train.batch_size == 4
    c.train.batch_size = 8
    assert footage.fit_batch(c, 3, 2) is not None and c.train.batch_size == 2   # a multiple of the devices
    c.train.batch_size = 2
    assert footage.fit_batch(c, 100, 2) is None and c.train.batch_size == 2
    c.train.batch_size = 6
    assert footage.fit_batch(c, 4, 8) is not None and c.train.batch_size == 8   # one a device at least


def test_footage_without_ground_truth_holds_windows_out_for_the_verdict(tmp_path):
    """Without --eval one window in --holdout (4) of each video is kept out of training for the
    verdict; with --eval nothing is; the eval budget counts the clips the eval stage will read."""
    cfg = checkpoints.load_model(demo.standin_dir("raft_small")).cfg
    req = footage.Request(videos="v", out=str(tmp_path))
    config = footage.build_config(req, "init", "v", cfg)
    assert req.holdout == 4 and config.eval.holdout == 4
    assert footage.build_config(footage.Request(videos="v", out="o", holdout=0), "init", "v", cfg).eval.holdout == 0
    from refine_jax.settings import EvalConfig
    with_truth = footage.build_config(footage.Request(videos="v", out="o", eval="truth"), "init", "v", cfg)
    assert EvalConfig.from_config(with_truth.eval).held_out_every() == 0
    with pytest.raises(ValueError, match="--holdout must be 0 .* or at least 2"):
        footage.check_request(footage.Request(videos="v", out="o", holdout=1))
    with shards.ShardWriter(str(tmp_path / "five"), "five") as w:
        for i in range(5):
            w.write_clip(shards.Clip(f"v{i}", np.zeros((2, 8, 8, 3), np.uint8)), "png")
    five = str(tmp_path / "five")
    assert [footage.count_clips(five, k) for k in (0, 2, 4, 12)] == [5, 2, 1, 5]  # 12 holds none out: all


def test_eval_clips_fit_the_seconds():
    assert footage.eval_clip_budget(100.0, 2.0, 1000) == 20      # 2 s a labelled clip, 2.5x to evaluate
    assert footage.eval_clip_budget(1.0, 2.0, 1000) == 1
    assert footage.eval_clip_budget(1e6, 2.0, 7) == 7


def test_train_budget_refits_the_steps_to_the_time_left(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(train_stage.time, "time", lambda: clock[0])
    b = train_stage._Budget(60.0, 1000.0, 0)
    clock[0] += 10.0                                  # step 1: compile 10 s
    assert b.fit(1, 500) is None
    for step in (2, 3):
        clock[0] += 1.0
        assert b.fit(step, 500) is None
    clock[0] += 1.0                                   # step 4: 1 s a step measured
    fitted = b.fit(4, 500)
    # 13 of 60 s spent; less the refitted step's compile (10 s) and 2 s for the final save:
    # (47 - 10 - 2) / 1 s more steps
    assert fitted == 4 + 35 and b.step_seconds == pytest.approx(1.0)
    assert b.fit(5, fitted) is None                   # refitted once
    clock[0] = 1000.0 + 61.0
    assert b.fit(27, fitted) == 27                    # past the limit: stop here
    tc = train_stage._refitted(footage_tc(steps=1000, schedule_steps=1100), 100)
    assert (tc.steps, tc.schedule_steps) == (100, 110)


def footage_tc(**kw):
    from refine_jax.settings import TrainConfig
    return TrainConfig(**kw)


# -- real inputs, each adapted or refused in one line -----------------------------------------------

def _write_pngs(folder, frames, mode=None):
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    for i, f in enumerate(frames):
        (Image.fromarray(f) if mode is None else Image.fromarray(f, mode)).save(os.path.join(folder, f"{i:03d}.png"))


def test_frames_of_every_image_mode_read_as_rgb8(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 128)])).save(tmp_path / "rgba.png")
    deep = grey.astype(np.uint16) * 257
    Image.fromarray(deep).save(tmp_path / "deep.png")              # 16-bit grey
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    for name in ("grey", "rgba", "deep"):
        im = frames_lib.read_image(str(tmp_path / f"{name}.png"))
        assert im.dtype == np.uint8 and im.shape == (20, 30, 3), name
        np.testing.assert_array_equal(im[..., 0], grey, err_msg=name)   # 16-bit scaled, not clipped at 255


def _vfr_mp4(path, frames):
    """H.264 with irregular timestamps (variable frame rate)."""
    import av
    from fractions import Fraction
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.height, s.width, s.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        pts = np.cumsum([0] + [33, 17, 50, 33, 80, 20, 33][: len(frames) - 1])
        for f, t in zip(frames, pts):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = int(t), Fraction(1, 1000)
            for pkt in s.encode(vf):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def test_real_inputs_are_adapted_or_skipped_in_one_line(tmp_path, capsys):
    rng = np.random.default_rng(1)
    src = tmp_path / "mes vidéos"
    src.mkdir()
    video = lambda t, h, w: rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    frames_lib.write_video(str(src / "portrait odd.mp4"), video(4, 201, 137), 10)   # padded to even by the encoder
    _vfr_mp4(src / "vfr.mp4", video(6, 144, 176))
    frames_lib.write_video(str(src / "one frame.mp4"), video(1, 144, 176), 10)
    good = (src / "vfr.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (src / "not a video.mp4").write_bytes(b"\x00" * 1000)
    _write_pngs(src / "grey frames", [rng.integers(0, 256, (136, 144), dtype=np.uint8) for _ in range(3)])
    _write_pngs(src / "mixed sizes", [video(1, 136, 144)[0], video(1, 140, 144)[0]])
    _write_pngs(src / "tiny", [video(1, 60, 80)[0] for _ in range(2)])

    m = ingest.ingest(str(src), str(tmp_path / "shards"), clip_len=8, min_len=2, fmt="png", max_side=512,
                      min_side=128, progress=False)   # as `refine` ingests for RAFT
    err = capsys.readouterr().err
    skipped = {os.path.basename(p): line for p in m["skipped"]
               for line in err.splitlines() if p in line and line.startswith("warning")}
    assert set(skipped) == {"one frame.mp4", "truncated.mp4", "not a video.mp4", "mixed sizes", "tiny"}, err
    assert "has 1 usable frame; a clip needs 2" in skipped["one frame.mp4"]
    assert "frame is 140x144, the folder's first frame is 136x144" in skipped["mixed sizes"]
    assert "frames are 64x80 px (scaled from 60x80); the model needs both sides >= 128 px" in skipped["tiny"]
    clips = list(shards.read_clips(str(tmp_path / "shards")))
    shapes = {c.video_id: c.frames.shape for c in clips}
    assert len(clips) == 3 and shapes["portrait odd"] == (4, 200, 136, 3)   # 202x138 decoded, in multiples of 8
    assert shapes["vfr"] == (6, 144, 176, 3)          # every frame of the variable-rate video, in order
    assert shapes["grey frames"] == (3, 136, 144, 3)  # shorter than a window: one clip


def test_a_long_video_is_sampled_in_windows_spread_over_it(tmp_path):
    """64 of 300 two-frame windows, evenly spaced, in spread order; only those frames are kept."""
    t = 600
    frames = np.zeros((t, 16, 16, 3), np.uint8)
    frames[:, :8, :8, 0] = (np.arange(t) % 256)[:, None, None]     # the frame index, readable back
    frames[:, :8, :8, 1] = (np.arange(t) // 256)[:, None, None]
    folder = tmp_path / "long"
    _write_pngs(folder, frames)
    clips = list(ingest.clips_of(str(folder), 2, 1, max_clips=64))
    starts = [int(c.frames[0, 0, 0, 0]) + 256 * int(c.frames[0, 0, 0, 1]) for c in clips]
    assert len(clips) == 64 and starts == [c.clip_start for c in clips]
    assert sorted(starts) == sorted(set(starts)) and min(starts) == 0 and max(starts) == 598
    assert max(np.diff(sorted(starts))) <= 10                        # evenly spaced (600 / 64 = 9.4)
    assert abs(np.mean(starts[:8]) - 300) < 100                      # any prefix spans the video
