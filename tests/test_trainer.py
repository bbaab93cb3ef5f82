"""The train stage: resume after kill -9 is bit-exact, SIGTERM saves and exits 0, NaN stops with the
step, 8 devices give the single-device result."""
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from refine_jax import checkpoints, settings
from refine_jax.demo import synthetic
from refine_jax.models.raft import RAFTConfig
from refine_jax.stages import train as train_stage
from refine_jax.train import trainer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    synthetic.write_dataset(str(d / "src"), "source", videos=4, frames=3, size=(128, 128), tracks=0,
                            progress=False)
    checkpoints.init_model(str(d / "init"), RAFTConfig(small=True))
    return d


def _cfg(d, **train):
    """A train config on one device. The schedule's length is part of the compiled step, so the runs
    here fix it (10 updates) whatever their number of steps: they share one compilation (the
    persistent cache serves the subprocesses too)."""
    t = {"steps": 6, "batch_size": 2, "iters": 2, "lr": 2e-4, "data": str(d / "src"), "save_every": 2,
         "log_every": 1, "schedule": "onecycle", "schedule_steps": 10, "num_devices": 1}
    t.update(train)
    return {"init": str(d / "init"), "train": t}


def _params(model_dir):
    loaded = checkpoints.load_model(model_dir)
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(loaded.variables).items()}


