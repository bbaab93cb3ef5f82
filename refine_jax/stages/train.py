"""The `train` stage: fine-tune RAFT or PIPs on (pseudo-)labels.

Reads the label shards (WORKDIR/<label.out>, or train.data), trains with the step of
train/trainer.py (AdamW with the reference schedules, global-norm clipping, gradient accumulation)
and saves params, optimizer state, step, RNG and the data position with Orbax every `save_every`
steps and at the end, with the config and provenance, in WORKDIR/checkpoints. A run resumes from
there automatically (with more steps it trains on; with other training settings it refuses,
naming them). SIGTERM saves at the next step boundary and exits cleanly; a NaN or inf loss stops
with an error naming the step. Metrics go to TensorBoard event files (WORKDIR/tensorboard) and a
progress bar. At the end the trained model is exported as a model folder (WORKDIR/model) that
`infer`, `eval` and `label` read.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from refine_jax import checkpoints, cli, fs, parallel, paths, settings, tasks
from refine_jax.data import pipeline
from refine_jax.train import trainer


def run(config, workdir: str, init: Optional[str] = None, progress: bool = True) -> dict:
    """Train from `init` (default config.init) on the configured shards; resume if WORKDIR has
    checkpoints. Returns {'step', 'loss', 'model': exported checkpoint folder, 'preempted'}."""
    import tensorflow as tf  # summaries only
    from tqdm import tqdm
    tc = settings.TrainConfig.from_config(config.get("train"))
    ac = settings.AugmentConfig.from_config(config.get("augment", {"enabled": False}))
    init = init or config.init
    loaded = checkpoints.load_model(init, config.get("runtime"))
    model_cfg = loaded.cfg
    task = tasks.of(model_cfg)
    if ac.enabled:
        task.check_crop(ac.crop)
    mesh = parallel.make_mesh(tc.num_devices or None)
    if tc.batch_size % mesh.size:
        raise ValueError(f"train.batch_size={tc.batch_size} (the global batch) must be a multiple of "
                         f"the {mesh.size} devices of the mesh (or set train.num_devices)")
    tx = trainer.make_optimizer(tc)
    state = trainer.initial_state(loaded.variables, tx, tc.seed)
    data_dirs = tuple(d for d in (tc.data or paths.labels(workdir, config)).split(",") if d)
    ac = _fit_crop(ac, task, model_cfg, tc, data_dirs)
    _warn_sparse_labels(data_dirs)
    pcfg = pipeline.PipelineConfig(
        data_dirs, size=tc.size or None, batch_size=tc.batch_size, seed=tc.seed,
        shuffle_buffer=tc.shuffle_buffer, split="rows", **task.training_clips(model_cfg, tc))
    ckpt_dir = fs.abspath(paths.checkpoints(workdir))
    trainer.write_each_array_from_one_replica()
    options = ocp.CheckpointManagerOptions(max_to_keep=tc.keep_checkpoints or None, create=True)
    meta = {"config": settings.as_dict(config),
            "model": {"arch": model_cfg.arch, **model_cfg.to_dict()}, "init": fs.abspath(init),
            "init_provenance": loaded.provenance}
    data_state = None
    t_start = time.time()
    with ocp.CheckpointManager(ckpt_dir, options=options) as mngr:
        if mngr.latest_step() is not None:
            restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(jax.tree_util.tree_map(np.asarray, state)),
                data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
            trainer.check_resumable(restored["meta"], meta, ckpt_dir)
            state = jax.tree_util.tree_map(jnp.asarray, restored["state"])
            data_state = restored["data"]
            if restored["meta"].get("fitted_steps"):  # a budgeted run: its refitted schedule goes on
                tc = _refitted(tc, int(restored["meta"]["fitted_steps"]))
                meta["fitted_steps"], tx = tc.steps, trainer.make_optimizer(tc)
        data = pipeline.ClipIterator(pcfg, state=data_state)
        step_fn = trainer.make_train_step(model_cfg, tc, tx, mesh, tc.freeze_bn, ac)
        budget = _Budget(tc.max_seconds, t_start, int(state.step)) if tc.max_seconds and not meta.get("fitted_steps") else None
        # placed as the step returns it, so the second step does not compile the step again
        state = parallel.put(state, parallel.replicated(mesh))
        main_process = parallel.is_main_process()
        writer = (tf.summary.create_file_writer(paths.tensorboard(workdir)) if main_process
                  else tf.summary.create_noop_writer())
        preempt = trainer.Preemption()
        start = int(state.step)
        bar = tqdm(total=tc.steps, initial=start, desc=f"train ({model_cfg.arch})", unit="step",
                   disable=not (progress and main_process))
        loss = float("nan")

        def save(step):
            mngr.save(step, args=ocp.args.Composite(  # collective: every process calls it
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data.state()),
                meta=ocp.args.JsonSave(meta)), force=True)
            mngr.wait_until_finished()
        try:
            while int(state.step) < tc.steps:
                if preempt.flag:
                    save(int(state.step))
                    bar.close()
                    return {"step": int(state.step), "loss": loss, "preempted": True}
                batch = {k: v for k, v in next(data).items() if v.dtype.kind != "O" and v.dtype.kind != "S"}
                state, metrics = step_fn(state, parallel.global_batch(batch, mesh))
                step = int(state.step)
                loss = float(metrics["loss"])
                if not np.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss} at step {step}; "
                                             f"checkpoints before it are in {ckpt_dir}")
                if step % tc.log_every == 0 or step == tc.steps:
                    with writer.as_default(step=step):
                        for k, v in metrics.items():
                            tf.summary.scalar(f"train/{k}", float(v))
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                fitted = _agreed(budget.fit(step, tc.steps)) if budget else None
                if fitted is not None:  # the time left holds fewer steps: the schedule is set for them
                    tc = _refitted(tc, fitted)
                    meta["fitted_steps"] = tc.steps
                    if step < tc.steps:
                        tx = trainer.make_optimizer(tc)
                        step_fn = trainer.make_train_step(model_cfg, tc, tx, mesh, tc.freeze_bn, ac)
                    bar.total = tc.steps
                    bar.refresh()
                    if main_process:
                        tqdm.write(f"train: {tc.max_seconds:.0f} s hold {tc.steps} steps "
                                   f"({budget.step_seconds:.2f} s each); the schedule is set for them")
                if step % tc.save_every == 0 or step == tc.steps:
                    save(step)
        finally:
            preempt.restore()
            writer.flush()
            bar.close()
    model_dir = paths.model(workdir)
    parallel.barrier("train: before export")  # every process sees the same model_dir
    if checkpoints.exported_steps(model_dir) != int(state.step):  # none yet, or from a run since extended
        variables = {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
        checkpoints.save_model(model_dir, model_cfg, parallel.to_host(variables),
                               {"trained_from": fs.abspath(init), "steps": int(state.step),
                                "init_provenance": loaded.provenance}, replace=True)
    return {"step": int(state.step), "loss": loss, "model": model_dir, "preempted": False,
            "crop": list(ac.crop) if ac.enabled and ac.crop else None, "batch_size": tc.batch_size,
            "budget_steps": meta.get("fitted_steps")}


class _Budget:
    """The steps that `seconds` of training hold, measured: the first step (which compiles) is
    timed apart from the next PROBE steps; once those have run, `fit` returns the total that the
    time left holds (keeping time for the refitted step's compile), or None when the configured
    steps fit. Past the limit it returns the current step, which stops the run."""
    PROBE = 3

    def __init__(self, seconds: float, t_start: float, start_step: int):
        self.deadline, self.start_step = t_start + seconds, start_step
        self.t_first = self.compile_seconds = self.step_seconds = None
        self.t0, self.fitted = t_start, False

    def fit(self, step: int, total: int) -> Optional[int]:
        now = time.time()
        done = step - self.start_step
        if done == 1:
            self.t_first, self.compile_seconds = now, now - self.t0
        if now >= self.deadline:
            return step if step < total else None
        if self.fitted or done != 1 + self.PROBE or step >= total:
            return None
        self.fitted = True
        self.step_seconds = (now - self.t_first) / self.PROBE
        spare = self.deadline - now - self.compile_seconds - 2.0  # the refitted step's compile, the final save
        fits = step + max(0, int(spare / max(self.step_seconds, 1e-6)))
        return fits if fits < total else None


def _agreed(fitted: Optional[int]) -> Optional[int]:
    """The main process's budget decision, for every process (their clocks differ)."""
    if jax.process_count() == 1:
        return fitted
    value = int(parallel.allgather(np.asarray(-1 if fitted is None else fitted))[0])
    return None if value < 0 else value


def _refitted(tc, steps: int):
    """`tc` with `steps` steps; schedule_steps (when set) scaled in proportion."""
    sched = int(round(tc.schedule_steps * steps / tc.steps)) if tc.schedule_steps else 0
    return dataclasses.replace(tc, steps=max(steps, 1), schedule_steps=sched)


# below this share of kept label pixels (flow), most training crops hold no label: measured on
# 1080x1920 procedural frames (0.13 % kept), 35 steps made the RAFT-small stand-in's EPE 2.6x worse
SPARSE_YIELD = 0.01


def _warn_sparse_labels(data_dirs) -> None:
    """One line when the label manifests say that almost no estimate passed the cycle check."""
    from refine_jax.data import shards
    for d in data_dirs:
        try:
            m = shards.load_manifest(d)
        except (shards.ShardError, OSError):
            continue
        y = m.get("stats", {}).get("yield")
        if m.get("kind") == "flow" and y is not None and y < SPARSE_YIELD and parallel.is_main_process():
            print(f"train: warning: only {100 * y:.2f} % of {d}'s estimates passed the cycle check; with labels "
                  f"this sparse, refinement has made models worse (lower --max_side, or check the footage)",
                  flush=True)


def _first_frame_size(data_dirs) -> Optional[tuple]:
    """(H, W) of the first clip of the first source, for manifests that list no frame sizes."""
    from refine_jax.data import sources
    for d in data_dirs:
        clip = next(iter(sources.read_clips(d, checksum=False)), None)
        if clip is not None:
            return tuple(int(v) for v in clip.frames.shape[1:3])
    return None


def _fit_crop(ac, task, model_cfg, tc, data_dirs):
    """`ac` with its crop fitted to the training frames (train.size, else the smallest frame the
    label manifests list): a crop larger than the frames trains on the frames' size instead, and
    says so in one line."""
    frame_hw = tuple(tc.size) if tc.size else (pipeline.frame_size(data_dirs) or _first_frame_size(data_dirs))
    if not (ac.enabled and ac.crop and frame_hw):
        return ac
    fit = task.fit_crop(ac.crop, frame_hw, model_cfg, ",".join(data_dirs))
    if fit != tuple(ac.crop) and parallel.is_main_process():
        print(f"train: augment.crop {tuple(ac.crop)} is larger than the {frame_hw[0]}x{frame_hw[1]} training frames; "
              f"training on {fit[0]}x{fit[1]} crops", flush=True)
    return dataclasses.replace(ac, crop=fit)


@cli.guarded
def main(argv) -> int:
    """`python -m refine_jax.stages.train --config_json=FILE --workdir=DIR`: the train stage alone
    (the config as JSON); exits 0 after a SIGTERM-triggered save."""
    import argparse
    import ml_collections
    p = argparse.ArgumentParser(prog="python -m refine_jax.stages.train")
    p.add_argument("--config_json", required=True)
    p.add_argument("--workdir", required=True)
    a = p.parse_args(argv)
    with open(a.config_json) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    out = run(cfg, a.workdir, progress=False)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())

