"""Refining a model on a user's own footage: the steps behind `python -m refine_jax.refine`.

A thin front over the pipeline's stages. The weights become a checkpoint folder (an official .pth
is converted once, strictly; the architecture is read from its keys), the videos become shards at
their own size (capped, in multiples of 8, windows spread over each video), a config is built from
the model's config file and the flags, and the label, train and eval stages run in the output
folder, each within its share of an optional time budget. Then the refined model is exported in
the official .pth layout beside the Flax folder, and the reports are written (footage_report.py).

The output folder (OUT):
  refine.json   the request; a re-run with the same request resumes, another one is refused
  init/         the converted weights (a .pth input)
  videos/<k>/   the k-th non-shard video source as shards
  labels/ checkpoints/ tensorboard/ model/ eval/   as `main` writes them
  exported/     the model the guard hands back (the refined one on a 'better' verdict, else the initial one)
  refined.pth   that model in the official layout
  report.md, report.html, summary.json
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional, Tuple

from refine_jax import checkpoints, fs, parallel, paths, settings, tasks
from refine_jax.data import ingest, shards, sources

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
REQUEST = "refine.json"
STATE = ".refine_state.json"
# a re-run may change these and resume: more steps train on, a new budget or evaluation set re-runs
# what is left
RESUMABLE = frozenset({"steps", "minutes", "eval", "eval_clips", "guard"})
# shares of the time left that the label stage and the eval stage may take (the train stage gets
# the rest, less EXPORT_S for the export and the report's pictures; eval also gets what training
# leaves); eval runs two models (before and after) through the forward and backward passes that
# labelling runs once
LABEL_SHARE, EVAL_SHARE, EVAL_COST, EXPORT_S = 0.3, 0.25, 2.5, 30.0
WINDOW = 8  # frames per ingested RAFT window (7 consecutive pairs)
BUDGET_STEPS = 100_000  # the steps a --minutes run starts from, before the train stage refits them


@dataclasses.dataclass(frozen=True)
class Request:
    """What the user asked for (the command's flags)."""
    videos: str
    out: str
    weights: str = ""              # .pth, checkpoint folder, refined model folder; "" = the stand-in
    arch: str = "raft_small"       # without weights: which stand-in
    eval: str = ""                 # shard folder(s) with ground truth; "" = the footage, label-free
    steps: int = 0                 # 0: the preset's
    minutes: float = 0.0           # 0: no time budget
    preset: str = ""               # a preset of the model's config file (e.g. sintel)
    max_side: int = 512            # frames scaled so that the longer side is at most this; 0 = native
    max_clips: int = 64            # windows per video, evenly spaced; 0 = all
    eval_clips: int = 0            # clips evaluated; 0 = all (or what the budget holds)
    config: str = ""               # another config file
    overrides: Tuple[str, ...] = ()  # 'section.field=value', applied last
    guard: str = "on"              # 'on': export the refined model only on a 'better' verdict
    holdout: int = 4               # without --eval: one window in this many of each --videos entry is kept
                                   # out of training for the verdict to judge on; 0 = judge on the trained ones


class Budget:
    """Wall-clock seconds from the command's start; `left()` is what remains (inf without one)."""

    def __init__(self, minutes: float, start: Optional[float] = None):
        self.start = time.time() if start is None else start
        self.seconds = 60.0 * minutes if minutes else math.inf

    def left(self) -> float:
        return self.seconds - (time.time() - self.start)

    def share(self, fraction: float) -> float:
        """`fraction` of the time left, at least one second; 0 (no limit) without a budget."""
        return 0.0 if math.isinf(self.seconds) else max(1.0, fraction * self.left())


def check_request(req: Request) -> None:
    """One line for a request that cannot run, before anything is written."""
    if req.steps and req.minutes:
        raise ValueError("give --steps or --minutes, not both (--minutes sets the steps the time holds)")
    if req.steps < 0 or req.minutes < 0 or req.max_side < 0 or req.max_clips < 0:
        raise ValueError("--steps, --minutes, --max_side and --max_clips must not be negative")
    sources.check_holdout(req.holdout, "--holdout")
    if req.guard not in ("on", "off"):
        raise ValueError(f"--guard must be 'on' or 'off', got {req.guard!r}")
    if not req.videos:
        raise ValueError("--videos is required: video files, a glob, frame folders or shard folders")


def check_same_request(req: Request) -> None:
    """Record the request in OUT/refine.json, or refuse one that differs from the recorded one in
    a setting other than those in RESUMABLE, naming each difference."""
    path = os.path.join(req.out, REQUEST)
    now = json.loads(json.dumps(dataclasses.asdict(req)))
    if fs.exists(path):
        # a request recorded before --holdout existed was judged on the clips trained on
        diffs = settings.differences(fs.read_json(path), now, RESUMABLE, defaults={"holdout": 0})
        if diffs:
            raise ValueError(f"{req.out}: holds a refinement with other settings ({'; '.join(diffs)}); "
                             f"rerun with those settings to resume it, or choose another --out")
    if parallel.is_main_process():
        fs.write_json_atomic(path, now)


def weights_folder(req: Request) -> str:
    """A checkpoint folder for --weights: the folder itself, the stand-in for --arch when none is
    given, or OUT/init converted (strictly, the architecture from the keys) from a .pth file."""
    if not req.weights:
        from refine_jax.demo import stages as demo
        return demo.standin_dir(req.arch)
    if not fs.exists(req.weights):
        raise FileNotFoundError(f"{req.weights}: no such checkpoint file or folder (--weights)")
    if fs.isdir(req.weights):
        checkpoints.load_model(req.weights)  # a folder that is not a checkpoint fails here, by name
        return req.weights
    out = os.path.join(req.out, "init")
    sha = shards.sha256_file(req.weights)
    if fs.exists(os.path.join(out, checkpoints.MODEL_JSON)):
        had = checkpoints.load_model(out).provenance.get("source_sha256")
        if had == sha:
            return out
        raise ValueError(f"{out}: was converted from another file than {req.weights}; choose another --out")
    from refine_jax import pth
    cfg, variables, provenance = pth.convert_file(req.weights)
    checkpoints.save_model(out, cfg, variables, provenance, replace=True)
    return out


def config_file(arch: str, req: Request) -> str:
    path = req.config or os.path.join(CONFIGS, "pips.py" if arch == "pips" else "raft.py")
    if not fs.exists(path):
        raise FileNotFoundError(f"{path}: no such config file (pass --config=FILE; the configs/ folder "
                                f"of the refine_jax checkout holds raft.py and pips.py)")
    return path


def is_shards(spec: str) -> bool:
    """A TFDS split or a shard folder (what the stages read as they are)."""
    return sources.is_tfds(spec) or (fs.isdir(spec) and fs.exists(os.path.join(spec, shards.MANIFEST)))


def prepare_videos(req: Request, clip_len: int, min_len: int, min_side: int, progress: bool = True) -> str:
    """The stages' `data.videos` for --videos (comma-separated): shard folders and TFDS splits as
    they are; each other source (video files, globs, frame folders) ingested into OUT/videos/<k>
    at its own size fitted by --max_side, in `clip_len`-frame windows (a shorter video or last
    window of at least `min_len` frames is kept), at most --max_clips per video. A finished ingest
    (its manifest) is reused."""
    out = []
    for k, spec in enumerate(sources.split_sources(req.videos)):
        if is_shards(spec):
            out.append(spec)
            continue
        target = os.path.join(req.out, "videos", str(k))
        if not fs.exists(os.path.join(target, shards.MANIFEST)):
            if parallel.is_main_process():
                ingest.ingest(spec, target, clip_len=clip_len, fmt="png", max_side=req.max_side,
                              max_clips=req.max_clips, min_side=min_side, min_len=min_len, progress=progress)
            parallel.barrier(f"refine: {target} ingested")
        out.append(target)
    return ",".join(out)


def apply_override(config, text: str) -> None:
    """config[section][field] = value for 'section.field=value' (a Python literal, else a string)."""
    import ast
    key, sep, raw = text.partition("=")
    if not sep:
        raise ValueError(f"--set {text!r}: expected section.field=value")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        if p not in node:
            raise KeyError(f"--set {text!r}: the config has no section {p!r}")
        node = node[p]
    if leaf not in node:
        raise KeyError(f"--set {text!r}: the config's {'.'.join(parents) or 'top level'} has no field {leaf!r}")
    node[leaf] = value


def build_config(req: Request, init: str, videos: str, model_cfg):
    """The config the stages run with: the model's config file at --preset, the label, train and
    eval stages, the weights and videos, --steps (with --minutes: BUDGET_STEPS, which the train
    stage lowers to what its time holds), and the --set overrides."""
    from refine_jax import cli
    spec = config_file(model_cfg.arch, req) + (f":{req.preset}" if req.preset else "")
    config = cli.load_config(spec)
    config.stages = ("label", "train", "eval")
    config.init, config.data.videos, config.eval.data = init, videos, req.eval
    if tasks.of(model_cfg) is tasks.TRACKS and not config.label.grid:
        config.label.grid = 16  # the demo queries annotated points; footage has none
    # with --minutes the train stage refits this upper bound to the steps its time holds
    steps = req.steps or (BUDGET_STEPS if req.minutes else 0)
    if steps:
        tc = config.train
        if tc.schedule_steps:  # keep the preset's ratio (the reference: 1100 for 1000 steps)
            tc.schedule_steps = int(round(tc.schedule_steps * steps / tc.steps))
        tc.steps = steps
    if req.eval_clips:
        config.eval.max_clips = req.eval_clips
    config.eval.holdout = req.holdout
    config.eval.guard = req.guard == "on"
    for text in req.overrides:
        apply_override(config, text)
    return config


def fit_batch(config, samples: int, devices: int) -> Optional[str]:
    """Set train.batch_size to what `samples` labelled samples fill, in a multiple of the devices
    (at least one sample a device); returns the one-line note when it changed."""
    bs = int(config.train.batch_size)
    fit = max(devices, min(bs, samples) // devices * devices)
    if fit == bs:
        return None
    config.train.batch_size = fit
    return f"train: batch {bs} -> {fit} ({samples} labelled samples, {devices} devices)"


def eval_clip_budget(seconds: float, label_seconds_per_clip: float, clips: int) -> int:
    """Clips (of `clips`) the eval stage can measure in `seconds`, from the label stage's seconds
    per clip (its compile included, so the estimate errs short)."""
    per_clip = max(label_seconds_per_clip * EVAL_COST, 1e-6)
    return int(min(clips, max(1, seconds // per_clip)))


def count_clips(videos: str, holdout: int = 0) -> int:
    """The clips the eval stage reads of `videos`: with `holdout`, those held out of training (all
    of them when none is, as evaluate.evaluation_clips falls back)."""
    total = held = 0
    for d in sources.split_sources(videos):
        try:
            n = int(shards.load_manifest(d).get("records", 0))
        except (shards.ShardError, OSError):  # a TFDS split: counted as it is read
            n = sum(1 for _ in sources.read_clips(d, checksum=False))
        total += n
        held += sum(sources.held_out(i, holdout) for i in range(n))
    return held or total


def note(text: str) -> None:
    if parallel.is_main_process():
        print(text, file=sys.stderr, flush=True)


def run(req: Request, progress: bool = True, start: Optional[float] = None) -> dict:
    """Refine: ingest, label, train, evaluate, export and report in req.out. Returns the summary
    (also OUT/summary.json)."""
    from refine_jax import pipeline
    from refine_jax import footage_report
    budget = Budget(req.minutes, start)
    check_request(req)
    fs.makedirs(req.out)
    check_same_request(req)
    init = weights_folder(req)
    loaded = checkpoints.load_model(init)
    task = tasks.of(loaded.cfg)
    # RAFT: windows of WINDOW frames, each labelled pair by pair, down to one pair; PIPs: its own window
    clip_len, min_len = (WINDOW, 2) if task is tasks.FLOW else (loaded.cfg.S, loaded.cfg.S)
    config = build_config(req, init, "", loaded.cfg)  # a wrong --set or --preset fails before any work
    t0 = time.time()
    videos = config.data.videos = prepare_videos(req, clip_len, min_len, task.min_side(loaded.cfg), progress)
    ingest_seconds = round(time.time() - t0, 1)
    state_path = os.path.join(req.out, STATE)
    state = fs.read_json(state_path) if fs.exists(state_path) else {}
    seconds = {"setup": round(t0 - budget.start, 1), "ingest": ingest_seconds}

    def stage(name):
        config.stages = (name,)
        t0 = time.time()
        out = pipeline.run(config, req.out, progress)
        seconds[name] = round(time.time() - t0, 1)
        return out

    config.label.max_seconds = budget.share(LABEL_SHARE)
    manifest = stage("label")["label"]
    if manifest["stats"].get("clips") and "label_seconds_per_clip" not in state:
        state["label_seconds_per_clip"] = seconds["label"] / manifest["stats"]["clips"]
        if parallel.is_main_process():
            fs.write_json_atomic(state_path, state)
    samples = int(manifest["stats"].get("samples", manifest["records"]))
    if not manifest["records"] or not manifest["stats"].get("kept"):
        raise ValueError(f"{paths.labels(req.out, config)}: no estimate passed the cycle check on "
                         f"{samples} samples; there is nothing to train on (is the footage static, or "
                         f"far from what the model knows?)")
    devices = jax_device_count(config)
    changed = fit_batch(config, int(manifest["records"]), devices)
    if changed:
        note(changed)
    eval_seconds = budget.share(EVAL_SHARE)
    if eval_seconds:
        config.train.max_seconds = max(1.0, budget.left() - eval_seconds - EXPORT_S)
    trained = stage("train")["train"]
    if trained.get("preempted"):
        return {"preempted": "train", "step": trained["step"]}
    if eval_seconds:  # what training left over goes to evaluation too
        clips = count_clips(config.eval.data or videos, settings.EvalConfig.from_config(config.eval).held_out_every())
        per_clip = state.get("label_seconds_per_clip", seconds["label"])
        n = eval_clip_budget(max(budget.left() - EXPORT_S, 1.0), per_clip, clips)
        config.eval.max_clips = min(n, config.eval.max_clips or n)
    result = stage("eval")["eval"]
    pth_path = os.path.join(req.out, "refined.pth")
    chosen = paths.exported(req.out) if fs.isdir(paths.exported(req.out)) else paths.model(req.out)
    if parallel.is_main_process() and not export_pth(chosen, pth_path):
        pth_path = ""
    seconds["export"] = round(time.time() - budget.start - sum(seconds.values()), 1)
    summary = footage_report.write(req, config, init, result, manifest, trained, seconds,
                                   pth_path, budget)
    parallel.barrier("refine: reports written")
    return summary


def jax_device_count(config) -> int:
    import jax
    return int(config.train.num_devices or jax.device_count())


def export_pth(model_dir: str, path: str) -> bool:
    """The model folder in the official PyTorch layout (atomically; pth.export_pth); False, with a
    note, where torch is not installed."""
    try:
        import importlib
        importlib.import_module("torch")
    except ImportError:
        note(f"refine: torch is not installed, so no {path} (pip install torch==2.13.0, then "
             f"python -m refine_jax.convert --export --src={model_dir} --out={path})")
        return False
    from refine_jax import pth
    loaded = checkpoints.load_model(model_dir)
    pth.export_pth(loaded.variables, loaded.cfg, path)
    return True
