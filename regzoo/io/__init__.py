"""Files in and out, by job: NIfTI volumes with their geometry, displacement fields, atomic outputs.

Every NIfTI file regzoo reads or writes goes through this package, so that each bad file gets
one clear message naming it ([`InputError`][regzoo._errors.InputError]), sizes are checked from the
header before any voxel is read ([`MAX_VOXELS`][regzoo.io.nifti.MAX_VOXELS]), two images are
compared on their grids (shape and affine) rather than on their shapes alone, and no reader ever
sees a half-written file or a half-replaced output folder.

Conventions: volumes are 2D or 3D arrays in the NIfTI's voxel order with its affine (voxel ->
RAS mm); a displacement is stored as the Learn2Reg layout ``(*spatial, D)`` in voxels on the
fixed grid and handled in memory as ``(D, *spatial)``.

- [`regzoo.io.geometry`][regzoo.io.geometry]: [`Grid`][regzoo.io.geometry.Grid],
  [`Volume`][regzoo.io.geometry.Volume], affine and grid checks, resampling;
- [`regzoo.io.nifti`][regzoo.io.nifti]: reading and writing volumes and displacement fields;
- [`regzoo.io.outputs`][regzoo.io.outputs]: atomic files, output folders and output sets.
"""

from regzoo.io.geometry import (
    Grid,
    Volume,
    check_affine,
    check_same_grid,
    resample_like,
    same_grid,
)
from regzoo.io.nifti import (
    MAX_VOXELS,
    displacement_from_itk,
    displacement_to_itk,
    max_voxels,
    read_displacement,
    read_volume,
    write_displacement,
    write_itk_displacement,
    write_nifti,
)
from regzoo.io.outputs import (
    OUTPUT_MARKER,
    REPORT_MARKER,
    OutputError,
    atomic_path,
    atomic_save,
    atomic_write_text,
    check_output_files,
    check_output_folder,
    clean_stale_staging,
    make_folder,
    output_files,
    output_folder,
    resolve_output,
    staging_folder,
    write_csv,
)

__all__ = [
    "MAX_VOXELS",
    "OUTPUT_MARKER",
    "REPORT_MARKER",
    "Grid",
    "OutputError",
    "Volume",
    "atomic_path",
    "atomic_save",
    "atomic_write_text",
    "check_affine",
    "check_output_files",
    "check_output_folder",
    "check_same_grid",
    "clean_stale_staging",
    "displacement_from_itk",
    "displacement_to_itk",
    "make_folder",
    "max_voxels",
    "output_files",
    "output_folder",
    "read_displacement",
    "read_volume",
    "resample_like",
    "resolve_output",
    "same_grid",
    "staging_folder",
    "write_csv",
    "write_displacement",
    "write_itk_displacement",
    "write_nifti",
]
