"""Outputs regzoo owns, checkpoints that survive a kill or a full disk, resumed runs that keep
their settings (docs/reliability.md, "Nothing half-written" and "Training that stops cleanly").
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import QUICKSTART, tiny_overrides

from regzoo.cli import main
from regzoo.evaluation import write_report
from regzoo.io import OutputError, atomic_save, output_folder
from regzoo.runs import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# -- output sets --------------------------------------------------------------------------------
def test_evaluate_out_csv_writes_the_json_beside_it_and_replaces_only_its_own(
    tiny_phantom, tmp_path, capsys
):
    disp_dir = tmp_path / "gt"
    disp_dir.mkdir()
    for path in (tiny_phantom / "gtdispTr").glob("*.nii.gz"):
        case = path.name.split("_")[1].split(".")[0]
        shutil.copy(path, disp_dir / f"disp_{case}_{case}.nii.gz")
    args = ["evaluate", "--data", str(tiny_phantom), "--disp-dir", str(disp_dir), "--out"]
    assert main([*args, str(tmp_path / "r.csv")]) == 0
    assert f"wrote {tmp_path / 'r.json'} and {tmp_path / 'r.csv'}" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["regzoo_report"] == "evaluate" and report["pairs"]
    assert (tmp_path / "r.csv").read_text().startswith("fixed_id,moving_id")
    assert main([*args, str(tmp_path / "r.json")]) == 0  # its own report: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt", "r.csv", "r.json"]


def test_a_full_disk_leaves_the_report_and_its_csv_as_they_were(tmp_path, monkeypatch):
    rows = [{"fixed_id": "0001", "moving_id": "0001", "dice": 0.5}]
    json_path, csv_path = write_report(rows, tmp_path / "r.json", data="d")
    before = json_path.read_bytes(), csv_path.read_bytes()
    calls = []
    real_fsync = os.fsync

    def fsync_then_full(fd):
        calls.append(fd)
        if len(calls) == 2:  # the first file of the set is staged, the second hits a full disk
            _no_space()
        real_fsync(fd)

    monkeypatch.setattr("regzoo.io.outputs.os.fsync", fsync_then_full)
    rows[0]["dice"] = 0.9
    with pytest.raises(OutputError, match="no space left on the device"):
        write_report(rows, tmp_path / "r.json", data="d")
    assert (json_path.read_bytes(), csv_path.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]


def test_a_full_disk_while_building_an_output_set_keeps_the_previous_set(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with output_folder(target) as staging:
        (staging / "disp.nii.gz").write_text("old")
    monkeypatch.setattr("regzoo.io.outputs.os.fsync", _no_space)
    from regzoo.io import atomic_write_text

    with pytest.raises(OutputError, match="no space left"), output_folder(target) as staging:
        atomic_write_text("new", staging / "disp.nii.gz")
    assert (target / "disp.nii.gz").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_folders_keep_symlinks_and_modes_and_clean_up_killed_runs(tmp_path):
    old_umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh"
        with output_folder(fresh) as staging:
            (staging / "a").write_text("1")
        assert fresh.stat().st_mode & 0o777 == 0o755  # the umask's mode, not 0700
        kept = tmp_path / "kept"
        kept.mkdir(mode=0o750)
        os.chmod(kept, 0o750)
        with output_folder(kept) as staging:
            (staging / "a").write_text("1")
        assert kept.stat().st_mode & 0o777 == 0o750
        real = tmp_path / "elsewhere" / "results"
        real.mkdir(parents=True)
        link = tmp_path / "link"
        link.symlink_to(real)
        # staging folders lie beside the folder the link points to
        dead = real.parent / ".results.regzoo-staging-999999999-x"  # a killed run's
        dead.mkdir()
        live = real.parent / f".results.regzoo-staging-{os.getppid()}-y"  # a running one's
        live.mkdir()
        with output_folder(link) as staging:
            (staging / "a").write_text("1")
        assert link.is_symlink() and (real / "a").read_text() == "1"
        assert not dead.exists() and live.exists()
        # the phantom's data folder gets the umask's mode too
        from regzoo.data.phantom import write_phantom_dataset

        data = write_phantom_dataset(tmp_path / "d", n=2, val=1, shape=(16, 16), progress=False)
        assert data.stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old_umask)


def test_register_writes_through_a_symlinked_out(tiny_checkpoint, tiny_phantom, tmp_path):
    real = tmp_path / "disk" / "results"
    real.mkdir(parents=True)
    (tmp_path / "out").symlink_to(real)
    images = tiny_phantom / "imagesTr"
    labels = np.asarray(nib.load(tiny_phantom / "labelsTr" / "PhantomCT_0003_0001.nii.gz").dataobj)
    seg = tmp_path / "big_labels.nii.gz"
    affine = nib.load(images / "PhantomCT_0003_0001.nii.gz").affine
    nib.save(nib.Nifti1Image((labels > 0).astype(np.uint16) * 40000, affine), seg)
    code = main(["register", "--model", str(tiny_checkpoint), "--fixed",
                 str(images / "PhantomCT_0003_0000.nii.gz"), "--moving",
                 str(images / "PhantomCT_0003_0001.nii.gz"), "--moving-seg", str(seg),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    assert (tmp_path / "out").is_symlink() and (real / "disp.nii.gz").is_file()
    warped = nib.load(real / "warped_big_labels.nii.gz")
    assert warped.get_data_dtype() == np.uint16  # not int16: 40000 stays 40000
    assert set(np.unique(np.asarray(warped.dataobj)).tolist()) == {0, 40000}


# -- checkpoints ---------------------------------------------------------------------------------
def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    last = tmp_path / "checkpoints" / "last.ckpt"
    atomic_save({"global_step": 2}, last)
    real_save = torch.save

    def half_then_full(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        _no_space()

    monkeypatch.setattr("regzoo.io.outputs.torch.save", half_then_full)
    with pytest.raises(OutputError, match="no space left"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 3}, last)
    monkeypatch.setattr("regzoo.io.outputs.torch.save", real_save)
    assert torch.load(last, weights_only=True) == {"global_step": 2}
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]


KILL_HOOK = """
import os, shutil, signal

