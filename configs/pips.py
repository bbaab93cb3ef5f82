"""PIPs refinement configs.

Default (no preset): the embedded demo. It refines the committed procedural stand-in PIPs
(refine_jax/demo/standins/pips: latent 64, mixer 128 x 2, made by :pretrain through
refine_jax.demo.stream on a GPU) on procedural target
videos with the source's motion and another appearance, then compares before, after, an oracle
trained on the ground-truth tracks, and the query points held still. For CPU time it trains
128x128 crops for 60 steps with the encoder frozen (the reference presets train every module; see below):
  python -m refine_jax.main --config=configs/pips.py
Reference recipes (init = the PIPs reference checkpoint or a converted folder; data = shards of the
benchmark with ground truth, see refine_jax.data.benchmarks):
  :crohd         768x1280 labels, 8 frames at stride 3, 24x24 dense windows around moving heads
                 (up to 9216 queries, tracked 512 at a time: label.query_chunk 0 = auto),
                 tau 1.5 px; train 512x852, 5000 micro-steps (625 updates of 8), cosine T_max 825,
                 lr 1e-5, clip 5, no augmentation, score-map loss on, vis loss off
  :horse10       256x448, 40x40 windows around keypoints, tau 3 px, mean speed > 5 px,
                 6000 micro-steps (750 updates), cosine T_max 950
  :tapvid_davis  per video, 256x256, chained evaluation in 'strided' mode (docs/method.md:
                 implemented like CroHD/Horse)
    python -m refine_jax.main --config=configs/pips.py:horse10 --workdir=runs/horse \
        --config.init=model-000200000.pth --config.data.videos=shards/horse10
  :pretrain      the stand-in's recipe: procedural source videos, the reduced PIPs from random
                 init (sequence L1 + the score-map loss, as PIPs is trained; 128x128 crops, only
                 tracks queried inside the crop), then measured on new source videos. The committed
                 stand-in continued on whole 256x256 frames (--config.demo.pretrain_augment.crop='()'):
                 tracks faster than 16 px/frame leave a 128x128 crop within 8 frames (model.json note)
  :runlocal      a tiny run of every stage.
"""
import ml_collections

