"""Pictures: the optical-flow colour wheel (Baker et al., Middlebury) and track overlays."""
from __future__ import annotations

import numpy as np


def _colour_wheel() -> np.ndarray:
    """(55, 3) float RGB in [0, 255]: red-yellow-green-cyan-blue-magenta with the Middlebury
    segment lengths (15, 6, 4, 11, 13, 6)."""
    segments = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)),
                (4, (0, 255, 0), (0, 255, 255)), (11, (0, 255, 255), (0, 0, 255)),
                (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]
    rows = []
    for n, a, b in segments:
        t = np.arange(n)[:, None] / n
        rows.append((1 - t) * np.array(a, float) + t * np.array(b, float))
    return np.concatenate(rows)


def flow_to_color(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """(H, W, 2) flow in pixels -> uint8 (H, W, 3) RGB. Hue is direction, saturation magnitude,
    normalised by `max_flow` (default: the largest magnitude in the image)."""
    flow = np.nan_to_num(np.asarray(flow, np.float64))
    u, v = flow[..., 0], flow[..., 1]
    mag = np.sqrt(u * u + v * v)
    scale = max_flow if max_flow else max(mag.max(), 1e-8)
    u, v, mag = u / scale, v / scale, np.minimum(mag / scale, 1.0)
    wheel = _colour_wheel()
    n = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi                       # [-1, 1]
    pos = (angle + 1) / 2 * (n - 1)
    k0 = np.floor(pos).astype(int)
    k1 = (k0 + 1) % n
    f = (pos - k0)[..., None]
    col = ((1 - f) * wheel[k0] + f * wheel[k1]) / 255.0
    col = 1 - mag[..., None] * (1 - col)                     # white at zero motion
    return np.clip(np.round(col * 255), 0, 255).astype(np.uint8)


def save_png(path: str, image: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) image as PNG atomically."""
    import io
    from PIL import Image
    from refine_jax import fs
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="png")
    fs.write_bytes_atomic(path, buf.getvalue())


def draw_tracks(frame: np.ndarray, tracks_xy: np.ndarray, visible: np.ndarray,
                tails: np.ndarray | None = None, radius: int = 2) -> np.ndarray:
    """Draw points (N, 2) (x, y) on a uint8 (H, W, 3) frame: filled where visible, hollow where not.
    `tails` (N, K, 2) are earlier positions drawn as a fading line."""
    from PIL import Image, ImageDraw
    im = Image.fromarray(np.asarray(frame, np.uint8))
    draw = ImageDraw.Draw(im)
    n = len(tracks_xy)
    for i in range(n):
        hue = i / max(n, 1)
        color = tuple(int(c) for c in _colour_wheel()[int(hue * 54)])
        if tails is not None:
            pts = [tuple(map(float, p)) for p in tails[i] if np.all(np.isfinite(p))]
            if len(pts) > 1:
                draw.line(pts, fill=color, width=1)
        x, y = (float(c) for c in tracks_xy[i])
        box = (x - radius, y - radius, x + radius, y + radius)
        draw.ellipse(box, fill=color if visible[i] else None, outline=color)
    return np.asarray(im)
