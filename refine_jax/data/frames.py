"""Reading user frames: a video file (PyAV) or a folder of images (Pillow), as uint8 (T, H, W, 3) RGB.
Paths may be local or URLs (gs://...; read through refine_jax.fs).

Every failure is one sentence naming the file and what was expected.
"""
from __future__ import annotations

import os
from typing import Iterator, List

import numpy as np

from refine_jax import fs

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class FrameError(ValueError):
    """A frame source that cannot be read as asked."""


def list_images(folder: str) -> List[str]:
    """Sorted image files of a folder."""
    names = sorted(n for n in fs.listdir(folder) if n.lower().endswith(IMAGE_EXTS))
    if not names:
        raise FrameError(f"{folder}: no image files ({', '.join(IMAGE_EXTS)}) in this folder")
    return [os.path.join(folder, n) for n in names]


def _to_rgb8(im) -> np.ndarray:
    """A Pillow image of any mode -> uint8 (H, W, 3): grey is repeated, alpha dropped, and 16-bit
    and 32-bit integer grey scaled by its bit depth (Pillow's own convert clips them at 255)."""
    if im.mode.startswith("I"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        grey = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "F":
        grey = np.clip(np.round(np.asarray(im) * (255.0 if np.asarray(im).max(initial=0) <= 1 else 1)), 0, 255)
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_image(path: str) -> np.ndarray:
    """One image file -> uint8 (H, W, 3) RGB (grey, RGBA, palette and 16-bit images included)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with fs.open_file(path, "rb") as f, Image.open(f) as im:
            return _to_rgb8(im)
    except FileNotFoundError:
        raise FrameError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise FrameError(f"{path}: cannot be decoded as an image ({e})") from None


def _open_video(path: str):
    """A PyAV container of a local file, or of a URL through a seekable file object."""
    import av
    return av.open(fs.open_file(path, "rb") if fs.is_remote(path) else path)


def iter_video(path: str) -> Iterator[np.ndarray]:
    """Decode a video with PyAV, yielding uint8 (H, W, 3) RGB frames."""
    import av
    try:
        container = _open_video(path)
    except (av.error.FFmpegError, OSError) as e:
        raise FrameError(f"{path}: cannot be opened as a video ({e})") from None
    with container:
        if not container.streams.video:
            raise FrameError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, OSError) as e:
            raise FrameError(f"{path}: video stream cannot be decoded ({e})") from None


def count_frames(path: str) -> int:
    """The number of frames of a video file (container metadata, else its packets counted without
    decoding) or of a frame folder."""
    if fs.isdir(path):
        return len(list_images(path))
    import av
    try:
        with _open_video(path) as c:
            if not c.streams.video:
                raise FrameError(f"{path}: has no video stream")
            stream = c.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for packet in c.demux(stream) if packet.size)
    except (av.error.FFmpegError, OSError) as e:
        raise FrameError(f"{path}: cannot be opened as a video ({e})") from None


def video_fps(path: str) -> float:
    """Average frame rate of a video file (0.0 if unknown)."""
    import av
    try:
        with _open_video(path) as c:
            if not c.streams.video:
                raise FrameError(f"{path}: has no video stream")
            rate = c.streams.video[0].average_rate
            return float(rate) if rate else 0.0
    except (av.error.FFmpegError, OSError) as e:
        raise FrameError(f"{path}: cannot be opened as a video ({e})") from None


def read_frames(path: str, max_frames: int | None = None) -> np.ndarray:
    """A video file or a folder of images -> uint8 (T, H, W, 3); all frames must share one size."""
    if not fs.exists(path):
        raise FrameError(f"{path}: no such video file or frame folder")
    if fs.isdir(path):
        files = list_images(path)[:max_frames]
        frames, size = [], None
        for f in files:
            im = read_image(f)
            if size is None:
                size = im.shape
            elif im.shape != size:
                raise FrameError(f"{f}: frame is {im.shape[0]}x{im.shape[1]}, but the folder's first "
                                 f"frame is {size[0]}x{size[1]}; all frames must share one size")
            frames.append(im)
        return np.stack(frames)
    frames = []
    for im in iter_video(path):
        frames.append(im)
        if max_frames is not None and len(frames) >= max_frames:
            break
    if not frames:
        raise FrameError(f"{path}: the video has no decodable frames")
    return np.stack(frames)


def write_video(path: str, frames, fps: float = 10.0) -> None:
    """Encode uint8 (T, H, W, 3) RGB frames as H.264 mp4 with PyAV, atomically (temp name, rename;
    a URL gets the finished file). Odd sizes are padded by one pixel (yuv420p needs even sides)."""
    import av
    import tempfile
    frames = np.asarray(frames, np.uint8)
    h, w = frames.shape[1:3]
    ph, pw = h % 2, w % 2
    local_dir = tempfile.mkdtemp() if fs.is_remote(path) else os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(local_dir, f".{os.path.basename(path)}.tmp-{os.getpid()}.mp4")
    with av.open(tmp, "w") as c:
        stream = c.add_stream("libx264", rate=max(1, int(round(fps))))
        stream.height, stream.width = h + ph, w + pw
        stream.pix_fmt = "yuv420p"
        for im in frames:
            if ph or pw:
                im = np.pad(im, ((0, ph), (0, pw), (0, 0)), mode="edge")
            for pkt in stream.encode(av.VideoFrame.from_ndarray(im, format="rgb24")):
                c.mux(pkt)
        for pkt in stream.encode():
            c.mux(pkt)
    if fs.is_remote(path):
        with open(tmp, "rb") as f:
            fs.write_bytes_atomic(path, f.read())
        os.remove(tmp)
        os.rmdir(local_dir)
    else:
        os.replace(tmp, path)
