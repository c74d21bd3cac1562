"""Parity of the re-implementation with the original CodeEnhance code, and its behaviour on awkward inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from codeenhance import flip_pad_to_multiple, nearest_code, padded_size
from codeenhance.swin import relative_position_index, shifted_window_mask, to_windows

CASES = range(4)


def case(golden_cases, i):
    return (
        torch.from_numpy(golden_cases[f"case{i}_input"]),
        golden_cases[f"case{i}_w"],
        golden_cases[f"case{i}_output"],
        golden_cases[f"case{i}_indices"],
    )


@pytest.mark.parametrize("i", CASES)
def test_golden_parity(golden_model, golden_cases, i):
    x, w, ref_out, ref_idx = case(golden_cases, i)
    out, codes = golden_model.enhance(x, float(w[0]), float(w[1]), return_codes=True)
    assert out.shape == ref_out.shape
    assert np.abs(out.numpy() - ref_out).max() <= 1e-4
    assert codes.shape == ref_idx.shape
    assert np.array_equal(codes.numpy(), ref_idx)


def test_golden_batch_with_per_image_weights(golden_model, golden_cases):
    # cases 2 and 3 share an input and differ in weights: one batch must reproduce both.
    x2, w2, out2, idx2 = case(golden_cases, 2)
    x3, w3, out3, idx3 = case(golden_cases, 3)
    batch = torch.cat([x2, x3])
    out, codes = golden_model.enhance(
        batch, torch.tensor([w2[0], w3[0]]), torch.tensor([w2[1], w3[1]]), return_codes=True
    )
    assert np.abs(out[0].numpy() - out2[0]).max() <= 1e-4
    assert np.abs(out[1].numpy() - out3[0]).max() <= 1e-4
    assert np.array_equal(codes.numpy(), np.concatenate([idx2, idx3]))


def original_pad(x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """The original test() padding, written out as it is (valid for H, W >= 16)."""
    h, w = x.shape[-2:]
    hp, wp = (h // multiple + 1) * multiple, (w // multiple + 1) * multiple
    x = torch.cat([x, torch.flip(x, [2])], 2)[:, :, :hp, :]
    return torch.cat([x, torch.flip(x, [3])], 3)[:, :, :, :wp]


@pytest.mark.parametrize("hw", [(16, 16), (31, 17), (32, 64), (77, 150), (96, 128), (255, 33)])
def test_flip_pad_matches_original_rule(hw):
    x = torch.rand(2, 3, *hw)
    assert torch.equal(flip_pad_to_multiple(x), original_pad(x))


@pytest.mark.parametrize("hw", [(1, 1), (7, 300), (3, 15)])
def test_flip_pad_keeps_reflecting_for_tiny_images(hw):
    x = torch.rand(1, 1, *hw)
    y = flip_pad_to_multiple(x)
    assert y.shape[-2:] == (padded_size(hw[0]), padded_size(hw[1]))
    # Period 2H along rows: x, flip(x), x, ...
    rows = torch.cat([x, torch.flip(x, [2])], 2).repeat(1, 1, 32, 1)[:, :, : y.shape[2], :]
    assert torch.equal(y[..., : hw[1]], rows)


def original_mask(h, w, window=8, shift=4):
    """The original Swin calculate_mask, written out with slices as an independent oracle."""
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = to_windows(img, window).squeeze(-1)
    m = win.unsqueeze(1) - win.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


@pytest.mark.parametrize("hw", [(8, 8), (32, 32), (24, 40), (16, 72)])
def test_shifted_window_mask_matches_original(hw):
    assert torch.equal(shifted_window_mask(*hw, window=8, shift=4), original_mask(*hw))


def test_relative_position_index_shape_and_range():
    idx = relative_position_index(8)
    assert idx.shape == (64, 64)
    assert idx.min() == 0 and idx.max() == 15 * 15 - 1
    assert idx[0, 0] == idx[5, 5]  # same offset, same table row


def test_nearest_code_first_index_on_ties_and_gathers_rows():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[0.9, 0.1], [0.5, 0.0], [0.1, 1.9]])
    index, rows = nearest_code(z, codebook)
    assert index.tolist() == [1, 0, 3]  # [0.5, 0] is equidistant from rows 0, 1 and 2: first wins
    assert torch.equal(rows, codebook[index])


@pytest.mark.parametrize("hw", [(1, 1), (7, 300), (33, 47)])
def test_tiny_and_odd_images(tiny_model, hw):
    x = torch.rand(1, 3, *hw)
    out, codes = tiny_model.enhance(x, return_codes=True)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert codes.shape == (1, 1, padded_size(hw[0]) // 4, padded_size(hw[1]) // 4)


def test_batch_equals_single_runs_with_different_weights(tiny_model):
    x = torch.rand(3, 3, 45, 70)
    wt, ws = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.3, 1.0, 1.5])
    batch = tiny_model.enhance(x, wt, ws)
    for i in range(3):
        single = tiny_model.enhance(x[i : i + 1], float(wt[i]), float(ws[i]))
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-5, rtol=0)


def test_weights_change_the_output(tiny_model):
    x = torch.rand(1, 3, 40, 40)
    assert not torch.allclose(tiny_model.enhance(x, 1.0, 1.0), tiny_model.enhance(x, 0.0, 1.0))
    assert not torch.allclose(tiny_model.enhance(x, 1.0, 1.0), tiny_model.enhance(x, 1.0, 0.0))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(3, 32, 32), r"\[B,3,H,W\]"),
        (torch.rand(1, 4, 32, 32), r"\[B,3,H,W\]"),
        ((torch.rand(1, 3, 8, 8) * 255).to(torch.uint8), "float"),
        (torch.rand(1, 3, 0, 8), "empty"),
    ],
)
def test_bad_image_is_rejected_clearly(tiny_model, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_model.enhance(bad)


def test_weight_of_wrong_length_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="one per image"):
        tiny_model.enhance(torch.rand(2, 3, 8, 8), torch.tensor([1.0, 1.0, 1.0]))


def test_reference_mode_with_own_encoder_equals_default(tiny_model):
    # With the reference encoder = the model's own encoder and reference = input, the style features are
    # the encoder features, exactly the default path.
    import copy

    model = copy.deepcopy(tiny_model)
    model.attach_reference_encoder(copy.deepcopy(model.multiscale_encoder))
    x = torch.rand(1, 3, 40, 52)
    torch.testing.assert_close(model.enhance(x, reference=x), model.enhance(x), atol=0, rtol=0)
    other = torch.rand(1, 3, 40, 52)
    assert not torch.allclose(model.enhance(x, reference=other), model.enhance(x))
    with pytest.raises(ValueError, match="shape"):
        model.enhance(x, reference=torch.rand(1, 3, 40, 50))


def test_reference_mode_needs_hq_model(tiny_model):
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(RuntimeError, match="hq_path"):
        tiny_model.enhance(x, reference=x)