def _run_sub(cfg, workdir, tmp_path):
    cj = tmp_path / f"cfg-{os.path.basename(workdir)}.json"
    cj.write_text(json.dumps(cfg))
    # the 8 CPU devices of this process, so that both compute alike (a run may resume in either)
    return subprocess.Popen([sys.executable, "-m", "refine_jax.stages.train", f"--config_json={cj}",
                             f"--workdir={workdir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "JAX_NUM_CPU_DEVICES": "8"})


def _wait_for_checkpoint(workdir, proc, min_step=2, timeout=300):
    deadline = time.time() + timeout
    ck = os.path.join(workdir, "checkpoints")
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(ck) and any(n.isdigit() and int(n) >= min_step for n in os.listdir(ck)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint appeared (rc={proc.poll()}, {proc.stderr.read()[-2000:] if proc.poll() is not None else ''})")


def test_kill9_resume_is_bit_exact(setup, tmp_path):
    """A training process killed with SIGKILL after a checkpoint, then resumed, ends with exactly the
    parameters of an uninterrupted run (both of those run in this process)."""
    cfg = _cfg(setup, steps=10)
    train_stage.run(ml_collections.ConfigDict(cfg), str(tmp_path / "ref"), progress=False)
    p = _run_sub(cfg, str(tmp_path / "killed"), tmp_path)
    _wait_for_checkpoint(str(tmp_path / "killed"), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "killed" / "model").exists()  # it did not finish
    assert train_stage.run(ml_collections.ConfigDict(cfg), str(tmp_path / "killed"), progress=False)["step"] == 10
    a, b = _params(str(tmp_path / "ref" / "model")), _params(str(tmp_path / "killed" / "model"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_extending_a_finished_run_exports_the_longer_model(setup, tmp_path):
    """A finished run resumed with more steps trains on and replaces its exported model; resumed
    with the same steps it keeps it. (It used to keep the old model without a word.)"""
    w = str(tmp_path / "w")
    run = lambda steps: train_stage.run(ml_collections.ConfigDict(_cfg(setup, steps=steps)), w,  # noqa: E731
                                    progress=False)
    assert run(2)["step"] == 2
    first, mtime = _params(os.path.join(w, "model")), os.path.getmtime(os.path.join(w, "model", "model.json"))
    run(2)
    assert os.path.getmtime(os.path.join(w, "model", "model.json")) == mtime
    assert run(4)["step"] == 4
    assert checkpoints.load_model(os.path.join(w, "model")).provenance["steps"] == 4
    assert any(not np.array_equal(v, first[k]) for k, v in _params(os.path.join(w, "model")).items())
    assert not [n for n in os.listdir(w) if n.startswith(".model")]  # no temporary or old folder left
    # anything but the length, logging and saving is refused, naming the setting and the folder
    with pytest.raises(ValueError, match=r"checkpoints .* other settings \(train\.lr: 0\.0002 then, 0\.001 now\)"):
        train_stage.run(ml_collections.ConfigDict(_cfg(setup, steps=6, lr=1e-3)), w, progress=False)


def test_sigterm_saves_at_next_step_and_exits_zero(setup, tmp_path):
    p = _run_sub(_cfg(setup, steps=400, save_every=1000), str(tmp_path / "w"), tmp_path)
    deadline = time.time() + 300
    tb = tmp_path / "w" / "tensorboard"
    while time.time() < deadline and p.poll() is None and not (tb.exists() and os.listdir(tb)):
        time.sleep(0.05)
    time.sleep(3)  # let it take a few steps
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 0
    out = json.loads(p.stdout.read().decode().strip().splitlines()[-1])
    assert out["preempted"] and 0 < out["step"] < 400
    with ocp.CheckpointManager(str(tmp_path / "w" / "checkpoints")) as m:
        assert m.latest_step() == out["step"]
    # evaluating now would report without the refined model: refused before any model is loaded
    from refine_jax.stages import evaluate
    with pytest.raises(ValueError, match=rf"the 'after' row stopped at step {out['step']} without exporting"):
        evaluate.run(ml_collections.ConfigDict(_cfg(setup)), str(tmp_path / "eval"), trained=str(tmp_path / "w"))


def test_a_preempted_training_stage_stops_the_job(monkeypatch, tmp_path):
    """After a training stage (train, oracle, pretrain) saved on SIGTERM the job stops: the later
    stages would read a model that stage has not written (eval used to report without the oracle)."""
    from refine_jax import pipeline
    from refine_jax.stages import oracle
    ran = []
    monkeypatch.setattr(oracle, "check_ground_truth", lambda config: None)  # the data here is a name only

    def stage(name, out):
        def run(config, workdir, **kwargs):
            ran.append(name)
            return out
        return run
    monkeypatch.setattr(pipeline, "stages", lambda: {
        "label": stage("label", {}), "train": stage("train", {"step": 6, "preempted": False}),
        "oracle": stage("oracle", {"step": 3, "preempted": True}), "eval": stage("eval", {})})
    config = ml_collections.ConfigDict({"stages": "label,train,oracle,eval", "init": "init", "label": {"rounds": 1},
                                        "data": {"videos": "videos"}})
    summary = pipeline.run(config, str(tmp_path))
    assert ran == ["label", "train", "oracle"] and summary["preempted"] == "oracle"


def test_nan_loss_names_the_step(setup, tmp_path):
    cfg = ml_collections.ConfigDict(_cfg(setup, lr=1e30, schedule="constant", steps=20, clip=1e30,
                                         num_devices=1))
    with pytest.raises(FloatingPointError, match=r"training loss became (nan|inf) at step \d+"):
        train_stage.run(cfg, str(tmp_path / "w"), progress=False)


def _first_batch(d, batch_size):
    """The first batch of consecutive pairs with their flow from the module's source videos."""
    from refine_jax.data import pipeline
    batch = next(pipeline.ClipIterator(pipeline.PipelineConfig((str(d / "src"),), clip_len=2, hop=1,
                                                               batch_size=batch_size, with_flow=True)))
    return {k: v for k, v in batch.items() if k != "video_id"}


def _fresh_state(params, tx):
    import jax.numpy as jnp
    return trainer.TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), jax.random.PRNGKey(0))


def test_eight_devices_match_one(setup):
    """One sharded step (batch 8 over 8 devices) equals the single-device step: same loss, gradient
    norm and updated parameters (float reduction order aside). Over several steps Adam magnifies
    those last-ulp differences where gradients are tiny, so this compares one step."""
    import jax.numpy as jnp
    from refine_jax import parallel
    loaded = checkpoints.load_model(str(setup / "init"))
    tc = settings.TrainConfig(iters=2, batch_size=8, lr=2e-4)
    tx = trainer.make_optimizer(tc)
    batch = _first_batch(setup, 8)
    out = {}
    for n in (1, 8):
        state = _fresh_state(loaded.variables["params"], tx)
        step = trainer.make_train_step(loaded.cfg, tc, tx, parallel.make_mesh(n), freeze_bn=False)
        new, metrics = step(jax.tree_util.tree_map(jnp.array, state), batch)
        out[n] = jax.device_get((new.params, metrics))
    chex.assert_trees_all_close(out[8][1], out[1][1], rtol=1e-4)  # loss, gradient norm, EPE
    f1, f8 = (traverse_util.flatten_dict(o[0]) for o in (out[1], out[8]))
    diff = np.concatenate([np.abs(f8[k] - f1[k]).ravel() for k in f1])
    lr0 = float(trainer.make_schedule(tc)(0))
    # Adam's first step moves each parameter by ~lr * sign(g): where g is ~0 the two reduction
    # orders may disagree on the sign, bounding any difference by 2 * lr0.
    assert (diff <= 1e-6).mean() > 0.995 and diff.max() <= 2 * lr0 + 1e-7


def test_frozen_modules_stay_exact(setup):
    """train.frozen: the named top-level modules keep their values bit for bit (no gradient, no
    weight decay); the others train."""
    from refine_jax import parallel
    loaded = checkpoints.load_model(str(setup / "init"))
    tc = settings.TrainConfig(iters=2, batch_size=2, lr=2e-4, frozen=("fnet",))
    tx = trainer.make_optimizer(tc)
    batch = _first_batch(setup, 2)
    p = loaded.variables["params"]
    state = _fresh_state(p, tx)
    step = trainer.make_train_step(loaded.cfg, tc, tx, parallel.make_mesh(1), freeze_bn=False)
    for _ in range(2):
        state, _ = step(state, batch)
    before, after = (traverse_util.flatten_dict(jax.device_get(x)) for x in (p, state.params))
    frozen = [k for k in before if k[0] == "fnet"]
    trained = [k for k in before if k[0] == "update_block" and k[-1] == "kernel"]
    assert frozen and trained
    assert all(np.array_equal(before[k], after[k]) for k in frozen)
    assert all(not np.array_equal(before[k], after[k]) for k in trained)
    with pytest.raises(ValueError, match=r"train.frozen names fnett, which this model does not have \(its modules: cnet, fnet, update_block\)"):
        trainer.make_optimizer(settings.TrainConfig(frozen=("fnett",))).init(p)


def test_batch_must_split_over_devices(setup, tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=2 \(the global batch\) must be a multiple of the 8 devices"):
        train_stage.run(ml_collections.ConfigDict(_cfg(setup, num_devices=0)), str(tmp_path / "w"), progress=False)


def test_schedules():
    tc = settings.TrainConfig(lr=1e-4, steps=1000, schedule_steps=1100, schedule="onecycle")
    s = trainer.make_schedule(tc)
    assert float(s(0)) == pytest.approx(4e-6, rel=1e-5) and float(s(109)) == pytest.approx(1e-4, rel=1e-3)
    assert float(s(1000)) == pytest.approx(1e-5, rel=0.1)
    w = trainer.make_schedule(settings.TrainConfig(lr=1e-4, steps=35, warmup=0.3))  # peak at 0.3 * 35 - 1
    assert float(w(0)) == pytest.approx(4e-6, rel=1e-5) and float(w(9)) == pytest.approx(1e-4, rel=1e-5)
    assert float(w(5)) < float(w(9)) and float(w(12)) < float(w(9))
    c = trainer.make_schedule(settings.TrainConfig(lr=1e-5, schedule="cosine", schedule_steps=825))
    assert float(c(0)) == pytest.approx(1e-5, rel=1e-5) and float(c(825)) == pytest.approx(0, abs=1e-12)
    assert float(c(625)) == pytest.approx(1e-5 * 0.5 * (1 + np.cos(np.pi * 625 / 825)), rel=1e-4)


def test_a_crop_larger_than_the_frames_trains_on_the_frames(setup, tmp_path, capsys):
    """The default RAFT crop (192x256) on smaller frames (here 128x128) trains on the frames' size
    and says so in one line; it stopped with a JAX gather error on 138x160 frames."""
    cfg = _cfg(setup, steps=1)
    cfg["augment"] = {"crop": (192, 256)}
    out = train_stage.run(ml_collections.ConfigDict(cfg), str(tmp_path / "w"), progress=False)
    assert out["step"] == 1 and np.isfinite(out["loss"])
    assert "augment.crop (192, 256) is larger than the 128x128 training frames; training on 128x128 crops" \
        in capsys.readouterr().out


def test_crops_fit_the_frames_within_each_model_minimum():
    from refine_jax import tasks
    from refine_jax.models.pips import PipsConfig
    raft = RAFTConfig(small=True)
    assert tasks.FLOW.fit_crop((192, 256), (138, 160), raft, "d") == (136, 160)   # multiples of 8
    assert tasks.FLOW.fit_crop((192, 256), (1080, 1920), raft, "d") == (192, 256)
    with pytest.raises(ValueError, match=r"d: the training frames are 120x200 px; RAFT trains on crops of at least 128x128"):
        tasks.FLOW.fit_crop((192, 256), (120, 200), raft, "d")
    pips = PipsConfig(stride=4)
    assert tasks.TRACKS.fit_crop((128, 128), (100, 300), pips, "d") == (100, 128)
    with pytest.raises(ValueError, match="PIPs at stride 4 needs both sides >= 64 px"):
        tasks.TRACKS.fit_crop((128, 128), (60, 300), pips, "d")
