"""The pipeline: the stage table, the demo's defaults, the label-and-train rounds.

A stage is `run(config, workdir, ...) -> summary dict` in refine_jax/stages/ (label, train, oracle,
evaluate) or refine_jax/demo/stages.py (generate, pretrain); each reads what the previous ones wrote
in WORKDIR (refine_jax/paths.py), so a stage can be re-run alone (`--config.stages=eval,`). With no
`init` checkpoint and no `data.videos`, the configs run the embedded demo on procedural video
(stages generate, pretrain first).
"""
from __future__ import annotations

import os
import time

from absl import logging

from refine_jax import fs, paths


def stages() -> dict:
    """{name: run(config, workdir, ...)} of every stage, in pipeline order."""
    from refine_jax.demo import stages as demo
    from refine_jax.stages import evaluate, label, oracle, train
    return {"generate": demo.generate, "pretrain": demo.pretrain, "label": label.run,
            "train": train.run, "oracle": oracle.run, "eval": evaluate.run}


def stage_names(config) -> list:
    """The configured stages as a list ('--config.stages=a,b' arrives as one string)."""
    names = config.stages
    if isinstance(names, str):
        names = (names,)
    return [n.strip() for item in names for n in item.split(",") if n.strip()]


def resolve(config, workdir: str):
    """Fill the embedded demo's defaults: init = the model pre-trained in this workdir when it has
    (or had) a `pretrain` stage, else the committed stand-in; videos = the generated target domain."""
    from refine_jax.demo import stages as demo
    names = stage_names(config)
    if not config.init and ("pretrain" in names or fs.exists(demo.pretrained_dir(workdir))):
        config.init = demo.pretrained_dir(workdir)
    elif not config.init and set(names) & {"label", "train", "oracle", "eval"}:
        config.init = demo.standin_dir(config.demo.arch)
    if not config.data.videos:
        config.data.videos = demo.target_dir(workdir)
    return config


# the stages that draw progress bars (and take progress=False to draw none)
WITH_PROGRESS = frozenset({"label", "train", "eval"})


def run(config, workdir: str, progress: bool = True) -> dict:
    """Run the configured stages in WORKDIR. With `label.rounds` = R > 1, a `label, train` pair
    runs R times: round k > 1 in WORKDIR/round<k>, labelling with the model of round k - 1; `eval`
    then compares the initial model with the last round's."""
    fs.makedirs(workdir)
    config = resolve(config, workdir)
    table, summary = stages(), {}

    def timed(key, stage, *args, **kwargs):
        """summary[key] = stage(*args, **kwargs), and its wall seconds in summary['stage_seconds']."""
        t0 = time.time()
        summary[key] = stage(*args, **kwargs)
        summary.setdefault("stage_seconds", {})[key] = round(time.time() - t0, 1)
        return summary[key]

    names = stage_names(config)
    for name in names:
        if name not in table:
            raise ValueError(f"unknown stage {name!r}; known: {', '.join(table)}")
    if "oracle" in names:  # refuse now, not after the training stages
        from refine_jax.stages import oracle
        oracle.check_no_holdout(config)
        if "generate" not in names:
            oracle.check_ground_truth(config)
    rounds = max(int(config.label.get("rounds", 1)), 1)
    trained, i = workdir, 0
    while i < len(names):
        name = names[i]
        if name == "label" and names[i + 1:i + 2] == ["train"] and rounds > 1:
            init = config.init
            for r in range(1, rounds + 1):
                trained = paths.round_dir(workdir, r)
                logging.info("round %d of %d: label and train in %s from %s", r, rounds, trained, init)
                timed(f"label_round{r}", table["label"], config, trained, init=init, progress=progress)
                out = timed(f"train_round{r}", table["train"], config, trained, init=init, progress=progress)
                if out.get("preempted"):
                    summary["preempted"] = f"train_round{r}"
                    return summary
                init = out["model"]
            i += 2
            continue
        logging.info("stage %s", name)
        timed(name, table[name], config, workdir, **({"trained": trained} if name == "eval" else {}),
              **({"progress": progress} if name in WITH_PROGRESS else {}))
        # a training stage (pretrain, train, oracle) that saved on SIGTERM: the later stages would
        # read a model it has not written yet; rerunning the command resumes it
        if isinstance(summary[name], dict) and summary[name].get("preempted"):
            summary["preempted"] = name
            break
        i += 1
    return summary


def default_workdir(config_arg: str) -> str:
    """runs/<config file stem>[_<preset>] for '--config=configs/pips.py[:preset]'."""
    path, _, preset = config_arg.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{stem}_{preset}" if preset else stem)
