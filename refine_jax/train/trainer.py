"""The `train` stage: fine-tune RAFT or PIPs on (pseudo-)labels.

One jitted, donated, mesh-sharded train step (batch split over 'data'; parameters replicated),
AdamW with the reference schedules and global-norm clipping, gradient accumulation with
optax.MultiSteps. Orbax CheckpointManager saves params, optimizer state, step, RNG and the data
position every `save_every` steps and at the end, with the config and provenance; a run resumes
from WORKDIR/checkpoints automatically (with more steps it trains on; with other training settings
it refuses, naming them). SIGTERM saves at the next step boundary and exits cleanly;
a NaN or inf loss stops with an error naming the step. Metrics go to TensorBoard event files
(WORKDIR/tensorboard) and a progress bar. At the end the trained model is exported as a model
checkpoint folder (WORKDIR/model) that `infer`, `eval` and `label` read.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
from typing import Any, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from refine_jax import settings
from refine_jax import checkpoints, cli, fs, parallel
from refine_jax.data import pipeline
from refine_jax.models import build_model, lookup
from refine_jax.models.raft import RAFTConfig
from refine_jax.train import augment, losses


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def initial_state(variables, tx, seed: int) -> TrainState:
    """Step 0 of training from `variables` ({'params', optional 'batch_stats'}): fresh copies of the
    arrays (the train step donates its state, so the caller's variables stay usable), the
    optimizer's initial state and a PRNG key from `seed`."""
    params = jax.tree_util.tree_map(jnp.array, variables["params"])
    batch_stats = jax.tree_util.tree_map(jnp.array, variables.get("batch_stats", {}))
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params), jax.random.PRNGKey(seed))


def make_schedule(tc) -> optax.Schedule:
    """'onecycle': linear from lr/25 up to lr over the first `warmup` share (reference 0.1) of
    `schedule_steps`, then linearly down to lr/25/1e4 (PyTorch OneCycleLR, anneal 'linear');
    'cosine': lr * (1 + cos(pi t / T)) / 2 with T = `schedule_steps`; 'constant'. Counted in
    optimizer updates."""
    lr, total = tc.lr, max(int(tc.schedule_steps or tc.steps), 1)
    if tc.schedule == "onecycle":
        warm = max(int(tc.warmup * total) - 1, 1)
        return optax.join_schedules([optax.linear_schedule(lr / 25, lr, warm),
                                     optax.linear_schedule(lr, lr / 25 / 1e4, total - warm)], [warm])
    if tc.schedule == "cosine":
        return lambda t: lr * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, total) / total))
    if tc.schedule == "constant":
        return optax.constant_schedule(lr)
    raise ValueError(f"train.schedule must be 'onecycle', 'cosine' or 'constant', got {tc.schedule!r}")


def _trainable(frozen):
    """A mask over a params tree: False under the top-level modules named in `frozen` (a name the
    model lacks is an error, not a run that trains everything)."""
    def mask(params):
        unknown = sorted(set(frozen) - set(params))
        if unknown:
            raise ValueError(f"train.frozen names {', '.join(unknown)}, which this model does not have "
                             f"(its modules: {', '.join(sorted(params))})")
        return {k: jax.tree_util.tree_map(lambda _: k not in frozen, v) for k, v in params.items()}
    return mask


def make_optimizer(tc) -> optax.GradientTransformation:
    tx = optax.chain(optax.clip_by_global_norm(tc.clip),
                     optax.adamw(make_schedule(tc), b1=0.9, b2=0.999, eps=1e-8, weight_decay=tc.weight_decay))
    if tc.frozen:
        tx = optax.masked(tx, _trainable(tuple(tc.frozen)))
    if tc.grad_accum > 1:  # the mean over micro-batches (the reference sums them, method.md Q8)
        tx = optax.MultiSteps(tx, every_k_schedule=tc.grad_accum)
    return tx


