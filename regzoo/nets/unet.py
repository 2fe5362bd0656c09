"""The VoxelMorph U-Net and the registration network built from hyper-layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from regzoo.nets.film import FiLM
from regzoo.nets.hyper import HyperConv, HyperNetwork
from regzoo.spatial import integrate_velocity, resize_flow

__all__ = [
    "CONDITIONINGS",
    "Conditioning",
    "RegistrationNet",
    "RegistrationOutput",
    "VoxelMorphUNet",
    "drop_flow_shift",
]

Conditioning = Literal["film", "weights"]
CONDITIONINGS: tuple[Conditioning, ...] = ("film", "weights")

DEFAULT_ENCODER = (16, 32, 32, 32)
DEFAULT_DECODER = (32, 32, 32, 32, 32, 16, 16)


class _ConvBlock(nn.Module):
    """Convolution (generated or modulated) followed by LeakyReLU(0.2), as in VoxelMorph."""

    def __init__(
        self,
        ndim: int,
        cin: int,
        cout: int,
        embedding_dim: int | None,
        dependent_share: float,
        conditioning: Conditioning,
    ) -> None:
        super().__init__()
        generated = embedding_dim is not None and conditioning == "weights"
        self.conv = HyperConv(
            ndim,
            cin,
            cout,
            embedding_dim=embedding_dim if generated else None,
            dependent_share=dependent_share,
        )
        modulated = embedding_dim is not None and conditioning == "film"
        self.film = FiLM(embedding_dim, cout) if modulated and embedding_dim else None

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        x = self.conv(x, embedding)
        if self.film is not None and embedding is not None:
            x = self.film(x, embedding)
        # in place on the fresh convolution (or modulation) output, whose backward does not
        # need its input: one activation-sized allocation less per block
        return F.leaky_relu(x, 0.2, inplace=True)


class VoxelMorphUNet(nn.Module):
    """VoxelMorph's U-Net (``enc`` features per level, ``dec`` for the decoder and extra convs).

    The encoder has ``len(enc)`` levels, each a conv block then 2x max pooling; the decoder
    mirrors it with upsampling and skip connections; the remaining ``dec`` entries are
    full-resolution conv blocks. With ``half_res`` the last upsampling is skipped and the
    output is at half resolution (VoxelMorph's ``int_downsize=2``). With an ``embedding_dim``
    every block is conditioned, by ``conditioning``: ``"weights"`` generates its kernel from the
    embedding (HyperMorph), ``"film"`` modulates its output channels
    ([`FiLM`][regzoo.nets.film.FiLM]).
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int = 2,
        enc: Sequence[int] = DEFAULT_ENCODER,
        dec: Sequence[int] = DEFAULT_DECODER,
        *,
        half_res: bool = False,
        embedding_dim: int | None = None,
        dependent_share: float = 0.05,
        conditioning: Conditioning = "weights",
    ) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(
                f"VoxelMorphUNet: conditioning must be one of {CONDITIONINGS}, got {conditioning!r}"
            )
        if len(dec) < len(enc):
            raise ValueError(
                f"VoxelMorphUNet: 'dec' needs at least len(enc)={len(enc)} entries, got {len(dec)}"
            )
        self.ndim, self.half_res = ndim, half_res

        def block(cin: int, cout: int) -> _ConvBlock:
            return _ConvBlock(ndim, cin, cout, embedding_dim, dependent_share, conditioning)

        self.encoder = nn.ModuleList()
        previous, skips = in_channels, []
        for width in enc:
            self.encoder.append(block(previous, width))
            skips.append(width)
            previous = width
        self.decoder = nn.ModuleList()
        for level, width in enumerate(dec[: len(enc)]):
            self.decoder.append(block(previous, width))
            previous = width + (skips[-1 - level] if self._upsamples(level, len(enc)) else 0)
        self.remaining = nn.ModuleList()
        for width in dec[len(enc) :]:
            self.remaining.append(block(previous, width))
            previous = width
        self.out_channels = previous
        self.levels = len(enc)

    def _upsamples(self, level: int, levels: int) -> bool:
        return not (self.half_res and level == levels - 1)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Features ``(B, dec[-1], *spatial)`` (halved spatial size with ``half_res``)."""
        pool = F.max_pool2d if self.ndim == 2 else F.max_pool3d
        history = []
        for block in self.encoder:
            x = block(x, embedding)
            history.append(x)
            x = pool(x, 2)
        for level, block in enumerate(self.decoder):
            x = block(x, embedding)
            skip = history.pop()
            if self._upsamples(level, self.levels):
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                x = torch.cat([x, skip], dim=1)
        for block in self.remaining:
            x = block(x, embedding)
        return x


@dataclass
class RegistrationOutput:
    """What [`RegistrationNet`][regzoo.nets.unet.RegistrationNet] returns.

    Attributes:
        displacement: ``(B, D, *spatial)`` in voxels on the fixed grid.
        velocity: the stationary velocity ``(B, D, *spatial)`` for diffeomorphic models, else
            ``None``.
    """

    displacement: torch.Tensor
    velocity: torch.Tensor | None = None


class RegistrationNet(nn.Module):
    """VoxelMorph registration network, optionally conditioned by a hypernetwork.

    ``net(fixed, moving, unit_params)`` predicts the displacement that warps ``moving`` onto
    ``fixed`` (the same argument order as everywhere in regzoo; the channels are stacked as
    ``[moving, fixed]``, VoxelMorph's order). With ``num_params > 0`` a [`HyperNetwork`][regzoo.nets.hyper.HyperNetwork]
    embeds ``unit_params`` ``(B, P)`` in ``[0, 1]`` and every convolution, the flow layer
    included, is conditioned on the embedding: its output channels modulated
    (``conditioning="film"``, [`FiLM`][regzoo.nets.film.FiLM], identity at initialisation) or
    its weights generated (``"weights"``, HyperMorph); with ``num_params == 0`` it is a plain
    VoxelMorph. The conditioned flow layer has no bias and is only scaled (no FiLM shift): a
    bias or shift there is a translation the parameters choose, not the images
    ([`drop_flow_shift`][regzoo.nets.unet.drop_flow_shift] reads checkpoints written before).

    With ``symmetric`` the output is antisymmetric in the two images: ``u(F, M) = (g(F, M) -
    g(M, F)) / 2``, the two orders run as one batched forward (``2 B``, the same weights), so
    ``u(F, F)`` is exactly zero at every parameter setting and ``u(M, F) = -u(F, M)``. For a
    diffeomorphic model (``int_steps > 0``) the velocity is antisymmetrised: ``M -> F`` is then
    the inverse transformation of ``F -> M``.

    Inputs of any size are padded (replicate) to a multiple of ``2^len(enc)`` and the output is
    cropped back.

    Args:
        ndim: 2 or 3.
        enc: encoder features per level (VoxelMorph default).
        dec: decoder features, then extra full-resolution convolutions (VoxelMorph default).
        num_params: ``P``, the hypernetwork's input size (0 = no hypernetwork).
        hyper_units: hidden sizes of the hypernetwork MLP.
        int_steps: scaling-and-squaring steps (0 = the output is the displacement itself).
        int_downsize: 1 = full-resolution flow, 2 = flow predicted at half resolution.
        hyper_init_share: share of each generated kernel's initial variance that depends on
            the parameters (``"weights"`` only; see [`HyperConv`][regzoo.nets.hyper.HyperConv]).
        conditioning: ``"film"`` or ``"weights"``, how the parameters enter the network.
        symmetric: antisymmetrise the output (displacement, or velocity) in the two images.
    """

    def __init__(
        self,
        ndim: int,
        *,
        enc: Sequence[int] = DEFAULT_ENCODER,
        dec: Sequence[int] = DEFAULT_DECODER,
        num_params: int = 0,
        hyper_units: Sequence[int] = (32, 32, 32, 32),
        int_steps: int = 0,
        int_downsize: int = 1,
        hyper_init_share: float = 0.05,
        conditioning: Conditioning = "film",
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        self.symmetric = symmetric
        if int_downsize not in (1, 2):
            raise ValueError(f"RegistrationNet: int_downsize must be 1 or 2, got {int_downsize}")
        self.ndim, self.int_steps, self.int_downsize = ndim, int_steps, int_downsize
        self.hypernet = (
            HyperNetwork(num_params, hyper_units, divide_by_size=conditioning == "weights")
            if num_params > 0
            else None
        )
        embedding_dim = self.hypernet.embedding_dim if self.hypernet is not None else None
        self.unet = VoxelMorphUNet(
            ndim,
            2,
            enc,
            dec,
            half_res=int_downsize == 2,
            embedding_dim=embedding_dim,
            dependent_share=hyper_init_share,
            conditioning=conditioning,
        )
        generated = embedding_dim if conditioning == "weights" else None
        # a conditioned flow layer has no bias and its FiLM no shift: either would add a
        # spatially constant vector, a translation chosen by the parameters rather than the
        # images, which no regularizer sees (all are blind to translations) and which moves
        # an image registered to itself
        self.flow = HyperConv(
            ndim,
            self.unet.out_channels,
            ndim,
            embedding_dim=generated,
            init_std=1e-5,
            dependent_share=hyper_init_share,
            bias=embedding_dim is None,
        )
        modulated = embedding_dim is not None and generated is None
        self.flow_film = (
            FiLM(embedding_dim, ndim, shift=False) if modulated and embedding_dim else None
        )
        self.multiple = 2 ** len(enc)

    @property
    def num_params(self) -> int:
        """Size of the parameter vector the network is conditioned on (0 for plain)."""
        return 0 if self.hypernet is None else self.hypernet.num_params

    def forward(
        self, fixed: torch.Tensor, moving: torch.Tensor, unit_params: torch.Tensor | None = None
    ) -> RegistrationOutput:
        """Predict the displacement from ``fixed`` and ``moving`` ``(B, 1, *spatial)``."""
        if moving.shape != fixed.shape or moving.ndim != self.ndim + 2:
            raise ValueError(
                f"RegistrationNet: 'moving' {tuple(moving.shape)} and 'fixed' "
                f"{tuple(fixed.shape)} must both be (B, 1, *spatial) with {self.ndim} spatial dims"
            )
        embedding = None
        if self.hypernet is not None:
            if unit_params is None:
                raise ValueError("RegistrationNet: a hyper model needs 'unit_params' (B, P)")
            if unit_params.shape[0] != moving.shape[0]:
                unit_params = unit_params.expand(moving.shape[0], -1)
            embedding = self.hypernet(unit_params.to(moving.dtype))
        size = moving.shape[2:]
        pair = torch.cat([moving, fixed], dim=1)
        if self.symmetric:  # both orders in one batch: [moving, fixed], then [fixed, moving]
            pair = torch.cat([pair, pair.flip(1)])
            embedding = None if embedding is None else torch.cat([embedding, embedding])
        x = self._pad(pair)
        features = self.unet(x, embedding)
        # the flow layer runs in float32 even under autocast (bf16/fp16 mixed precision): a
        # bf16 displacement of a few voxels is quantised to ~0.02 voxel, which the warp's
        # sampling coordinates and the regularizers' finite differences cannot afford
        with torch.autocast(x.device.type, enabled=False):
            embedding = None if embedding is None else embedding.float()
            flow = self.flow(features.float(), embedding)  # full or half resolution
            if self.flow_film is not None and embedding is not None:
                flow = self.flow_film(flow, embedding)
            if self.symmetric:  # exactly 0 for fixed = moving: the two halves are equal
                one_way, other_way = flow.chunk(2)
                flow = 0.5 * (one_way - other_way)
        displacement = integrate_velocity(flow, self.int_steps) if self.int_steps > 0 else flow
        displacement = self._to_input_grid(displacement, x.shape[2:], size)
        if self.int_steps > 0:
            return RegistrationOutput(displacement, self._to_input_grid(flow, x.shape[2:], size))
        return RegistrationOutput(displacement)

    @staticmethod
    def _to_input_grid(
        field: torch.Tensor, padded: Sequence[int], size: Sequence[int]
    ) -> torch.Tensor:
        """Upsample a half-resolution field to the padded grid, then crop the padding."""
        field = resize_flow(field, padded)
        return field[(slice(None), slice(None), *(slice(0, n) for n in size))]

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        pad: list[int] = []
        for n in reversed(x.shape[2:]):
            pad += [0, (-n) % self.multiple]
        return F.pad(x, pad, mode="replicate") if any(pad) else x


def drop_flow_shift(
    weights: Mapping[str, Any], prefix: str = "net."
) -> tuple[dict[str, Any], bool]:
    """Weights of a conditioned [`RegistrationNet`][regzoo.nets.unet.RegistrationNet] written before its flow layer lost
    its bias and FiLM shift, in today's layout.

    Such a checkpoint holds ``flow.bias`` (FiLM conditioning) or ``flow.bias_head.*``
    (generated weights) and a flow FiLM of ``2 D`` rows (scale, then shift): the bias and the
    shift are dropped and the scale kept. A plain network (no ``hypernet.*`` weights) keeps its
    bias.

    Args:
        weights: a state dict, the network's keys under ``prefix``.
        prefix: where the network's keys start (``"net."`` in a regzoo checkpoint).

    Returns:
        The converted weights (a new dict) and whether anything was dropped.
    """
    converted = dict(weights)
    if not any(key.startswith(f"{prefix}hypernet.") for key in converted):
        return converted, False
    dropped = False
    for name in ("flow.bias", "flow.bias_head.weight", "flow.bias_head.bias"):
        dropped |= converted.pop(prefix + name, None) is not None
    flow_weight = converted.get(f"{prefix}flow.weight")
    channels = flow_weight.shape[0] if torch.is_tensor(flow_weight) else None
    for name in ("flow_film.linear.weight", "flow_film.linear.bias"):
        value = converted.get(prefix + name)
        if channels is not None and torch.is_tensor(value) and value.shape[0] == 2 * channels:
            converted[prefix + name] = value[:channels].clone()  # the scale rows
            dropped = True
    return converted, dropped
