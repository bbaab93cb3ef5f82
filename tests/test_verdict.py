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


def test_census_control_reads_a_fixed_mask_and_prefers_the_true_flow():
    for domain, bar in (("source", 0.7), ("target", 1.0)):  # the target: noise, blur, JPEG, ... (and slow motion)
        clip = synthetic.render_video(synthetic.domain(domain), 5, 2, 96, 128)
        (im1, im2), flow = clip.frames, clip.flow[0]
        true, n = proxies.census_error(im1, im2, flow)
        zero, n0 = proxies.census_error(im1, im2, np.zeros_like(flow))
        off, n1 = proxies.census_error(im1, im2, flow + [1.5, 0.0])
        assert n == n0 == n1 > 0.05 * flow[..., 0].size   # the same pixels whatever the flow
        assert true < bar * off and true < bar * zero, (domain, true / n, off / n, zero / n)
    g = proxies.grey(im1)
    mask = proxies.census_mask(g)
    r = proxies.CENSUS_RADIUS
    assert not mask[:r].any() and not mask[:, -r:].any() and mask.mean() < 0.95
    assert proxies.census_error(im1, im1, np.zeros_like(flow))[0] == 0.0


def test_atc_threshold_and_forward_backward_per_speed_bin():
    fb = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    tau = proxies.atc_threshold(fb, np.array([0.2, 3.0, 0.9, 5.0, 2.0]))   # 2 of 5 within 1 px
    assert tau == pytest.approx(0.8) and np.mean(fb < tau) == pytest.approx(0.4)
    assert proxies.atc_threshold(fb, np.zeros(5)) == np.inf
    flow = np.zeros((2, 3, 2))
    flow[0, :, 0] = [0.5, 2.0, 20.0]   # bins [0,1), [1,4), [16,inf)
    fb2 = np.array([[0.0, 1.5, 3.0], [0.0, 0.0, 0.0]])
    by = proxies.fb_by_speed(fb2, flow)
    assert set(by) == set(proxies.FB_BIN_KEYS)
    assert by["fb_auc@[0,1)"] == 1.0 and by["fb_auc@[1,4)"] == pytest.approx(0.5) and by["fb_auc@[16,inf)"] == 0.0
    assert np.isnan(by["fb_auc@[4,16)"])
    assert proxies.direction("fb_auc@[1,4)") is False and proxies.direction("census_err") is True
    assert proxies.direction("flow_mag") is None


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
    # 'better' needs MIN_CLIPS clips (on one the interval is the point itself); 'worse' does not
    few = verdict.decide({"chain_rel": _ch(-6, -6, -6, clips=verdict.MIN_CLIPS - 1)}, point)
    assert few["verdict"] == "cannot tell" and "'better' needs the deciding proxies on at least 3 clips" in few["because"][-1]
    assert verdict.decide({"chain_rel": _ch(-6, -6, -6, clips=verdict.MIN_CLIPS)}, point)["verdict"] == "better"
    assert verdict.decide({"chain_rel": _ch(6, 6, 6, clips=1)}, point)["verdict"] == "worse"
    # checkpoint selection ranks by how far the weakest deciding proxy's judged gain clears the margin
    assert verdict.clearance({"kw_epe": _ch(-5, -8, -2), "fb_auc": _ch(3, 1, 5)}, two) == pytest.approx(1.0)
    assert verdict.clearance({"chain_rel": _ch(-6, -20, 3)}, point) == pytest.approx(1.0)
    assert verdict.clearance({"kw_epe": _ch(-5, -8, -2)}, two) == float("-inf")
    judged = [{"step": 50, "verdict": "better", "clearance": 2.0}, {"step": 100, "verdict": "better", "clearance": 2.0},
              {"step": 150, "verdict": "cannot tell", "clearance": 9.0}, {"step": 25, "verdict": "better", "clearance": 0.5}]
    assert verdict.choose_checkpoint(judged)["step"] == 100
    assert verdict.choose_checkpoint([j for j in judged if j["verdict"] != "better"]) is None
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
    assert rep["kind"] == "flow" and rep["loso"]["worst_worse_by_exported"] <= 0.0 < rep["loso"]["worst_worse_by_refined"]
    # the report keeps every cell with its intervals, so that a later run adds seeds to it
    saved = str(tmp_path / "verdict.json")
    with open(saved, "w") as f:
        json.dump(rep, f)
    assert proxy_study.read_cells([saved]) == json.loads(json.dumps(cells))
    with pytest.raises(ValueError, match="blur 1 seed 0 is in both"):
        proxy_study.read_cells([saved, root])
    with open(saved, "w") as f:
        json.dump({k: v for k, v in rep.items() if k != "cell_records"}, f)
    with pytest.raises(ValueError, match="verdict.json: expected a proxy-study report"):
        proxy_study.read_cells([saved])
    # one rule per task kind: a study of tracks beside one of flow is refused
    with open(os.path.join(root, "fog_1", "seed0", "eval", "metrics.json")) as f:
        m = json.load(f)
    os.makedirs(os.path.join(root, "fog_2", "seed0", "eval"))
    with open(os.path.join(root, "fog_2", "seed0", "eval", "metrics.json"), "w") as f:
        json.dump({**m, "kind": "tracks"}, f)
    with pytest.raises(ValueError, match="mix task kinds"):
        proxy_study.report(proxy_study.read_cells([root]))


