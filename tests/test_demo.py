"""The README's main job: a one-epoch smoke run of examples/train.py, and its bad-input errors."""

import json
import warnings

import pytest
import torch

from gan_kernels import GANState, reference
from gan_kernels.telemetry import GradientRecorder
from tests.helpers import load_example, tiny_digits

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
    header = (out / "gradients_gan.csv").read_text().splitlines()[0].split(",")
    assert "std/conv.weight" in header and "std/fc.weight" in header and "alpha" in header
    assert {"coherence/1", "coherence/5", "function_step"} <= set(header)
    # AdamW runs no GAN: its log holds the coherence and the function-space step size only.
    assert (out / "gradients_adamw.csv").read_text().splitlines()[0] == "step,coherence/1,coherence/5,function_step"
    assert (out / "dynamics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = [out / "metrics.json", out / "gradients_adamw.csv", out / "gradients_gan.csv", out / "dynamics.png",
               out / "checkpoints"]
    assert wrote(printed, written) and sorted(out.iterdir()) == sorted(written)


@pytest.mark.parametrize(
    "argv,csvs",
    [
        (["--methods", "adamw"], ["gradients_adamw.csv"]),
        (["--methods", "adamw", "--no-coherence", "--probe-every", "0"], []),
        (["--methods", "adamw,gan", "--no-coherence"], ["gradients_adamw.csv", "gradients_gan.csv"]),
        (["--methods", "adafom,gan-adafom", "--no-coherence", "--probe-every", "0"], ["gradients_gan-adafom.csv"]),
    ],
)
def test_the_final_line_lists_exactly_the_files_written_and_plotting_warns_nothing(argv, csvs, tmp_path, capsys, monkeypatch):
    demo = load_demo()
    tiny_digits(demo, monkeypatch)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        demo.main(argv + ["--epochs", "1", "--batch-size", "48", "--device", "cpu", "--out", str(out)])
    written = [out / "metrics.json", *(out / name for name in csvs), out / "dynamics.png", out / "checkpoints"]
    assert wrote(capsys.readouterr().out, written)
    assert sorted(out.iterdir()) == sorted(written)


def recorded(steps, coherence, probe=False, stats=True):
    probe = {"model": torch.nn.Linear(3, 2), "probe": torch.randn(5, 3), "probe_every": 2} if probe else {}
    recorder = GradientRecorder(["conv.weight", "fc.weight"], coherence=coherence, **probe)
    state = GANState()
    for s in range(steps):
        grads = [torch.randn(4, 3, generator=torch.Generator().manual_seed(s)) * 10.0 ** -s, torch.randn(2, 4)]
        if probe:
            probe["model"].weight.data.add_(0.1)
        recorder.record(reference.gan_(grads, state) if stats else None, grads)
    return recorder


