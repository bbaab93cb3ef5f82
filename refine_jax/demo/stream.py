"""Pre-train a stand-in on procedural clips rendered while it trains: the recipe for a host with an
accelerator and many cores, where rendering shards first would leave the accelerator idle.

It runs the `pretrain` preset of configs/raft.py or configs/pips.py with the same model, loss,
optimizer, schedule and in-step augmentation as `demo.pretrain` (trainer.make_train_step), but
reads no shards. Worker processes render source clips with the seeds `synthetic.write_dataset`
gives them (synthetic.video_seed), so the first `demo.source_videos` clips are the recipe's
source shards and later ones continue that sequence; the held-out source_eval clips (seed
source_seed + 1) are never drawn. Each step samples its batch uniformly from the samples rendered
so far, kept in a pool of at most `pool_clips` clips (a new clip replaces a random old one). The
set of clips is fixed by the seeds; their order depends on render timing, so a run is not
bit-reproducible. The model is exported to WORKDIR/model at the end (or at the deadline, recorded
as such in model.json). There are no checkpoints to resume from; `--init=MODEL --first_clip=N`
continues a finished run with a new schedule on clips it has not seen.

  python -m refine_jax.demo.stream --config=configs/raft.py:pretrain --workdir=runs/raft_stream \
      --steps=6000 --workers=7 --config.demo.pretrain.batch_size=16
  --steps=0 with --seconds=S: compile and time the step first, then run as many steps as end
  within S seconds (the step compiles twice: the schedule's length is part of it).
`demo.measure_source` then measures the model on the recipe's held-out source videos and records
the metrics in its model.json.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Dict, List, Optional

import numpy as np

from refine_jax import cli, fs

# Source clips a run may draw: below synthetic.VIDEOS_PER_SEED, so the seeds of the held-out
# clips (the next source seed's sequence) are never drawn.
MAX_CLIPS = 100_000

_WORKER: dict = {}


def samples_of_clip(clip, is_raft: bool, clip_len: int, max_tracks: int,
                    flow_dtype: str = "float16") -> List[Dict[str, np.ndarray]]:
    """The training samples the shard pipeline (data/pipeline.py, stored size) makes of one clip.

    RAFT: every pair of consecutive frames: frames uint8 (2, H, W, 3), flow float32 (1, H, W, 2)
    (rounded through `flow_dtype`, as the recipe's shards store it), flow_valid bool (1, H, W).
    PIPs: windows of `clip_len` frames every `clip_len`: frames (S, H, W, 3), tracks float32
    (max_tracks, S, 2) px, visible bool (max_tracks, S), track_valid bool (max_tracks,), the first
    `max_tracks` tracks, padded."""
    out = []
    if is_raft:
        flow = clip.flow.astype(flow_dtype).astype(np.float32) if flow_dtype else clip.flow
        for t in range(len(clip.frames) - 1):
            out.append({"frames": clip.frames[t:t + 2], "flow": flow[t:t + 1],
                        "flow_valid": clip.flow_valid[t:t + 1].astype(bool)})
        return out
    k = min(len(clip.tracks), max_tracks)
    for s in range(0, len(clip.frames) - clip_len + 1, clip_len):
        tracks = np.zeros((max_tracks, clip_len, 2), np.float32)
        visible = np.zeros((max_tracks, clip_len), bool)
        tracks[:k] = clip.tracks[:k, s:s + clip_len]
        visible[:k] = clip.visible[:k, s:s + clip_len]
        out.append({"frames": clip.frames[s:s + clip_len], "tracks": tracks, "visible": visible,
                    "track_valid": np.arange(max_tracks) < k})
    return out


def _init_worker(spec: dict) -> None:
    _WORKER.update(spec)


def _render(i: int):
    from refine_jax.demo import synthetic
    w = _WORKER
    clip = synthetic.render_video(w["domain"], synthetic.video_seed(w["seed"], i), w["frames"], w["size"][0],
                                  w["size"][1], w["tracks"])
    return samples_of_clip(clip, w["is_raft"], w["clip_len"], w["max_tracks"])


class SamplePool:
    """Samples of the clips rendered so far (at most `max_clips` clips; a new clip replaces a
    random old one), filled by a thread from worker processes; `batch` draws uniformly."""

    def __init__(self, spec: dict, workers: int, max_clips: int, first_clip: int, total_clips: int, seed: int):
        import multiprocessing
        self.clips: List[List[dict]] = []
        self.rendered = 0
        self.max_clips = max_clips
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._error: Optional[BaseException] = None
        self._pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (spec,))
        self._results = self._pool.imap_unordered(_render, range(first_clip, first_clip + total_clips),
                                                   chunksize=1)
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _fill(self):
        try:
            for samples in self._results:
                with self._lock:
                    if len(self.clips) < self.max_clips:
                        self.clips.append(samples)
                    else:
                        self.clips[int(self._rng.integers(len(self.clips)))] = samples
                    self.rendered += 1
        except BaseException as e:  # surfaced by wait/batch
            self._error = e

    def wait(self, clips: int, timeout: float = 600.0) -> None:
        end = time.time() + timeout
        while True:
            if self._error:
                raise self._error
            with self._lock:
                if len(self.clips) >= clips:
                    return
            if time.time() > end:
                raise TimeoutError(f"{len(self.clips)} of {clips} clips rendered in {timeout:.0f} s")
            time.sleep(0.2)

    def batch(self, rng: np.random.Generator, size: int) -> Dict[str, np.ndarray]:
        if self._error:
            raise self._error
        with self._lock:
            picks = [self.clips[int(c)] for c in rng.integers(len(self.clips), size=size)]
        rows = [p[int(rng.integers(len(p)))] for p in picks]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def close(self):
        self._pool.terminate()


def time_step(fn, state, batch, budget: float):
    """(compile seconds, seconds per step) of the jitted step `fn`: its first call, then up to 30
    calls after 3 warm-up ones, stopping once they take `budget` seconds."""
    import jax
    t = time.time()
    state, m = fn(state, batch())
    jax.block_until_ready(m)
    compile_s = time.time() - t
    for _ in range(3):
        state, m = fn(state, batch())
    jax.block_until_ready(m)
    t, n = time.time(), 0
    while n < 30 and time.time() - t < budget:
        state, m = fn(state, batch())
        jax.block_until_ready(m)
        n += 1
    return compile_s, (time.time() - t) / n


def run(config, workdir: str, steps: int = 0, seconds: float = 0.0, workers: int = 2,
        pool_clips: int = 20000, init: str = "", first_clip: int = 0, log=print) -> dict:
    """Train the stand-in of config.demo from random init (seed config.seed), or from the model
    folder `init` (a new schedule), on clips rendered on the fly (source videos first_clip, first_clip
    + 1, ... of synthetic.video_seed), and export it to WORKDIR/model. steps > 0: that many; else as
    many as fit in `seconds` after a timing pass. Training also stops at `seconds` (when > 0). Returns
    {'step', 'steps_planned', 'clips_rendered', 'seconds', 'model'}."""
    from refine_jax import checkpoints, models, parallel, paths, settings, tasks
    from refine_jax.demo import stages as demo
    from refine_jax.demo import synthetic
    from refine_jax.train import trainer
    t0 = time.time()
    deadline = t0 + seconds if seconds > 0 else float("inf")
    if steps <= 0 and seconds <= 0:
        raise ValueError("give --steps or --seconds")
    if not 0 <= first_clip < MAX_CLIPS:
        raise ValueError(f"first_clip={first_clip}: expected 0 <= first_clip < {MAX_CLIPS}")
    d = config.demo
    c = demo.pretrain_config(config)
    tc = settings.TrainConfig.from_config(c.train)
    ac = settings.AugmentConfig.from_config(c.augment)
    cfg = checkpoints.with_runtime(models.model_config(d.arch, dict(d.get("model", {}))), config.get("runtime"))
    is_raft = tasks.of(cfg) is tasks.FLOW
    frames = d.get("source_frames", 0) or d.frames
    spec = {"domain": synthetic.domain("source"), "seed": int(d.source_seed), "frames": int(frames),
            "size": tuple(d.size), "tracks": 0 if is_raft else int(d.tracks), "is_raft": is_raft,
            "clip_len": 2 if is_raft else cfg.S, "max_tracks": tc.max_tracks}
    pool = SamplePool(spec, workers, pool_clips, first_clip, total_clips=MAX_CLIPS - first_clip, seed=tc.seed)
    try:
        if init:
            loaded = checkpoints.load_model(init, config.get("runtime"))
            if loaded.cfg != cfg:
                raise ValueError(f"{init}: a {loaded.cfg} model; the config makes {cfg}")
            variables, init_provenance = loaded.variables, loaded.provenance
        else:
            variables = checkpoints.init_variables(cfg, seed=config.seed)
            init_provenance = {"source": "random init", "seed": config.seed}
        mesh = parallel.make_mesh(tc.num_devices or None)
        rng = np.random.default_rng(tc.seed)
        pool.wait(max(tc.batch_size, 2 * workers))

        def fresh_state(tx):
            return parallel.put(trainer.initial_state(variables, tx, tc.seed), parallel.replicated(mesh))

        def batch():
            return parallel.global_batch(pool.batch(rng, tc.batch_size), mesh)

        if steps <= 0:  # timing pass: compile and time the step with a throw-away schedule
            probe_tc = dataclasses.replace(tc, steps=1000)
            tx = trainer.make_optimizer(probe_tc)
            compile_s, step_s = time_step(trainer.make_train_step(cfg, probe_tc, tx, mesh, False, ac),
                                           fresh_state(tx), batch, 0.05 * seconds)
            left = deadline - time.time() - compile_s - 30.0  # 30 s: export
            steps = max(int(left / step_s), 1)
            log(f"timing: compile {compile_s:.1f} s, {step_s * 1000:.1f} ms/step; planning {steps} steps")
        tc = dataclasses.replace(tc, steps=steps)
        tx = trainer.make_optimizer(tc)
        fn = trainer.make_train_step(cfg, tc, tx, mesh, False, ac)
        state = fresh_state(tx)
        step, metrics, tl = 0, None, time.time()
        while step < steps and time.time() < deadline - 20.0:
            state, metrics = fn(state, batch())
            step += 1
            if step % tc.log_every == 0 or step == steps:
                m = {k: float(v) for k, v in metrics.items()}
                if not np.isfinite(m["loss"]):
                    raise FloatingPointError(f"training loss became {m['loss']} at step {step}")
                log(f"step {step}/{steps} " + " ".join(f"{k} {v:.4f}" for k, v in sorted(m.items()))
                    + f" clips {pool.rendered} {1000 * (time.time() - tl) / tc.log_every:.1f} ms/step")
                tl = time.time()
        rendered = pool.rendered
    finally:
        pool.close()
    variables = {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
    recipe = settings.as_dict(config)
    provenance = {
        "source": "refine_jax procedural stand-in (not official weights)", "recipe": recipe,
        "trainer": "refine_jax.demo.stream (clips rendered on the fly)", "steps": step,
        "trained_from": fs.abspath(init) if init else "random init", "init_provenance": init_provenance,
        "first_clip": first_clip,
        "steps_planned": steps, "stopped_by_deadline": step < steps, "clips_rendered": rendered,
        "seeds": {"init": config.seed, "train": tc.seed, "source_data": int(d.source_seed),
                  "source_eval_data": int(d.source_seed) + 1},
        "train": dataclasses.asdict(tc), "augment": dataclasses.asdict(ac),
        "devices": [str(x.device_kind) for x in mesh.devices.flat], "seconds": round(time.time() - t0, 1)}
    model_dir = paths.model(workdir)
    checkpoints.save_model(model_dir, cfg, parallel.to_host(variables), provenance, replace=True)
    return {"step": step, "steps_planned": steps, "clips_rendered": rendered,
            "seconds": provenance["seconds"], "model": model_dir}


def define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "configs/raft.py:pretrain or configs/pips.py:pretrain",
                                    lock_config=False)
    flags.DEFINE_string("workdir", None, "output folder (the model goes to WORKDIR/model)")
    flags.DEFINE_integer("steps", 0, "training steps; 0: as many as fit in --seconds")
    flags.DEFINE_float("seconds", 0.0, "wall-clock budget in seconds (0: none)")
    flags.DEFINE_integer("workers", 2, "render processes")
    flags.DEFINE_integer("pool_clips", 20000, "most clips kept in memory")
    flags.DEFINE_string("init", "", "start from this model folder (default: random init)")
    flags.DEFINE_integer("first_clip", 0, "index of the first source clip to render (continue a run's sequence)")


def main(argv) -> None:
    del argv
    from absl import flags, logging
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    cli.enable_compilation_cache()
    f = flags.FLAGS
    out = run(f.config, f.workdir, f.steps, f.seconds, f.workers, f.pool_clips, f.init, f.first_clip, log=lambda s: print(s, flush=True))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    define_flags()
    cli.absl_run(main, required=["config", "workdir"])
