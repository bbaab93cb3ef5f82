"""Videos and frame folders -> video shards.

  python -m refine_jax.ingest --videos='clips/*.mp4' --out=shards/mine [--clip_len=0] [--stride=1]
      [--size=H,W | --max_side=N] [--max_clips=N] [--format=jpeg|png] [--max_shard_mb=256]

--videos is a glob, a video file, or a folder holding video files and/or sub-folders of frames (a
folder whose images are the frames of one video); local paths or URLs (gs://...), and so is --out. Every video becomes records of `clip_len`
consecutive kept frames (every `stride`-th source frame; clip_len 0 = the whole video in one
record). Frames are resized to --size (bilinear) when given, or with --max_side to the source's
own size capped at that side and rounded to multiples of 8; --max_clips keeps that many windows per
source, evenly spaced (a long video is sampled, never held in memory whole). A file that cannot be decoded is
skipped with a warning naming it; the count of skipped files is printed at the end. Nothing to
ingest (an empty folder, a glob that matches nothing) and every source skipped are errors, and
then no manifest is written.
"""
from __future__ import annotations

import os
import sys
from typing import Iterator, List, Optional, Tuple

import numpy as np

from refine_jax import cli, fs
from refine_jax.data import frames as frames_lib
from refine_jax.data.shards import Clip, ShardWriter


def find_sources(spec: str) -> List[str]:
    """Video files and frame folders named by a glob, a file or a folder (local or URL)."""
    if fs.isfile(spec):
        return [spec]
    if fs.isdir(spec):
        entries = [os.path.join(spec, n) for n in fs.listdir(spec)]
        vids = [e for e in entries if e.lower().endswith(frames_lib.VIDEO_EXTS) and fs.isfile(e)]
        imgs = [e for e in entries if e.lower().endswith(frames_lib.IMAGE_EXTS)]
        dirs = [e for e in entries if not e.lower().endswith(frames_lib.VIDEO_EXTS + frames_lib.IMAGE_EXTS)
                and fs.isdir(e)]
        if imgs and not vids and not dirs:
            return [spec]  # the folder itself is one video's frames
        if not vids and not dirs:
            raise FileNotFoundError(f"{spec}: holds no video files ({', '.join(frames_lib.VIDEO_EXTS)}), "
                                    f"frame folders or images")
        return vids + dirs
    hits = fs.glob(spec)
    if not hits:
        raise FileNotFoundError(f"{spec}: matches no video file or frame folder")
    return hits


def fitted_size(hw: Tuple[int, int], max_side: int = 0, multiple: int = 8) -> Tuple[int, int]:
    """A frame size for the model from a native (H, W): scaled down (aspect kept) so that its longer
    side is at most `max_side` (0: no cap), then each side rounded to a multiple of `multiple`
    (at least one multiple)."""
    h, w = hw
    scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
    return tuple(max(multiple, int(round(v * scale / multiple)) * multiple) for v in (h, w))


def _resize(im: np.ndarray, size: Optional[Tuple[int, int]]) -> np.ndarray:
    if size is None or im.shape[:2] == tuple(size):
        return im
    from PIL import Image
    return np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.BILINEAR))


def iter_source_frames(src: str) -> Iterator[np.ndarray]:
    if fs.isdir(src):
        size = None
        for f in frames_lib.list_images(src):
            im = frames_lib.read_image(f)
            if size is not None and im.shape != size:
                raise frames_lib.FrameError(f"{f}: frame is {im.shape[0]}x{im.shape[1]}, the folder's "
                                            f"first frame is {size[0]}x{size[1]}")
            size = im.shape
            yield im
    else:
        yield from frames_lib.iter_video(src)


def video_id_of(src: str) -> str:
    return os.path.splitext(os.path.basename(os.path.normpath(src)))[0]


def spread_order(n: int) -> List[int]:
    """0..n-1 ordered so that every prefix is spread over the whole range (bit-reversed counting:
    0, n/2, n/4, 3n/4, ...); a run that stops after the first k windows has seen all of a video."""
    bits = max(1, (n - 1).bit_length())
    keys = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(n)]
    return sorted(range(n), key=lambda i: keys[i])


