"""Official PyTorch checkpoints <-> refine_jax Flax variables, strictly.

Reads `raft-*.pth` (keys `module.*`), refining-motion-code RAFT (`model.module.*`), the PIPs
reference file (`{'model_state_dict': ..., 'optimizer_state_dict': ...}`) and fine-tuned PIPs
(plain state_dict). Every key is mapped mechanically (PyTorch `layer2.0.conv1.weight` is Flax
`layer2_0/conv1/kernel`), every shape is checked, and any missing or unexpected key is an error
that lists them. `export` writes our variables back as an official-layout state_dict.

The command line is refine_jax/convert.py.
"""
from __future__ import annotations

import io
import os
from collections import OrderedDict
from typing import Dict, Tuple

import numpy as np
import jax
import jax.numpy as jnp
from flax import traverse_util

from refine_jax import models

# RAFT's cnet stores the strided shortcut's BatchNorm twice (the same module under two names).
_ALIAS = ("downsample.1.", "norm3.")
_BN_BUFFERS = {"running_mean": "mean", "running_var": "var", "num_batches_tracked": "num_batches_tracked"}


class CheckpointMismatch(ValueError):
    """A state_dict that does not fit the architecture; the message lists every problem."""


# ----------------------------------------------------------------------------------------------
# Names.

def torch_module_to_flax(module_path: str) -> Tuple[str, ...]:
    """'cnet.layer2.0.norm3' -> ('cnet', 'layer2_0', 'norm3'): numeric parts join their parent."""
    out = []
    for part in module_path.split("."):
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return tuple(out)


def flax_module_to_torch(path: Tuple[str, ...]) -> str:
    """Inverse of `torch_module_to_flax`: ('to_delta_1_0', 'fn_0') -> 'to_delta.1.0.fn.0'."""
    parts = []
    for name in path:
        tokens = name.split("_")
        head = []
        while tokens and tokens[-1].isdigit() and len(tokens) > 1:
            head.insert(0, tokens.pop())
        parts.append("_".join(tokens))
        parts.extend(head)
    return ".".join(parts)


def _leaf_to_flax(leaf: str, value: np.ndarray):
    """(collection, flax leaf name, converted value) for one PyTorch tensor."""
    if leaf in _BN_BUFFERS:
        if leaf == "num_batches_tracked":
            value = value.astype(np.int32)
        return "batch_stats", _BN_BUFFERS[leaf], value
    if leaf == "bias":
        return "params", "bias", value
    if leaf == "weight":
        if value.ndim == 4:   # Conv2d [O, I, kh, kw] -> [kh, kw, I, O]
            return "params", "kernel", value.transpose(2, 3, 1, 0)
        if value.ndim == 3:   # Conv1d [O, I, k] -> [k, I, O]
            return "params", "kernel", value.transpose(2, 1, 0)
        if value.ndim == 2:   # Linear [out, in] -> [in, out]
            return "params", "kernel", value.T
        if value.ndim == 1:   # norm weight
            return "params", "scale", value
    raise CheckpointMismatch(f"no Flax equivalent for a '{leaf}' tensor of shape {value.shape}")


def _leaf_to_torch(collection: str, leaf: str, value: np.ndarray):
    """(PyTorch leaf name, value) for one Flax leaf; the inverse of `_leaf_to_flax`."""
    if collection == "batch_stats":
        name = {v: k for k, v in _BN_BUFFERS.items()}[leaf]
        return name, value.astype(np.int64) if name == "num_batches_tracked" else value
    if leaf == "kernel":
        if value.ndim == 4:
            return "weight", value.transpose(3, 2, 0, 1)
        if value.ndim == 3:
            return "weight", value.transpose(2, 1, 0)
        return "weight", value.T
    if leaf == "scale":
        return "weight", value
    return leaf, value


# ----------------------------------------------------------------------------------------------
# Reading PyTorch files.

def load_torch_state_dict(path: str) -> "OrderedDict[str, np.ndarray]":
    """Read a .pth safely (`weights_only=True`) and return numpy tensors, prefixes untouched."""
    import torch  # lazy: only needed to read .pth files

    from refine_jax import fs
    if not fs.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        if fs.is_remote(path):  # gs://...: torch reads file objects, not URLs
            with fs.open_file(path, "rb") as f:
                obj = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or hostile files
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else ""  # torch's advice would be unsafe here
        raise ValueError(f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True "
                         f"({type(e).__name__}: {first[:200]})") from e
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]  # PIPs reference format; the optimizer state is ignored
    if not isinstance(obj, dict) or not all(hasattr(v, "numpy") for v in obj.values()):
        raise ValueError(f"{path}: expected a state_dict (or a dict with 'model_state_dict') of "
                         f"tensors, got {type(obj).__name__}")
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in obj.items())


