"""The README's main job: a one-epoch smoke run of examples/train.py, and its bad-input errors."""

import json

import pytest

from tests.helpers import load_example

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def load_demo():
    return load_example("train")


def test_one_epoch_writes_metrics_figure_and_gradient_logs(tmp_path, capsys):
    out = tmp_path / "run"
    accuracies = load_demo().main(["--epochs", "1", "--methods", "adamw,gan", "--out", str(out)])
    assert set(accuracies) == {"adamw", "gan"} and all(0.3 < a <= 1.0 for a in accuracies.values())
    printed = capsys.readouterr().out
    assert "   gan  epoch   1" in printed and "alpha" in printed and "final acc" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final_accuracy"] == accuracies
    assert len(metrics["curves"]["gan"]["test_accuracy"]) == 1
    header = (out / "gradients_gan.csv").read_text().splitlines()[0]
    assert "std/conv.weight" in header and "std/fc.weight" in header and "coherence" in header
    assert not (out / "gradients_adamw.csv").exists()
    assert (out / "dynamics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "resnet18"], "unknown model 'resnet18'; accepted: resnet20, resnet56, vgg16_bn"),
        (["--methods", "adamw,lion"], "unknown method 'lion'; accepted: adamw, gc, center, znorm, gan, gan-fused"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'; accepted: digits, cifar100"),
        (["--dataset", "cifar100"], "needs --data-dir"),
        (["--dataset", "cifar100", "--data-dir", "{tmp}"], "cifar-100-python"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        load_demo().main(argv + ["--out", str(out)])
    text = str(exit_info.value.code)
    assert message in text and "\n" not in text and text.startswith("train.py: error: ")
    assert not out.exists()
