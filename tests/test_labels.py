"""The label stage: sharded equals single-device, resume after SIGKILL, statistics against GT."""
import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from refine_jax.data import shards
from refine_jax.demo import synthetic
from refine_jax.labels import stats as label_stats, tracks as track_labels
from refine_jax.stages import label as label_stage

LOOSE = {"alpha": 0.5, "beta": 10.0, "color_thresh": 1.0, "iters": 3}  # random weights: keep most


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    with shards.ShardWriter(str(d), "vid", max_shard_bytes=150_000) as w:
        for i in range(4):
            w.write_clip(synthetic.render_video(synthetic.PRESETS["target"], i, 3, 128, 136, 8,
                                                video_id=f"v{i}"))
    assert len(w.manifest["files"]) >= 3
    return str(d)


def _cfg(init, videos, **label):
    return ml_collections.ConfigDict({"init": init, "data": {"videos": videos}, "label": label})


def _outputs(workdir):
    d = os.path.join(workdir, "labels")
    files = sorted(f for f in os.listdir(d) if f.endswith(".tfrecord"))
    return {f: open(os.path.join(d, f), "rb").read() for f in files}, json.load(open(os.path.join(d, "manifest.json")))


def test_eight_devices_give_the_single_device_labels(recipe_pth, videos, tmp_path):
    out = {}
    for n in (1, 8):
        label_stage.run(_cfg(recipe_pth("raft_small"), videos, num_devices=n, batch=8, **LOOSE),
                     str(tmp_path / f"w{n}"), progress=False)
        out[n] = _outputs(str(tmp_path / f"w{n}"))
    assert out[1][0] == out[8][0]  # label shards byte for byte (flows, masks, frames)
    m = out[8][1]
    assert m["stats"]["samples"] == 8 and 0 < m["stats"]["kept"] < m["stats"]["total"]
    labels = list(shards.read_clips(str(tmp_path / "w8" / "labels")))
    assert len(labels) == 8 and labels[0].flow.shape == (1, 128, 136, 2) and labels[0].flow_valid.any()


