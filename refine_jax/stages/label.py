"""The `label` stage: run the frozen model over video shards and keep what passes the cycle check.

RAFT: every consecutive pair of every clip; forward and backward flow in one jitted, mesh-sharded
call; label = forward flow, valid = the flow cycle check (labels/cycle.py).
PIPs: 8-frame windows of every clip; queries on a grid, plus dense windows around the clip's
ground-truth points when it has them; forward and backward (time-reversed, from the forward end
point) tracks in one call; keep tracks consistent within tau px at every frame; then re-balance by
speed. Labels carry the forward track's visibility.

Output (`WORKDIR/<label.out>`, default `labels/`): one label shard per input shard, in the video-clip schema of
data/shards.py (a flow label is a 2-frame clip with `flow` and `flow_valid`; a track label is an
8-frame clip with `tracks`, `visible` and `query_points`), and `manifest.json` with the shards, the
labelling config, the model fingerprint, counts and yield statistics, and, when the inputs carry
ground truth, the error of the kept labels against it next to the error of all estimates.
A shard counts as done once its stats file exists (written after the shard was renamed into place),
so an interrupted run redoes only unfinished shards and never leaves a finished-looking partial one.
The stats file records the label settings and the model's sha256; a re-run with other ones refuses
the finished shards instead of mixing two runs' labels under one manifest.
With eval.holdout = N (and eval.data empty), one clip in N of each source (data/sources.py
`held_out`) is left out of labelling, and so of training, for the eval stage to judge the refined
model on; the stats count them (`clips_held_out`) and the key records N.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional, Tuple

from refine_jax import checkpoints, cli, fs, parallel, paths, settings, tasks
from refine_jax.data import shards, sources
from refine_jax.labels import stats as stats_lib
from refine_jax.settings import EvalConfig, LabelConfig

# Label settings that only split the work (or name the folder, or count rounds): a resumed run may
# change them. Any other setting, or another model, makes other labels.
WORK_SPLIT_ONLY = frozenset({"out", "batch", "num_devices", "query_chunk", "rounds", "max_seconds"})


def _label_key(lc: LabelConfig, model_sha256: str, holdout: int = 0) -> dict:
    """What a label shard depends on besides its input: the settings, the model's weights and
    eval.holdout (as JSON holds them, so that a stored key compares equal)."""
    values = {k: v for k, v in dataclasses.asdict(lc).items() if k not in WORK_SPLIT_ONLY}
    return json.loads(json.dumps({"label_settings": values, "model_sha256": model_sha256, "holdout": holdout}))


def _check_same_key(entry: dict, key: dict, stats_path: str) -> None:
    """Raise when a finished shard (its stats file) was labelled with other settings or another
    model than this run's, naming the differences. Shards from before keys were stored pass."""
    if "label_settings" not in entry:
        return
    diffs = settings.differences({"label": entry["label_settings"], "model_sha256": entry.get("model_sha256"),
                                  "eval": {"holdout": entry.get("holdout", 0)}},
                                 {"label": key["label_settings"], "model_sha256": key["model_sha256"],
                                  "eval": {"holdout": key["holdout"]}},
                                 defaults=settings.dataclass_defaults(label=LabelConfig))
    if diffs:
        raise ValueError(f"{stats_path} marks a shard labelled with other settings ({'; '.join(diffs)}); "
                         f"label into a new work directory (or label.out) or use that run's settings")


