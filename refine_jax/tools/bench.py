"""Speed measurements on this machine; with --official, the official PyTorch code side by side.

  python -m refine_jax.tools.bench raft [--repeats=3] [--official=PATH_TO_princeton-vl/RAFT]
  python -m refine_jax.tools.bench pips [--repeats=3] [--official=PATH_TO_aharley/pips]
  python -m refine_jax.tools.bench train --arch=raft|raft_small|pips [--batch=N] [--train_size=H,W]
      [--iters=N] [--official=PATH_TO_princeton-vl/RAFT or aharley/pips]   (one optimiser step of the
      reference recipe; --side=ours|official: one side alone with its peak memory)
  python -m refine_jax.tools.bench large [--large_size=1080,1920] [--corr=alt|volume]   (time, peak memory)
  (raft, pips, large: --precision=highest|bf16)
  python -m refine_jax.tools.bench conv   (a conv's weight gradient: XLA:CPU's against per-tap matmuls)
  python -m refine_jax.tools.bench data   (decoded frames/s of 384x512 JPEG clips through the pipeline)
  python -m refine_jax.tools.bench label  (labelled pairs/s and clips/s against one forward pass;
      with --official=PATH_TO_princeton-vl/RAFT: RAFT labelling against the official code)
  python -m refine_jax.tools.bench tpu --topology=v5e:2x4 --config=configs/raft.py:sintel [--arch=raft]
      [--size=H,W] [--steps=train,label,eval]   (compile for a TPU topology: refine_jax/compile_report.py)

Without --official only our absolute times are printed (a ratio against a time measured on
another machine means nothing). With it, the official implementation from the user's checkout
(refine_jax/official.py) runs in the same process, on the same inputs and weights, with as many
threads as XLA uses, and the ratio ours/official and the largest output difference are printed.
Compile time is reported separately from the steady-state time per call.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from refine_jax import cli


def time_call(fn, *args, repeats: int = 3):
    """(compile seconds, median seconds per call, all timings) of a jitted fn, or of a function
    that calls one (then the first call, compile included, counts as compiling)."""
    t0 = time.perf_counter()
    if hasattr(fn, "lower"):
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(compiled(*args))  # warm-up
    else:
        compiled = fn
        jax.block_until_ready(compiled(*args))
        compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times), times


def _report(name, compile_s, median, times, official=None, diff=None):
    line = (f"{name:<34} compile {compile_s:6.1f} s | ours {median:6.3f} s/call "
            f"({', '.join(f'{t:.3f}' for t in times)})")
    if official is not None:
        line += (f" | official PyTorch {official:.3f} s/call | ratio ours/official {median / official:.2f}"
                 f" | max output difference {diff:.2e} px")
    print(line, flush=True)


def time_torch(fn, *args, repeats: int = 3):
    """Median seconds per call of a PyTorch function after one warm-up, and its output."""
    import torch
    torch.set_num_threads(os.cpu_count() or 1)  # what XLA:CPU uses
    out = fn(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_raft(repeats: int, official: str = "", precision: str = "highest") -> None:
    from refine_jax.tools import official as official_lib
    from refine_jax.models.raft import RAFT, RAFTConfig

    cfg = RAFTConfig(precision=precision)
    model = RAFT(cfg)
    rng = np.random.default_rng(0)
    im1 = rng.uniform(0, 255, (1, 368, 496, 3)).astype(np.float32)
    im2 = rng.uniform(0, 255, (1, 368, 496, 3)).astype(np.float32)
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), im1, im2, iters=1))()
    for iters in (12, 32):
        fn = jax.jit(lambda v, a, b, iters=iters: model.apply(v, a, b, iters=iters)["flow_up"])
        timing = time_call(fn, variables, jnp.asarray(im1), jnp.asarray(im2), repeats=repeats)
        ref = diff = None
        if official:
            ref, out = time_torch(official_lib.raft(official, cfg, jax.device_get(variables), iters), im1, im2,
                                  repeats=repeats)
            diff = float(np.abs(np.asarray(fn(variables, im1, im2)) - out).max())
        _report(f"RAFT large 368x496, {iters} iters, {precision}", *timing, ref, diff)


def _train_inputs(batch: int, size, seed: int = 0):
    """A training batch of random pairs with a smooth random flow label (valid everywhere):
    {'frames' (B, 2, H, W, 3) uint8, 'flow' (B, 1, H, W, 2), 'flow_valid' (B, 1, H, W)}."""
    rng = np.random.default_rng(seed)
    h, w = size
    frames = rng.integers(0, 256, (batch, 2, h, w, 3), dtype=np.uint8)
    coarse = rng.normal(0, 4, (batch, 1, h // 32, w // 32, 2)).astype(np.float32)
    flow = np.repeat(np.repeat(coarse, 32, axis=2), 32, axis=3)
    return {"frames": frames, "flow": flow, "flow_valid": np.ones((batch, 1, h, w), np.float32)}


def _track_inputs(batch: int, size, tracks: int = 128, frames: int = 8, seed: int = 0):
    """A training batch of random clips with random-walk track labels inside the frame, all
    visible and valid, as the train stage's pipeline gives it: {'frames' (B, S, H, W, 3) uint8,
    'tracks' (B, N, S, 2) px, 'visible' (B, N, S), 'track_valid' (B, N)}."""
    rng = np.random.default_rng(seed)
    h, w = size
    start = rng.uniform((8, 8), (w - 9, h - 9), (batch, tracks, 1, 2))
    steps = np.concatenate([np.zeros((batch, tracks, 1, 2)), rng.normal(0, 3, (batch, tracks, frames - 1, 2))], 2)
    xy = np.clip(start + np.cumsum(steps, axis=2), 0, (w - 1, h - 1)).astype(np.float32)
    return {"frames": rng.integers(0, 256, (batch, frames, h, w, 3), dtype=np.uint8), "tracks": xy,
            "visible": np.ones((batch, tracks, frames), np.float32),
            "track_valid": np.ones((batch, tracks), np.float32)}


def train_config(arch: str, batch: int, iters: int = 0):
    """The reference refinement recipe's step as our TrainConfig, with a constant learning rate
    (the official loops' schedulers are left out of both sides). RAFT: 32 iterations, gamma 0.85,
    clip 5, lr 1e-4, weight decay 1e-4, batch statistics. PIPs (CroHD / Horse10): 6 iterations,
    gamma 0.8, the score-map loss and no visibility loss, clip 5, lr 1e-5, weight decay 1e-4.
    `iters` (0: the recipe's) shows how the step grows with the iteration count."""
    from refine_jax.settings import TrainConfig
    if arch == "pips":
        return TrainConfig(steps=10, batch_size=batch, lr=1e-5, schedule="constant", weight_decay=1e-4, clip=5.0,
                           iters=iters or 6, gamma=0.8, score_map_loss=True, vis_loss=False)
    return TrainConfig(steps=10, batch_size=batch, lr=1e-4, schedule="constant", weight_decay=1e-4, clip=5.0,
                       iters=iters or 32, gamma=0.85, mask_mode="per_sample", freeze_bn=False)


# (batch, H,W) of one reference training step: RAFT's Sintel recipe is 12 pairs at 256x512 (a
# smaller default keeps a CPU run short); PIPs' Horse10 recipe is 1 clip of 8 frames at 256x448
TRAIN_DEFAULTS = {"raft": (2, "256,320"), "raft_small": (2, "256,320"), "pips": (1, "256,448")}


def _peak_gib() -> float:
    """Peak resident memory of this process so far, GiB."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def bench_train(arch: str, repeats: int, official: str = "", precision: str = "highest", batch: int = 0,
                size: str = "", side: str = "both", iters: int = 0) -> None:
    """One optimiser step (training forward, sequence loss, backward, clipping, AdamW) of RAFT,
    RAFT-small or PIPs (stride 4, 128 tracks) on the same batch and weights: ours (jitted,
    donated) against the official model's training step in PyTorch (float32; with
    --precision=bf16 under bfloat16 autocast). Printed: compile, median seconds per step, the
    ratio, and the first step's loss and gradient norm on both sides (the same computation is
    being timed). `side` 'ours' or 'official' runs one side only and prints the process's peak
    resident memory (run each in its own process)."""
    from refine_jax import checkpoints, parallel
    from refine_jax.models.pips import PipsConfig
    from refine_jax.models.raft import RAFTConfig
    from refine_jax.train import trainer

    if arch not in TRAIN_DEFAULTS:
        raise ValueError(f"bench train: --arch must be one of {', '.join(TRAIN_DEFAULTS)}, not {arch!r}")
    batch = batch or TRAIN_DEFAULTS[arch][0]
    hw = tuple(int(v) for v in (size or TRAIN_DEFAULTS[arch][1]).split(","))
    cfg = (PipsConfig(stride=4, precision=precision) if arch == "pips"
           else RAFTConfig(small=arch == "raft_small", precision=precision))
    tc = train_config(arch, batch, iters)
    variables = jax.device_get(checkpoints.init_variables(cfg, seed=0))
    batch_np = _track_inputs(batch, hw) if arch == "pips" else _train_inputs(batch, hw)
    name = f"train {arch} {hw[0]}x{hw[1]} batch {batch}, {tc.iters} iters, {precision}"
    if side == "official":
        loss, norm, med, ts = _official_train(official, cfg, variables, tc, batch_np, repeats, precision)
        print(f"{name}: official only, {med:.2f} s/step ({', '.join(f'{t:.2f}' for t in ts)}), first loss "
              f"{loss:.6f}, grad norm {norm:.6f}, peak resident memory {_peak_gib():.2f} GiB", flush=True)
        return
    mesh = parallel.make_mesh(1)
    tx = trainer.make_optimizer(tc)
    step = trainer.make_train_step(cfg, tc, tx, mesh, freeze_bn=tc.freeze_bn)
    # placed as the step returns it, so the second step does not compile again
    state = parallel.put(trainer.initial_state(variables, tx, 0), parallel.replicated(mesh))
    t0 = time.perf_counter()
    state, first = step(state, batch_np)
    first = jax.device_get(first)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, m = step(state, batch_np)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    if side == "ours":
        print(f"{name}: ours only, {median:.2f} s/step, peak resident memory {_peak_gib():.2f} GiB", flush=True)
        return
    line = (f"{name:<44} compile+first {compile_s:6.1f} s | ours {median:6.2f} s/step "
            f"({', '.join(f'{t:.2f}' for t in times)}) | first loss {float(first['loss']):.6f}, "
            f"grad norm {float(first['grad_norm']):.6f}")
    if official:
        loss, norm, med, ts = _official_train(official, cfg, variables, tc, batch_np, repeats, precision)
        line += (f" | official PyTorch{' bf16 autocast' if precision == 'bf16' else ''} {med:6.2f} s/step "
                 f"({', '.join(f'{t:.2f}' for t in ts)}), first loss {loss:.6f}, grad norm {norm:.6f} | "
                 f"ratio ours/official {median / med:.2f} | loss differs by {abs(loss - float(first['loss'])):.2e}, "
                 f"grad norm by {abs(norm - float(first['grad_norm'])):.2e}")
    print(line, flush=True)


def _official_train(official, cfg, variables, tc, batch_np, repeats, precision):
    """(first loss, first gradient norm, median s/step, timings) of the official training step."""
    import torch
    from refine_jax.tools import official as official_lib
    torch.set_num_threads(os.cpu_count() or 1)  # what XLA:CPU uses
    bf16 = precision == "bf16"
    if cfg.arch == "pips":
        ref = official_lib.pips_train_step(official, cfg, variables, tc.iters, tc.clip, tc.lr, tc.weight_decay,
                                           bf16=bf16)
        args = (batch_np["frames"], np.swapaxes(batch_np["tracks"], 1, 2))
    else:
        ref = official_lib.raft_train_step(official, cfg, variables, tc.iters, tc.gamma, tc.clip, tc.lr,
                                           tc.weight_decay, bf16=bf16)
        f = batch_np["frames"]
        args = (f[:, 0], f[:, 1], batch_np["flow"][:, 0], batch_np["flow_valid"][:, 0])
    loss, norm = ref(*args)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref(*args)
        ts.append(time.perf_counter() - t0)
    return loss, norm, statistics.median(ts), ts


# (name, input N,H,W,Cin, kernel, stride, Cout): convs of the models' training steps at the bench
# train shapes (RAFT batch 2 at 256x320; PIPs 8 frames at 256x448, stride 4)
CONV_SHAPES = (("RAFT fnet conv1 7x7/2", (2, 256, 320, 3), 7, 2, 64),
               ("RAFT fnet layer1 3x3", (2, 128, 160, 64), 3, 1, 64),
               ("RAFT update convc2 3x3", (2, 32, 40, 256), 3, 1, 192),
               ("RAFT update convz1 1x5", (2, 32, 40, 384), (1, 5), 1, 128),
               ("RAFT update convc1 1x1", (2, 32, 40, 324), 1, 1, 256),
               ("RAFT mask conv 3x3", (2, 32, 40, 128), 3, 1, 256),
               ("PIPs fnet conv2 3x3", (8, 64, 112, 416), 3, 1, 256))


def bench_conv(repeats: int) -> None:
    """A conv's weight gradient on the CPU, XLA's own against `precision.tap_weight_grad` (one
    matmul per kernel tap), side by side on the shapes of CONV_SHAPES, float32; the forward
    conv's time for scale, and which of the two `precision.cpu_conv` takes on this CPU."""
    from refine_jax.models import precision
    hi = jax.lax.Precision.HIGHEST
    rng = np.random.default_rng(0)
    for name, shape, kernel, stride, cout in CONV_SHAPES:
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        pad = tuple((k // 2, k // 2) for k in kernel)
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        w = jnp.asarray(rng.normal(size=(*kernel, shape[-1], cout)), jnp.float32)
        conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), pad, precision=hi,
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        dy = jnp.ones_like(conv(x, w))
        native = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
        taps = jax.jit(lambda x, dy: precision.tap_weight_grad(x, dy, kernel, (stride, stride), pad, hi))
        gflop = 2 * np.prod(dy.shape) * np.prod(kernel) * shape[-1] / 1e9
        _, t_fwd, _ = time_call(jax.jit(conv), x, w, repeats=repeats)
        _, t_nat, _ = time_call(native, x, w, dy, repeats=repeats)
        _, t_tap, _ = time_call(taps, x, dy, repeats=repeats)
        diff = float(jnp.abs(native(x, w, dy) - taps(x, dy)).max() / jnp.abs(native(x, w, dy)).max())
        print(f"conv {name:<24} {gflop:6.2f} GFLOP | forward {t_fwd * 1e3:7.1f} ms | weight gradient: XLA "
              f"{t_nat * 1e3:7.1f} ms, taps {t_tap * 1e3:7.1f} ms, ratio taps/XLA {t_tap / t_nat:.2f} | "
              f"relative difference {diff:.1e} | used: "
              f"{'taps' if precision._taps_weight_grad_pays(shape, w.shape, (stride, stride)) else 'XLA'}", flush=True)


def bench_large(size: str, corr: str, precision: str) -> None:
    """Seconds and peak resident memory of one RAFT-large forward pass (12 iterations) on a
    large frame pair: with corr='alt' no correlation volume is ever built (models/lookup.py)."""
    import resource
    from refine_jax.models.raft import RAFT, RAFTConfig

    h, w = (int(v) for v in size.split(","))
    cfg = RAFTConfig(corr=corr, precision=precision)
    model = RAFT(cfg)
    rng = np.random.default_rng(0)
    im1, im2 = (jnp.asarray(rng.uniform(0, 255, (1, h, w, 3)).astype(np.float32)) for _ in range(2))
    small = jnp.zeros((1, 128, 128, 3), jnp.float32)
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), small, small, iters=1))()
    fn = jax.jit(lambda v, a, b: model.apply(v, a, b, iters=12)["flow_up"])
    compile_s, median, times = time_call(fn, variables, im1, im2, repeats=1)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux
    print(f"RAFT large {h}x{w}, 12 iters, corr={corr}, {precision}: compile {compile_s:.1f} s | "
          f"{median:.1f} s/call | peak resident memory of this process {peak_gib:.2f} GiB", flush=True)


