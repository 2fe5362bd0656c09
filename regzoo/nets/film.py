"""Feature-wise modulation (FiLM): conditioning an ordinary network on an embedding."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FiLM"]


class FiLM(nn.Module):
    """Scale and shift feature channels by amounts computed from an embedding.

    ``x * (1 + gamma(e)) + beta(e)`` with ``gamma, beta`` one linear map of the embedding
    ``e`` ``(B, H)`` to ``2 C`` values (Perez et al., "FiLM: Visual Reasoning with a General
    Conditioning Layer", AAAI 2018; the ``(1 + gamma)`` form and zero initialisation of
    cLapIRN's conditional instance normalisation, Mok & Chung, MICCAI 2021). The map starts at
    zero, so a FiLM layer is the identity until training gives the parameters an effect: the
    network it modulates starts as the plain, correctly initialised backbone, and the
    conditioning grows from there.

    Args:
        embedding_dim: ``H``, the size of the embedding.
        channels: ``C``, the feature channels modulated.
    """

    def __init__(self, embedding_dim: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(embedding_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Modulate ``x`` ``(B, C, *spatial)`` by ``embedding`` ``(B, H)``."""
        if embedding.shape[0] != x.shape[0] or x.shape[1] != self.channels:
            raise ValueError(
                f"FiLM: expected features (B, {self.channels}, ...) and an embedding with one "
                f"row per batch element, got {tuple(x.shape)} and {tuple(embedding.shape)}"
            )
        gamma, beta = self.linear(embedding).to(x.dtype).chunk(2, dim=1)
        shape = (*gamma.shape, *([1] * (x.ndim - 2)))
        return x * (1.0 + gamma.view(shape)) + beta.view(shape)
