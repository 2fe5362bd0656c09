"""Test-time registration with a trained model: ``register(model, fixed, moving, **params)``.

The module is long because reading the pair, registering, choosing parameters for one pair and
writing the output set are the one path ``register`` takes; each step is a function.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from regzoo._errors import InputError
from regzoo.align import align as align_images
from regzoo.align import check_align, compose
from regzoo.data.learn2reg import Intensity
from regzoo.io import (
    Volume,
    atomic_write_text,
    check_same_grid,
    output_folder,
    read_volume,
    resample_like,
    same_grid,
    write_displacement,
    write_itk_displacement,
    write_nifti,
)
from regzoo.objective import LossTerms
from regzoo.refinement import RefineOptions, RefineTrace
from regzoo.refinement import refine as refine_output
from regzoo.registration_model import RegistrationModel, check_finite_field, result_objective
from regzoo.spatial import jacobian_determinant, warp

if TYPE_CHECKING:
    from regzoo.sweeping import GridAxis, SweepResult

__all__ = [
    "RegistrationResult",
    "build_result",
    "check_alignment_pair",
    "choose_parameters",
    "objective_readout",
    "read_image",
    "read_labels",
    "read_pair",
    "register",
    "save_result",
    "segmentation_names",
    "write_result",
]

ImageLike = torch.Tensor | np.ndarray | str | Path | Volume


@dataclass
class RegistrationResult:
    """The outcome of [`register`][regzoo.inference.register] for one pair.

    Attributes:
        displacement: ``(D, *spatial)`` voxels on the fixed grid (fixed x -> moving x + u(x)).
        warped: the moving image resampled on the fixed grid, ``(*spatial)``, in the moving
            image's own intensities.
        jacobian_determinant: ``(*spatial)`` determinant of the map's Jacobian.
        params: the free parameter values used (full names).
        affine: the fixed image's affine (identity for tensors).
        parameter_maps: the spatial maps ``(*spatial)`` of per-label parameters by full name
            (``linear_elastic.mu``), when the fixed image's label map was given.
        refine_iterations: the refinement iterations that ran (fewer than asked when it
            stopped early), 0 without refinement.
        objective: the model's own objective of the result
            ([`objective_readout`][regzoo.inference.objective_readout]: ``objective``,
            ``similarity`` and each term's ``energies``), as refinement minimises it; ``None`` for a
            per-label model without the fixed label map.
            With pre-alignment it is the deformable stage's objective.
        alignment: the pre-alignment's record ([`Alignment.record`][regzoo.align.Alignment.record]: its
            kind and matrices), ``None`` without one; ``displacement`` then holds the total
            field, the affine map applied after the deformable one.
    """

    displacement: torch.Tensor
    warped: torch.Tensor
    jacobian_determinant: torch.Tensor
    params: dict[str, float]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    parameter_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    refine_iterations: int = 0
    objective: dict[str, Any] | None = None
    alignment: dict[str, Any] | None = None

    def save(
        self,
        folder: str | Path,
        *,
        segmentations: Mapping[str, ImageLike] | None = None,
        overwrite: bool = True,
    ) -> list[Path]:
        """Write the result's files into ``folder`` as one output set, atomically.

        The files are those of [`save_result`][regzoo.inference.save_result] (the displacement
        in voxels and as an ITK/ANTs/Slicer transform, the warped image, the Jacobian
        determinant, warped segmentations, parameter maps), with the fixed image's affine;
        they are written beside ``folder`` and swapped into place
        ([`write_result`][regzoo.inference.write_result]), so a killed run leaves the previous
        set or the new one, never a mix.

        Args:
            folder: the output folder (made when missing).
            segmentations: moving label maps by name, each written as ``warped_<name>.nii.gz``.
            overwrite: replace an earlier output set of regzoo's in ``folder`` (a folder holding
                other files is always refused).

        Returns:
            The paths written.

        Raises:
            InputError: a segmentation whose shape differs from the displacement's.
            OutputExistsError: ``folder`` holds files regzoo did not write, or an output set
                and ``overwrite`` is false.
        """
        return write_result(self, folder, segmentations=segmentations, overwrite=overwrite)


def objective_readout(terms: LossTerms, index: int = 0) -> dict[str, Any]:
    """One sample's objective as plain numbers: ``{"objective", "similarity", "energies"}``
    (each term's energy without its weight), what ``register``, the sweep and the explorer
    report."""
    return {
        "objective": float(terms.total[index]),
        "similarity": float(terms.similarity[index]),
        "energies": {name: float(e[index]) for name, e in terms.energies.items()},
    }


def read_image(image: ImageLike, *, what: str = "image") -> Volume:
    """A 2D or 3D [`Volume`][regzoo.io.geometry.Volume] from a NIfTI path, array, tensor or volume.

    Arrays and tensors get an identity affine.

    Raises:
        MissingFileError: for a missing file.
        InputError: for an unreadable file, NaN/inf values or a volume that is not 2D/3D.
    """
    if isinstance(image, Volume):
        return image
    if isinstance(image, str | Path):
        return read_volume(image, what=what)
    data = torch.as_tensor(image, dtype=torch.float32).squeeze()
    if data.ndim not in (2, 3):
        raise InputError(f"expected a 2D or 3D {what}, got shape {tuple(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise InputError(f"{what} contains NaN or infinite values")
    return Volume(data.numpy(), np.eye(4), name=what)


def read_pair(
    fixed: ImageLike,
    moving: ImageLike,
    *,
    segmentations: Mapping[str, ImageLike] | None = None,
    resample: bool = False,
) -> tuple[Volume, Volume, dict[str, Volume]]:
    """Read fixed, moving and the moving image's segmentations, and put them on one grid.

    Each segmentation must lie on the moving image's grid. With ``resample`` the moving image
    (linear) and its segmentations (nearest neighbour) are resampled onto the fixed grid when
    the grids differ (torchio); without it, different grids are refused.

    Returns:
        ``(fixed, moving, segmentations)``, all on the fixed grid.

    Raises:
        InputError: naming both grids, for images on different grids (without ``resample``)
            or a segmentation off its image's grid.
    """
    fixed_v = read_image(fixed, what="fixed image")
    moving_v = read_image(moving, what="moving image")
    segs = {
        name: read_image(seg, what=f"segmentation '{name}'")
        for name, seg in (segmentations or {}).items()
    }
    for seg in segs.values():
        check_same_grid(moving_v.grid, seg.grid)
    if same_grid(fixed_v.grid, moving_v.grid):
        return fixed_v, moving_v, segs
    if not resample:
        check_same_grid(fixed_v.grid, moving_v.grid)
    return (
        fixed_v,
        resample_like(moving_v, fixed_v),
        {name: resample_like(seg, fixed_v, nearest=True) for name, seg in segs.items()},
    )


def register(
    model: RegistrationModel,
    fixed: ImageLike,
    moving: ImageLike,
    *,
    refine: RefineOptions | None = None,
    progress: bool = False,
    resample: bool = False,
    fixed_labels: ImageLike | None = None,
    refine_options: Mapping[str, Any] | None = None,
    at_training_spacing: bool | None = None,
    align: str | None = None,
    **params: float,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with the model's network at the given parameters.

    With ``refine`` the network's field is then refined under the model's own objective at the
    same parameters ([`regzoo.refinement.refine`][regzoo.refinement.refine]), with those settings.

    Args:
        model: a trained model (see [`regzoo.checkpoint.load_model`][regzoo.checkpoint.load_model]).
        fixed: 2D or 3D image (path to a NIfTI file, array, tensor or
            [`Volume`][regzoo.io.geometry.Volume]) in raw intensities (HU for CT); it is normalised
            with the model's training window.
        moving: the moving image, on the same grid as ``fixed`` (shape and affine).
        refine: the refinement after the network ([`RefineOptions`][regzoo.refinement.RefineOptions]:
            steps, similarity, split, tol...; ``None``: the network only). An integer, the
            former form, means that many steps (a ``DeprecationWarning``).
        progress: show a progress bar while refining.
        resample: resample ``moving`` onto the fixed grid (linear) when the grids differ,
            instead of refusing.
        fixed_labels: the fixed image's label map (on its grid), for a model with per-label
            parameters: refinement needs it, and the result then holds the parameter maps.
        refine_options: deprecated: the settings beyond the steps as a mapping (folded into
            ``refine`` with a ``DeprecationWarning``).
        at_training_spacing: run the network at the spacing it was trained at (the images
            are resampled to it and its field carried back in mm; refinement then runs on the
            fixed image's own grid); ``False`` runs it on the images' grid; ``None`` (default)
            follows ``model.at_training_spacing`` (on unless changed).
        align: pre-alignment before the network: ``"rigid"``, ``"affine"`` or ``"none"``
            ([`regzoo.align.align`][regzoo.align.align], under the model's similarity on an image pyramid);
            ``None`` follows the config's ``data.align``. The result's displacement, warped
            image and ITK transform are the total map; ``result.alignment`` records the matrix.
        **params: free parameter values by short (``mu``, ``mu@lung``) or full
            (``linear_elastic.mu``) name; the rest take the space's defaults.

    Raises:
        UnknownNameError: an unknown or fixed parameter name.
        InputError: a value outside the trained range, images on different grids, images
            whose dimension differs from the model's, NaN input, or refinement of a model with
            per-label parameters without ``fixed_labels``.

    Examples:
        >>> result = register(model, "fixed.nii.gz", "moving.nii.gz", lam=0.08, mu=0.03)
        >>> result.displacement.shape  # (3, X, Y, Z)
    """
    options = RefineOptions.from_legacy(refine, refine_options, "register")
    resolved = model.objective.resolve(params)
    kind = check_align(model.config.data.align if align is None else align)
    fixed_v, moving_v = (
        read_image(fixed, what="fixed image"),
        read_image(moving, what="moving image"),
    )
    check_alignment_pair(kind, fixed_v, moving_v)
    fixed_v, moving_v, _ = read_pair(fixed_v, moving_v, resample=resample)
    if fixed_v.ndim != model.ndim:
        raise InputError(
            f"the model registers {model.ndim}D images, got {fixed_v.ndim}D "
            f"({fixed_v.grid.describe()})"
        )
    labels = read_labels(model, fixed_v, fixed_labels, needed=options is not None)
    intensity = Intensity.from_config(model.config.data)
    device = model.device
    moving_t = moving_v.tensor()
    f = intensity(fixed_v.tensor())[None, None].to(device)
    m = intensity(moving_t)[None, None].to(device)
    trace = RefineTrace()
    alignment = None
    if kind is not None:
        alignment = align_images(
            f, m, model.objective.similarity, spacing=fixed_v.spacing, kind=kind
        )
        with torch.no_grad():
            m = warp(m, alignment.displacement)
    with torch.no_grad():
        output = model(
            f, m, resolved, spacing=fixed_v.spacing, at_training_spacing=at_training_spacing
        )
    if options is not None:
        output = refine_output(
            model,
            f,
            m,
            resolved,
            dataclasses.replace(options, progress=progress or options.progress),
            spacing=fixed_v.spacing,
            labels=labels,
            trace=trace,
            init=output,
        )
    total = output.displacement if alignment is None else compose(alignment, output.displacement)
    result = build_result(total, moving_t, resolved, fixed_v.affine)
    result.refine_iterations = trace.total_iterations
    if alignment is not None:
        result.alignment = alignment.record(fixed_v.affine)
    if labels is not None or not model.objective.needs_labels:
        terms = result_objective(
            model, f, m, output, resolved, spacing=fixed_v.spacing, labels=labels
        )
        result.objective = objective_readout(terms)
    if labels is not None:
        maps = model.objective.parameter_maps(model.objective.to_tensor(resolved), labels.cpu())
        result.parameter_maps = {name: value[0, 0] for name, value in maps.items()}
    return result


def check_alignment_pair(kind: str | None, fixed: Volume, moving: Volume) -> None:
    """Refuse a pre-alignment of images of different dimensions (a 2D and a 3D image).

    Raises:
        InputError: naming both images' grids.
    """
    if kind is not None and fixed.ndim != moving.ndim:
        raise InputError(
            f"a {kind} pre-alignment needs two images of one dimension: the fixed image is "
            f"{fixed.ndim}D ({fixed.grid.describe()}), the moving image {moving.ndim}D "
            f"({moving.grid.describe()})"
        )


def choose_parameters(
    model: RegistrationModel,
    fixed: ImageLike,
    moving: ImageLike,
    grid: Mapping[str, GridAxis | str],
    criterion: str,
    *,
    refine_grid: RefineOptions | None = None,
    refine_options: Mapping[str, Any] | None = None,
    max_folding: float | None = 0.0,
    resample: bool = False,
    fixed_labels: ImageLike | None = None,
    batch_size: int | None = None,
) -> tuple[dict[str, float], SweepResult]:
    """Choose the parameters for one pair without labels: register it at every setting of
    ``grid`` and let a label-free criterion ([`regzoo.criteria`][regzoo.criteria]) pick.

    Args:
        model: a trained model.
        fixed: the fixed image (as for [`register`][regzoo.inference.register]).
        moving: the moving image.
        grid: parameter name -> values, a [`regzoo.sweeping.GridRange`][regzoo.sweeping.GridRange] or the CLI's
            text (``"0.1:1:3"``, ``"0.1,1"``; [`regzoo.sweeping.parse_grid`][regzoo.sweeping.parse_grid]).
        criterion: a registered criterion's name (``regzoo.criteria.available()``).
        refine_grid: refine every setting with these settings before judging it
            ([`RefineOptions`][regzoo.refinement.RefineOptions]; ``None``: the network's fields). An
            integer, the former form, means that many steps (a ``DeprecationWarning``).
        refine_options: deprecated: the settings beyond the steps as a mapping.
        max_folding: only settings whose folded-voxel fraction is at most this may be chosen
            (``None``: no limit).
        resample: resample ``moving`` onto the fixed grid when the grids differ.
        fixed_labels: the fixed image's label map, for models with per-label parameters.
        batch_size: settings per forward pass (``None``: the device's default,
            [`default_batch_size`][regzoo.sweeping.default_batch_size]).

    Returns:
        params: the chosen values of the grid's parameters, by full name.
        sweep: the pair's [`SweepResult`][regzoo.sweeping.SweepResult], whose rows hold
            every setting's measures.

    Raises:
        UnknownNameError: an unknown criterion or parameter name.
        InputError: as [`register`][regzoo.inference.register], or when every setting folds more
            than ``max_folding``.
    """
    from regzoo.criteria import needs_backward
    from regzoo.sweeping import sweep

    backward = needs_backward(criterion)  # an unknown name fails before any work
    fixed_v, moving_v, _ = read_pair(fixed, moving, resample=resample)
    if fixed_v.ndim != model.ndim:
        raise InputError(
            f"the model registers {model.ndim}D images, got {fixed_v.ndim}D "
            f"({fixed_v.grid.describe()})"
        )
    intensity = Intensity.from_config(model.config.data)
    options = RefineOptions.from_legacy(refine_grid, refine_options, "choose_parameters")
    labels = read_labels(model, fixed_v, fixed_labels, needed=options is not None)
    item: dict[str, Any] = {
        "fixed": intensity(fixed_v.tensor())[None],
        "moving": intensity(moving_v.tensor())[None],
        "fixed_id": "fixed",
        "moving_id": "moving",
        "spacing": torch.tensor(fixed_v.spacing, dtype=torch.float32),
    }
    if labels is not None:
        item["fixed_labels"] = labels[0].cpu()
    result = sweep(
        model,
        [item],  # type: ignore[arg-type]
        grid,
        batch_size=batch_size,
        refine=options,
        max_folding=max_folding,
        backward=backward,
        progress=False,
    )
    chosen = result.choose(criterion)
    return {n: float(chosen[n]) for n in result.names}, result


def read_labels(
    model: RegistrationModel, fixed: Volume, labels: ImageLike | None, *, needed: bool
) -> torch.Tensor | None:
    """The fixed image's label map as ``(1, 1, *spatial)`` integers on the model's device.

    Returns ``None`` when no map is given, or the model has no per-label parameters.

    Raises:
        InputError: if ``needed`` and the model has per-label parameters but no map is given,
            or the map is not on the fixed image's grid.
    """
    if not model.objective.needs_labels:
        return None
    if labels is None:
        if needed:
            raise InputError(
                "the model has per-label parameters: refinement needs the fixed image's label "
                "map (register and explore: --fixed-labels PATH)"
            )
        return None
    volume = read_image(labels, what="fixed label map")
    check_same_grid(fixed.grid, volume.grid)
    values = check_label_values(model, volume.data, labels)
    return torch.from_numpy(values)[None, None].to(model.device)


MAX_LABELS = 256
"""Most distinct values a label map may hold (an image given as labels holds thousands)."""


def known_labels(model: RegistrationModel) -> dict[int, str]:
    """The label values a model knows: its per-label parameters' labels, the dataset's label
    names it was trained with (``data.labels``) and 0 (background)."""
    known: dict[int, str] = {0: "background"}
    for name, value in (model.config.data.labels or {}).items():
        known[int(value)] = name
    for term in model.objective.terms:
        for label_map in term.maps.values():
            for key, value in label_map.labels.items():
                known.setdefault(int(value), key.split("@", 1)[-1])
    return known


def check_label_values(model: RegistrationModel, data: Any, source: Any) -> np.ndarray:
    """A label map's values as ``int64``, after checking it is one, so that an image given as
    labels (a CT) is refused instead of silently making every per-label region empty.

    A label map is finite, integer-valued and non-negative, has at most
    [`MAX_LABELS`][regzoo.inference.MAX_LABELS] distinct values, and holds at least one label of the
    model's per-label parameters. Labels the model does not know
    ([`known_labels`][regzoo.inference.known_labels]) take the background value; they are named in a
    ``RuntimeWarning``.

    Raises:
        InputError: non-integer, non-finite or negative values, too many distinct values, or
            none of the labels the per-label parameters name (each case naming the file).
    """
    import warnings

    array = np.asarray(data)
    name = source if isinstance(source, str | Path) else "the label map"
    hint = "give the integer tissue labels, not an image"
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InputError(f"label map {name} holds NaN or infinite values; {hint}")
        fractional = array[array != np.rint(array)]
        if fractional.size:
            raise InputError(
                f"label map {name} is not a label map: it holds non-integer values (e.g. "
                f"{float(fractional.flat[0]):g}); {hint}"
            )
    values = np.rint(array).astype(np.int64) if array.dtype.kind == "f" else array.astype(np.int64)
    present = [int(v) for v in np.unique(values)]
    if present and present[0] < 0:
        raise InputError(
            f"label map {name} is not a label map: it holds negative values (e.g. {present[0]}); "
            f"{hint}"
        )
    if len(present) > MAX_LABELS:
        raise InputError(
            f"label map {name} is not a label map: it holds {len(present)} distinct values (at "
            f"most {MAX_LABELS}); {hint}"
        )
    known = known_labels(model)
    wanted = {
        int(value): key.split("@", 1)[-1]
        for term in model.objective.terms
        for label_map in term.maps.values()
        for key, value in label_map.labels.items()
    }
    if wanted and not set(wanted) & set(present):
        raise InputError(
            f"label map {name} holds none of the labels the model's per-label parameters name "
            f"({', '.join(f'{n}={v}' for v, n in sorted(wanted.items()))}): every per-label "
            f"region would be empty; {hint}"
        )
    unknown = [v for v in present if v not in known]
    if unknown:
        shown = ", ".join(map(str, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        warnings.warn(
            f"label map {name} holds labels the model does not know ({shown}): they take the "
            "background value",
            RuntimeWarning,
            stacklevel=2,
        )
    return values


def build_result(
    displacement: torch.Tensor,
    moving: torch.Tensor,
    params: Mapping[str, float],
    affine: np.ndarray,
) -> RegistrationResult:
    """The [`RegistrationResult`][regzoo.inference.RegistrationResult] of a field: the moving image
    warped in its own intensities and the Jacobian determinant map.

    Args:
        displacement: ``(1, D, *spatial)`` voxels on the fixed grid, on the model's device.
        moving: the moving volume ``(*spatial)`` in raw intensities.
        params: the free parameter values (full names) that produced the field.
        affine: the fixed image's affine.
    """
    check_finite_field(displacement, params)
    with torch.no_grad():
        warped = warp(moving[None, None].to(displacement.device), displacement)[0, 0]
        det = jacobian_determinant(displacement)[0]
    return RegistrationResult(
        displacement=displacement[0].cpu(),
        warped=warped.cpu(),
        jacobian_determinant=det.cpu(),
        params=dict(params),
        affine=affine,
    )


def save_result(
    result: RegistrationResult,
    folder: str | Path,
    *,
    segmentations: Mapping[str, ImageLike] | None = None,
) -> list[Path]:
    """Write a result's files into an existing ``folder`` (each file atomically).

    Files: ``disp.nii.gz`` (Learn2Reg convention ``(*spatial, D)``, voxels),
    ``displacement_itk.nii.gz`` (the same field as an ITK displacement-field transform in LPS
    mm, for ANTs, SimpleITK, elastix and 3D Slicer), ``warped.nii.gz``,
    ``jacdet.nii.gz``, ``alignment.json`` (the pre-alignment's matrices, with one),
    ``warped_<name>.nii.gz`` for each moving segmentation (nearest
    neighbour, already on the fixed grid) and ``map_<term.param>.nii.gz`` for each parameter
    map, all with the fixed image's affine. Use
    [`write_result`][regzoo.inference.write_result] to write them as one output set.

    Raises:
        InputError: a segmentation whose shape differs from the displacement's.
    """
    shape = tuple(result.displacement.shape[1:])
    labels = {
        name: read_image(seg, what=f"segmentation '{name}'")
        for name, seg in (segmentations or {}).items()
    }
    for name, label in labels.items():
        if label.shape != shape:
            raise InputError(
                f"segmentation '{name}' ({label.grid.describe()}) does not match the "
                f"displacement's shape {shape}"
            )
    folder = Path(folder)
    written = [
        write_displacement(result.displacement, result.affine, folder / "disp.nii.gz"),
        write_itk_displacement(
            result.displacement, result.affine, folder / "displacement_itk.nii.gz"
        ),
        write_nifti(result.warped, result.affine, folder / "warped.nii.gz"),
        write_nifti(result.jacobian_determinant, result.affine, folder / "jacdet.nii.gz"),
        *[
            write_nifti(value, result.affine, folder / f"map_{name}.nii.gz")
            for name, value in result.parameter_maps.items()
        ],
    ]
    if result.alignment is not None:
        written.append(
            atomic_write_text(
                json.dumps(result.alignment, indent=2) + "\n", folder / "alignment.json"
            )
        )
    for name, label in labels.items():
        warped = warp(label.tensor()[None, None], result.displacement[None], mode="nearest")
        path = folder / f"warped_{name}.nii.gz"
        values = warped[0, 0].round().to(torch.float64).numpy()
        written.append(write_nifti(values.astype(_label_dtype(values)), result.affine, path))
    return written


def _label_dtype(values: np.ndarray) -> type:
    """The smallest integer type that holds every label (uint16 40000 stays 40000)."""
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return np.float64


def segmentation_names(paths: Sequence[str | Path]) -> dict[str, str | Path]:
    """Name each moving segmentation by its file name without extensions, the ``<name>`` of the
    ``warped_<name>.nii.gz`` that [`write_result`][regzoo.inference.write_result] writes for it."""
    names: dict[str, str | Path] = {}
    for path in paths:
        name = Path(path).name.split(".")[0]
        if name in names:
            raise InputError(
                f"--moving-seg {names[name]} and {path} would both be written as "
                f"warped_{name}.nii.gz; give files with different names"
            )
        names[name] = path
    return names


def write_result(
    result: RegistrationResult,
    out_dir: str | Path,
    *,
    segmentations: Mapping[str, ImageLike] | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Write the result's files ([`save_result`][regzoo.inference.save_result]) as one output set.

    The set is built beside ``out_dir`` and swapped into place
    ([`regzoo.io.output_folder`][regzoo.io.outputs.output_folder]): a killed run leaves the previous
    set or the new one, never a mix. Returns the final paths.

    Raises:
        InputError: a segmentation whose shape differs from the displacement's.
        OutputExistsError: ``out_dir`` holds files regzoo did not write.
    """
    out = Path(out_dir)
    with output_folder(out, overwrite=overwrite) as staging:
        written = save_result(result, staging, segmentations=segmentations)
    return [out / path.name for path in written]