def bench_pips(repeats: int, official: str = "", precision: str = "highest") -> None:
    from refine_jax.tools import official as official_lib
    from refine_jax.models.pips import Pips, PipsConfig

    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 255, (1, 8, 368, 496, 3)).astype(np.float32)
    xys = np.stack([rng.uniform(0, 495, 256), rng.uniform(0, 367, 256)], -1)[None].astype(np.float32)
    for stride in (8, 4):
        cfg = PipsConfig(stride=stride, precision=precision)
        model = Pips(cfg)
        variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), xys, frames, iters=1))()
        fn = jax.jit(lambda v, x, f: model.apply(v, x, f, iters=6)["coords"])
        timing = time_call(fn, variables, jnp.asarray(xys), jnp.asarray(frames), repeats=repeats)
        ref = diff = None
        if official:
            host = jax.device_get(variables)
            ref, _ = time_torch(official_lib.pips(official, cfg, host, 6), xys, frames, repeats=repeats)
            # random weights make later iterations chaotic (a 1e-5 difference grows to pixels), so the
            # outputs are compared after the first iteration
            first = official_lib.pips(official, cfg, host, 1)(xys, frames)
            diff = float(np.abs(np.asarray(model.apply(variables, xys, frames, iters=1)["coords"]) - first).max())
        _report(f"PIPs 8x368x496, N=256, 6 iters, s{stride}, {precision}", *timing, ref, diff)


