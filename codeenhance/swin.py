"""Swin context module: residual Swin transformer groups over the 1/4-resolution token grid.

Written for export: the shifted-window mask is built from the grid's shape with tensor ops, once per forward,
and the relative position bias is a gather of two constants (folded by the exporter).
"""
from __future__ import annotations

import torch
from torch import nn


def relative_position_index(window: int) -> torch.Tensor:
    """[window^2, window^2] index into the (2w-1)^2 bias table for each query/key pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, window*window, C], windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def from_windows(x: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``to_windows``: [B * nW, window*window, C] -> [B, H, W, C]."""
    c = x.shape[-1]
    x = x.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, shift: int, device=None) -> torch.Tensor:
    """Additive attention mask [nW, window^2, window^2] for windows of the grid rolled by -shift.

    Each axis splits into [0, n-window), [n-window, n-shift), [n-shift, n); token pairs from different
    regions get -100, others 0 (the values of the original Swin implementation).
    """
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    row_region = (rows >= h - window).to(torch.int64) + (rows >= h - shift).to(torch.int64)
    col_region = (cols >= w - window).to(torch.int64) + (cols >= w - shift).to(torch.int64)
    region = (row_region[:, None] * 3 + col_region[None, :]).to(torch.float32)
    region = to_windows(region[None, :, :, None], window).squeeze(-1)  # [nW, window^2]
    differs = region[:, None, :] != region[:, :, None]
    return torch.zeros_like(differs, dtype=torch.float32).masked_fill(differs, -100.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window = window
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(to_windows(y, self.window), mask if self.shift else None)
        y = from_windows(y, self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class SwinGroup(nn.Module):
    """SwinIR's residual group (RSTB): blocks alternating shift 0 / window//2, a conv3x3, and a skip."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor) -> torch.Tensor:
        y = x
        for block in self.residual_group.blocks:
            y = block(y, h, w, mask)
        b, _, c = x.shape
        y = self.conv(y.transpose(1, 2).reshape(b, c, h, w))
        return y.flatten(2).transpose(1, 2) + x


class SwinContext(nn.Module):
    """Stack of residual Swin groups on an image-shaped feature [B, C, H, W] (H, W multiples of the window)."""

    def __init__(self, dim: int, groups: int, depth: int, heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.window = window
        self.swin_blks = nn.ModuleList(SwinGroup(dim, depth, heads, window, mlp_ratio) for _ in range(groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        mask = shifted_window_mask(h, w, self.window, self.window // 2, device=x.device).to(x.dtype)
        t = x.reshape(b, c, h * w).transpose(1, 2)
        for group in self.swin_blks:
            t = group(t, h, w, mask)
        return t.transpose(1, 2).reshape(b, c, h, w)


__all__ = ["SwinContext", "shifted_window_mask", "relative_position_index"]