def _unroll(tc) -> int:
    """Unroll the iterations when training on CPU (conv weight gradients inside an XLA:CPU loop
    are ~20x slower); keep the loop on accelerators, where compile time matters more. The target
    is the platform being compiled for (lookup.compiling_for), not only this host's."""
    return tc.iters if lookup.target_platform() == "cpu" else 1


def _raft_loss(model_cfg, tc, freeze_bn):
    model = build_model(model_cfg, use_running_average=freeze_bn, unroll=_unroll(tc))

    def loss(params, batch_stats, batch, rng):
        frames = batch["frames"].astype(jnp.float32)
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        mutable = False if (freeze_bn or not batch_stats) else ["batch_stats"]
        out = model.apply(variables, frames[:, 0], frames[:, 1], iters=tc.iters, all_flow_up=True,
                          mutable=mutable)
        out, upd = out if mutable else (out, {})
        value = losses.raft_sequence_loss(out["flow_up_iters"], batch["flow"][:, 0], batch["flow_valid"][:, 0],
                                          tc.gamma, tc.max_flow, tc.mask_mode)
        epe = jnp.linalg.norm(out["flow_up"] - batch["flow"][:, 0], axis=-1)
        v = batch["flow_valid"][:, 0]
        metrics = {"loss": value, "epe": jnp.sum(epe * v) / jnp.maximum(jnp.sum(v), 1)}
        return value, (metrics, upd.get("batch_stats", batch_stats))
    return loss


def _pips_loss(model_cfg, tc):
    model = build_model(model_cfg, unroll=_unroll(tc))

    def loss(params, batch_stats, batch, rng):
        tracks = jnp.swapaxes(batch["tracks"], 1, 2)               # (B, S, N, 2)
        visible = jnp.swapaxes(batch["visible"], 1, 2)
        valid = jnp.broadcast_to(batch["track_valid"][:, None, :], visible.shape)
        out = model.apply({"params": params}, tracks[:, 0], batch["frames"].astype(jnp.float32),
                          iters=tc.iters, with_score_maps=tc.score_map_loss)
        value = losses.pips_sequence_loss(out["coords_iters"], tracks, valid, tc.gamma)
        if tc.score_map_loss:
            value = value + losses.score_map_loss(out["score_maps"], tracks, visible, valid, model_cfg.stride)
        if tc.vis_loss:
            value = value + losses.visibility_loss(out["vis_logits"], visible, valid)
        err = jnp.linalg.norm(out["coords"] - tracks, axis=-1)
        metrics = {"loss": value, "track_error": losses.masked_mean(err, valid)}
        return value, (metrics, batch_stats)
    return loss


def make_train_step(model_cfg, tc, tx, mesh, freeze_bn: bool,
                    ac: augment.AugmentConfig = augment.AugmentConfig(enabled=False)):
    """A jitted `step(state, batch) -> (state, metrics)`, state donated and replicated, batch split
    over the mesh's 'data' axis; augmentation (`ac`) runs inside, keyed by fold_in(rng, step)."""
    loss_fn = _raft_loss(model_cfg, tc, freeze_bn) if isinstance(model_cfg, RAFTConfig) else _pips_loss(model_cfg, tc)

    frozen = tuple(tc.frozen)

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        batch = augment.augment_batch(jax.random.fold_in(rng, 1), batch, ac)
        # frozen modules get no gradient, so XLA drops their backward pass
        loss_of = lambda p, *a: loss_fn({k: jax.lax.stop_gradient(v) if k in frozen else v
                                         for k, v in p.items()}, *a)
        (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state.params, state.batch_stats, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        return TrainState(state.step + 1, params, batch_stats, opt_state, state.rng), metrics

    rep, bat = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, bat), out_shardings=(rep, rep), donate_argnums=0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    batch_size: int = 2
    lr: float = 1e-4
    schedule: str = "onecycle"
    schedule_steps: int = 0        # 0: `steps` (the reference RAFT run uses 1100 with 1000 steps)
    warmup: float = 0.1            # 'onecycle': the share of schedule_steps spent rising (PyTorch pct_start)
    weight_decay: float = 1e-4
    clip: float = 5.0
    grad_accum: int = 1
    iters: int = 12
    gamma: float = 0.85
    max_flow: float = 400.0
    mask_mode: str = "per_sample"
    score_map_loss: bool = False
    vis_loss: bool = False
    freeze_bn: bool = False        # RAFT: False = batch statistics (the reference refinement run)
    frozen: Tuple[str, ...] = ()   # top-level modules not trained (e.g. 'fnet', the encoder)
    save_every: int = 50
    log_every: int = 10
    seed: int = 0
    data: str = ""                 # shard folder(s); default WORKDIR/labels
    clip_len: int = 0              # 0: 2 (RAFT) or 8 (PIPs)
    size: Tuple[int, int] = ()     # resize (H, W); () keeps the stored size
    max_tracks: int = 128
    shuffle_buffer: int = 64
    num_devices: int = 0           # 0: all devices
    keep_checkpoints: int = 0      # 0: keep all (the eval stage draws the metric curve from them)

    @classmethod
    def from_config(cls, c) -> "TrainConfig":
        return settings.from_section(cls, c, "train")