def bench_data(repeats: int) -> None:
    """Frames/s through the real tf.data pipeline: 384x512 JPEG clips of 8 frames, batch 4."""
    import os
    import tempfile

    from refine_jax.data import pipeline, shards
    from refine_jax.demo import synthetic

    with tempfile.TemporaryDirectory() as d:
        with shards.ShardWriter(d, "bench", max_shard_bytes=8 << 20) as w:
            for i in range(8):  # 8 videos x 24 frames, procedural textures (realistic JPEG sizes)
                clip = synthetic.render_video(synthetic.PRESETS["target"], i, 24, 384, 512)
                clip.flow = clip.flow_valid = None
                w.write_clip(clip, "jpeg")
        n_files = len(w.manifest["files"])
        cfg = pipeline.PipelineConfig((d,), clip_len=8, batch_size=4, shuffle=True, seed=0)
        for r in range(repeats):
            it = pipeline.ClipIterator(cfg)
            next(it)  # start-up (graph building, first reads) not timed
            t0, frames = time.perf_counter(), 0
            for _ in range(24):
                frames += next(it)["frames"].shape[0] * cfg.clip_len
            dt = time.perf_counter() - t0
            print(f"data: 384x512 JPEG, clips of 8, batch 4, {n_files} shards: "
                  f"{frames / dt:7.1f} decoded frames/s ({frames} frames in {dt:.2f} s, "
                  f"{os.cpu_count()} CPUs)", flush=True)