_count = {"n": 0}
_KILL_AT = int(os.environ["REGZOO_TEST_KILL_AT"])


def _is_last(dst):
    return os.path.basename(os.fspath(dst)) == "last.ckpt"


def _due(dst):
    if not _is_last(dst):
        return False
    _count["n"] += 1
    return _count["n"] >= _KILL_AT


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def _copying(real):
    # a copy into last.ckpt (a move across file systems): killed half-way through it
    def copy(src, dst, *args, **kwargs):
        if _due(dst):
            with open(src, "rb") as source, open(dst, "wb") as target:
                data = source.read()
                target.write(data[: len(data) // 2])
            _kill()
        return real(src, dst, *args, **kwargs)
    return copy


def _renaming(real):
    # an atomic rename into last.ckpt: killed just before it
    def rename(src, dst, *args, **kwargs):
        if _due(dst):
            _kill()
        return real(src, dst, *args, **kwargs)
    return rename


shutil.move = _copying(shutil.move)
shutil.copyfile = _copying(shutil.copyfile)
os.replace = _renaming(os.replace)
os.rename = _renaming(os.rename)
"""


def test_a_kill_during_a_checkpoint_write_with_tmpdir_elsewhere_keeps_the_last_good_one(
    tiny_phantom, tmp_path
):
    other_fs = Path("/dev/shm")
    if not other_fs.is_dir() or other_fs.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system for $TMPDIR (the hook still simulates the move)")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(KILL_HOOK))
    tmpdir = Path(__import__("tempfile").mkdtemp(dir=other_fs))
    run_dir = tmp_path / "run"
    steps = 5
    command = [sys.executable, "-m", "regzoo", "train", str(QUICKSTART)]
    for item in [*tiny_overrides(tiny_phantom, run_dir, steps=steps),
                 "trainer.checkpoint_every_n_steps=1"]:  # fmt: skip
        command += ["--set", item]
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}", "TMPDIR": str(tmpdir),
           "REGZOO_TEST_KILL_AT": "3"}  # fmt: skip
    try:
        killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
        assert killed.returncode == -9, killed.stderr[-2000:]  # killed writing checkpoint 3
        last = run_dir / "checkpoints" / "last.ckpt"
        state = torch.load(last, weights_only=True)  # the previous good checkpoint
        assert state["global_step"] == 2
        env["REGZOO_TEST_KILL_AT"] = "1000000"
        resumed = subprocess.run([*command, "--resume", str(run_dir)], env=env,
                                 capture_output=True, text=True, timeout=400)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert torch.load(last, weights_only=True)["global_step"] == steps
        leftovers = [p for p in run_dir.rglob("*") if "partial" in p.name or "staging" in p.name]
        assert not leftovers  # the killed write's temporary file was cleaned up
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# -- resumed runs ---------------------------------------------------------------------------------
def _train_args(data: Path, run_dir: Path, *extra: str, steps: int | None = 3) -> list[str]:
    args = ["train", str(QUICKSTART)]
    overrides = [o for o in tiny_overrides(data, run_dir) if not o.startswith("trainer.max_steps")]
    if steps is not None:
        overrides.append(f"trainer.max_steps={steps}")
    for item in [*overrides, *extra]:
        args += ["--set", item]
    return args


def test_resume_continues_the_run_as_it_was_configured(tiny_phantom, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(_train_args(tiny_phantom, run_dir)) == 0
    capsys.readouterr()
    # resumed without repeating max_steps: the YAML's value is not taken, the run's is
    assert main([*_train_args(tiny_phantom, run_dir, steps=None), "--resume", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "trainer.max_steps" in err and "continues with its own values" in err
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_steps"] == 3
    # an explicit change is allowed, said and recorded
    more = _train_args(tiny_phantom, run_dir, "trainer.checkpoint_every_n_steps=1", steps=4)
    assert main([*more, "--resume", str(run_dir)]) == 0
    assert "resumed with trainer.max_steps = 4 (was 3)" in capsys.readouterr().err
    assert torch.load(last, weights_only=True)["global_step"] == 4
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_steps"] == 4
    assert "trainer.max_steps = 4" in (run_dir / "resume.log").read_text()
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no last-v1.ckpt


def test_train_overwrite_replaces_a_regzoo_run_and_keeps_the_users_other_files(
    tiny_phantom, tmp_path
):
    run_dir = tmp_path / "run"
    assert main(_train_args(tiny_phantom, run_dir, steps=1)) == 0
    (run_dir / "notes.txt").write_text("mine")
    assert main([*_train_args(tiny_phantom, run_dir, steps=1), "--overwrite"]) == 0
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert (run_dir / ".regzoo-run").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_skipping_nonfinite_steps_is_bounded(tiny_phantom, tmp_path, capsys):
    args = _train_args(tiny_phantom, tmp_path / "run", "optimizer.lr=1.0e+12",
                       "trainer.nonfinite=skip", steps=40)  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    # the skip limit or the divergence guard (a NaN validation objective) stops it first
    assert "training diverged" in err
    assert "steps in all skipped" in err or "validation objective is nan" in err
    for checkpoint in (tmp_path / "run").rglob("*.ckpt"):
        state = torch.load(checkpoint, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
