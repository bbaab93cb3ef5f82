"""Run a model on your own files.

  python -m refine_jax.infer flow --weights=DIR_OR_PTH --frames=DIR_OR_VIDEO --out=DIR \
      [--iters=32] [--pairs=consecutive|first] [--pad_mode=sintel|kitti] [--warm_start]

`flow` writes `flow_NNNNN.flo` (Middlebury, pixels) and `flow_NNNNN.png` (colour wheel) for each
pair: (t, t+1) with --pairs=consecutive, (0, t) with --pairs=first. --weights is a checkpoint
folder (refine_jax.convert, a training run's export) or an original .pth.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from tqdm import tqdm

from refine_jax import checkpoints, viz
from refine_jax.data import flo, frames as frames_lib


def frame_pairs(n: int, pairs: str):
    """Index pairs of a T-frame sequence."""
    if n < 2:
        raise ValueError(f"need at least 2 frames to estimate flow, got {n}")
    if pairs == "consecutive":
        return [(t, t + 1) for t in range(n - 1)]
    if pairs == "first":
        return [(0, t) for t in range(1, n)]
    raise ValueError(f"--pairs must be 'consecutive' or 'first', got {pairs!r}")


def forward_interpolate(flow_low: np.ndarray) -> np.ndarray:
    """Warm start for the next pair (RAFT's Sintel submission): splat the (h, w, 2) low-res flow
    forward to the nearest grid point, then fill holes from the nearest splatted point."""
    from scipy import interpolate  # noqa: PLC0415  (scipy comes with the tensorflow/jax stack)
    h, w, _ = flow_low.shape
    gy, gx = np.mgrid[0:h, 0:w]
    x1, y1 = (gx + flow_low[..., 0]).ravel(), (gy + flow_low[..., 1]).ravel()
    keep = (x1 > 0) & (x1 < w) & (y1 > 0) & (y1 < h)
    if not keep.any():
        return np.zeros_like(flow_low)
    pts = np.stack([x1[keep], y1[keep]], -1)
    out = [interpolate.griddata(pts, flow_low[..., c].ravel()[keep], (gx, gy), method="nearest",
                                fill_value=0) for c in range(2)]
    return np.stack(out, -1).astype(np.float32)


def run_flow(args) -> int:
    from refine_jax.models.raft import RAFTConfig, make_flow_fn

    loaded = checkpoints.load_model(args.weights)
    if not isinstance(loaded.cfg, RAFTConfig):
        raise SystemExit(f"{args.weights}: is a {loaded.arch} checkpoint; `infer flow` needs RAFT")
    video = frames_lib.read_frames(args.frames)
    pairs = frame_pairs(len(video), args.pairs)
    flow_fn = make_flow_fn(loaded.cfg, args.iters, args.pad_mode)
    os.makedirs(args.out, exist_ok=True)
    flow_init = None
    for i, (a, b) in enumerate(tqdm(pairs, desc="flow", unit="pair")):
        flow_up, flow_low = flow_fn(loaded.variables, video[a][None], video[b][None], flow_init)
        flow_up = np.asarray(flow_up[0])
        if args.warm_start and args.pairs == "consecutive":
            flow_init = forward_interpolate(np.asarray(flow_low[0]))[None]
        stem = os.path.join(args.out, f"flow_{i:05d}")
        flo.write_flo(stem + ".flo", flow_up)
        viz.save_png(stem + ".png", viz.flow_to_color(flow_up))
    print(f"wrote {len(pairs)} flows of {video.shape[1]}x{video.shape[2]} to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m refine_jax.infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("flow", help="optical flow with RAFT")
    f.add_argument("--weights", required=True)
    f.add_argument("--frames", required=True, help="folder of images or a video file")
    f.add_argument("--out", required=True)
    f.add_argument("--iters", type=int, default=32)
    f.add_argument("--pairs", default="consecutive", choices=("consecutive", "first"))
    f.add_argument("--pad_mode", default="sintel", choices=("sintel", "kitti"))
    f.add_argument("--warm_start", action="store_true",
                   help="initialise each pair from the previous pair's flow (consecutive pairs)")
    f.set_defaults(run=run_flow)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (frames_lib.FrameError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