def run(config, workdir: str, init: Optional[str] = None, progress: bool = True) -> dict:
    """Label every input shard into WORKDIR/<label.out>; returns the manifest. Finished shards
    are kept (resume) when they were labelled with the same settings and model, refused otherwise."""
    from tqdm import tqdm
    lc = LabelConfig.from_config(config.get("label"))
    init = init or config.init
    loaded = checkpoints.load_model(init, config.get("runtime"))
    mesh = parallel.make_mesh(lc.num_devices or None, local=True)
    task = tasks.of(loaded.cfg)
    labeler = task.labeler(loaded.cfg, loaded.variables, lc, mesh)
    holdout = EvalConfig.from_config(config.get("eval")).held_out_every()
    sources.check_holdout(holdout)
    inputs, first = [], {}  # first: the index within its source of each unit's first clip
    for d in sources.split_sources(config.data.videos):
        units = sources.units(d)
        inputs.extend(units)
        if holdout:
            first.update(zip((u.name for u in units), sources.first_indices(units)))
    out_dir = paths.labels(workdir, config)
    fs.makedirs(out_dir)
    key = _label_key(lc, checkpoints.fingerprint(init), holdout)
    start = time.time()
    mine = parallel.process_share(inputs)
    counted = all(u.records is not None for u in mine)
    # counts clips (an ETA) where the manifests say how many, else shards
    bar = tqdm(total=sum(u.records for u in mine) if counted else len(mine), desc=f"label ({loaded.arch})",
               unit="clip" if counted else "shard", disable=not (progress and parallel.is_main_process()))
    for unit in mine:
        final, stats_path = _outputs(out_dir, unit)
        if fs.exists(stats_path) and fs.exists(final):
            _check_same_key(fs.read_json(stats_path), key, stats_path)
            bar.update(unit.records if counted else 1)
            continue
        tmp = f"{final}.tmp"
        stats: dict = {}
        records, sizes = 0, set()
        tf = fs.tf()
        with tf.io.TFRecordWriter(tmp) as writer:
            for index, clip in enumerate(unit.clips(), first.get(unit.name, 0)):
                if sources.held_out(index, holdout):
                    stats_lib.add(stats, "clips_held_out", 1)  # the eval stage's, never trained on
                    bar.update(1 if counted else 0)
                    continue
                if lc.max_seconds and time.time() - start > lc.max_seconds:
                    stats_lib.add(stats, "clips_over_budget", 1)  # counted, not labelled
                    bar.update(1 if counted else 0)
                    continue
                for label in labeler.label_clip(clip, stats):
                    writer.write(shards.clip_to_example(label, "png"))
                    records += 1
                    sizes.add(tuple(int(v) for v in label.frames.shape[1:3]))
                stats_lib.add(stats, "clips", 1)
                if counted:
                    bar.update(1)
        if not counted:
            bar.update(1)
        fs.replace(tmp, final)
        entry = {"file": os.path.basename(final), "records": records, "bytes": fs.size(final),
                 "sha256": shards.sha256_file(final), "source": unit.name, "stats": stats,
                 "frame_sizes": sorted(map(list, sizes)), **key}
        fs.write_json_atomic(stats_path, entry)
    bar.close()
    parallel.barrier("label: shards written")
    manifest = _manifest(inputs, out_dir, lc, init, loaded, key["model_sha256"], holdout)
    if parallel.is_main_process():
        fs.write_json_atomic(os.path.join(out_dir, shards.MANIFEST), manifest)
    parallel.barrier("label: manifest written")
    return manifest


def _outputs(out_dir: str, unit: "sources.Unit") -> Tuple[str, str]:
    """The label shard of an input unit (a shard file, a TFDS sub-split) and its stats file
    (which marks it finished)."""
    return (os.path.join(out_dir, f"{unit.name}.labels.tfrecord"), os.path.join(out_dir, f".{unit.name}.stats.json"))


def _manifest(inputs, out_dir, lc, init, loaded, model_sha256: str, holdout: int) -> dict:
    """The label manifest over every input shard's stats file, in input order."""
    per_shard = []
    for unit in inputs:
        per_shard.append(fs.read_json(_outputs(out_dir, unit)[1]))
    total: dict = {}
    for e in per_shard:
        stats_lib.merge(total, e["stats"])
    manifest = {"schema": shards.SCHEMA, "name": "labels", "kind": tasks.of(loaded.cfg).kind,
                "files": [{k: e[k] for k in ("file", "records", "bytes", "sha256", "source")} for e in per_shard],
                "records": sum(e["records"] for e in per_shard),
                "frame_sizes": sorted(map(list, {tuple(v) for e in per_shard for v in e.get("frame_sizes", ())})),
                "label_config": dataclasses.asdict(lc), "model": fs.abspath(init),
                "model_sha256": model_sha256, "model_arch": loaded.arch, "holdout": holdout,
                "stats": stats_lib.summary(total)}
    return manifest


@cli.guarded
def main(argv) -> int:
    """`python -m refine_jax.stages.label --init=CKPT --videos=DIR[,DIR] --workdir=DIR
    [--label='{"tau": 1.5, ...}']`: the label stage alone."""
    import argparse
    import ml_collections
    p = argparse.ArgumentParser(prog="python -m refine_jax.stages.label", description=main.__doc__)
    p.add_argument("--init", required=True)
    p.add_argument("--videos", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--label", default="{}", help="JSON of label settings")
    a = p.parse_args(argv)
    cfg = ml_collections.ConfigDict({"init": a.init, "data": {"videos": a.videos},
                                     "label": json.loads(a.label)})
    m = run(cfg, a.workdir)
    print(json.dumps(m["stats"], indent=1)[:2000])
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())

