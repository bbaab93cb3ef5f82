"""The eval stage on a user's own footage, which carries no ground truth: the committed stand-in
models, real shards on disk, the label-free report; and the oracle refusing such data at once."""
import json

import numpy as np
import pytest

from refine_jax.demo import stages as demo
from refine_jax.stages import evaluate
from refine_jax.evaluation import proxies as proxies_lib
from refine_jax import pipeline
from refine_jax.data import shards
from refine_jax.demo import synthetic
from test_recipes import load_config


def _footage(out_dir, frames: int, size, videos: int = 2) -> str:
    """Procedural target videos written as frames only, as `refine_jax.ingest` writes a user's."""
    with shards.ShardWriter(str(out_dir), "mine") as w:
        for k in range(videos):
            c = synthetic.render_video(synthetic.PRESETS["target"], k, frames, *size, video_id=f"mine-{k}")
            w.write_clip(shards.Clip(c.video_id, c.frames, fps=c.fps))
    return str(out_dir)


@pytest.mark.parametrize("arch", ["raft_small", "pips"])
def test_footage_without_ground_truth_gets_the_label_free_report(arch, tmp_path):
    is_flow = arch == "raft_small"
    config = load_config("raft" if is_flow else "pips", "runlocal")
    config.data.videos = _footage(tmp_path / "shards", 3 if is_flow else 8, (128, 128) if is_flow else (64, 64))
    config.init = demo.standin_dir(arch)
    config.eval.curve = False
    config.eval.holdout = 2  # as `refine` holds windows out: the second of the two videos is judged on
    if not is_flow:
        config.demo.model.stride = 4  # the committed stand-in's
        config.eval.stride = config.label.stride = 4
    r = evaluate.run(config, str(tmp_path / "run"), progress=False)

    assert r["ground_truth"] is False and r["primary"] == "cycle_pass" and r["after"] is None
    assert r["clips"] == 1 and r["clips_held_out"] is True and r["holdout"] == 2
    # the label-free diagnostics and the proxies (evaluation/proxies.py, track_proxies.py), all finite here
    proxies = ({"kw_epe", "fb_auc", "fb_1px", "fb_atc", "chain_err", "chain_rel", "flow_mag", "census_err",
                "source_epe"} if is_flow else
               {"kw_track_err", "fb_auc", "fb_1px", "requery_err", "requery_rel", "track_mag", "source_ate"})
    per_bin = set(proxies_lib.FB_BIN_KEYS) if is_flow else set()   # NaN in a speed bin without pixels
    assert set(r["before"]) == {"cycle_pass", "photometric_error"} | proxies | per_bin and r["speed_bins"] == {}
    assert all(np.isfinite(r["before"][k]) for k in proxies)
    assert not per_bin or any(np.isfinite(r["before"][k]) for k in per_bin)
    assert 0 <= r["before"]["cycle_pass"] <= 1 and np.isfinite(r["before"]["photometric_error"])
    # zero motion is the label-free baseline: cycle-consistent everywhere, only the colour check
    # (flow) removes pixels, and every point held still passes (tracks)
    base = r["baseline"]
    assert base["cycle_pass"] >= r["before"]["cycle_pass"] and np.isfinite(base["photometric_error"])
    if not is_flow:
        assert base["cycle_pass"] == 1.0
    saved = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert saved["before"]["cycle_pass"] == pytest.approx(r["before"]["cycle_pass"])
    report = (tmp_path / "run" / "eval" / "report.md").read_text()
    assert "No evaluation clip carries ground truth" in report and "| cycle_pass | higher |" in report
    assert "1 clips held out of labelling and training (one in 2 of each source)" in report
    assert "flow_gt.png" not in report and "ground-truth speed bin" not in report
    for image in (line.split("(")[1].rstrip(")") for line in report.split() if line.startswith("![")):
        assert (tmp_path / "run" / "eval" / image).exists() or image == "flow_after.png", image  # no refined model here

    # the oracle trains on ground truth: the job refuses before any stage runs, in one sentence
    config.stages = ("label", "train", "oracle", "eval")
    with pytest.raises(ValueError, match=r"eval.holdout=2: the oracle stage trains on the evaluated clips"):
        pipeline.run(config, str(tmp_path / "run2"))
    config.eval.holdout = 0
    with pytest.raises(ValueError, match=r"shards: the oracle stage trains on ground-truth flow or tracks, "
                                         r"and its first clip \(mine-0\) carries neither"):
        pipeline.run(config, str(tmp_path / "run2"))
    assert not (tmp_path / "run2" / "labels").exists()


def test_track_labels_on_footage_without_points_ask_for_a_grid(tmp_path):
    """The PIPs configs query at ground-truth points; footage has none: one sentence that says so
    and what to set, not an empty label set that training then calls 'too short'."""
    from refine_jax.stages import label as generate
    config = load_config("pips", "runlocal")
    config.data.videos = _footage(tmp_path / "shards", 8, (64, 64), videos=1)
    config.init = demo.standin_dir("pips")
    config.label.grid = 0
    with pytest.raises(ValueError, match=r"mine-0: nothing to query: the clip carries no ground-truth tracks to "
                                         r"query at and label.grid is 0; set --config.label.grid=16"):
        generate.run(config, str(tmp_path / "run"), progress=False)
