"""The CodeEnhance generator: semantic branch, encoder, Swin context, vector quantizer, IFT-fused decoder."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from contract.errors import InputError
from contract.graph import INPUT_IMAGE, INPUT_W_STYLE, INPUT_W_TEXTURE

from .blocks import DecoderStage, Encoder, IFTFusion
from .config import OFFICIAL, CodeEnhanceConfig
from .mobilenetv2 import OUT_CHANNELS as SEMANTIC_CHANNELS
from .mobilenetv2 import MobileNetV2Backbone
from .padding import flip_pad_to_multiple
from .quantizer import VectorQuantizer
from .swin import SwinContext

Weight = float | torch.Tensor


class CodeEnhance(nn.Module):
    """Low-light enhancement network of CodeEnhance (Wu et al.), inference only.

    ``forward`` is tensor-in/tensor-out and export-ready; ``enhance`` is the convenient eager entry point.
    """

    def __init__(self, config: CodeEnhanceConfig = OFFICIAL):
        super().__init__()
        self.config = config
        c_full, c_half, c_quarter = config.channels
        groups = config.norm_groups

        self.semantic_backbone = MobileNetV2Backbone(output_stride=16)
        self.multiscale_encoder = Encoder(config.channels, groups)
        # Set by ``attach_reference_encoder``: the high-quality-prior encoder for reference-image mode.
        self.reference_encoder: Encoder | None = None

        self.resize_semantic_feat_conv = nn.Conv2d(SEMANTIC_CHANNELS, c_quarter, 3, padding=1)
        self.fuse_semantic_encode = nn.Sequential(nn.Conv2d(2 * c_quarter, c_quarter, 3, padding=1), nn.ReLU())
        self.context_module = SwinContext(
            c_quarter, config.swin_groups, config.swin_depth, config.swin_heads, config.window_size, config.mlp_ratio
        )

        self.before_quant = nn.Conv2d(c_quarter, config.code_dim, 1)
        self.quantizer = VectorQuantizer(config.codebook_size, config.code_dim)
        self.after_quant = nn.Conv2d(config.code_dim, c_quarter, 3, padding=1)

        # Keys are the original's feature-size names: "64" is the 1/4 scale, "128" the 1/2 scale.
        self.fuse_convs_dict = nn.ModuleDict({"64": IFTFusion(c_quarter, groups), "128": IFTFusion(c_half, groups)})
        self.decoder_group = nn.ModuleList(
            [DecoderStage(c_quarter, c_half, groups), DecoderStage(c_half, c_full, groups)]
        )
        self.out_conv = nn.Conv2d(c_full, 3, 3, padding=1)

    def attach_reference_encoder(self, encoder: Encoder) -> None:
        self.reference_encoder = encoder

    def forward(
        self,
        image: torch.Tensor,
        w_texture: torch.Tensor,
        w_style: torch.Tensor,
        reference: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image [B,3,H,W] in [0,1]; w_texture, w_style [B]; optional reference [B,3,H,W].

        Returns the unclamped output [B,3,H,W] and the code indices [B,1,Hp/4,Wp/4] (int64).
        """
        h, w = image.shape[-2:]
        x = flip_pad_to_multiple(image, self.config.pad_multiple)
        half, quarter = self.multiscale_encoder(x)
        if reference is None:
            style_half, style_quarter = half, quarter
        else:
            if self.reference_encoder is None:
                raise RuntimeError("reference-image mode needs the high-quality-prior model: load_model(..., hq_path=...)")
            style_half, style_quarter = self.reference_encoder(flip_pad_to_multiple(reference, self.config.pad_multiple))

        quantized, codes = self.quantizer(self.code_features(x, quarter))
        wt = w_texture.to(x.dtype).view(-1, 1, 1, 1)
        ws = w_style.to(x.dtype).view(-1, 1, 1, 1)
        out = self.decode(quantized, half, quarter, (style_half, style_quarter, wt, ws))
        return out[..., :h, :w], codes

    def code_features(self, x: torch.Tensor, quarter: torch.Tensor) -> torch.Tensor:
        """The features the quantizer looks up: semantic fusion of the 1/4-scale encoding, Swin context, 1x1 conv."""
        semantic = F.interpolate(self.semantic_backbone(x), size=quarter.shape[-2:], mode="nearest")
        feat = self.fuse_semantic_encode(torch.cat([quarter, self.resize_semantic_feat_conv(semantic)], dim=1))
        return self.before_quant(self.context_module(feat))

    def decode(self, quantized: torch.Tensor, half: torch.Tensor, quarter: torch.Tensor, ift) -> torch.Tensor:
        """The decoder from the quantized features. ``ift`` = (style_half, style_quarter, w_texture, w_style) with
        the weights [B,1,1,1], or None: no IFT blocks (what they compute with both weights 0), as training's
        stage 1 uses it."""
        y = self.after_quant(quantized)
        if ift is not None:
            style_half, style_quarter, wt, ws = ift
            y = self.fuse_convs_dict["64"](quarter, style_quarter, y, wt, ws)
        y = self.decoder_group[0](y)
        if ift is not None:
            y = self.fuse_convs_dict["128"](half, style_half, y, wt, ws)
        y = self.decoder_group[1](y)
        return self.out_conv(y)

    @torch.inference_mode()
    def enhance(
        self,
        image: torch.Tensor,
        w_texture: Weight = 1.0,
        w_style: Weight = 1.0,
        *,
        return_codes: bool = False,
        reference: torch.Tensor | None = None,
    ):
        """Enhance a float RGB batch [B,3,H,W] in [0,1]; weights are floats or per-image tensors of shape [B].

        Same padding and cropping as the original ``test()``. The output is not clamped.
        """
        check_image(image, INPUT_IMAGE)
        b = image.shape[0]
        device, dtype = image.device, image.dtype
        wt = per_image_weight(w_texture, b, INPUT_W_TEXTURE).to(device, dtype)
        ws = per_image_weight(w_style, b, INPUT_W_STYLE).to(device, dtype)
        if reference is not None:
            check_image(reference, "reference")
            if reference.shape != image.shape:
                raise InputError(f"reference must have the image's shape {tuple(image.shape)}, got {tuple(reference.shape)}")
        out, codes = self(image, wt, ws, reference)
        return (out, codes) if return_codes else out


def check_image(image: torch.Tensor, name: str) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B,3,H,W], got {type(image).__name__}")
    if image.ndim != 4 or image.shape[1] != 3:
        raise InputError(f"{name} must have shape [B,3,H,W] (RGB), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0,1], got {image.dtype}; divide uint8 images by 255")
    if image.shape[0] == 0 or image.shape[2] == 0 or image.shape[3] == 0:
        raise InputError(f"{name} is empty: shape {tuple(image.shape)}")


def per_image_weight(value: Weight, batch: int, name: str) -> torch.Tensor:
    """A float, a 0-d tensor or a [B] tensor -> float32 tensor [B]."""
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.ndim == 0:
        return t.expand(batch).clone()
    if t.shape != (batch,):
        raise InputError(f"{name} must be a float or a tensor of shape [{batch}] (one per image), got {tuple(t.shape)}")
    return t