def test_resume_after_kill_equals_uninterrupted(recipe_pth, videos, tmp_path):
    """The stage killed with SIGKILL after its first shard, then re-run, writes exactly the labels
    of an uninterrupted run (both of those run in this process)."""
    label = {"num_devices": 1, **LOOSE}
    label_stage.run(_cfg(recipe_pth("raft_small"), videos, **label), str(tmp_path / "ref"), progress=False)
    killed = tmp_path / "killed"
    # this process's 8 CPU devices: XLA:CPU rounds differently with 1 and 8 host devices
    proc = subprocess.Popen([sys.executable, "-m", "refine_jax.stages.label", f"--init={recipe_pth('raft_small')}",
                             f"--videos={videos}", f"--label={json.dumps(label)}", f"--workdir={killed}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "JAX_NUM_CPU_DEVICES": "8"})
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        lab = killed / "labels"
        if lab.exists() and any(f.endswith(".stats.json") for f in os.listdir(lab)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the stage finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = os.listdir(killed / "labels")
    assert "manifest.json" not in names
    assert sum(f.endswith(".stats.json") for f in names) < 3  # it really stopped mid-run
    label_stage.run(_cfg(recipe_pth("raft_small"), videos, **label), str(killed), progress=False)
    assert not [f for f in os.listdir(killed / "labels") if f.endswith(".tmp")]
    assert _outputs(str(killed)) == _outputs(str(tmp_path / "ref"))


def test_flow_statistics_against_ground_truth(recipe_pth, videos, tmp_path):
    m = label_stage.run(_cfg(recipe_pth("raft_small"), videos, **LOOSE), str(tmp_path), progress=False)
    s = m["stats"]
    assert s["gt"]["all_n"] > 0 and s["gt_error_all"] > 0
    assert sum(v["total"] for v in s["per_video"].values()) == s["total"]
    assert sum(v["total"] for v in s["per_speed_bin"].values()) == s["total"]
    assert m["model_sha256"] and m["label_config"]["alpha"] == 0.5 and m["kind"] == "flow"
    # the recorded errors are those of the written labels against the source ground truth
    src = [c for c in shards.read_clips(videos)]
    lab = list(shards.read_clips(str(tmp_path / "labels")))
    gt = np.concatenate([c.flow[i][c.flow_valid[i]] for c in src for i in range(2)])
    est = np.concatenate([l.flow[0][src[k // 2].flow_valid[k % 2]] for k, l in enumerate(lab)])
    np.testing.assert_allclose(s["gt_error_all"], np.linalg.norm(est - gt, axis=-1).mean(), rtol=1e-4)
    speed = np.linalg.norm(est, axis=-1) - np.linalg.norm(gt, axis=-1)  # the signed speed bias, per bin
    gt_bins = np.digitize(np.linalg.norm(gt, axis=-1), [1.0, 4.0, 16.0])
    for b, name in enumerate(["[0,1)", "[1,4)", "[4,16)", "[16,inf)"]):
        if (gt_bins == b).any():
            np.testing.assert_allclose(s["gt_per_speed_bin"][name]["speed_bias_all"], speed[gt_bins == b].mean(),
                                       rtol=1e-4, atol=1e-5)
    # a re-run keeps finished shards when only the split of the work differs, and refuses them when
    # they were labelled with other settings (the manifest would otherwise record the new ones)
    assert label_stage.run(_cfg(recipe_pth("raft_small"), videos, **LOOSE, batch=3), str(tmp_path),
                        progress=False)["stats"] == s
    with pytest.raises(ValueError, match=r"stats.json marks a shard labelled with other settings "
                                         r"\(label\.alpha: 0\.5 then, 0\.25 now\)"):
        label_stage.run(_cfg(recipe_pth("raft_small"), videos, **{**LOOSE, "alpha": 0.25}), str(tmp_path),
                     progress=False)


def test_held_out_clips_are_not_labelled_and_are_the_clips_evaluated(recipe_pth, videos, tmp_path):
    """eval.holdout keeps one clip in N of each source out of labelling (so out of training), the
    eval stage reads exactly those, and labels of another holdout are refused by name."""
    from refine_jax.settings import EvalConfig
    from refine_jax.stages import evaluate
    cfg = _cfg(recipe_pth("raft_small"), videos, **LOOSE)
    cfg.eval = {"holdout": 2}
    m = label_stage.run(cfg, str(tmp_path), progress=False)
    # clips 1 and 3 of the 4 (the middle of each run of 2), which lie in different shard files
    assert [c.video_id for c in shards.read_clips(videos)] == ["v0", "v1", "v2", "v3"]
    assert m["holdout"] == 2 and m["stats"]["clips_held_out"] == 2 and m["stats"]["clips"] == 2
    assert {c.video_id for c in shards.read_clips(str(tmp_path / "labels"))} == {"v0", "v2"}
    assert set(m["stats"]["per_video"]) == {"v0", "v2"}
    clips, held = evaluate.evaluation_clips(EvalConfig(holdout=2), cfg)
    assert held and [c.video_id for c in clips] == ["v1", "v3"]
    clips, held = evaluate.evaluation_clips(EvalConfig(holdout=2, max_clips=1), cfg)
    assert held and [c.video_id for c in clips] == ["v1"]
    # a holdout too large for the source holds none out: the eval stage says so and reads them all
    clips, held = evaluate.evaluation_clips(EvalConfig(holdout=12), cfg)
    assert not held and len(clips) == 4
    # eval.data names the evaluated clips: nothing is held out of labelling
    assert EvalConfig(holdout=2, data=videos).held_out_every() == 0
    with pytest.raises(ValueError, match=r"stats.json marks a shard labelled with other settings "
                                         r"\(eval\.holdout: 2 then, 0 now\)"):
        label_stage.run(_cfg(recipe_pth("raft_small"), videos, **LOOSE), str(tmp_path), progress=False)
    cfg.eval = {"holdout": 1}
    with pytest.raises(ValueError, match=r"eval\.holdout must be 0 .* or at least 2"):
        label_stage.run(cfg, str(tmp_path / "other"), progress=False)


def test_track_labels(recipe_pth, tmp_path):
    d = tmp_path / "vid"
    synthetic.write_dataset(str(d), "source", videos=1, frames=8, size=(128, 128), tracks=12,
                            progress=False)
    m = label_stage.run(_cfg(recipe_pth("pips"), str(d), iters=2, stride=8, grid=3, densify_window=4,
                          max_queries=64, tau=1e6, batch=1),
                     str(tmp_path / "w"), progress=False)
    s = m["stats"]
    assert m["kind"] == "tracks" and s["samples"] == 1 and s["kept"] == s["total"] == s["written"]
    assert s["gt"]["points"] > 0 and s["gt_error_all"] == pytest.approx(s["gt_error_kept"])
    (lab,) = shards.read_clips(str(tmp_path / "w" / "labels"))
    assert lab.tracks.shape == (s["written"], 8, 2) and lab.frames.shape == (8, 128, 128, 3)
    assert m["frame_sizes"] == [[128, 128]]  # training batches clips of several sizes by it
    np.testing.assert_allclose(lab.query_points[:, 1:], lab.tracks[:, 0])
    m2 = label_stage.run(_cfg(recipe_pth("pips"), str(d), iters=2, stride=8, grid=3, densify_window=4,
                           max_queries=64, tau=1e-3, batch=1), str(tmp_path / "w2"), progress=False)
    assert m2["stats"]["kept"] == 0 and m2["records"] == 0  # nothing consistent within 1e-3 px



def test_track_label_statistics_measure_the_lag_of_a_slow_track():
    """Two points moving 2 px/frame, estimated at 1.5 px/frame: error 0.5 t px at frame t, speed bias
    (distance travelled from the query point, estimate minus truth) -0.5 t; frame 0 is the query."""
    t = np.arange(8, dtype=np.float32)
    gt = np.stack([np.stack([20 + 2 * t, 30 + 0 * t], -1), np.stack([40 + 0 * t, 50 + 2 * t], -1)])  # (2, 8, 2)
    est = gt[:, :1] + (gt - gt[:, :1]) * 0.75
    clip = shards.Clip("v", np.zeros((8, 64, 96, 3), np.uint8), tracks=gt, visible=np.ones((2, 8), bool))
    stats = {}
    track_labels.TrackLabeler.gt_stats(stats, clip, 0, est, np.array([True, False]), 2)
    s = label_stats.summary({**stats, "total": 2, "kept": 1})
    b = s["gt_per_speed_bin"]["[1,4)"]
    assert b["n"] == 14 and b["yield"] == 0.5
    assert b["error_all"] == pytest.approx(0.5 * t[1:].mean()) == b["error_kept"]
    assert b["speed_bias_all"] == pytest.approx(-0.5 * t[1:].mean()) == b["speed_bias_kept"]
    assert s["gt_per_speed_bin"]["[0,1)"]["n"] == 0

def test_labels_written_to_a_url_equal_local_ones(recipe_pth, videos, tmp_path):
    """The label stage with a ram:// workdir (the gfile path that gs:// takes) writes what it writes
    on a local disk."""
    import uuid
    from refine_jax import fs
    url = f"ram://labels-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(recipe_pth("raft_small"), videos, num_devices=8, batch=8, **LOOSE)
    label_stage.run(cfg, str(tmp_path / "local"), progress=False)
    m = label_stage.run(cfg, url, progress=False)
    local, local_manifest = _outputs(str(tmp_path / "local"))
    for name, data in local.items():
        with fs.open_file(f"{url}/labels/{name}", "rb") as f:
            assert f.read() == data, name
    assert m["files"] == local_manifest["files"] == fs.read_json(f"{url}/labels/manifest.json")["files"]


def test_auto_query_chunk_bounds_the_correlation_volumes():
    assert track_labels.auto_query_chunk(256, 8, (64, 64)) == 256               # 33 MB: all at once
    assert track_labels.auto_query_chunk(9216, 8, (192, 320)) == 512            # CroHD: 18 GB at once
    assert track_labels.auto_query_chunk(9216, 8, (192, 320)) * 8 * 192 * 320 * 4 <= track_labels.CORR_BUDGET_BYTES
    assert track_labels.auto_query_chunk(10 ** 6, 8, (1080, 1920)) == 128      # never below 128


def test_queries_tracked_in_chunks_equal_all_at_once(converted):
    """Chunking (a ragged last chunk, on a 2-device mesh) changes memory, not the labels: each chunk
    gives exactly what tracking its queries alone gives, and one iteration matches all at once
    within float reassociation. (Over more iterations the random-weight model amplifies the last
    bit of any change in matmul shapes: 4 px after 6, with or without chunks.)"""
    from refine_jax import parallel
    cfg, variables = converted("pips")
    mesh = parallel.make_mesh(2)
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 255, (2, cfg.S, 128, 128, 3)).astype(np.float32)
    xys = rng.uniform(4, 124, (2, 10, 2)).astype(np.float32)
    b, r = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    v, f, tau = parallel.put(variables, r), parallel.put(frames, b), parallel.put(np.float32(2.0), r)
    run = lambda iters, chunk, q: [np.asarray(x, np.float32) for x in  # noqa: E731
                                   track_labels.label_fn(cfg, iters, mesh, chunk)(v, f, parallel.put(q, b), tau)]
    whole, chunked = run(1, 0, xys), run(1, 4, xys)
    for a, c in zip(whole, chunked):
        assert a.shape == c.shape
        np.testing.assert_allclose(c, a, atol=1e-4)
    chunked = run(2, 4, xys)
    for ids in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]):  # the last chunk is padded with query 0
        alone = run(2, 0, np.ascontiguousarray(xys[:, ids]))
        real = [i for i in ids if i >= ids[0]]
        for a, c, axis in zip(alone, chunked, (2, 2, 1, 1)):
            np.testing.assert_array_equal(np.take(c, real, axis), np.take(a, range(len(real)), axis))