def bench_label_official(repeats: int, official: str, precision: str = "highest", pairs: int = 2) -> None:
    """Labelling `pairs` RAFT-large pairs (368x496, 32 iterations, forward + backward + the cycle
    check): ours (the labeler's jitted call) against the official model forward and backward with
    the reference's check in PyTorch; the ratio, and how far the two labels differ."""
    from refine_jax import checkpoints, parallel
    from refine_jax.labels.flow import FlowLabeler
    from refine_jax.models.raft import RAFTConfig
    from refine_jax.settings import LabelConfig
    from refine_jax.tools import official as official_lib

    cfg = RAFTConfig(precision=precision)
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 255, (pairs, 368, 504, 3))
    im1 = base[:, :, :496].astype(np.uint8)
    im2 = base[:, :, 4:500].astype(np.uint8)  # a 4 px shift, so that some labels pass
    variables = jax.device_get(checkpoints.init_variables(cfg, seed=0))
    lab = FlowLabeler(cfg, variables, LabelConfig(batch=pairs, iters=32), parallel.make_mesh(1))
    fn = lambda a, b: lab.pairs(a, b)
    compile_s, median, times = time_call(fn, im1, im2, repeats=repeats)
    fw, valid, _, _ = fn(im1, im2)
    ref, (ofw, ovalid) = time_torch(official_lib.raft_label(official, cfg, variables, 32), im1, im2, repeats=repeats)
    print(f"label RAFT large {pairs} pairs 368x496 32 it, {precision}: compile {compile_s:.1f} s | ours "
          f"{median:.2f} s ({', '.join(f'{t:.2f}' for t in times)}) | official PyTorch {ref:.2f} s | ratio "
          f"ours/official {median / ref:.2f} | max flow difference {np.abs(fw - ofw).max():.2e} px, labels "
          f"agree on {100 * np.mean(valid == ovalid):.3f} % of pixels (kept: ours {100 * valid.mean():.2f} %, "
          f"official {100 * ovalid.mean():.2f} %)", flush=True)


