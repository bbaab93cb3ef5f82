"""The settings of every stage: one frozen dataclass per config section, the single source of
their defaults. The config files build their sections from these (`section`), naming only what they
change, and the stages read them back (`from_section`), rejecting unknown keys.

  label    LabelConfig    the cycle check and what gets queried (labels/)
  augment  AugmentConfig  photometric and spatial augmentation (train/augment.py)
  train    TrainConfig    the optimiser, schedule, loss and checkpoints (train/, stages/train.py)
  eval     EvalConfig     what the evaluation measures (stages/evaluate.py)
"""
from __future__ import annotations

import dataclasses
import json
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Labelling settings (config.label). Flow: alpha, beta, color_thresh, max_flow, color_noise,
    color_gain (labels/cycle.py). Tracks: tau,
    grid (points per side), densify_window (0 = off), use_gt_points, window_hop, stride, speed_bins
    (px/frame), cap_per_bin (0 = no cap), min_speed, max_queries (padded query count per window),
    query_chunk (queries tracked at once; 0 = as many as `auto_query_chunk` allows)."""
    out: str = "labels"
    batch: int = 8
    iters: int = 0             # 0: the model's reference count (RAFT 32, PIPs 6)
    alpha: float = 0.002
    beta: float = 0.1
    color_thresh: float = 0.005
    max_flow: float = 400.0
    color_noise: bool = False
    color_gain: bool = False
    tau: float = 3.0
    grid: int = 16
    densify_window: int = 0
    use_gt_points: bool = True
    window_hop: int = 8
    stride: int = 4
    speed_bins: Tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    cap_per_bin: int = 0
    min_speed: float = 0.0
    max_queries: int = 512
    query_chunk: int = 0
    num_devices: int = 0       # 0: all devices (of this process)
    seed: int = 0
    rounds: int = 1            # label-and-train rounds; the loop is in pipeline.py
    # wall seconds for the stage (0: none): past them no further clip is labelled; the shards so
    # far keep what they hold and the rest are written empty (a time budget, so not reproducible)
    max_seconds: float = 0.0
    pad_mode: str = "sintel"   # RAFT's InputPadder: 'sintel' splits the padding, 'kitti' pads below only

    @classmethod
    def from_config(cls, c) -> "LabelConfig":
        return from_section(cls, c, "label")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.5 / 3.14
    asym_prob: float = 0.2
    crop: Tuple[int, int] = ()     # (h, w); () = no crop
    hflip: float = 0.5
    vflip: float = 0.1
    eraser: float = 0.0            # probability of erasing boxes in the later frames

    @classmethod
    def from_config(cls, c) -> "AugmentConfig":
        return from_section(cls, c, "augment")


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
    # 'batch_mean': the reference refinement's loss (every pixel weighted by the batch's mean
    # validity, so pixels without a label are pulled towards the frozen estimate); 'per_sample'
    # weights each pixel by its own label mask (docs/method.md)
    mask_mode: str = "batch_mean"
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
    # wall seconds for the stage (0: none). After the first steps have measured the step time, the
    # steps (and schedule_steps in proportion) are refitted to the seconds left; at the limit the
    # run saves and exports the model it has
    max_seconds: float = 0.0

    @classmethod
    def from_config(cls, c) -> "TrainConfig":
        return from_section(cls, c, "train")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    data: str = ""                 # shard folder(s) with GT; default config.data.videos
    iters: int = 0                 # RAFT 32 / PIPs 6 when 0
    stride: int = 4                # PIPs
    query_mode: str = "first"
    tapvid_256: bool = False
    max_clips: int = 0             # 0 = all
    # with eval.data empty: one clip in `holdout` of each data.videos source (the middle one of
    # each run of that many) is kept out of labelling and training, and the eval stage (its verdict
    # included) measures only those; 0 (or a source too short to hold one out): the clips trained on
    holdout: int = 0
    curve: bool = False            # also measure every kept training checkpoint (the metric curve)
    label_free: bool = True        # the cycle-check and photometric diagnostics
    # RAFT's InputPadder mode: 'auto' pads as the official evaluation of the data does ('kitti', all
    # rows below, for KITTI shard folders; 'sintel', split evenly, for everything else)
    pad_mode: str = "auto"
    # the label-free proxies (RAFT: evaluation/proxies.py, PIPs: track_proxies.py) on every clip, and source drift on this
    # many procedural source clips; their verdict (evaluation/verdict.py) decides what the guard exports
    proxies: bool = True
    source_clips: int = 4
    # export the refined model only when the verdict is 'better', else the initial one (False: the
    # last training step regardless)
    guard: bool = True
    # with the guard: judge every kept training checkpoint as the last step is judged and export the
    # 'better' one whose weakest deciding proxy clears the rule by the most (the label-free version
    # of the reference's per-100-step validation; costs one proxy measurement per checkpoint)
    select_checkpoint: bool = False

    def held_out_every(self) -> int:
        """eval.holdout where it applies: 0 when eval.data names the evaluated clips."""
        return 0 if self.data else self.holdout

    @classmethod
    def from_config(cls, c) -> "EvalConfig":
        return from_section(cls, c, "eval")



def from_section(cls, section, name: str):
    """An instance of the frozen dataclass `cls` from `section`; unknown keys are an error naming
    them; list values become tuples (ml_collections keeps tuples as given)."""
    d = dict(section) if section is not None else {}
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {name} settings: {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def as_dict(config) -> dict:
    """A whole config as plain JSON values (what provenance records): a ConfigDict through its
    JSON form, a dict as it is."""
    return json.loads(config.to_json()) if hasattr(config, "to_json") else dict(config)


def dataclass_defaults(**sections) -> dict:
    """{name: the default values of the frozen dataclass, as JSON} for `differences`."""
    return {name: json.loads(json.dumps(dataclasses.asdict(cls()))) for name, cls in sections.items()}


def differences(old, new, skip=frozenset(), prefix: str = "", defaults=None) -> list:
    """'a.b: OLD then, NEW now' for every key path (sorted) where two JSON trees differ; key paths
    in `skip` are left out. A setting added since an old tree was saved must not read as a change:
    a key missing from a tree reads as its value in `defaults` (a tree of the same shape, see
    `dataclass_defaults()`), else as None, and None as an empty list or string."""
    if isinstance(old, dict) and isinstance(new, dict):
        d = defaults if isinstance(defaults, dict) else {}
        return [x for k in sorted(set(old) | set(new)) if f"{prefix}{k}" not in skip
                for x in differences(old.get(k, d.get(k)), new.get(k, d.get(k)), skip, f"{prefix}{k}.", d.get(k))]
    empty = lambda v: v is None or (isinstance(v, (list, tuple, str)) and not v)
    same = old == new or (empty(old) and empty(new))
    return [] if same else [f"{prefix.rstrip('.')}: {old!r} then, {new!r} now"]


SECTIONS = {"label": LabelConfig, "augment": AugmentConfig, "train": TrainConfig, "eval": EvalConfig}


def section(cls, **changes):
    """A config section (ml_collections ConfigDict) holding every field of the dataclass `cls`: its
    default, or the value in `changes` (an unknown name is an error). Tuples stay tuples."""
    import ml_collections
    unknown = set(changes) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    return ml_collections.ConfigDict({**dataclasses.asdict(cls()), **changes})
