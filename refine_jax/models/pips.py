"""PIPs (Harley et al., 2022) in Flax Linen, layer for layer as the official model, plus chained
inference over videos of any length.

Shapes: frames (B, S, H, W, 3) float in [0, 255] with S = 8; queries `xys` (B, N, 2) pixels (x, y)
in the window's frame 0. Inside the model coordinates are in stride units (pixel / stride); every
output coordinate is in pixels. Iterations run as a lifted `nn.scan`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from refine_jax.models import corr as corr_lib, lookup, precision
from refine_jax.models.layers import ResidualBlock, conv, instance_norm

EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class PipsConfig:
    """PIPs hyper-parameters. `stride` (4 or 8) is a run-time choice: the weights do not depend on it."""
    stride: int = 8
    S: int = 8
    latent_dim: int = 128
    corr_levels: int = 4
    corr_radius: int = 3
    mixer_dim: int = 512      # official 512 x 12; reduced only for the CPU demo
    mixer_depth: int = 12
    precision: str = "highest"  # run-time choices (models/precision.py, models/lookup.py)
    lookup: str = "auto"

    arch = "pips"

    def to_dict(self) -> dict:
        return {"arch": self.arch, **dataclasses.asdict(self)}


def example_inputs(cfg: PipsConfig):
    """Smallest valid (xys, frames) for shape inference."""
    side = 16 * cfg.stride
    return jnp.zeros((1, 1, 2), jnp.float32), jnp.zeros((1, cfg.S, side, side, 3), jnp.float32)


def check_frame_size(h: int, w: int, stride: int) -> None:
    """PIPs needs H//stride and W//stride >= 16 (a 1-px pyramid level is NaN officially, T8)."""
    if h // stride < 16 or w // stride < 16:
        raise ValueError(f"frames of {h}x{w} px are too small for PIPs at stride {stride}: the feature "
                         f"map would be {h // stride}x{w // stride}, and it needs at least 16x16 "
                         f"(frames of at least {16 * stride}x{16 * stride} px)")


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """float32 values of `torch.linspace` (it fills the second half from the end, unlike numpy)."""
    step = np.float32((end - start) / (steps - 1))
    i = np.arange(steps)
    half = steps // 2
    lo = np.float32(start) + i[:half].astype(np.float32) * step
    hi = np.float32(end) - (steps - 1 - i[half:]).astype(np.float32) * step
    return np.concatenate([lo, hi]).astype(np.float32)


def sincos_embedding(xyz, channels: int = 64):
    """`get_3d_embedding(xyz, 64, cat_coords=True)`: (..., 3) -> (..., 3*channels + 3).

    Per coordinate v: [sin(f_0 v), cos(f_0 v), sin(f_1 v), ...] with f_k = 2k * 1000/channels (linear
    frequencies, up to 968.75), then the raw coordinates appended. float32 throughout (trap T9).
    """
    xyz = xyz.astype(jnp.float32)
    freqs = jnp.arange(0, channels, 2, dtype=jnp.float32) * jnp.float32(1000.0 / channels)
    parts = []
    for d in range(3):
        arg = xyz[..., d:d + 1] * freqs
        parts.append(jnp.stack([jnp.sin(arg), jnp.cos(arg)], axis=-1).reshape(*arg.shape[:-1], channels))
    return jnp.concatenate(parts + [xyz], axis=-1)


def gelu(x):
    return jax.nn.gelu(x, approximate=False)  # PyTorch nn.GELU is the exact erf form (T5)


@jax.custom_vjp
def _layer_norm(x, scale, bias):
    """LayerNorm over the last axis, as nn.LayerNorm(use_fast_variance=False) computes it."""
    return _layer_norm_forward(x, scale, bias)[0]


def _layer_norm_forward(x, scale, bias):
    """The normalised x and what the gradient needs: (x - mean) / std, 1 / std, scale."""
    c = x - x.mean(-1, keepdims=True)
    r = jax.lax.rsqrt((c * c).mean(-1, keepdims=True) + EPS)
    return c * (r * scale) + bias, (c * r, r, scale)


