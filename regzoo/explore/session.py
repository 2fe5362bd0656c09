"""The explorer's state: one image pair, one model and the registration at the current setting.

[`ExploreSession`][regzoo.explore.session.ExploreSession] is the web-free core of ``regzoo
explore``: it re-registers with one network forward when the parameters change, refines on request,
scores the result (Dice, SDlogJ, folding, the similarity and each term's energy), cuts the three
planes the page shows and saves the result exactly as ``regzoo register`` writes it. The HTTP layer
([`regzoo.explore.app`][regzoo.explore.app]) only translates requests into these calls.

The module is long because the session is one state machine (setting, refinement job, planes,
save) whose methods share that state; the HTTP layer is separate.
"""

from __future__ import annotations

import dataclasses
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regzoo._errors import InputError
from regzoo.cli.refine_flags import to_flags
from regzoo.data.learn2reg import Intensity
from regzoo.explore.render import (
    deformation_grid,
    encode_plane,
    labels_to_uint8,
    plane,
    scale_to_uint8,
)
from regzoo.inference import (
    RegistrationResult,
    build_result,
    objective_readout,
    read_image,
    read_labels,
    read_pair,
    segmentation_names,
    write_result,
)
from regzoo.io import check_output_folder, check_same_grid
from regzoo.metrics import dice, jacobian_scores
from regzoo.nets import RegistrationOutput
from regzoo.refinement import (
    RefineCancelledError,
    RefineOptions,
    RefineTrace,
    check_steps,
    refine,
)
from regzoo.registration_model import RegistrationModel, result_objective
from regzoo.spatial import warp

__all__ = ["ExploreSession", "RefineJob"]

REFINE_LEVELS = 3
"""Pyramid levels of the explorer's refinement:
[`regzoo.refinement.refine`][regzoo.refinement.refine]'s default, the same as ``regzoo register
--refine N``, so a saved refined result is reproducible."""

GRID_NODES = 16
"""About this many deformation-grid lines along each side of a plane."""


@dataclass
class _Current:
    """The registration shown now and what the page needs from it."""

    params: dict[str, float]
    result: RegistrationResult
    readout: dict[str, Any]
    volumes: dict[str, np.ndarray]
    refined: int = 0