class _Preempted:
    """Remembers a SIGTERM so the loop can save at the next step boundary. With several processes
    they agree first: if any of them got the signal, all save and stop at the same step."""

    def __init__(self):
        self._flag = False
        self._old = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, *_):
        self._flag = True

    @property
    def flag(self) -> bool:
        if jax.process_count() == 1:
            return self._flag
        return bool(parallel.allgather(np.asarray(self._flag)).any())

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


# What a resumed run may change: how long it trains and how it logs and saves. Anything else
# (learning rate, batch, data, augmentation, init) would continue one run's optimiser state under
# another run's settings, and the exported model would record settings it was not trained with.
RESUMABLE_CHANGES = frozenset({"train.steps", "train.save_every", "train.log_every",
                               "train.keep_checkpoints", "train.num_devices"})


def _check_resumable(saved: dict, meta: dict, ckpt_dir: str) -> None:
    """Raise when the checkpoints in ckpt_dir were written by a run whose training settings
    (train and augment sections, init, model) differ from this run's, naming each difference."""
    now = json.loads(json.dumps(meta))  # tuples as the saved JSON holds them (lists)
    compared = lambda m: {"train": m.get("config", {}).get("train"), "augment": m.get("config", {}).get("augment"),
                          "init": m.get("init"), "model": m.get("model")}
    diffs = settings.differences(compared(saved), compared(now),
                                 RESUMABLE_CHANGES | {"model.lookup"},  # the lookups give the same numbers
                                 defaults=settings.dataclass_defaults(train=TrainConfig, augment=augment.AugmentConfig))
    if diffs:
        raise ValueError(f"{ckpt_dir} holds checkpoints of a run with other settings ({'; '.join(diffs)}); "
                         f"resume with that run's settings (only {', '.join(sorted(RESUMABLE_CHANGES))} "
                         f"may change) or train in a new work directory")


