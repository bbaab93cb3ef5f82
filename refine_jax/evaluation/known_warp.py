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

Shapes: frames (H, W, 3) uint8; flow (H, W, 2) px, (x, y); valid (H, W) bool.
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


def make_pair(frame: np.ndarray, seed: int, r: WarpRange = WarpRange()):
    """(image1, image2 (H, W, 3) uint8, flow (H, W, 2) px, valid (H, W) bool) from one frame."""
    h, w = frame.shape[:2]
    rng = np.random.default_rng(seed)
    src = ndimage.gaussian_filter(frame.astype(np.float64), (r.blur, r.blur, 0)) if r.blur else frame.astype(np.float64)
    grid = pixel_grid(h, w)
    d = rng.uniform(-0.5, 0.5, 2)
    hom = _homography(rng, h, w, r)
    field = _smooth_field(rng, h, w, r)
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
    side = min(h, w)
    radii = r.layer_size * side * rng.uniform(0.6, 1.0, 2) / 2
    margin = radii.max() + r.layer_motion[1]
    if min(h, w) > 2 * margin + 2:
        pick = lambda: np.array([rng.uniform(margin, w - 1 - margin), rng.uniform(margin, h - 1 - margin)])
        c0, c1 = pick(), pick()
        ang = rng.uniform(0, 2 * np.pi)
        motion = rng.uniform(*r.layer_motion) * np.array([np.cos(ang), np.sin(ang)])
        c2 = c1 + motion
        inside = lambda p, c: (((p - c) / radii) ** 2).sum(-1) <= 1.0
        in1, in2 = inside(grid, c1), inside(grid, c2)
        im1[in1] = sample(src, grid[in1] - c1 + c0 + d)
        im2[in2] = sample(src, grid[in2] - c2 + c0 + d)
        covered = inside(grid + flow, c2) & ~in1   # background hidden by the cut-out in image 2
        flow[in1] = motion
    else:
        in1 = np.zeros((h, w), bool)
        covered = np.zeros((h, w), bool)
    valid = inside_frame(grid + flow, h, w) & ~covered
    to_u8 = lambda x: np.clip(np.round(x), 0, 255).astype(np.uint8)
    return to_u8(im1), to_u8(im2), flow.astype(np.float32), valid
