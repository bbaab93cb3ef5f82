"""RAFT refinement configs.

Default (no preset): the embedded demo. It refines the committed procedural stand-in RAFT-small
(refine_jax/demo/standins/raft_small, made by :pretrain through refine_jax.demo.stream on a GPU) on procedural target videos with the source's
motion and another appearance (motion blur, fog, defocus, sensor noise, exposure drift), then
compares before, after, an oracle trained on the ground truth, and zero flow:
  python -m refine_jax.main --config=configs/raft.py
Presets:
  :pretrain  the stand-in's recipe: procedural source videos, RAFT-small from random init, then
             measured on new source videos (python -m refine_jax.main --config=configs/raft.py:pretrain)
  :sintel    per-scene test-time refinement as the reference (raft-things init, 32 iterations,
             batch 12, 256x512 crops, 1000 of 1100 one-cycle steps, lr 1e-4, clip 5, gamma 0.85):
    python -m refine_jax.main --config=configs/raft.py:sintel --workdir=runs/alley_1 \\
        --config.init=ckpt/raft_things --config.data.videos=shards/sintel_final_alley_1
  :runlocal  a tiny run of every stage for a quick CPU check.
"""
import ml_collections

from refine_jax import settings


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init = ""                       # converted checkpoint folder or .pth; "" = the demo's stand-in
    # run-time model settings: precision 'highest' | 'bf16'; lookups 'auto' | 'gather' | 'einsum';
    # correlation 'auto' | 'volume' | 'alt' (computed on the fly, for large frames)
    c.runtime = ml_collections.ConfigDict({"precision": "highest", "lookup": "auto", "corr": "auto"})
    c.stages = ("generate", "label", "train", "oracle", "eval")
    c.data = ml_collections.ConfigDict({"videos": ""})
    c.demo = ml_collections.ConfigDict({
        "arch": "raft_small", "model": {}, "size": (256, 320), "frames": 4, "tracks": 0,
        "seed": 0, "target_videos": 6, "target_shifts": "default",
        "source_videos": 0, "source_frames": 3, "source_eval_videos": 0, "source_seed": 1000, "workers": 1,
        "pretrain": {"steps": 4500, "batch_size": 8, "lr": 4e-4, "iters": 8, "schedule": "onecycle",
                     "clip": 1.0, "weight_decay": 1e-4, "gamma": 0.8, "save_every": 250,
                     "keep_checkpoints": 2, "log_every": 50},
        "pretrain_augment": {"enabled": True, "crop": (160, 224), "eraser": 0.5, "vflip": 0.1}})
    # The cycle check (alpha 0.002, beta 0.1 px, colour 0.005 on [-0.5, 0.5]) is the reference's;
    # colour_noise / colour_gain widen the colour test by each pair's measured sensor noise and gain
    # (labels/cycle.py). 12 iterations for CPU time (the reference runs 32); docs/results.md.
    c.label = settings.section(settings.LabelConfig, batch=6, iters=12, color_noise=True, color_gain=True)
    c.augment = settings.section(settings.AugmentConfig, crop=(192, 256))
    # The demo's budget: 35 steps of 6 pairs with as many iterations as labels and evaluation (12);
    # how it was chosen, with the settings measured against it, is in docs/results.md.
    c.train = settings.section(settings.TrainConfig, steps=35, batch_size=6)
    c.eval = settings.section(settings.EvalConfig, iters=12)
    if arg in (None, ""):
        return c
    if arg == "pretrain":
        c.stages = ("generate", "pretrain")
        c.demo.update({"source_videos": 3000, "source_eval_videos": 40, "target_videos": 0, "frames": 3,
                       "workers": 2})
        return c
    if arg == "sintel":
        c.stages = ("label", "train", "eval")
        c.label.update({"iters": 32, "batch": 2, "beta": 0.1, "color_thresh": 0.005, "color_noise": False,
                        "color_gain": False})
        c.augment.crop = (256, 512)
        c.train.update({"steps": 1000, "schedule_steps": 1100, "batch_size": 12, "iters": 32, "lr": 1e-4,
                        "save_every": 100})
        c.eval.iters = 32
        return c
    if arg == "runlocal":
        c.stages = ("generate", "pretrain", "label", "train", "oracle", "eval")
        c.demo.update({"source_videos": 4, "source_eval_videos": 1, "target_videos": 2, "frames": 3,
                       "size": (128, 160)})
        c.demo.pretrain.update({"steps": 4, "batch_size": 2, "iters": 2, "save_every": 2})
        c.demo.pretrain_augment.update({"crop": (128, 128)})
        c.augment.crop = (128, 128)
        c.label.update({"iters": 2, "beta": 10.0, "alpha": 0.5, "color_thresh": 1.0})
        c.train.update({"steps": 4, "batch_size": 2, "iters": 2, "save_every": 2})
        c.eval.update({"iters": 2, "curve": True})   # the demo leaves the curve out for time
        return c
    raise ValueError(f"unknown preset {arg!r}; expected pretrain, sintel or runlocal")
