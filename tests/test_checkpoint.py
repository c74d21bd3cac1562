"""Checkpoint loading: the official format and its variants, the demo checkpoint, and every kind of bad file."""
from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import codeenhance
from codeenhance import CheckpointError, TINY, load_model, save_demo_checkpoint


def golden_params(golden_ckpt):
    return torch.load(golden_ckpt, map_location="cpu", weights_only=True)["params"]


def assert_same_as_golden(model, golden_cases, i=2):
    x = torch.from_numpy(golden_cases[f"case{i}_input"])
    w = golden_cases[f"case{i}_w"]
    out, codes = model.enhance(x, float(w[0]), float(w[1]), return_codes=True)
    assert np.abs(out.numpy() - golden_cases[f"case{i}_output"]).max() <= 1e-4
    assert np.array_equal(codes.numpy(), golden_cases[f"case{i}_indices"])


@pytest.mark.parametrize(
    "variant",
    ["module_prefix", "params_ema", "fp32", "bare_state_dict", "params_preferred_over_ema"],
)
def test_checkpoint_variants_load_to_the_same_model(golden_ckpt, golden_cases, tmp_path, variant):
    params = golden_params(golden_ckpt)
    if variant == "module_prefix":
        obj = {"params": {f"module.{k}": v for k, v in params.items()}}
    elif variant == "params_ema":
        obj = {"params_ema": params}
    elif variant == "fp32":
        obj = {"params": {k: v.float() if v.is_floating_point() else v for k, v in params.items()}}
    elif variant == "bare_state_dict":
        obj = dict(params)
    else:  # both present: 'params' must win; 'params_ema' here is garbage of the right shapes
        obj = {"params": params, "params_ema": {k: torch.zeros_like(v) for k, v in params.items()}}
    path = tmp_path / f"{variant}.pth"
    torch.save(obj, path)
    model = load_model(path)
    assert not model.training
    assert_same_as_golden(model, golden_cases)


def test_ignored_buffers_and_head_may_be_absent(golden_ckpt, golden_cases, tmp_path):
    params = {
        k: v
        for k, v in golden_params(golden_ckpt).items()
        if not (k.endswith("attn_mask") or k.endswith("relative_position_index") or ".classifier." in k)
    }
    torch.save({"params": params}, tmp_path / "slim.pth")
    assert_same_as_golden(load_model(tmp_path / "slim.pth"), golden_cases)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_model(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty.pth")


def test_truncated_file(tiny_ckpt, tmp_path):
    data = tiny_ckpt.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path / "cut.pth")


def test_text_file_named_pth(tmp_path):
    (tmp_path / "notes.pth").write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="is a text file, not a torch checkpoint"):
        load_model(tmp_path / "notes.pth")


class Arbitrary:
    def __init__(self):
        self.value = 3


def test_random_pickle_is_refused_for_safety(tmp_path):
    with open(tmp_path / "obj.pth", "wb") as f:
        pickle.dump({"params": Arbitrary()}, f)
    with pytest.raises(CheckpointError, match="not loaded for safety"):
        load_model(tmp_path / "obj.pth")


def test_dict_without_tensors(tmp_path):
    torch.save({"epoch": 3, "iter": 100}, tmp_path / "state.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_model(tmp_path / "state.pth")


def test_discriminator_checkpoint(tmp_path):
    disc = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 4, 2, 1), torch.nn.LeakyReLU(), torch.nn.Conv2d(64, 1, 4))
    torch.save({"params": disc.state_dict()}, tmp_path / "net_d.pth")
    with pytest.raises(CheckpointError, match="not a CodeEnhance generator.*discriminator"):
        load_model(tmp_path / "net_d.pth")


def test_missing_unexpected_and_mismatched_keys_are_listed(tiny_ckpt, tmp_path):
    params = torch.load(tiny_ckpt, weights_only=True)["params"]
    del params["out_conv.bias"]
    params["extra.layer.weight"] = torch.zeros(3)
    params["fuse_semantic_encode.0.bias"] = torch.zeros(7)
    torch.save({"params": params}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "broken.pth")
    msg = str(e.value)
    assert "missing keys (1)" in msg and "out_conv.bias" in msg
    assert "unexpected keys (1)" in msg and "extra.layer.weight" in msg
    assert "shape mismatches (1)" in msg and "fuse_semantic_encode.0.bias: checkpoint (7,)" in msg


def test_demo_checkpoint_is_seeded_labelled_and_loads(tmp_path):
    a = save_demo_checkpoint(tmp_path / "a.pth", seed=1, config=TINY)
    b = save_demo_checkpoint(tmp_path / "b.pth", seed=1, config=TINY)
    c = save_demo_checkpoint(tmp_path / "c.pth", seed=2, config=TINY)
    raw = torch.load(a, weights_only=True)
    assert raw["meta"]["untrained"] is True and "NOT a trained model" in raw["meta"]["description"]
    assert "quantize_group.0.embedding.weight" in raw["params"]  # official names
    x = torch.rand(1, 3, 20, 30)
    ya, yb, yc = (load_model(p).enhance(x) for p in (a, b, c))
    assert torch.equal(ya, yb)
    assert not torch.allclose(ya, yc)
    assert load_model(a).config == TINY


def test_demo_checkpoint_refuses_to_overwrite(tmp_path):
    path = tmp_path / "demo.pth"
    path.write_bytes(b"user data")
    with pytest.raises(FileExistsError):
        save_demo_checkpoint(path, config=TINY)
    assert path.read_bytes() == b"user data"


def test_demo_cli_official_preset_matches_official_key_set(tmp_path):
    out = tmp_path / "demo.pth"
    r = subprocess.run([sys.executable, "-m", "codeenhance.demo", "--out", str(out), "--preset", "official"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "UNTRAINED" in r.stdout
    model = load_model(out)
    assert model.config == codeenhance.OFFICIAL
    assert sum(p.numel() for p in model.parameters()) > 39_000_000  # the DeepLab head of official files (~4M) is not part of the network
    r = subprocess.run([sys.executable, "-m", "codeenhance.demo", "--out", str(out), "--preset", "official"], capture_output=True, text=True)
    assert r.returncode != 0 and "exists" in r.stderr


def test_official_demo_keys_match_golden_key_list(tmp_path):
    import json

    from tests.conftest import GOLDEN, need

    keys = json.loads(need(GOLDEN / "keys.json", "golden key list").read_text())
    from codeenhance.checkpoint import IGNORED, official_state_dict, random_model

    ours = {k: list(v.shape) for k, v in official_state_dict(random_model()).items()}
    theirs = {k: v for k, v in keys.items() if not IGNORED.search(k)}
    assert ours == theirs
