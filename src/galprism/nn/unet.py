"""Noise-conditioned U-Net for image sources ``(C, H, W)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embedding import NoiseEmbedding

__all__ = ["UNet"]


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm -> FiLM(noise) -> SiLU -> conv, twice, with a residual connection."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout, affine=False)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over pixels, used at low resolution only."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """``F(x, c_noise)`` for images ``(B, C, H, W)``; H and W divisible by ``2**(levels-1)``.

    Parameters
    ----------
    channels
        Number of image bands ``C``.
    widths
        Feature channels per resolution level; each level after the first halves the size.
    blocks
        Residual blocks per level (on the way down; one more on the way up).
    attention_levels
        Levels (0 = full resolution) with self-attention; by default the lowest one.
    emb_features
        Width of the noise embedding.
    dropout
        Dropout inside residual blocks.
    """

    def __init__(
        self,
        channels: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        blocks: int = 1,
        attention_levels: Sequence[int] | None = None,
        emb_features: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = list(widths)
        levels = len(widths)
        if attention_levels is None:
            attention_levels = [levels - 1]
        self.levels = levels
        self.embed = NoiseEmbedding(emb_features)
        self.inp = nn.Conv2d(channels, widths[0], 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [widths[0]]
        cin = widths[0]
        for i, width in enumerate(widths):
            stage = nn.ModuleList()
            for _ in range(blocks):
                stage.append(ResBlock(cin, width, emb_features, dropout))
                if i in attention_levels:
                    stage.append(Attention(width))
                cin = width
                skips.append(cin)
            self.down.append(stage)
            if i < levels - 1:
                self.downsample.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))
                skips.append(cin)

        self.mid = nn.ModuleList(
            [
                ResBlock(cin, cin, emb_features, dropout),
                Attention(cin),
                ResBlock(cin, cin, emb_features, dropout),
            ]
        )

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            stage = nn.ModuleList()
            for _ in range(blocks + 1):
                stage.append(ResBlock(cin + skips.pop(), width, emb_features, dropout))
                if i in attention_levels:
                    stage.append(Attention(width))
                cin = width
            self.up.append(stage)
            if i > 0:
                self.upsample.append(nn.Conv2d(cin, cin, 3, padding=1))

        self.out = nn.Sequential(
            nn.GroupNorm(_groups(cin), cin), nn.SiLU(), nn.Conv2d(cin, channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(
        stage: nn.ModuleList,
        h: Tensor,
        e: Tensor,
        skips: list[Tensor] | None = None,
        pop: bool = False,
    ) -> Tensor:
        for layer in stage:
            if isinstance(layer, ResBlock):
                if pop:
                    h = torch.cat([h, skips.pop()], dim=1)
                h = layer(h, e)
                if skips is not None and not pop:
                    skips.append(h)
            else:
                h = layer(h)
                if skips is not None and not pop:
                    skips[-1] = h
        return h

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        div = 2 ** (self.levels - 1)
        if x.shape[-1] % div or x.shape[-2] % div:
            raise ValueError(f"UNet: image size {tuple(x.shape[-2:])} is not divisible by {div}")
        e = self.embed(c_noise)
        h = self.inp(x)
        skips = [h]
        for i, stage in enumerate(self.down):
            h = self._run(stage, h, e, skips)
            if i < self.levels - 1:
                h = self.downsample[i](h)
                skips.append(h)
        for layer in self.mid:
            h = layer(h, e) if isinstance(layer, ResBlock) else layer(h)
        for j, stage in enumerate(self.up):
            h = self._run(stage, h, e, skips, pop=True)
            if j < self.levels - 1:
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)