def _write_each_array_from_one_replica() -> None:
    """Orbax's replica-parallel save splits each replicated array over its replicas with a jitted
    slice per shape and device: on 8 CPU devices the first save of the RAFT-small train state made
    ~300 such compiles (11 s, against 0.7 s on one device); later ones took 1.6 s against 0.6 s. The
    state is replicated and a few MB to a few hundred MB, so replica 0 writes each array whole (the
    checkpoint reads back the same either way)."""
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def run(config, workdir: str, init: Optional[str] = None, progress: bool = True) -> dict:
    """Train from `init` (default config.init) on the configured shards; resume if WORKDIR has
    checkpoints. Returns {'step', 'loss', 'model': exported checkpoint folder, 'preempted'}."""
    import tensorflow as tf  # summaries only
    from tqdm import tqdm
    tc = TrainConfig.from_config(config.get("train"))
    ac = augment.AugmentConfig.from_config(config.get("augment", {"enabled": False}))
    init = init or config.init
    loaded = checkpoints.load_model(init, config.get("runtime"))
    model_cfg = loaded.cfg
    is_raft = isinstance(model_cfg, RAFTConfig)
    if is_raft and ac.enabled and ac.crop and (ac.crop[0] % 8 or ac.crop[1] % 8 or min(ac.crop) < 128):
        raise ValueError(f"augment.crop={ac.crop}: RAFT training crops must be multiples of 8 and >= 128")
    mesh = parallel.make_mesh(tc.num_devices or None)
    if tc.batch_size % mesh.size:
        raise ValueError(f"train.batch_size={tc.batch_size} (the global batch) must be a multiple of "
                         f"the {mesh.size} devices of the mesh (or set train.num_devices)")
    tx = make_optimizer(tc)
    state = initial_state(loaded.variables, tx, tc.seed)
    data_dirs = tuple(d for d in (tc.data or os.path.join(workdir, "labels")).split(",") if d)
    pcfg = pipeline.PipelineConfig(
        data_dirs, clip_len=tc.clip_len or (2 if is_raft else model_cfg.S),
        hop=1 if is_raft else 0, size=tc.size or None,
        batch_size=tc.batch_size, seed=tc.seed, shuffle_buffer=tc.shuffle_buffer,
        with_flow=is_raft, max_tracks=0 if is_raft else tc.max_tracks, split="rows")
    ckpt_dir = fs.abspath(os.path.join(workdir, "checkpoints"))
    _write_each_array_from_one_replica()
    options = ocp.CheckpointManagerOptions(max_to_keep=tc.keep_checkpoints or None, create=True)
    meta = {"config": settings.as_dict(config),
            "model": {"arch": model_cfg.arch, **model_cfg.to_dict()}, "init": fs.abspath(init),
            "init_provenance": loaded.provenance}
    data_state = None
    with ocp.CheckpointManager(ckpt_dir, options=options) as mngr:
        if mngr.latest_step() is not None:
            restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(jax.tree_util.tree_map(np.asarray, state)),
                data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
            _check_resumable(restored["meta"], meta, ckpt_dir)
            state = jax.tree_util.tree_map(jnp.asarray, restored["state"])
            data_state = restored["data"]
        data = pipeline.ClipIterator(pcfg, state=data_state)
        step_fn = make_train_step(model_cfg, tc, tx, mesh, tc.freeze_bn, ac)
        # placed as the step returns it, so the second step does not compile the step again
        state = parallel.put(state, parallel.replicated(mesh))
        main_process = parallel.is_main_process()
        writer = (tf.summary.create_file_writer(os.path.join(workdir, "tensorboard")) if main_process
                  else tf.summary.create_noop_writer())
        preempt = _Preempted()
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
                if step % tc.save_every == 0 or step == tc.steps:
                    save(step)
        finally:
            preempt.restore()
            writer.flush()
            bar.close()
    model_dir = os.path.join(workdir, "model")
    parallel.barrier("train: before export")  # every process sees the same model_dir
    if checkpoints.exported_steps(model_dir) != int(state.step):  # none yet, or from a run since extended
        variables = {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
        checkpoints.save_model(model_dir, model_cfg, parallel.to_host(variables),
                               {"trained_from": fs.abspath(init), "steps": int(state.step),
                                "init_provenance": loaded.provenance}, replace=True)
    return {"step": int(state.step), "loss": loss, "model": model_dir, "preempted": False}


@cli.guarded
def main(argv) -> int:
    """`python -m refine_jax.train.trainer --config_json=FILE --workdir=DIR`: the train stage alone
    (the config as JSON); exits 0 after a SIGTERM-triggered save."""
    import argparse
    import ml_collections
    p = argparse.ArgumentParser(prog="python -m refine_jax.train.trainer")
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
