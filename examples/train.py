"""Compare AdamW, Gradient Centralization, ZNorm and GAN on the paper's models, and draw the
gradient dynamics behind them.

    python examples/train.py                       # ResNet-20 on the embedded digits: about a minute on a 2-core CPU
    python examples/train.py --dataset mnist1d                     # the small 1-D CNN on MNIST-1D's 1-D signals
    python examples/train.py --dataset cifar100 --data-dir DIR --model resnet56 --epochs 200 --device cuda

Every method trains the same model from the same seed on the same batches: ``adamw`` is plain
AdamW; ``gc`` (Gradient Centralization as its authors define it: one mean per output channel),
``center`` (one mean per tensor: GAN without the autoscale), ``znorm`` and ``gan`` wrap it in
``gan_kernels.GAN`` with that mode, and ``gan-fused`` is ``gan_kernels.GANAdamW`` (GAN inside
the AdamW update); ``adafom`` is AdaFom (``gan_kernels.AdaFom``: Adam's first moment over the
average of all past squared gradients) and ``gan-adafom`` wraps it in GAN. The default is the
paper's comparison: AdamW, GC, ZNorm and GAN.

Every run records the gradient coherence cos(g_t, g_{t-m}) at lags m = 1 and 5 over the eligible
gradients the optimizer used, and every ``--probe-every`` steps the function-space step size: the
root-mean-square distance of the model's outputs on a fixed probe batch (the first 256 test
images) since the previous probe. The GAN-wrapped runs also record, at no extra pass over the
gradients, every eligible layer's gradient std, the global std and alpha.

``--dataset mnist1d`` is MNIST-1D (Greydanus 2024) as the ``mnist1d`` package generates it, the
standard 4000 train and 1000 test signals of 40 samples (``--samples N`` generates N signals,
split 80/20 the same way); it takes the 1-D models (``resnet20_1d``, ``cnn1d``, ``mlp1d``) and its
own defaults: ``--model cnn1d``, MNIST1D_DEFAULTS below. The other datasets take the 2-D models.

``--deficit-epochs A:B`` blurs the training inputs during epochs A to B (counted from 1, both
included) with a fixed Gaussian blur of std side/8 pixels (2 on the 16x16 digits, 4 on CIFAR),
the deficit of the critical-period protocol; the test images are never blurred. It is defined
for images only.

``--out`` receives ``metrics.json`` (final accuracies, per-epoch curves and the per-step coherence
and function-space step size), one ``gradients_<method>.csv`` per recorded run, and
``dynamics.png``. Bad input (an unknown model, method, dataset or device, a device this machine
lacks, ``--data-dir`` without ``--dataset cifar100``, a ``--data-dir`` without the archive, a
deficit outside the epochs, a model of the other kind of input than the dataset's) ends with a
one-line error, and nothing is written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gan_kernels import GAN, AdaFom, GANAdamW
from gan_kernels.telemetry import DEFAULT_LAGS, GradientRecorder


def _load_sibling(name):
    """Import examples/<name>.py (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"gan_examples_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


models = _load_sibling("models")
data = _load_sibling("data")

METHODS = ("adamw", "gc", "center", "znorm", "gan", "gan-fused", "adafom", "gan-adafom")
# The paper's comparison.
DEFAULT_METHODS = ("adamw", "gc", "znorm", "gan")
DATASETS = ("digits", "cifar100", "mnist1d")
# MNIST-1D's defaults in place of the digits' (an explicit option still wins), the same for every
# method: the 8000 steps and the learning rate of the MNIST-1D baselines (Adam, 1e-2), which bring
# AdamW's small CNN to 92-93% (the baselines report about 94%) in about 20 s on one CPU thread.
MNIST1D_DEFAULTS = {"model": "cnn1d", "epochs": 100, "batch_size": 50, "lr": 1e-2}
DIGITS_SIZE = 16  # the 8x8 digits upsampled, so that ResNet's three stages keep a 4x4 map
PROBE_SIZE = 256  # test images whose outputs measure the function-space step size


class UsageError(Exception):
    """Bad input: reported as one line, before anything is written."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", help=f"one of {', '.join(models.MODELS)}")
    parser.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--data-dir", type=Path, help="with --dataset cifar100 only: the folder with cifar-100-python(.tar.gz)")
    parser.add_argument("--samples", type=int, metavar="N",
                        help=f"with --dataset mnist1d only: generate N signals, split 80/20 (default {data.MNIST1D_SAMPLES})")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda, cuda:N, mps, ... (default: cuda when available, else cpu)")
    parser.add_argument("--no-coherence", action="store_true",
                        help="skip the coherence cos(g_t, g_t-m), m = 1 and 5, which keeps 6 copies of the gradients")
    parser.add_argument("--probe-every", type=int, default=10, metavar="N",
                        help="measure the function-space step size every N steps (0: never; default 10)")
    parser.add_argument("--deficit-epochs", metavar="A:B",
                        help="blur the training inputs during epochs A to B, counted from 1 (the critical-period deficit)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    if parser.parse_known_args(argv)[0].dataset == "mnist1d":
        parser.set_defaults(**MNIST1D_DEFAULTS)
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    return args


def deficit_epochs(text, epochs):
    """``"A:B"`` as the range of epochs A..B (both included), checked against ``epochs``."""
    if text is None:
        return range(0)
    first, sep, last = text.partition(":")
    try:
        first, last = int(first), int(last)
    except ValueError:
        first = last = None
    if not sep or first is None:
        raise UsageError(f"--deficit-epochs takes A:B, two epoch numbers such as 1:5, got {text!r}")
    if not 1 <= first <= last <= epochs:
        raise UsageError(f"--deficit-epochs {text}: need 1 <= A <= B <= --epochs ({epochs})")
    return range(first, last + 1)


def check_args(args):
    """Raise UsageError, naming what is accepted, for anything the run cannot use."""
    if args.model not in models.MODELS:
        raise UsageError(f"unknown model {args.model!r}; accepted: {', '.join(models.MODELS)}")
    if args.dataset not in DATASETS:
        raise UsageError(f"unknown dataset {args.dataset!r}; accepted: {', '.join(DATASETS)}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        raise UsageError(f"unknown method {', '.join(map(repr, unknown)) or '(none given)'}; accepted: {', '.join(METHODS)}")
    if args.dataset == "cifar100" and args.data_dir is None:
        raise UsageError("--dataset cifar100 needs --data-dir DIR holding cifar-100-python.tar.gz or cifar-100-python/")
    if args.dataset != "cifar100" and args.data_dir is not None:
        raise UsageError(f"--data-dir is only read with --dataset cifar100 (the {args.dataset} data are embedded)")
    if args.epochs < 1 or args.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    if args.probe_every < 0:
        raise UsageError("--probe-every must be 0 (never) or a number of steps")
    deficit_epochs(args.deficit_epochs, args.epochs)
    signals = args.dataset == "mnist1d"
    if signals != (args.model in models.SIGNAL_MODELS):
        kind = "1-D signals" if signals else "images"
        accepted = [name for name in models.MODELS if (name in models.SIGNAL_MODELS) == signals]
        raise UsageError(f"model {args.model!r} does not take the {kind} of --dataset {args.dataset}; "
                         f"accepted: {', '.join(accepted)}")
    if args.samples is not None and (not signals or args.samples < 10 or args.samples % 10):
        raise UsageError("--samples N takes a positive multiple of 10 and only with --dataset mnist1d"
                         + (f", got {args.samples}" if signals else ""))
    if signals and args.deficit_epochs is not None:
        raise UsageError("--deficit-epochs blurs images; --dataset mnist1d holds 1-D signals")
    check_device(args.device)


def available_devices():
    """The devices this machine can train on, as --device accepts them."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(name):
    """Raise UsageError unless ``name`` is a device this machine has."""
    available = f"available here: {', '.join(available_devices())}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"unknown device {name!r}; {available}") from None
    if device.type == "meta":
        raise UsageError(f"device {name!r} holds no data and cannot train; {available}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"device {name!r} is not available: this machine has no usable CUDA device; {available}")
        if device.index is not None and device.index >= count:
            raise UsageError(f"device {name!r} is not available: this machine has {count} CUDA device(s); {available}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {name!r} is not available: this machine has no usable MPS device; {available}")
    backend = getattr(torch, device.type, None)
    if device.type not in ("cpu", "cuda", "mps") and callable(getattr(backend, "is_available", None)) and not backend.is_available():
        raise UsageError(f"device {name!r} is not available on this machine; {available}")
    try:
        torch.empty(1, device=device)
    except Exception as error:  # noqa: BLE001 -- each backend reports a missing device its own way
        reason = str(error).strip().split(". ")[0].splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UsageError(f"device {name!r} is not available ({reason}); {available}") from None


def load(args):
    if args.dataset == "digits":
        return data.load_digits_images(DIGITS_SIZE, args.seed), False
    if args.dataset == "mnist1d":
        return data.load_mnist1d(args.samples or data.MNIST1D_SAMPLES), False
    try:
        return data.load_cifar100(args.data_dir), True
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None


@torch.no_grad()
def accuracy(model, x, y, batch_size=512):
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum() for i in range(0, len(y), batch_size))
    return (correct / len(y)).item()


def make_optimizer(method, model, args):
    """The optimizer of ``method`` for ``model``'s parameters."""
    if method == "gan-fused":
        return GANAdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    if method in ("adafom", "gan-adafom"):
        opt = AdaFom(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    if method in ("adamw", "adafom"):
        return opt
    return GAN(opt, mode="gan" if method == "gan-adafom" else method)


def runs_gan(method):
    return method not in ("adamw", "adafom")


def train_method(method, args, images, augmented, device):
    """Train one method from the seed; return its per-epoch curves and its recorder (or None)."""
    torch.manual_seed(args.seed)
    model = models.MODELS[args.model](in_channels=images.in_channels, num_classes=images.num_classes).to(device)
    opt = make_optimizer(method, model, args)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    x_train, y_train = images.train_x.to(device), images.train_y.to(device)
    x_test, y_test = images.test_x.to(device), images.test_y.to(device)
    lags = () if args.no_coherence else DEFAULT_LAGS
    probe = {"probe": x_test[:PROBE_SIZE], "probe_every": args.probe_every} if args.probe_every else {}
    with_stats = runs_gan(method)  # the steps produce GAN's statistics
    recorder = None
    if with_stats or lags or probe:
        recorder = GradientRecorder.for_optimizer(opt, model, coherence=lags, **probe)
    deficit = deficit_epochs(args.deficit_epochs, args.epochs)
    sigma = data.deficit_sigma(x_train.shape[-1])
    shuffle = torch.Generator().manual_seed(args.seed)
    steps = -(-len(y_train) // args.batch_size)
    curves = {"loss": [], "test_accuracy": []}
    start = time.perf_counter()
    with tqdm(total=args.epochs * steps, desc=f"{method:>10}", unit="step", leave=False, file=sys.stderr) as bar:
        for epoch in range(1, args.epochs + 1):
            model.train()
            order = torch.randperm(len(y_train), generator=shuffle).to(device)
            total = torch.zeros((), device=device)
            for i in range(0, len(y_train), args.batch_size):
                batch = order[i:i + args.batch_size]
                x = data.augment(x_train[batch], shuffle) if augmented else x_train[batch]
                if epoch in deficit:
                    x = data.gaussian_blur(x, sigma)
                loss = F.cross_entropy(model(x), y_train[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if recorder is not None:
                    recorder.record(opt.last_stats if with_stats else None)
                total += loss.detach() * len(batch)
                bar.update()
            scheduler.step()
            curves["loss"].append(total.item() / len(y_train))
            curves["test_accuracy"].append(accuracy(model, x_test, y_test))
            line = f"{method:>10}  epoch {epoch:3d}  loss {curves['loss'][-1]:.4f}  test acc {curves['test_accuracy'][-1]:.4f}"
            if recorder is not None and with_stats:
                row = recorder.flush()[-1]
                line += f"  alpha {row['alpha']:.3g}  global grad std {row['global_std']:.3g}"
            if epoch in deficit:
                line += "  (blurred inputs)"
            tqdm.write(line, file=sys.stdout)
    curves["seconds"] = time.perf_counter() - start
    return curves, recorder


DYNAMICS = tuple(f"coherence/{m}" for m in DEFAULT_LAGS) + ("function_step",)


def dynamics(recorder):
    """The recorder's per-step coherence and function-space step size, NaN as None (valid JSON)."""
    series = {"step": recorder.column("step")}
    for key in DYNAMICS:
        if any(key in row for row in recorder.flush()):
            series[key] = [None if v != v else v for v in recorder.column(key)]
    return series


SMOOTHING = 25  # steps in the moving average of the coherence curves drawn (the CSV keeps every step)


def moving_average(values, window=SMOOTHING):
    """At each step, the mean of the finite values among the last ``window`` steps (NaN if none)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    count = counts[ends] - counts[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (sums[ends] - sums[starts]) / count, np.nan)


def recorded(recorders, key):
    """{method: (steps, values)} of the runs that recorded ``key`` at some step (NaN elsewhere)."""
    found = {}
    for method, recorder in recorders.items():
        rows = recorder.flush()
        if any(key in row and row[key] == row[key] for row in rows):
            found[method] = (recorder.column("step"), recorder.column(key))
    return found


def dynamics_figure(results, recorders, model_name):
    """The gradient dynamics of the GAN run (else of the first run with GAN's stats), the coherence
    at both lags and the function-space step size of every run that recorded them, and every
    method's test accuracy: one panel each, none left empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    method_colors = {method: f"C{i}" for i, method in enumerate(METHODS)}  # the same in every panel
    with_stats = [m for m, r in recorders.items() if any("alpha" in row for row in r.flush())]
    shown = "gan" if "gan" in with_stats else next(iter(with_stats), None)
    coherent = {m: recorded(recorders, f"coherence/{m}") for m in DEFAULT_LAGS}
    coherent = {lag: runs for lag, runs in coherent.items() if runs}
    probed = recorded(recorders, "function_step")
    panels = ((["layers", "scale"] if shown is not None else []) + (["coherence"] if coherent else [])
              + (["function"] if probed else []) + ["accuracy"])
    cols = 1 if len(panels) == 1 else 2 if len(panels) in (2, 4) else 3
    rows = -(-len(panels) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
    for extra in grid.flat[len(panels):]:
        fig.delaxes(extra)
    axes = dict(zip(panels, grid.flat))
    if shown is not None:
        layers, scale = axes["layers"], axes["scale"]
        recorder = recorders[shown]
        steps = recorder.column("step")
        names = recorder.names
        colors = plt.cm.viridis([i / max(len(names) - 1, 1) for i in range(len(names))])
        for name, color in zip(names, colors):
            layers.plot(steps, recorder.column(f"std/{name}"), color=color, lw=0.8, label=name)
        layers.plot(steps, recorder.column("global_std"), color="red", lw=2, label="global")
        layers.set(yscale="log", xlabel="step", ylabel="gradient std",
                   title=f"{shown}: layer-wise gradient std (input layer dark, output layer yellow)")
        if len(names) <= 16:
            layers.legend(fontsize=6, ncol=2)
        scale.plot(steps, recorder.column("global_std"), color="red", label="global std sigma")
        scale.plot(steps, recorder.column("alpha"), color="black", label="alpha")
        scale.set(yscale="log", xlabel="step", title=f"{shown}: global gradient std and alpha")
        scale.legend()
    if coherent:
        coherence = axes["coherence"]
        styles = dict(zip(DEFAULT_LAGS, ("-", "--")))
        for lag, runs in coherent.items():
            for method, (steps, values) in runs.items():
                coherence.plot(steps, moving_average(values), ls=styles[lag], lw=1, color=method_colors[method],
                               label=f"{method}, m={lag}")
        coherence.axhline(0.0, color="gray", lw=0.5)
        coherence.set(xlabel="step", ylabel="cos(g_t, g_t-m)",
                      title=f"gradient coherence at lags m = 1 and 5 ({SMOOTHING}-step moving average)")
        coherence.legend(fontsize=7, ncol=2)
    if probed:
        function = axes["function"]
        for method, (steps, values) in probed.items():
            points = [(s, v) for s, v in zip(steps, values) if v == v]
            function.plot(*zip(*points), marker=".", lw=0.8, color=method_colors[method], label=method)
        function.set(yscale="log", xlabel="step", ylabel="RMS output distance",
                     title="function-space step size (probe batch, since the previous probe)")
        function.legend()
    accuracy_ax = axes["accuracy"]
    for method, curves in results.items():
        epochs = range(1, len(curves["test_accuracy"]) + 1)
        accuracy_ax.plot(epochs, curves["test_accuracy"], marker="o", color=method_colors[method], label=method)
    accuracy_ax.set(xlabel="epoch", ylabel="test accuracy", title=f"{model_name}: test accuracy per method")
    accuracy_ax.legend()
    fig.tight_layout()
    return fig


def plot(path, results, recorders, model_name):
    """Write :func:`dynamics_figure` to ``path`` as a PNG."""
    import matplotlib.pyplot as plt

    fig = dynamics_figure(results, recorders, model_name)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def listing(paths):
    """'a', 'a and b', 'a, b and c'."""
    paths = [str(p) for p in paths]
    return paths[0] if len(paths) == 1 else f"{', '.join(paths[:-1])} and {paths[-1]}"


def comparison_table(results):
    lines = [f"{'method':<10} {'final acc':>9} {'best acc':>9} {'final loss':>10} {'seconds':>8}"]
    for method, c in results.items():
        lines.append(f"{method:<10} {c['test_accuracy'][-1]:>9.4f} {max(c['test_accuracy']):>9.4f} {c['loss'][-1]:>10.4f} {c['seconds']:>8.1f}")
    return "\n".join(lines)


def main(argv=None):
    """Run the comparison; return {method: final test accuracy}."""
    args = parse_args(argv)
    try:
        check_args(args)
        images, augmented = load(args)
    except UsageError as error:
        sys.exit(f"train.py: error: {error}")
    device = torch.device(args.device)
    print(f"{args.model} on {args.dataset} ({len(images.train_y)} train, {len(images.test_y)} test), "
          f"{args.epochs} epochs, methods {', '.join(args.methods)}, device {device}"
          + (f", inputs blurred in epochs {args.deficit_epochs}" if args.deficit_epochs else ""))
    results, recorders = {}, {}
    for method in args.methods:
        results[method], recorder = train_method(method, args, images, augmented, device)
        if recorder is not None:
            recorders[method] = recorder
    print(comparison_table(results))

    args.out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "final_accuracy": {m: c["test_accuracy"][-1] for m, c in results.items()},
        "best_accuracy": {m: max(c["test_accuracy"]) for m, c in results.items()},
        "curves": results,
        "dynamics": {method: dynamics(recorder) for method, recorder in recorders.items()},
    }
    written = [args.out / "metrics.json"]
    written[-1].write_text(json.dumps(metrics, indent=2) + "\n")
    for method, recorder in recorders.items():
        written.append(args.out / f"gradients_{method}.csv")
        recorder.write_csv(written[-1])
    written.append(args.out / "dynamics.png")
    plot(written[-1], results, recorders, args.model)
    print(f"wrote {listing(written)}")
    return metrics["final_accuracy"]


if __name__ == "__main__":
    main()