from refine_jax import settings


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init = ""
    # run-time model settings: 'highest' | 'bf16'; lookups 'auto' | 'gather' | 'einsum'
    c.runtime = ml_collections.ConfigDict({"precision": "highest", "lookup": "auto"})
    c.stages = ("generate", "label", "train", "oracle", "eval")
    c.data = ml_collections.ConfigDict({"videos": ""})
    c.demo = ml_collections.ConfigDict({
        "arch": "pips", "model": {"latent_dim": 64, "mixer_dim": 128, "mixer_depth": 2, "stride": 4},
        "size": (256, 256), "frames": 8, "tracks": 256, "seed": 0, "target_videos": 4,
        "target_shifts": "default", "source_videos": 0, "source_frames": 0, "source_eval_videos": 0,
        "source_seed": 2000, "workers": 1,
        "pretrain": {"steps": 1000, "batch_size": 2, "lr": 5e-4, "iters": 4, "schedule": "onecycle",
                     "gamma": 0.8, "clip": 1.0, "save_every": 100, "keep_checkpoints": 2, "log_every": 10,
                     "max_tracks": 128, "score_map_loss": True},
        "pretrain_augment": {"enabled": True, "crop": (128, 128), "vflip": 0.1}})
    # Queries at the target videos' annotated points (as the CroHD and Horse-10 references query
    # their annotated points), so that the label precision can be measured against ground truth.
    c.label = settings.section(settings.LabelConfig, batch=4, iters=4, grid=0, max_queries=256)
    c.augment = settings.section(settings.AugmentConfig, crop=(128, 128))
    # The score-map loss as the reference refinement runs (and as the stand-in was trained). The
    # demo keeps the encoder (fnet) frozen and trains the rest for 60 steps, for CPU time; the
    # reference presets below train every module (docs/results.md).
    demo = arg in (None, "")
    c.train = settings.section(settings.TrainConfig, schedule="cosine", iters=4, gamma=0.8, score_map_loss=True,
                               **({"steps": 60, "frozen": ("fnet",)} if demo else {"steps": 30}))
    c.eval = settings.section(settings.EvalConfig, iters=4)
    if demo:
        return c
    ref = {"stages": ("label", "train", "eval")}
    if arg == "crohd":
        c.update(ref)
        c.label.update({"iters": 6, "tau": 1.5, "grid": 0, "densify_window": 24, "use_gt_points": True,
                        "batch": 1, "max_queries": 9216})
        c.augment.enabled = False
        c.train.update({"steps": 5000, "grad_accum": 8, "schedule_steps": 825, "lr": 1e-5, "iters": 6,
                        "batch_size": 1, "score_map_loss": True, "size": (512, 852), "save_every": 500})
        c.eval.update({"iters": 6, "query_mode": "strided"})
        return c
    if arg == "horse10":
        c.update(ref)
        c.label.update({"iters": 6, "tau": 3.0, "grid": 0, "densify_window": 40, "use_gt_points": True,
                        "batch": 1, "max_queries": 1600, "min_speed": 5.0 * 8 / 7})
        c.augment.enabled = False
        c.train.update({"steps": 6000, "grad_accum": 8, "schedule_steps": 950, "lr": 1e-5, "iters": 6,
                        "batch_size": 1, "score_map_loss": True, "size": (256, 448), "save_every": 500})
        c.eval.update({"iters": 6, "query_mode": "first"})
        return c
    if arg == "tapvid_davis":
        c.update(ref)
        c.label.update({"iters": 6, "tau": 3.0, "grid": 16, "batch": 1, "max_queries": 1024})
        c.train.update({"steps": 1000, "grad_accum": 8, "schedule_steps": 150, "lr": 1e-5, "iters": 6,
                        "batch_size": 1, "score_map_loss": True, "size": (256, 256), "save_every": 200})
        c.eval.update({"iters": 6, "query_mode": "strided", "tapvid_256": True})
        return c
    if arg == "pretrain":
        c.stages = ("generate", "pretrain")
        c.demo.update({"source_videos": 1500, "source_eval_videos": 30, "target_videos": 0, "workers": 1})
        # Gather-free lookups: the backward pass of a gather is a scatter. An earlier measurement
        # gave 2.58 s per step against 4.3 s with 'gather' (2 cores, batch 2, 8x128x128); on
        # 2026-11-27 both took 2.4-2.5 s. Same numbers within 1e-4 px (test_lookup).
        c.runtime.lookup = "einsum"
        return c
    if arg == "runlocal":
        c.stages = ("generate", "pretrain", "label", "train", "oracle", "eval")
        c.demo.update({"source_videos": 2, "source_eval_videos": 1, "target_videos": 2, "tracks": 8,
                       "size": (128, 128)})
        c.demo.pretrain_augment.update({"crop": ()})
        c.augment.crop = ()
        c.demo.model.update({"latent_dim": 32, "mixer_dim": 64, "mixer_depth": 1, "stride": 8})
        c.demo.pretrain.update({"steps": 2, "batch_size": 2, "iters": 1, "save_every": 1, "max_tracks": 8})
        c.label.update({"iters": 1, "grid": 3, "stride": 8, "tau": 1e6, "max_queries": 16, "batch": 1})
        c.train.update({"steps": 2, "batch_size": 2, "iters": 1, "save_every": 1, "max_tracks": 16})
        c.eval.update({"iters": 1, "stride": 8, "curve": True})   # the demo leaves the curve out for time
        return c
    raise ValueError(f"unknown preset {arg!r}; expected pretrain, crohd, horse10, tapvid_davis or runlocal")
