"""Parameter specifications and spaces.

A regularizer declares its physical parameters as a [`ParamSpace`][regzoo.params.ParamSpace], an
ordered set of [`ParamSpec`][regzoo.params.ParamSpec]. Nothing else in the library knows their
names: training draws parameter vectors from the space, the hypernetwork is conditioned on their
normalised values, and the test-time tools build grids over it.

At the API surface a parameter vector is a mapping ``name -> value``; inside the networks it is a
tensor ``(B, P)`` in the order of the space.

The module is long because each scale (linear, log, periodic) is one concept across checking,
normalising, sampling, grids and the networks' features: kept together, a new scale is one
reading of one file.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from regzoo._errors import InputError, UnknownNameError

__all__ = ["ParamSpace", "ParamSpec", "parse_params"]


class ParamSpec(BaseModel):
    """One scalar parameter: its bounds, scale, default and meaning.

    Attributes:
        name: identifier, unique within a space (e.g. ``"mu"``).
        low: lower bound (inclusive).
        high: upper bound (inclusive); ``low == high`` is a parameter fixed to that value.
        default: value used when none is given; must lie within the bounds.
        scale: ``"linear"`` samples and normalises uniformly in the value, ``"log"`` in its
            logarithm (requires ``low > 0``). Parameters whose useful values span decades
            (stiffnesses, weights) belong on the log scale. ``"periodic"`` is a direction-like
            parameter (an angle) whose range ``[low, high)`` is one period: ``high`` is the
            same setting as ``low``, any value is wrapped into the range, grids over the whole
            period do not repeat the end, and the networks see it as a point on the circle
            ([`ParamSpace.features`][regzoo.params.ParamSpace.features]), so the two ends condition
            them identically.
        domain: the physically valid interval ``(min, max)`` (``None``: unbounded on that
            side), e.g. ``(0.0, None)`` for a stiffness. Unlike ``[low, high]``, the default
            training range that a config may move, the domain is a hard limit: a range or
            fixed value outside it is an error everywhere (configs, CLI, API).
        description: one line on what the parameter means physically.

    Examples:
        >>> ParamSpec(name="mu", low=1e-2, high=1e2, default=1.0, scale="log",
        ...           domain=(0.0, None), description="shear modulus")
        ParamSpec(name='mu', low=0.01, high=100.0, default=1.0, scale='log', ...)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    low: float
    high: float
    default: float
    scale: Literal["linear", "log", "periodic"] = "linear"
    domain: tuple[float | None, float | None] = (None, None)
    description: str = ""

    @model_validator(mode="after")
    def _check_bounds(self) -> ParamSpec:
        if not all(math.isfinite(v) for v in (self.low, self.high, self.default)):
            raise InputError(f"parameter '{self.name}': bounds and default must be finite")
        floor, ceiling = self.domain
        if (floor is not None and self.low < floor) or (
            ceiling is not None and self.high > ceiling
        ):
            raise InputError(
                f"parameter '{self.name}': range [{self.low:g}, {self.high:g}] leaves its "
                f"physical domain {self.domain_text()}"
            )
        if self.low > self.high:
            raise InputError(
                f"parameter '{self.name}': low={self.low} is greater than high={self.high}"
            )
        if not self.low <= self.default <= self.high:
            raise InputError(
                f"parameter '{self.name}': default={self.default} lies outside "
                f"[{self.low}, {self.high}]"
            )
        if self.scale == "log" and self.low <= 0:
            raise InputError(
                f"parameter '{self.name}': log scale needs low > 0, got low={self.low}"
            )
        if self.scale == "periodic" and self.low == self.high:
            raise InputError(
                f"parameter '{self.name}': a periodic range [low, high) is one period and "
                f"needs low < high, got {self.low:g}"
            )
        return self

    @property
    def period(self) -> float:
        """``high - low`` for a periodic parameter (``inf`` for the others)."""
        return self.high - self.low if self.scale == "periodic" else math.inf

    def wrap(self, value: float) -> float:
        """``value`` moved by whole periods into ``[low, high)`` (unchanged unless periodic)."""
        if self.scale != "periodic":
            return value
        return self.low + math.fmod(
            math.fmod(value - self.low, self.period) + self.period, self.period
        )

    def domain_text(self) -> str:
        """The domain as an interval, e.g. ``[0, inf)``."""
        floor, ceiling = self.domain
        left = "(-inf" if floor is None else f"[{floor:g}"
        right = "inf)" if ceiling is None else f"{ceiling:g}]"
        return f"{left}, {right}"

    @property
    def is_fixed(self) -> bool:
        """True when the bounds collapse to one value."""
        return self.low == self.high

    def override(
        self,
        *,
        low: float | None = None,
        high: float | None = None,
        default: float | None = None,
        scale: Literal["linear", "log", "periodic"] | None = None,
    ) -> ParamSpec:
        """Return a copy with new bounds (and scale); the one way a range is configured.

        Unless given, the default stays where it is when it lies inside the new bounds, and
        moves to their [`middle`][regzoo.params.ParamSpec.middle] (on the new scale) otherwise.

        Raises:
            ValueError: if the new bounds are inconsistent, leave the physical domain, or put a
                bound <= 0 on a log scale (naming an inherited log scale).
        """
        new_low = self.low if low is None else float(low)
        new_high = self.high if high is None else float(high)
        new_scale = scale or self.scale
        for bound in (new_low, new_high):
            self.check_domain(bound)
        if new_scale == "log" and new_low <= 0:
            hint = "" if scale else f" ('{self.name}' is declared on a log scale)"
            raise InputError(
                f"parameter '{self.name}': a log-scale range needs low > 0, got "
                f"[{new_low:g}, {new_high:g}]{hint}; give a positive low or scale: linear"
            )
        if default is None and new_low <= self.default <= new_high:
            default = self.default
        spec = ParamSpec(
            name=self.name,
            low=new_low,
            high=new_high,
            default=new_low if default is None else float(default),
            scale=new_scale,
            domain=self.domain,
            description=self.description,
        )
        return spec if default is not None else spec.override(default=spec.middle)

    @property
    def middle(self) -> float:
        """The middle of ``[low, high]`` on the parameter's scale (geometric for log)."""
        if self.scale == "log":
            return math.sqrt(self.low * self.high)
        return (self.low + self.high) / 2

    def fixed(self, value: float) -> ParamSpec:
        """Return a copy fixed to ``value`` (``low == high == default == value``).

        Raises:
            ValueError: if ``value`` lies outside the physical domain.
        """
        value = float(value)
        return ParamSpec(
            name=self.name,
            low=value,
            high=value,
            default=value,
            scale="linear",
            domain=self.domain,
            description=self.description,
        )

    def spaced(self, start: float, stop: float, count: int) -> list[float]:
        """``count`` values from ``start`` to ``stop`` (inclusive), evenly on this scale.

        Log-scale parameters get geometric spacing (``mu=0.01:100:5`` is 0.01, 0.1, ..., 100).

        Raises:
            ValueError: for ``count < 1`` or non-positive ends on the log scale.
        """
        if count < 1:
            raise InputError(f"parameter '{self.name}': a grid needs count >= 1, got {count}")
        if count == 1:
            return [float(start)]
        if self.scale == "periodic" and math.isclose(abs(stop - start), self.period):
            # a whole turn: the end is the start again, so it is not repeated
            values = torch.linspace(start, stop, count + 1, dtype=torch.float64)[:-1]
        elif self.scale == "log":
            if start <= 0 or stop <= 0:
                raise InputError(
                    f"parameter '{self.name}' is on a log scale: grid ends must be > 0, "
                    f"got {start:g}:{stop:g}"
                )
            values = torch.logspace(math.log10(start), math.log10(stop), count, dtype=torch.float64)
        else:
            values = torch.linspace(start, stop, count, dtype=torch.float64)
        return [float(v) for v in values]

    def renamed(self, name: str) -> ParamSpec:
        """Return a copy under another name (e.g. ``"linear_elastic.mu"``)."""
        return self.model_copy(update={"name": name})

    def check_domain(self, value: float) -> float:
        """Return ``value`` as a float, or raise a ``ValueError`` naming the physical domain.

        Raises:
            ValueError: if the value is not finite or lies outside the domain.
        """
        value = float(value)
        if not math.isfinite(value):
            raise InputError(f"parameter '{self.name}' must be finite, got {value}")
        floor, ceiling = self.domain
        if (floor is not None and value < floor) or (ceiling is not None and value > ceiling):
            raise InputError(
                f"parameter '{self.name}'={value} leaves its physical domain {self.domain_text()}"
            )
        return value

    def check(self, value: float) -> float:
        """Return ``value`` as a float, or raise a ``ValueError`` naming the bounds.

        A periodic parameter takes any finite value, wrapped into ``[low, high)``.

        Raises:
            ValueError: if the value is not finite or lies outside ``[low, high]``.
        """
        value = float(value)
        if not math.isfinite(value):
            raise InputError(f"parameter '{self.name}' must be finite, got {value}")
        if self.scale == "periodic":
            return self.wrap(value)
        tolerance = 1e-9 * max(1.0, abs(self.low), abs(self.high))
        if value < self.low - tolerance or value > self.high + tolerance:
            raise InputError(
                f"parameter '{self.name}'={value} is out of range [{self.low}, {self.high}]"
            )
        return min(max(value, self.low), self.high)


