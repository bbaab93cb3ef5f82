"""Pairs with exact flow made from one real frame of the footage (a label-free proxy's test data).

A frame I is blurred (Gaussian, `WarpRange.blur` px) and resampled twice, bilinearly, so that
both images of the pair carry the same interpolation smoothing and the footage's own appearance
(noise, compression, texture, blur):

  image 1 (p) = I(p + d)                         d: a constant sub-pixel offset
  image 2 (q) = I(M(q))                          M: a homography plus a smooth random field
  a cut-out of I (an ellipse around c0) is pasted at c1 in image 1 and at c2 in image 2

Background flow at p is the q with M(q) = p + d (M is inverted by fixed-point iteration, to
1e-4 px); the cut-out moves by c2 - c1. Pixels whose match leaves image 2 or falls under the
cut-out in image 2 are marked unknown. Nothing depends on any model's estimate; the warp is drawn
from the seed alone.

`make_clip` does the same over T frames for a tracker: frame t is I(M_t(q)) with M_t blended
linearly from p + d (t = 0) to the pair's M (t = T - 1), and the cut-out moves from c1 by a share
t / (T - 1) of its motion; a query point's track is the q solving M_t(q) = p + d (or the cut-out's
motion), hidden where the cut-out covers it or it leaves the frame.

Shapes: frames (H, W, 3) uint8; flow (H, W, 2) px, (x, y); valid (H, W) bool; tracks (N, T, 2) px;
visible (N, T) bool.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Tuple

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class WarpRange:
    """The range the warps are drawn from (px, degrees)."""
    shift: float = 6.0          # background translation, uniform in a disc of this radius
    rotate: float = 3.0         # background rotation, +- degrees about the centre
    scale: float = 0.03         # background zoom, 1 +- this
    perspective: float = 2e-5   # homography's projective terms, +- this per px
    field: float = 1.5          # amplitude of the smooth random field
    field_cells: int = 4        # the field varies over this many cells across the frame
    layer_motion: Tuple[float, float] = (2.0, 14.0)  # the cut-out's displacement, px
    layer_size: float = 0.3     # cut-out radii, as a share of the shorter side
    blur: float = 1.0           # Gaussian sigma applied to the frame before resampling


def clip_seed(video_id: str, clip_start: int) -> int:
    """A seed fixed by a clip's identity, so every model is scored on the same pairs."""
    return zlib.crc32(f"{video_id}:{clip_start}".encode())


def pixel_grid(h: int, w: int) -> np.ndarray:
    """(H, W, 2) the (x, y) coordinates of every pixel centre, float64."""
    return np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), -1)


