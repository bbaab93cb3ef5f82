"""The strict converter, checkpoint folders and export round trips."""
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flax import traverse_util

import golden
from refine_jax import checkpoints, convert, pth
from refine_jax.models import PARAM_COUNTS


def _flat(variables):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}


@pytest.mark.parametrize("arch", ["raft", "raft_small", "pips"])
def test_convert_counts_and_export_keys_match_official_listing(converted, arch):
    cfg, variables = converted(arch)
    assert pth.count_params(variables) == PARAM_COUNTS[arch]
    exported = pth.variables_to_state_dict(variables, cfg)
    assert set(exported) == golden.official_keys(arch)


@pytest.mark.parametrize("arch", ["raft", "raft_small", "pips"])
def test_export_round_trip_is_exact(converted, recipe_pth, tmp_path, arch):
    cfg, variables = converted(arch)
    out = tmp_path / "again.pth"
    pth.export_pth(variables, cfg, str(out))
    original = torch.load(recipe_pth(arch), weights_only=True)
    original = original.get("model_state_dict", original)
    again = torch.load(str(out), weights_only=True)
    assert set(original) == set(again)
    for k in original:
        assert original[k].dtype == again[k].dtype, k
        assert torch.equal(original[k], again[k]), k


def test_prefixes_are_stripped(converted, tmp_path):
    """refining-motion-code saves RAFT as `model.module.*`; that loads the same."""
    cfg, variables = converted("raft_small")
    state = OrderedDict(("model." + k, torch.from_numpy(v.copy()))
                        for k, v in golden.recipe_state_dict("raft_small").items())
    torch.save(state, tmp_path / "refined.pth")
    cfg2, variables2, prov = pth.convert_file(str(tmp_path / "refined.pth"), "raft_small")
    assert cfg2 == cfg
    assert prov["source"] == "refined.pth" and len(prov["source_sha256"]) == 64
    f1, f2 = _flat(variables), _flat(variables2)
    assert f1.keys() == f2.keys() and all(np.array_equal(f1[k], f2[k]) for k in f1)


def test_wrong_keys_and_shapes_are_listed(tmp_path):
    state = OrderedDict((k, torch.from_numpy(v.copy()))
                        for k, v in golden.recipe_state_dict("raft_small").items())
    del state["module.update_block.gru.convz.bias"]
    state["module.update_block.extra.weight"] = torch.zeros(3, 3, 1, 1)
    state["module.fnet.conv2.weight"] = torch.zeros(7, 96, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(pth.CheckpointMismatch) as e:
        pth.convert_file(str(tmp_path / "bad.pth"), "raft_small")
    msg = str(e.value)
    assert "bad.pth" in msg
    assert "missing key update_block.gru.convz.bias" in msg
    assert "unexpected key update_block.extra.weight" in msg
    assert "shape mismatch for fnet.conv2.weight" in msg


def test_aliased_batchnorm_must_agree(tmp_path):
    state = OrderedDict((k, torch.from_numpy(v.copy())) for k, v in golden.recipe_state_dict("raft").items())
    state["module.cnet.layer2.0.downsample.1.weight"] = state["module.cnet.layer2.0.downsample.1.weight"] + 1
    torch.save(state, tmp_path / "alias.pth")
    with pytest.raises(pth.CheckpointMismatch, match="aliased BatchNorm entry"):
        pth.convert_file(str(tmp_path / "alias.pth"), "raft")


def test_wrong_arch_and_bad_files(recipe_pth, tmp_path):
    with pytest.raises(pth.CheckpointMismatch, match="--arch=raft but the keys are those of raft_small"):
        pth.convert_file(recipe_pth("raft_small"), "raft")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        pth.convert_file(str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pth: cannot be read"):
        pth.convert_file(str(tmp_path / "junk.pth"))


def test_checkpoint_folder_cli_round_trip(recipe_pth, tmp_path):
    out = tmp_path / "ckpt"
    convert.main(["--arch=raft_small", f"--src={recipe_pth('raft_small')}", f"--out={out}"])
    assert (out / "model.json").exists() and (out / "variables").is_dir()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    loaded = checkpoints.load_model(str(out))
    assert loaded.arch == "raft_small" and loaded.provenance["source"] == "raft_small.pth"
    convert.main(["--export", f"--src={out}", f"--out={tmp_path / 'back.pth'}"])
    original = torch.load(recipe_pth("raft_small"), weights_only=True)
    back = torch.load(str(tmp_path / "back.pth"), weights_only=True)
    assert all(torch.equal(original[k], back[k]) for k in original) and set(original) == set(back)
    with pytest.raises(FileExistsError, match="already exists"):
        convert.main(["--arch=raft_small", f"--src={recipe_pth('raft_small')}", f"--out={out}", "--debug"])
    assert convert.main(["--arch=raft_small", f"--src={recipe_pth('raft_small')}", f"--out={out}"]) == 2
    with pytest.raises(FileNotFoundError, match="not a refine_jax checkpoint"):
        checkpoints.load_model(str(tmp_path))


def test_name_mapping_is_mechanical():
    assert pth.torch_module_to_flax("cnet.layer2.0.norm3") == ("cnet", "layer2_0", "norm3")
    assert pth.torch_module_to_flax("delta_block.to_delta.1.0.fn.0") == (
        "delta_block", "to_delta_1_0", "fn_0")
    for name in ["update_block.mask.2", "delta_block.to_delta.15", "ffeat_updater.0", "fnet.conv1"]:
        assert pth.flax_module_to_torch(pth.torch_module_to_flax(name)) == name


def test_pips_plain_state_dict_and_reference_dict_load_the_same(converted, tmp_path):
    """Fine-tuned PIPs files are a plain state_dict; the reference file wraps it with the optimizer."""
    cfg, variables = converted("pips")  # from the reference-format file
    golden.write_pth("pips", str(tmp_path / "plain.pth"), wrap_pips=False)
    cfg2, variables2, _ = pth.convert_file(str(tmp_path / "plain.pth"), "pips")
    f1, f2 = _flat(variables), _flat(variables2)
    assert cfg2 == cfg and f1.keys() == f2.keys() and all(np.array_equal(f1[k], f2[k]) for k in f1)
