"""The README's main job: a one-epoch smoke run of the digits demo."""

import importlib.util
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "examples" / "train.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("demo_train", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", ["gan", "adamw"])
def test_one_epoch(method, capsys):
    accuracy = load_demo().main(["--epochs", "1", "--method", method])
    out = capsys.readouterr().out
    assert "epoch  1" in out and 0.5 < accuracy <= 1.0
    assert ("alpha" in out) == (method == "gan")


def test_rejects_zero_epochs():
    with pytest.raises(SystemExit):
        load_demo().main(["--epochs", "0"])