@pytest.mark.parametrize(
    "runs,panels",
    [
        ({"gan": (3, True), "znorm": (3, True)}, 4),
        ({"gan": (6, True, True), "adamw": (6, True, True, False)}, 5),  # the default: every panel
        ({"gan": (3, False)}, 3),  # --no-coherence --probe-every 0
        ({"gan": (3, False, True)}, 4),  # --no-coherence
        ({"gan": (1, True)}, 3),  # one step: no pair of consecutive gradients
        ({"adamw": (3, 1, False, False)}, 2),  # no GAN run: no layer panels
        ({"adamw": (1, False, True, False)}, 1),  # one step and no probe due yet: nothing to draw
        ({}, 1),  # --methods adamw --no-coherence --probe-every 0: nothing recorded
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
        (["--model", "resnet18"], "unknown model 'resnet18'; accepted: resnet20, resnet56, vgg16_bn, resnet20_1d, cnn1d, mlp1d"),
        (["--model", "cnn1d"], "model 'cnn1d' does not take the images of --dataset digits; accepted: resnet20, resnet56, vgg16_bn"),
        (["--dataset", "mnist1d", "--model", "resnet20"],
         "model 'resnet20' does not take the 1-D signals of --dataset mnist1d; accepted: resnet20_1d, cnn1d, mlp1d"),
        (["--dataset", "mnist1d", "--deficit-epochs", "1:2"], "--deficit-epochs blurs images; --dataset mnist1d holds 1-D signals"),
        (["--dataset", "mnist1d", "--samples", "25"], "--samples N takes a positive multiple of 10 and only with --dataset mnist1d, got 25"),
        (["--samples", "100"], "--samples N takes a positive multiple of 10 and only with --dataset mnist1d"),
        (["--dataset", "mnist1d", "--data-dir", "{tmp}"], "--data-dir is only read with --dataset cifar100"),
        (["--methods", "adamw,lion"],
         "unknown method 'lion'; accepted: adamw, gc, center, znorm, gan, gan-fused, adafom, gan-adafom"),
        (["--deficit-epochs", "3"], "--deficit-epochs takes A:B, two epoch numbers such as 1:5, got '3'"),
        (["--deficit-epochs", "a:b"], "--deficit-epochs takes A:B"),
        (["--deficit-epochs", "0:3"], "--deficit-epochs 0:3: need 1 <= A <= B <= --epochs (15)"),
        (["--deficit-epochs", "5:2"], "need 1 <= A <= B"),
        (["--deficit-epochs", "1:3", "--epochs", "2"], "need 1 <= A <= B <= --epochs (2)"),
        (["--probe-every", "-1"], "--probe-every must be 0 (never) or a number of steps"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'; accepted: digits, cifar100, mnist1d"),
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


def test_the_deficit_blurs_the_training_batches_of_its_epochs_only(tmp_path, monkeypatch):
    demo = load_demo()
    tiny_digits(demo, monkeypatch)
    blurred = []
    blur = demo.data.gaussian_blur

    def spy(batch, sigma):
        blurred.append((batch.shape, sigma))
        return blur(batch, sigma)

    monkeypatch.setattr(demo.data, "gaussian_blur", spy)
    printed = []
    monkeypatch.setattr(demo.tqdm, "write", lambda line, file=None: printed.append(line))
    argv = ["--methods", "adamw", "--epochs", "4", "--batch-size", "48", "--out", str(tmp_path)]
    demo.main(argv + ["--deficit-epochs", "2:3"])
    assert blurred == [(torch.Size([48, 1, 16, 16]), 2.0)] * 4  # two steps in each of epochs 2 and 3
    assert ["blurred" in line for line in printed] == [False, True, True, False]
    blurred.clear()
    demo.main(argv)
    assert blurred == []


def test_adafom_methods_build_adafom_alone_and_wrapped():
    from gan_kernels import GAN, AdaFom

    demo = load_demo()
    args = demo.parse_args(["--lr", "0.01", "--weight-decay", "0.1"])
    model = torch.nn.Linear(3, 2)
    alone = demo.make_optimizer("adafom", model, args)
    wrapped = demo.make_optimizer("gan-adafom", model, args)
    assert type(alone) is AdaFom and alone.defaults["lr"] == 0.01 and alone.defaults["weight_decay"] == 0.1
    assert type(wrapped) is GAN and type(wrapped.optimizer) is AdaFom and wrapped.mode == "gan"
    assert type(demo.make_optimizer("znorm", model, args).optimizer) is torch.optim.AdamW


def test_metrics_carry_the_coherence_and_function_step_as_valid_json(tmp_path, monkeypatch):
    demo = load_demo()
    tiny_digits(demo, monkeypatch)
    demo.main(["--methods", "adamw,gan", "--epochs", "2", "--batch-size", "48", "--probe-every", "3",
               "--out", str(tmp_path)])

    def no_constant(name):
        raise AssertionError(f"metrics.json holds {name}, which is not JSON")

    metrics = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=no_constant)
    for method in ("adamw", "gan"):
        series = metrics["dynamics"][method]
        assert series["step"] == [1, 2, 3, 4]
        assert series["coherence/1"][0] is None and all(isinstance(v, float) for v in series["coherence/1"][1:])
        assert series["coherence/5"] == [None] * 4
        assert [v is not None for v in series["function_step"]] == [False, False, True, False]


def test_mnist1d_trains_the_1d_models_with_its_own_defaults(tmp_path, capsys):
    pytest.importorskip("mnist1d")
    demo = load_demo()
    args = demo.parse_args(["--dataset", "mnist1d"])
    assert {k: getattr(args, k) for k in demo.MNIST1D_DEFAULTS} == demo.MNIST1D_DEFAULTS
    assert demo.parse_args(["--dataset", "mnist1d", "--epochs", "3"]).epochs == 3  # an explicit option wins
    assert demo.parse_args([]).model == "resnet20"
    for model in ("cnn1d", "mlp1d", "resnet20_1d"):
        out = tmp_path / model
        accuracies = demo.main(["--dataset", "mnist1d", "--samples", "200", "--model", model, "--epochs", "1",
                                "--methods", "adamw,gan", "--out", str(out)])
        assert set(accuracies) == {"adamw", "gan"} and all(0.0 <= a <= 1.0 for a in accuracies.values())
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["config"]["dataset"] == "mnist1d" and metrics["config"]["samples"] == 200
    assert "cnn1d on mnist1d (160 train, 40 test)" in capsys.readouterr().out
