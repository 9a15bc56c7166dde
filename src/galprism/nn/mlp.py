"""Noise-conditioned residual MLP for vector-valued sources."""

from __future__ import annotations

from torch import Tensor, nn

from .embedding import NoiseEmbedding

__all__ = ["MLP"]


class _Block(nn.Module):
    def __init__(self, width: int, emb: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(emb, 2 * width)
        self.net = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        scale, shift = self.film(e).chunk(2, dim=-1)
        return h + self.net(self.norm(h) * (1 + scale) + shift)


class MLP(nn.Module):
    """``F(x, c_noise)`` for ``x`` of shape ``(B, features)``.

    Parameters
    ----------
    features
        Dimension of the source vectors.
    hidden
        Width of the residual blocks.
    blocks
        Number of FiLM-conditioned residual blocks.
    emb_features
        Width of the noise embedding.
    """

    def __init__(
        self, features: int, hidden: int = 256, blocks: int = 3, emb_features: int = 64
    ) -> None:
        super().__init__()
        self.embed = NoiseEmbedding(emb_features)
        self.inp = nn.Linear(features, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, emb_features) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, features))
        # Start as the zero function: the preconditioned denoiser is then c_skip * x,
        # the optimal denoiser of a zero-mean Gaussian with variance sigma_data^2.
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        e = self.embed(c_noise)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, e)
        return self.out(h)
