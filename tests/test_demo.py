"""The README's main job: a one-epoch smoke run of examples/train.py, and its bad-input errors."""

import json
import warnings

import pytest
import torch

from gan_kernels import GANState, reference
from gan_kernels.telemetry import GradientRecorder
from tests.helpers import load_example

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

DURATION = "about a minute on a 2-core CPU"


def load_demo():
    return load_example("train")


def wrote(printed, paths):
    """The last line of the run names exactly ``paths``, in order."""
    names = [str(p) for p in paths]
    expected = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return printed.strip().splitlines()[-1] == f"wrote {expected}"


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
    written = [out / "metrics.json", out / "gradients_gan.csv", out / "dynamics.png"]
    assert wrote(printed, written) and sorted(out.iterdir()) == sorted(written)


def tiny_digits(demo, monkeypatch):
    """The demo on 96 training and 40 test digits: two steps an epoch at --batch-size 48."""
    load_digits_images = demo.data.load_digits_images

    def tiny(size, seed):
        images = load_digits_images(size, seed)
        images.train_x, images.train_y = images.train_x[:96], images.train_y[:96]
        images.test_x, images.test_y = images.test_x[:40], images.test_y[:40]
        return images

    monkeypatch.setattr(demo.data, "load_digits_images", tiny)


@pytest.mark.parametrize(
    "argv,csvs",
    [
        (["--methods", "adamw"], []),
        (["--methods", "adamw,gan", "--no-coherence"], ["gradients_gan.csv"]),
    ],
)
def test_the_final_line_lists_exactly_the_files_written_and_plotting_warns_nothing(argv, csvs, tmp_path, capsys, monkeypatch):
    demo = load_demo()
    tiny_digits(demo, monkeypatch)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        demo.main(argv + ["--epochs", "1", "--batch-size", "48", "--device", "cpu", "--out", str(out)])
    written = [out / "metrics.json", *(out / name for name in csvs), out / "dynamics.png"]
    assert wrote(capsys.readouterr().out, written)
    assert sorted(out.iterdir()) == sorted(written)


def recorded(steps, coherence):
    recorder = GradientRecorder(["conv.weight", "fc.weight"], coherence=coherence)
    state = GANState()
    for s in range(steps):
        grads = [torch.randn(4, 3, generator=torch.Generator().manual_seed(s)) * 10.0 ** -s, torch.randn(2, 4)]
        recorder.record(reference.gan_(grads, state), grads)
    return recorder


@pytest.mark.parametrize(
    "runs,panels",
    [
        ({"gan": (3, True), "znorm": (3, True)}, 4),
        ({"gan": (3, False)}, 3),  # --no-coherence
        ({"gan": (1, True)}, 3),  # one step: no pair of consecutive gradients
        ({}, 1),  # --methods adamw: nothing recorded
    ],
)
def test_the_figure_has_no_empty_panel_and_warns_nothing(runs, panels, tmp_path):
    demo = load_demo()
    recorders = {method: recorded(*run) for method, run in runs.items()}
    results = {"adamw": {"test_accuracy": [0.5, 0.7]}, **{m: {"test_accuracy": [0.6, 0.8]} for m in recorders}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = demo.dynamics_figure(results, recorders, "resnet20")
        demo.plot(tmp_path / "dynamics.png", results, recorders, "resnet20")
    assert len(figure.axes) == panels
    for axes in figure.axes:
        assert any(not line.get_label().startswith("_") for line in axes.lines), axes.get_title()
    assert (tmp_path / "dynamics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_help_and_the_docstring_give_one_duration(capsys):
    demo = load_demo()
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert DURATION in help_text and DURATION in demo.__doc__
    for other in ("minutes", "60 s", "~1 min"):
        assert other not in help_text and other not in demo.__doc__


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "resnet18"], "unknown model 'resnet18'; accepted: resnet20, resnet56, vgg16_bn"),
        (["--methods", "adamw,lion"], "unknown method 'lion'; accepted: adamw, gc, center, znorm, gan, gan-fused"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'; accepted: digits, cifar100"),
        (["--dataset", "cifar100"], "needs --data-dir"),
        (["--dataset", "cifar100", "--data-dir", "{tmp}"], "cifar-100-python"),
        (["--data-dir", "{tmp}"], "--data-dir is only read with --dataset cifar100"),
        (["--dataset", "digits", "--data-dir", "{tmp}"], "--data-dir is only read with --dataset cifar100"),
        (["--device", "foo"], "unknown device 'foo'; available here: cpu"),
        (["--device", "cuda:x"], "unknown device 'cuda:x'"),
        (["--device", "meta"], "device 'meta' holds no data"),
        (["--device", "cuda:99"], "device 'cuda:99' is not available"),
        pytest.param(["--device", "cuda"], "device 'cuda' is not available: this machine has no usable CUDA device",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
        pytest.param(["--device", "mps"], "device 'mps' is not available",
                     marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")),
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