def bench_label(repeats: int) -> None:
    """Labelled pairs/s (RAFT large, 368x496, 32 iters: forward + backward + checks in one call)
    against one forward pass, and PIPs label clips/s (8x368x496, 256 queries, stride 4)."""
    from refine_jax import parallel
    from refine_jax.labels.flow import FlowLabeler
    from refine_jax.labels.tracks import TrackLabeler
    from refine_jax.settings import LabelConfig
    from refine_jax.models.pips import Pips, PipsConfig
    from refine_jax.models.raft import RAFT, RAFTConfig

    rng = np.random.default_rng(0)
    mesh = parallel.make_mesh(1)
    im = rng.uniform(0, 255, (2, 1, 368, 496, 3)).astype(np.float32)
    model = RAFT(RAFTConfig())
    v = jax.jit(lambda: model.init(jax.random.PRNGKey(0), im[0], im[1], iters=1))()
    fwd = jax.jit(lambda v, a, b: model.apply(v, a, b, iters=32)["flow_up"])
    _, t_fwd, _ = time_call(fwd, v, im[0], im[1], repeats=repeats)
    lab = FlowLabeler(RAFTConfig(), v, LabelConfig(batch=1), mesh)
    c, t_lab, ts = time_call(lab.fn, v, im[0], im[1], repeats=repeats)
    print(f"label flow RAFT 368x496 32 it: {t_lab:.3f} s/pair = {1 / t_lab:.3f} pairs/s "
          f"(compile {c:.1f} s); one forward {t_fwd:.3f} s; ratio {t_lab / t_fwd:.2f}x (goal <= 2.2x)",
          flush=True)
    frames = rng.uniform(0, 255, (1, 8, 368, 496, 3)).astype(np.float32)
    xys = np.stack([rng.uniform(0, 495, 256), rng.uniform(0, 367, 256)], -1)[None].astype(np.float32)
    pcfg = PipsConfig(stride=4)
    pm = Pips(pcfg)
    pv = jax.jit(lambda: pm.init(jax.random.PRNGKey(0), xys, frames, iters=1))()
    pf = jax.jit(lambda v, f, x: pm.apply(v, x, f, iters=6)["coords"])
    _, t_pf, _ = time_call(pf, pv, frames, xys, repeats=repeats)
    tl = TrackLabeler(pcfg, pv, LabelConfig(batch=1, stride=4), mesh)
    c, t_pl, _ = time_call(tl.fn, pv, frames, xys, repeats=repeats)
    print(f"label tracks PIPs 8x368x496 N=256 s4: {t_pl:.3f} s/clip = {1 / t_pl:.3f} clips/s "
          f"(compile {c:.1f} s); one forward {t_pf:.3f} s; ratio {t_pl / t_pf:.2f}x", flush=True)


