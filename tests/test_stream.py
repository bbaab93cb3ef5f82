"""Pre-training on clips rendered on the fly (demo/stream.py): its samples are the shard
pipeline's, and a tiny run exports a model with its provenance and can continue from it."""
import json

import numpy as np
import pytest

from refine_jax import checkpoints
from refine_jax.demo import stages as demo
from refine_jax.data import pipeline
from refine_jax.demo import synthetic
from refine_jax.demo import stream
from test_recipes import load_config


@pytest.mark.parametrize("arch", ["raft", "pips"])
def test_samples_are_what_the_shard_pipeline_reads(arch, tmp_path):
    """The recipe writes source clips to shards and the pipeline cuts them into samples; rendering
    with the same seed and cutting with samples_of_clip gives the same arrays (the flow rounded
    through float16 as the RAFT recipe stores it)."""
    raft = arch == "raft"
    frames, tracks, max_tracks = (3, 0, 0) if raft else (8, 12, 8)
    synthetic.write_dataset(str(tmp_path), "source", 1, frames, (64, 80), tracks, seed=7, progress=False,
                            flow_dtype="float16" if raft else "")
    cfg = pipeline.PipelineConfig((str(tmp_path),), clip_len=2 if raft else 8, hop=1 if raft else 0,
                                  batch_size=1, shuffle=False, epochs=1, with_flow=raft, max_tracks=max_tracks)
    read = list(pipeline.ClipIterator(cfg))
    clip = synthetic.render_video(synthetic.domain("source"), 7 * 100_003, frames, 64, 80, tracks)
    made = stream.samples_of_clip(clip, raft, 2 if raft else 8, max_tracks)
    assert len(made) == len(read) == (2 if raft else 1)
    for got, want in zip(made, read):
        keys = ("frames", "flow", "flow_valid") if raft else ("frames", "tracks", "visible", "track_valid")
        for k in keys:
            np.testing.assert_array_equal(got[k], want[k][0], err_msg=k)


@pytest.mark.slow
def test_tiny_stream_run_exports_and_continues(tmp_path):
    """Two steps from random init, then two more from that model on later clips: each export is a
    model folder whose model.json says how it was made."""
    c = load_config("raft", "pretrain")
    c.demo.update({"size": (128, 128)})
    c.demo.pretrain.update({"steps": 2, "batch_size": 2, "iters": 1, "num_devices": 2, "log_every": 1})
    c.demo.pretrain_augment.crop = (128, 128)
    logs = []
    out = stream.run(c, str(tmp_path / "a"), steps=2, workers=1, log=logs.append)
    assert out["step"] == 2 and out["clips_rendered"] >= 2 and len(logs) == 2
    prov = json.loads((tmp_path / "a" / "model" / "model.json").read_text())["provenance"]
    assert prov["steps"] == 2 and prov["trained_from"] == "random init" and not prov["stopped_by_deadline"]
    assert prov["seeds"]["source_data"] == c.demo.source_seed and "not official" in prov["source"]
    assert prov["train"]["batch_size"] == 2 and prov["recipe"]["demo"]["pretrain"]["steps"] == 2
    # measuring it records source metrics and keeps the recipe the run recorded, not the measuring config's
    synthetic.write_dataset(str(tmp_path / "eval"), "source", 1, 2, (128, 128), 0, seed=9, progress=False)
    demo.measure_source(load_config("raft", "pretrain"), out["model"], str(tmp_path / "eval"), {"steps": 2})
    prov = json.loads((tmp_path / "a" / "model" / "model.json").read_text())["provenance"]
    assert prov["recipe"]["demo"]["pretrain"]["steps"] == 2 and prov["source_metrics"]["clips"] == 1
    first = checkpoints.load_model(out["model"]).variables
    out2 = stream.run(c, str(tmp_path / "b"), steps=2, workers=1, init=out["model"], first_clip=50, log=logs.append)
    prov2 = json.loads((tmp_path / "b" / "model" / "model.json").read_text())["provenance"]
    assert prov2["trained_from"].endswith("a/model") and prov2["first_clip"] == 50
    second = checkpoints.load_model(out2["model"]).variables
    w1 = first["params"]["fnet"]["conv1"]["kernel"]
    w2 = second["params"]["fnet"]["conv1"]["kernel"]
    assert w1.shape == w2.shape and not np.allclose(w1, w2)


def test_time_step_counts_a_compile_then_times_the_steps():
    """The timing pass: the first call is the compile; then 3 warm-up calls and up to 30 timed ones."""
    import jax
    calls = []

    def batch():
        calls.append(1)
        return np.ones(4, np.float32)
    fn = jax.jit(lambda state, b: (state + 1, {"loss": b.sum()}))
    compile_s, step_s = stream.time_step(fn, np.zeros(()), batch, budget=60.0)
    assert len(calls) == 1 + 3 + 30 and compile_s > 0 and 0 < step_s < compile_s


@pytest.mark.parametrize("kwargs, message", [({}, "give --steps or --seconds"),
                                             ({"steps": 1, "first_clip": 100_000}, "first_clip=100000")])
def test_run_refuses_what_it_cannot_do(kwargs, message):
    assert stream.MAX_CLIPS == 100_000 < synthetic.VIDEOS_PER_SEED  # held-out seeds stay out of reach
    c = load_config("raft", "pretrain")
    with pytest.raises(ValueError, match=message):
        stream.run(c, "/nonexistent", **kwargs)