def strip_prefixes(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Drop a leading `model.` and then `module.` (DataParallel, refining-motion-code wrappers)."""
    out = OrderedDict()
    for k, v in state.items():
        name = k
        for prefix in ("model.", "module."):
            name = name.removeprefix(prefix)
        out[name] = v
    return out


def detect_arch(state: Dict[str, np.ndarray]) -> str:
    """Guess the architecture from the (prefix-stripped) keys."""
    if any(k.startswith("delta_block.") for k in state):
        return "pips"
    if "update_block.gru.convz.weight" in state:
        return "raft_small"
    if "update_block.gru.convz1.weight" in state:
        return "raft"
    raise CheckpointMismatch("the state_dict matches none of RAFT, RAFT-small or PIPs "
                             f"(first keys: {', '.join(list(state)[:5])})")


# ----------------------------------------------------------------------------------------------
# The strict map.

def count_params(variables) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"])))


def state_dict_to_variables(state: Dict[str, np.ndarray], cfg, source: str = "checkpoint"):
    """Map an official state_dict (any prefix) onto the Flax variables of `cfg`, strictly.

    Raises CheckpointMismatch naming every missing, unexpected or mis-shaped key.
    """
    state = strip_prefixes(state)
    expected = traverse_util.flatten_dict(models.abstract_variables(cfg))
    problems, flat, seen = [], {}, set()
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if _ALIAS[0] in key + "." and key.replace(*_ALIAS) in state:
            twin = key.replace(*_ALIAS)
            if not np.array_equal(value, state[twin]):
                problems.append(f"aliased BatchNorm entry {key} differs from {twin}")
            continue
        try:
            collection, fleaf, converted = _leaf_to_flax(leaf, np.asarray(value))
        except CheckpointMismatch as e:
            problems.append(f"unexpected key {key}: {e}")
            continue
        path = (collection,) + torch_module_to_flax(module) + (fleaf,)
        if path not in expected:
            problems.append(f"unexpected key {key} {list(value.shape)}")
            continue
        seen.add(path)
        want = expected[path]
        if tuple(converted.shape) != tuple(want.shape):
            problems.append(f"shape mismatch for {key}: got {list(value.shape)}, expected the "
                            f"equivalent of Flax {'/'.join(path)} {list(want.shape)}")
            continue
        flat[path] = jnp.asarray(converted.astype(want.dtype))
    for path in expected:
        if path not in seen:
            problems.append(f"missing key {_torch_key(path)} (Flax {'/'.join(path)})")
    if problems:
        raise CheckpointMismatch(
            f"{source}: does not match {cfg.arch} ({len(problems)} problems):\n  " + "\n  ".join(problems))
    variables = traverse_util.unflatten_dict(flat)
    n = count_params(variables)
    if n != models.PARAM_COUNTS[cfg.arch]:
        raise CheckpointMismatch(f"{source}: {n} parameters, expected {models.PARAM_COUNTS[cfg.arch]} "
                                 f"for {cfg.arch}")
    return variables


def _torch_key(path: Tuple[str, ...]) -> str:
    leaf, _ = _leaf_to_torch(path[0], path[-1], np.zeros((1, 1)))
    return f"{flax_module_to_torch(path[1:-1])}.{leaf}"


def variables_to_state_dict(variables, cfg) -> "OrderedDict[str, np.ndarray]":
    """Our variables -> an official-layout state_dict (RAFT keys get the `module.` prefix and the
    cnet BatchNorm aliases, as the published files have)."""
    out = OrderedDict()
    for path, value in traverse_util.flatten_dict(jax.device_get(variables)).items():
        leaf, v = _leaf_to_torch(path[0], path[-1], np.asarray(value))
        out[f"{flax_module_to_torch(path[1:-1])}.{leaf}"] = np.array(v, order="C")  # keeps 0-d
    if cfg.arch == "raft":
        for key in [k for k in out if k.startswith("cnet.") and ".norm3." in k]:
            out[key.replace(_ALIAS[1], _ALIAS[0])] = out[key]
    if cfg.arch in ("raft", "raft_small"):
        out = OrderedDict((f"module.{k}", v) for k, v in out.items())
    return out


def export_pth(variables, cfg, path: str) -> None:
    """Write an official-layout `.pth` (atomically: temporary name, then rename)."""
    import torch

    state = OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in
                        variables_to_state_dict(variables, cfg).items())
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def convert_file(src: str, arch: str | None = None):
    """Read an official .pth and return (cfg, variables, provenance)."""
    state = strip_prefixes(load_torch_state_dict(src))
    found = detect_arch(state)
    if arch is not None and arch != found:
        raise CheckpointMismatch(f"{src}: --arch={arch} but the keys are those of {found}")
    cfg = models.model_config(found)
    variables = state_dict_to_variables(state, cfg, source=src)
    from refine_jax.data.shards import sha256_file
    provenance = {"source": os.path.basename(src), "source_sha256": sha256_file(src),
                  "converted_by": "refine_jax.convert"}
    return cfg, variables, provenance