class ExploreSession:
    """One fixed/moving pair registered by one model at a setting the user moves.

    Args:
        model: a trained model ([`regzoo.checkpoint.load_model`][regzoo.checkpoint.load_model]), in
            eval mode.
        fixed: fixed image (path to a NIfTI file, or a volume) in raw intensities.
        moving: moving image on the same grid.
        fixed_seg: optional fixed mask or label map (contours, Dice).
        moving_seg: optional moving mask or label map, warped with the image (contours, Dice,
            and ``warped_<name>.nii.gz`` on save).
        fixed_labels: the fixed image's label map, for a model with per-label parameters (its
            objective, refinement and parameter maps need it; as ``register --fixed-labels``).
        out: the folder that "save" writes to (``None``: saving is off).
        params: the starting parameters (short or full names; defaults fill the rest).
        checkpoint: the model's checkpoint file, named in [`register_command`][regzoo.explore.session.ExploreSession.register_command].
        refine: the refine button's settings ([`RefineOptions`][regzoo.refinement.RefineOptions]:
            similarity, split, tol, as ``register --refine-...``; the button sets the steps).
        refine_options: deprecated: those settings as a mapping (a ``DeprecationWarning``).

    Raises:
        ValueError: images of different shapes, or parameters outside the trained range.
        KeyError: an unknown parameter name.
        FileNotFoundError: a missing image.
    """

    def __init__(
        self,
        model: RegistrationModel,
        fixed: str | Path | torch.Tensor,
        moving: str | Path | torch.Tensor,
        *,
        fixed_seg: str | Path | torch.Tensor | None = None,
        moving_seg: str | Path | torch.Tensor | None = None,
        fixed_labels: str | Path | torch.Tensor | None = None,
        out: str | Path | None = None,
        params: Mapping[str, float] | None = None,
        checkpoint: str | Path | None = None,
        refine: RefineOptions | None = None,
        refine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        if refine_options is not None:
            if refine is not None:
                raise InputError("explore: give refine=RefineOptions(...) alone")
            refine = RefineOptions.coerce(refine_options, "ExploreSession(refine_options=...)")
        self.refine_settings = refine or RefineOptions(levels=REFINE_LEVELS)
        """The refine button's settings (its steps come from the button)."""
        self.sources = {
            "fixed": fixed,
            "moving": moving,
            "moving_seg": moving_seg,
            "fixed_labels": fixed_labels,
        }
        self.checkpoint = checkpoint
        self.out = Path(out) if out is not None else None
        if self.out is not None:  # a folder of the user's files is refused now, not at save
            check_output_folder(self.out)
        fixed_v, moving_v, _ = read_pair(fixed, moving)  # one grid, or a message naming both
        self._grid = fixed_v.grid
        if fixed_v.ndim != 3:
            raise InputError(
                f"explore shows three orthogonal planes of 3D images; {fixed_v.grid.describe()} "
                "is 2D (use regzoo register --figure or sweep --figure for 2D pairs)"
            )
        fixed_t, self.affine, self.moving = fixed_v.tensor(), fixed_v.affine, moving_v.tensor()
        self.shape = tuple(fixed_t.shape)
        intensity = Intensity.from_config(model.config.data)
        self.window = intensity.display_range(fixed_t)
        device = model.device
        self._fixed_n = intensity(fixed_t)[None, None].to(device)
        self._moving_n = intensity(self.moving)[None, None].to(device)
        self.fixed_seg = self._segmentation("fixed_seg", fixed_seg)
        self.moving_seg = self._segmentation("moving_seg", moving_seg)
        self.spacing = list(fixed_v.spacing)
        # per-label models: the label map the objective, refinement and parameter maps need
        self.labels = read_labels(model, fixed_v, fixed_labels, needed=True)
        self._fixed_volumes = {"fixed": fixed_t.numpy()}
        if self.fixed_seg is not None:
            self._fixed_volumes["fixed_seg"] = self.fixed_seg.numpy()
        self._labels = sorted(
            {
                int(v)
                for seg in (self.fixed_seg, self.moving_seg)
                if seg is not None
                for v in seg.round().unique().tolist()
            }
            - {0}
        )
        self._lock = threading.Lock()
        self._current = self._register(model.objective.resolve(params))

    # -- inputs -------------------------------------------------------------------------
    def _check_shape(self, name: str, volume: torch.Tensor) -> None:
        if tuple(volume.shape) != self.shape:
            raise InputError(
                f"explore: {name} {tuple(volume.shape)} must have the fixed image's shape "
                f"{self.shape} (resample it onto the fixed grid first)"
            )

    def _segmentation(
        self, name: str, source: str | Path | torch.Tensor | None
    ) -> torch.Tensor | None:
        if source is None:
            return None
        image = read_image(source, what=name)
        if isinstance(source, str | Path):  # a file has a grid: it must be the fixed image's
            check_same_grid(self._grid, image.grid)
        volume = image.tensor()
        self._check_shape(name, volume)
        return volume

    # -- what the page shows ------------------------------------------------------------
    def parameters(self) -> list[dict[str, Any]]:
        """The free parameters: name, short name, bounds, scale, default, description."""
        return [
            {
                "name": spec.name,
                "short": spec.name.split(".", 1)[1],
                "low": spec.low,
                "high": spec.high,
                "default": spec.default,
                "scale": spec.scale,
                "description": spec.description,
            }
            for spec in self.model.objective.space
        ]

    @property
    def params(self) -> dict[str, float]:
        """The current parameter values (full names)."""
        return dict(self._current.params)

    @property
    def refined(self) -> int:
        """Refinement iterations behind the current result (0: the network's field)."""
        return self._current.refined

    def update(self, params: Mapping[str, float] | None) -> bool:
        """Re-register at ``params`` with one network forward (nothing to do if unchanged).

        Returns:
            Whether a new registration was computed.

        Raises:
            KeyError: an unknown or fixed parameter name.
            ValueError: a value outside the trained range.
        """
        resolved = self.model.objective.resolve(params)
        with self._lock:
            if resolved == self._current.params:
                return False
            self._current = self._register(resolved)
            return True

    def refine(self, steps: int, trace: RefineTrace | None = None) -> None:
        """Refine the current setting's field for ``steps`` iterations (as
        ``regzoo register --refine steps`` does), starting from the network's field.

        Args:
            steps: instance-optimisation iterations (``>= 1``).
            trace: receives the objective per iteration (progress: see
                [`RefineJob`][regzoo.explore.session.RefineJob]).
        """
        check_steps(steps, minimum=1, what="explore: refine steps")
        with self._lock:
            started = time.perf_counter()
            params = self._current.params
            output = refine(
                self.model,
                self._fixed_n,
                self._moving_n,
                params,
                dataclasses.replace(self.refine_settings, steps=steps),
                trace=trace,
                spacing=self.spacing,
                labels=self.labels,
            )
            self._current = self._score(params, output, started, refined=steps)

    def view(self, slices: Sequence[int] | None = None) -> dict[str, Any]:
        """The page's payload: parameters, readouts and the three planes through ``slices``.

        Args:
            slices: the voxel ``(i, j, k)`` the planes pass through (clipped into the
                volume; ``None``: the centre).

        Returns:
            ``{"params", "refined", "readout", "maps", "slices", "shape", "spacing",
            "planes"}``; each plane holds ``fixed``, ``warped``, ``difference`` and
            ``jacobian`` byte images, the ``grid`` nodes and, when given, ``fixed_seg`` /
            ``warped_seg`` label images and one ``map:<term.param>`` image per parameter map
            (a per-label model with the fixed label map), whose value range ``maps`` gives.
        """
        current = self._current
        index = self._clip_slices(slices)
        planes = []
        step = max(1, max(self.shape) // GRID_NODES)
        volumes = {**self._fixed_volumes, **current.volumes}
        displacement = current.result.displacement.numpy()
        for axis, position in enumerate(index):
            entry: dict[str, Any] = {"axis": axis, "index": position}
            for name, volume in volumes.items():
                cut = plane(volume, axis, position)
                if name.startswith("map:"):
                    low, high = float(volume.min()), float(volume.max())
                    entry[name] = encode_plane(scale_to_uint8(cut, low, max(high, low + 1e-12)))
                else:
                    entry[name] = encode_plane(self._bytes(name, cut))
            entry["grid"] = deformation_grid(displacement, axis, position, step)
            planes.append(entry)
        return {
            "params": dict(current.params),
            "refined": current.refined,
            "readout": dict(current.readout),
            "maps": {
                name.split(":", 1)[1]: [float(volume.min()), float(volume.max())]
                for name, volume in volumes.items()
                if name.startswith("map:")
            },
            "slices": index,
            "shape": list(self.shape),
            "spacing": self.spacing,
            "planes": planes,
        }

    def _bytes(self, name: str, image: np.ndarray) -> np.ndarray:
        """A plane of volume ``name`` as the bytes the page's colour table for it expects."""
        if name in ("fixed", "warped"):
            return scale_to_uint8(image, *self.window)
        if name == "difference":
            return scale_to_uint8(image, -1.0, 1.0)
        if name == "jacobian":
            return scale_to_uint8(image, 0.0, 2.0, reserve_folded=True)
        return labels_to_uint8(image)

    def _clip_slices(self, slices: Sequence[int] | None) -> list[int]:
        if slices is None:
            return [n // 2 for n in self.shape]
        if len(slices) != 3:
            raise InputError(f"explore: slices must be three voxel indices, got {list(slices)}")
        return [min(max(int(i), 0), n - 1) for i, n in zip(slices, self.shape, strict=True)]

    # -- saving -------------------------------------------------------------------------
    def save(self) -> list[Path]:
        """Write the current result into the session's ``out`` folder, the same files (each
        written atomically) as ``regzoo register``
        ([`regzoo.inference.write_result`][regzoo.inference.write_result]).

        Raises:
            ValueError: if the session has no ``out`` folder.
        """
        if self.out is None:
            raise InputError("explore: saving is off (start regzoo explore with --out DIR)")
        with self._lock:
            result = self._current.result
        source = self.sources["moving_seg"]
        segs: Mapping[str, Any]
        if isinstance(source, str | Path):
            segs = segmentation_names([source])
        else:
            segs = {} if source is None else {"moving_seg": source}
        return write_result(result, self.out, segmentations=segs)

    def register_command(self) -> str:
        """The ``regzoo register`` command that writes the current result (when the images
        and model were given as files)."""
        current = self._current
        words = ["regzoo", "register"]
        for flag, source in (
            ("--model", self.checkpoint),
            ("--fixed", self.sources["fixed"]),
            ("--moving", self.sources["moving"]),
        ):
            words += [flag, str(source) if isinstance(source, str | Path) else "..."]
        for name, value in current.params.items():
            words += ["--param", f"{name}={value:.6g}"]
        if isinstance(self.sources["moving_seg"], str | Path):
            words += ["--moving-seg", str(self.sources["moving_seg"])]
        if isinstance(self.sources["fixed_labels"], str | Path):
            words += ["--fixed-labels", str(self.sources["fixed_labels"])]
        if current.refined:
            words += ["--refine", str(current.refined)]
            words += to_flags(self.refine_settings)
        words += ["--out", str(self.out) if self.out is not None else "DIR"]
        return shlex.join(words)

    # -- computing ----------------------------------------------------------------------
    def _register(self, params: dict[str, float]) -> _Current:
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model(self._fixed_n, self._moving_n, params, spacing=self.spacing)
        return self._score(params, output, started)

    def _score(
        self,
        params: dict[str, float],
        output: RegistrationOutput,
        started: float,
        *,
        refined: int = 0,
    ) -> _Current:
        """Score ``output`` and keep the volumes the page cuts; ``started`` is when the work
        began (the readout's ``seconds``)."""
        result = build_result(output.displacement, self.moving, params, self.affine)
        readout: dict[str, Any] = jacobian_scores(result.displacement)
        # the model's own objective, in its units and with its label maps: what refinement
        # minimises and `regzoo register` reports (one function computes it for all of them)
        terms = result_objective(
            self.model,
            self._fixed_n,
            self._moving_n,
            output,
            params,
            spacing=self.spacing,
            labels=self.labels,
        )
        readout.update(objective_readout(terms))
        with torch.inference_mode():
            warped_n = warp(self._moving_n, output.displacement)
        volumes = {
            "warped": result.warped.numpy(),
            "difference": (warped_n - self._fixed_n)[0, 0].cpu().numpy(),
            "jacobian": result.jacobian_determinant.numpy(),
        }
        if self.labels is not None:
            maps = self.model.objective.parameter_maps(
                self.model.parameter_tensor(params, 1), self.labels
            )
            result.parameter_maps = {name: value[0, 0].cpu() for name, value in maps.items()}
            for name, value in result.parameter_maps.items():
                volumes[f"map:{name}"] = value.numpy()
        readout["dice"] = None
        if self.moving_seg is not None:
            warped_seg = warp(
                self.moving_seg[None, None], result.displacement[None], mode="nearest"
            )[0, 0]
            volumes["warped_seg"] = warped_seg.numpy()
            if self.fixed_seg is not None and self._labels:
                scores = dice(warped_seg.round(), self.fixed_seg.round(), labels=self._labels)
                readout["dice"] = sum(scores.values()) / len(scores)
        readout["seconds"] = time.perf_counter() - started
        return _Current(dict(params), result, readout, volumes, refined)


class RefineJob:
    """A refinement running in a background thread; its progress can be read at any time.

    Progress counts the entries of a [`RefineTrace`][regzoo.refinement.RefineTrace]: one per
    iteration and one more at the end of each pyramid level.

    Args:
        session: the session to refine (at its current setting).
        steps: iterations.
    """

    def __init__(self, session: ExploreSession, steps: int) -> None:
        self.steps = check_steps(steps, minimum=1, what="explore: refine steps")
        self.error: str | None = None
        self.cancelled = False
        self._trace = RefineTrace()
        self._total = steps + session.refine_settings.levels
        self._thread = threading.Thread(target=self._run, args=(session,), daemon=True)
        self._thread.start()

    def _run(self, session: ExploreSession) -> None:
        try:
            session.refine(self.steps, self._trace)
        except RefineCancelledError:
            self.cancelled = True
        except Exception as exc:  # reported to the page, never lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"

    def cancel(self, timeout: float | None = 30.0) -> None:
        """Stop the refinement at its next iteration and wait for it (the session keeps the
        unrefined result of its setting)."""
        self._trace.stop.set()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the refinement is still going."""
        return self._thread.is_alive()

    @property
    def fraction(self) -> float:
        """Done fraction in ``[0, 1]``."""
        if not self.running:
            return 1.0
        return min(len(self._trace.objective) / self._total, 1.0)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the refinement has finished (or ``timeout`` seconds passed)."""
        self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        """``{"running", "fraction", "steps", "error", "cancelled"}`` for the page."""
        return {
            "running": self.running,
            "fraction": self.fraction,
            "steps": self.steps,
            "error": self.error,
            "cancelled": self.cancelled,
        }
