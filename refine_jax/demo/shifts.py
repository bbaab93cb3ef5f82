"""Named appearance shifts between a source and a target domain, each with a severity.

The target of the embedded demo differs from the source the way Sintel 'final' differs from
'clean' and real footage from a renderer: in how the scene is imaged, not in how it moves. Every
shift keeps the geometry, so the ground-truth flow and tracks are those of the clean render.

  motion_blur  exposure over `0.5 * s` of the frame interval, rendered from sub-frame poses
               (exact blur along each layer's own motion, occlusions included)
  fog          atmospheric scattering I * T + A * (1 - T), T = exp(-0.4 s (0.25 + depth)) with a smooth,
               layer-dependent depth and a grey-blue airlight A
  noise        sensor noise: Gaussian (sigma 3 s grey levels) plus shot noise (sqrt(I) * 0.25 s)
  brightness   per-video gamma exp(+-0.15 s) and a per-frame gain drift of 3 s % a frame
               (auto-exposure), so colour constancy between frames no longer holds
  defocus      Gaussian blur, sigma 0.8 s px
  jpeg         JPEG compression at quality round(60 / (1 + s)) (s 1: 30, s 2: 20)
  textures     layers textured with families the source never shows (stripes, checker, dots);
               severity s gives each layer an unseen texture with probability min(s / 2, 1)

Severities are floats; 1 is moderate, 2 strong; 0 leaves the image alone. A domain lists its
shifts as ((name, severity), ...). Images are float (T, H, W, 3) in [0, 255] until `finish`.
"""
from __future__ import annotations

import io
from typing import Dict, Sequence, Tuple

import numpy as np

NAMES = ("motion_blur", "fog", "noise", "brightness", "defocus", "jpeg", "textures")
UNSEEN_TEXTURES = ("stripes", "checker", "dots")

Shifts = Tuple[Tuple[str, float], ...]


def check(shifts: Shifts) -> Dict[str, float]:
    """{name: severity} of a shift list; an unknown name or a negative severity is an error."""
    out = {}
    for item in shifts:
        if len(item) != 2:
            raise ValueError(f"a shift is (name, severity), got {item!r}")
        name, sev = item[0], float(item[1])
        if name not in NAMES:
            raise ValueError(f"unknown shift {name!r}; expected one of {', '.join(NAMES)}")
        if sev < 0:
            raise ValueError(f"shift {name!r}: severity must be >= 0, got {sev}")
        out[name] = sev
    return out


def parse(text: str) -> Shifts:
    """'fog:1,noise:2' -> (('fog', 1.0), ('noise', 2.0)); '' -> ()."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, sev = part.partition(":")
        out.append((name.strip(), float(sev) if sev else 1.0))
    check(tuple(out))
    return tuple(out)


def exposure(shifts: Shifts) -> float:
    """Fraction of the frame interval the shutter is open (0: an instant, no motion blur)."""
    return 0.5 * check(shifts).get("motion_blur", 0.0)


def unseen_texture_prob(shifts: Shifts) -> float:
    return min(check(shifts).get("textures", 0.0) / 2.0, 1.0)


def _smooth_field(rng, h: int, w: int, scale: float) -> np.ndarray:
    """A smooth random field in [0, 1] of shape (h, w), features about `scale` px wide."""
    from scipy.ndimage import gaussian_filter, zoom
    gh, gw = max(int(h / scale) + 2, 2), max(int(w / scale) + 2, 2)
    coarse = rng.uniform(0, 1, (gh, gw))
    f = zoom(coarse, (h / gh, w / gw), order=3, mode="nearest")[:h, :w]
    f = gaussian_filter(f, scale / 4)
    return (f - f.min()) / (np.ptp(f) + 1e-8)


def apply(frames: np.ndarray, depth: np.ndarray, shifts: Shifts, rng: np.random.Generator) -> np.ndarray:
    """The imaging shifts (all but motion blur and textures, which act while rendering), in the
    order light meets them: fog, defocus, exposure, sensor noise, compression.

    frames float (T, H, W, 3) in [0, 255]; depth (T, H, W) in [0, 1] (0 near, 1 far).
    Returns uint8 (T, H, W, 3).
    """
    sev = check(shifts)
    out = np.asarray(frames, np.float64)
    t, h, w = out.shape[:3]
    if sev.get("fog"):
        density = 0.4 * sev["fog"] * (0.6 + 0.8 * _smooth_field(rng, h, w, max(h, w) / 3))
        airlight = np.array([200.0, 205.0, 215.0]) + rng.uniform(-20, 20, 3)
        trans = np.exp(-density[None] * (0.25 + depth))[..., None]
        out = out * trans + airlight * (1 - trans)
    if sev.get("defocus"):
        from scipy.ndimage import gaussian_filter
        s = 0.8 * sev["defocus"]
        out = gaussian_filter(out, sigma=(0, s, s, 0))
    if sev.get("brightness"):
        s = sev["brightness"]
        gamma = np.exp(rng.choice([-1, 1]) * 0.15 * s)
        drift = np.exp(rng.choice([-1, 1]) * 0.03 * s * np.arange(t) + rng.normal(0, 0.005 * s, t))
        out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** gamma * drift[:, None, None, None]
    if sev.get("noise"):
        s = sev["noise"]
        base = np.clip(out, 0, 255)
        out = base + rng.normal(size=out.shape) * np.sqrt((3.0 * s) ** 2 + (0.25 * s) ** 2 * base)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if sev.get("jpeg"):
        out = np.stack([_jpeg(f, int(round(60 / (1 + sev["jpeg"])))) for f in out])
    return out


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=max(quality, 5))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def describe(shifts: Sequence) -> str:
    """'fog 1, noise 2' (or 'none') for reports."""
    return ", ".join(f"{n} {float(s):g}" for n, s in shifts) or "none"
