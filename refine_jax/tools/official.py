"""The official PyTorch RAFT and PIPs, imported from a user's checkout, for side-by-side timing.

Nothing of the official code is part of this project: the user passes the folder of their own
clone (github.com/princeton-vl/RAFT, github.com/aharley/pips). Each is imported in isolation (both
have top-level modules named `utils`), runs on the CPU in eval mode with `torch.no_grad()` and the
weights of our model (through the strict converter's export), so both sides compute the same
function on the same inputs. The checkout is not edited: the PIPs code asks for CUDA in two
places (the `device='cuda'` defaults of utils.basic.meshgrid2d / gridcloud2d, and
`torch.tensor(0.0).cuda()` at the top of Pips.forward); while it runs, those defaults are the CPU
and `Tensor.cuda` returns the tensor itself.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import sys
from typing import Iterator

import numpy as np

# top-level module names of the two checkouts that would collide with each other or with ours
_MODULES = ("raft", "update", "extractor", "corr", "utils", "nets", "saverloader")


@contextlib.contextmanager
def isolated_path(folder: str) -> Iterator[None]:
    """`folder` first on sys.path, and the modules it brings forgotten afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _MODULES}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)
        for k in [k for k in sys.modules if k.split(".")[0] in _MODULES]:
            del sys.modules[k]
        sys.modules.update(saved)


def _check_checkout(path: str, rel: str, repo: str) -> str:
    if not os.path.isfile(os.path.join(path, rel)):
        raise FileNotFoundError(f"{path}: not a checkout of {repo} (no {rel})")
    return os.path.abspath(path)


def _state_dict(variables, cfg):
    """Our variables as the bare module's state_dict (the checkpoint layout's 'module.' prefix of
    DataParallel removed)."""
    import torch
    from refine_jax import pth
    return {k.removeprefix("module."): torch.from_numpy(np.array(v))
            for k, v in pth.variables_to_state_dict(variables, cfg).items()}


def _raft_model(path: str, cfg, variables):
    """The official RAFT module of the checkout at `path` holding `variables`."""
    root = _check_checkout(path, "core/raft.py", "princeton-vl/RAFT")
    with isolated_path(os.path.join(root, "core")):
        module = importlib.import_module("raft")
        args = argparse.Namespace(small=cfg.small, mixed_precision=False, alternate_corr=False, dropout=0.0)
        model = module.RAFT(args)
    model.load_state_dict(_state_dict(variables, cfg))
    return model


def raft(path: str, cfg, variables, iters: int):
    """A function (image1, image2) -> flow (B, H, W, 2) numpy of the official RAFT on `variables`;
    images (B, H, W, 3) numpy in [0, 255], sides multiples of 8."""
    import torch
    model = _raft_model(path, cfg, variables)
    model.eval()

    def run(image1, image2):
        with torch.no_grad():
            a = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image1, -1, 1), np.float32))
            b = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image2, -1, 1), np.float32))
            _, flow = model(a, b, iters=iters, test_mode=True)
        return flow.permute(0, 2, 3, 1).numpy()
    return run


@contextlib.contextmanager
def on_cpu(basic) -> Iterator[None]:
    """The PIPs checkout's CUDA defaults pointed at the CPU for the duration."""
    import torch
    saved = {n: getattr(basic, n) for n in ("meshgrid2d", "gridcloud2d")}
    cuda = torch.Tensor.cuda
    for n, f in saved.items():
        setattr(basic, n, functools.partial(f, device="cpu"))
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(basic, n, f)
        torch.Tensor.cuda = cuda


def _pips_model(path: str, cfg, variables):
    """(the official Pips module of the checkout at `path` holding `variables`, its utils.basic)."""
    root = _check_checkout(path, "nets/pips.py", "aharley/pips")
    with isolated_path(root):
        module = importlib.import_module("nets.pips")
        basic = importlib.import_module("utils.basic")
        model = module.Pips(S=cfg.S, stride=cfg.stride)
    model.load_state_dict(_state_dict(variables, cfg))
    return model, basic


def pips(path: str, cfg, variables, iters: int):
    """A function (xys (B, N, 2), frames (B, S, H, W, 3) in [0, 255]) -> coords (B, S, N, 2) numpy
    of the official PIPs on `variables`, on the CPU."""
    import torch
    model, basic = _pips_model(path, cfg, variables)
    model.eval()

    def run(xys, frames):
        with torch.no_grad(), on_cpu(basic):
            x = torch.from_numpy(np.asarray(xys, np.float32))
            f = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(frames, np.float32), -1, 2)))
            out = model(x, f, iters=iters)
        return out[0][-1].numpy()
    return run


