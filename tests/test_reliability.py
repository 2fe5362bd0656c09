"""Bad input, interruption and tampering: one clear message, exit code 2, nothing half-written.

Every case of :data:`CASES` runs the CLI as a user would and checks its message; the table in
docs/reliability.md lists the same cases with the same messages (a test keeps them in step).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import QUICKSTART, tiny_overrides

from regzoo.cli import main
from regzoo.config import load_config
from regzoo.fingerprint import add_fingerprint
from regzoo.io import OUTPUT_MARKER, output_folder

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


@dataclass
class Workspace:
    """The files a case needs: a tiny phantom, a trained checkpoint, a scratch folder."""

    data: Path
    checkpoint: Path
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    keep: dict[Path, bytes] = field(default_factory=dict)

    def user_file(self, path: Path, content: bytes = b"precious") -> Path:
        """A file of the user's that no command may change or delete."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        self.keep[path] = content
        return path

    def run_copy(self) -> Path:
        """A copy of the trained run (config.yaml, checkpoints/last.ckpt) to resume."""
        run = self.tmp / "run"
        shutil.copytree(self.checkpoint.parents[1], run)
        return run

    def resume(self, *extra: str) -> list[str]:
        args = ["train", str(QUICKSTART), "--resume", str(self.tmp / "run")]
        for item in [*tiny_overrides(self.data, self.tmp / "run"), *extra]:
            args += ["--set", item]
        return args

    def evaluate(self, out: Path, *extra: str, data: Path | None = None) -> list[str]:
        return ["evaluate", "--model", str(self.checkpoint), "--data", str(data or self.data),
                "--out", str(out), *extra]  # fmt: skip

    @property
    def fixed(self) -> Path:
        return self.data / "imagesTr" / "PhantomCT_0003_0000.nii.gz"

    @property
    def moving(self) -> Path:
        return self.data / "imagesTr" / "PhantomCT_0003_0001.nii.gz"

    def register(self, *extra: str, fixed: Path | None = None, moving: Path | None = None):
        return [
            "register",
            "--model",
            str(self.checkpoint),
            "--fixed",
            str(fixed or self.fixed),
            "--moving",
            str(moving or self.moving),
            "--out",
            str(self.tmp / "out"),
            *extra,
        ]

    def train(self, *extra: str, data: Path | None = None) -> list[str]:
        args = ["train", str(QUICKSTART)]
        for item in [*tiny_overrides(data or self.data, self.tmp / "run"), *extra]:
            args += ["--set", item]
        return args

    def copy_data(self) -> Path:
        root = self.tmp / "data"
        shutil.copytree(self.data, root)
        return root


def _truncated(ws: Workspace) -> list[str]:
    broken = ws.tmp / "broken.nii.gz"
    broken.write_bytes(ws.fixed.read_bytes()[:2000])
    return ws.register(fixed=broken)


def _not_nifti(ws: Workspace) -> list[str]:
    text = ws.tmp / "notes.nii.gz"
    text.write_bytes(gzip.compress(b"these are not voxels"))
    return ws.register(moving=text)


def _huge_header(ws: Workspace) -> list[str]:
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.float32)
    huge = ws.tmp / "huge.nii"
    with huge.open("wb") as handle:
        header.write_to(handle)
    return ws.register(fixed=huge)


def _other_grid(ws: Workspace) -> list[str]:
    image = nib.load(ws.moving)
    affine = image.affine.copy()
    affine[:3, :3] *= 3.0
    affine[:3, 3] = (10.0, -5.0, 2.0)
    moved = ws.tmp / "other_grid.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), moved)
    return ws.register(moving=moved)


def _plugin_checkpoint(ws: Workspace) -> list[str]:
    checkpoint = ws.tmp / "with_plugin.ckpt"
    state = torch.load(ws.checkpoint, weights_only=True)
    state["regzoo"]["plugins"] = ["/somewhere/evil_plugin.py"]
    state["regzoo"]["config"]["regularizers"][0]["name"] = "evil"
    torch.save(state, checkpoint)
    return ["register", "--model", str(checkpoint), "--fixed", str(ws.fixed), "--moving",
            str(ws.moving), "--out", str(ws.tmp / "out")]  # fmt: skip


def _nan_weights(ws: Workspace) -> list[str]:
    checkpoint = ws.tmp / "nan.ckpt"
    state = torch.load(ws.checkpoint, weights_only=True)
    first = next(iter(state["state_dict"]))
    state["state_dict"][first] = torch.full_like(state["state_dict"][first], float("nan"))
    torch.save(state, checkpoint)
    return ["evaluate", "--model", str(checkpoint), "--data", str(ws.data), "--out",
            str(ws.tmp / "out" / "report.json")]  # fmt: skip


