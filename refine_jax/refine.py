"""Refine a motion model on your own videos, in one command.

  python -m refine_jax.refine --weights=raft-things.pth --videos='clips/*.mp4' --out=runs/mine
  python -m refine_jax.refine --weights=model-000200000.pth --videos=clips/ --out=runs/mine_pips --minutes=30

--weights  an official RAFT (large or small) or PIPs .pth (converted strictly; the architecture is
           read from its keys), a converted folder, or a refined model folder; omitted: the
           committed stand-in of --arch (raft_small or pips)
--videos   video files, globs, folders of videos or of frames, shard folders, tfds:NAME:SPLIT,
           gs:// URLs; comma-separated for several
--out      the output folder; running the same command again resumes there
--eval     shard folder(s) with ground truth (refine_jax.data.benchmarks) to measure before and
           after; without it the report holds label-free diagnostics only
--steps / --minutes   the training length, or a wall-clock budget for the whole command (labelling,
           training and evaluation each get a share; the schedule is set for the steps that fit)
--preset   a preset of the model's config file (configs/raft.py: sintel; configs/pips.py: crohd,
           horse10, tapvid_davis); default: the CPU-sized settings of the demo
--max_side frames are scaled so that their longer side is at most this (default 512; 0 = native),
           sides rounded to multiples of 8; --max_clips windows per video, evenly spaced (64)
--set section.field=value   any config field (repeatable), e.g. --set=label.iters=32
--guard    on (default): the label-free verdict (better / worse / cannot tell) decides what is
           exported - the refined model only when 'better', else the initial one; off: the last step
--holdout  without --eval, one window in this many of each --videos entry (default 4) is kept out
           of labelling and training, and the verdict is measured on those; 0: on the windows trained on

Writes OUT/model (Flax, the last step), OUT/exported (what the guard hands back), OUT/refined.pth
(the exported model in the official layout), OUT/report.html (pictures inlined),
OUT/report.md and OUT/summary.json. Errors print one line and exit 2 (--debug: the traceback).
Multi-host: the same command on every host with --coordinator, --num_processes, --process_id.
"""
from __future__ import annotations

import argparse
import sys
import time

from refine_jax import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m refine_jax.refine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--weights", default="")
    p.add_argument("--arch", default="raft_small", choices=("raft_small", "pips"))
    p.add_argument("--eval", default="")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--minutes", type=float, default=0.0)
    p.add_argument("--preset", default="")
    p.add_argument("--max_side", type=int, default=512)
    p.add_argument("--max_clips", type=int, default=64)
    p.add_argument("--eval_clips", type=int, default=0, help="clips evaluated (0: all, or what the budget holds)")
    p.add_argument("--config", default="", help="another config file than configs/raft.py or configs/pips.py")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--coordinator", default=None)
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--guard", default="on", choices=("on", "off"),
                   help="on: export the refined model only when the label-free verdict is 'better', else the initial one")
    p.add_argument("--holdout", type=int, default=4,
                   help="without --eval: one window in this many of each --videos entry is kept out of training and the "
                        "verdict judges on those (0: on the windows trained on)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


@cli.guarded
def main(argv) -> int:
    start = time.time()
    a = build_parser().parse_args(argv)
    from refine_jax import footage, lock, parallel
    cli.quiet_logs()
    cli.enable_compilation_cache()
    parallel.initialize(a.coordinator, a.num_processes, a.process_id)
    req = footage.Request(videos=a.videos, out=a.out, weights=a.weights, arch=a.arch, eval=a.eval,
                          steps=a.steps, minutes=a.minutes, preset=a.preset, max_side=a.max_side,
                          max_clips=a.max_clips, eval_clips=a.eval_clips, config=a.config,
                          overrides=tuple(a.overrides), guard=a.guard, holdout=a.holdout)
    footage.check_request(req)
    if parallel.is_main_process():
        with lock.WorkdirLock(a.out):
            footage.run(req, progress=not a.no_progress, start=start)
    else:
        footage.run(req, progress=False, start=start)
    parallel.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
