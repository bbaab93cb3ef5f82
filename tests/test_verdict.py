"""The label-free proxies, their paired intervals, the verdict rule, and the proxy study's scoring."""
import json
import os

import numpy as np
import pytest

from refine_jax.demo import synthetic
from refine_jax.evaluation import known_warp, proxies, verdict
from refine_jax.tools import proxy_study


@pytest.fixture(scope="module")
def frame():
    return synthetic.render_video(synthetic.domain("target"), 5, 2, 96, 128).frames[0]


def _warped_back(image2, flow):
    return known_warp.sample(image2.astype(np.float64), known_warp.pixel_grid(*flow.shape[:2]) + flow)


def test_known_warp_pairs_match_under_their_flow_and_not_under_a_wrong_one(frame):
    for seed in range(3):
        im1, im2, flow, valid = known_warp.make_pair(frame, seed)
        assert im1.shape == im2.shape == frame.shape and im1.dtype == np.uint8 and flow.shape == (96, 128, 2)
        assert 0.5 < valid.mean() < 1.0 and np.abs(flow).max() > 1.0
        err = np.abs(_warped_back(im2, flow) - im1).mean(-1)[valid].mean()
        off = np.abs(_warped_back(im2, flow + [1.0, 0.0]) - im1).mean(-1)[valid].mean()
        assert err < 1.0 and off > 2.5 * err, (seed, err, off)


