"""The eval stage's arithmetic and report, and the shift study's summary, on hand-made numbers."""
import json

import numpy as np
from refine_jax.evaluation import flow as flow_eval, report, tracks as track_eval

from refine_jax import settings
from refine_jax.tools import study
from refine_jax.demo import synthetic


def test_flow_metrics_per_speed_bin_and_zero_baseline():
    gt = np.zeros((4, 8, 2))
    gt[0, :, 0] = 0.5            # bin [0,1)
    gt[1, :, 0] = 2.0            # [1,4)
    gt[2, :, 0] = 8.0            # [4,16)
    gt[3, :, 0] = 20.0           # [16,inf)
    pred = gt.copy()
    pred[3, :, 1] = 5.0          # 5 px off on the fastest row only
    valid = np.zeros((4, 8), bool)
    valid[:2] = True
    color = np.full((4, 8), 2.0 / 255)
    rows = [flow_eval.flow_row(pred, gt)]
    m = flow_eval.flow_metrics(rows, "")
    assert np.isclose(m["epe"], 5.0 / 4) and np.isclose(m["1px"], 0.75) and np.isclose(m["5px"], 0.75)
    assert np.isclose(m["fl"], 0.25) and report.lower_is_better("fl")  # 5 px off: > 3 px and > 5 % of 20
    assert m["epe@[0,1)"] == 0 and m["epe@[4,16)"] == 0 and np.isclose(m["epe@[16,inf)"], 5.0)
    free = flow_eval.label_free_metrics([flow_eval.label_free_row(valid, color)])
    assert np.isclose(free["cycle_pass"], 0.5) and np.isclose(free["photometric_error"], 2.0)
    z = flow_eval.flow_metrics(rows, "zero:")
    assert np.isclose(z["epe"], (0.5 + 2 + 8 + 20) / 4) and np.isclose(z["epe@[4,16)"], 8.0)
    assert "cycle_pass" not in z


def test_track_rows_static_baseline_and_bins():
    t = np.arange(5, dtype=float)
    gt = np.stack([np.stack([10 + 0.5 * t, 10 + 0 * t], -1), np.stack([20 + 6 * t, 30 + 0 * t], -1)])
    vis = np.ones((2, 5), bool)
    q = np.array([[0, 10, 10], [0, 20, 30]], float)
    still = np.repeat(q[:, None, 1:], 5, axis=1)
    row = track_eval.track_row(q, gt, vis, still, vis, settings.EvalConfig(), (64, 64))
    assert np.isclose(row["ate"], (0.5 * 2.5 + 6 * 2.5) / 2)             # mean over frames 1..4
    assert row["tracks@[0,1)"] == 1 and row["tracks@[4,16)"] == 1
    m = track_eval.track_metrics([row])
    assert np.isclose(m["ate@[0,1)"], 1.25) and np.isclose(m["ate@[4,16)"], 15.0) and np.isnan(m["ate@[1,4)"])


def test_directions_and_report_flag_what_got_worse(tmp_path):
    assert report.lower_is_better("epe") and report.lower_is_better("epe@[4,16)")
    assert report.lower_is_better("ate@[0,1)") and report.lower_is_better("photometric_error")
    assert not report.lower_is_better("1px") and not report.lower_is_better("delta_avg")
    assert not report.lower_is_better("cycle_pass")
    before = {"epe": 1.44, "1px": 0.300, "cycle_pass": 0.07}
    after = {"epe": 1.39, "1px": 0.268, "cycle_pass": 0.07}
    r = {"primary": "epe", "kind": "flow", "lower_is_better": True, "before": before, "after": after, "oracle": None,
         "baseline": {"epe": 1.387, "1px": 0.1}, "baseline_name": "zero flow", "speed_bins": {"[0,1)": 1.0},
         "labels": None, "model_before": "a", "clips": 1, "resolution": "8x8", "query_mode": None,
         "improved": {k: report.improved(k, before[k], after[k]) for k in before}}
    assert r["improved"] == {"epe": True, "1px": False, "cycle_pass": None}
    report.write_markdown(str(tmp_path), r)
    text = (tmp_path / "report.md").read_text()
    assert "Worse after refinement: 1px." in text and "| 1px | higher | 0.1000 | 0.3000 | 0.2680 |" in text
    assert "zero flow 1.3870" in text
    assert "The model after refinement is no better than zero flow" in text
    assert "The model before refinement is no better than zero flow** (1.4400 vs 1.3870)" in text
    assert report.json_safe({"a": float("nan"), "b": [np.float32(1.5)], "example": 1}) == {"a": None, "b": [1.5]}
    # the labels' section: yield and error per ground-truth speed bin, with the speed bias where recorded
    r["labels"] = {"yield": 0.1, "kept": 10, "total": 100, "error_kept": 0.7, "error_all": 2.1, "kept_over_all": 0.33,
                   "per_speed_bin": {"[4,16)": {"yield": 0.05, "error_kept": 1.95, "error_all": 2.7, "n": 9,
                                                "speed_bias_kept": -1.9, "speed_bias_all": -2.5}}}
    report.write_markdown(str(tmp_path), r)
    text = (tmp_path / "report.md").read_text()
    assert "| [4,16) | 0.0500 | 1.9500 | 2.7000 | -1.9000 | -2.5000 |" in text and "too slow" in text
    assert "of the flow vectors" in text
    report.write_markdown(str(tmp_path), {**r, "kind": "tracks"})
    assert "of the distance from the query point" in (tmp_path / "report.md").read_text()