def _layer_norm_backward(res, dy):
    xhat, r, scale = res
    rows = lambda a: a.reshape(-1, a.shape[-1]).sum(0)
    g = dy * scale
    dx = r * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, rows(dy * xhat), rows(dy)


_layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nn.Module):
    """nn.LayerNorm (same parameters, same forward values) with its gradient written out: XLA:CPU
    differentiates nn.LayerNorm before the mixer's token transposes 2.3x slower (12 token-mixing
    branches' forward and backward at 128 tracks: 1374 ms against 591 ms, docs/speed.md)."""

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        return _layer_norm(x, scale, bias)


def layer_norm(name: Optional[str] = None):
    return LayerNorm(name=name)


class PipsEncoder(nn.Module):
    """4-scale encoder: residual stages a, b, c, d resized to (H//stride, W//stride) with
    align_corners bilinear, concatenated (416 ch), 3x3 conv + IN + ReLU, 1x1 conv to 128."""
    output_dim: int = 128
    stride: int = 8

    @nn.compact
    def __call__(self, x):
        h, w = x.shape[1] // self.stride, x.shape[2] // self.stride
        x = nn.relu(instance_norm(conv(64, 7, 2, 3, name="conv1")(x)))
        feats = []
        for planes, stride, name in ((64, 1, "layer1"), (96, 2, "layer2"), (128, 2, "layer3"),
                                     (128, 2, "layer4")):
            x = ResidualBlock(planes, "instance", stride, name=f"{name}_0")(x)
            x = ResidualBlock(planes, "instance", 1, name=f"{name}_1")(x)
            feats.append(corr_lib.resize_align_corners(x, (h, w)))
        x = conv(2 * self.output_dim, 3, 1, 1, name="conv2")(jnp.concatenate(feats, -1))
        x = nn.relu(instance_norm(x))
        return conv(self.output_dim, 1, 1, 0, name="conv3")(x)


class MixerBranch(nn.Module):
    """PreNormResidual: x + FF(LN(x)); FF mixes tokens (time, as a k=1 Conv1d) or channels."""
    hidden: int
    over_tokens: bool

    @nn.compact
    def __call__(self, x):  # (BN, S, 512)
        y = layer_norm("norm")(x)
        if self.over_tokens:  # Conv1d with S as channels and the 512 features as length
            y = jnp.swapaxes(y, 1, 2)
            y = precision.conv(self.hidden, (1,), padding="VALID", name="fn_0")(y)
            y = precision.conv(x.shape[1], (1,), padding="VALID", name="fn_3")(gelu(y))
            y = jnp.swapaxes(y, 1, 2)
        else:
            y = precision.dense(self.hidden, name="fn_0")(y)
            y = precision.dense(x.shape[-1], name="fn_3")(gelu(y))
        return x + y


class DeltaBlock(nn.Module):
    """The MLP-Mixer `to_delta` on [features (128), correlations (196), embedding (195)] -> (BN, S, 130)."""
    S: int = 8
    latent_dim: int = 128
    dim: int = 512
    depth: int = 12

    @nn.compact
    def __call__(self, ffeats, fcorrs, flows):
        x = jnp.concatenate([ffeats, fcorrs, sincos_embedding(flows)], -1)
        x = precision.dense(self.dim, name="to_delta_0")(x)
        for i in range(1, self.depth + 1):
            x = MixerBranch(4 * self.S, True, name=f"to_delta_{i}_0")(x)
            x = MixerBranch(4 * self.dim, False, name=f"to_delta_{i}_1")(x)
        x = layer_norm(f"to_delta_{self.depth + 1}")(x).mean(axis=1)
        x = precision.dense(self.S * (self.latent_dim + 2), name=f"to_delta_{self.depth + 3}")(x)
        return x.reshape(x.shape[0], self.S, self.latent_dim + 2)


def fmap_pyramid(fmaps, levels: int):
    """(B, S, h, w, C) -> list of `levels` maps, each 2x2 average-pooled (floor) from the previous."""
    out = [fmaps]
    for _ in range(levels - 1):
        out.append(corr_lib.avg_pool2(out[-1]))
    return out