def test_known_warp_is_fixed_by_the_clip_and_masks_what_leaves_or_is_covered(frame):
    a, b = known_warp.make_pair(frame, known_warp.clip_seed("v", 3)), known_warp.make_pair(frame, known_warp.clip_seed("v", 3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert known_warp.clip_seed("v", 3) != known_warp.clip_seed("v", 4)
    _, _, flow, valid = a
    h, w = valid.shape
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1)
    end = grid + flow
    outside = (end[..., 0] < 0) | (end[..., 0] > w - 1) | (end[..., 1] < 0) | (end[..., 1] > h - 1)
    assert not valid[outside].any()


def test_chain_error_and_forward_backward_scores():
    f = np.full((16, 20, 2), 1.5)
    s, n, mag = proxies.chain_error(f, f, 2 * f)
    assert s == pytest.approx(0.0, abs=1e-9) and 0 < n < 16 * 20 and mag / n == pytest.approx(3 * np.sqrt(2))
    s, n, _ = proxies.chain_error(f, f, 2 * f + [3.0, 4.0])
    assert s / n == pytest.approx(5.0)
    sc = proxies.fb_scores(np.array([0.0, 0.5, 1.5, 6.0]))
    assert sc["fb_1px"] == 0.5 and sc["fb_auc"] == pytest.approx((1 + 5 / 6 + 0.5 + 0) / 4)


def test_paired_change_and_its_interval():
    b = np.array([2.0, 3.0, 4.0, 5.0, 6.0])
    c = verdict.paired_change(b, 0.9 * b)
    assert c["change"] == pytest.approx(-10.0) and c["lo"] == pytest.approx(-10.0) and c["hi"] == pytest.approx(-10.0)
    noisy = verdict.paired_change(b, b * [0.8, 1.1, 0.85, 1.05, 0.9])
    assert noisy["lo"] < noisy["change"] < noisy["hi"] and noisy["clips"] == 5
    assert verdict.paired_change([1.0, np.nan, 2.0], [0.5, 1.0, 1.0])["clips"] == 2
    assert verdict.paired_change([2.0], [1.0]) == {"change": -50.0, "lo": -50.0, "hi": -50.0, "clips": 1}


def _ch(change, lo, hi, clips=6):
    return {"change": change, "lo": lo, "hi": hi, "clips": clips}


def test_the_verdict_rule():
    rule = verdict.Rule(proxies=("kw_epe",), margin=1.0, drift="source_epe", drift_tolerance=2.0)
    # kw_epe is lower-better: a fall whose whole interval is beyond the margin is 'better'
    assert verdict.decide({"kw_epe": _ch(-5, -8, -2)}, rule)["verdict"] == "better"
    assert verdict.decide({"kw_epe": _ch(-5, -8, -0.5)}, rule)["verdict"] == "cannot tell"
    assert verdict.decide({"kw_epe": _ch(5, 2, 8)}, rule)["verdict"] == "worse"
    # a clear loss on the source overrules
    bad_drift = {"kw_epe": _ch(-5, -8, -2), "source_epe": _ch(6, 3, 9)}
    assert verdict.decide(bad_drift, rule)["verdict"] == "worse"
    assert verdict.decide({"kw_epe": _ch(-5, -8, -2), "source_epe": _ch(1, -1, 3)}, rule)["verdict"] == "better"
    # higher-better proxies; every deciding proxy must agree; one not measured makes it unclear
    two = verdict.Rule(proxies=("kw_epe", "fb_auc"), margin=0.0, drift="")
    assert verdict.decide({"kw_epe": _ch(-5, -8, -2), "fb_auc": _ch(3, 1, 5)}, two)["verdict"] == "better"
    assert verdict.decide({"kw_epe": _ch(-5, -8, -2), "fb_auc": _ch(0, -1, 1)}, two)["verdict"] == "cannot tell"
    out = verdict.decide({"kw_epe": _ch(-5, -8, -2)}, two)
    assert out["verdict"] == "cannot tell" and "fb_auc: not measured" in out["because"]
    # judged on the change itself: a wide interval no longer blocks it
    point = verdict.Rule(proxies=("chain_rel",), margin=5.0, drift="", interval=False)
    assert verdict.decide({"chain_rel": _ch(-6, -20, 3)}, point)["verdict"] == "better"
    assert verdict.decide({"chain_rel": _ch(-4, -5, -4.5)}, point)["verdict"] == "cannot tell"
    assert verdict.decide({"chain_rel": _ch(6, -2, 9)}, point)["verdict"] == "worse"
    assert verdict.exported_model("better", True) == "refined"
    assert verdict.exported_model("cannot tell", True) == verdict.exported_model("worse", True) == "initial"
    assert verdict.exported_model("worse", False) == "refined"


def _cell(root, shift, seed, gt, kw, fb):
    d = os.path.join(root, f"{shift}_1", f"seed{seed}", "eval")
    os.makedirs(d)
    before = {"epe": 2.0, "cycle_pass": 0.1, "photometric_error": 5.0}
    after = {"epe": 2.0 * (1 + gt / 100), "cycle_pass": 0.09, "photometric_error": 5.1}
    m = {"primary": "epe", "lower_is_better": True, "before": before, "after": after, "clips": 6,
         "proxy_changes": {"kw_epe": _ch(kw, kw - 1, kw + 1), "fb_auc": _ch(fb, fb - 1, fb + 1),
                           "source_epe": _ch(0, -1, 1)}}
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump(m, f)


def test_proxy_study_scores_each_proxy_and_the_held_out_verdict(tmp_path):
    root = str(tmp_path / "study")
    # kw_epe tracks the ground truth (its change has the same sign and order); fb_auc opposes it
    rng = np.random.default_rng(0)
    for k, shift in enumerate(("blur", "fog", "noise", "jpeg")):
        for seed in range(3):
            gt = rng.choice([-1, 1]) * rng.uniform(2, 10)
            _cell(root, shift, seed, gt, kw=gt * 0.8, fb=gt)
    cells = proxy_study.read_cells([root])
    assert len(cells) == 12 and {c["shift"] for c in cells} == {"blur", "fog", "noise", "jpeg"}
    rep = proxy_study.report(cells)
    kw, fb = rep["proxies"]["kw_epe"], rep["proxies"]["fb_auc"]
    assert kw["sign_agreement"] == 1.0 and kw["spearman"] == pytest.approx(1.0) and kw["auc"] == 1.0
    assert fb["sign_agreement"] == 0.0 and fb["spearman"] == pytest.approx(-1.0) and fb["auc"] == 0.0
    s = rep["loso"]
    assert s["agreement_1pct"] == 1.0 and s["worst_change_exported"] <= 0.0
    assert s["mean_change_exported"] < 0 and s["worst_change_refined"] > 0
    assert "kw_epe" in rep["chosen_rule"]["proxies"]
    assert "| kw_epe | 12 | 1.00 |" in proxy_study.markdown(rep)


def test_the_installed_rule_and_its_record_come_from_the_study():
    with open(verdict.RECORD) as f:
        rec = json.load(f)
    assert verdict.RULE == verdict.Rule(**{**rec["rule"], "proxies": tuple(rec["rule"]["proxies"])})
    lines = "\n".join(verdict.record_lines())
    assert f"({rec['cells']} cells" in lines and "| chain_rel |" in lines and "leave-one-shift-out" in lines
