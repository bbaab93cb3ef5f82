"""Paths with a scheme go through tf.io.gfile: shards, manifests and pipelines on TensorFlow's
in-memory filesystem (ram://) behave as on a local disk, as they would on gs://."""
import os
import uuid

import numpy as np
import pytest

from refine_jax import fs
from refine_jax.data import pipeline, shards
from refine_jax.demo import synthetic


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


def _copy_tree(src: str, dst: str) -> None:
    for root, _, names in fs.walk(src):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), src)
            fs.makedirs(os.path.dirname(f"{dst}/{rel}"))
            with open(os.path.join(root, n), "rb") as f:
                fs.write_bytes_atomic(f"{dst}/{rel}", f.read())


def test_checkpoint_fingerprint_and_pth_on_a_url(url, tmp_path):
    """The label manifest's model hash is the same for a checkpoint folder on a URL, and an
    official .pth is read from a URL (still with weights_only=True)."""
    import torch
    from refine_jax import checkpoints, models, pth
    local = str(tmp_path / "model")
    checkpoints.init_model(local, models.model_config("raft_small"), seed=0)
    _copy_tree(local, f"{url}/model")
    assert checkpoints.fingerprint(f"{url}/model") == checkpoints.fingerprint(local)
    assert checkpoints.fingerprint(f"{url}/model/") == checkpoints.fingerprint(local)
    with pytest.raises(FileNotFoundError, match=f"{url}/missing: no such checkpoint"):
        checkpoints.fingerprint(f"{url}/missing")
    torch.save({"model.w": torch.arange(6.0).reshape(2, 3)}, str(tmp_path / "m.pth"))
    _copy_tree(str(tmp_path), f"{url}/pth")
    state = pth.load_torch_state_dict(f"{url}/pth/m.pth")
    np.testing.assert_array_equal(state["model.w"], np.arange(6.0).reshape(2, 3))
    assert checkpoints.fingerprint(f"{url}/pth/m.pth") == checkpoints.fingerprint(str(tmp_path / "m.pth"))


def test_ingest_and_infer_read_and_write_urls(url, tmp_path, recipe_pth):
    """ingest takes a video and a frame folder on a URL and writes shards there; infer reads frames
    and writes its outputs on a URL; both give what they give on local paths."""
    from refine_jax import infer
    from refine_jax.data import frames as frames_lib, ingest
    rng = np.random.default_rng(0)
    video = (rng.uniform(0, 255, (1, 1, 3)) + np.zeros((6, 32, 48, 3))).astype(np.uint8)
    from PIL import Image
    (tmp_path / "src" / "b").mkdir(parents=True)
    frames_lib.write_video(str(tmp_path / "src" / "a.mp4"), video, 6)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "src" / "b" / f"{i}.png")
    _copy_tree(str(tmp_path / "src"), f"{url}/src")
    assert ingest.main([f"--videos={url}/src", f"--out={url}/shards", "--clip_len=2", "--format=png"]) == 0
    assert ingest.main([f"--videos={tmp_path / 'src'}", f"--out={tmp_path / 'shards'}", "--clip_len=2",
                        "--format=png"]) == 0
    remote, local = list(shards.read_clips(f"{url}/shards")), list(shards.read_clips(str(tmp_path / "shards")))
    assert len(remote) == len(local) == 3 + 2
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(remote, local))
    big = (rng.uniform(0, 255, (3, 128, 136, 3))).astype(np.uint8)
    (tmp_path / "f").mkdir()
    for i, im in enumerate(big):
        Image.fromarray(im).save(tmp_path / "f" / f"{i}.png")
    _copy_tree(str(tmp_path / "f"), f"{url}/f")
    args = ["flow", f"--weights={recipe_pth('raft_small')}", "--iters=1"]
    assert infer.main(args + [f"--frames={url}/f", f"--out={url}/out"]) == 0
    assert infer.main(args + [f"--frames={tmp_path / 'f'}", f"--out={tmp_path / 'out'}"]) == 0
    from refine_jax.data import flo
    assert fs.listdir(f"{url}/out") == sorted(os.listdir(tmp_path / "out"))
    np.testing.assert_array_equal(flo.read_flo(f"{url}/out/flow_00001.flo"),
                                  flo.read_flo(str(tmp_path / "out" / "flow_00001.flo")))
