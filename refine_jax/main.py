"""refine_jax main job: the stages named by the config, in order, in one work directory.

  python -m refine_jax.main --config=configs/raft.py[:PRESET] --workdir=DIR [--config.x=...]

Each stage reads what the previous ones wrote in WORKDIR, so a stage can be re-run alone
(`--config.stages=eval,`). With no `init` checkpoint and no `data.videos`, the configs run the
embedded demo on procedural video (stages generate, pretrain first).
"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file[:preset]",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory (created; resumed if it exists)")


def stages():
    from refine_jax import demo, evaluate
    from refine_jax.labels import generate
    from refine_jax.train import trainer
    return {"generate": demo.generate, "pretrain": demo.pretrain, "label": generate.run,
            "train": trainer.run, "eval": evaluate.run}


def resolve(config, workdir: str):
    """Fill the embedded demo's defaults: init = the pre-trained model, videos = the target domain."""
    from refine_jax import demo
    if not config.init:
        config.init = demo.pretrained_dir(workdir)
    if not config.data.videos:
        config.data.videos = demo.target_dir(workdir)
    return config


def run(config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    config = resolve(config, workdir)
    table, summary = stages(), {}
    names = config.stages
    if isinstance(names, str):
        names = (names,)
    names = [n.strip() for item in names for n in item.split(",") if n.strip()]  # '--config.stages=a,b'
    for name in names:
        if name not in table:
            raise ValueError(f"unknown stage {name!r}; known: {', '.join(table)}")
        logging.info("stage %s", name)
        summary[name] = table[name](config, workdir)
        if name == "train" and summary[name].get("preempted"):
            break
    return summary


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; progress bars say enough
    summary = run(_CONFIG.value, _WORKDIR.value)
    ev = summary.get("eval")
    if ev:
        p = ev["primary"]
        after = ev["after"][p] if ev["after"] else float("nan")
        print(f"{p}: before {ev['before'][p]:.4f} -> after {after:.4f} "
              f"(report: {os.path.join(_WORKDIR.value, 'eval', 'report.md')})")
    else:
        print(json.dumps({k: (v if isinstance(v, (int, float, str)) else "done") for k, v in summary.items()}))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
