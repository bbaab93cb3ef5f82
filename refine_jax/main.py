"""refine_jax main job: the stages named by the config, in order, in one work directory.

  python -m refine_jax.main --config=configs/raft.py[:PRESET] [--workdir=DIR] [--config.x=...] [--debug]

--workdir defaults to runs/<config name>[_<preset>] (runs/pips, runs/raft_sintel). A second run on
a work directory that a live run holds refuses at once (refine_jax/lock.py).

Several processes (hosts) run the same command; on a Cloud TPU slice nothing more is needed,
elsewhere add --coordinator=HOST:PORT --num_processes=N --process_id=I (or the REFINE_JAX_*
environment variables) and give every process the same WORKDIR on shared storage.

The stages and their order are in refine_jax/pipeline.py.
"""
from __future__ import annotations

import json
import os

from absl import flags
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


def main(argv):
    del argv
    from refine_jax import cli, lock, parallel, pipeline
    cli.quiet_logs()  # Orbax logs every save at INFO; progress bars say enough
    cli.enable_compilation_cache()
    f = flags.FLAGS
    parallel.initialize(f.coordinator, f.num_processes, f.process_id)
    workdir = f.workdir or pipeline.default_workdir(f["config"].serialize().partition("=")[2])
    if parallel.is_main_process():
        print(f"workdir: {workdir}", flush=True)
        with lock.WorkdirLock(workdir):
            summary = pipeline.run(f.config, workdir)
    else:
        summary = pipeline.run(f.config, workdir)
    main_process = parallel.is_main_process()
    parallel.shutdown()
    if not main_process:
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
        if ev.get("exported"):
            sel = ev.get("selection")
            print(f"label-free verdict: {ev['verdict']['verdict']}; exported the {ev['exported']['model']} "
                  + (f"model of step {sel['chosen_step']} (selected by the verdict) " if sel and sel["chosen_step"]
                     is not None else "model ") + f"to {ev['exported']['path']}")
    else:
        print(json.dumps({k: (v if isinstance(v, (int, float, str)) else "done") for k, v in summary.items()}))


if __name__ == "__main__":
    from refine_jax import cli
    define_flags()
    cli.absl_run(main, required=["config"])
