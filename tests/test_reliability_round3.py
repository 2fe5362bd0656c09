"""Reliability, round three (issue 34): regzoo never touches what it did not write, the
explorer's Host guard cannot be switched off, and no option value can silently disable the
objective. Each case is reproduced as the issue gives it and now ends in one clear line
(exit code 2) with nothing lost, or in a correct result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import QUICKSTART, tiny_overrides

from regzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
TISSUE_SLIDING = ROOT / "configs" / "phantom_tissue_sliding.yaml"


def _pair(data: Path) -> tuple[Path, Path]:
    images = data / "imagesTr"
    return images / "PhantomCT_0003_0000.nii.gz", images / "PhantomCT_0003_0001.nii.gz"


def _register(checkpoint: Path, data: Path, out: Path, *extra: str) -> list[str]:
    fixed, moving = _pair(data)
    return ["register", "--model", str(checkpoint), "--fixed", str(fixed), "--moving",
            str(moving), "--out", str(out), *extra]  # fmt: skip


def _train(data: Path, run_dir: Path, *extra: str, steps: int = 2) -> list[str]:
    args = ["train", str(QUICKSTART)]
    for item in [*tiny_overrides(data, run_dir, steps=steps), *extra]:
        args += ["--set", item]
    return args


def _one_line(capsys, code: int, message: str) -> str:
    """The command failed with exit code 2 and one error line holding ``message``."""
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert len(errors) == 1 and err.endswith(errors[0]), err
    assert message in errors[0], err
    return errors[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# -- 1. ownership by proof ----------------------------------------------------------------------
def test_1_overwrite_never_replaces_a_folder_that_only_looks_like_a_run(
    tiny_phantom, tiny_checkpoint, tmp_path, capsys
):
    other = tmp_path / "runs" / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "tensorboard").mkdir()
    (other / "config.yaml").write_text("project: other\n")
    (other / "checkpoints" / "last.ckpt").write_text("not a checkpoint\n")
    shutil.copy(tiny_checkpoint, other / "checkpoints" / "epoch=9-step=1000.ckpt")
    (other / "tensorboard" / "events.out.tfevents.1.other").write_text("x\n")
    before = _snapshot(other)
    code = main([*_train(tiny_phantom, other), "--overwrite"])
    _one_line(capsys, code, "is not a regzoo run directory")
    assert _snapshot(other) == before


def test_1_a_legacy_run_is_replaced_only_when_its_last_checkpoint_is_regzoos(tiny_checkpoint,
                                                                             tmp_path):  # fmt: skip
    from regzoo.runs import check_replaceable

    legacy = tmp_path / "legacy"
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.yaml").write_text("seed: 0\n")
    shutil.copy(tiny_checkpoint, legacy / "checkpoints" / "last.ckpt")
    check_replaceable(legacy)  # a real regzoo checkpoint: the proof
    torch.save({"state_dict": {}}, legacy / "checkpoints" / "last.ckpt")  # a torch file only
    with pytest.raises(Exception, match="not a regzoo run directory"):
        check_replaceable(legacy)


def test_2_rerunning_register_out_keeps_the_users_files(
    tiny_phantom, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "out" / "r"
    assert main(_register(tiny_checkpoint, tiny_phantom, out)) == 0
    marker = json.loads((out / ".regzoo-output").read_text())
    assert "disp.nii.gz" in marker["files"]  # the marker lists what the set wrote
    (out / "my_notes.txt").write_text("mine\n")
    before = _snapshot(out)
    capsys.readouterr()
    code = main(_register(tiny_checkpoint, tiny_phantom, out, "--param", "lam=0.9"))
    line = _one_line(capsys, code, "holds files regzoo did not write")
    assert "my_notes.txt" in line
    assert _snapshot(out) == before


def test_2_an_output_set_replaces_only_the_files_it_wrote(tmp_path):
    from regzoo._errors import OutputExistsError
    from regzoo.io import output_folder

    target = tmp_path / "set"
    with output_folder(target) as staging:
        (staging / "a.txt").write_text("1")
        (staging / "sub").mkdir()
        (staging / "sub" / "b.txt").write_text("2")
    with output_folder(target) as staging:  # its own files only: replaced
        (staging / "a.txt").write_text("3")
    assert (target / "a.txt").read_text() == "3" and not (target / "sub").exists()
    (target / "user.csv").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"user\.csv"), output_folder(target) as staging:
        (staging / "a.txt").write_text("4")
    assert (target / "a.txt").read_text() == "3" and (target / "user.csv").read_text() == "mine"
    # a file the user adds while a set is being built is found before the swap
    fresh = tmp_path / "fresh"
    fresh.mkdir()

    def add_while_building() -> None:
        with output_folder(fresh) as staging:
            (staging / "a.txt").write_text("5")
            (fresh / "added.txt").write_text("mine")

    with pytest.raises(OutputExistsError, match="not a regzoo output"):
        add_while_building()
    assert sorted(p.name for p in fresh.iterdir()) == ["added.txt"]
    # an older marker that lists nothing cannot prove which files are regzoo's
    (target / "user.csv").unlink()
    (target / ".regzoo-output").write_text("written by regzoo; the folder is replaced as a whole\n")
    with pytest.raises(OutputExistsError, match="older regzoo"), output_folder(target):
        pass


def test_3_a_symlinked_lock_never_truncates_its_target(tiny_phantom, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    (run / ".regzoo-run").write_text("written by regzoo train; train --overwrite may replace\n")
    (run / ".regzoo-lock").symlink_to(Path("..") / ".." / "notes.txt")
    code = main([*_train(tiny_phantom, run), "--overwrite"])
    _one_line(capsys, code, "is a symlink")
    assert notes.read_text() == "my notes\n"


def test_4_evaluate_never_writes_its_csv_through_a_link(
    tiny_phantom, tiny_checkpoint, tmp_path, capsys
):
    mine = tmp_path / "mine.csv"
    mine.write_text("precious\n")
    report = tmp_path / "out" / "r.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"regzoo_report": "evaluate", "pairs": []}))
    (tmp_path / "out" / "r.csv").symlink_to(mine)
    code = main(["evaluate", "--model", str(tiny_checkpoint), "--data", str(tiny_phantom),
                 "--out", str(report)])  # fmt: skip
    _one_line(capsys, code, "is a symlink")
    assert mine.read_text() == "precious\n"


# -- 2. one Host rule ---------------------------------------------------------------------------
@pytest.mark.parametrize("bind", ["127.0.0.2", "0:0:0:0:0:0:0:1", "[::1]", "0.0.0.0", "::"])
def test_5_the_host_guard_holds_on_every_bind_address(bind, tiny_phantom, tiny_checkpoint):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from regzoo.checkpoint import load_model
    from regzoo.explore.app import create_app
    from regzoo.explore.command import allowed_hosts
    from regzoo.explore.session import ExploreSession

    fixed, moving = _pair(tiny_phantom)
    session = ExploreSession(load_model(tiny_checkpoint), fixed, moving)
    app = create_app(session, allowed_hosts=allowed_hosts(bind))
    client = TestClient(app, base_url="http://127.0.0.1:8765")
    assert client.get("/").status_code == 200
    for host in ("rebind.attacker.example", "rebind.attacker.example:8765"):
        assert client.get("/", headers={"host": host}).status_code == 400
        assert client.post("/api/save", json={}, headers={"host": host}).status_code == 400
    widened = create_app(session, allowed_hosts=allowed_hosts(bind, ["lab.example"]))
    assert TestClient(widened, base_url="http://lab.example:8765").get("/").status_code == 200
    assert TestClient(widened, base_url="http://other.example").get("/").status_code == 400


def test_5_ipv6_spellings_and_bad_allow_host_names():
    from regzoo._errors import InputError
    from regzoo.explore.app import host_name
    from regzoo.explore.command import allowed_hosts

    assert host_name("[0:0:0:0:0:0:0:1]:8765") == host_name("::1") == "::1"
    assert host_name("[::ffff:127.0.0.1]") == "127.0.0.1"
    assert "*" not in allowed_hosts("0.0.0.0") and "0.0.0.0" not in allowed_hosts("0.0.0.0")
    assert "127.0.0.2" in allowed_hosts("127.0.0.2")
    with pytest.raises(InputError, match="--allow-host"):
        allowed_hosts("127.0.0.1", ["*"])


def test_5_a_wildcard_bind_prints_a_url_the_guard_answers():
    pytest.importorskip("uvicorn")
    from starlette.applications import Starlette

    from regzoo.explore.app import host_name
    from regzoo.explore.command import allowed_hosts
    from regzoo.explore.server import ExplorerServer

    server = ExplorerServer(Starlette(), "0.0.0.0", 0)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert host_name(server.url.split("/")[2]) in allowed_hosts("0.0.0.0")
    finally:
        server.socket.close()


# -- 3. label maps ------------------------------------------------------------------------------
def test_6_a_ct_given_as_labels_is_refused(tiny_phantom, tmp_path):
    from regzoo._errors import InputError
    from regzoo.config import load_config
    from regzoo.inference import read_image, read_labels
    from regzoo.lightning_module import HyperRegistration

    config = load_config(TISSUE_SLIDING, [f"data.root={tiny_phantom}", "model.enc=[4, 4]",
                                          "model.dec=[4, 4]"])  # fmt: skip
    model = HyperRegistration(config)
    assert model.objective.needs_labels
    fixed_path, _ = _pair(tiny_phantom)
    fixed = read_image(fixed_path)
    with pytest.raises(InputError, match="is not a label map"):
        read_labels(model, fixed, fixed_path, needed=True)  # the CT itself
    ct = nib.load(fixed_path)
    integer_ct = tmp_path / "ct_int16.nii.gz"  # the CT stored as integers (HU)
    nib.save(nib.Nifti1Image(np.rint(ct.get_fdata()).astype(np.int16), ct.affine), integer_ct)
    with pytest.raises(InputError, match=r"not a label map|none of the labels"):
        read_labels(model, fixed, integer_ct, needed=True)
    labels = tiny_phantom / "labelsTr" / "PhantomCT_0003_0000.nii.gz"
    assert read_labels(model, fixed, labels, needed=True) is not None  # the real label map
    image = nib.load(labels)
    big = np.asarray(image.dataobj).astype(np.uint16)
    big[0, 0, 0] = 40000
    unknown = tmp_path / "unknown.nii.gz"
    nib.save(nib.Nifti1Image(big, image.affine), unknown)
    with pytest.warns(RuntimeWarning, match=r"does not know \(40000\)"):
        read_labels(model, fixed, unknown, needed=True)  # named; it takes the background value
    no_lung = tmp_path / "no_lung.nii.gz"
    nib.save(nib.Nifti1Image(np.where(big == 1, 2, big).astype(np.uint8), image.affine), no_lung)
    with pytest.raises(InputError, match="none of the labels"):
        read_labels(model, fixed, no_lung, needed=True)  # the sliding region would be empty
    fractional = tmp_path / "fractional.nii.gz"
    nib.save(nib.Nifti1Image(big.astype(np.float32) * 0.5 + 0.25, image.affine), fractional)
    with pytest.raises(InputError, match="non-integer"):
        read_labels(model, fixed, fractional, needed=True)


# -- 4. bounded options -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--refine-similarity", "ngf:eta=1e999"], "eta must be a finite number"),
        (["--refine-similarity", "ngf:eta=NaN"], "eta must be a finite number"),
        (["--refine-similarity", "mind_ssc:radius=200"], "larger than the image"),
        (["--refine-similarity", "lncc:window=100001"], "larger than the image"),
        (["--refine-similarity", "lncc:window=" + "[" * 50_000 + "]" * 50_000], "characters"),
        (["--refine-similarity", "mind_ssc:radius=" + "[" * 100 + "]" * 100], "nests brackets"),
        (["--refine-tol", "nan"], "tol must be >= 0 and finite"),
        (["--refine-split", "1e308:1e308:1e308"], "finite sum"),
    ],
    ids=[
        "eta-inf",
        "eta-nan",
        "mind-radius",
        "lncc-window",
        "deep-50000",
        "deep-100",
        "tol-nan",
        "split-huge",
    ],
)
def test_7_8_10_option_values_are_finite_and_bounded_before_any_work(
    flags, message, tiny_phantom, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "out"
    started = time.perf_counter()
    code = main(_register(tiny_checkpoint, tiny_phantom, out, "--refine", "2", *flags))
    _one_line(capsys, code, message)
    assert time.perf_counter() - started < 20  # refused before the work (110 s before)
    assert not out.exists()


def test_8_sweep_and_evaluate_refuse_a_nan_tolerance_first(
    tiny_phantom, tiny_checkpoint, tmp_path, capsys
):
    sweep = ["sweep", "--model", str(tiny_checkpoint), "--data", str(tiny_phantom), "--grid",
             "mu=0.1,1", "--refine", "2", "--refine-tol", "nan", "--out", str(tmp_path / "s")]  # fmt: skip
    _one_line(capsys, main(sweep), "tol must be >= 0 and finite")
    evaluate = ["evaluate", "--model", str(tiny_checkpoint), "--data", str(tiny_phantom),
                "--refine", "2", "--refine-tol", "nan", "--out", str(tmp_path / "e.json")]  # fmt: skip
    _one_line(capsys, main(evaluate), "tol must be >= 0 and finite")
    assert not any(tmp_path.iterdir())


# -- 5. weights fingerprint ---------------------------------------------------------------------
def test_9_foreign_same_shape_weights_are_refused_and_old_checkpoints_load(
    tiny_phantom, tiny_checkpoint, tmp_path, capsys
):
    state = torch.load(tiny_checkpoint, weights_only=True)
    assert len(state["regzoo"]["weights_sha256"]) == 64
    foreign = tmp_path / "foreign.ckpt"
    name = next(k for k in state["state_dict"] if k.startswith("net."))
    tampered = {**state, "state_dict": dict(state["state_dict"])}
    tampered["state_dict"][name] = tampered["state_dict"][name] + 0.01  # same shape, other values
    torch.save(tampered, foreign)
    code = main(_register(foreign, tiny_phantom, tmp_path / "out"))
    _one_line(capsys, code, "fingerprint differs")
    assert not (tmp_path / "out").exists()
    old = tmp_path / "old.ckpt"
    state["regzoo"].pop("weights_sha256")  # written before the fingerprint existed
    torch.save(state, old)
    assert main(_register(old, tiny_phantom, tmp_path / "out")) == 0


# -- next in line -------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_next_a_gpu_accelerator_on_a_cpu_machine_writes_nothing(tiny_phantom, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(_train(tiny_phantom, run, "trainer.accelerator=gpu"))
    _one_line(capsys, code, "trainer.accelerator: this machine cannot run")
    assert not run.exists()
    assert main(_train(tiny_phantom, run, steps=1)) == 0  # no "already holds a run"


def test_next_a_diverging_run_leaves_no_run_dir_without_a_checkpoint(tiny_phantom, tmp_path,
                                                                    capsys):  # fmt: skip
    run = tmp_path / "run"
    code = main(_train(tiny_phantom, run, "optimizer.lr=1.0e+12", steps=3))
    assert code == 2, capsys.readouterr().err
    assert not run.exists() or (run / "checkpoints" / "last.ckpt").is_file()


def test_next_a_truncated_validation_image_leaves_no_run_dir(tiny_phantom, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_phantom, data)
    fixed, _ = _pair(data)
    fixed.write_bytes(fixed.read_bytes()[:2000])  # the validation pair's fixed image
    run = tmp_path / "run"
    code = main(_train(data, run, "trainer.check_val_every_n_epoch=1", steps=3))
    _one_line(capsys, code, "PhantomCT_0003_0000.nii.gz")
    assert not run.exists()


def test_next_a_text_file_as_model_gets_no_weights_only_advice(tiny_phantom, tmp_path, capsys):
    text = tmp_path / "model.ckpt"
    text.write_text("not a checkpoint\n")
    code = main(_register(text, tiny_phantom, tmp_path / "out"))
    line = _one_line(capsys, code, "cannot be read as a checkpoint")
    assert "weights_only" not in line


def test_next_resume_accepts_the_lower_rate_a_divergence_stop_advises(tiny_phantom, tmp_path,
                                                                     capsys):  # fmt: skip
    run = tmp_path / "run"
    assert main(_train(tiny_phantom, run)) == 0
    last = run / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    lr = first["regzoo"]["config"]["optimizer"]["lr"]
    before = [g["initial_lr"] for g in first["optimizer_states"][0]["param_groups"]]
    capsys.readouterr()
    code = main([*_train(tiny_phantom, run, f"optimizer.lr={lr / 10}", steps=3), "--resume",
                 str(run)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    state = torch.load(last, weights_only=True)
    after = [g["initial_lr"] for g in state["optimizer_states"][0]["param_groups"]]
    assert state["global_step"] == 3  # the run continued, at a tenth of the rate in every group
    assert after == pytest.approx([b / 10 for b in before])
    assert state["regzoo"]["config"]["optimizer"]["lr"] == pytest.approx(lr / 10)


def test_next_choose_refuses_a_folder_of_user_files_before_computing(
    tiny_phantom, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    import regzoo.cli.register

    def never(*args, **kwargs):
        raise AssertionError("--choose computed before refusing the folder")

    monkeypatch.setattr(regzoo.cli.register, "_choose", never)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("mine\n")
    code = main(_register(tiny_checkpoint, tiny_phantom, out, "--choose", "smoothest",
                          "--grid", "mu=0.1:1:3"))  # fmt: skip
    _one_line(capsys, code, "is not a regzoo output folder")
    assert (out / "thesis.tex").read_text() == "mine\n"


def test_next_sweep_refuses_a_folder_of_user_files_before_computing(
    tiny_phantom, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    import regzoo.study

    def never(*args, **kwargs):
        raise AssertionError("the sweep computed before refusing the folder")

    monkeypatch.setattr(regzoo.study, "sweep", never)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("mine\n")
    code = main(["sweep", "--model", str(tiny_checkpoint), "--data", str(tiny_phantom), "--grid",
                 "mu=0.1,1", "--out", str(out)])  # fmt: skip
    _one_line(capsys, code, "is not a regzoo output folder")
    assert (out / "thesis.tex").read_text() == "mine\n"


def test_next_a_phantom_of_200000_slices_is_refused(tmp_path, capsys):
    code = main(["phantom", str(tmp_path / "p"), "--shape", "16", "16", "200000"])
    _one_line(capsys, code, "16 to 1024")
    assert not (tmp_path / "p").exists()


# -- fault injection: kill -9 during every writing command --------------------------------------
KILL_HOOK = """
import os, signal, sys
_match = os.environ.get("REGZOO_TEST_KILL_MATCH", "")
_before = os.environ.get("REGZOO_TEST_KILL_WHEN") == "before"
_real_replace, _real_rename = os.replace, os.rename


