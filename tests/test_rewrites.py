"""Export-time layer replacements (export/rewrites.py): each computes what it replaces, and the exported graph
keeps the form ONNX Runtime runs lean (no upsampled decoder tensor, one Gemm per linear, a fused Gelu)."""
from __future__ import annotations

import collections
import copy

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from codeenhance.blocks import DecoderStage
from codeenhance.swin import Mlp
from export import onnx as onnx_export
from export.rewrites import ErfGelu, SubpixelUpsampleConv, TokenLinear, export_friendly


@pytest.mark.parametrize("cin,cout,h,w,bias", [(8, 5, 7, 9, True), (16, 4, 1, 1, True), (3, 6, 12, 5, False),
                                               (4, 4, 2, 31, True)])
def test_subpixel_conv_equals_upsample_then_conv(cin, cout, h, w, bias):
    gen = torch.Generator().manual_seed(cin * 100 + h)
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        if bias:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen))
    x = torch.randn(2, cin, h, w, generator=gen)
    with torch.no_grad():
        expected = conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
        got = SubpixelUpsampleConv(conv)(x)
    assert got.shape == expected.shape == (2, cout, 2 * h, 2 * w)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 4, 3, padding=1, stride=2),
    nn.Conv2d(4, 4, 1),
    nn.Conv2d(4, 4, 3, padding=1, dilation=2),
    nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
    nn.Conv2d(4, 4, 3, padding=1, groups=2),
], ids=["stride2", "1x1", "dilation2", "reflect", "groups2"])
def test_subpixel_conv_refuses_convs_it_cannot_rewrite(conv):
    with pytest.raises(ValueError, match="plain 3x3 conv with padding 1"):
        SubpixelUpsampleConv(conv)


def test_erf_gelu_equals_exact_gelu():
    x = torch.linspace(-12, 12, 20001)
    torch.testing.assert_close(ErfGelu()(x), nn.GELU()(x), rtol=1e-6, atol=1e-6)


def test_token_linear_equals_linear_and_shares_its_parameters():
    linear = nn.Linear(6, 10)
    token_linear = TokenLinear(linear)
    assert token_linear.weight is linear.weight and token_linear.bias is linear.bias
    for shape in [(3, 6), (2, 5, 6), (2, 1, 4, 6)]:
        x = torch.randn(shape)
        got = token_linear(x)
        assert got.shape == (*shape[:-1], 10)
        torch.testing.assert_close(got, linear(x), rtol=1e-6, atol=1e-6)


def test_export_friendly_model_matches_the_eager_model(tiny_model):
    net = copy.deepcopy(tiny_model).eval()
    export_friendly(net)
    modules = list(net.modules())
    assert not any(isinstance(m, nn.Upsample) for d in modules if isinstance(d, DecoderStage) for m in d.modules())
    assert not any(isinstance(m, nn.GELU) for mlp in modules if isinstance(mlp, Mlp) for m in mlp.modules())
    assert not any(isinstance(m, nn.Linear) for m in net.context_module.modules())
    assert not any(isinstance(m, (ErfGelu, SubpixelUpsampleConv, TokenLinear)) for m in tiny_model.modules())
    gen = torch.Generator().manual_seed(1)
    for shape in [(1, 3, 37, 50), (2, 3, 64, 64)]:
        image = torch.rand(shape, generator=gen)
        w = torch.rand(shape[0], generator=gen) * 2
        with torch.no_grad():
            expected, expected_codes = tiny_model(image, w, 2 - w)
            got, codes = net(image, w, 2 - w)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(codes, expected_codes)


@pytest.fixture(scope="module")
def tiny_graph(tiny_model, tmp_path_factory):
    return onnx_export.export_onnx(tiny_model, tmp_path_factory.mktemp("rewrites") / "tiny.onnx")


def test_exported_graph_has_no_upsampled_decoder_tensor(tiny_graph):
    ops = collections.Counter(n.op_type for n in onnx.load(str(tiny_graph)).graph.node)
    assert ops["DepthToSpace"] == 2  # one per decoder stage
    assert ops["Resize"] == 1  # only the semantic branch's resize to the 1/4 grid is left


def test_onnx_runtime_fuses_gelu_and_the_linear_layers(tiny_model, tiny_graph, tmp_path):
    """The reason the rewrites exist: ONNX Runtime's own fusions must fire on the exported graph."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tiny_graph), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    blocks = sum(isinstance(m, Mlp) for m in tiny_model.modules())  # one MLP per Swin block
    assert ops["Gelu"] == blocks and ops["Erf"] == 0 and ops["BiasGelu"] == 0
    assert ops["Gemm"] >= 4 * blocks  # qkv, proj, fc1, fc2 of every Swin block