class ParamSpace(BaseModel):
    """An ordered set of [`ParamSpec`][regzoo.params.ParamSpec] with sampling, normalisation and
    grids.

    Normalised coordinates lie in ``[0, 1]^P`` and are linear in the value (``scale="linear"``)
    or in its logarithm (``scale="log"``); a periodic parameter's coordinate is its phase in
    ``[0, 1)``. Fixed parameters (``low == high``) normalise to 0. The networks are conditioned
    on [`features`][regzoo.params.ParamSpace.features]: the normalised coordinates, each periodic
    one as ``(cos, sin)`` of its phase (``feature_size`` numbers in all).

    Examples:
        >>> space = ParamSpace.of(
        ...     ParamSpec(name="lam", low=0, high=1, default=0.1),
        ...     ParamSpec(name="mu", low=0, high=1, default=0.03),
        ... )
        >>> space.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 2])
        >>> space.validate({"mu": 0.5})
        {'lam': 0.1, 'mu': 0.5}
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    specs: tuple[ParamSpec, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> ParamSpace:
        names = [s.name for s in self.specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InputError(f"ParamSpace: duplicate parameter names {duplicates}")
        return self

    @classmethod
    def of(cls, *specs: ParamSpec) -> ParamSpace:
        """Build a space from specs given positionally."""
        return cls(specs=tuple(specs))

    # -- container protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self) -> Iterator[ParamSpec]:  # type: ignore[override]
        return iter(self.specs)

    def __getitem__(self, name: str) -> ParamSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise UnknownNameError(f"no parameter '{name}' in space with {self.names}")

    def __contains__(self, name: object) -> bool:
        return name in self.names

    @property
    def names(self) -> list[str]:
        """Parameter names in order."""
        return [s.name for s in self.specs]

    def defaults(self) -> dict[str, float]:
        """Mapping of each parameter to its default value."""
        return {s.name: s.default for s in self.specs}

    # -- checks -------------------------------------------------------------------------
    def validate(self, values: Mapping[str, float] | None = None) -> dict[str, float]:  # type: ignore[override]
        """Complete ``values`` with defaults and check every value against its bounds.

        Raises:
            KeyError: for a name the space does not declare (close matches are named).
            ValueError: for a value outside its bounds (the message names the bounds).
        """
        from regzoo._errors import unknown_name_message

        values = dict(values or {})
        unknown = [k for k in values if k not in self.names]
        if unknown:
            raise UnknownNameError(unknown_name_message("parameter", unknown[0], self.names))
        return {s.name: s.check(values.get(s.name, s.default)) for s in self.specs}

    # -- tensor conversions -------------------------------------------------------------
    def _bounds(self, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        lows, highs = [], []
        for s in self.specs:
            lo, hi = (math.log(s.low), math.log(s.high)) if s.scale == "log" else (s.low, s.high)
            lows.append(lo)
            highs.append(hi)
        dtype = like.dtype if like is not None else None
        device = like.device if like is not None else None
        return (
            torch.tensor(lows, dtype=dtype, device=device),
            torch.tensor(highs, dtype=dtype, device=device),
        )

    def _scale_mask(self, like: torch.Tensor, scale: str) -> torch.Tensor:
        return torch.tensor(
            [s.scale == scale for s in self.specs], dtype=torch.bool, device=like.device
        )

    @property
    def feature_size(self) -> int:
        """How many numbers [`features`][regzoo.params.ParamSpace.features] gives per vector: one
        per parameter, two per periodic one."""
        return sum(2 if s.scale == "periodic" else 1 for s in self.specs)

    def features(self, values: torch.Tensor) -> torch.Tensor:
        """What the networks are conditioned on: ``(..., P)`` values to ``(..., feature_size)``.

        Each parameter's normalised coordinate ([`normalize`][regzoo.params.ParamSpace.normalize]),
        a periodic one replaced by ``(cos, sin)`` of its phase mapped to ``[0, 1]`` (so both ends of
        its period, the same setting, give the same features). Without periodic parameters this is
        [`normalize`][regzoo.params.ParamSpace.normalize].
        """
        unit = self.normalize(values)
        if self.feature_size == len(self):
            return unit
        columns = []
        for i, spec in enumerate(self.specs):
            if spec.scale == "periodic":
                angle = 2 * math.pi * unit[..., i]
                columns += [(1 + torch.cos(angle)) / 2, (1 + torch.sin(angle)) / 2]
            else:
                columns.append(unit[..., i])
        return torch.stack(columns, dim=-1)

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """Map values ``(..., P)`` to ``[0, 1]^P`` on each parameter's scale."""
        self._check_last_dim(values, "normalize")
        lows, highs = self._bounds(values)
        log_mask = self._scale_mask(values, "log")
        transformed = torch.where(log_mask, torch.log(values.clamp_min(1e-30)), values)
        span = highs - lows
        safe_span = torch.where(span > 0, span, torch.ones_like(span))
        unit = torch.where(span > 0, (transformed - lows) / safe_span, torch.zeros_like(values))
        return torch.where(self._scale_mask(values, "periodic"), torch.remainder(unit, 1.0), unit)

    def denormalize(self, unit: torch.Tensor) -> torch.Tensor:
        """Inverse of [`normalize`][regzoo.params.ParamSpace.normalize]: map ``[0, 1]^P``
        coordinates ``(..., P)`` to values."""
        self._check_last_dim(unit, "denormalize")
        lows, highs = self._bounds(unit)
        periodic = self._scale_mask(unit, "periodic")
        unit = torch.where(periodic, torch.remainder(unit, 1.0), unit)
        transformed = lows + unit * (highs - lows)
        values = torch.where(self._scale_mask(unit, "log"), torch.exp(transformed), transformed)
        # exp(log(high)) may round past high in float32: the ends map exactly onto the bounds
        floor = torch.tensor([s.low for s in self.specs], dtype=values.dtype, device=values.device)
        ceiling = torch.tensor(
            [s.high for s in self.specs], dtype=values.dtype, device=values.device
        )
        inside = (unit >= 0) & (unit <= 1)
        return torch.where(inside, torch.minimum(torch.maximum(values, floor), ceiling), values)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        endpoint_rate: float = 0.0,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` parameter vectors ``(n, P)``, uniform on each parameter's scale.

        Args:
            n: number of vectors.
            generator: random generator used for every draw (reproducible sampling).
            endpoint_rate: probability that a coordinate is snapped to its lower or upper bound
                (HyperMorph's oversampling of the range ends, which keeps the extremes trained;
                a periodic parameter has no ends and is never snapped).
            device: device of the result.
        """
        if not 0.0 <= endpoint_rate <= 1.0:
            raise InputError(
                f"ParamSpace.sample(): endpoint_rate must be in [0, 1], got {endpoint_rate}"
            )
        unit = torch.rand(n, len(self), generator=generator)
        if endpoint_rate > 0:
            snap = torch.rand(n, len(self), generator=generator) < endpoint_rate
            snap &= ~self._scale_mask(unit, "periodic")
            ends = (torch.rand(n, len(self), generator=generator) < 0.5).to(unit.dtype)
            unit = torch.where(snap, ends, unit)
        return self.denormalize(unit).to(device) if device is not None else self.denormalize(unit)

    def grid(
        self,
        steps: int | Sequence[int] | Mapping[str, Sequence[float]],
        *,
        values: Mapping[str, float] | None = None,
    ) -> torch.Tensor:
        """Regular grid ``(N, P)`` over the space: every combination, the first axis varying
        slowest (as `itertools.product`; for explicit axes, in the mapping's order).

        Args:
            steps: points per parameter, evenly on each parameter's scale over ``[low, high]``
                (``[low, high)`` for a periodic one: its end is its start) (one int for all,
                or one per parameter); or explicit axes, ``name -> values``
                (each checked against the bounds), the other parameters held at ``values``.
            values: the parameters off the axes (defaults where not given).

        Raises:
            ValueError: a step count per parameter that does not match, or an axis value
                outside its parameter's bounds.
            KeyError: an axis of an unknown parameter.
        """
        if isinstance(steps, Mapping):
            held = self.validate(values)
            columns = {name: [self[name].check(v) for v in steps[name]] for name in steps}
            rows = []
            for combo in itertools.product(*columns.values()):
                row = {**held, **dict(zip(columns, combo, strict=True))}
                rows.append([row[name] for name in self.names])
            return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(self))
        if isinstance(steps, int):
            steps = [steps] * len(self)
        if len(steps) != len(self):
            raise InputError(
                f"ParamSpace.grid(): expected {len(self)} step counts, got {len(steps)}"
            )
        if len(self) == 0:
            return torch.zeros(1, 0)
        axes = [
            torch.linspace(0.0, 1.0, int(k) + 1)[:-1]
            if spec.scale == "periodic"
            else torch.linspace(0.0, 1.0, int(k))
            if k > 1
            else torch.zeros(1)
            for spec, k in zip(self.specs, steps, strict=True)
        ]
        unit = torch.cartesian_prod(*axes).reshape(-1, len(self))
        return self.denormalize(unit)

    def to_tensor(self, values: Mapping[str, float], *, batch: int = 1) -> torch.Tensor:
        """Validate a mapping and return it as a tensor ``(batch, P)``."""
        checked = self.validate(values)
        row = torch.tensor([checked[n] for n in self.names], dtype=torch.float32)
        return row.expand(batch, len(self)).clone()

    def to_dict(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a tensor ``(B, P)`` into a mapping ``name -> (B,)``."""
        self._check_last_dim(vector, "to_dict")
        return {name: vector[..., i] for i, name in enumerate(self.names)}

    def _check_last_dim(self, tensor: torch.Tensor, caller: str) -> None:
        if tensor.shape[-1] != len(self):
            raise InputError(
                f"ParamSpace.{caller}(): expected a last dimension of {len(self)} "
                f"({self.names}), got shape {tuple(tensor.shape)}"
            )

    def describe(self) -> list[dict[str, float | str]]:
        """JSON-ready description: one dict per parameter."""
        return [s.model_dump() for s in self.specs]


def parse_params(items: Sequence[str]) -> dict[str, float]:
    """Parse ``NAME=NUMBER`` items (``--param``) into a mapping.

    Raises:
        ValueError: for an item that is not ``NAME=NUMBER`` or a name given twice.
    """
    params: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            value = float(text)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise InputError(f"--param {item!r} must look like NAME=NUMBER")
        if name in params:
            raise InputError(f"--param {name} given twice")
        params[name] = value
    return params
