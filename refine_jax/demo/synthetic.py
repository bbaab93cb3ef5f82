"""Procedural videos with exact ground truth: flow, occlusion, and tracks with visibility.

A video is a stack of depth-ordered layers in the manner of the Freiburg 2D generator (FlyingChairs,
Mayer et al. 2018) and AutoFlow (Sun et al. 2021): a full-frame background and several textured
shapes on top (ellipses, star polygons with thin spikes, polygons with holes, thin bars). Layer k
maps its local coordinates q to the image by a smooth similarity motion
  A_t(q) = c0 + v t + a t^2 / 2 + R(theta0 + omega t) * (s0 exp(g t)) * q,
so every quantity is analytic: the forward flow of the visible surface at pixel p is
A_{t+1}(A_t^{-1}(p)) - p, a point is occluded at time t when a layer above its own contains it or
it leaves the frame, and a track is A_t(A_{t_q}^{-1}(p)). Textures are periodic procedural images
(1/f noise, turbulence, blobs, Voronoi cells, and the families in `shifts.UNSEEN_TEXTURES`) or
images from a folder, sampled bilinearly.

Motion is heavy-tailed and relative to the frame side (so a domain means the same thing at any
size): a moving layer's speed is side * motion * exp(N(-0.5, 1)) px/frame (mean side * motion),
capped at side * max_motion; a share `static_prob` of the layers barely moves; layers also rotate
and zoom, and the background moves as a camera would, slower.

PRESETS: 'source' is the clean pre-training domain; 'target' has the same motion statistics and
geometry and differs only in appearance (demo/shifts.py), the way Sintel final differs from clean
and real footage from a renderer. Any domain can carry any named shifts at any severity.

  python -m refine_jax.demo.synthetic --preset=target --out=DIR --videos=N [--frames=8]
      [--size=256,320] [--tracks=64] [--seed=0] [--shifts=fog:1,noise:2]
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from refine_jax import cli
from refine_jax.demo import shifts as shifts_lib
from refine_jax.data.shards import Clip

TEX = 256  # texture side, pixels


@dataclasses.dataclass(frozen=True)
class DomainConfig:
    """Knobs of a procedural video domain. Speeds are fractions of the frame side per frame."""
    textures: Tuple[str, ...] = ("noise", "turbulence", "blobs", "cells")  # or 'images', UNSEEN_TEXTURES
    texture_dir: str = ""                     # folder of images when 'images' is used
    layers: int = 6                           # at most this many foreground shapes (at least half)
    shapes: Tuple[str, ...] = ("ellipse", "polygon", "holed", "bar")
    motion: float = 0.025                     # mean speed of a moving layer
    max_motion: float = 0.15                  # speed cap
    static_prob: float = 0.15                 # share of layers that (nearly) stand still
    rotation: float = 0.02                    # angular speed sigma, rad/frame
    scaling: float = 0.01                     # log-scale change sigma per frame
    background_motion: float = 0.5            # background speed relative to a foreground layer's
    shape_size: Tuple[float, float] = (0.08, 0.35)  # shape radius, fraction of the frame side
    shifts: Tuple[Tuple[str, float], ...] = ()      # named appearance shifts (demo/shifts.py)


# The target of the embedded demo: the imaging of Sintel 'final' (motion blur over the whole frame
# interval, atmosphere, defocus) and of real cameras (sensor noise, exposure drift) over the
# source's scenes, at severity 2: the stand-in RAFT-small's EPE grows by about 70 % from source to
# this target, as RAFT's does from Sintel clean to final.
TARGET_SHIFTS = (("motion_blur", 2.0), ("fog", 2.0), ("defocus", 2.0), ("noise", 2.0), ("brightness", 2.0))

PRESETS = {
    "source": DomainConfig(),
    "target": DomainConfig(shifts=TARGET_SHIFTS),
}


def domain(preset: str, shifts: Optional[Sequence] = None) -> DomainConfig:
    """A preset, optionally with its shifts replaced (for shift studies)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; expected one of {', '.join(sorted(PRESETS))}")
    cfg = PRESETS[preset]
    if shifts is not None:
        shifts = tuple((str(n), float(s)) for n, s in shifts)
        shifts_lib.check(shifts)
        cfg = dataclasses.replace(cfg, shifts=shifts)
    return cfg


# ------------------------------------------------------------------------------------------------
# Textures: (TEX, TEX, 3) float in [0, 255], periodic so that wrap-around sampling is seamless.

