"""Golden fixtures: rebuild the seed-recipe weights, save them as an official-layout .pth, convert.

The recipe is in docs/method.md ("Parity"); the draw order and the per-tensor check values are
`tests/data/weights_manifest.json`. The weights go through the real user path:
torch.save(.pth) -> refine_jax.convert.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import OrderedDict

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), "data")
MODELS = {"raft": ("raft_large_seed0", 0, "module."), "raft_small": ("raft_small_seed1", 1, "module."),
          "pips": ("pips_seed2", 2, "")}
_ALIASES = ("cnet.layer2.0.", "cnet.layer3.0.")


def recipe_tensor(rng, name, shape):
    if name.endswith("num_batches_tracked"):
        return np.array(0, np.int64)
    if name.endswith("running_mean"):
        v = rng.normal(0.0, 0.1, shape)
    elif name.endswith("running_var"):
        v = rng.uniform(0.5, 1.5, shape)
    elif name.endswith("weight") and len(shape) == 1:
        v = 1.0 + rng.normal(0.0, 0.1, shape)
    elif name.endswith("bias"):
        v = rng.normal(0.0, 0.1, shape)
    else:
        v = rng.normal(0.0, 1.0, shape) / np.sqrt(np.prod(shape[1:]))
    return v.astype(np.float32)


@functools.lru_cache(maxsize=None)
def recipe_state_dict(arch: str) -> "OrderedDict[str, np.ndarray]":
    """The recipe weights with official keys (prefix and BatchNorm aliases included); checked
    against the manifest's sha256 over all tensors."""
    entry, seed, prefix = MODELS[arch]
    manifest = json.load(open(os.path.join(DATA, "weights_manifest.json")))[entry]
    rng = np.random.default_rng(seed)
    out, h = OrderedDict(), hashlib.sha256()
    for name, shape, *_ in manifest["tensors"]:
        v = recipe_tensor(rng, name, tuple(shape))
        h.update(np.ascontiguousarray(v).tobytes())
        out[prefix + name] = v
        if name.startswith(_ALIASES) and ".norm3." in name:
            out[prefix + name.replace(".norm3.", ".downsample.1.")] = v
    assert h.hexdigest() == manifest["sha256_all"], f"recipe does not reproduce {entry}"
    return out


def write_pth(arch: str, path: str, wrap_pips: bool = True) -> str:
    """Save the recipe weights as the official file would be: a state_dict (RAFT) or PIPs'
    `{'model_state_dict', 'optimizer_state_dict'}` dict."""
    import torch
    state = OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in recipe_state_dict(arch).items())
    obj = state
    if arch == "pips" and wrap_pips:
        obj = {"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}
    torch.save(obj, path)
    return path


def golden(name: str):
    return np.load(os.path.join(DATA, f"{name}.npz"))


def official_keys(arch):
    """Keys of the official state_dict from the spec listings in tests/data."""
    fname, section = {"raft": ("raft_keys.txt", 0), "raft_small": ("raft_keys.txt", 1),
                      "pips": ("pips_keys.txt", 0)}[arch]
    sections, cur = [], None
    for line in open(os.path.join(DATA, fname)):
        if line.startswith("# RAFT") or line.startswith("# 200 state_dict"):
            cur = []
            sections.append(cur)
        elif line.strip() and not line.startswith("#") and cur is not None:
            cur.append(line.split("\t")[0])
    return set(sections[section])
