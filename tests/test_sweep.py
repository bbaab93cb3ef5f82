"""refine_jax.tools.sweep: variants parsed and applied, batches over epochs, the demo's checks, a tiny sweep."""
import json

import numpy as np
import pytest

from refine_jax import cli
from refine_jax.tools import sweep


def test_variants_parse_and_apply():
    assert sweep.parse_variant("default:") == ("default", {})
    name, o = sweep.parse_variant("x:train.lr=5e-5; train.frozen=('fnet',);train.mask_mode=batch_mean")
    assert name == "x" and o == {"train.lr": 5e-5, "train.frozen": ("fnet",), "train.mask_mode": "batch_mean"}
    c = sweep.variant_config(cli.load_config("configs/raft.py"), o)
    assert c.train.lr == 5e-5 and c.train.frozen == ("fnet",)
    with pytest.raises(ValueError, match="train.nope: the config has no such field"):
        sweep.variant_config(c, {"train.nope": 1})
    with pytest.raises(ValueError, match="'lr' is not section.key=value"):
        sweep.parse_variant("x:lr")


def test_batches_span_epochs_of_permutations():
    b = sweep.batches(5, 2, 6, seed=3)
    flat = [i for x in b for i in x]
    assert len(b) == 6 and all(len(x) == 2 for x in b)
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert b == sweep.batches(5, 2, 6, seed=3) and b != sweep.batches(5, 2, 6, seed=4)


def test_checks_and_table():
    before = {"epe": 2.0, "1px": 0.5, "3px": 0.8, "epe@[0,1)": 1.0, "epe@[1,4)": 2.0, "epe@[4,16)": 3.0,
              "epe@[16,inf)": 9.0, "share@[0,1)": 0.5, "share@[1,4)": 0.3, "share@[4,16)": 0.17, "share@[16,inf)": 0.03}
    good = {**before, "epe": 1.8, "1px": 0.6, "3px": 0.85, "epe@[0,1)": 0.9, "epe@[16,inf)": 12.0}  # rare bin worse
    slow_only = {**good, "epe@[4,16)": 3.1}
    assert all(sweep.checks(before, good).values())
    assert sweep.checks(before, slow_only) == {"epe": True, "bins": False, "1px": True, "3px": True}
    rows = [{"variant": "before", "target_seed": 0, "metrics": before},
            {"variant": "a", "target_seed": 0, "train_seed": 0, "metrics": good},
            {"variant": "a", "target_seed": 0, "train_seed": 1, "metrics": slow_only}]
    table = sweep.summarise(rows)
    assert "| a | 2 | -10.0 % (-10.0 / -10.0) | 1/2 | 0 / 1 / 0 / 0 |" in table
    assert "+1.7 % (1)" in table  # the [4,16) bin: 0 and +3.3 %


def test_a_tiny_sweep_measures_the_frozen_model_unchanged_by_a_zero_learning_rate(tmp_path):
    config = cli.load_config("configs/raft.py:runlocal")  # one 3-frame video, one 1-iteration step
    config.demo.update({"target_videos": 1, "size": (128, 128)})
    config.train.update({"steps": 1, "iters": 1})
    config.augment.enabled = False
    config.eval.proxies = False  # the sweep's ground-truth metrics; the proxies are tested with the verdict
    out = str(tmp_path / "sweep.jsonl")
    rows = sweep.run(config, {"still": {"train.lr": 0.0}}, [0], [0], out, wise=[0.5], log=lambda s: None)
    assert [r["variant"] for r in rows] == ["before", "still", "still wise0.5"]
    assert [json.loads(line) for line in open(out)] == json.loads(json.dumps(rows))
    before = rows[0]["metrics"]
    assert before["epe"] > 0 and abs(sum(before[f"share@{k}"] for k in sweep.BINS) - 1) < 1e-9
    for r in rows[1:]:  # lr 0 trains nothing (AdamW's decay is scaled by the lr too)
        np.testing.assert_allclose(r["metrics"]["epe"], before["epe"], rtol=1e-6)
    assert "| still | 1 | +0.0 % (+0.0 / +0.0) | 0/1 | 1 / 0 / 1 / 1 |" in sweep.summarise(rows)
