"""The main job end to end on the tiny presets: every stage, real shards and checkpoints on disk."""
import json
import math
import os
import subprocess
import sys

import pytest

from refine_jax import checkpoints, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("config", ["raft", "pips"])
def test_runlocal_all_stages(config, tmp_path):
    wd = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "refine_jax.main", f"--config={ROOT}/configs/{config}.py:runlocal",
                           f"--workdir={wd}"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "before" in proc.stdout and "after" in proc.stdout
    for path in ("data/source/manifest.json", "data/source_eval/manifest.json", "data/target/manifest.json",
                 "pretrain/model/model.json", "labels/manifest.json", "model/model.json", "oracle/model/model.json",
                 "eval/metrics.json", "eval/report.md", "eval/curve.png"):
        assert (wd / path).exists(), path
    m = json.loads((wd / "eval" / "metrics.json").read_text())
    primary = "epe" if config == "raft" else "delta_avg"
    assert m["primary"] == primary
    assert set(m["before"]) == set(m["after"]) and primary in m["after"]
    # the oracle is measured without the label-free proxies: only before/after feed the verdict
    assert primary in m["oracle"] and set(m["oracle"]) < set(m["before"])
    assert not {"kw_epe", "kw_track_err", "source_epe", "source_ate", "chain_rel", "requery_rel"} & set(m["oracle"])
    assert primary in m["baseline"] and m["baseline_name"] == ("zero flow" if config == "raft" else "query point held still")
    speed = "epe@[4,16)" if config == "raft" else "ate@[4,16)"
    assert speed in m["after"] and "cycle_pass" in m["after"] and "photometric_error" in m["after"]
    assert set(m["improved"]) == set(m["before"]) and abs(sum(m["speed_bins"].values()) - 1) < 1e-6
    report = (wd / "eval" / "report.md").read_text()
    assert "| metric | better | baseline | before | after | change | improved | oracle |" in report
    assert len(m["curve"]) >= 2
    # the verdict and the guard: WORKDIR/exported is the refined model only on 'better'
    assert m["verdict"]["verdict"] in ("better", "worse", "cannot tell")
    assert m["exported"]["model"] == ("refined" if m["verdict"]["verdict"] == "better" else "initial")
    exported = json.loads((wd / "exported" / "model.json").read_text())["provenance"]
    assert exported["exported"] == m["exported"]["model"] and exported["verdict"] == m["verdict"]["verdict"]
    assert m["exported"]["metrics"] == m["after" if m["exported"]["model"] == "refined" else "before"]
    assert "label-free verdict: " in proc.stdout
    proxies = ({"kw_epe", "fb_auc", "fb_1px", "chain_err", "source_epe"} if config == "raft" else
               {"kw_track_err", "fb_auc", "fb_1px", "requery_err", "requery_rel", "source_ate"})
    assert proxies <= set(m["proxy_changes"]) and "## Did refinement help? (label-free verdict)" in report
    # the pre-training stage (the stand-ins' recipe, tiny): its model's provenance names the recipe,
    # the seeds and the source metrics, and hashes exactly the weights written
    prov = json.loads((wd / "pretrain" / "model" / "model.json").read_text())["provenance"]
    demo = cli.load_config(f"{ROOT}/configs/{config}.py:runlocal").demo
    assert prov["steps"] == demo.pretrain.steps and prov["recipe"]["demo"]["source_videos"] == demo.source_videos
    assert prov["seeds"]["source_data"] == demo.source_seed and "not official" in prov["source"]
    key = "epe" if config == "raft" else "ate"
    sm = prov["source_metrics"]
    assert sm["clips"] == 1 and math.isfinite(sm["model"][key]) and math.isfinite(sm["baseline"][key])
    assert prov["variables_sha256"] == checkpoints.fingerprint(str(wd / "pretrain" / "model" / "variables"))
    src = json.loads((wd / "data" / "source" / "manifest.json").read_text())
    assert src["records"] == demo.source_videos and src["seed"] == demo.source_seed
    assert os.listdir(wd / "tensorboard")
    if config == "pips":
        return  # what follows is the same code for both models; RAFT runs it
    # a re-run resumes every stage from what is on disk and changes nothing
    again = subprocess.run([sys.executable, "-m", "refine_jax.main",
                            f"--config={ROOT}/configs/{config}.py:runlocal", f"--workdir={wd}",
                            "--config.stages=label,train,eval", "--config.eval.select_checkpoint=True"],
                           capture_output=True, text=True, timeout=600,
                           cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    m2 = json.loads((wd / "eval" / "metrics.json").read_text())
    assert m2["after"] == m["after"]
    # the re-run selects the checkpoint by the verdict: each kept one judged, the last as the verdict
    sel, ex = m2["selection"], m2["exported"]
    steps = [j["step"] for j in sel["checkpoints"]]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == m2["after_step"]
    assert sel["checkpoints"][-1]["verdict"] == m2["verdict"]["verdict"]
    chosen = [j for j in sel["checkpoints"] if j["step"] == sel["chosen_step"]]
    assert ex["model"] == ("refined" if chosen else "initial") and all(j["verdict"] == "better" for j in chosen)
    assert ex["step"] == (sel["chosen_step"] if chosen else 0) and ex["metrics"] == (chosen[0]["metrics"] if chosen else m2["before"])
    assert json.loads((wd / "exported" / "model.json").read_text())["provenance"]["step"] == ex["step"]
    assert "Checkpoint selection: every kept training checkpoint judged" in (wd / "eval" / "report.md").read_text()
    # a second round labels with the first round's model and trains from it in round2/
    more = subprocess.run([sys.executable, "-m", "refine_jax.main", f"--config={ROOT}/configs/{config}.py:runlocal",
                           f"--workdir={wd}", "--config.stages=label,train,eval", "--config.label.rounds=2"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "stage times: label_round1 " in more.stdout and " train_round2 " in more.stdout and " eval " in more.stdout
    labels2 = json.loads((wd / "round2" / "labels" / "manifest.json").read_text())
    assert labels2["model"] == str(wd / "model")
    m2 = json.loads((wd / "eval" / "metrics.json").read_text())
    assert m2["model_after"] == str(wd / "round2" / "model") and m2["before"] == m["before"]
    assert m2["after"] != m["after"]
