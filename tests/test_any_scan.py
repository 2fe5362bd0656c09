"""Any scan: no autograd in network-only passes, the network at its training spacing,
pre-alignment and intensity normalisations (issue 30)."""

import warnings

from regzoo.cli import main
from tests.test_inference_cli import pair_paths, register_args, sweep_args


def _run_quietly(args, capsys) -> tuple[int, str]:
    """Run a command recording every warning; returns its exit code and what it printed to
    stderr together with the warnings' messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(args)
    err = capsys.readouterr().err
    return code, err + "\n".join(str(w.message) for w in caught)


def test_no_command_warns_about_requires_grad(tiny_checkpoint, tiny_phantom, tmp_path, capsys):
    fixed, moving, _ = pair_paths(tiny_phantom)
    commands = [
        sweep_args(tiny_checkpoint, tiny_phantom, tmp_path / "sweep", "--grid", "mu=0.01:1:3"),
        [
            "evaluate",
            "--data",
            str(tiny_phantom),
            "--model",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path / "eval.json"),
        ],
        register_args(tiny_checkpoint, fixed, moving, tmp_path / "reg"),
        [*register_args(tiny_checkpoint, fixed, moving, tmp_path / "reg2"), "--refine", "2"],
    ]
    for args in commands:
        code, err = _run_quietly(args, capsys)
        assert code == 0, err
        assert "requires_grad" not in err, (args[0], err)