def test_study_cells_and_summary():
    assert study.shift_spec("fog", 2.0) == "fog:2"
    assert study.shift_spec("default", 1.0) == ",".join(f"{n}:1" for n, _ in synthetic.TARGET_SHIFTS)
    cell = lambda b, a: {"primary": "epe", "lower_is_better": True, "before": {"epe": b}, "after": {"epe": a},
                         "oracle": {"epe": a - 0.5}, "baseline": {"epe": 9.0}}
    cells = {("fog", 1.0, 0): cell(2.0, 1.8), ("fog", 1.0, 1): cell(2.0, 2.2), ("default", 1.0, 0): cell(3.0, 2.7)}
    rows = study.summarise(cells)
    assert [r["shift"] for r in rows] == ["default", "fog"]
    fog = rows[1]
    assert fog["improved"] == 1 and fog["seeds"] == 2 and np.isclose(fog["change_pct_mean"], 0.0)
    assert np.isclose(fog["after_std"], 0.2) and np.isclose(fog["oracle_mean"], 1.5)
    assert "| fog | 1 | 9.0000 ± 0.0000 | 2.0000 ± 0.0000 | 2.0000 ± 0.2000 |" in study.table(rows)


def test_a_study_cell_is_read_back_only_for_the_same_config_and_model(tmp_path):
    """A finished cell is reused when its config and model are the same; a folder left by another
    config (or one that records none) is refused with the first difference named, never reused."""
    import pytest
    from refine_jax import cli, fs
    config = cli.load_config("configs/raft.py")
    wd = str(tmp_path / "fog_1" / "seed0")
    key = study.cell_key(study.cell_config(config, "fog", 1.0, 0), wd)
    assert key["model_sha256"] and key["config"]["demo"]["target_shifts"] == "fog:1"
    fs.makedirs(f"{wd}/eval")
    fs.write_json_atomic(f"{wd}/cell.json", key)
    fs.write_json_atomic(f"{wd}/eval/metrics.json", {"primary": "epe", "before": {"epe": 2.0}})
    assert study.run_cell(config, wd, "fog", 1.0, 0)["before"] == {"epe": 2.0}
    # a cell recorded before a setting existed (train.frozen, train.warmup) is the same cell while
    # the config holds that setting's default
    older = json.loads(json.dumps(key))
    del older["config"]["train"]["frozen"], older["config"]["train"]["warmup"]
    fs.write_json_atomic(f"{wd}/cell.json", older)
    assert study.run_cell(config, wd, "fog", 1.0, 0)["before"] == {"epe": 2.0}
    assert settings.differences({"a": None}, {"a": [], "b": ""}) == []
    assert settings.differences({"a": None}, {"a": ["fnet"]}) == ["a: None then, ['fnet'] now"]
    assert settings.differences({}, {"s": {"w": 0.1}}, defaults={"s": {"w": 0.1}}) == []
    assert settings.differences({"s": {}}, {"s": {"w": 0.3}}, defaults={"s": {"w": 0.1}}) == ["s.w: 0.1 then, 0.3 now"]
    other = cli.load_config("configs/raft.py")
    other.train.steps = config.train.steps + 7
    with pytest.raises(ValueError, match=rf"another config or model \(config\.train\.steps: {config.train.steps} "
                                         rf"then, {config.train.steps + 7} now\)"):
        study.run_cell(other, wd, "fog", 1.0, 0)
    fs.remove(f"{wd}/cell.json")
    with pytest.raises(ValueError, match="records no cell.json"):
        study.run_cell(config, wd, "fog", 1.0, 0)


