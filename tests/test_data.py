import json
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch

from regzoo.data.learn2reg import Learn2RegDataset, case_id
from regzoo.data.phantom import generate_case, write_phantom_dataset
from regzoo.spatial import jacobian_determinant, warp_labels


def test_phantom_is_deterministic_and_cases_differ():
    a, b = generate_case((32, 32, 32), seed=1), generate_case((32, 32, 32), seed=1)
    c = generate_case((32, 32, 32), seed=2)
    assert np.array_equal(a.fixed, b.fixed) and np.array_equal(a.displacement, b.displacement)
    assert not np.array_equal(a.fixed_mask, c.fixed_mask)  # anatomy differs
    assert np.abs(a.displacement - c.displacement).mean() > 0.3  # motion differs


def test_true_displacement_explains_the_pair():
    case = generate_case((48, 48, 48), seed=3)
    u = torch.from_numpy(case.displacement)[None]
    assert jacobian_determinant(u).min() > 0  # invertible motion
    moved = warp_labels(torch.from_numpy(case.moving_mask[None, None]), u)[0, 0]
    fixed_mask = torch.from_numpy(case.fixed_mask).bool()
    overlap = 2 * (moved.bool() & fixed_mask).sum() / (moved.bool().sum() + fixed_mask.sum())
    initial = torch.from_numpy(case.moving_mask).bool()
    before = 2 * (initial & fixed_mask).sum() / (initial.sum() + fixed_mask.sum())
    assert overlap > 0.97 and overlap > before + 0.03
    assert len(case.fixed_keypoints) >= 10
    assert np.abs(case.moving_keypoints - case.fixed_keypoints).max() > 1.0


def test_layout_split_and_loader(tiny_phantom):
    manifest = json.loads((tiny_phantom / "PhantomCT_dataset.json").read_text())
    assert len(manifest["training_paired_images"]) == 2 and len(manifest["registration_val"]) == 1
    disp = nib.load(tiny_phantom / "gtdispTr" / "PhantomCT_0003.nii.gz")
    assert disp.shape == (32, 32, 32, 3)
    val = Learn2RegDataset(tiny_phantom, "val", annotations=True)
    item = val[0]
    assert (
        item["fixed"].shape == (1, 32, 32, 32)
        and 0 <= item["fixed"].min() <= item["fixed"].max() <= 1
    )
    assert item["fixed_mask"].shape == (1, 32, 32, 32)
    assert item["fixed_keypoints"].shape == item["moving_keypoints"].shape
    assert item["fixed_id"] == item["moving_id"] == "0003"
    assert torch.allclose(item["spacing"], torch.full((3,), 336 / 32))
    assert "fixed_mask" not in Learn2RegDataset(tiny_phantom, "train")[0]
    assert case_id("imagesTr/LungCT_0012_0001.nii.gz") == "0012"
    clone = pickle.loads(pickle.dumps(val))  # DataLoader workers under "spawn" pickle it
    assert torch.equal(clone[0]["fixed"], item["fixed"])


def test_phantom_and_loader_errors(tiny_phantom, tmp_path):
    with pytest.raises(FileExistsError, match="already exists"):
        write_phantom_dataset(tiny_phantom, n=2, val=1, shape=(16, 16, 16))
    with pytest.raises(ValueError, match="need 1 <= val < n"):
        write_phantom_dataset(tmp_path / "p", n=2, val=2)
    assert not (tmp_path / "p").exists()
    assert [p for p in tmp_path.iterdir()] == []  # no staging folder left behind
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        Learn2RegDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="has no pairs"):
        Learn2RegDataset(tiny_phantom, "test")


def test_nan_image_is_rejected(tmp_path):
    root = write_phantom_dataset(tmp_path / "p", n=2, val=1, shape=(16, 16, 16), progress=False)
    path = root / "imagesTr" / "PhantomCT_0001_0000.nii.gz"
    image = nib.load(path)
    data = image.get_fdata()
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data.astype(np.float32), image.affine), path)
    with pytest.raises(ValueError, match=r"PhantomCT_0001_0000\.nii\.gz: contains NaN"):
        Learn2RegDataset(root, "train")[0]


def test_annotations_must_match_their_image(tiny_phantom, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_phantom, root)
    keypoints = root / "keypointsTr" / "PhantomCT_0003_0000.csv"
    lines = keypoints.read_text().splitlines()
    keypoints.write_text("\n".join([*lines, "1000,1000,1000"]) + "\n")
    dataset = Learn2RegDataset(root, "val", annotations=True)
    with pytest.raises(ValueError, match=r"PhantomCT_0003_0000.csv: keypoint .* lies outside"):
        dataset[0]
    keypoints.write_text("\n".join(lines) + "\n")
    mask = root / "masksTr" / "PhantomCT_0003_0001.nii.gz"
    image = nib.load(mask)
    nib.save(nib.Nifti1Image(np.zeros((16, 32, 32), np.uint8), image.affine), mask)
    with pytest.raises(
        ValueError, match=r"different grids: .* vs masksTr/PhantomCT_0003_0001.nii.gz: 16x32x32"
    ):
        Learn2RegDataset(root, "val", annotations=True)[0]
