"""runtime: backends (torch, onnxruntime), the Enhancer's image handling, batching and tiling.

The torch backend must reproduce CodeEnhance.enhance to the 8-bit level on real photos; onnxruntime must stay
within one 8-bit level of it except next to code indices that differ. Most tests use the tiny preset on small
images; real photos come from ../shared and are downscaled so the tests stay fast on 2 CPU cores.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from codeenhance.islands import Float32Island, Float32Output, keep_fp32_islands
from contract.errors import InputError

from benchmarks.harness.inputs import load_photo
from benchmarks.runtime_fidelity import compare_backends
from export.fidelity import psnr
from runtime import (
    BackendError,
    BackendInfo,
    Enhancer,
    InferResult,
    backend_for,
    create_backend,
)
from runtime.backend import BackendBase
from runtime.enhancer import LUMA, feather, plan_patches, tile_starts, to_model_input
from runtime.onnxruntime_backend import OnnxRuntimeBackend, resolve_providers
from runtime.torch_backend import TorchBackend

PHOTOS = ("LIME/1.bmp", "MEF/Candle.png")


def downscaled_photo(lowlight_dir, name: str, longest: int) -> np.ndarray:
    """A BGR uint8 photo with its longest side reduced to ``longest`` (area interpolation)."""
    return load_photo(lowlight_dir / name, longest)


def reference_8bit(model, image_bgr: np.ndarray, w_texture=1.0, w_style=1.0) -> np.ndarray:
    """What the original test() saves: RGB/255 -> enhance -> clamp -> *255 -> round, back to BGR uint8."""
    x = torch.from_numpy(np.ascontiguousarray(image_bgr[..., ::-1])).permute(2, 0, 1)[None].float() / 255
    out = model.enhance(x, w_texture, w_style).clamp(0, 1)
    return (out * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()[..., ::-1]


def random_image(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    high = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * high).astype(dtype)


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Enhancer:
    return Enhancer(backend=TorchBackend(tiny_model))


# --- backend choice ---


@pytest.mark.parametrize("name, backend", [("m.pth", "torch"), ("m.PT", "torch"), ("m.onnx", "onnxruntime"),
                                           ("m.plan", "tensorrt"), ("m.engine", "tensorrt"), ("m.trt", "tensorrt")])
def test_backend_from_extension(name, backend):
    assert backend_for(name) == backend


def test_backend_choice_errors_name_the_options():
    assert backend_for("model.bin", "onnxruntime") == "onnxruntime"
    with pytest.raises(ValueError, match=r"\.bin.*known: .*\.onnx.*backend="):
        backend_for("model.bin")
    with pytest.raises(ValueError, match="unknown backend 'ort'"):
        backend_for("model.onnx", "ort")


def test_torch_backend_reports_a_bad_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(InputError, match="bad.pth is a text file, not a torch checkpoint"):
        Enhancer(bad)
    bad.write_bytes(b"\x80\x02 a truncated pickle")
    with pytest.raises(BackendError, match="torch: .*bad.pth"):
        Enhancer(bad)
    for precision in ("fp16", "tf32"):
        with pytest.raises(BackendError, match=f"{precision} needs a CUDA device"):
            TorchBackend(bad, precision=precision)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no usable CUDA"):
            TorchBackend(bad, device="cuda")


# --- torch: the reference ---


def test_torch_backend_equals_model_enhance_on_real_photos(golden_model, lowlight_dir):
    enhancer = Enhancer(backend=TorchBackend(golden_model))
    for name in PHOTOS:
        photo = downscaled_photo(lowlight_dir, name, 96)
        out = enhancer.enhance(photo)
        assert out.shape == photo.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, reference_8bit(golden_model, photo))


def test_torch_backend_from_a_checkpoint_path_with_weights(tiny_ckpt, tiny_model):
    image = random_image((37, 53, 3))
    with Enhancer(tiny_ckpt) as enhancer:
        assert enhancer.info.name == "torch" and enhancer.info.precision == "fp32"
        assert enhancer.info.extra["config"]["channels"] == [32, 32, 64]
        np.testing.assert_array_equal(enhancer.enhance(image, 0.5, 2.0), reference_8bit(tiny_model, image, 0.5, 2.0))


def test_fp32_islands_under_autocast(tiny_model):
    """The mixed-precision wrapping keeps the code search and the IFT statistics' input in float32 while the
    rest runs in low precision (checked with CPU bfloat16 autocast, the same mechanism as CUDA fp16)."""
    import copy

    model = keep_fp32_islands(copy.deepcopy(tiny_model))
    assert isinstance(model.quantizer, Float32Island)
    assert all(isinstance(f.encode_enc2, Float32Output) for f in model.fuse_convs_dict.values())
    seen = {}

    def record(key, of_input=False):
        def hook(module, args, out):  # returns None: a forward hook's return value would replace the output
            seen.setdefault(key, (args[0] if of_input else out).dtype)
        return hook

    model.quantizer.inner.register_forward_hook(record("quantizer", of_input=True))
    model.fuse_convs_dict["64"].encode_enc2.register_forward_hook(record("stats"))
    model.before_quant.register_forward_hook(record("conv"))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = model(torch.rand(1, 3, 40, 40), torch.ones(1), torch.ones(1))
    assert seen == {"conv": torch.bfloat16, "quantizer": torch.float32, "stats": torch.float32}
    assert torch.isfinite(out.float()).all()


def test_lean_fp16_runs_norms_on_fp16_and_keeps_the_islands(tiny_model, lowlight_dir):
    """fp16-lean (issue 14): fp16 weights, no autocast; GroupNorm/LayerNorm take and give fp16 (no fp32 copy),
    the code search and the IFT statistics stay fp32. Runs on CPU (torch's fp16 kernels) to check the wiring and
    the fidelity; measured on the tiny preset, a 96 px photo: 46.6 dB, 99.8 % codes."""
    backend = TorchBackend(tiny_model, precision="fp16-lean")
    backend.load()
    model, seen = backend.model, {}

    def record(key, of_input=False):
        def hook(module, args, out):
            seen.setdefault(key, (args[0] if of_input else out).dtype)
        return hook

    norm = next(m for m in model.modules() if isinstance(m, torch.nn.GroupNorm))
    norm.register_forward_hook(record("groupnorm in", of_input=True))
    norm.register_forward_hook(record("groupnorm out"))
    layer_norm = next(m for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    layer_norm.register_forward_hook(record("layernorm in", of_input=True))
    model.quantizer.inner.register_forward_hook(record("quantizer", of_input=True))
    model.fuse_convs_dict["64"].inner.encode_enc2.register_forward_hook(record("stats"))
    model.fuse_convs_dict["64"].register_forward_hook(record("fusion out"))
    photo = downscaled_photo(lowlight_dir, PHOTOS[1], 96)
    x = to_model_input(photo)[0][None]
    ones = np.ones(1, np.float32)
    lean = backend.infer(x, ones, ones)
    fp32 = TorchBackend(tiny_model).infer(x, ones, ones)
    assert seen == {"groupnorm in": torch.float16, "groupnorm out": torch.float16, "layernorm in": torch.float16,
                    "quantizer": torch.float32, "stats": torch.float32, "fusion out": torch.float16}
    assert model.quantizer.inner.codebook().dtype == torch.float32
    info = backend.describe()
    assert info.precision == "fp16-mixed" and info.extra["fp16"] == "lean"
    assert lean.enhanced.dtype == np.float32 and np.isfinite(lean.enhanced).all()
    assert (lean.codes == fp32.codes).mean() > 0.98
    assert psnr(lean.enhanced, fp32.enhanced) > 40.0
    assert tiny_model.quantizer.codebook().dtype == torch.float32  # the caller's model is not converted


def test_cuda_graphs_are_refused_off_cuda(tiny_model):
    with pytest.raises(BackendError, match="cuda_graphs needs a CUDA device"):
        TorchBackend(tiny_model, cuda_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_replay_equals_the_eager_run(tiny_model):
    rng = np.random.default_rng(0)
    with TorchBackend(tiny_model, device="cuda", precision="fp16-lean") as eager, \
            TorchBackend(tiny_model, device="cuda", precision="fp16-lean", cuda_graphs=True) as graphed:
        for shape in ((1, 3, 64, 96), (2, 3, 40, 40), (1, 3, 64, 96)):  # a shape seen again replays its graph
            x = (rng.random(shape, dtype=np.float32) * 0.3).astype(np.float32)
            w = np.linspace(0.5, 1.5, shape[0]).astype(np.float32)
            a, b = eager.infer(x, w, w), graphed.infer(x, w, w)
            np.testing.assert_allclose(b.enhanced, a.enhanced, atol=1e-3)
            np.testing.assert_array_equal(b.codes, a.codes)
        assert len(graphed.graphs) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs a CUDA GPU")
def test_torch_fp16_on_cuda_stays_close_to_fp32(tiny_model, lowlight_dir):
    photo = downscaled_photo(lowlight_dir, PHOTOS[1], 96)
    x = to_model_input(photo)[0][None]
    ones = np.ones(1, np.float32)
    fp32 = TorchBackend(tiny_model, device="cuda").infer(x, ones, ones)
    fp16 = TorchBackend(tiny_model, device="cuda", precision="fp16").infer(x, ones, ones)
    assert fp16.enhanced.dtype == np.float32 and (fp16.codes == fp32.codes).mean() > 0.95
    assert np.abs(fp16.enhanced - fp32.enhanced).mean() * 255 < 1.0


# --- onnxruntime ---


def test_provider_choice():
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, available) == ["CPUExecutionProvider"]
    assert resolve_providers("auto", ["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("trt, cuda,cpu", available) == available
    with pytest.raises(BackendError, match=r"CUDAExecutionProvider not available .*codeenhance-deploy\[gpu\]"):
        resolve_providers(["cuda"], ["CPUExecutionProvider"])


def test_onnxruntime_describe_reads_metadata_and_dynamic_shapes(tiny_onnx):
    with OnnxRuntimeBackend(tiny_onnx, threads=2) as backend:
        info = backend.describe()
    assert info.name == "onnxruntime" and info.device == "CPUExecutionProvider"
    assert (info.min_hw, info.max_hw, info.max_batch) == ((1, 1), None, None)  # dynamic N, H, W
    assert info.extra["outputs"] == ["enhanced", "codes"]
    assert '"code_dim": 32' in info.extra["metadata"]["model_config"]


def test_onnxruntime_rejects_a_graph_outside_the_contract(tmp_path):
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])),
         tmp_path / "other.onnx")
    with pytest.raises(BackendError, match=r"expected inputs \['image', 'w_texture', 'w_style'\].*found inputs \['x'\]"):
        Enhancer(tmp_path / "other.onnx")
    with pytest.raises(BackendError, match="model not found"):
        Enhancer(tmp_path / "missing.onnx")


def test_onnxruntime_within_one_level_of_torch_on_real_photos(tiny_onnx, tiny_model, lowlight_dir):
    torch_backend, ort_backend = TorchBackend(tiny_model), OnnxRuntimeBackend(tiny_onnx, threads=2)
    photos = [downscaled_photo(lowlight_dir, name, 80) for name in PHOTOS]
    for row in compare_backends(torch_backend, ort_backend, photos, w_texture=0.7, w_style=1.3):
        assert row["max_error_outside_code_changes"] <= 1, row
        assert row["code_agreement"] > 0.9, row
    # The Enhancer path agrees as well (same conversion around either backend).
    ort_out = Enhancer(backend=ort_backend).enhance(photos[0])
    assert np.abs(ort_out.astype(int) - reference_8bit(tiny_model, photos[0])).max() <= 1


# --- image forms ---


def test_odd_sizes_and_a_single_pixel(tiny, tiny_model):
    for shape in [(1, 1, 3), (7, 100, 3), (33, 47, 3)]:
        image = random_image(shape, seed=shape[0])
        np.testing.assert_array_equal(tiny.enhance(image), reference_8bit(tiny_model, image))


def test_gray_in_gray_out(tiny):
    gray = random_image((21, 34))
    out = tiny.enhance(gray)
    assert out.shape == gray.shape and out.dtype == np.uint8
    color = tiny.enhance(np.dstack([gray] * 3).astype(np.float32) / 255)  # float in -> float out, BGR
    expected = np.rint(np.clip(color[..., ::-1] @ LUMA, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert tiny.enhance(gray[..., None]).shape == (21, 34, 1)


def test_rgba_keeps_its_alpha(tiny):
    bgra = random_image((19, 23, 4), seed=3)
    out = tiny.enhance(bgra)
    assert out.shape == bgra.shape
    np.testing.assert_array_equal(out[..., 3], bgra[..., 3])
    np.testing.assert_array_equal(out[..., :3], tiny.enhance(bgra[..., :3]))


def test_sixteen_bit_and_channel_order(tiny):
    image8 = random_image((25, 31, 3), seed=4)
    out16 = tiny.enhance(image8.astype(np.uint16) * 257)
    assert out16.dtype == np.uint16
    assert np.abs(out16 / 257.0 - tiny.enhance(image8)).max() <= 0.5 + 1e-6  # the same values, finer steps
    assert len(np.unique(out16 % 257)) > 1  # not just the 8-bit result scaled up
    rgb = Enhancer(backend=tiny.backend, channel_order="rgb")
    np.testing.assert_array_equal(rgb.enhance(image8[..., ::-1]), tiny.enhance(image8)[..., ::-1])


@pytest.mark.parametrize("image, error", [
    (np.zeros((8, 8, 3), np.int32), TypeError), (np.zeros((8, 8, 5), np.uint8), ValueError),
    (np.zeros((0, 8, 3), np.uint8), ValueError), (np.zeros((2, 8, 8, 3), np.uint8), ValueError),
])
def test_unsupported_images_are_refused(tiny, image, error):
    with pytest.raises(error):
        tiny.enhance(image)


# --- batching and tiling ---


class GammaBackend(BackendBase):
    """A pointwise backend (out = in ** 0.5 * w_texture) with chosen shape limits, recording each call's shape.

    Pointwise, so a tiled result must equal the whole one: this isolates the Enhancer's tiling and blending."""

    name = "gamma"

    def __init__(self, min_hw=(1, 1), max_hw=None, max_batch=None):
        super().__init__()
        self.info = BackendInfo(self.name, "cpu", "fp32", min_hw, max_hw, max_batch)
        self.calls = []

    def _load(self):
        pass

    def _infer(self, images, w_texture, w_style):
        self.calls.append(images.shape)
        return InferResult(np.sqrt(images) * w_texture[:, None, None, None])

    def _describe(self):
        return self.info

    def _close(self):
        pass


def test_tile_starts_cover_with_full_tiles():
    assert tile_starts(100, 128, 16) == [0]
    assert tile_starts(300, 128, 32) == [0, 96, 172]
    for length, tile, overlap in [(300, 128, 32), (1000, 511, 32), (129, 64, 8)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_feather_weights_sum_to_one_in_regular_overlaps():
    left, right = feather(64, 16, True, False), feather(64, 16, False, True)
    np.testing.assert_allclose(left[-16:] + right[:16], 1.0, rtol=0, atol=1e-6)
    assert left[0] == 1 and right[-1] == 1 and left.min() > 0 and right.min() > 0


def test_automatic_tiles_are_the_largest_that_fit_and_pad_to_multiples_of_32():
    enhancer = Enhancer(backend=GammaBackend(max_hw=(100, 1000)))
    assert enhancer.tile_for(100, 1000) is None
    assert enhancer.tile_for(150, 2000) == (95, 991)  # padded inside the model to 96 and 992
    budget = Enhancer(backend=GammaBackend(), max_pixels=1100 * 1100)
    assert budget.tile_for(1000, 1300) == (1087, 1087) and budget.tile_for(1000, 1000) is None
    assert Enhancer(backend=GammaBackend(max_hw=(48, 48))).tile_for(60, 60) == (48, 48)  # small: as is


def test_tiled_equals_whole_for_a_pointwise_backend():
    image = random_image((130, 301, 3), np.uint16, seed=5)
    whole = Enhancer(backend=GammaBackend(), tile=0).enhance(image)
    backend = GammaBackend()
    tiled = Enhancer(backend=backend, tile=64, overlap=16, batch=8)
    assert np.abs(tiled.enhance(image).astype(int) - whole).max() <= 1  # float blending rounding only
    patches = plan_patches(0, 130, 301, (64, 64), 16)
    assert {c[2:] for c in backend.calls} == {(64, 64)} and sum(c[0] for c in backend.calls) == len(patches)
    assert max(c[0] for c in backend.calls) == 8


def test_shape_limits_drive_tiling_and_padding():
    backend = GammaBackend(min_hw=(32, 32), max_hw=(48, 48), max_batch=2)
    enhancer = Enhancer(backend=backend, batch=4)  # tile=None: tile only beyond the backend's limits
    small, large = random_image((10, 20, 3), seed=6), random_image((100, 90, 3), seed=7)
    out_small, out_large = enhancer.enhance_batch([small, large], [1.0, 0.5])
    assert out_small.shape == small.shape and out_large.shape == large.shape
    assert all(c[0] <= 2 and 32 <= c[2] <= 48 and 32 <= c[3] <= 48 for c in backend.calls)
    expected = np.rint(np.sqrt(large / 255.0) * 0.5 * 255)
    assert np.abs(out_large - expected).max() <= 1
    with pytest.raises(ValueError, match="exceeds the largest supported size 48x48"):
        Enhancer(backend=GammaBackend(max_hw=(48, 48)), tile=0).enhance(large)
    budget = GammaBackend()
    Enhancer(backend=budget, max_pixels=40 * 40).enhance(large)  # the memory budget tiles too
    assert all(c[0] * c[2] * c[3] <= 40 * 40 for c in budget.calls) and len(budget.calls) > 1


def test_a_bad_image_or_a_refused_call_fails_alone_and_each_image_is_planned_once():
    small, large, tiled = (random_image(shape, seed=i) for i, shape in enumerate([(20, 30, 3), (100, 90, 3), (70, 70, 3)]))
    refusing = Enhancer(backend=GammaBackend(max_hw=(48, 48)), tile=0)  # refuses the large image
    bad = np.zeros(5)  # not an image
    out = refusing.enhance_batch([small, bad, large], errors="return")
    assert out[0].shape == small.shape
    assert isinstance(out[1], (TypeError, ValueError)) and isinstance(out[2], ValueError) and "exceeds" in str(out[2])
    with pytest.raises(TypeError):
        refusing.enhance_batch([small, bad])  # errors="raise", the default

    plans = []
    backend = GammaBackend()
    enhancer = Enhancer(backend=backend, tile=48, overlap=8)
    outputs = enhancer.enhance_batch([small, tiled], on_tiles=lambda i, patches: plans.append((i, len(patches))))
    assert plans == [(1, len(plan_patches(1, 70, 70, (48, 48), 8)))]  # the tiled image only, once
    assert outputs[1].shape == tiled.shape and "above tile=48" in enhancer.tile_reason(70, 70)


def test_batches_group_same_sizes_and_keep_per_image_weights(tiny_model):
    class Recording(TorchBackend):
        def _infer(self, images, w_texture, w_style):
            self.shapes.append(images.shape)
            return super()._infer(images, w_texture, w_style)

    backend = Recording(tiny_model)
    backend.shapes = []
    images = [random_image((24, 40, 3), seed=i) for i in range(3)] + [random_image((30, 20, 3), seed=9)]
    weights = [1.0, 0.5, 0.0, 2.0]
    batched = Enhancer(backend=backend, batch=4).enhance_batch(images, weights, 1.0)
    assert sorted(backend.shapes) == [(1, 3, 30, 20), (3, 3, 24, 40)]
    for image, weight, out in zip(images, weights, batched):
        # Batched convolutions may round differently from single ones by a hair: at most one level.
        assert np.abs(out.astype(int) - reference_8bit(tiny_model, image, weight)).max() <= 1


def test_tiling_a_real_photo_approximates_the_whole_image(tiny, lowlight_dir):
    photo = downscaled_photo(lowlight_dir, PHOTOS[0], 112)
    whole = tiny.enhance(photo)
    tiled = Enhancer(backend=tiny.backend, tile=64, overlap=16, batch=4).enhance(photo)
    assert tiled.shape == photo.shape
    db = psnr(tiled, whole, peak=255)
    # Untrained tiny weights react strongly to the per-tile IFT statistics (~21 dB measured); a seam or
    # misplaced tile would drop far below this.
    assert 15 < db < 99, db


def test_create_backend_does_not_load(tmp_path):
    backend = create_backend(tmp_path / "later.onnx")
    assert isinstance(backend, OnnxRuntimeBackend) and backend.session is None
    with pytest.raises(BackendError, match="model not found"):
        backend.load()
    x = to_model_input(random_image((4, 4, 3)))[0][None]
    with pytest.raises(BackendError):
        backend.infer(x, np.ones(1), np.ones(1))
