"""How a model is stored: the weights' names in checkpoints (before and after the model was
split from its training module) and the one resume policy of the API and the CLI."""

import pytest
import torch
from conftest import QUICKSTART

from regzoo import InputError
from regzoo.checkpoint import MODEL_SECTIONS, load_model, model_weights
from regzoo.cli import main
from regzoo.config import load_config
from regzoo.lightning_module import HyperRegistration
from regzoo.registration_model import RegistrationModel
from regzoo.runs import resume_config
from regzoo.training import prepare_run_dir, train


def test_checkpoints_hold_the_models_own_weight_names(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    names = list(state["state_dict"])
    assert names and all(name.startswith("net.") for name in names)  # as before the split
    model = load_model(tiny_checkpoint)
    assert isinstance(model, RegistrationModel) and model.state_dict().keys() == set(names)
    # a checkpoint that names them as the training module does (``model.net.*``) loads alike
    prefixed = tmp_path / "prefixed.ckpt"
    state["state_dict"] = {f"model.{k}": v for k, v in state["state_dict"].items()}
    torch.save(state, prefixed)
    images = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = model(images, images).displacement
        again = load_model(prefixed)(images, images).displacement
    assert torch.equal(expected, again)
    assert model_weights({"model.net.a": 1, "net.b": 2}) == {"net.a": 1, "net.b": 2}


def test_the_training_module_restores_either_naming(tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)
    module = HyperRegistration(state["regzoo"]["config"])
    for weights in (state["state_dict"], {f"model.{k}": v for k, v in state["state_dict"].items()}):
        checkpoint = {**state, "state_dict": dict(weights)}
        module.on_load_checkpoint(checkpoint)  # Lightning loads the weights after this hook
        module.load_state_dict(checkpoint["state_dict"])  # strict: every name matches
        saved = {"state_dict": module.state_dict()}
        module.on_save_checkpoint(saved)
        assert saved["state_dict"].keys() == state["state_dict"].keys()


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ("model.enc=[8, 8, 8, 8]", "the config changes model (start a new run_dir instead)"),
        (
            "optimizer.weight_decay=0.5",
            "the config changes optimizer.weight_decay, which a resumed run keeps",
        ),
        ("trainer.max_steps=5", None),
    ],
)
def test_the_api_and_the_cli_share_one_resume_policy(tiny_checkpoint, capsys, change, refused):
    run_dir = tiny_checkpoint.parents[1]
    stored = run_dir / "config.yaml"
    config = load_config(stored, [change])  # the API: train(config, resume=True)
    if refused is None:  # both accept it (checked before anything is trained or written)
        assert prepare_run_dir(config, resume=True, overwrite=False) == tiny_checkpoint
        resumed, notes = resume_config(QUICKSTART, run_dir, [change])
        assert resumed == config and notes[0].startswith("resumed with trainer.max_steps = 5")
        return
    with pytest.raises(InputError) as api:
        train(config, resume=True)
    message = str(api.value)
    assert message.startswith(f"cannot resume {run_dir}: {refused}")
    assert main(["train", str(QUICKSTART), "--resume", str(run_dir), "--set", change]) == 2
    assert message in capsys.readouterr().err  # the same message, word for word


def test_one_list_of_model_sections():
    """The digest, load_model and both resume paths read MODEL_SECTIONS; no module keeps its
    own copy of the list."""
    from pathlib import Path

    import regzoo

    package = Path(regzoo.__file__).parent
    copies = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if '"regularizers", "similarity"' in path.read_text()
    ]
    assert copies == ["checkpoint.py"]
    assert set(MODEL_SECTIONS) >= {"model", "regularizers", "similarity", "plugins"}
