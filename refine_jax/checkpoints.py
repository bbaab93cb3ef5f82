"""Model checkpoints on disk: a folder with Orbax-saved variables and `model.json` beside them.

Layout of a model checkpoint folder (written by `convert` and by the trainer's exports):
  model.json   {"arch", "model": config dict, "provenance": {...}}
  variables/   Orbax StandardCheckpointer save of {'params', 'batch_stats'?}

`load_model` accepts such a folder, or an original PyTorch `.pth` (converted on the fly).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import orbax.checkpoint as ocp
from etils import epath

from refine_jax import fs, models, parallel

MODEL_JSON = "model.json"
VARIABLES = "variables"


@dataclasses.dataclass
class LoadedModel:
    cfg: Any
    variables: dict
    provenance: dict

    @property
    def arch(self) -> str:
        return self.cfg.arch


def save_model(out_dir, cfg, variables, provenance: dict, replace: bool = False) -> None:
    """Save variables + config + provenance into `out_dir`; atomic. It must not exist yet unless
    `replace`, when the complete new folder takes the old one's place (the old one is deleted
    only after). With several processes every one calls it (Orbax writes collectively); the main
    one renames."""
    out = epath.Path(out_dir)
    if out.exists() and not replace:
        raise FileExistsError(f"{out}: already exists; choose a new output folder")
    tmp = out.parent / f".{out.name}.tmp"
    old = out.parent / f".{out.name}.old"
    if parallel.is_main_process():
        for leftover in (tmp, old):  # left by an interrupted save
            if leftover.exists():
                leftover.rmtree()
        tmp.mkdir(parents=True)
    parallel.barrier(f"save_model {out}: folder")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save((tmp / VARIABLES).absolute(), variables)
        ckptr.wait_until_finished()
    if parallel.is_main_process():
        fs.write_json_atomic(os.fspath(tmp / MODEL_JSON), {"arch": cfg.arch, "model": cfg.to_dict(),
                                              "provenance": provenance})
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.exists():
            old.rmtree()
    parallel.barrier(f"save_model {out}: renamed")


def exported_steps(model_dir) -> Optional[int]:
    """The training steps recorded by the model exported to model_dir, or None when there is none."""
    path = os.path.join(model_dir, MODEL_JSON)
    return fs.read_json(path)["provenance"].get("steps") if fs.exists(path) else None


def init_variables(cfg, seed: int = 0) -> dict:
    """The variables of a randomly initialised model of `cfg` (Flax default initialisers), on the host."""
    import jax
    from refine_jax.models import build_model
    model = build_model(cfg)
    if cfg.arch == "pips":
        from refine_jax.models.pips import example_inputs
        args = example_inputs(cfg)
    else:
        import jax.numpy as jnp
        x = jnp.zeros((1, 128, 128, 3), jnp.float32)
        args = (x, x)
    return jax.device_get(jax.jit(lambda: model.init(jax.random.PRNGKey(seed), *args, iters=1))())


def init_model(out_dir, cfg, seed: int = 0) -> None:
    """Save a randomly initialised model of `cfg` (`init_variables`) as a checkpoint."""
    save_model(out_dir, cfg, init_variables(cfg, seed), {"source": "random init", "seed": seed})


def fingerprint(path) -> str:
    """sha256 of a checkpoint: of the file, or of every file of a folder (names relative to it and
    bytes, sorted by name). Local paths and URLs (gs://) give the same hash for the same files."""
    import hashlib
    path = os.fspath(path).rstrip("/")
    if not fs.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file or folder")
    h = hashlib.sha256()
    if fs.isfile(path):
        files = [(os.path.basename(path), path)]
    else:
        files = sorted((os.path.join(r, n)[len(path):].lstrip("/"), os.path.join(r, n))
                       for r, _, names in fs.walk(path) for n in names)
    for rel, full in files:
        h.update(rel.encode())
        with fs.open_file(full, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


RUNTIME_FIELDS = ("precision", "lookup", "corr")  # model settings that do not change the weights


def with_runtime(cfg, runtime) -> Any:
    """`cfg` with run-time settings (config.runtime: precision, lookup, corr) replaced; a field
    the architecture lacks (PIPs has no 'corr') is skipped, an unknown one is an error."""
    runtime = dict(runtime or {})
    unknown = set(runtime) - set(RUNTIME_FIELDS)
    if unknown:
        raise ValueError(f"unknown runtime settings: {', '.join(sorted(unknown))}; "
                         f"expected {', '.join(RUNTIME_FIELDS)}")
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in runtime.items() if k in names})


def load_model(path, runtime=None) -> LoadedModel:
    """Load a model checkpoint folder or an official `.pth` file, with optional run-time
    settings (`with_runtime`)."""
    loaded = _load(path)
    if runtime:
        loaded.cfg = with_runtime(loaded.cfg, runtime)
    return loaded


def _load(path) -> LoadedModel:
    p = epath.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or folder")
    if p.is_file():
        from refine_jax import pth
        cfg, variables, provenance = pth.convert_file(os.fspath(p))
        return LoadedModel(cfg, variables, provenance)
    meta_path = p / MODEL_JSON
    if not meta_path.exists():
        raise FileNotFoundError(f"{path}: not a refine_jax checkpoint folder (no {MODEL_JSON}); "
                                f"pass a folder written by refine_jax.convert or a .pth file")
    meta = json.loads(meta_path.read_text())
    cfg = models.model_config(meta["arch"], meta["model"])
    target = models.abstract_variables(cfg)
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore((p / VARIABLES).absolute(), target)
    return LoadedModel(cfg, variables, meta.get("provenance", {}))