@pytest.mark.parametrize("kind,proxy", [("flow", "chain_rel"), ("tracks", "kw_track_err")])
def test_the_installed_rule_and_its_record_come_from_the_study(kind, proxy):
    if not os.path.exists(verdict.RECORDS[kind]):
        assert verdict.installed_rule(kind) == verdict.DEFAULT_RULES[kind]
        assert "No study record" in verdict.record_lines(kind)[0]
        return
    with open(verdict.RECORDS[kind]) as f:
        rec = json.load(f)
    assert verdict.installed_rule(kind) == verdict.Rule(**{**rec["rule"], "proxies": tuple(rec["rule"]["proxies"])})
    lines = "\n".join(verdict.record_lines(kind))
    assert f"({rec['cells']} cells" in lines and f"| {proxy} |" in lines and "leave-one-shift-out" in lines


def test_known_warp_clips_carry_exact_tracks_and_end_on_the_pair(frame):
    pts = np.stack(np.meshgrid(np.arange(8.0, 120, 8), np.arange(8.0, 88, 8)), -1).reshape(-1, 2)
    seed = known_warp.clip_seed("v", 0)
    frames, tracks, visible = known_warp.make_clip(frame, seed, 6, pts)
    assert frames.shape == (6, 96, 128, 3) and tracks.shape == (len(pts), 6, 2) and visible[:, 0].all()
    np.testing.assert_array_equal(tracks[:, 0], pts)
    # the colour under each visible track stays the query's; a track 1 px off does not
    colour = lambda t, xy: known_warp.sample(frames[t].astype(np.float64), xy)
    ref = colour(0, pts)
    err = np.mean([np.abs(colour(t, tracks[:, t]) - ref).mean(-1)[visible[:, t]].mean() for t in range(1, 6)])
    off = np.mean([np.abs(colour(t, tracks[:, t] + [1.0, 0.0]) - ref).mean(-1)[visible[:, t]].mean()
                   for t in range(1, 6)])
    assert err < 1.5 and off > 2 * err, (err, off)
    # the last frame is the pair's second image, and the tracks end where the pair's flow sends them
    im1, im2, flow, valid = known_warp.make_pair(frame, seed)
    np.testing.assert_array_equal(frames[0], im1)
    np.testing.assert_array_equal(frames[-1], im2)
    xi, yi = pts[:, 0].astype(int), pts[:, 1].astype(int)
    np.testing.assert_allclose(tracks[:, -1][valid[yi, xi]], (pts + flow[yi, xi])[valid[yi, xi]], atol=1e-3)
    np.testing.assert_array_equal(visible[:, -1], valid[yi, xi])


class _ConstantVelocity:
    """A stand-in tracker for the proxies' arithmetic: every query moves by `v` px per frame from
    its own frame, plus `drift` px per frame counted from frame 0 whatever the query frame (a
    tracker whose answer depends on where it starts)."""

    def __init__(self, v, drift=(0.0, 0.0)):
        self.v, self.drift = np.asarray(v, np.float32), np.asarray(drift, np.float32)

    def __call__(self, frames, queries):
        t = np.arange(len(frames), dtype=np.float32)[None, :, None]
        q = np.asarray(queries, np.float32)
        tracks = q[:, None, 1:] + (t - q[:, :1, None]) * self.v + t * self.drift * (q[:, :1, None] == 0)
        return {"tracks": tracks, "visible": np.ones(tracks.shape[:2], bool)}