def inside_frame(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    """(...) whether the points xy (..., 2) lie within an H x W frame's pixel centres."""
    return (xy[..., 0] >= 0) & (xy[..., 0] <= w - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= h - 1)


def sample(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """image (H, W, C) float at points xy (..., 2) (x, y), bilinear, edge values outside."""
    coords = [xy[..., 1], xy[..., 0]]
    return np.stack([ndimage.map_coordinates(image[..., c], coords, order=1, mode="nearest")
                     for c in range(image.shape[-1])], -1)


def _homography(rng, h: int, w: int, r: WarpRange) -> np.ndarray:
    """A 3x3 homography near the identity about the frame's centre."""
    ang = np.deg2rad(rng.uniform(-r.rotate, r.rotate))
    s = 1.0 + rng.uniform(-r.scale, r.scale)
    rad, phi = r.shift * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    a = np.array([[s * np.cos(ang), -s * np.sin(ang), rad * np.cos(phi)],
                  [s * np.sin(ang), s * np.cos(ang), rad * np.sin(phi)],
                  [rng.uniform(-r.perspective, r.perspective), rng.uniform(-r.perspective, r.perspective), 1]])
    return np.linalg.inv(centre) @ a @ centre


def _apply_h(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    p = xy @ m[:2, :2].T + m[:2, 2]
    z = xy @ m[2, :2] + m[2, 2]
    return p / z[..., None]


def _smooth_field(rng, h: int, w: int, r: WarpRange) -> np.ndarray:
    """(H, W, 2) a random displacement field of amplitude ~r.field, smooth over frame/cells."""
    coarse = rng.normal(size=(r.field_cells + 1, r.field_cells + 1, 2))
    ys = np.linspace(0, r.field_cells, h)
    xs = np.linspace(0, r.field_cells, w)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    f = np.stack([ndimage.map_coordinates(coarse[..., c], [gy, gx], order=3, mode="nearest")
                  for c in range(2)], -1)
    return r.field * f / max(np.abs(f).max(), 1e-6)


def _draw(frame: np.ndarray, seed: int, r: WarpRange):
    """The seed's warp of one frame: (blurred source (H, W, 3) float, d (2,), homography, field
    (H, W, 2), cut-out or None: (c0, c1, motion, radii)). Draw order fixed: pairs and clips of a
    seed share their warp."""
    h, w = frame.shape[:2]
    rng = np.random.default_rng(seed)
    src = ndimage.gaussian_filter(frame.astype(np.float64), (r.blur, r.blur, 0)) if r.blur else frame.astype(np.float64)
    d = rng.uniform(-0.5, 0.5, 2)
    hom = _homography(rng, h, w, r)
    field = _smooth_field(rng, h, w, r)
    side = min(h, w)
    radii = r.layer_size * side * rng.uniform(0.6, 1.0, 2) / 2
    margin = radii.max() + r.layer_motion[1]
    cut = None
    if min(h, w) > 2 * margin + 2:
        pick = lambda: np.array([rng.uniform(margin, w - 1 - margin), rng.uniform(margin, h - 1 - margin)])
        c0, c1 = pick(), pick()
        ang = rng.uniform(0, 2 * np.pi)
        motion = rng.uniform(*r.layer_motion) * np.array([np.cos(ang), np.sin(ang)])
        cut = (c0, c1, motion, radii)
    return src, d, hom, field, cut


def _in_ellipse(p: np.ndarray, c: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return (((p - c) / radii) ** 2).sum(-1) <= 1.0


def make_pair(frame: np.ndarray, seed: int, r: WarpRange = WarpRange()):
    """(image1, image2 (H, W, 3) uint8, flow (H, W, 2) px, valid (H, W) bool) from one frame."""
    h, w = frame.shape[:2]
    src, d, hom, field, cut = _draw(frame, seed, r)
    grid = pixel_grid(h, w)
    field_at = lambda q: sample(field, q)
    m_of = lambda q: _apply_h(hom, q) + field_at(q)
    im1, im2 = sample(src, grid + d), sample(src, m_of(grid))
    # background flow: solve M(q) = p + d for q (M near the identity: the iteration contracts)
    target, inv = grid + d, np.linalg.inv(hom)
    q = _apply_h(inv, target)
    for _ in range(30):
        q = _apply_h(inv, target - field_at(q))
    flow = q - grid
    # the cut-out: an ellipse of the frame around c0, at c1 in image 1 and c2 = c1 + motion in image 2
    if cut is not None:
        c0, c1, motion, radii = cut
        c2 = c1 + motion
        in1, in2 = _in_ellipse(grid, c1, radii), _in_ellipse(grid, c2, radii)
        im1[in1] = sample(src, grid[in1] - c1 + c0 + d)
        im2[in2] = sample(src, grid[in2] - c2 + c0 + d)
        covered = _in_ellipse(grid + flow, c2, radii) & ~in1   # background hidden by the cut-out in image 2
        flow[in1] = motion
    else:
        covered = np.zeros((h, w), bool)
    valid = inside_frame(grid + flow, h, w) & ~covered
    return _to_u8(im1), _to_u8(im2), flow.astype(np.float32), valid


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def make_clip(frame: np.ndarray, seed: int, num_frames: int, points: np.ndarray, r: WarpRange = WarpRange()):
    """(frames (T, H, W, 3) uint8, tracks (N, T, 2) px, visible (N, T) bool) of `points` (N, 2)
    (x, y) in frame 0, from one frame: the pair's warp reached in T - 1 equal steps."""
    h, w = frame.shape[:2]
    src, d, hom, field, cut = _draw(frame, seed, r)
    grid = pixel_grid(h, w)
    pts = np.asarray(points, np.float64)
    field_at = lambda q: sample(field, q)
    frames, tracks, hidden = [], [], []
    in_layer = _in_ellipse(pts, cut[1], cut[3]) if cut is not None else np.zeros(len(pts), bool)
    for t in range(num_frames):
        f = t / max(num_frames - 1, 1)
        m_of = lambda q: q + d + f * (_apply_h(hom, q) + field_at(q) - q - d)
        im = sample(src, m_of(grid))
        q = pts.copy()
        for _ in range(50):  # M_t(q) = p + d; M_t is within a few % of a translation, so this contracts
            q = q - (m_of(q) - (pts + d))
        covered = np.zeros(len(pts), bool)
        if cut is not None:
            c0, c1, motion, radii = cut
            ct = c1 + f * motion
            inside = _in_ellipse(grid, ct, radii)
            im[inside] = sample(src, grid[inside] - ct + c0 + d)
            q[in_layer] = pts[in_layer] + f * motion
            covered = _in_ellipse(q, ct, radii) & ~in_layer
        frames.append(_to_u8(im))
        tracks.append(q)
        hidden.append(covered | ~inside_frame(q, h, w))
    tracks = np.stack(tracks, 1).astype(np.float32)
    return np.stack(frames), tracks, ~np.stack(hidden, 1)