def _periodic_noise(rng, beta: float = 3.5) -> np.ndarray:
    """Three channels of periodic 1/f^(beta/2) noise, zero mean, unit variance: (TEX, TEX, 3)."""
    f = np.fft.fftfreq(TEX)
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    r[0, 0] = 1.0
    spec = np.fft.fft2(rng.normal(size=(3, TEX, TEX))) / r ** (beta / 2)
    spec[:, 0, 0] = 0
    x = np.real(np.fft.ifft2(spec))
    x = (x - x.mean((1, 2), keepdims=True)) / (x.std((1, 2), keepdims=True) + 1e-8)
    return np.moveaxis(x, 0, -1)


def _wrapped_distance(rng, centres: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For every texel, the index of and distance to the nearest of `centres` (K, 2), periodic."""
    from scipy.spatial import cKDTree
    yy, xx = np.mgrid[0:TEX, 0:TEX]
    pts = np.stack([xx.ravel(), yy.ravel()], -1).astype(np.float64)
    d, i = cKDTree(centres % TEX, boxsize=TEX).query(pts)
    return i.reshape(TEX, TEX), d.reshape(TEX, TEX)


def make_texture(kind: str, rng, image_files: Sequence[str] = ()) -> np.ndarray:
    yy, xx = np.mgrid[0:TEX, 0:TEX] / TEX * 2 * np.pi
    col = lambda: rng.uniform(20, 235, 3)
    if kind == "noise":
        x = _periodic_noise(rng, rng.uniform(2.0, 3.5)) @ rng.normal(size=(3, 3)) * 0.5
        return np.clip(127.5 + 55 * x, 0, 255)
    if kind == "turbulence":  # |noise| at several octaves, coloured by a random two-colour map
        n = np.zeros((TEX, TEX))
        for octave in range(4):
            n += np.abs(_periodic_noise(rng, 2.0 + octave * 0.5)[..., 0]) / (1.6 ** octave)
        n = (n - n.min()) / (np.ptp(n) + 1e-8)
        a, b = col(), col()
        return np.clip(a * n[..., None] + b * (1 - n[..., None]) + 12 * _periodic_noise(rng, 3.0), 0, 255)
    if kind == "blobs":
        img = np.zeros((TEX, TEX, 3)) + col()
        for _ in range(24):
            c, s, colour = rng.uniform(0, TEX, 2), rng.uniform(6, 30), col()
            dy = (np.arange(TEX)[:, None] - c[1] + TEX / 2) % TEX - TEX / 2
            dx = (np.arange(TEX)[None, :] - c[0] + TEX / 2) % TEX - TEX / 2
            w = np.exp(-(dx ** 2 + dy ** 2) / (2 * s ** 2))[..., None]
            img = img * (1 - w) + colour * w
        return np.clip(img + 8 * _periodic_noise(rng, 3.0), 0, 255)
    if kind == "cells":  # Voronoi cells of random colours with shaded borders
        k = int(rng.integers(20, 120))
        idx, dist = _wrapped_distance(rng, rng.uniform(0, TEX, (k, 2)))
        colours = rng.uniform(20, 235, (k, 3))
        shade = 1.0 - 0.2 * (dist / (dist.max() + 1e-8))[..., None]
        return np.clip(colours[idx] * shade + 10 * _periodic_noise(rng, 3.0), 0, 255)
    if kind == "stripes":
        kx, ky = rng.integers(-6, 7, 2)
        kx = kx if (kx or ky) else 3
        wave = 0.5 + 0.5 * np.sin(kx * xx + ky * yy + rng.uniform(0, 6.3))
        base = col()[None, None] * wave[..., None] + col()[None, None] * (1 - wave[..., None])
        return np.clip(base + 10 * _periodic_noise(rng, 3.0), 0, 255)
    if kind == "checker":
        n = int(rng.choice([4, 8, 16]))
        cells = ((np.floor(xx / (2 * np.pi) * n) + np.floor(yy / (2 * np.pi) * n)) % 2)[..., None]
        return np.clip(col() * cells + col() * (1 - cells) + 16 * _periodic_noise(rng, 3.0), 0, 255)
    if kind == "dots":  # a regular lattice of discs: repetitive, ambiguous to match
        n = int(rng.choice([8, 16]))
        u = (xx / (2 * np.pi) * n) % 1 - 0.5
        v = (yy / (2 * np.pi) * n) % 1 - 0.5
        disc = (np.hypot(u, v) < rng.uniform(0.2, 0.4))[..., None]
        return np.clip(col() * disc + col() * (1 - disc) + 8 * _periodic_noise(rng, 3.0), 0, 255)
    if kind == "images":
        if not image_files:
            raise ValueError("texture family 'images' needs DomainConfig.texture_dir with images")
        from refine_jax.data.frames import read_image
        from PIL import Image
        im = read_image(image_files[int(rng.integers(len(image_files)))])
        im = np.asarray(Image.fromarray(im).resize((TEX // 2, TEX // 2)), np.float64)
        return np.concatenate([np.concatenate([im, im[:, ::-1]], 1),
                               np.concatenate([im[::-1], im[::-1, ::-1]], 1)], 0)  # mirror-periodic
    raise ValueError(f"unknown texture family {kind!r}; expected noise, turbulence, blobs, cells, "
                     f"stripes, checker, dots or images")


def sample_texture(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear, wrap-around sample of a (TEX, TEX, 3) texture at float coordinates u (x), v (y)."""
    x0, y0 = np.floor(u), np.floor(v)
    fx, fy = (u - x0)[..., None], (v - y0)[..., None]
    x0, y0 = x0.astype(np.int64) % TEX, y0.astype(np.int64) % TEX
    x1, y1 = (x0 + 1) % TEX, (y0 + 1) % TEX
    return ((1 - fx) * (1 - fy) * tex[y0, x0] + fx * (1 - fy) * tex[y0, x1]
            + (1 - fx) * fy * tex[y1, x0] + fx * fy * tex[y1, x1])


# ------------------------------------------------------------------------------------------------
# Shapes, in a layer's local coordinates (pixels at scale 1, origin inside the shape).

@dataclasses.dataclass
class Ellipse:
    radii: np.ndarray  # (2,)

    def contains(self, q):
        return (q[..., 0] / self.radii[0]) ** 2 + (q[..., 1] / self.radii[1]) ** 2 <= 1.0


@dataclasses.dataclass
class StarPolygon:
    """A polygon whose vertices lie at increasing angles around the origin (star-shaped), with an
    optional star-shaped hole; widely varying radii give thin spikes."""
    angles: np.ndarray  # (K,) increasing in [0, 2 pi)
    radii: np.ndarray   # (K,)
    hole: Optional["StarPolygon"] = None

    def contains(self, q):
        phi = np.arctan2(q[..., 1], q[..., 0]) % (2 * np.pi)
        k = (np.searchsorted(self.angles, phi, side="right") - 1) % len(self.angles)
        a0, a1 = self.angles[k], self.angles[(k + 1) % len(self.angles)]
        r0, r1 = self.radii[k], self.radii[(k + 1) % len(self.angles)]
        x0, y0, x1, y1 = r0 * np.cos(a0), r0 * np.sin(a0), r1 * np.cos(a1), r1 * np.sin(a1)
        inside = (x1 - x0) * (q[..., 1] - y0) - (y1 - y0) * (q[..., 0] - x0) >= 0  # left of the CCW edge
        if self.hole is not None:
            inside &= ~self.hole.contains(q)
        return inside


@dataclasses.dataclass
class Bar:
    half: np.ndarray  # (2,) half length, half width

    def contains(self, q):
        return (np.abs(q[..., 0]) <= self.half[0]) & (np.abs(q[..., 1]) <= self.half[1])


def _star(rng, radius: float, spiky: bool) -> StarPolygon:
    k = int(rng.integers(5, 13))
    angles = np.sort((np.arange(k) + rng.uniform(-0.35, 0.35, k)) * 2 * np.pi / k + rng.uniform(0, 2 * np.pi))
    angles = angles % (2 * np.pi)
    order = np.argsort(angles)
    lo = 0.15 if spiky else 0.5
    return StarPolygon(angles[order], (radius * rng.uniform(lo, 1.0, k))[order])


def random_shape(kind: str, rng, radius: float):
    if kind == "ellipse":
        return Ellipse(radius * rng.uniform(0.4, 1.0, 2))
    if kind == "polygon":
        return _star(rng, radius, spiky=bool(rng.random() < 0.5))
    if kind == "holed":
        outer = _star(rng, radius, spiky=False)
        inner = _star(rng, 0.5 * outer.radii.min(), spiky=False)
        return StarPolygon(outer.angles, outer.radii, hole=inner)
    if kind == "bar":
        return Bar(np.array([radius, radius * rng.uniform(0.06, 0.2)]))
    raise ValueError(f"unknown shape {kind!r}; expected ellipse, polygon, holed or bar")


# ------------------------------------------------------------------------------------------------
# Layers and their motion.

@dataclasses.dataclass
class Layer:
    texture: np.ndarray
    c0: np.ndarray         # (2,) centre at t=0, px
    v: np.ndarray          # (2,) px/frame
    a: np.ndarray          # (2,) px/frame^2
    theta0: float
    omega: float           # rad/frame
    s0: float
    g: float               # log-scale per frame
    shape: object          # Ellipse | StarPolygon | Bar; None = full-frame background
    tex_scale: float
    tex_offset: np.ndarray
    depth: float = 1.0     # 0 near .. 1 far (fog)
    unseen_texture: bool = False  # gets a texture of an unseen family under the 'textures' shift

    def _pose(self, t):
        c = self.c0 + self.v * t + 0.5 * self.a * t * t
        th = self.theta0 + self.omega * t
        return c, np.cos(th), np.sin(th), self.s0 * np.exp(self.g * t)

    def to_image(self, q: np.ndarray, t: float) -> np.ndarray:
        """Local (..., 2) -> image (..., 2) at time t."""
        c, co, si, s = self._pose(t)
        x, y = q[..., 0] * s, q[..., 1] * s
        return np.stack([c[0] + co * x - si * y, c[1] + si * x + co * y], -1)

    def to_local(self, p: np.ndarray, t: float) -> np.ndarray:
        """Image (..., 2) -> local (..., 2) at time t."""
        c, co, si, s = self._pose(t)
        dx, dy = p[..., 0] - c[0], p[..., 1] - c[1]
        return np.stack([(co * dx + si * dy) / s, (-si * dx + co * dy) / s], -1)

    def contains_local(self, q: np.ndarray) -> np.ndarray:
        if self.shape is None:
            return np.ones(q.shape[:-1], bool)
        return self.shape.contains(q)

    def colour(self, q: np.ndarray) -> np.ndarray:
        u = q[..., 0] * self.tex_scale + self.tex_offset[0]
        v = q[..., 1] * self.tex_scale + self.tex_offset[1]
        return sample_texture(self.texture, u, v)


def layer_speed(cfg: DomainConfig, rng, side: int) -> float:
    """A layer's speed in px/frame: heavy-tailed (log-normal with mean side * motion), capped."""
    if rng.random() < cfg.static_prob:
        return abs(rng.normal(0, 0.05))
    return float(min(side * cfg.motion * np.exp(rng.normal(-0.5, 1.0)), side * cfg.max_motion))


def _random_layers(cfg: DomainConfig, rng, h: int, w: int, num_frames: int) -> List[Layer]:
    files = []
    if "images" in cfg.textures and cfg.texture_dir:
        from refine_jax.data.frames import list_images
        files = list_images(cfg.texture_dir)
    side = min(h, w)
    unseen = shifts_lib.unseen_texture_prob(cfg.shifts)
    count = int(rng.integers(max(1, (cfg.layers + 1) // 2), cfg.layers + 1)) if cfg.layers else 0
    layers = []
    for k in range(count + 1):
        bg = k == 0
        speed = layer_speed(cfg, rng, side) * (cfg.background_motion if bg else 1.0)
        ang = rng.uniform(0, 2 * np.pi)
        v = speed * np.array([np.cos(ang), np.sin(ang)])
        a = rng.normal(0, 0.05 * speed / 2 + 1e-3, 2) * (0.3 if bg else 1.0)
        if bg:
            c0 = np.array([w / 2, h / 2])
        else:  # start objects so that their mid-video position is inside the frame
            c0 = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h]) - v * (num_frames - 1) / 2
        unseen_texture = rng.random() < unseen  # drawn for every domain, so geometry never depends on it
        layers.append(Layer(
            texture=make_texture(str(rng.choice(cfg.textures)), rng, files),
            c0=c0, v=v, a=a, theta0=rng.uniform(0, 2 * np.pi),
            omega=rng.normal(0, cfg.rotation) * (0.3 if bg else 1.0), s0=1.0,
            g=rng.normal(0, cfg.scaling) * (0.3 if bg else 1.0),
            shape=None if bg else random_shape(str(rng.choice(cfg.shapes)), rng,
                                               rng.uniform(*cfg.shape_size) * side),
            tex_scale=rng.uniform(0.4, 1.0), tex_offset=rng.uniform(0, TEX, 2),
            depth=1.0 if bg else 0.85 - 0.7 * (k - 1) / max(count, 1) + rng.uniform(-0.05, 0.05),
            unseen_texture=bool(unseen_texture)))
    return layers


def _swap_textures(layers: List[Layer], rng) -> None:
    """The 'textures' shift: layers marked for it get a texture family the source never shows,
    drawn from their own generator so the scene's geometry stays that of the source."""
    for layer in layers:
        if layer.unseen_texture:
            layer.texture = make_texture(str(rng.choice(shifts_lib.UNSEEN_TEXTURES)), rng)


def _top_layer(layers: List[Layer], p: np.ndarray, t: float) -> np.ndarray:
    """Index of the top-most layer containing each image point p (..., 2) at time t."""
    owner = np.zeros(p.shape[:-1], np.int64)
    for k, layer in enumerate(layers[1:], start=1):
        owner[layer.contains_local(layer.to_local(p, t))] = k
    return owner


def _occluded_by_above(layers, k: np.ndarray, p: np.ndarray, t: float) -> np.ndarray:
    """Whether a layer above each point's own layer k covers p at time t."""
    occ = np.zeros(p.shape[:-1], bool)
    for j, layer in enumerate(layers[1:], start=1):
        occ |= (j > k) & layer.contains_local(layer.to_local(p, t))
    return occ


def _inside(p: np.ndarray, h: int, w: int) -> np.ndarray:
    return (p[..., 0] >= 0) & (p[..., 0] <= w - 1) & (p[..., 1] >= 0) & (p[..., 1] <= h - 1)


def _map_points(layers, k: np.ndarray, p: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """Move points p (..., 2) at time t0, each on its layer k, to time t1."""
    out = np.empty_like(p)
    for j, layer in enumerate(layers):
        sel = k == j
        if sel.any():
            out[sel] = layer.to_image(layer.to_local(p[sel], t0), t1)
    return out


def _render(layers: List[Layer], grid: np.ndarray, t: float) -> Tuple[np.ndarray, np.ndarray]:
    """The image (H, W, 3) float and the owning layer (H, W) of every pixel at time t."""
    owner = _top_layer(layers, grid, t)
    img = np.zeros(grid.shape[:-1] + (3,))
    for k, layer in enumerate(layers):
        sel = owner == k
        if sel.any():
            img[sel] = layer.colour(layer.to_local(grid[sel], t))
    return img, owner


VIDEOS_PER_SEED = 100_003  # video seeds of dataset seeds s and s + 1 never meet below this many videos


def video_seed(dataset_seed: int, index: int) -> int:
    """The render seed of video `index` of the procedural dataset with seed `dataset_seed`, as
    write_dataset, the TFDS builder and the streamed pre-training draw them."""
    return dataset_seed * VIDEOS_PER_SEED + index


def render_video(cfg: DomainConfig, seed: int, num_frames: int, h: int, w: int,
                 num_tracks: int = 0, video_id: Optional[str] = None) -> Clip:
    """One procedural video with exact ground truth.

    frames uint8 (T, H, W, 3); flow (T-1, H, W, 2) forward flow of the visible surface in px;
    flow_valid (T-1, H, W): the target stays in the frame and is not occluded at t+1; tracks
    (N, T, 2) of random frame-0 query points and their visibility (N, T). With motion blur the
    frame at t integrates the scene over [t - e/2, t + e/2]; the ground truth is the scene at t.
    """
    rng = np.random.default_rng(seed)
    layers = _random_layers(cfg, rng, h, w, num_frames)
    _swap_textures(layers, np.random.default_rng([seed, 1]))
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), -1)
    exposure = shifts_lib.exposure(cfg.shifts)
    subs = np.linspace(-exposure / 2, exposure / 2, 7) if exposure else np.zeros(1)
    depth_of = np.array([layer.depth for layer in layers])
    frames, owners = [], []
    for t in range(num_frames):
        img, owner = _render(layers, grid, t)
        if exposure:
            img = np.mean([_render(layers, grid, t + d)[0] for d in subs], axis=0)
        frames.append(img)
        owners.append(owner)
    flow = np.zeros((num_frames - 1, h, w, 2), np.float32)
    valid = np.zeros((num_frames - 1, h, w), bool)
    for t in range(num_frames - 1):
        target = _map_points(layers, owners[t], grid, t, t + 1)
        flow[t] = target - grid
        valid[t] = _inside(target, h, w) & ~_occluded_by_above(layers, owners[t], target, t + 1)
    # the imaging shifts draw from their own generator: the tracks below are the source's
    frames = shifts_lib.apply(np.stack(frames), depth_of[np.stack(owners)], cfg.shifts,
                              np.random.default_rng([seed, 2]))
    clip = Clip(video_id=video_id or f"synthetic-{seed:06d}", frames=frames, flow=flow, flow_valid=valid,
                fps=24.0)
    if num_tracks:
        q = np.stack([rng.uniform(0, w - 1, num_tracks), rng.uniform(0, h - 1, num_tracks)], -1)
        clip.tracks, clip.visible = track_points(layers, q, 0, num_frames, h, w)
        clip.query_points = np.concatenate([np.zeros((num_tracks, 1)), q], -1).astype(np.float32)
    return clip


def track_points(layers, q: np.ndarray, t_query: int, num_frames: int, h: int, w: int):
    """Exact tracks (N, T, 2) and visibility (N, T) of image points q (N, 2) given at t_query."""
    k = _top_layer(layers, q, t_query)
    tracks = np.stack([_map_points(layers, k, q, t_query, t) for t in range(num_frames)], 1)
    visible = np.stack([_inside(tracks[:, t], h, w) & ~_occluded_by_above(layers, k, tracks[:, t], t)
                        for t in range(num_frames)], 1)
    return tracks.astype(np.float32), visible


def _render_record(args) -> Tuple[bytes, str, int]:
    cfg, seed, frames, size, tracks, video_id, fmt, flow_dtype = args
    clip = render_video(cfg, seed, frames, size[0], size[1], tracks, video_id=video_id)
    if not flow_dtype:
        clip.flow = clip.flow_valid = None
    from refine_jax.data.shards import clip_to_example
    return clip_to_example(clip, fmt, flow_dtype), clip.video_id, len(clip.frames)


def write_dataset(out_dir: str, preset, videos: int, frames: int = 24, size=(256, 320),
                  tracks: int = 64, seed: int = 0, fmt: str = "png", progress: bool = True,
                  workers: int = 1, name: Optional[str] = None, flow_dtype: str = "float32") -> dict:
    """Generate `videos` videos of a domain (a preset name or a DomainConfig) into a shard folder,
    rendering in `workers` processes (the output does not depend on it); returns the manifest.
    `flow_dtype` 'float16' halves the size of training sets (0.03 px steps at 32-64 px); '' leaves
    the flow out (track training sets)."""
    from tqdm import tqdm
    from refine_jax.data.shards import ShardWriter
    cfg = domain(preset) if isinstance(preset, str) else preset
    name = name or (preset if isinstance(preset, str) else "synthetic")
    extra = {"generator": "refine_jax.demo.synthetic", "preset": name, "domain": dataclasses.asdict(cfg),
             "shifts": shifts_lib.describe(cfg.shifts), "seed": seed}
    jobs = [(cfg, video_seed(seed, i), frames, tuple(size), tracks, f"{name}-{seed}-{i:05d}", fmt, flow_dtype)
            for i in range(videos)]
    with ShardWriter(out_dir, name, extra=extra) as writer:
        if workers > 1:
            import multiprocessing
            pool = multiprocessing.get_context("spawn").Pool(workers)
            results = pool.imap(_render_record, jobs)
        else:
            pool, results = None, map(_render_record, jobs)
        try:
            for record, video_id, n in tqdm(results, total=videos, desc=f"synthetic {name}", unit="video",
                                            disable=not progress):
                writer.write(record, video_id, n)
        finally:
            if pool is not None:
                pool.terminate()
    return writer.manifest


@cli.guarded
def main(argv) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m refine_jax.demo.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--videos", type=int, required=True)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", default="256,320", help="H,W")
    p.add_argument("--tracks", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shifts", default=None, help="replace the preset's shifts: 'fog:1,noise:2' ('' = none)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--format", default="png", choices=("png", "jpeg"))
    a = p.parse_args(argv)
    h, w = (int(v) for v in a.size.split(","))
    cfg = domain(a.preset, None if a.shifts is None else shifts_lib.parse(a.shifts))
    m = write_dataset(a.out, cfg, a.videos, a.frames, (h, w), a.tracks, a.seed, a.format,
                      workers=a.workers, name=a.preset)
    print(f"wrote {m['records']} videos ({m['frames']} frames) to {a.out}")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