def test_a_preempted_study_cell_is_not_read_back_as_finished(monkeypatch, tmp_path):
    """A SIGTERM in a cell's oracle stage leaves no metrics.json: the cell returns None (the study
    stops, to resume), and the rerun runs it, rather than reading a report without the oracle."""
    from refine_jax import cli, fs, pipeline
    config = cli.load_config("configs/raft.py")
    ran = []
    preempt = {"oracle": True}

    def stage(name):
        def run(config, workdir, **kwargs):
            ran.append(name)
            if name == "eval":
                fs.makedirs(f"{workdir}/eval")
                fs.write_json_atomic(f"{workdir}/eval/metrics.json", {"primary": "epe"})
            return {"step": 1, "preempted": preempt.get(name, False)}
        return run
    monkeypatch.setattr(pipeline, "stages", lambda: {n: stage(n) for n in ("generate", "label", "train", "oracle", "eval")})
    wd = str(tmp_path / "fog_1" / "seed0")
    assert study.run_cell(config, wd, "fog", 1.0, 0) is None
    assert ran == ["generate", "label", "train", "oracle"]
    preempt.clear()
    assert study.run_cell(config, wd, "fog", 1.0, 0) == {"primary": "epe"}
    assert ran[4:] == ["generate", "label", "train", "oracle", "eval"]


def test_a_study_cell_that_pretrains_keys_on_its_config_before_and_after_the_model_exists(tmp_path):
    from refine_jax import cli, fs
    from refine_jax.demo import stages as demo
    config = cli.load_config("configs/raft.py")
    config.stages = ("generate", "pretrain", "label", "train", "eval")
    wd = str(tmp_path / "cell")
    c = study.cell_config(config, "fog", 1.0, 0)
    before = study.cell_key(c, wd)
    fs.makedirs(demo.pretrained_dir(wd))
    assert study.cell_key(c, wd) == before and before["model_sha256"] == "pretrained by the cell"


def test_flow_metrics_skip_pixels_without_ground_truth():
    """Where the data marks known GT (Middlebury), EPE, rates and bins count only those pixels;
    the label-free diagnostics still count every pixel."""
    gt = np.zeros((2, 4, 2))
    gt[0, :, 0] = 2.0
    pred = gt + np.array([1.0, 0.0])
    pred[1] = 100.0                       # garbage where the GT is unknown
    known = np.zeros((2, 4), bool)
    known[0] = True
    rows = [flow_eval.flow_row(pred, gt, known)]
    m = flow_eval.flow_metrics(rows, "")
    assert np.isclose(m["epe"], 1.0) and m["1px"] == 0 and m["3px"] == 1 and np.isclose(m["epe@[1,4)"], 1.0)
    assert np.isnan(m["epe@[0,1)"])
    assert flow_eval.label_free_metrics([flow_eval.label_free_row(np.ones((2, 4), bool), np.zeros((2, 4)))]) == \
        {"cycle_pass": 1.0, "photometric_error": 0.0}
    assert np.isclose(flow_eval.flow_metrics(rows, "zero:")["epe"], 2.0)


def test_metric_kind_tells_thresholded_fractions_from_means():
    for name in ("1px", "3px", "5px", "fl", "cycle_pass", "fb_1px", "fb_atc", "delta_avg", "delta_4",
                 "average_jaccard", "occlusion_accuracy", "survival"):
        assert report.metric_kind(name) == "fraction", name
    for name in ("epe", "epe@[4,16)", "ate", "ate@[0,1)", "mte", "photometric_error"):
        assert report.metric_kind(name) == "mean", name


def test_reeval_runs_the_eval_stage_alone_on_a_finished_cell(monkeypatch, tmp_path):
    """study --reeval: a finished cell is measured again by its eval stage only (its labels and
    training kept); a cell not finished still runs whole."""
    from refine_jax import cli, fs, pipeline
    config = cli.load_config("configs/raft.py")
    ran = []

    def stage(name):
        def run(config, workdir, **kwargs):
            ran.append(name)
            if name == "eval":
                fs.makedirs(f"{workdir}/eval")
                fs.write_json_atomic(f"{workdir}/eval/metrics.json", {"primary": "epe", "run": len(ran)})
            return {"step": 1, "preempted": False}
        return run
    monkeypatch.setattr(pipeline, "stages", lambda: {n: stage(n) for n in ("generate", "label", "train", "oracle", "eval")})
    wd = str(tmp_path / "fog_1" / "seed0")
    assert study.run_cell(config, wd, "fog", 1.0, 0, reeval=True) == {"primary": "epe", "run": 5}
    assert ran == ["generate", "label", "train", "oracle", "eval"]
    assert study.run_cell(config, wd, "fog", 1.0, 0, reeval=True) == {"primary": "epe", "run": 6}
    assert ran[5:] == ["eval"]
    assert study.run_cell(config, wd, "fog", 1.0, 0) == {"primary": "epe", "run": 6}   # read back
