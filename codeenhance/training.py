"""The two training stages of CodeEnhance as functions of a network and a batch (no I/O, no loop).

Stage 1 (high-quality prior): the network is a VQ autoencoder of normal-light photos. The IFT weights are 0, so
the decoder sees only the quantized features and the codebook has to carry the image (the IFT blocks reduce to
the identity at 0: ``dec + 0 + 0``). A short warm-up without quantization gives features worth clustering,
k-means initialises the codebook from them, and codes unused for a while are restarted on live features.

Stage 2 (enhancement): a low-light input, the codebook embedding frozen and the codebook shift learned, the IFT
blocks on (weights 1, what inference uses), and the stage-1 network, frozen, as the teacher: its codes for the
normal-light photo are the targets of the code-matching loss.

Stand-ins for what cannot be downloaded here: the VGG perceptual loss is replaced by SSIM (pytorch-msssim) plus
an L1 on image gradients; the pretrained semantic MobileNetV2 by the same architecture, randomly initialised and
frozen (it still gives the fusion a fixed multi-scale filter bank); there is no GAN loss (a discriminator needs
far more than a CPU budget).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .network import CodeEnhance
from .quantizer import nearest_code, squared_distances


@dataclass(frozen=True)
class LossWeights:
    pixel: float = 1.0  # L1
    ssim: float = 0.4  # 1 - SSIM
    gradient: float = 0.5  # L1 of horizontal/vertical differences (edges, noise)
    commitment: float = 0.25  # stage 1: ||z - sg(q)||^2 (the codebook term ||sg(z) - q||^2 has weight 1)
    code_feature: float = 1.0  # stage 2: ||z - sg(teacher code row)||^2
    code_ce: float = 0.05  # stage 2: cross-entropy of -distance against the teacher's codes


def encode(model: CodeEnhance, x: torch.Tensor):
    """(1/2-scale, 1/4-scale encoder features, code features) as ``forward`` computes them, without padding: crops
    are multiples of the pad size."""
    half, quarter = model.multiscale_encoder(x)
    return half, quarter, model.code_features(x, quarter)


def decode(model: CodeEnhance, half, quarter, quantized, ift_weight: float) -> torch.Tensor:
    """The decoder with both IFT weights ``ift_weight`` and the image's own features as style; 0 skips the IFT
    blocks."""
    if not ift_weight:
        return model.decode(quantized, half, quarter, None)
    w = torch.full((quantized.shape[0], 1, 1, 1), float(ift_weight), dtype=quantized.dtype, device=quantized.device)
    return model.decode(quantized, half, quarter, (half, quarter, w, w))


def flat(z: torch.Tensor) -> torch.Tensor:
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def unflat(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    b, d, h, w = like.shape
    return rows.view(b, h, w, d).permute(0, 3, 1, 2)


def image_losses(out: torch.Tensor, target: torch.Tensor, weights: LossWeights) -> dict[str, torch.Tensor]:
    from pytorch_msssim import ssim  # the [train] extra

    def grads(t):
        return t[..., 1:, :] - t[..., :-1, :], t[..., :, 1:] - t[..., :, :-1]

    (oy, ox), (ty, tx) = grads(out), grads(target)
    return {
        "l1": weights.pixel * F.l1_loss(out, target),
        "ssim": weights.ssim * (1 - ssim(out.clamp(0, 1), target, data_range=1.0, size_average=True)),
        "grad": weights.gradient * (F.l1_loss(oy, ty) + F.l1_loss(ox, tx)),
    }


def stage1_step(model: CodeEnhance, hq: torch.Tensor, weights: LossWeights, quantize: bool):
    """Autoencoder loss on normal-light crops; returns (losses, code indices or None, code features detached)."""
    half, quarter, z = encode(model, hq)
    features = flat(z.detach())
    losses, codes = {}, None
    if quantize:
        codes, rows = nearest_code(flat(z), model.quantizer.codebook())
        q = unflat(rows, z)
        losses["codebook"] = F.mse_loss(q, z.detach())
        losses["commit"] = weights.commitment * F.mse_loss(z, q.detach())
        z = z + (q - z).detach()  # straight-through
    losses.update(image_losses(decode(model, half, quarter, z, 0.0), hq, weights))
    return losses, codes, features


def stage2_step(model: CodeEnhance, teacher: CodeEnhance, dark: torch.Tensor, hq: torch.Tensor, weights: LossWeights):
    """Enhancement loss: the output against the photo, the features against the teacher's codes of the photo."""
    with torch.no_grad():
        target_codes, _ = nearest_code(flat(encode(teacher, hq)[2]), teacher.quantizer.codebook())
    half, quarter, z = encode(model, dark)
    codebook = model.quantizer.codebook()
    zf = flat(z)
    distance = squared_distances(zf, codebook)
    codes = distance.argmin(1)
    q = unflat(codebook.index_select(0, codes), z)
    losses = {
        "code_l2": weights.code_feature * F.mse_loss(zf, codebook.index_select(0, target_codes).detach()),
        "code_ce": weights.code_ce * F.cross_entropy(-distance, target_codes),
    }
    losses.update(image_losses(decode(model, half, quarter, z + (q - z).detach(), 1.0), hq, weights))
    agreement = (codes == target_codes).float().mean()
    return losses, agreement


def start_ift_at_identity(model: CodeEnhance) -> None:
    """Make every IFT block start as (almost) the identity ``dec``, as stage 2 begins.

    The blocks were skipped in stage 1, so they hold random weights that would scramble the stage-1 decoder's
    input. Zeroing the last convolution of the scale and shift branches makes the texture term 0, and zeroing the
    output of ``encode_enc2`` makes the style term ``dec * sqrt(eps)`` (~0.003 dec). Gradients still reach the
    zeroed convolutions (their inputs are not zero), so stage 2 starts from the prior's output and learns from there.
    """
    with torch.no_grad():
        for block in model.fuse_convs_dict.values():
            for conv in (block.scale[-1], block.shift[-1], block.encode_enc2.conv[-1], block.encode_enc2.conv_out):
                conv.weight.zero_()
                conv.bias.zero_()


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means on rows of x, seeded from ``generator``; empty clusters take a random row."""
    centers = x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    for _ in range(iters):
        assign, _ = nearest_code(x, centers)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        centers = torch.where(empty[:, None], centers, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            centers[empty] = x[torch.randint(0, x.shape[0], (int(empty.sum()),), generator=generator)]
    return centers


def restart_dead_codes(quantizer: nn.Module, usage: torch.Tensor, features: torch.Tensor, generator: torch.Generator) -> int:
    """Move every code with zero ``usage`` onto a random live feature (plus a little noise); returns how many."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead):
        pick = features[torch.randint(0, features.shape[0], (len(dead),), generator=generator)]
        noise = torch.randn(pick.shape, generator=generator).to(pick.device) * pick.std() * 0.01
        dead = dead.to(pick.device)
        with torch.no_grad():
            quantizer.embedding.weight[dead] = pick + noise - quantizer.shift_codebook[dead]
    return len(dead)
