"""Feature-wise modulation (FiLM): conditioning an ordinary network on an embedding."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FiLM"]


class FiLM(nn.Module):
    """Scale and shift feature channels by amounts computed from an embedding.

    ``x * (1 + gamma(e)) + beta(e)`` with ``gamma, beta`` one linear map of the embedding
    ``e`` ``(B, H)`` to ``2 C`` values, or ``x * (1 + gamma(e))`` alone with ``shift=False``
    (``C`` values) (Perez et al., "FiLM: Visual Reasoning with a General
    Conditioning Layer", AAAI 2018; the ``(1 + gamma)`` form and zero initialisation of
    cLapIRN's conditional instance normalisation, Mok & Chung, MICCAI 2021). The map starts at
    zero, so a FiLM layer is the identity until training gives the parameters an effect: the
    network it modulates starts as the plain, correctly initialised backbone, and the
    conditioning grows from there.

    Args:
        embedding_dim: ``H``, the size of the embedding.
        channels: ``C``, the feature channels modulated.
        shift: add ``beta(e)``. A shift is a spatially constant offset of each channel: on a
            displacement field it is a translation chosen by the parameters, not the images,
            so the flow layer is only scaled (``shift=False``).
    """

    def __init__(self, embedding_dim: int, channels: int, *, shift: bool = True) -> None:
        super().__init__()
        self.channels, self.shift = channels, shift
        self.linear = nn.Linear(embedding_dim, (2 if shift else 1) * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Modulate ``x`` ``(B, C, *spatial)`` by ``embedding`` ``(B, H)``."""
        if embedding.shape[0] != x.shape[0] or x.shape[1] != self.channels:
            raise ValueError(
                f"FiLM: expected features (B, {self.channels}, ...) and an embedding with one "
                f"row per batch element, got {tuple(x.shape)} and {tuple(embedding.shape)}"
            )
        modulation = self.linear(embedding).to(x.dtype)
        shape = (x.shape[0], self.channels, *([1] * (x.ndim - 2)))
        if not self.shift:
            return x * (1.0 + modulation.view(shape))
        gamma, beta = modulation.chunk(2, dim=1)
        return x * (1.0 + gamma.view(shape)) + beta.view(shape)