def correlation_volumes(pyramid, ffeats):
    """Per level, every track feature against its own frame's map: (B, S, N, h_l, w_l) = <ffeats,
    fmaps_l> / sqrt(C), the official CorrBlock.corr."""
    scale = jnp.sqrt(jnp.float32(ffeats.shape[-1]))
    return [jnp.einsum("bsnc,bshwc->bsnhw", ffeats, fm, precision=jax.lax.Precision.HIGHEST) / scale
            for fm in pyramid]


def sample_correlations(pyramid, ffeats, coords, radius: int, impl: str = "gather"):
    """Windows of the correlation volumes around coords / 2^l, levels concatenated.

    pyramid: list of (B, S, h_l, w_l, C); ffeats (B, S, N, C); coords (B, S, N, 2) stride units.
    Returns (B, S, N, levels*(2r+1)^2), zero outside the maps. Building the volumes and gathering
    scalars measured faster on CPU than gathering feature patches (0.03 s vs 0.09 s per iteration
    at stride 8, equal at stride 4) and keeps the official order of operations.
    """
    b, s, n, _ = coords.shape
    out = []
    for i, vol in enumerate(correlation_volumes(pyramid, ffeats)):
        h, w = vol.shape[-2:]
        win = lookup.window(vol.reshape(b * s * n, h, w), (coords / (2 ** i)).reshape(-1, 2), radius, impl)
        out.append(win.reshape(b, s, n, -1))
    return jnp.concatenate(out, axis=-1)


def score_maps(pyramid, ffeats):
    """The training-only score maps: every level's full correlation (B, S, N, h_l, w_l) resized to
    level 0 with align_corners bilinear and summed -> (B, S, N, h, w)."""
    h, w = pyramid[0].shape[2:4]
    total = 0.0
    for c in correlation_volumes(pyramid, ffeats):
        total = total + corr_lib.resize_align_corners(c[..., None], (h, w))[..., 0]
    return total


