"""Paths with a scheme go through tf.io.gfile: shards, manifests and pipelines on TensorFlow's
in-memory filesystem (ram://) behave as on a local disk, as they would on gs://."""
import uuid

import numpy as np
import pytest

from refine_jax import fs
from refine_jax.data import pipeline, shards, synthetic


@pytest.fixture
def url():
    return f"ram://refine-{uuid.uuid4().hex[:8]}"


def test_file_operations_on_a_url(url, tmp_path):
    assert fs.is_remote(url) and not fs.is_remote(str(tmp_path)) and fs.abspath(url) == url
    fs.makedirs(f"{url}/a/b")
    fs.write_json_atomic(f"{url}/a/b/x.json", {"k": [1, 2]})
    fs.write_json_atomic(f"{url}/a/b/x.json", {"k": [3]})  # overwrite
    assert fs.read_json(f"{url}/a/b/x.json") == {"k": [3]}
    assert fs.listdir(f"{url}/a/b") == ["x.json"]  # no temporary names left
    fs.write_json_atomic(tmp_path / "x.json", {"k": [3]})
    assert fs.isdir(f"{url}/a") and fs.isfile(f"{url}/a/b/x.json")
    assert fs.size(f"{url}/a/b/x.json") == fs.size(tmp_path / "x.json") > 0
    fs.rmtree(f"{url}/a")
    assert not fs.exists(f"{url}/a")


def test_shards_on_a_url(url, tmp_path):
    local = str(tmp_path / "v")
    for root in (local, f"{url}/v"):
        with shards.ShardWriter(root, "vid", max_shard_bytes=60_000) as w:
            for i in range(3):
                w.write_clip(synthetic.render_video(synthetic.PRESETS["source"], i, 4, 64, 72, 4, video_id=f"v{i}"))
    assert fs.read_json(f"{url}/v/manifest.json")["files"] == fs.read_json(f"{local}/manifest.json")["files"]
    a, b = list(shards.read_clips(local)), list(shards.read_clips(f"{url}/v"))
    assert len(a) == len(b) == 3 and all(np.array_equal(x.frames, y.frames) for x, y in zip(a, b))
    cfg = pipeline.PipelineConfig((f"{url}/v",), clip_len=2, batch_size=2, seed=3, max_tracks=4)
    batch = next(pipeline.ClipIterator(cfg))
    assert batch["frames"].shape == (2, 2, 64, 72, 3) and batch["tracks"].shape == (2, 4, 2, 2)
    # a damaged shard on the URL is named
    first = f"{url}/v/" + fs.read_json(f"{url}/v/manifest.json")["files"][0]["file"]
    with fs.open_file(first, "rb") as f:
        data = bytearray(f.read())
    data[100] ^= 0xFF
    fs.remove(first)  # TensorFlow's ram:// filesystem appends on "wb"; gs:// and local disks replace
    with fs.open_file(first, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(shards.ShardError, match=f"{first}: shard content does not match its sha256"):
        shards.verify_shards(f"{url}/v")
