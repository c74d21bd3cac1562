"""Reading and writing CodeEnhance checkpoints in the official BasicSR format.

Official files are ``torch.save``d dicts with the generator weights under ``params`` (and/or
``params_ema``), possibly with a DataParallel ``module.`` prefix and fp16 tensors.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from .blocks import Encoder
from .config import OFFICIAL, CodeEnhanceConfig
from contract import formats
from contract.errors import InputError
from contract.files import AtomicOutput
from .network import CodeEnhance


class CheckpointError(InputError):
    """A checkpoint file that cannot be used, with the reason and what to do."""


# (name in the official checkpoint, name in this package): the only places where our modules differ.
OFFICIAL_PREFIXES = (
    ("seg_feat_extractor.segnet.backbone.", "semantic_backbone."),
    ("quantize_group.0.", "quantizer."),
    ("before_quant_group.0.", "before_quant."),
    ("after_quant_group.0.conv.", "after_quant."),
)

# Stored in official files but recomputed (Swin masks, index tables) or unused (the DeepLab head).
IGNORED = re.compile(r"(\.attn_mask|\.relative_position_index)$|^seg_feat_extractor\.segnet\.classifier\.")

HQ_ENCODER_PREFIX = "multiscale_encoder."


def to_official_name(name: str) -> str:
    for official, ours in OFFICIAL_PREFIXES:
        if name.startswith(ours):
            return official + name[len(ours):]
    return name


def from_official_name(name: str) -> str:
    for official, ours in OFFICIAL_PREFIXES:
        if name.startswith(official):
            return ours + name[len(official):]
    return name


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load the generator state dict (official names, fp32, no ``module.`` prefix) from a checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file (e.g. {path}/net_g_latest.pth)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); the download or copy did not finish")
    kind = formats.detect(path)
    if kind not in (formats.TORCH_CHECKPOINT, formats.UNKNOWN):  # an unknown start may still be a legacy file
        made = {formats.ONNX_GRAPH: "an exported graph", formats.TORCH_PACKAGE: "a compiled package",
                formats.OPENVINO_IR: "an OpenVINO model"}.get(kind)
        raise CheckpointError(f"{path} is {formats.a(kind)}, not a torch checkpoint"
                              + (f" ({made}); pass the .pth checkpoint it was made from" if made else
                                 "; pass the CodeEnhance generator checkpoint (BasicSR net_g .pth)"))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} is not a plain weights checkpoint: it holds Python objects that are not loaded for safety "
            f"(torch.load weights_only=True). Re-save only the state dict: torch.save({{'params': model.state_dict()}}, ...). "
            f"Detail: {str(e).splitlines()[0]}"
        ) from e
    except Exception as e:  # the unpickler raises many types on garbage (IndexError, EOFError, RuntimeError, ...)
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint: it looks truncated or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no detail'}). Download or copy it again."
        ) from e
    return extract_state_dict(obj, path)


def extract_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and ("params" in obj or "params_ema" in obj):
        key = "params" if "params" in obj else "params_ema"
        obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path} holds no state dict: expected a dict of tensors, or one under 'params'/'params_ema' "
            f"(BasicSR format); found {keys}"
        )
    out = {}
    for name, t in obj.items():
        name = name[len("module."):] if name.startswith("module.") else name
        out[name] = t.float() if t.is_floating_point() else t
    return out


def infer_config(sd: dict[str, torch.Tensor], path: Path | str = "checkpoint") -> CodeEnhanceConfig:
    """Read the network sizes off the tensor shapes, so official and smaller checkpoints load alike."""
    needed = {
        "multiscale_encoder.in_conv.weight": None,
        "multiscale_encoder.blocks.0.0.weight": None,
        "multiscale_encoder.blocks.1.0.weight": None,
        "quantize_group.0.embedding.weight": None,
        "context_module.swin_blks.0.residual_group.blocks.0.attn.relative_position_bias_table": None,
        "context_module.swin_blks.0.residual_group.blocks.0.mlp.fc1.weight": None,
    }
    missing = [k for k in needed if k not in sd]
    if missing:
        found = sum(k in sd for k in needed)
        raise CheckpointError(
            f"{path} is not a CodeEnhance generator checkpoint: {len(missing)} of {len(needed)} defining weights are "
            f"missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); found {found}. Its first keys are "
            f"{list(sd)[:5]}. A discriminator (net_d) or another network's checkpoint cannot be used; pass net_g."
        )
    groups = {int(m.group(1)) for k in sd if (m := re.match(r"context_module\.swin_blks\.(\d+)\.conv\.weight$", k))}
    depth = {int(m.group(1)) for k in sd if (m := re.match(r"context_module\.swin_blks\.0\.residual_group\.blocks\.(\d+)\.norm1\.weight$", k))}
    table = sd["context_module.swin_blks.0.residual_group.blocks.0.attn.relative_position_bias_table"]
    fc1 = sd["context_module.swin_blks.0.residual_group.blocks.0.mlp.fc1.weight"]
    window = (int(round(table.shape[0] ** 0.5)) + 1) // 2
    code = sd["quantize_group.0.embedding.weight"]
    try:
        return CodeEnhanceConfig(
            channels=tuple(int(sd[f"multiscale_encoder.{k}"].shape[0]) for k in ("in_conv.weight", "blocks.0.0.weight", "blocks.1.0.weight")),
            swin_groups=len(groups),
            swin_depth=len(depth),
            swin_heads=int(table.shape[1]),
            window_size=window,
            mlp_ratio=fc1.shape[0] / fc1.shape[1],
            codebook_size=int(code.shape[0]),
            code_dim=int(code.shape[1]),
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: its weight shapes do not describe a valid CodeEnhance network: {e}") from e


def check_names_and_shapes(expected: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], path, what: str) -> None:
    sd = {k: v for k, v in sd.items() if not IGNORED.search(k)}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        def listing(title, items):
            if not items:
                return ""
            shown = "\n    ".join(items[:10])
            more = f"\n    ... and {len(items) - 10} more" if len(items) > 10 else ""
            return f"\n  {title} ({len(items)}):\n    {shown}{more}"

        raise CheckpointError(
            f"{path} does not match the {what}:"
            + listing("missing keys", missing)
            + listing("unexpected keys", unexpected)
            + listing("shape mismatches", mismatched)
        )


def load_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    hq_path: str | os.PathLike | None = None,
) -> CodeEnhance:
    """Build a CodeEnhance network from a checkpoint (official BasicSR format or a bare state dict), in eval mode.

    ``hq_path``: the high-quality-prior checkpoint (``pretrained_HQPs.pth``), needed for reference-image mode.
    """
    sd = read_state_dict(path)
    model = CodeEnhance(infer_config(sd, path))
    expected = {to_official_name(k): v for k, v in model.state_dict().items()}
    check_names_and_shapes(expected, sd, path, "CodeEnhance network it describes")
    model.load_state_dict({from_official_name(k): v for k, v in sd.items() if k in expected})
    if hq_path is not None:
        model.attach_reference_encoder(load_reference_encoder(hq_path, model.config))
    return model.to(device).eval()


def load_reference_encoder(path, config: CodeEnhanceConfig) -> Encoder:
    """The encoder of the high-quality-prior model, whose features replace the style input of the IFT blocks."""
    sd = read_state_dict(path)
    encoder = Encoder(config.channels, config.norm_groups)
    enc_sd = {k[len(HQ_ENCODER_PREFIX):]: v for k, v in sd.items() if k.startswith(HQ_ENCODER_PREFIX)}
    if not enc_sd:
        raise CheckpointError(f"{path} has no '{HQ_ENCODER_PREFIX}*' weights: it is not a high-quality-prior (HQP) checkpoint")
    expected = encoder.state_dict()
    check_names_and_shapes(expected, enc_sd, path, "reference encoder")
    encoder.load_state_dict(enc_sd)
    return encoder.eval()


def official_state_dict(model: CodeEnhance) -> dict[str, torch.Tensor]:
    return {to_official_name(k): v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def atomic_write(path: str | os.PathLike, write, overwrite: bool = False) -> Path:
    """``write(tmp)`` fills a temporary file that then replaces ``path`` in one rename; FileExistsError if ``path``
    exists and ``overwrite`` is false."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --overwrite) to replace it")
    with AtomicOutput(path) as tmp:
        write(tmp)
    return path