def test_track_proxies_requery_and_known_warp_arithmetic(frame):
    from refine_jax.evaluation import track_proxies
    frames = np.repeat(frame[None], 8, 0)
    grid = np.concatenate([np.zeros((64, 1)), track_proxies.cycle.grid_points(96, 128, 8)], -1)

    def first(tracker):  # the model's tracks from frame-0 queries, as the labelling check gives them
        out = tracker(frames, grid)
        return frames, out["tracks"], out["visible"]
    steady = _ConstantVelocity((1.0, 0.5))
    consistent = track_proxies.requery_errors(steady, *first(steady))
    assert consistent["requery_err"] == pytest.approx(0.0, abs=1e-5) and consistent["requery_rel"] == pytest.approx(0.0, abs=1e-6)
    assert consistent["track_mag"] == pytest.approx(np.hypot(1.0, 0.5), rel=1e-5)
    # the first track drifts 0.5 px/frame more than the re-queried one: at frame t the two differ
    # by 0.5 |t - 4| (the re-query starts at frame 4, on the first track)
    drifter = _ConstantVelocity((1.0, 0.0), drift=(0.5, 0.0))
    drifting = track_proxies.requery_errors(drifter, *first(drifter))
    diffs = [0.5 * abs(t - 4) for t in range(8) if t != 4]
    assert drifting["requery_err"] == pytest.approx(np.mean(diffs), rel=1e-4)
    assert drifting["requery_rel"] == pytest.approx(sum(diffs) / sum(1.5 * abs(t - 4) for t in range(8) if t != 4), rel=1e-4)
    # known warp: a tracker that answers with the exact tracks scores 0; one held still does not
    clip = synthetic.render_video(synthetic.domain("target"), 5, 3, 96, 128)
    mid = clip.frames[1]
    pts = track_proxies.cycle.grid_points(96, 128, track_proxies.GRID)
    _, truth, _ = known_warp.make_clip(mid, known_warp.clip_seed(clip.video_id, clip.clip_start), 8, pts,
                                       track_proxies.TRACK_WARP)

    def exact(frames, queries):
        assert np.array_equal(queries[:, 1:], pts)
        return {"tracks": truth, "visible": np.ones(truth.shape[:2], bool)}
    assert track_proxies.known_warp_error(exact, clip, 8) == pytest.approx(0.0, abs=1e-6)
    assert track_proxies.known_warp_error(_ConstantVelocity((0.0, 0.0)), clip, 8) > 1.0


def test_the_eval_stage_reads_the_aggregate_proxies_as_the_study_does(tmp_path):
    """A rule may decide on cycle_pass, which has no per-clip rows: the eval stage's judge takes
    its change from the two measurements' aggregates, as proxy_study.read_cells does."""
    from refine_jax import settings
    from refine_jax.stages import evaluate
    rows_b = [{"requery_err": 10.0 + i} for i in range(4)]
    rows_a = [{"requery_err": 8.0 + i} for i in range(4)]
    m_b = {"model": {"delta_avg": 0.6, "cycle_pass": 0.20, "photometric_error": 40.0}, "proxy_rows": rows_b}
    m_a = {"model": {"delta_avg": 0.62, "cycle_pass": 0.25, "photometric_error": 40.0}, "proxy_rows": rows_a}
    got = evaluate.judge(m_b, m_a, settings.EvalConfig(), "tracks")
    ch = got["proxy_changes"]
    assert ch["cycle_pass"] == {"change": pytest.approx(25.0), "lo": pytest.approx(25.0),
                                "hi": pytest.approx(25.0), "clips": 4}
    assert ch["photometric_error"]["change"] == 0.0 and ch["requery_err"]["change"] < 0
    rule = verdict.Rule(proxies=("requery_err", "cycle_pass"), margin=0.0)
    assert verdict.decide(ch, rule)["verdict"] == "better"
    # the study reads the same numbers from a cell's metrics.json
    d = tmp_path / "s" / "fog_1" / "seed0" / "eval"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"primary": "delta_avg", "lower_is_better": False, "kind": "tracks",
                                                "before": m_b["model"], "after": m_a["model"], "clips": 4,
                                                "proxy_changes": ch}))
    assert proxy_study.read_cells([str(tmp_path / "s")])[0]["changes"] == ch
    # without proxies measured there is nothing to judge, aggregates or not
    bare = evaluate.judge({"model": m_b["model"]}, {"model": m_a["model"]}, settings.EvalConfig(), "tracks")
    assert bare["verdict"]["verdict"] == "cannot tell" and bare["proxy_changes"] == {}
