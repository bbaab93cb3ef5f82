"""Run a model on your own files.

  python -m refine_jax.infer flow --weights=DIR_OR_PTH --frames=DIR_OR_VIDEO --out=DIR \
      [--iters=32] [--pairs=consecutive|first] [--pad_mode=sintel|kitti] [--warm_start] [--confidence]

  python -m refine_jax.infer tracks --weights=DIR_OR_PTH --video=FILE_OR_DIR --out=DIR \
      (--grid=N | --queries=FILE.npy) [--stride=4] [--iters=6]

`flow` writes `flow_NNNNN.flo` (Middlebury, pixels) and `flow_NNNNN.png` (colour wheel) for each
pair: (t, t+1) with --pairs=consecutive, (0, t) with --pairs=first. With --confidence it also writes
`flow_NNNNN_cycle.npy` (normalised forward-backward error, <= 1 passes) and `flow_NNNNN_valid.png`
(the pseudo-label mask of the label stage). --weights is a checkpoint
folder (refine_jax.convert, a training run's export) or an original .pth.

`tracks` runs PIPs chained over the whole video (8-frame windows re-anchored at confidently visible
frames) and writes `tracks.npz` (`tracks` (N,T,2) pixels (x,y), `visible` (N,T) bool, `queries`
(N,3) rows (t,x,y)), `tracks.json` (run metadata) and `tracks.mp4` (the tracks drawn on the video).
--grid=N queries an NxN grid on frame 0 (8 px from the border, as the PIPs demo); --queries takes an
.npy of rows (t, x, y). Videos shorter than 8 frames are padded by repeating the last frame.

Inputs and --out may be local paths or URLs (gs://...). Errors print one line and exit 2
(--debug shows the traceback).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from tqdm import tqdm

from refine_jax import checkpoints, cli, fs, tasks, viz
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


def write_confidence(stem: str, variables, flow_fn, image1, image2, flow_up) -> None:
    """Backward flow and the cycle check of labels/cycle.py: `STEM_cycle.npy` (H, W) float32, the
    normalised cycle error (<= 1 passes; lower is more confident) and `STEM_valid.png`, white
    where the flow passes the forward-backward and colour checks."""
    import jax.numpy as jnp
    from refine_jax.labels import cycle
    back, _ = flow_fn(variables, image2[None], image1[None])
    valid, cyc, _ = cycle.flow_cycle_check(flow_up, back, jnp.asarray(image1[None], jnp.float32),
                                           jnp.asarray(image2[None], jnp.float32))
    _save_npy(f"{stem}_cycle.npy", np.asarray(cyc[0], np.float32))
    mask = np.asarray(valid[0], np.uint8) * 255
    viz.save_png(f"{stem}_valid.png", np.repeat(mask[..., None], 3, -1))


def _save_npy(path: str, array: np.ndarray) -> None:
    import io
    buf = io.BytesIO()
    np.save(buf, array)
    fs.write_bytes_atomic(path, buf.getvalue())


def run_flow(args) -> int:
    from refine_jax.models.raft import make_flow_fn

    loaded = checkpoints.load_model(args.weights)
    if tasks.of(loaded.cfg) is not tasks.FLOW:
        raise ValueError(f"{args.weights}: is a {loaded.arch} checkpoint; `infer flow` needs RAFT")
    video = frames_lib.read_frames(args.frames)
    pairs = frame_pairs(len(video), args.pairs)
    flow_fn = make_flow_fn(loaded.cfg, args.iters, args.pad_mode)
    fs.makedirs(args.out)
    flow_init = None
    for i, (a, b) in enumerate(tqdm(pairs, desc="flow", unit="pair")):
        flow_up, flow_low = flow_fn(loaded.variables, video[a][None], video[b][None], flow_init)
        if args.confidence:
            write_confidence(os.path.join(args.out, f"flow_{i:05d}"), loaded.variables, flow_fn,
                             video[a], video[b], flow_up)
        flow_up = np.asarray(flow_up[0])
        if args.warm_start and args.pairs == "consecutive":
            flow_init = forward_interpolate(np.asarray(flow_low[0]))[None]
        stem = os.path.join(args.out, f"flow_{i:05d}")
        flo.write_flo(stem + ".flo", flow_up)
        viz.save_png(stem + ".png", viz.flow_to_color(flow_up))
    print(f"wrote {len(pairs)} flows of {video.shape[1]}x{video.shape[2]} to {args.out}")
    return 0


def grid_queries(n: int, h: int, w: int, margin: float = 8.0) -> np.ndarray:
    """(n*n, 3) queries (0, x, y) on a regular grid of frame 0, `margin` px from the border."""
    if n < 1:
        raise ValueError(f"--grid must be at least 1, got {n}")
    lin = lambda size: (np.full(1, (size - 1) / 2) if n == 1 else
                        margin + np.arange(n) / (n - 1) * (size - 1 - 2 * margin))
    ys, xs = np.meshgrid(lin(h), lin(w), indexing="ij")
    return np.stack([np.zeros(n * n), xs.ravel(), ys.ravel()], -1).astype(np.float32)


def load_queries(path: str) -> np.ndarray:
    import io
    try:
        with fs.open_file(path, "rb") as f:
            q = np.load(io.BytesIO(f.read()), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot be read as an .npy array of (t, x, y) rows ({e})") from None
    if q.ndim != 2 or q.shape[1] != 3:
        raise ValueError(f"{path}: expected an (N, 3) array of rows (t, x, y), got shape {q.shape}")
    return q.astype(np.float32)


def overlay_video(video: np.ndarray, tracks: np.ndarray, visible: np.ndarray, tail: int = 8) -> np.ndarray:
    """Frames with every track drawn (filled where visible) and a short tail of past positions."""
    out = []
    for t in range(len(video)):
        lo = max(0, t - tail)
        out.append(viz.draw_tracks(video[t], tracks[:, t], visible[:, t], tails=tracks[:, lo:t + 1]))
    return np.stack(out)


def run_tracks(args) -> int:
    import dataclasses

    from refine_jax.models.pips_chain import ChainedTracker

    loaded = checkpoints.load_model(args.weights)
    if tasks.of(loaded.cfg) is not tasks.TRACKS:
        raise ValueError(f"{args.weights}: is a {loaded.arch} checkpoint; `infer tracks` needs PIPs")
    cfg = dataclasses.replace(loaded.cfg, stride=args.stride)
    video = frames_lib.read_frames(args.video)
    t_len, h, w = video.shape[:3]
    if (args.grid is None) == (args.queries is None):
        raise ValueError("give exactly one of --grid=N or --queries=FILE.npy")
    queries = grid_queries(args.grid, h, w) if args.grid is not None else load_queries(args.queries)
    tracker = ChainedTracker(cfg, loaded.variables, iters=args.iters, max_points=args.max_points)
    with tqdm(total=t_len, desc="tracks", unit="frame") as bar:
        out = tracker(video, queries, progress=lambda c: bar.update(max(0, c + 1 - bar.n)))
    fs.makedirs(args.out)
    import io
    buf = io.BytesIO()
    np.savez(buf, tracks=out["tracks"], visible=out["visible"], queries=queries)
    fs.write_bytes_atomic(os.path.join(args.out, "tracks.npz"), buf.getvalue())
    fps = frames_lib.video_fps(args.video) if not fs.isdir(args.video) else 10.0
    meta = {"frames": int(t_len), "height": int(h), "width": int(w), "points": int(len(queries)),
            "stride": cfg.stride, "iters": args.iters, "window": cfg.S,
            "short_video_padded": bool(t_len < cfg.S),
            "note": (f"the video has {t_len} < {cfg.S} frames; the window was padded by repeating "
                     f"the last frame, as the official code does") if t_len < cfg.S else "",
            "weights": fs.abspath(args.weights), "provenance": loaded.provenance,
            "frames_encoded": tracker.stats.encoded}
    fs.write_json_atomic(os.path.join(args.out, "tracks.json"), meta)
    frames_lib.write_video(os.path.join(args.out, "tracks.mp4"),
                           overlay_video(video, out["tracks"], out["visible"]), fps or 10.0)
    print(f"wrote {len(queries)} tracks over {t_len} frames to {args.out}")
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
    f.add_argument("--confidence", action="store_true",
                   help="also run the backward flow and write the cycle-consistency error and mask")
    f.set_defaults(run=run_flow)
    t = sub.add_parser("tracks", help="point tracks with chained PIPs")
    t.add_argument("--weights", required=True)
    t.add_argument("--video", required=True, help="video file or folder of images")
    t.add_argument("--out", required=True)
    t.add_argument("--grid", type=int, help="query an NxN grid on frame 0")
    t.add_argument("--queries", help=".npy of (N, 3) rows (t, x, y) in pixels")
    t.add_argument("--stride", type=int, default=4, choices=(4, 8))
    t.add_argument("--iters", type=int, default=6)
    t.add_argument("--max_points", type=int, default=256, help="points per model call")
    t.set_defaults(run=run_tracks)
    return p


@cli.guarded
def main(argv) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
