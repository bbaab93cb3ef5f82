"""Procedural videos with exact ground truth: flow, occlusion, and tracks with visibility.

A video is a stack of depth-ordered layers: a full-frame background and several textured shapes
(ellipses) on top. Layer k maps its local coordinates q to the image by a smooth affine motion
  A_t(q) = c0 + v t + a t^2 / 2 + R(theta0 + omega t) * (s0 exp(g t)) * q,
so every quantity is analytic: the forward flow of the visible surface at pixel p is
A_{t+1}(A_t^{-1}(p)) - p, a point is occluded at time t when a layer above its own contains it or
it leaves the frame, and a track is A_t(A_{t_q}^{-1}(p)). Textures are periodic (procedural noise,
stripes, checkers, blobs) or images from a folder, sampled bilinearly.

Domain knobs live in `DomainConfig`; `PRESETS['source']` is an easy domain and `PRESETS['target']`
differs in textures and has larger, faster motion and photometric changes, so a model can be
pre-trained on one and refined on the other.

  python -m refine_jax.data.synthetic --preset=target --out=DIR --videos=N [--frames=24]
      [--size=128,160] [--tracks=64] [--seed=0]
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from refine_jax.data.shards import Clip

TEX = 256  # texture side, pixels


@dataclasses.dataclass(frozen=True)
class DomainConfig:
    """Knobs of a procedural video domain. Motion is in pixels per frame at the centre."""
    textures: Tuple[str, ...] = ("noise",)   # noise | stripes | checker | blobs | images
    texture_dir: str = ""                     # folder of images when 'images' is used
    layers: int = 3                           # foreground shapes (the background is extra)
    motion: float = 2.0                       # typical translation speed, px/frame
    rotation: float = 0.01                    # typical angular speed, rad/frame
    scaling: float = 0.005                    # typical log-scale change per frame
    background_motion: float = 0.5            # background speed as a fraction of `motion`
    brightness: float = 0.0                   # relative brightness drift per frame
    noise: float = 0.0                        # additive Gaussian noise sigma, grey levels
    blur: float = 0.0                         # Gaussian blur sigma, pixels
    shape_size: Tuple[float, float] = (0.15, 0.35)  # ellipse radii as a fraction of the frame side


PRESETS = {
    "source": DomainConfig(),
    "target": DomainConfig(textures=("stripes", "checker", "blobs"), layers=4, motion=6.0,
                           rotation=0.03, scaling=0.01, background_motion=0.6, brightness=0.01,
                           noise=2.0, blur=0.5),
}


# ------------------------------------------------------------------------------------------------
# Textures: (TEX, TEX, 3) float in [0, 255], periodic so that wrap-around sampling is seamless.

def _periodic_noise(rng, beta: float = 3.5) -> np.ndarray:
    f = np.fft.fftfreq(TEX)
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    r[0, 0] = 1.0
    out = []
    for _ in range(3):
        spec = np.fft.fft2(rng.normal(size=(TEX, TEX))) / r ** (beta / 2)
        spec[0, 0] = 0
        x = np.real(np.fft.ifft2(spec))
        out.append((x - x.mean()) / (x.std() + 1e-8))
    x = np.stack(out, -1) @ rng.normal(size=(3, 3)) * 0.5
    return np.clip(127.5 + 55 * x, 0, 255)


def make_texture(kind: str, rng, image_files: Sequence[str] = ()) -> np.ndarray:
    yy, xx = np.mgrid[0:TEX, 0:TEX] / TEX * 2 * np.pi
    col = lambda: rng.uniform(20, 235, 3)
    if kind == "noise":
        return _periodic_noise(rng)
    if kind == "stripes":
        kx, ky = rng.integers(-6, 7, 2)
        kx = kx if (kx or ky) else 3
        wave = 0.5 + 0.5 * np.sin(kx * xx + ky * yy + rng.uniform(0, 6.3))
        base = col()[None, None] * wave[..., None] + col()[None, None] * (1 - wave[..., None])
        return np.clip(base + 20 * _periodic_noise(rng, 3.0) / 127.5 - 10, 0, 255)
    if kind == "checker":
        n = int(rng.choice([4, 8, 16]))
        cells = ((np.floor(xx / (2 * np.pi) * n) + np.floor(yy / (2 * np.pi) * n)) % 2)[..., None]
        smooth = 0.3 * (_periodic_noise(rng, 3.0) - 127.5)
        return np.clip(col() * cells + col() * (1 - cells) + smooth, 0, 255)
    if kind == "blobs":
        img = np.zeros((TEX, TEX, 3)) + col()
        for _ in range(24):
            c, s, colour = rng.uniform(0, TEX, 2), rng.uniform(6, 30), col()
            dy = (np.arange(TEX)[:, None] - c[1] + TEX / 2) % TEX - TEX / 2
            dx = (np.arange(TEX)[None, :] - c[0] + TEX / 2) % TEX - TEX / 2
            w = np.exp(-(dx ** 2 + dy ** 2) / (2 * s ** 2))[..., None]
            img = img * (1 - w) + colour * w
        return img
    if kind == "images":
        if not image_files:
            raise ValueError("texture family 'images' needs DomainConfig.texture_dir with images")
        from refine_jax.data.frames import read_image
        from PIL import Image
        im = read_image(image_files[int(rng.integers(len(image_files)))])
        im = np.asarray(Image.fromarray(im).resize((TEX // 2, TEX // 2)), np.float64)
        return np.concatenate([np.concatenate([im, im[:, ::-1]], 1),
                               np.concatenate([im[::-1], im[::-1, ::-1]], 1)], 0)  # mirror-periodic
    raise ValueError(f"unknown texture family {kind!r}; expected noise, stripes, checker, blobs or images")


def sample_texture(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear, wrap-around sample of a (TEX, TEX, 3) texture at float coordinates u (x), v (y)."""
    x0, y0 = np.floor(u), np.floor(v)
    fx, fy = (u - x0)[..., None], (v - y0)[..., None]
    x0, y0 = x0.astype(np.int64) % TEX, y0.astype(np.int64) % TEX
    x1, y1 = (x0 + 1) % TEX, (y0 + 1) % TEX
    return ((1 - fx) * (1 - fy) * tex[y0, x0] + fx * (1 - fy) * tex[y0, x1]
            + (1 - fx) * fy * tex[y1, x0] + fx * fy * tex[y1, x1])


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
    radii: Optional[np.ndarray]  # (2,) ellipse radii in local units; None = full-frame background
    tex_scale: float
    tex_offset: np.ndarray

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
        if self.radii is None:
            return np.ones(q.shape[:-1], bool)
        return (q[..., 0] / self.radii[0]) ** 2 + (q[..., 1] / self.radii[1]) ** 2 <= 1.0

    def colour(self, q: np.ndarray) -> np.ndarray:
        u = q[..., 0] * self.tex_scale + self.tex_offset[0]
        v = q[..., 1] * self.tex_scale + self.tex_offset[1]
        return sample_texture(self.texture, u, v)