def _wrong_weights(ws: Workspace) -> list[str]:
    checkpoint = ws.tmp / "wrong.ckpt"
    state = torch.load(ws.checkpoint, weights_only=True)
    state["regzoo"]["config"]["model"]["enc"] = [8, 8, 8, 8]
    torch.save(state, checkpoint)
    return ["sweep", "--model", str(checkpoint), "--data", str(ws.data), "--grid", "mu=0.1,1",
            "--out", str(ws.tmp / "out")]  # fmt: skip


def _swapped_regularizer(ws: Workspace) -> list[str]:
    checkpoint = ws.tmp / "swapped.ckpt"
    state = torch.load(ws.checkpoint, weights_only=True)
    state["regzoo"]["config"]["regularizers"][0] = {
        "name": "total_variation",
        "params": {"eps": {"low": 0.001, "high": 0.1}},
        "alpha": {"low": 0.01, "high": 1.0},
    }
    torch.save(state, checkpoint)
    return [*ws.register()[:2], str(checkpoint), *ws.register()[3:]]


def _manifest_list(ws: Workspace) -> list[str]:
    data = ws.copy_data()
    (data / "PhantomCT_dataset.json").write_text("[1, 2, 3]")
    return ws.train(data=data)


def _manifest_syntax(ws: Workspace) -> list[str]:
    data = ws.copy_data()
    (data / "PhantomCT_dataset.json").write_text('{"registration_val": [')
    return ["evaluate", "--disp-dir", str(ws.tmp), "--data", str(data), "--out",
            str(ws.tmp / "out" / "r.json")]  # fmt: skip


def _keypoint_header(ws: Workspace) -> list[str]:
    data = ws.copy_data()
    csv = data / "keypointsTr" / "PhantomCT_0003_0000.csv"
    csv.write_text("x,y,z\n" + csv.read_text())
    return ["evaluate", "--model", str(ws.checkpoint), "--data", str(data), "--out",
            str(ws.tmp / "out" / "r.json")]  # fmt: skip


def _existing_run(ws: Workspace) -> list[str]:
    (ws.tmp / "run" / "checkpoints").mkdir(parents=True)
    (ws.tmp / "run" / "checkpoints" / "last.ckpt").write_bytes(b"step 15")
    return ws.train()


def _user_folder(ws: Workspace) -> list[str]:
    (ws.tmp / "out").mkdir()
    (ws.tmp / "out" / "thesis.tex").write_text("precious")
    return ws.register()


def _metric_without_labels(ws: Workspace) -> list[str]:
    data = ws.copy_data()
    shutil.rmtree(data / "labelsTr")
    return ["sweep", "--model", str(ws.checkpoint), "--data", str(data), "--grid", "mu=0.1,1",
            "--metric", "dice_labels", "--out", str(ws.tmp / "out")]  # fmt: skip


def _plugin_exit(ws: Workspace) -> list[str]:
    plugin = ws.tmp / "exiting_plugin.py"
    plugin.write_text("import sys\nsys.exit(3)\n")
    return ["regularizers", "--plugin", str(plugin)]


@dataclass(frozen=True)
class Case:
    """One bad input: the CLI arguments it builds and the message it must get."""

    name: str
    build: Callable[[Workspace], list[str]]
    message: str
    leaves: tuple[str, ...] = ("out", "run")


