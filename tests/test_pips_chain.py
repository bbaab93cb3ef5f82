"""Chained PIPs over long videos: the official re-anchoring rule, mid-video queries, bounded memory,
and `infer tracks` on real files."""
import json

import numpy as np
import pytest

import golden
from refine_jax import infer
from refine_jax.data import frames as frames_lib
from refine_jax.models.pips_chain import ChainedTracker, choose_jump


def _video(t_len):
    """A t_len-frame 128x128 video: the 8 golden PIPs frames played back and forth."""
    f = golden.golden("pips_seed2_s8")["frames"][:, 40:168, 80:208]
    seq = np.concatenate([f, f[::-1]] * (t_len // 16 + 1))
    return np.ascontiguousarray(seq[:t_len])


def _reference_jump(vis):
    """The rule restated: the largest si in 2..7 with vis > thr, for the first thr in 0.9, 0.88, ..."""
    for k in range(10_000):
        thr = 0.9 - 0.02 * k
        hits = [si for si in range(2, len(vis)) if vis[si] > thr]
        if hits:
            return max(hits)
    raise AssertionError


def test_choose_jump_rule():
    assert choose_jump(np.array([1, 1, 1, 1, 1, 1, 1, 0.95])) == 7
    assert choose_jump(np.array([1, 1, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5])) == 2
    assert choose_jump(np.array([1, 1.0, 0.5, 0.5, 0.89, 0.5, 0.5, 0.5])) == 4  # after one lowering
    assert choose_jump(np.array([1, 0.99, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])) == 7  # never frame 1
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = rng.uniform(0, 1, 8).astype(np.float32)
        assert choose_jump(v) == _reference_jump(v)


@pytest.fixture(scope="module")
def chained(converted):
    cfg, variables = converted("pips")
    video = _video(44)
    queries = np.array([[0, 30, 40], [0, 60.5, 70], [5, 20, 100], [12, 64, 64]], np.float32)
    tracker = ChainedTracker(cfg, variables, keep_log=True)
    return video, queries, tracker, tracker(video, queries)


def test_windows_follow_the_official_rule(chained):
    video, queries, tracker, out = chained
    per_point = {}
    for w in tracker.stats.windows:
        for j, p in enumerate(w["points"]):
            assert w["jumps"][j] == _reference_jump(w["vis"][:, j])  # visibility the model produced
            if not w["reverse"]:
                per_point.setdefault(p, []).append((w["start"], w["jumps"][j], w["coords"][:, j]))
    for p in range(len(queries)):
        wins = per_point[p]
        assert wins[0][0] == int(queries[p, 0])  # the first window starts at the query frame
        for (s0, jump, coords), (s1, _, coords1) in zip(wins, wins[1:]):
            assert s1 == s0 + jump
            np.testing.assert_allclose(coords1[0], coords[jump], atol=1e-4)  # re-anchored there
        last_s, _, last_c = wins[-1]
        real = min(8, len(video) - last_s)
        np.testing.assert_allclose(out["tracks"][p, last_s:last_s + real], last_c[:real], atol=1e-5)
        assert last_s + wins[-1][1] >= len(video)


def test_mid_video_queries(chained):
    video, queries, _, out = chained
    assert out["tracks"].shape == (4, 44, 2) and out["visible"].shape == (4, 44)
    for i, (t, x, y) in enumerate(queries):
        np.testing.assert_allclose(out["tracks"][i, int(t)], [x, y], atol=1e-4)
        assert out["visible"][i, int(t)]
    assert np.isfinite(out["tracks"]).all()
    assert np.abs(out["tracks"][3, :12] - queries[3, 1:]).sum() > 0  # frames before t=12 were tracked


def test_memory_does_not_grow_with_length(converted):
    cfg, variables = converted("pips")
    stats = []
    for t_len in (40, 80):
        tracker = ChainedTracker(cfg, variables)
        tracker(_video(t_len), np.array([[0, 30, 40], [0, 90, 20]], np.float32))
        stats.append(tracker.stats)
    for t_len, st in zip((40, 80), stats):
        assert st.max_cached <= 8          # feature maps held at once, whatever the length
        assert st.encoded == t_len + 1     # each frame once, plus the query frame's template
    # (arrays that grow with T are only the outputs: tracks and visibility)


def test_bad_queries_are_named(converted):
    cfg, variables = converted("pips")
    tracker = ChainedTracker(cfg, variables)
    video = _video(10)
    with pytest.raises(ValueError, match=r"query 1 \(t=10, x=5, y=5\): frame index"):
        tracker(video, np.array([[0, 5, 5], [10, 5, 5]], np.float32))
    with pytest.raises(ValueError, match=r"query 0 \(t=0, x=130, y=5\): point is outside the 128x128"):
        tracker(video, np.array([[0, 130, 5]], np.float32))
    with pytest.raises(ValueError, match="too small for PIPs at stride 8"):
        tracker(video[:, :100], np.array([[0, 5, 5]], np.float32))


def test_infer_tracks_cli_on_short_mp4(recipe_pth, tmp_path):
    """A 5-frame video (< 8): padded like the original, said in tracks.json; npz + mp4 written."""
    video = _video(5)
    path = str(tmp_path / "clip.mp4")
    frames_lib.write_video(path, video, fps=12)
    out = tmp_path / "out"
    assert infer.main(["tracks", f"--weights={recipe_pth('pips')}", f"--video={path}", f"--out={out}",
                       "--grid=3", "--stride=8", "--iters=2"]) == 0
    res = np.load(out / "tracks.npz")
    assert res["tracks"].shape == (9, 5, 2) and res["visible"].dtype == bool
    assert res["queries"].shape == (9, 3) and (res["queries"][:, 0] == 0).all()
    np.testing.assert_allclose(res["tracks"][:, 0], res["queries"][:, 1:], atol=1e-4)
    meta = json.loads((out / "tracks.json").read_text())
    assert meta["short_video_padded"] and "padded" in meta["note"]
    assert len(frames_lib.read_frames(str(out / "tracks.mp4"))) == 5
    q = tmp_path / "q.npy"
    np.save(q, np.array([[0, 10, 10], [9, 10, 10]], np.float32))
    assert infer.main(["tracks", f"--weights={recipe_pth('pips')}", f"--video={path}",
                       f"--out={tmp_path / 'o2'}", f"--queries={q}", "--stride=8"]) == 2
