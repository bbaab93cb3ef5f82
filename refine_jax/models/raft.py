"""RAFT (Teed & Deng, 2020), large and small, in Flax Linen, layer for layer as the official code.

Shapes: images (B, H, W, 3) float in [0, 255], H and W multiples of 8 (use `pad_images`). Flow is
(B, H, W, 2) with last axis (dx, dy) in pixels; the low-resolution flow lives on the (H/8, W/8) grid
in 1/8-resolution pixels. Iterations run as an `nn.scan`, so compile time does not grow with `iters`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from refine_jax.models import corr as corr_lib, lookup, precision
from refine_jax.models.layers import BasicEncoder, SmallEncoder, conv

MIN_SIDE = 128  # padded image sides below this make a 1-px pyramid level: NaN in the official model


@dataclasses.dataclass(frozen=True)
class RAFTConfig:
    """Architecture of one RAFT variant. `small` selects RAFT-small (docs/method.md, "RAFT"). The run-time
    choices that do not change the weights: `precision` ('highest' | 'bf16', models/precision.py),
    `lookup` ('auto' | 'gather' | 'einsum') and `corr` ('auto' | 'volume' | 'alt') (models/lookup.py)."""
    small: bool = False
    corr_levels: int = 4
    precision: str = "highest"
    lookup: str = "auto"
    corr: str = "auto"

    @property
    def arch(self) -> str:
        return "raft_small" if self.small else "raft"

    @property
    def corr_radius(self) -> int:
        return 3 if self.small else 4

    @property
    def hidden_dim(self) -> int:
        return 96 if self.small else 128

    @property
    def context_dim(self) -> int:
        return 64 if self.small else 128

    @property
    def fnet_dim(self) -> int:
        return 128 if self.small else 256

    def to_dict(self) -> dict:
        return {"arch": self.arch, "small": self.small, "corr_levels": self.corr_levels,
                "precision": self.precision, "lookup": self.lookup, "corr": self.corr}


# ----------------------------------------------------------------------------------------------
# Padding (InputPadder) and the size check.

def pad_amounts(h: int, w: int, mode: str = "sintel"):
    """(left, right, top, bottom) of InputPadder: pad to a multiple of 8, 'sintel' or 'kitti' mode."""
    pad_h = (((h // 8) + 1) * 8 - h) % 8
    pad_w = (((w // 8) + 1) * 8 - w) % 8
    left, right = pad_w // 2, pad_w - pad_w // 2
    if mode == "sintel":
        top, bottom = pad_h // 2, pad_h - pad_h // 2
    elif mode == "kitti":
        top, bottom = 0, pad_h
    else:
        raise ValueError(f"padding mode must be 'sintel' or 'kitti', got {mode!r}")
    return left, right, top, bottom


def pad_images(images, mode: str = "sintel"):
    """Edge-replicate (..., H, W, C) to multiples of 8. Returns (padded, (l, r, t, b))."""
    h, w = images.shape[-3], images.shape[-2]
    lrtb = pad_amounts(h, w, mode)
    l, r, t, b = lrtb
    widths = [(0, 0)] * (images.ndim - 3) + [(t, b), (l, r), (0, 0)]
    return jnp.pad(images, widths, mode="edge"), lrtb


def unpad(x, lrtb):
    """Crop (..., Hp, Wp, C) back to the unpadded size."""
    l, r, t, b = lrtb
    hp, wp = x.shape[-3], x.shape[-2]
    return x[..., t:hp - b, l:wp - r, :]


def check_image_size(h: int, w: int, what: str = "frames") -> None:
    """Raise a clear error for frames RAFT cannot process (padded side < 128 px, spec T8)."""
    l, r, t, b = pad_amounts(h, w)
    hp, wp = h + t + b, w + l + r
    if hp < MIN_SIDE or wp < MIN_SIDE:
        raise ValueError(
            f"{what} of {h}x{w} px pad to {hp}x{wp}; RAFT needs every padded side >= {MIN_SIDE} px "
            f"(smaller sizes give a 1-px correlation level and NaN flow in the official model).")


# ----------------------------------------------------------------------------------------------
# Correlation pyramid.

def build_corr_pyramid(fmap1, fmap2, levels: int):
    """All-pairs correlation volume and its pooled pyramid.

    fmap1, fmap2 (B, h, w, C) -> list of (B*h*w, h_l, w_l) maps, level l pooled l times over the
    second image's axes (floor mode). Values are <f1, f2> / sqrt(C).
    """
    b, h, w, c = fmap1.shape
    f1 = fmap1.reshape(b, h * w, c).astype(jnp.float32)
    f2 = fmap2.reshape(b, h * w, c).astype(jnp.float32)
    vol = jnp.einsum("bic,bjc->bij", f1, f2, precision=jax.lax.Precision.HIGHEST)
    vol = vol / jnp.sqrt(jnp.float32(c))
    vol = vol.reshape(b * h * w, h, w, 1)
    pyramid = [vol[..., 0]]
    for _ in range(levels - 1):
        vol = corr_lib.avg_pool2(vol)
        pyramid.append(vol[..., 0])
    return pyramid


def lookup_pyramid(pyramid, coords, radius: int, impl: str = "gather"):
    """Windows around `coords` (B, h, w, 2) in every level -> (B, h, w, levels*(2r+1)^2).

    `pyramid` is build_corr_pyramid's volumes, read with the `impl` lookup, or {'fmap1', 'levels'}
    (models/lookup.py) for correlations computed on the fly."""
    if isinstance(pyramid, dict):
        return lookup.alt_windows(pyramid["fmap1"], pyramid["levels"], coords, radius)
    b, h, w, _ = coords.shape
    xy = coords.reshape(b * h * w, 2)
    out = [lookup.window(vol, xy / (2 ** i), radius, impl) for i, vol in enumerate(pyramid)]
    return jnp.concatenate(out, axis=-1).reshape(b, h, w, -1)


def coords_grid(b: int, h: int, w: int):
    """(B, h, w, 2) pixel grid with last axis (x, y)."""
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    return jnp.broadcast_to(jnp.stack([xs, ys], axis=-1), (b, h, w, 2))


# ----------------------------------------------------------------------------------------------
# Upsampling.

def convex_upsample(flow, mask):
    """Convex upsampling: flow (N, H, W, 2) 1/8-res, mask (N, H, W, 576) -> (N, 8H, 8W, 2) pixels.

    Mask channel c = k*64 + i*8 + j (k: 3x3 neighbour, row-major; i, j: sub-pixel row, column).
    Neighbours outside the map count as zero flow (unfold is zero padded).
    """
    n, h, w, _ = flow.shape
    m = jax.nn.softmax(mask.reshape(n, h, w, 9, 8, 8), axis=3)
    f = jnp.pad(8.0 * flow, ((0, 0), (1, 1), (1, 1), (0, 0)))
    nbrs = jnp.stack([f[:, ky:ky + h, kx:kx + w] for ky in range(3) for kx in range(3)], axis=3)
    up = jnp.einsum("nhwkij,nhwkc->nhiwjc", m, nbrs, precision=jax.lax.Precision.HIGHEST)
    return up.reshape(n, 8 * h, 8 * w, 2)


def upflow8(flow):
    """RAFT-small upsampling: 8 * bilinear align_corners=True resize to 8x."""
    h, w = flow.shape[-3], flow.shape[-2]
    return 8.0 * corr_lib.resize_align_corners(flow, (8 * h, 8 * w))


# ----------------------------------------------------------------------------------------------
# Update blocks.

class BasicMotionEncoder(nn.Module):
    @nn.compact
    def __call__(self, flow, corr):
        cor = nn.relu(conv(256, 1, 1, 0, name="convc1")(corr))
        cor = nn.relu(conv(192, 3, 1, 1, name="convc2")(cor))
        flo = nn.relu(conv(128, 7, 1, 3, name="convf1")(flow))
        flo = nn.relu(conv(64, 3, 1, 1, name="convf2")(flo))
        out = nn.relu(conv(126, 3, 1, 1, name="conv")(jnp.concatenate([cor, flo], -1)))
        return jnp.concatenate([out, flow], -1)


class SmallMotionEncoder(nn.Module):
    @nn.compact
    def __call__(self, flow, corr):
        cor = nn.relu(conv(96, 1, 1, 0, name="convc1")(corr))
        flo = nn.relu(conv(64, 7, 1, 3, name="convf1")(flow))
        flo = nn.relu(conv(32, 3, 1, 1, name="convf2")(flo))
        out = nn.relu(conv(80, 3, 1, 1, name="conv")(jnp.concatenate([cor, flo], -1)))
        return jnp.concatenate([out, flow], -1)


def _gru_step(h, x, convz, convr, convq):
    hx = jnp.concatenate([h, x], -1)
    z = jax.nn.sigmoid(convz(hx))
    r = jax.nn.sigmoid(convr(hx))
    q = jnp.tanh(convq(jnp.concatenate([r * h, x], -1)))
    return (1 - z) * h + z * q


class SepConvGRU(nn.Module):
    """Separable ConvGRU: a (1,5) horizontal half-step, then a (5,1) vertical one; [h, x] order."""
    hidden_dim: int = 128

    @nn.compact
    def __call__(self, h, x):
        d = self.hidden_dim
        h = _gru_step(h, x, conv(d, (1, 5), 1, (0, 2), name="convz1"),
                      conv(d, (1, 5), 1, (0, 2), name="convr1"), conv(d, (1, 5), 1, (0, 2), name="convq1"))
        h = _gru_step(h, x, conv(d, (5, 1), 1, (2, 0), name="convz2"),
                      conv(d, (5, 1), 1, (2, 0), name="convr2"), conv(d, (5, 1), 1, (2, 0), name="convq2"))
        return h


class ConvGRU(nn.Module):
    """RAFT-small ConvGRU: one full step with 3x3 convs."""
    hidden_dim: int = 96

    @nn.compact
    def __call__(self, h, x):
        d = self.hidden_dim
        return _gru_step(h, x, conv(d, 3, 1, 1, name="convz"), conv(d, 3, 1, 1, name="convr"),
                         conv(d, 3, 1, 1, name="convq"))


class FlowHead(nn.Module):
    hidden: int = 256

    @nn.compact
    def __call__(self, x):
        return conv(2, 3, 1, 1, name="conv2")(nn.relu(conv(self.hidden, 3, 1, 1, name="conv1")(x)))


@jax.custom_vjp
def backward_fence(x):
    """Identity whose gradient passes through a conditional, which XLA cannot fuse across.

    Unrolled on XLA:CPU, the hidden state's cotangent `dh * (1 - z) + ...` is one elementwise chain
    through every GRU step; XLA fuses it across all iterations and copies it into each consumer
    (recomputed many times over: RAFT-large's 32-iteration train step 30.5 s with it, 15.6 s
    fenced at every iteration; docs/speed.md). `optimization_barrier` is removed before fusion
    there, so a conditional (both branches the identity) is the fence. Values are unchanged."""
    return x


def _fence_fwd(x):
    return x, None


def _fence_bwd(_, ct):
    first = ct.reshape(-1)[0]
    return (jax.lax.cond(first == first, lambda c: c, lambda c: c + 0, ct),)


backward_fence.defvjp(_fence_fwd, _fence_bwd)


class UpdateBlock(nn.Module):
    """One RAFT iteration, scanned: correlation lookup, update block, coordinate step, upsampling.

    Its parameters are exactly the official `update_block` (encoder, gru, flow_head, mask), so this
    module is named `update_block`. Carry: (net (B,h,w,hid), coords1 (B,h,w,2)). Per-iteration
    outputs: the low-res flow, and with `all_flow_up` the full-res flow (which needs each
    iteration's upsampling mask). Without it only the last mask is used, so `mask` is called once
    on the final hidden state instead of in every iteration (the official code computes it every
    time: 2.5 of RAFT-large's 17.7 GFLOPs per iteration at 368x496).
    """
    cfg: RAFTConfig
    all_flow_up: bool = False

    def setup(self):
        small = self.cfg.small
        self.encoder = (SmallMotionEncoder if small else BasicMotionEncoder)()
        self.gru = (ConvGRU if small else SepConvGRU)(self.cfg.hidden_dim)
        self.flow_head = FlowHead(128 if small else 256)
        if not small:
            self.mask_0 = conv(256, 3, 1, 1)
            self.mask_2 = conv(64 * 9, 1, 1, 0)

    def mask(self, net):
        """Convex upsampling weights (B,h,w,576) from the hidden state; None for RAFT-small."""
        if self.cfg.small:
            return None
        return 0.25 * self.mask_2(nn.relu(self.mask_0(net)))

    def __call__(self, carry, inp, pyramid, coords0):
        net, coords1 = carry
        coords1 = jax.lax.stop_gradient(coords1)
        corr = lookup_pyramid(pyramid, coords1, self.cfg.corr_radius, self.cfg.lookup)
        flow = coords1 - coords0
        motion = self.encoder(flow, corr)
        net = self.gru(net, jnp.concatenate([inp, motion], -1))
        coords1 = coords1 + self.flow_head(net)
        flow_low = coords1 - coords0
        outs = {"flow_low": flow_low}
        if self.all_flow_up:
            outs["flow_up"] = upsample(flow_low, self.mask(net))
        return (net, coords1), outs


def upsample(flow_low, up_mask):
    """Full-resolution flow: convex upsampling (large) or `upflow8` (small, `up_mask` None)."""
    return upflow8(flow_low) if up_mask is None else convex_upsample(flow_low, up_mask)


class RAFT(nn.Module):
    """RAFT. Call on padded images; returns a dict of flows (see `__call__`).

    `use_running_average` switches the context encoder's BatchNorm between running statistics
    (eval, and `freeze_bn` training) and batch statistics (the reference refinement run). Batch
    statistics need `mutable=['batch_stats']`.
    """
    cfg: RAFTConfig = RAFTConfig()
    use_running_average: bool = True
    unroll: int = 1  # scan unrolling; training on CPU unrolls fully (XLA:CPU is slow at conv
    # weight gradients inside a loop: 0.88 s vs 0.04 s for two ConvGRU steps)

    @nn.compact
    @precision.wrapped
    def __call__(self, image1, image2, iters: int = 12, flow_init: Optional[jax.Array] = None,
                 all_flow_up: bool = False):
        """image1, image2: (B, H, W, 3) in [0, 255], H, W multiples of 8.

        flow_init: optional (B, H/8, W/8, 2) warm start in 1/8-res pixels.
        Returns {'flow_low': (B,H/8,W/8,2) 1/8-res px after the last iteration,
                 'flow_low_iters': (iters,B,H/8,W/8,2), 'flow_up': (B,H,W,2) px,
                 'flow_up_iters': (iters,B,H,W,2) px, only with `all_flow_up` (training)}.
        """
        cfg = self.cfg
        b, h, w, _ = image1.shape
        if h % 8 or w % 8:
            raise ValueError(f"RAFT needs image sides that are multiples of 8, got {h}x{w}; "
                             f"pad with refine_jax.models.raft.pad_images first")
        check_image_size(h, w, "padded images")
        image1 = 2 * (image1.astype(jnp.float32) / 255.0) - 1
        image2 = 2 * (image2.astype(jnp.float32) / 255.0) - 1

        encoder = SmallEncoder if cfg.small else BasicEncoder
        # both images of a pair side by side on the batch axis (not all image1 then all image2), so
        # that a batch split over devices encodes its own pairs without moving images between them
        pairs = jnp.stack([image1, image2], 1).reshape(2 * b, h, w, 3)
        fmaps = encoder(cfg.fnet_dim, "instance", name="fnet")(pairs)
        fmaps = fmaps.reshape(b, 2, *fmaps.shape[1:])
        fmap1, fmap2 = fmaps[:, 0], fmaps[:, 1]
        cnet_norm = "none" if cfg.small else "batch"
        cnet = encoder(cfg.hidden_dim + cfg.context_dim, cnet_norm, self.use_running_average,
                       name="cnet")(image1)
        net = jnp.tanh(cnet[..., :cfg.hidden_dim])
        inp = nn.relu(cnet[..., cfg.hidden_dim:])

        if lookup.resolve_corr(cfg.corr, (h // 8) * (w // 8)) == "alt":
            pyramid = {"fmap1": fmap1, "levels": lookup.feature_pyramid(fmap2, cfg.corr_levels)}
        else:
            pyramid = build_corr_pyramid(fmap1, fmap2, cfg.corr_levels)
        coords0 = coords_grid(b, h // 8, w // 8)
        coords1 = coords0 if flow_init is None else coords0 + flow_init
        block = UpdateBlock(cfg, all_flow_up, name="update_block")
        # a scan of a function of the block, so that the same block (its parameters) is also
        # called after the loop for the final upsampling mask
        fence = self.unroll > 1  # the unrolled (CPU training) path: see backward_fence

        def body(blk, carry, *xs):
            (net, coords1), outs = blk(carry, *xs)
            return (backward_fence(net) if fence else net, coords1), outs
        scan = nn.scan(body, variable_broadcast="params",
                       split_rngs={"params": False}, in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                       length=iters, unroll=min(self.unroll, iters))
        (net, coords1), outs = scan(block, (net, coords1), inp, pyramid, coords0)
        flow_low = coords1 - coords0
        result = {"flow_low": flow_low, "flow_low_iters": outs["flow_low"]}
        if all_flow_up:
            result["flow_up_iters"] = outs["flow_up"]
            result["flow_up"] = outs["flow_up"][-1]
        else:
            result["flow_up"] = upsample(flow_low, block.mask(net))
        return result


def make_flow_fn(cfg: RAFTConfig, iters: int, mode: str = "sintel"):
    """A jitted `f(variables, image1, image2, flow_init=None) -> (flow_up, flow_low)` on unpadded
    (B, H, W, 3) [0, 255] images: pads as InputPadder, runs eval-mode RAFT, unpads.

    flow_up (B, H, W, 2) in pixels; flow_low (B, Hp/8, Wp/8, 2) in 1/8-res pixels on the padded grid
    (the warm-start input of the next pair).
    """
    model = RAFT(cfg)

    @jax.jit
    def flow_fn(variables, image1, image2, flow_init=None):
        p1, lrtb = pad_images(image1.astype(jnp.float32), mode)
        p2, _ = pad_images(image2.astype(jnp.float32), mode)
        out = model.apply(variables, p1, p2, iters=iters, flow_init=flow_init)
        return unpad(out["flow_up"], lrtb), out["flow_low"]

    def checked(variables, image1, image2, flow_init=None):
        check_image_size(image1.shape[-3], image1.shape[-2])
        return flow_fn(variables, image1, image2, flow_init)

    return checked