DEMO_PRESETS = ("", "pretrain", "runlocal")  # these train and refine the config's demo model


def tpu_target(spec: str, arch: str = "", size: str = ""):
    """(config, arch, model widths or None, (H, W)) that `bench tpu` compiles for a config spec.
    The demo configs (no preset, :pretrain, :runlocal) compile their own stand-in
    (config.demo.arch and .model at config.demo.size); the other presets the published
    architecture at the dataset's frame size. `arch` and `size` ("H,W") override."""
    from refine_jax.tools import compile_report
    config = cli.load_config(spec)
    path, _, preset = spec.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    demo = preset in DEMO_PRESETS and not arch
    arch = arch or (config.demo.arch if demo else ("pips" if stem == "pips" else "raft"))
    model = dict(config.demo.get("model", {})) if demo else None
    if size:
        hw = tuple(int(v) for v in size.split(","))
    elif demo:
        hw = tuple(config.demo.size)
    else:
        hw = compile_report.DATA_SIZES.get((arch.replace("_small", ""), preset), (256, 256))
    return config, arch, model, hw


def bench_tpu(args) -> int:
    from refine_jax.tools import compile_report
    config, arch, model, size = tpu_target(args.config, args.arch, args.size)
    print(f"compiling {args.config} ({arch}{', the demo stand-in' if model is not None else ''}) for "
          f"{args.topology}, data frames {size[0]}x{size[1]}", flush=True)
    for row in compile_report.report(config, arch, args.topology, size, tuple(args.steps.split(",")), model=model):
        print(compile_report.summarise(row), flush=True)
    return 0


