"""Training as a library: the train state, the optimiser with the reference schedules, one jitted,
donated, mesh-sharded train step (batch split over 'data'; parameters replicated; augmentation
inside), the resume check, and SIGTERM handling. The `train` stage (stages/train.py) runs the loop.
"""
from __future__ import annotations

import json
import signal
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from refine_jax import parallel, settings, tasks
from refine_jax.settings import TrainConfig
from refine_jax.train import augment


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
    if tc.grad_accum > 1:  # the mean over micro-batches (the reference sums them; docs/method.md, "Training")
        tx = optax.MultiSteps(tx, every_k_schedule=tc.grad_accum)
    return tx


def make_train_step(model_cfg, tc, tx, mesh, freeze_bn: bool,
                    ac: settings.AugmentConfig = settings.AugmentConfig(enabled=False)):
    """A jitted `step(state, batch) -> (state, metrics)`, state donated and replicated, batch split
    over the mesh's 'data' axis; augmentation (`ac`) runs inside, keyed by fold_in(rng, step)."""
    loss_fn = tasks.of(model_cfg).objective(model_cfg, tc, freeze_bn)

    frozen = tuple(tc.frozen)

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        batch = augment.augment_batch(jax.random.fold_in(rng, 1), batch, ac)
        # frozen modules get no gradient, so XLA drops their backward pass
        loss_of = lambda p, *a: loss_fn({k: jax.lax.stop_gradient(v) if k in frozen else v
                                         for k, v in p.items()}, *a)
        (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state.params, state.batch_stats, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        return TrainState(state.step + 1, params, batch_stats, opt_state, state.rng), metrics

    rep, bat = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, bat), out_shardings=(rep, rep), donate_argnums=0)


class Preemption:
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
                               "train.keep_checkpoints", "train.num_devices", "train.max_seconds"})


def check_resumable(saved: dict, meta: dict, ckpt_dir: str) -> None:
    """Raise when the checkpoints in ckpt_dir were written by a run whose training settings
    (train and augment sections, init, model) differ from this run's, naming each difference."""
    now = json.loads(json.dumps(meta))  # tuples as the saved JSON holds them (lists)
    compared = lambda m: {"train": m.get("config", {}).get("train"), "augment": m.get("config", {}).get("augment"),
                          "init": m.get("init"), "model": m.get("model")}
    diffs = settings.differences(compared(saved), compared(now),
                                 RESUMABLE_CHANGES | {"model.lookup"},  # the lookups give the same numbers
                                 defaults=settings.dataclass_defaults(train=TrainConfig, augment=settings.AugmentConfig))
    if diffs:
        raise ValueError(f"{ckpt_dir} holds checkpoints of a run with other settings ({'; '.join(diffs)}); "
                         f"resume with that run's settings (only {', '.join(sorted(RESUMABLE_CHANGES))} "
                         f"may change) or train in a new work directory")


def write_each_array_from_one_replica() -> None:
    """Orbax's replica-parallel save splits each replicated array over its replicas with a jitted
    slice per shape and device: on 8 CPU devices the first save of the RAFT-small train state made
    ~300 such compiles (11 s, against 0.7 s on one device); later ones took 1.6 s against 0.6 s. The
    state is replicated and a few MB to a few hundred MB, so replica 0 writes each array whole (the
    checkpoint reads back the same either way)."""
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