CASES = [
    Case("checkpoint names a plugin file", _plugin_checkpoint,
         "regzoo never imports code a checkpoint names"),
    Case("checkpoint with NaN weights", _nan_weights, "hold NaN or infinite values"),
    Case("weights that do not match their config", _wrong_weights,
         "its weights do not match its config"),
    Case("same-shape weights of another regularizer", _swapped_regularizer,
         "its weights were trained for the free parameters"),
    Case("truncated .nii.gz", _truncated, "truncated or corrupt NIfTI data"),
    Case("a text file named .nii.gz", _not_nifti, "not a readable NIfTI file"),
    Case("header announcing 2048^3 voxels", _huge_header, "over the budget"),
    Case("fixed and moving on different grids", _other_grid, "images on different grids"),
    Case("dataset JSON that is a list", _manifest_list, "expected a JSON object, got a list"),
    Case("malformed dataset JSON", _manifest_syntax, "PhantomCT_dataset.json: not valid JSON"),
    Case("keypoint CSV with a header row", _keypoint_header,
         "PhantomCT_0003_0000.csv: not a CSV of numbers"),
    Case("train into an existing run_dir", _existing_run,
         "pass --resume to continue it or --overwrite"),
    Case("--out naming a folder of the user's files", _user_folder,
         "is not a regzoo output folder", leaves=()),
    Case("--metric dice_labels without label maps", _metric_without_labels, "dice_labels"),
    Case("plugin calling sys.exit(3)", _plugin_exit, "failed to load: SystemExit: 3"),
    Case("sweep --grid lam=0:1:1000000000", lambda ws: ["sweep", "--model", str(ws.checkpoint),
         "--data", str(ws.data), "--grid", "lam=0.01:1:1000000000", "--out", str(ws.tmp / "out")],
         "settings"),
    Case("reversed intensity_window", lambda ws: ws.train("data.intensity_window=[500, -1000]"),
         "high > low"),
    Case("negative stiffness", lambda ws: ws.train("regularizers.0.params.mu={low: -1, high: 1}"),
         "physical domain"),
    Case("duplicate --param", lambda ws: ws.register("--param", "lam=0.1", "--param",
         "linear_elastic.lam=0.9"), "given twice"),
]  # fmt: skip


# -- round two: never delete or overwrite what regzoo did not write ----------------------------
def _overwrite_user_run(ws: Workspace) -> list[str]:
    run = ws.tmp / "run"
    ws.user_file(run / "checkpoints" / "best_other_project.pt")
    ws.user_file(run / "tensorboard" / "events.other")
    ws.user_file(run / "config.yaml", b"lr: 0.1\n")
    return [*ws.train(), "--overwrite"]


def _evaluate_over_manifest(ws: Workspace) -> list[str]:
    data = ws.copy_data()
    manifest = data / "PhantomCT_dataset.json"
    ws.keep[manifest] = manifest.read_bytes()
    return ws.evaluate(manifest, data=data)


def _evaluate_over_user_json(ws: Workspace) -> list[str]:
    ws.user_file(ws.tmp / "mine.json", b'{"thesis": 1}')
    ws.user_file(ws.tmp / "mine.csv", b"a,b\n1,2\n")
    return ws.evaluate(ws.tmp / "mine.csv")


