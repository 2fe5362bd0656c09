"""Hyper-layers: convolutions whose weights a hypernetwork produces per batch element."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["HyperConv", "HyperNetwork"]


class HyperNetwork(nn.Module):
    """MLP mapping the normalised parameter vector ``(B, P)`` to an embedding ``(B, H)``.

    Every [`HyperConv`][regzoo.nets.hyper.HyperConv] turns the embedding into its own weights with a
    linear head, so the whole backbone is a function of the parameters (HyperMorph's design).

    The ``[0, 1]`` inputs are centred to ``[-1, 1]`` and the layers use He initialisation, so the
    embedding differs by O(1) of its own scale between the ends of the range from the first
    step: the conditioning is there before training starts, not something training must find.
    The embedding is divided by its size ``H``: its entries are non-negative (ReLU), so an Adam
    step on a head moves a generated weight by about ``lr * sum_j e_j``; the division keeps that
    near ``lr``, as for an ordinary convolution, instead of ``H`` times more.

    FiLM layers read the embedding through one small linear map each, like any layer reading
    features, so they take it undivided (``divide_by_size=False``).

    Args:
        num_params: ``P``, the number of free parameters.
        units: hidden sizes; the last one is the embedding size ``H``.
        divide_by_size: divide the embedding by ``H`` (for generated weights).
    """

    def __init__(
        self,
        num_params: int,
        units: Sequence[int] = (32, 32, 32, 32),
        *,
        divide_by_size: bool = True,
    ) -> None:
        super().__init__()
        if num_params < 1:
            raise ValueError(f"HyperNetwork needs at least one parameter, got {num_params}")
        if not units:
            raise ValueError("HyperNetwork 'units' must not be empty")
        layers: list[nn.Module] = []
        previous = num_params
        for width in units:
            linear = nn.Linear(previous, width)
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.normal_(linear.bias, 0.0, 0.1)
            layers += [linear, nn.ReLU()]
            previous = width
        self.mlp = nn.Sequential(*layers)
        self.num_params = num_params
        self.embedding_dim = previous
        self.scale = 1.0 / previous if divide_by_size else 1.0

    def forward(self, unit_params: torch.Tensor) -> torch.Tensor:
        """Embed parameters ``(B, P)`` normalised to ``[0, 1]``."""
        if unit_params.ndim != 2 or unit_params.shape[1] != self.num_params:
            raise ValueError(
                f"HyperNetwork expects parameters of shape (B, {self.num_params}), "
                f"got {tuple(unit_params.shape)}"
            )
        return self.mlp(2.0 * unit_params - 1.0) * self.scale


# PyTorch's CPU convolution picks its slow reference kernel (im2col, ~5x slower forward and
# backward than oneDNN's) for an ungrouped 3D float32 convolution of batch 1 whose
# N * C * D * H is at most this (a heuristic tuned for 2D): the U-Net's coarse levels at 64^3
# and every layer at 32^3. Running such a convolution as two groups over a duplicated input (the
# same arithmetic) makes PyTorch choose oneDNN (measured in docs/benchmarks.md).
_SLOW_CPU_CONV3D_SIZE = 20480


def _conv3d_cpu_fast(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, stride, padding)``, routed to oneDNN on CPU when it helps."""
    if not (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[0] == 1
        and math.prod(x.shape[:4]) <= _SLOW_CPU_CONV3D_SIZE
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    ):
        return F.conv3d(x, weight, bias, stride=stride, padding=padding)
    out_channels = weight.shape[0]
    if out_channels % 2:  # two equal groups: one zero filter more, dropped afterwards
        weight = torch.cat([weight, weight.new_zeros(1, *weight.shape[1:])])
        bias = None if bias is None else torch.cat([bias, bias.new_zeros(1)])
    out = F.conv3d(torch.cat([x, x], dim=1), weight, bias, stride=stride, padding=padding, groups=2)
    return out[:, :out_channels] if out_channels % 2 else out


class HyperConv(nn.Module):
    """A 2D/3D convolution, either plain or with weights generated from an embedding.

    With ``embedding_dim=None`` it is an ordinary convolution. Otherwise two linear heads map the
    embedding ``(B, H)`` to per-sample weights and biases, and the batch runs as ONE grouped
    convolution (``groups=B``), so each element uses its own weights without a Python loop.

    The heads start at a standard initialisation split in two parts: their biases hold a
    parameter-independent kernel and their weights a parameter-dependent part carrying the share
    ``dependent_share`` of the variance, so the generated kernel has the usual Kaiming scale
    (``init_std`` for the flow layer) and kernels for different parameter vectors differ by a
    set fraction of that scale at initialisation.

    Args:
        ndim: 2 or 3 spatial dimensions.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: cubic kernel side (odd); padding keeps the size at ``stride=1``.
        stride: convolution stride.
        embedding_dim: size of the hypernetwork embedding, or ``None`` for a plain convolution.
        init_std: standard deviation of the initial kernel; ``None`` uses Kaiming-uniform's.
        dependent_share: share of the initial kernel variance that depends on the parameters
            (hyper-layers only).
        bias: add a bias (generated, for a hyper-layer). The flow layer of a conditioned
            network has none: its bias is a translation (see [`RegistrationNet`][regzoo.nets.unet.RegistrationNet]).
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        embedding_dim: int | None = None,
        init_std: float | None = None,
        dependent_share: float = 0.05,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"HyperConv supports 2 or 3 spatial dims, got {ndim}")
        self.ndim, self.stride, self.padding = ndim, stride, kernel_size // 2
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_shape = (out_channels, in_channels, *([kernel_size] * ndim))
        fan_in = in_channels * kernel_size**ndim
        std = init_std if init_std is not None else math.sqrt(2.0 / fan_in) / math.sqrt(3.0)
        base_weight = torch.randn(self.kernel_shape) * std
        base_bias = torch.zeros(out_channels)
        self.embedding_dim = embedding_dim
        self.bias: nn.Parameter | None = None
        self.bias_head: nn.Linear | None = None
        if embedding_dim is None:
            self.weight = nn.Parameter(base_weight)
            if bias:
                self.bias = nn.Parameter(base_bias)
        else:
            self.weight_head = nn.Linear(embedding_dim, base_weight.numel())
            if bias:
                self.bias_head = nn.Linear(embedding_dim, out_channels)
            if not 0.0 <= dependent_share <= 1.0:
                raise ValueError(
                    f"HyperConv: dependent_share must be in [0, 1], got {dependent_share}"
                )
            # the embedding's entries have a mean square of about 1 / (2 H^2) (He-initialised
            # ReLU MLP, divided by H), so this head std gives a dependent part of std `dependent`
            dependent = std * math.sqrt(dependent_share)
            head_std = dependent * math.sqrt(2.0 * embedding_dim)
            with torch.no_grad():
                self.weight_head.bias.copy_(base_weight.flatten() * math.sqrt(1 - dependent_share))
                self.weight_head.weight.normal_(0.0, head_std)
                if self.bias_head is not None:
                    self.bias_head.bias.zero_()
                    self.bias_head.weight.normal_(0.0, (init_std or 1e-2) * head_std / std)

    @property
    def is_hyper(self) -> bool:
        """True when the weights come from an embedding."""
        return self.embedding_dim is not None

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Convolve ``x`` ``(B, C_in, *spatial)``; hyper-layers need ``embedding`` ``(B, H)``."""
        conv = F.conv2d if self.ndim == 2 else _conv3d_cpu_fast
        if not self.is_hyper:
            return conv(x, self.weight, self.bias, stride=self.stride, padding=self.padding)
        if embedding is None or embedding.shape[0] != x.shape[0]:
            raise ValueError(
                "HyperConv: a hyper-layer needs an embedding with one row per batch element"
            )
        # one grouped convolution for the whole batch: sample b's kernels form group b
        batch = x.shape[0]
        weight = self.weight_head(embedding).view(batch * self.out_channels, *self.kernel_shape[1:])
        bias = (
            None if self.bias_head is None else rearrange(self.bias_head(embedding), "b c -> (b c)")
        )
        grouped = rearrange(x, "b c ... -> 1 (b c) ...")
        if batch == 1:  # one sample: an ordinary convolution with the generated kernel
            return conv(grouped, weight, bias, stride=self.stride, padding=self.padding)
        functional = F.conv2d if self.ndim == 2 else F.conv3d
        out = functional(
            grouped, weight, bias, stride=self.stride, padding=self.padding, groups=batch
        )
        return rearrange(out, "1 (b c) ... -> b c ...", b=batch)
