"""refine_jax main job: the stages named by the config, in order, in one work directory.

  python -m refine_jax.main --config=configs/raft.py[:PRESET] [--workdir=DIR] [--config.x=...] [--debug]

--workdir defaults to runs/<config name>[_<preset>] (runs/pips, runs/raft_sintel). A second run on
a work directory that a live run holds refuses at once (refine_jax/lock.py).

Several processes (hosts) run the same command; on a Cloud TPU slice nothing more is needed,
elsewhere add --coordinator=HOST:PORT --num_processes=N --process_id=I (or the REFINE_JAX_*
environment variables) and give every process the same WORKDIR on shared storage.

Each stage reads what the previous ones wrote in WORKDIR, so a stage can be re-run alone
(`--config.stages=eval,`). With no `init` checkpoint and no `data.videos`, the configs run the
embedded demo on procedural video (stages generate, pretrain first).
"""
from __future__ import annotations

import json
import os
import time

from absl import flags, logging
from ml_collections import config_flags

def define_flags() -> None:
    """The command line; defined only when this module is the program, so that tests and tools can
    import it beside other entry points that use the same flag names."""
    config_flags.DEFINE_config_file("config", None, "ml_collections config file[:preset]", lock_config=False)
    flags.DEFINE_string("workdir", None, "work directory (created; resumed if it exists); "
                        "default runs/<config name>[_<preset>]")
    flags.DEFINE_string("coordinator", None, "multi-process runs: host:port of process 0 "
                        "(or REFINE_JAX_COORDINATOR; Cloud TPU slices find it themselves)")
    flags.DEFINE_integer("num_processes", None, "multi-process runs: how many")
    flags.DEFINE_integer("process_id", None, "multi-process runs: this one's index")


def stages():
    from refine_jax import demo, evaluate, oracle
    from refine_jax.labels import generate
    from refine_jax.train import trainer
    return {"generate": demo.generate, "pretrain": demo.pretrain, "label": generate.run,
            "train": trainer.run, "oracle": oracle.run, "eval": evaluate.run}


def stage_names(config) -> list:
    """The configured stages as a list ('--config.stages=a,b' arrives as one string)."""
    names = config.stages
    if isinstance(names, str):
        names = (names,)
    return [n.strip() for item in names for n in item.split(",") if n.strip()]


def resolve(config, workdir: str):
    """Fill the embedded demo's defaults: init = the model pre-trained in this workdir when it has
    (or had) a `pretrain` stage, else the committed stand-in; videos = the generated target domain."""
    from refine_jax import demo, fs
    names = stage_names(config)
    if not config.init and ("pretrain" in names or fs.exists(demo.pretrained_dir(workdir))):
        config.init = demo.pretrained_dir(workdir)
    elif not config.init and set(names) & {"label", "train", "oracle", "eval"}:
        config.init = demo.standin_dir(config.demo.arch)
    if not config.data.videos:
        config.data.videos = demo.target_dir(workdir)
    return config


def run(config, workdir: str) -> dict:
    """Run the configured stages in WORKDIR. With `label.rounds` = R > 1, a `label, train` pair
    runs R times: round k > 1 in WORKDIR/round<k>, labelling with the model of round k - 1; `eval`
    then compares the initial model with the last round's."""
    from refine_jax import fs
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
    if "oracle" in names and "generate" not in names:  # refuse now, not after the training stages
        from refine_jax import oracle
        oracle.check_ground_truth(config)
    rounds = max(int(config.label.get("rounds", 1)), 1)
    trained, i = workdir, 0
    while i < len(names):
        name = names[i]
        if name == "label" and names[i + 1:i + 2] == ["train"] and rounds > 1:
            init = config.init
            for r in range(1, rounds + 1):
                trained = workdir if r == 1 else os.path.join(workdir, f"round{r}")
                logging.info("round %d of %d: label and train in %s from %s", r, rounds, trained, init)
                timed(f"label_round{r}", table["label"], config, trained, init=init)
                out = timed(f"train_round{r}", table["train"], config, trained, init=init)
                if out.get("preempted"):
                    summary["preempted"] = f"train_round{r}"
                    return summary
                init = out["model"]
            i += 2
            continue
        logging.info("stage %s", name)
        timed(name, table[name], config, workdir, **({"trained": trained} if name == "eval" else {}))
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


def main(argv):
    del argv
    from refine_jax import cli, lock, parallel
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; progress bars say enough
    cli.enable_compilation_cache()
    f = flags.FLAGS
    parallel.initialize(f.coordinator, f.num_processes, f.process_id)
    workdir = f.workdir or default_workdir(f["config"].serialize().partition("=")[2])
    if parallel.is_main_process():
        print(f"workdir: {workdir}", flush=True)
        with lock.WorkdirLock(workdir):
            summary = run(f.config, workdir)
    else:
        summary = run(f.config, workdir)
    if not parallel.is_main_process():
        return
    seconds = summary.pop("stage_seconds", {})
    if seconds:
        print("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), flush=True)
    ev = summary.get("eval")
    if summary.get("preempted"):
        stage = summary["preempted"]
        print(f"preempted in the {stage} stage at step {summary[stage]['step']} (saved); "
              f"rerun the same command to resume")
    elif ev:
        shown = [ev["primary"]] if ev.get("ground_truth", True) else ["cycle_pass", "photometric_error"]
        lines = []
        for p in shown:
            after = ev["after"][p] if ev["after"] else float("nan")
            lines.append(f"{p}: before {ev['before'][p]:.4f} -> after {after:.4f}, {ev['baseline_name']} "
                         f"{ev['baseline'][p]:.4f}" + (f", oracle {ev['oracle'][p]:.4f}" if ev.get("oracle") else ""))
        print(("" if ev.get("ground_truth", True) else "no ground truth, label-free diagnostics only: ")
              + "; ".join(lines) + f" (report: {os.path.join(workdir, 'eval', 'report.md')})")
    else:
        print(json.dumps({k: (v if isinstance(v, (int, float, str)) else "done") for k, v in summary.items()}))


if __name__ == "__main__":
    from refine_jax import cli
    define_flags()
    cli.absl_run(main, required=["config"])