class Pips(nn.Module):
    """PIPs with the official parameter names (fnet, delta_block, norm, ffeat_updater, vis_predictor)."""
    cfg: PipsConfig = PipsConfig()
    unroll: int = 1  # scan unrolling (see RAFT.unroll)

    def setup(self):
        cfg = self.cfg
        self.fnet = PipsEncoder(cfg.latent_dim, cfg.stride)
        self.delta_block = DeltaBlock(cfg.S, cfg.latent_dim, cfg.mixer_dim, cfg.mixer_depth)
        self.norm = layer_norm()  # GroupNorm(1, 128) on (rows, 128) == LayerNorm over the 128
        self.ffeat_updater_0 = precision.dense(cfg.latent_dim)
        self.vis_predictor_0 = precision.dense(1)

    @precision.wrapped
    def encode(self, frames):
        """(B, S, H, W, 3) in [0, 255] -> fmaps (B, S, H//stride, W//stride, 128)."""
        b, s, h, w, _ = frames.shape
        check_frame_size(h, w, self.cfg.stride)
        x = 2 * (frames.astype(jnp.float32).reshape(b * s, h, w, 3) / 255.0) - 1
        f = self.fnet(x)
        return f.reshape(b, s, *f.shape[1:])

    @precision.wrapped
    def template(self, fmap0, xys):
        """Query features: border-clamped bilinear sample of fmap0 (B, h, w, C) at xys (B, N, 2) px."""
        impl = self.cfg.lookup
        return jax.vmap(lambda f, xy: lookup.sample_clamped(f, xy, impl))(fmap0, xys / self.cfg.stride)

    @precision.wrapped
    def delta_inputs(self, pyramid, coords, ffeats):
        """Mixer inputs in (B*N, S, C) layout: features, correlations and [dx, dy, t]."""
        b, s, n, c = ffeats.shape
        fcorrs = sample_correlations(pyramid, ffeats, coords, self.cfg.corr_radius, self.cfg.lookup)
        times = jnp.asarray(torch_linspace(0, s, s))
        flows = coords - coords[:, :1]
        flows = jnp.concatenate([flows, jnp.broadcast_to(times[None, :, None, None], (b, s, n, 1))], -1)
        to_mixer = lambda x: jnp.swapaxes(x, 1, 2).reshape(b * n, s, x.shape[-1])
        return to_mixer(ffeats), to_mixer(fcorrs), to_mixer(flows)

    @precision.wrapped
    def step(self, pyramid, coords, ffeats, pin):
        """One iteration. coords (B,S,N,2) stride units, ffeats (B,S,N,C), pin (B,N,2) or None
        (frame 0 is reset to `pin` after the update). Returns (coords, ffeats, delta (B*N,S,130))."""
        b, s, n, c = ffeats.shape
        coords = jax.lax.stop_gradient(coords)
        f_, c_, fl_ = self.delta_inputs(pyramid, coords, ffeats)
        delta = self.delta_block(f_, c_, fl_)
        dfeat = delta[..., 2:].reshape(b * n * s, c)
        new = gelu(self.ffeat_updater_0(self.norm(dfeat))) + f_.reshape(b * n * s, c)
        ffeats = jnp.swapaxes(new.reshape(b, n, s, c), 1, 2)
        coords = coords + jnp.swapaxes(delta[..., :2].reshape(b, n, s, 2), 1, 2)
        if pin is not None:
            coords = coords.at[:, 0].set(pin)
        return coords, ffeats, delta

    @precision.wrapped
    def visibility(self, ffeats):
        """Visibility logits (B, S, N) from track features (B, S, N, C)."""
        return self.vis_predictor_0(ffeats)[..., 0]

    @precision.wrapped
    def track(self, fmaps, xys, iters: int = 6, coords_init=None, feat_init=None,
              pin_first: bool = True, with_score_maps: bool = False):
        """The iterative part on precomputed fmaps (B, S, h, w, C).

        xys (B, N, 2) px in frame 0; coords_init (B, S, N, 2) px; feat_init (B, N, C).
        pin_first: reset frame 0 to the query after each update (official `is_train=False`).
        Returns {'coords': (B,S,N,2) px, 'coords_iters': (iters,B,S,N,2) px, 'vis_logits' (B,S,N),
                 'ffeat' (B,N,C) template, 'ffeats' (B,S,N,C), 'score_maps' (iters,B,S,N,h,w) if asked}.
        """
        cfg = self.cfg
        b, s = fmaps.shape[:2]
        n = xys.shape[1]
        coords = (jnp.broadcast_to((xys / cfg.stride)[:, None], (b, s, n, 2)) if coords_init is None
                  else coords_init / cfg.stride)
        ffeat = self.template(fmaps[:, 0], coords[:, 0] * cfg.stride) if feat_init is None else feat_init
        ffeats = jnp.broadcast_to(ffeat[:, None], (b, s, n, ffeat.shape[-1]))
        pin = coords[:, 0] if pin_first else None
        pyramid = fmap_pyramid(fmaps, cfg.corr_levels)

        def body(mdl, carry, _):
            coords, ffeats = carry
            out = {}
            if with_score_maps:
                out["score_maps"] = score_maps(pyramid, ffeats)
            coords, ffeats, _ = mdl.step(pyramid, coords, ffeats, pin)
            out["coords"] = coords * cfg.stride
            return (coords, ffeats), out

        scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, length=iters,
                       unroll=min(self.unroll, iters))
        (coords, ffeats), outs = scan(self, (coords, ffeats), None)
        result = {"coords": coords * cfg.stride, "coords_iters": outs["coords"],
                  "vis_logits": self.visibility(ffeats), "ffeat": ffeat, "ffeats": ffeats}
        if with_score_maps:
            result["score_maps"] = outs["score_maps"]
        return result

    @precision.wrapped
    def __call__(self, xys, frames, iters: int = 6, coords_init=None, feat_init=None,
                 pin_first: bool = True, with_score_maps: bool = False):
        """Official forward: encode the S frames and track. See `track` for the outputs."""
        return self.track(self.encode(frames), xys, iters, coords_init, feat_init, pin_first,
                          with_score_maps)