def _chosen_windows(src: str, clip_len: int, stride: int, max_clips: int) -> Optional[List[int]]:
    """The window indices to keep when a source has more than `max_clips` windows of `clip_len`
    kept frames: evenly spaced over it. None keeps every window."""
    if not (clip_len and max_clips):
        return None
    kept = -(-frames_lib.count_frames(src) // stride)
    windows = kept // clip_len
    if windows <= max_clips:
        return None
    return sorted(set(np.linspace(0, windows - 1, max_clips).round().astype(int).tolist()))


def clips_of(src: str, clip_len: int, stride: int, size=None, max_side: int = 0,
             max_clips: int = 0, min_side: int = 0, min_len: int = 0) -> Iterator[Clip]:
    """Clips of one source, each `clip_len` kept frames (every `stride`-th source frame), at `size`
    or, with `max_side`, at the source's own size fitted by `fitted_size`. A last window (or a
    whole source) shorter than that is kept when it has at least `min_len` frames (0: clip_len).
    With `max_clips`, at most that many windows, evenly spaced over the source and yielded in
    `spread_order`; only the kept windows' frames are held in memory. Frames with a side below
    `min_side` are refused."""
    min_len = min_len or clip_len
    fps = frames_lib.video_fps(src) if not fs.isdir(src) else 0.0
    vid = video_id_of(src)
    chosen = _chosen_windows(src, clip_len, stride, max_clips)
    wanted = set(chosen) if chosen is not None else None
    out, buf, start, kept = [], [], 0, 0
    for i, im in enumerate(iter_source_frames(src)):
        if i % stride:
            continue
        window = kept // clip_len if clip_len else 0
        kept += 1
        if wanted is not None and window not in wanted:
            if window > max(wanted):
                break
            continue
        if size is None and max_side:
            size = fitted_size(im.shape[:2], max_side)
        if min_side and min(size or im.shape[:2]) < min_side:
            h, w = size or im.shape[:2]
            scaled = size is not None and tuple(size) != im.shape[:2]
            raise frames_lib.FrameError(
                f"{src}: frames are {h}x{w} px{f' (scaled from {im.shape[0]}x{im.shape[1]})' if scaled else ''}"
                f"; the model needs both sides >= {min_side} px")
        if not buf:
            start = i
        buf.append(_resize(im, size))
        if clip_len and len(buf) == clip_len:
            out.append(Clip(vid, np.stack(buf), clip_start=start, frame_stride=stride, fps=fps / stride))
            buf = []
    if buf and (not clip_len or len(buf) >= min_len):
        out.append(Clip(vid, np.stack(buf), clip_start=start, frame_stride=stride, fps=fps / stride))
    elif buf and out:
        print(f"note: {src}: the last {len(buf)} kept frames do not fill a {min_len}-frame clip "
              f"and are not written", file=sys.stderr)
    elif buf:
        raise frames_lib.FrameError(f"{src}: has {len(buf)} usable frame{'s' * (len(buf) != 1)}; "
                                    f"a clip needs {min_len}")
    yield from (out[j] for j in spread_order(len(out))) if chosen is not None else out


def ingest(spec: str, out: str, clip_len: int = 0, stride: int = 1, size=None, fmt: str = "jpeg",
           max_shard_bytes: int = 256 << 20, progress: bool = True, max_side: int = 0,
           max_clips: int = 0, min_side: int = 0, min_len: int = 0) -> dict:
    """Write every decodable source as clips; returns the manifest (with `skipped` files).
    `max_side`, `max_clips`, `min_side` and `min_len` as in `clips_of` (per source)."""
    from tqdm import tqdm
    sources = find_sources(spec)
    skipped = []
    extra = {"source": spec, "clip_len": clip_len, "stride": stride,
             "size": list(size) if size else None, "max_side": max_side, "max_clips": max_clips,
             "min_len": min_len or clip_len,
             "format": fmt}
    with ShardWriter(out, "video", max_shard_bytes, extra=extra) as writer:
        for src in tqdm(sources, desc="ingest", unit="video", disable=not progress):
            try:
                clips = list(clips_of(src, clip_len, stride, size, max_side, max_clips, min_side, min_len))  # decoded before writing
            except frames_lib.FrameError as e:
                print(f"warning: skipping {src}: {e}", file=sys.stderr)
                skipped.append(src)
                continue
            if not clips:
                print(f"warning: skipping {src}: no complete clip", file=sys.stderr)
                skipped.append(src)
                continue
            for clip in clips:
                writer.write_clip(clip, fmt, source_frames=len(clip.frames) * stride)
        if len(skipped) == len(sources):  # leaves only temporary files, no manifest
            raise ValueError(f"{spec}: none of its {len(sources)} sources could be ingested "
                             f"(first: {skipped[0]}; see the warnings above)")
        writer.extra["skipped"] = skipped
    print(f"ingested {len(sources) - len(skipped)} of {len(sources)} sources "
          f"({writer.manifest['records']} clips, {writer.manifest['frames']} frames); "
          f"skipped {len(skipped)}", file=sys.stderr)
    return writer.manifest


@cli.guarded
def main(argv) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m refine_jax.ingest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clip_len", type=int, default=0)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--size", default="", help="H,W (default: each source's own size)")
    p.add_argument("--max_side", type=int, default=0,
                   help="without --size: scale each source so that its longer side is at most this, "
                        "and round its sides to multiples of 8")
    p.add_argument("--max_clips", type=int, default=0,
                   help="at most this many clips per source, evenly spaced over it (0: all)")
    p.add_argument("--format", default="jpeg", choices=("jpeg", "png"))
    p.add_argument("--max_shard_mb", type=int, default=256)
    a = p.parse_args(argv)
    size = tuple(int(v) for v in a.size.split(",")) if a.size else None
    ingest(a.videos, a.out, a.clip_len, a.stride, size, a.format, a.max_shard_mb << 20,
           max_side=a.max_side, max_clips=a.max_clips)
    return 0


if __name__ == "__main__":
    sys.exit(main())