def _random_layers(cfg: DomainConfig, rng, h: int, w: int, num_frames: int) -> List[Layer]:
    files = []
    if "images" in cfg.textures and cfg.texture_dir:
        from refine_jax.data.frames import list_images
        files = list_images(cfg.texture_dir)
    side = min(h, w)
    layers = []
    for k in range(cfg.layers + 1):
        bg = k == 0
        speed = cfg.motion * (cfg.background_motion if bg else rng.uniform(0.5, 1.5))
        ang = rng.uniform(0, 2 * np.pi)
        v = speed * np.array([np.cos(ang), np.sin(ang)])
        a = rng.normal(0, 0.05 * cfg.motion, 2) * (0.3 if bg else 1.0)
        c0 = np.array([w / 2, h / 2]) if bg else rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
        # Start objects so that their mid-video position is near the frame centre region.
        if not bg:
            c0 = c0 - v * (num_frames - 1) / 2
            c0 = np.clip(c0, [-0.2 * w, -0.2 * h], [1.2 * w, 1.2 * h])
        layers.append(Layer(
            texture=make_texture(str(rng.choice(cfg.textures)), rng, files),
            c0=c0, v=v, a=a, theta0=rng.uniform(0, 2 * np.pi),
            omega=rng.normal(0, cfg.rotation) * (0.3 if bg else 1.0), s0=1.0,
            g=rng.normal(0, cfg.scaling) * (0.3 if bg else 1.0),
            radii=None if bg else rng.uniform(*cfg.shape_size, 2) * side,
            tex_scale=rng.uniform(0.4, 0.8), tex_offset=rng.uniform(0, TEX, 2)))
    return layers


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