def atomic_torch_save(obj, path: str | os.PathLike, overwrite: bool = False) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), overwrite)


def random_model(config: CodeEnhanceConfig = OFFICIAL, seed: int = 0) -> CodeEnhance:
    """A seeded, randomly initialised (untrained) network."""
    gen = torch.Generator().manual_seed(seed)
    model = CodeEnhance(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif name.endswith("shift_codebook"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
            elif p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
            else:  # 1-d: norm scales start at 1, biases at 0
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02 + (1.0 if name.endswith("weight") else 0.0))
        # Keep the (meaningless) output mid-range, so clamped 8-bit comparisons of the demo are not all 0 or 255.
        model.out_conv.weight.mul_(0.02)
        model.out_conv.bias.fill_(0.5)
    return model.eval()


def save_demo_checkpoint(path: str | os.PathLike, seed: int = 0, *, config: CodeEnhanceConfig = OFFICIAL, overwrite: bool = False) -> Path:
    """Write a seeded random CodeEnhance checkpoint in the official format, labelled as untrained.

    The official weights cannot be downloaded here; this file is the embedded default for demos and tests.
    Its outputs are not enhanced images.
    """
    model = random_model(config, seed)
    meta = {
        "untrained": True,
        "description": "codeenhance-deploy demo checkpoint: random weights, NOT a trained model",
        "seed": seed,
        "config": model.config.to_dict(),
    }
    return atomic_torch_save({"params": official_state_dict(model), "meta": meta}, path, overwrite=overwrite)