def _maybe_kill(src, dst):
    if _match and (str(src).endswith(_match) or str(dst).endswith(_match)):
        os.kill(os.getpid(), signal.SIGKILL)


def _replace(src, dst, *args, **kwargs):
    if _before:
        _maybe_kill(src, dst)
    result = _real_replace(src, dst, *args, **kwargs)
    _maybe_kill(src, dst)
    return result


def _rename(src, dst, *args, **kwargs):
    if _before:
        _maybe_kill(src, dst)
    result = _real_rename(src, dst, *args, **kwargs)
    _maybe_kill(src, dst)
    return result


os.replace, os.rename = _replace, _rename
"""


def _litter(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "regzoo-staging" in p.name or "partial" in p.name]


def test_kill_9_during_every_writing_command_loses_nothing(tiny_phantom, tiny_checkpoint,
                                                          tmp_path):  # fmt: skip
    other_fs = Path("/dev/shm")
    if not other_fs.is_dir() or other_fs.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system for $TMPDIR")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(KILL_HOOK))
    tmpdir = Path(__import__("tempfile").mkdtemp(dir=other_fs))
    assert tmpdir.stat().st_dev != tmp_path.stat().st_dev
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}", "TMPDIR": str(tmpdir)}
    out = tmp_path / "out"
    run = out / "run"
    # (command, what it writes, the rename at which it is killed, before or after it)
    commands = [
        (_register(tiny_checkpoint, tiny_phantom, out / "reg", "--param", "mu=0.5"),
         out / "reg", "reg", "after"),  # the old set moved aside, the new one not yet in
        (["sweep", "--model", str(tiny_checkpoint), "--data", str(tiny_phantom), "--grid",
          "mu=0.1,1", "--out", str(out / "sweep")], out / "sweep", "sweep", "after"),
        (["evaluate", "--model", str(tiny_checkpoint), "--data", str(tiny_phantom), "--out",
          str(out / "eval.json")], out / "eval.json", "eval.csv", "before"),
        ([*_train(tiny_phantom, run, "trainer.checkpoint_every_n_steps=1", steps=3),
          "--resume", str(run)], run / "checkpoints", "last.ckpt", "before"),
        (["phantom", str(out / "ph"), "--n", "2", "--val", "1", "--shape", "16", "16", "16"],
         out / "ph", "ph", "before"),
    ]  # fmt: skip
    try:
        assert main(_train(tiny_phantom, run)) == 0
        for args, _, _, _ in commands[:3]:  # what was written before
            assert main(args) == 0
        report = (out / "eval.json").read_bytes(), (out / "eval.csv").read_bytes()
        for args, written, match, when in commands:
            before = _snapshot(written) if written.is_dir() else None
            killed = subprocess.run(
                [sys.executable, "-m", "regzoo", *args],
                env={**env, "REGZOO_TEST_KILL_MATCH": match, "REGZOO_TEST_KILL_WHEN": when},
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert killed.returncode == -9, (args[0], killed.stderr[-2000:])
            if before is not None and args[0] != "train":
                # the previous set, in place or moved aside by the killed run, is complete
                kept = written if written.is_dir() else None
                if kept is None:
                    aside = [p / "set" for p in written.parent.iterdir()
                             if p.name.startswith(f".{written.name}.regzoo-staging") and "-old" in p.name]  # fmt: skip
                    assert len(aside) == 1, list(written.parent.iterdir())
                    kept = aside[0]
                assert _snapshot(kept) == before, args[0]
            if args[0] == "evaluate":  # the report and its CSV as they were
                assert ((out / "eval.json").read_bytes(), (out / "eval.csv").read_bytes()) == report
            if args[0] == "train":  # the last good checkpoint
                assert torch.load(written / "last.ckpt", weights_only=True)["global_step"] >= 2
            assert main(args) == 0, args[0]  # the next run completes
        assert not _litter(out), _litter(out)
        assert (out / "eval.json").is_file() and (out / "reg" / "disp.nii.gz").is_file()
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