def render_video(cfg: DomainConfig, seed: int, num_frames: int, h: int, w: int,
                 num_tracks: int = 0, video_id: Optional[str] = None) -> Clip:
    """One procedural video with exact ground truth.

    frames uint8 (T, H, W, 3); flow (T-1, H, W, 2) forward flow of the visible surface in px;
    flow_valid (T-1, H, W): the target stays in the frame and is not occluded at t+1; tracks
    (N, T, 2) of random frame-0 query points and their visibility (N, T).
    """
    rng = np.random.default_rng(seed)
    layers = _random_layers(cfg, rng, h, w, num_frames)
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), -1)
    frames, owners = [], []
    for t in range(num_frames):
        owner = _top_layer(layers, grid, t)
        img = np.zeros((h, w, 3))
        for k, layer in enumerate(layers):
            sel = owner == k
            if sel.any():
                img[sel] = layer.colour(layer.to_local(grid[sel], t))
        frames.append(img)
        owners.append(owner)
    flow = np.zeros((num_frames - 1, h, w, 2), np.float32)
    valid = np.zeros((num_frames - 1, h, w), bool)
    for t in range(num_frames - 1):
        target = _map_points(layers, owners[t], grid, t, t + 1)
        flow[t] = target - grid
        valid[t] = _inside(target, h, w) & ~_occluded_by_above(layers, owners[t], target, t + 1)
    frames = _photometric(np.stack(frames), cfg, rng)
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


def _photometric(frames: np.ndarray, cfg: DomainConfig, rng) -> np.ndarray:
    """Brightness drift, blur and noise (which make the images, not the geometry, harder)."""
    t = np.arange(len(frames))[:, None, None, None]
    out = frames * (1.0 + cfg.brightness * t * rng.choice([-1, 1]))
    if cfg.blur > 0:
        from scipy.ndimage import gaussian_filter
        out = gaussian_filter(out, sigma=(0, cfg.blur, cfg.blur, 0))
    if cfg.noise > 0:
        out = out + rng.normal(0, cfg.noise, out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def write_dataset(out_dir: str, preset: str, videos: int, frames: int = 24, size=(128, 160),
                  tracks: int = 64, seed: int = 0, fmt: str = "png", progress: bool = True) -> dict:
    """Generate `videos` videos of a preset into a shard folder; returns the manifest."""
    from tqdm import tqdm
    from refine_jax.data.shards import ShardWriter
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    name = preset if isinstance(preset, str) else "synthetic"
    extra = {"generator": "refine_jax.data.synthetic", "preset": name, "domain": dataclasses.asdict(cfg),
             "seed": seed}
    with ShardWriter(out_dir, name, extra=extra) as writer:
        for i in tqdm(range(videos), desc=f"synthetic {name}", unit="video", disable=not progress):
            clip = render_video(cfg, seed * 100_003 + i, frames, size[0], size[1], tracks,
                                video_id=f"{name}-{seed}-{i:05d}")
            writer.write_clip(clip, fmt)
    return writer.manifest


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m refine_jax.data.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--videos", type=int, required=True)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", default="128,160", help="H,W")
    p.add_argument("--tracks", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="png", choices=("png", "jpeg"))
    a = p.parse_args(argv)
    h, w = (int(v) for v in a.size.split(","))
    m = write_dataset(a.out, a.preset, a.videos, a.frames, (h, w), a.tracks, a.seed, a.format)
    print(f"wrote {m['records']} videos ({m['frames']} frames) to {a.out}")


if __name__ == "__main__":
    main()