def raft_train_step(path: str, cfg, variables, iters: int, gamma: float, clip: float, lr: float,
                    weight_decay: float, bf16: bool = False):
    """A function (image1, image2 (B, H, W, 3) [0, 255], flow (B, H, W, 2), valid (B, H, W)) ->
    (loss, gradient norm before clipping) that runs one optimiser step of the official RAFT in
    training mode (batch statistics) on `variables`: the training forward with `iters` iterations,
    the sequence loss of the official train.py (gamma^(n-1-i) weighted L1, the mean over all
    pixels of valid & |flow| < 400), backward, clip_grad_norm_ and AdamW (eps 1e-8) - the loop of
    train.py, without its data and logging. `bf16`: the forward and loss under CPU bfloat16
    autocast. The loss is written here (train.py imports cv2, its datasets and tensorboard at the
    top), from the official formula."""
    import torch
    model = _raft_model(path, cfg, variables)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, eps=1e-8)
    tensor = lambda x: torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32)))

    def step(image1, image2, flow, valid):
        a, b = (tensor(np.moveaxis(x, -1, 1)) for x in (image1, image2))
        gt, v = tensor(np.moveaxis(flow, -1, 1)), tensor(valid)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            preds = model(a, b, iters=iters)
        mask = (v >= 0.5) & (torch.sum(gt ** 2, dim=1).sqrt() < 400)
        loss = 0.0
        for i, p in enumerate(preds):
            loss = loss + gamma ** (len(preds) - i - 1) * (mask[:, None] * (p.float() - gt).abs()).mean()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return float(loss.detach()), float(norm)
    return step


def pips_train_step(path: str, cfg, variables, iters: int, clip: float, lr: float, weight_decay: float,
                    bf16: bool = False):
    """A function (frames (B, S, H, W, 3) [0, 255], tracks (B, S, N, 2) px) -> (loss, gradient norm
    before clipping) that runs one optimiser step of the official PIPs as the reference refinement
    trains it: `Pips.forward(tracks[:, 0], frames, iters, trajs_g=tracks, vis_g=1, valids=1)`, the
    total seq_loss + ce_loss (its visibility loss is computed and left out), backward,
    clip_grad_norm_ and AdamW (eps 1e-8). `bf16`: the forward and loss under CPU bfloat16 autocast."""
    import torch
    model, basic = _pips_model(path, cfg, variables)
    model.train()  # no effect on PIPs (no batch norm, no dropout); as the reference loop
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, eps=1e-8)

    def step(frames, tracks):
        rgbs = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(frames, np.float32), -1, 2)))
        trajs = torch.from_numpy(np.asarray(tracks, np.float32))
        ones = torch.ones(trajs.shape[:3])
        opt.zero_grad()
        with on_cpu(basic), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            *_, (seq_loss, _, ce_loss) = model(trajs[:, 0], rgbs, iters=iters, trajs_g=trajs, vis_g=ones,
                                               valids=ones)
            loss = seq_loss.float() + ce_loss.float()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return float(loss.detach()), float(norm)
    return step


def raft_label(path: str, cfg, variables, iters: int, alpha: float = 0.002, beta: float = 0.1,
               color_thresh: float = 0.005):
    """A function (image1, image2 (B, H, W, 3) [0, 255]) -> (forward flow (B, H, W, 2), valid
    (B, H, W) bool) of the official RAFT run forward and backward (one batch of both directions,
    test mode) followed by the reference's cycle check, written here in PyTorch from its formula:
    |f + b(x + f)| <= alpha (|f| + |b|) + beta (b sampled bilinearly, zeros outside) and the mean
    absolute colour difference to image 2 at x + f under color_thresh on the [-0.5, 0.5] scale."""
    import torch
    import torch.nn.functional as F
    model = _raft_model(path, cfg, variables)
    model.eval()

    def sample(x, flow):
        _, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        gx = 2 * (xs + flow[:, 0]) / (w - 1) - 1
        gy = 2 * (ys + flow[:, 1]) / (h - 1) - 1
        return F.grid_sample(x, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="zeros", align_corners=True)

    def run(image1, image2):
        with torch.no_grad():
            a = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image1, -1, 1), np.float32))
            b = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image2, -1, 1), np.float32))
            n = a.shape[0]
            _, flows = model(torch.cat([a, b]), torch.cat([b, a]), iters=iters, test_mode=True)
            fw, bw = flows[:n], flows[n:]
            norm = lambda v: torch.sqrt(torch.sum(v ** 2, 1))
            consistent = norm(fw + sample(bw, fw)) <= alpha * (norm(fw) + norm(bw)) + beta
            colour = torch.mean(torch.abs(sample(b / 255.0 - 0.5, fw) - (a / 255.0 - 0.5)), 1)
            valid = consistent & (colour < color_thresh)
        return fw.permute(0, 2, 3, 1).numpy(), valid.numpy()
    return run
