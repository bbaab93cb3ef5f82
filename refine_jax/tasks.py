"""Flow and tracks as two tasks: the one place that knows what differs between RAFT and PIPs.

A stage asks the task of its model (`of(model_cfg)`, or `of_arch('pips')`) instead of testing the
architecture: how to label (`labeler`), the training objective (`objective`) and the samples it
trains on (`training_clips`), how to measure a model against its trivial baseline (`measure`), the
primary metric and the baseline's name, and the figures of the report. The implementations live
in the libraries (labels/, train/losses.py, evaluation/); this module imports them lazily, so it
is cheap to import anywhere.
"""
from __future__ import annotations


class FlowTask:
    """Optical flow (RAFT): pairs of frames, dense flow, zero flow as the trivial baseline."""
    kind = "flow"
    primary = "epe"
    baseline_name = "zero flow"
    unit = "pixels"

    def labeler(self, cfg, variables, lc, mesh):
        from refine_jax.labels.flow import FlowLabeler
        return FlowLabeler(cfg, variables, lc, mesh)

    def objective(self, model_cfg, tc, freeze_bn: bool):
        from refine_jax.train import losses
        return losses.flow_objective(model_cfg, tc, freeze_bn)

    def training_clips(self, model_cfg, tc) -> dict:
        """The training pipeline's sample settings: consecutive pairs with their flow."""
        return {"clip_len": tc.clip_len or 2, "hop": 1, "with_flow": True, "max_tracks": 0}

    def check_crop(self, crop) -> None:
        if crop and (crop[0] % 8 or crop[1] % 8 or min(crop) < 128):
            raise ValueError(f"augment.crop={tuple(crop)}: RAFT training crops must be multiples of 8 and >= 128")

    def min_side(self, model_cfg) -> int:
        """The smallest frame side (px) that trains: RAFT's 128 px crop minimum."""
        return 128

    def fit_crop(self, crop, frame_hw, model_cfg, source: str):
        """The training crop for frames of (H, W): the configured one, or the frame where that is
        smaller, in multiples of 8; frames below RAFT's 128 px minimum are refused in one line."""
        fit = tuple(min(int(c), int(f)) // 8 * 8 for c, f in zip(crop, frame_hw))
        if min(fit) < self.min_side(model_cfg):
            raise ValueError(f"{source}: the training frames are {frame_hw[0]}x{frame_hw[1]} px; RAFT trains on "
                             f"crops of at least 128x128 (multiples of 8), so frames need both sides >= 128 px")
        return fit

    def measure(self, loaded, clips, ec, config) -> dict:
        from refine_jax.evaluation import flow
        return flow.evaluate(loaded, clips, ec, config)

    def figures(self, out_dir, result, clips, examples) -> None:
        from refine_jax.evaluation import report
        report.flow_figures(out_dir, clips, examples)


class TrackTask:
    """Point tracking (PIPs): windows of frames, tracks from query points, points held still as the
    trivial baseline."""
    kind = "tracks"
    primary = "delta_avg"
    baseline_name = "query point held still"
    unit = "tracks"

    def labeler(self, cfg, variables, lc, mesh):
        from refine_jax.labels.tracks import TrackLabeler
        return TrackLabeler(cfg, variables, lc, mesh)

    def objective(self, model_cfg, tc, freeze_bn: bool):
        from refine_jax.train import losses
        return losses.track_objective(model_cfg, tc, freeze_bn)

    def training_clips(self, model_cfg, tc) -> dict:
        """The training pipeline's sample settings: the model's window length, tracks per sample."""
        return {"clip_len": tc.clip_len or model_cfg.S, "hop": 0, "with_flow": False, "max_tracks": tc.max_tracks}

    def check_crop(self, crop) -> None:
        pass

    def min_side(self, model_cfg) -> int:
        """The smallest frame side (px) that trains: 16 feature cells (64 px at stride 4)."""
        return 16 * model_cfg.stride

    def fit_crop(self, crop, frame_hw, model_cfg, source: str):
        """The configured crop, or the frame where that is smaller; PIPs needs H and W of at least
        16 feature cells (64 px at stride 4)."""
        fit = tuple(min(int(c), int(f)) for c, f in zip(crop, frame_hw))
        least = self.min_side(model_cfg)
        if min(fit) < least:
            raise ValueError(f"{source}: the training frames are {frame_hw[0]}x{frame_hw[1]} px; PIPs at stride "
                             f"{model_cfg.stride} needs both sides >= {least} px")
        return fit

    def measure(self, loaded, clips, ec, config) -> dict:
        from refine_jax.evaluation import tracks
        return tracks.evaluate(loaded, clips, ec, config)

    def figures(self, out_dir, result, clips, examples) -> None:
        from refine_jax.evaluation import report
        report.track_figures(out_dir, examples)


FLOW, TRACKS = FlowTask(), TrackTask()


def of_arch(arch: str):
    """The task of an architecture name ('raft', 'raft_small', 'pips')."""
    return TRACKS if arch == "pips" else FLOW


def of(model_cfg):
    """The task of a model config (RAFTConfig or PipsConfig)."""
    return of_arch(model_cfg.arch)
