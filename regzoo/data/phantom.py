"""A seeded generator of synthetic thoracic CT pairs (exhale fixed, inhale moving).

Each case draws its own anatomy (body and lung size and position, heart, spine, ribs, diaphragm
dome, branching vessel trees, parenchyma texture) and its own breathing motion (amplitude,
direction, a small random pose change and a smooth random component). Every image comes with a
tissue label map ([`TISSUE_LABELS`][regzoo.data.phantom.TISSUE_LABELS]: lung, soft tissue, bone,
heart). The default motion (``"breathing"``) is smooth over the whole body; ``"tissue"`` makes it
tissue-dependent: the rib cage and spine move nearly rigidly, the content of the rib cage (lungs,
heart, liver) follows the breathing motion and slides along the chest wall at the pleura. The true
displacement ``u`` is defined on the fixed (exhale) grid; the moving (inhale) image is the same
anatomy rendered at ``y + w(y)`` with ``w`` the numerical inverse of ``u``, so ``M(x + u(x)) =
F(x)``. Keypoints are vessel branch points in the fixed frame and their images ``p + u(p)``.

Output: the Learn2Reg layout (see
[`write_phantom_dataset`][regzoo.data.phantom.write_phantom_dataset]).

The module is long because the anatomy, the motion and their inverse are one generative model
whose parts share the seeded random state and the geometry.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from regzoo._errors import InputError, OutputExistsError
from regzoo.data.writing import PhantomCase, write_case, write_manifest
from regzoo.io import max_voxels, staging_folder

__all__ = [
    "MAX_PHANTOM_SIDE",
    "MOTIONS",
    "TISSUE_LABELS",
    "default_validation_cases",
    "generate_case",
    "write_phantom_dataset",
]

TISSUE_LABELS = {"lung": 1, "soft_tissue": 2, "bone": 3, "heart": 4}
"""Values of the phantom's tissue label maps (labelsTr/); 0 is background (air)."""

MOTIONS = ("breathing", "tissue")
"""The phantom's motion models (see the module docstring)."""

HU_AIR, HU_LUNG, HU_FAT, HU_SOFT, HU_LIVER, HU_BONE, HU_RIB, HU_VESSEL = (
    -1000.0,
    -850.0,
    -90.0,
    40.0,
    60.0,
    350.0,
    300.0,
    20.0,
)
FIELD_OF_VIEW_MM = 336.0  # 192 voxels at 1.75 mm, like Learn2Reg LungCT


@dataclass
class _Anatomy:
    body: tuple[float, float, float, float]  # bx, by, ax, ay
    lungs: list[tuple[np.ndarray, np.ndarray, float, float]]  # center, radii, dome z, dome k
    heart: tuple[np.ndarray, np.ndarray]
    spine: tuple[float, float, float]
    ribs: list[float]
    vessels: list[tuple[np.ndarray, np.ndarray, float]]  # start, end, radius (normalised)
    branch_points: np.ndarray
    lung_texture: np.ndarray
    tissue_texture: np.ndarray


MAX_PHANTOM_SIDE = 1024
"""Largest size of the phantom along any axis (a 16x16x200000 body is no thorax, and its
generation would run for hours)."""