def _locked_run(ws: Workspace) -> list[str]:
    import fcntl

    run = ws.tmp / "run"
    run.mkdir()
    fd = os.open(run / ".regzoo-lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another train holds the run directory
    os.write(fd, b"4242")
    ws.cleanup.append(lambda: os.close(fd))
    return [*ws.train(), "--overwrite"]


def _tampered_last(ws: Workspace, tamper: Callable[[Path], None]) -> list[str]:
    run = ws.run_copy()
    tamper(run / "checkpoints" / "last.ckpt")
    return ws.resume()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


class _Payload:
    def __reduce__(self):
        return (print, ("a pickle payload ran",))


def _pickle_payload(path: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps({"state_dict": _Payload()}))


def _other_weights(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    name = "net.flow_film.linear.bias"  # the flow layer's FiLM scale (3 channels)
    state["state_dict"][name] = torch.zeros(7)
    torch.save(state, path)


def _nan_last(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    first = next(iter(state["state_dict"]))
    state["state_dict"][first] = torch.full_like(state["state_dict"][first], float("nan"))
    torch.save(state, path)


def _resume_changes_optimizer(ws: Workspace) -> list[str]:
    ws.run_copy()
    return ws.resume("optimizer.weight_decay=0.5")  # optimizer.lr may change: see round 3


def _same_seg_names(ws: Workspace) -> list[str]:
    mask = ws.data / "masksTr" / "PhantomCT_0003_0001.nii.gz"
    (ws.tmp / "a").mkdir()
    shutil.copy(mask, ws.tmp / "a" / mask.name)
    return ws.register("--moving-seg", str(mask), "--moving-seg", str(ws.tmp / "a" / mask.name))


def _empty_keypoints(ws: Workspace) -> list[str]:
    data = ws.copy_data()
    (data / "keypointsTr" / "PhantomCT_0003_0001.csv").write_text("")
    return ws.evaluate(ws.tmp / "out" / "r.json", data=data)


def _missing_keypoints(ws: Workspace) -> list[str]:
    data = ws.copy_data()
    (data / "keypointsTr" / "PhantomCT_0003_0001.csv").unlink()
    return ws.evaluate(ws.tmp / "out" / "r.json", data=data)


def _image(ws: Workspace, name: str, data: np.ndarray, affine: np.ndarray, intent=None) -> Path:
    path = ws.tmp / name
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_sform(affine, code=2)
    image.header.set_qform(None, code=0)
    image._affine = None  # keep the header's (broken) geometry as written
    if intent:
        image.header.set_intent(intent)
    nib.save(image, path)
    return path


def _thin(ws: Workspace) -> list[str]:
    image = nib.load(ws.fixed)
    thin = ws.tmp / "thin.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:1], image.affine), thin)
    return ws.register(fixed=thin, moving=thin)


def _affine_case(ws: Workspace, singular: bool) -> list[str]:
    image = nib.load(ws.fixed)
    affine = image.affine.copy() if singular else np.zeros((4, 4))
    if singular:
        affine[:3, 2] = affine[:3, 1]
    broken = _image(ws, "broken_affine.nii.gz", np.asarray(image.dataobj), affine)
    return ws.register(fixed=broken, moving=broken)


def _data_2d(ws: Workspace) -> list[str]:
    from regzoo.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(ws.tmp / "d2", n=2, val=1, shape=(16, 16), progress=False)
    return ["sweep", "--model", str(ws.checkpoint), "--data", str(data), "--grid", "mu=0.1,1",
            "--out", str(ws.tmp / "out")]  # fmt: skip


def _disp_dir(ws: Workspace, field: np.ndarray, affine=None, intent=None) -> list[str]:
    folder = ws.tmp / "fields"
    folder.mkdir()
    grid = nib.load(ws.fixed).affine
    _image(ws, "fields/disp_0003_0003.nii.gz", field.astype(np.float32),
           grid if affine is None else affine, intent)  # fmt: skip
    return ["evaluate", "--disp-dir", str(folder), "--data", str(ws.data), "--out",
            str(ws.tmp / "out" / "r.json")]  # fmt: skip


def _itk_singular(ws: Workspace) -> list[str]:
    affine = nib.load(ws.fixed).affine.copy()
    affine[:3, 0] = 0.0
    return _disp_dir(ws, np.zeros((32, 32, 32, 1, 3)), affine, "vector")


def _big_network(ws: Workspace) -> list[str]:
    checkpoint = ws.tmp / "big.ckpt"
    state = torch.load(ws.checkpoint, weights_only=True)
    state["regzoo"]["config"]["model"]["enc"] = [4096, 4096, 4096, 4096]
    torch.save(state, checkpoint)
    return [*ws.register()[:2], str(checkpoint), *ws.register()[3:]]


def _edited_config(ws: Workspace) -> list[str]:
    checkpoint = ws.tmp / "edited.ckpt"
    state = torch.load(ws.checkpoint, weights_only=True)
    state["regzoo"]["config"]["model"]["int_steps"] += 3  # the same weight shapes
    torch.save(state, checkpoint)
    return [*ws.register()[:2], str(checkpoint), *ws.register()[3:]]


def _nan_field(ws: Workspace) -> list[str]:
    checkpoint = ws.tmp / "overflowing.ckpt"
    state = torch.load(ws.checkpoint, weights_only=True)
    for name in ("net.flow_film.linear.bias", "net.flow.weight"):  # the flow layer overflows
        state["state_dict"][name] = torch.full_like(state["state_dict"][name], 3e38)
    add_fingerprint(state, "regzoo")  # a model that overflows as trained, not foreign weights
    torch.save(state, checkpoint)
    return ["sweep", "--model", str(checkpoint), "--data", str(ws.data), "--grid", "mu=0.1,1",
            "--out", str(ws.tmp / "out")]  # fmt: skip


def _bad_plugin(ws: Workspace) -> list[str]:
    plugin = ws.tmp / "broken_plugin.py"
    plugin.write_text("raise RuntimeError('typo in my plugin')\n")
    return ws.register("--plugin", str(plugin))


def _env(ws: Workspace, name: str, value: str) -> Workspace:
    ws.env[name] = value
    return ws


CASES_ROUND_TWO = [
    Case("train --overwrite over a folder of the user's files", _overwrite_user_run,
         "is not a regzoo run directory", leaves=()),
    Case("evaluate --out naming the data set's manifest", _evaluate_over_manifest,
         "is not a regzoo report"),
    Case("evaluate --out over the user's JSON and CSV", _evaluate_over_user_json,
         "is not a regzoo report"),
    Case("train into a run_dir another train is using", _locked_run,
         "is in use by another regzoo train", leaves=()),
    Case("--resume of a truncated last.ckpt", lambda ws: _tampered_last(ws, _truncate),
         "the file is truncated, corrupt or not a checkpoint", leaves=()),
    Case("--resume of a pickle payload", lambda ws: _tampered_last(ws, _pickle_payload),
         "the file is truncated, corrupt or not a checkpoint", leaves=()),
    Case("--resume of another config's weights", lambda ws: _tampered_last(ws, _other_weights),
         "its weights do not match the run's config", leaves=()),
    Case("--resume of a last.ckpt with NaN weights", lambda ws: _tampered_last(ws, _nan_last),
         "hold NaN or infinite values", leaves=()),
    Case("--resume with a changed optimizer.weight_decay", _resume_changes_optimizer,
         "which a resumed run keeps", leaves=()),
    Case("two --moving-seg files with the same name", _same_seg_names, "would both be written"),
    Case("an empty keypoint CSV beside a full one", _empty_keypoints,
         "points; TRE pairs them row by row"),
    Case("a missing moving keypoint CSV", _missing_keypoints, "keypoints not found"),
    Case("a 1-voxel-thick image", _thin, "has an axis of one voxel"),
    Case("a zero affine", lambda ws: _affine_case(ws, False), "is singular or not finite"),
    Case("a singular affine", lambda ws: _affine_case(ws, True), "is singular or not finite"),
    Case("sweep a 3D model over a 2D data set", _data_2d, "but the data set's images are 2D"),
    Case("REGZOO_MAX_VOXELS=²", lambda ws: _env(ws, "REGZOO_MAX_VOXELS", "²").register(),
         "REGZOO_MAX_VOXELS must be a positive integer"),
    Case("a --disp-dir field of 1e30", lambda ws: _disp_dir(ws, np.full((32, 32, 32, 3), 1e30)),
         "not a displacement field in voxels"),
    Case("an ITK field with a singular affine", _itk_singular, "is singular or not finite"),
    Case("a vector-intent (X,Y,Z,3) field", lambda ws: _disp_dir(
         ws, np.zeros((32, 32, 32, 3)), intent="vector"), "is ambiguous"),
    Case("a checkpoint asking for a 4096-channel network", _big_network,
         "its weights do not match its config"),
    Case("a checkpoint whose config was edited after training", _edited_config,
         "were trained for another model"),
    Case("a model that produces a NaN field", _nan_field, "NaN or infinite values at"),
    Case("a --plugin that fails to load", _bad_plugin, "broken_plugin.py' failed to load"),
    Case("regzoo phantom --n 100000000", lambda ws: ["phantom", str(ws.tmp / "out"), "--n",
         "100000000"], "need 2 <= n <= 10000"),
    Case("regzoo phantom --shape 100000 100000 100000", lambda ws: ["phantom",
         str(ws.tmp / "out"), "--shape", "100000", "100000", "100000"], "voxels"),
    Case("sweep --max-folding nan", lambda ws: ["sweep", "--model", str(ws.checkpoint), "--data",
         str(ws.data), "--grid", "mu=0.1,1", "--max-folding", "nan", "--out",
         str(ws.tmp / "out")], "must be a fraction in [0, 1]"),
]  # fmt: skip
CASES += CASES_ROUND_TWO


@pytest.fixture(scope="module")
def workspace_files(tiny_phantom, tiny_checkpoint):
    return tiny_phantom, tiny_checkpoint


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_clear_message(case, workspace_files, tmp_path, capsys, monkeypatch):
    data, checkpoint = workspace_files
    ws = Workspace(data, checkpoint, tmp_path)
    args = case.build(ws)
    for name, value in ws.env.items():
        monkeypatch.setenv(name, value)
    before = set(tmp_path.rglob("*"))
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own checks
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        for release in ws.cleanup:
            release()
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and err.endswith(errors[0]), err  # one line (after progress bars)
    assert case.message in errors[0], err
    for name in case.leaves:  # nothing new: no output folder, no run_dir, no partial files
        created = {p for p in (tmp_path / name).rglob("*")} - before
        assert not created and (not (tmp_path / name).exists() or tmp_path / name in before)
    assert not [p for p in tmp_path.rglob("*partial*")]
    assert not [p for p in tmp_path.rglob(".*regzoo-staging*")]  # no staging folder left
    for path, content in ws.keep.items():  # no user file deleted or changed
        assert path.read_bytes() == content, path
    assert "a pickle payload ran" not in capsys.readouterr().out


def test_docs_table_lists_every_case_with_its_message():
    text = DOC.read_text()
    for case in CASES:
        row = f"| {case.name} | `{case.message}` |"
        assert row in text, f"docs/reliability.md lacks the row: {row}"


def test_nonfinite_training_stops_and_writes_no_nan_weights(tiny_phantom, tmp_path, capsys):
    ws = Workspace(tiny_phantom, Path(), tmp_path)
    code = main(
        ws.train(
            "optimizer.lr=1.0e+12", "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=1"
        )
    )
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"(training loss is nan|non-finite gradients) at step \d", err)
    checkpoints = list((tmp_path / "run").rglob("*.ckpt"))
    found = re.search(r"at step (\d+)", err)
    assert found is not None
    step = int(found.group(1))
    assert len(checkpoints) == (step > 0)  # a step before the divergence was saved
    for checkpoint in checkpoints:
        state = torch.load(checkpoint, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_output_set_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with output_folder(target) as staging:
        (staging / "disp.nii.gz").write_text("old disp")
        (staging / "jacdet.nii.gz").write_text("old jacdet")

    def interrupted_write() -> None:
        with output_folder(target) as staging:
            (staging / "disp.nii.gz").write_text("new disp")
            raise RuntimeError("killed while writing jacdet")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert (target / "disp.nii.gz").read_text() == "old disp"
    assert (target / "jacdet.nii.gz").read_text() == "old jacdet"
    assert (target / OUTPUT_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_resampling_moving_onto_the_fixed_grid_matches_pre_resampled(tiny_checkpoint, tiny_phantom):
    from regzoo.checkpoint import load_model
    from regzoo.inference import read_image, register
    from regzoo.io import Volume, resample_like

    model = load_model(tiny_checkpoint)
    fixed = read_image(tiny_phantom / "imagesTr" / "PhantomCT_0003_0000.nii.gz")
    moving = read_image(tiny_phantom / "imagesTr" / "PhantomCT_0003_0001.nii.gz")
    finer = Volume(np.zeros((64, 32, 32), np.float32), moving.affine @ np.diag([0.5, 1, 1, 1]))
    upsampled = resample_like(moving, finer)
    with pytest.raises(ValueError, match="images on different grids"):
        register(model, fixed, upsampled)
    direct = register(model, fixed, upsampled, resample=True)
    by_hand = register(model, fixed, resample_like(upsampled, fixed))
    assert torch.equal(direct.displacement, by_hand.displacement)
    # back on the fixed grid, the twice-resampled moving image is close to the original
    error = np.abs(resample_like(upsampled, fixed).data - moving.data).mean()
    assert error < 0.05 * (moving.data.max() - moving.data.min())


def _train_command(config: Path, run_dir: Path, data: Path, steps: int) -> list[str]:
    args = [sys.executable, "-m", "regzoo", "train", str(config)]
    for item in tiny_overrides(data, run_dir, steps=steps):
        args += ["--set", item]
    return [*args, "--set", "trainer.checkpoint_every_n_steps=1"]


def test_resume_continues_a_killed_run(tiny_phantom, tmp_path):
    run_dir = tmp_path / "run"
    steps = 12
    command = _train_command(QUICKSTART, run_dir, tiny_phantom, steps)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and process.poll() is None:
        if last.is_file():
            state = torch.load(last, weights_only=True, map_location="cpu")
            if state["global_step"] >= 3:
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed_at = state["global_step"]
                break
        time.sleep(0.2)
    assert killed_at is not None, "training finished or stalled before it could be killed"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] < steps and state["optimizer_states"]
    refused = subprocess.run(command, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run(
        [*command, "--resume", str(run_dir)], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == steps
    sampler = final["regzoo"]["sampler_states"]
    assert not torch.equal(sampler, state["regzoo"]["sampler_states"])  # the draws went on
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) >= 2  # the same log folder, continued by the resumed process


def test_resume_refuses_a_changed_model(tiny_phantom, tiny_checkpoint, tmp_path, capsys):
    run_dir = tiny_checkpoint.parents[1]
    config = load_config(QUICKSTART, tiny_overrides(tiny_phantom, run_dir))
    args = ["train", str(QUICKSTART), "--resume", str(run_dir)]
    for item in [*tiny_overrides(tiny_phantom, run_dir), "model.enc=[8, 8, 8, 8]"]:
        args += ["--set", item]
    assert config.run_dir == run_dir
    assert main(args) == 2
    assert "the config changes model" in capsys.readouterr().err