@cli.guarded
def main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m refine_jax.tools.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("raft", "pips", "train", "large", "data", "label", "conv", "tpu"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--official", default="", help="raft, pips: a checkout of the official code to time beside ours")
    p.add_argument("--precision", default="highest", choices=("highest", "bf16"), help="raft, pips, large")
    p.add_argument("--corr", default="alt", choices=("alt", "volume"), help="large: the correlation")
    p.add_argument("--large_size", default="1080,1920", help="large: H,W")
    p.add_argument("--topology", default="v5e:2x4", help="tpu: a Cloud TPU topology, e.g. v4:2x2x1, v5e:4x4")
    p.add_argument("--config", default="configs/raft.py:sintel", help="tpu: config file[:preset]")
    p.add_argument("--arch", default="", help="tpu, train: raft | raft_small | pips (tpu: default from the config file; train: raft)")
    p.add_argument("--size", default="", help="tpu: H,W of the data frames (default per preset)")
    p.add_argument("--steps", default="train,label,eval", help="tpu: which steps to compile")
    p.add_argument("--batch", type=int, default=0, help="train: pairs or clips per step (0: 2 for RAFT, 1 for PIPs)")
    p.add_argument("--train_size", default="", help="train: H,W of the frames (default RAFT 256,320; PIPs 256,448)")
    p.add_argument("--iters", type=int, default=0, help="train: update iterations (0: the reference recipe's, "
                   "RAFT 32, PIPs 6)")
    p.add_argument("--side", default="both", choices=("both", "ours", "official"),
                   help="train: one side only, with its peak memory (one process per side)")
    args = p.parse_args(argv)
    if args.what == "tpu":
        return bench_tpu(args)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}", flush=True)
    if args.what in ("raft", "pips"):
        {"raft": bench_raft, "pips": bench_pips}[args.what](args.repeats, args.official, args.precision)
    elif args.what == "train":
        bench_train(args.arch or "raft", args.repeats, args.official, args.precision, args.batch, args.train_size,
                    args.side, args.iters)
    elif args.what == "large":
        bench_large(args.large_size, args.corr, args.precision)
    elif args.what == "label" and args.official:
        bench_label_official(args.repeats, args.official, args.precision)
    elif args.official:
        raise ValueError(f"--official: only 'raft', 'pips', 'train' and 'label' time the official code, not {args.what!r}")
    else:
        {"data": bench_data, "label": bench_label, "conv": bench_conv}[args.what](args.repeats)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