def _normalised(coords: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    scale = np.array([2.0 / (n - 1) for n in shape], dtype=np.float32).reshape(
        -1, *[1] * (coords.ndim - 1)
    )
    return coords * scale - 1.0


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _vessel_tree(
    rng: np.random.Generator, root: np.ndarray, direction: np.ndarray, depth: int
) -> tuple[list[tuple[np.ndarray, np.ndarray, float]], list[np.ndarray]]:
    segments, branch_points = [], []
    stack = [(root, direction / np.linalg.norm(direction), 0.2, 0.032, 0)]
    while stack:
        start, heading, length, radius, level = stack.pop()
        end = start + heading * length * rng.uniform(0.8, 1.2)
        segments.append((start, end, radius))
        if level + 1 >= depth:
            branch_points.append(end)
            continue
        branch_points.append(end)
        normal = np.cross(heading, rng.normal(size=3))
        normal /= np.linalg.norm(normal) + 1e-12
        for sign in (-1.0, 1.0):
            angle = sign * math.radians(rng.uniform(25, 45))
            child = _rotation(normal, angle) @ heading
            stack.append((end, child, length * 0.75, radius * 0.8, level + 1))
    return segments, branch_points


def _draw_anatomy(rng: np.random.Generator, shape: Sequence[int]) -> _Anatomy:
    bx, by = rng.uniform(-0.05, 0.05, size=2)
    ax, ay = rng.uniform(0.8, 0.92), rng.uniform(0.55, 0.7)
    lungs, vessels, points = [], [], []
    lz = rng.uniform(0.05, 0.2)
    for side in (-1.0, 1.0):
        center = np.array(
            [bx + side * rng.uniform(0.4, 0.48) * ax, by + rng.uniform(-0.05, 0.05) * ay, lz]
        )
        radii = np.array(
            [rng.uniform(0.28, 0.34) * ax, rng.uniform(0.68, 0.78) * ay, rng.uniform(0.65, 0.8)]
        )
        dome_z = lz - radii[2] * rng.uniform(0.45, 0.6)
        lungs.append((center, radii, dome_z, rng.uniform(0.2, 0.4)))
        hilum = center + np.array([-side * radii[0] * 0.55, 0.0, 0.05])
        heading = np.array([side, rng.normal(0, 0.3), rng.normal(0, 0.6)])
        for tilt in (0.9, 0.0, -0.9):
            segs, bps = _vessel_tree(rng, hilum, heading + np.array([0, 0, tilt]), depth=5)
            vessels += segs
            points += bps
    heart = (
        np.array([bx + rng.uniform(-0.02, 0.1), by + 0.25 * ay, lz - 0.25]),
        np.array([rng.uniform(0.24, 0.3), rng.uniform(0.3, 0.4) * ay, rng.uniform(0.2, 0.26)]),
    )
    spine = (bx, by - 0.72 * ay, rng.uniform(0.08, 0.11))
    ribs = list(np.linspace(-0.7, 0.85, 8) + rng.uniform(-0.05, 0.05))
    texture_sigma = max(shape) / 64.0
    lung_texture = ndimage.gaussian_filter(rng.normal(size=shape), texture_sigma)
    lung_texture *= 30.0 / (lung_texture.std() + 1e-8)
    tissue_texture = rng.normal(0.0, 8.0, size=shape)
    return _Anatomy(
        (bx, by, ax, ay),
        lungs,
        heart,
        spine,
        ribs,
        vessels,
        np.array(points),
        lung_texture.astype(np.float32),
        tissue_texture.astype(np.float32),
    )


def _inside_lungs(anatomy: _Anatomy, p: np.ndarray) -> np.ndarray:
    """Lung mask at normalised points ``p`` ``(3, ...)`` (heart carved out)."""
    mask = np.zeros(p.shape[1:], dtype=bool)
    for center, radii, dome_z, dome_k in anatomy.lungs:
        r = sum(((p[k] - center[k]) / radii[k]) ** 2 for k in range(3))
        lateral = ((p[0] - center[0]) / radii[0]) ** 2 + ((p[1] - center[1]) / radii[1]) ** 2
        mask |= (r <= 1.0) & (p[2] >= dome_z + dome_k * lateral)
    hc, hr = anatomy.heart
    mask &= sum(((p[k] - hc[k]) / hr[k]) ** 2 for k in range(3)) > 1.0
    return mask


def _render(
    anatomy: _Anatomy, coords: np.ndarray, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render HU, the lung mask and the tissue labels at voxel coordinates ``coords``
    ``(3, *shape)``."""
    p = _normalised(coords, shape)
    bx, by, ax, ay = anatomy.body
    radial = ((p[0] - bx) / ax) ** 2 + ((p[1] - by) / ay) ** 2
    image = np.full(p.shape[1:], HU_AIR, dtype=np.float32)
    tissue_labels = np.zeros(p.shape[1:], dtype=np.uint8)
    body = radial <= 1.0
    image[body] = HU_FAT
    tissue_labels[body] = TISSUE_LABELS["soft_tissue"]
    inner = radial <= 0.92**2
    image[inner] = HU_SOFT
    below_dome = np.zeros_like(body)
    for center, radii, dome_z, _ in anatomy.lungs:
        lateral = ((p[0] - center[0]) / radii[0]) ** 2 + ((p[1] - center[1]) / radii[1]) ** 2
        below_dome |= (lateral <= 1.0) & (p[2] < dome_z)
    image[inner & below_dome] = HU_LIVER
    hc, hr = anatomy.heart
    heart = inner & (sum(((p[k] - hc[k]) / hr[k]) ** 2 for k in range(3)) <= 1.0)
    image[heart] = HU_SOFT
    tissue_labels[heart] = TISSUE_LABELS["heart"]
    bone = _spine(anatomy, p)
    image[bone] = HU_BONE
    for z in anatomy.ribs:
        ring = (radial >= 0.84**2) & (radial <= 0.91**2) & (p[1] > by - 0.6 * ay)
        rib = ring & (np.abs(p[2] - (z + 0.15 * (p[1] - by))) < 0.035)
        image[rib] = HU_RIB
        bone |= rib
    tissue_labels[bone] = TISSUE_LABELS["bone"]
    lungs = _inside_lungs(anatomy, p) & inner
    tissue_labels[lungs] = TISSUE_LABELS["lung"]
    texture = ndimage.map_coordinates(
        anatomy.lung_texture, coords.reshape(3, -1), order=1, mode="nearest"
    ).reshape(p.shape[1:])
    image[lungs] = HU_LUNG + texture[lungs]
    _draw_vessels(anatomy, p, lungs, image, shape)
    tissue = ndimage.map_coordinates(
        anatomy.tissue_texture, coords.reshape(3, -1), order=0, mode="nearest"
    ).reshape(p.shape[1:])
    image[body & ~lungs] += tissue[body & ~lungs]
    return image, lungs.astype(np.uint8), tissue_labels


def _spine(anatomy: _Anatomy, p: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """The spine (vertebrae) at normalised points ``p``, its radius times ``margin``."""
    sx, sy, sr = anatomy.spine
    return ((p[0] - sx) ** 2 + (p[1] - sy) ** 2) <= (margin * sr) ** 2


def _draw_vessels(
    anatomy: _Anatomy, p: np.ndarray, lungs: np.ndarray, image: np.ndarray, shape: Sequence[int]
) -> None:
    index = np.nonzero(lungs)
    points = p[:, lungs].T  # (N, 3)
    if points.size == 0:
        return
    voxel = 2.0 / (max(shape) - 1)
    density = np.zeros(len(points), dtype=np.float32)
    for start, end, radius in anatomy.vessels:
        lo = np.minimum(start, end) - radius - voxel
        hi = np.maximum(start, end) + radius + voxel
        near = np.all((points >= lo) & (points <= hi), axis=1)
        if not near.any():
            continue
        q = points[near] - start
        seg = end - start
        t = np.clip(q @ seg / (seg @ seg + 1e-12), 0.0, 1.0)
        dist = np.linalg.norm(q - t[:, None] * seg, axis=1)
        weight = np.clip((radius - dist) / voxel + 0.5, 0.0, 1.0)
        density[near] = np.maximum(density[near], weight)
    values = image[index]
    image[index] = values * (1 - density) + HU_VESSEL * density


def _breathing_motion(
    rng: np.random.Generator, anatomy: _Anatomy, shape: Sequence[int], motion: str = "breathing"
) -> np.ndarray:
    """The exhale -> inhale displacement on the fixed grid, ``(3, *shape)`` in voxels.

    ``motion="tissue"`` replaces the smooth deformation outside the rib cage by the rib cage's
    rigid motion (`_tissue_motion`); the random pose change applies to both.
    """
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    p = _normalised(grid, shape)
    bx, by, ax, ay = anatomy.body
    scale = (np.array(shape, dtype=np.float32) - 1) / 2.0  # normalised [-1, 1] -> voxels
    body = ((p[0] - bx) / ax) ** 2 + ((p[1] - by) / ay) ** 2 <= 1.0
    weight = ndimage.gaussian_filter(body.astype(np.float32), max(shape) / 32)
    top = max(c[2] + r[2] for c, r, _, _ in anatomy.lungs)
    dome = min(d for _, _, d, _ in anatomy.lungs)
    craniocaudal = np.clip((top - p[2]) / (top - dome), 0.0, 1.15)
    amplitude = rng.uniform(0.03, 0.09, size=3) * np.array([0.5, 0.7, 1.0]) * 2.0
    u = np.stack(
        [
            amplitude[0] * (p[0] - bx) / ax * weight,
            amplitude[1] * (p[1] - (by - 0.72 * ay)) / ay * weight,
            -amplitude[2] * craniocaudal * weight,
        ]
    ) * scale.reshape(3, 1, 1, 1)
    direction = _rotation(rng.normal(size=3), math.radians(rng.uniform(0, 12)))
    u = np.einsum("ij,j...->i...", direction, u)
    noise = np.stack(
        [ndimage.gaussian_filter(rng.normal(size=shape), max(shape) / 10) for _ in range(3)]
    )
    noise *= rng.uniform(0.3, 1.0) * (max(shape) / 64) / (np.abs(noise).max() + 1e-8)
    u = np.stack([ndimage.gaussian_filter(c, max(shape) / 21) for c in u]) + noise
    rotation = _rotation(np.array([0.2, 0.1, 1.0]), math.radians(rng.uniform(-4, 4)))
    center = (np.array(shape, dtype=np.float32) - 1) / 2
    translation = rng.uniform(-2, 2, size=3) * np.array(shape) / 64
    pose = np.einsum("ij,j...->i...", rotation - np.eye(3), grid - center.reshape(3, 1, 1, 1))
    if motion == "tissue":
        u = _tissue_motion(rng, anatomy, grid, u)
    return (u + pose + translation.reshape(3, 1, 1, 1)).astype(np.float32)


def _tissue_motion(
    rng: np.random.Generator, anatomy: _Anatomy, grid: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Tissue-dependent breathing: a soft rib-cage content sliding along a rigid chest wall.

    Inside the rib cage (lungs, heart, liver; the spine excluded) the breathing deformation
    ``u`` applies, its in-plane components (normal to the chest wall) fading over a few voxels
    towards the wall so the lungs do not compress against it. The rib cage, spine and the soft
    tissue outside move as one rigid body: a small rotation about the left-right axis through
    the spine (the ribs' "pump handle" motion). The two meet within about a voxel at the
    pleura, where the cranio-caudal motion of the lungs slides past the wall.
    """
    shape = grid.shape[1:]
    p = _normalised(grid, shape)
    bx, by, ax, ay = anatomy.body
    radial = ((p[0] - bx) / ax) ** 2 + ((p[1] - by) / ay) ** 2
    cage = ((radial < 0.70**2) & ~_spine(anatomy, p, margin=2.0)).astype(np.float32)
    sharp = ndimage.gaussian_filter(cage, max(shape) / 24)
    wide = ndimage.gaussian_filter(cage, max(shape) / 12)
    soft = np.stack([u[0] * wide, u[1] * wide, u[2]])
    sx, sy, _ = anatomy.spine
    pivot = (np.array([sx, sy, 0.0]) + 1.0) * (np.array(shape, dtype=np.float64) - 1) / 2
    lift = _rotation(np.array([1.0, 0.0, 0.0]), math.radians(rng.uniform(1.5, 3.0)))
    wall = np.einsum("ij,j...->i...", lift - np.eye(3), grid - pivot.reshape(3, 1, 1, 1))
    return sharp * soft + (1.0 - sharp) * wall


def _invert(u: np.ndarray, iterations: int = 25) -> np.ndarray:
    """Fixed-point inverse ``w(y) = -u(y + w(y))`` of a smooth displacement."""
    shape = u.shape[1:]
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    w = -u.copy()
    for _ in range(iterations):
        at = (grid + w).reshape(len(shape), -1)
        w = -np.stack([ndimage.map_coordinates(c, at, order=1, mode="nearest") for c in u]).reshape(
            u.shape
        )
    return w


def _sample_field(u: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.stack(
        [ndimage.map_coordinates(c, points.T, order=1, mode="nearest") for c in u], axis=1
    )


CORONAL_DEPTH = 33
"""Depth (voxels along y) of the 3D anatomy a 2D phantom slices through its centre."""


def generate_case(
    shape: Sequence[int] = (64, 64, 64), *, seed: int = 0, motion: str = "breathing"
) -> PhantomCase:
    """Generate one synthetic exhale/inhale pair (deterministic for a given seed).

    ``shape`` has 3 sizes (a volume, axes x left-right, y anterior-posterior, z
    cranio-caudal) or 2 (a coronal slice ``(x, z)`` through the centre of the same anatomy,
    with the in-plane part of the breathing motion, so that ``M(x + u(x)) = F(x)`` holds
    exactly in 2D too). In 2D the keypoints are vessel pixels in the lungs. ``motion`` is
    ``"breathing"`` (smooth over the body, the default) or ``"tissue"`` (rigid rib cage and
    spine, soft lungs sliding at the pleura); the anatomy and images of a seed are the same
    for both up to the motion.

    Raises:
        InputError: for an invalid shape or motion.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 16:
        raise InputError(f"generate_case(): 'shape' must be 2 or 3 sizes >= 16, got {shape}")
    if motion not in MOTIONS:
        raise InputError(f"generate_case(): 'motion' must be one of {MOTIONS}, got {motion!r}")
    rng = np.random.default_rng(seed)
    planar = len(shape) == 2
    volume_shape = (shape[0], CORONAL_DEPTH, shape[1]) if planar else shape
    anatomy = _draw_anatomy(rng, volume_shape)
    u = _breathing_motion(rng, anatomy, volume_shape, motion)
    if planar:
        u = np.ascontiguousarray(u[[0, 2], :, CORONAL_DEPTH // 2, :])
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))

    def render(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if planar:  # the coronal plane through the centre, y fixed
            coords = np.stack([coords[0], np.full_like(coords[0], CORONAL_DEPTH // 2), coords[1]])
        return _render(anatomy, coords, volume_shape)

    fixed, fixed_mask, fixed_labels = render(grid)
    moving, moving_mask, moving_labels = render(grid + _invert(u))
    if planar:
        keypoints = _vessel_pixels(rng, fixed, fixed_mask)
    else:
        keypoints = (anatomy.branch_points + 1.0) * (np.array(shape) - 1) / 2
        inside = np.all((keypoints >= 2) & (keypoints <= np.array(shape) - 3), axis=1)
        keypoints = keypoints[inside]
        in_lung = ndimage.map_coordinates(fixed_mask.astype(np.float32), keypoints.T, order=0) > 0
        keypoints = keypoints[in_lung].astype(np.float32)
    spacing = tuple(FIELD_OF_VIEW_MM / n for n in shape)
    return PhantomCase(
        fixed,
        moving,
        fixed_mask,
        moving_mask,
        keypoints,
        keypoints + _sample_field(u, keypoints),
        u,
        spacing,
        fixed_labels,
        moving_labels,
    )


def _vessel_pixels(
    rng: np.random.Generator, image: np.ndarray, lungs: np.ndarray, count: int = 64
) -> np.ndarray:
    """Up to ``count`` lung pixels on vessels (brighter than parenchyma), away from the edge."""
    inner = ndimage.binary_erosion(lungs.astype(bool), iterations=2)
    candidates = np.argwhere(inner & (image > HU_LUNG + 200))
    if len(candidates) < count // 4:  # few vessels in this slice: use lung pixels
        candidates = np.argwhere(inner)
    pick = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return candidates[np.sort(pick)].astype(np.float32)


def default_validation_cases(n: int) -> int:
    """Cases held out for ``registration_val`` when not given: a quarter of ``n``, at least 1."""
    return max(1, n // 4)


MAX_CASES = 10_000
"""Most cases ``write_phantom_dataset`` writes (``regzoo phantom --n``)."""


def write_phantom_dataset(
    root: str | Path,
    *,
    n: int = 16,
    val: int = 4,
    shape: Sequence[int] = (64, 64, 64),
    seed: int = 0,
    motion: str = "breathing",
    progress: bool = True,
) -> Path:
    """Write ``n`` phantom pairs in the Learn2Reg layout under ``root`` (atomically).

    Layout: ``PhantomCT_dataset.json`` (its ``labels`` maps each value of the label maps to a
    tissue name, [`TISSUE_LABELS`][regzoo.data.phantom.TISSUE_LABELS]);
    ``imagesTr/PhantomCT_XXXX_0000.nii.gz`` (fixed, exhale) and ``_0001`` (moving, inhale) in HU;
    ``masksTr/`` lung masks; ``labelsTr/`` tissue label maps; ``keypointsTr/`` CSV
    keypoints (voxels); ``gtdispTr/PhantomCT_XXXX.nii.gz`` the true displacement
    ``(*shape, 3)`` in voxels on the fixed grid. The last ``val`` cases form
    ``registration_val``. The folder is built aside and renamed into place at the end, so an
    interrupted run leaves nothing half-written. ``motion`` picks the motion model
    ([`generate_case`][regzoo.data.phantom.generate_case]).

    Raises:
        FileExistsError: if ``root`` already exists.
        ValueError: for an invalid split, shape or motion.
    """
    root = Path(root)
    if root.exists():
        raise OutputExistsError(f"phantom output folder already exists: {root}")
    if not 1 <= val < n:
        raise InputError(f"write_phantom_dataset(): need 1 <= val < n, got val={val}, n={n}")
    if motion not in MOTIONS:
        raise InputError(
            f"write_phantom_dataset(): 'motion' must be one of {MOTIONS}, got {motion!r}"
        )
    if not 2 <= n <= MAX_CASES:
        raise InputError(f"write_phantom_dataset(): need 2 <= n <= {MAX_CASES}, got n={n}")
    voxels = float(np.prod([float(v) for v in shape]))
    if (
        len(shape) not in (2, 3)
        or min(shape) < 16
        or max(shape) > MAX_PHANTOM_SIDE
        or voxels > max_voxels()
    ):
        raise InputError(
            f"write_phantom_dataset(): the shape {tuple(shape)} must have 2 or 3 sizes from 16 "
            f"to {MAX_PHANTOM_SIDE} and at most {max_voxels():.3g} voxels (REGZOO_MAX_VOXELS), "
            f"got {voxels:.3g}"
        )
    staging = staging_folder(root)  # beside root, umask modes; what a killed run left is gone
    try:
        for sub in ("imagesTr", "masksTr", "labelsTr", "keypointsTr", "gtdispTr"):
            (staging / sub).mkdir()
        pairs = []
        for case_id in tqdm(range(1, n + 1), desc="phantom", disable=not progress):
            case = generate_case(shape, seed=seed * 100_003 + case_id, motion=motion)
            pairs.append(write_case(staging, "PhantomCT", case_id, case))
        write_manifest(
            staging,
            "PhantomCT",
            "regzoo synthetic thoracic CT (exhale fixed _0000, inhale moving _0001)",
            TISSUE_LABELS,
            pairs,
            val=val,
            ndim=len(shape),
            seed=seed,
            shape=list(shape),
            motion=motion,
        )
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root
