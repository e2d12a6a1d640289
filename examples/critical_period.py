"""The critical-period protocol (arXiv 1711.08856) for AdamW and GAN on the demo's data.

    python examples/critical_period.py                              # 3 deficits x 2 methods x 3 seeds
    python examples/critical_period.py --out docs/critical-period   # regenerate the README's study

Each method is trained with examples/train.py's recipe (by default ResNet-20 on the embedded
digits, 15 epochs, cosine learning rate; ``--model``, ``--dataset`` and ``--data-dir`` as there)
three ways: without a deficit, with an *early* deficit (training inputs blurred during epochs 1
to 5, ``--early``) and with a *late* one (epochs 6 to 10, ``--late``), each from several seeds
(on the digits the seed also draws the train/test split). The blur is the demo's: a Gaussian of
std side/8 pixels; the test images are never blurred. A deficit hurts the most where training is
most sensitive to it, so comparing the final accuracies after an early and a late deficit shows
whether there is a critical period, and comparing methods shows whether the gradient transform
changes it.

``--out`` receives ``study.json`` (every run's final accuracy, per-epoch test accuracy and
per-step coherence and function-space step size, the last two to 4 significant digits),
``table.md`` (final test accuracy, mean and spread over the seeds, per method and deficit) and
``critical_period.png`` (seed-averaged test accuracy and coherence at lags 1 and 5, one column
per deficit). Bad input ends with a one-line error and nothing written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch


# examples/train.py, imported by path (the examples folder is not a package); it loads its own siblings.
_spec = importlib.util.spec_from_file_location("gan_examples_train", Path(__file__).with_name("train.py"))
train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train)

DEFICITS = ("none", "early", "late")
LAGS = train.DEFAULT_LAGS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="adamw,gan", help=f"comma-separated, from {', '.join(train.METHODS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--early", default="1:5", metavar="A:B", help="the early deficit's epochs (default 1:5)")
    parser.add_argument("--late", default="6:10", metavar="A:B", help="the late deficit's epochs (default 6:10)")
    parser.add_argument("--model", default="resnet20", help=f"one of {', '.join(train.models.MODELS)}")
    parser.add_argument("--dataset", default="digits", help=f"one of {', '.join(train.DATASETS)}")
    parser.add_argument("--data-dir", help="with --dataset cifar100: the folder with cifar-100-python(.tar.gz)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/critical-period"))
    return parser.parse_args(argv)


def run_arguments(args, method, deficit, seed):
    """The arguments of one examples/train.py run of the study, checked."""
    argv = ["--model", args.model, "--dataset", args.dataset, "--methods", method, "--epochs", str(args.epochs),
            "--seed", str(seed), "--device", args.device, "--out", str(args.out)]
    if args.data_dir is not None:
        argv += ["--data-dir", args.data_dir]
    if deficit != "none":
        argv += ["--deficit-epochs", getattr(args, deficit)]
    run = train.parse_args(argv)
    train.check_args(run)
    return run


def seeds(text):
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or len(set(values)) != len(values):
        raise train.UsageError(f"--seeds takes distinct comma-separated integers such as 0,1,2, got {text!r}")
    return values


def study(args):
    """Train every (method, deficit, seed); return the JSON-ready record of the study."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise train.UsageError(f"--methods names no method; accepted: {', '.join(train.METHODS)}")
    seed_list = seeds(args.seeds)
    plan = [(m, d, s) for s in seed_list for d in DEFICITS for m in methods]
    checked = {key: run_arguments(args, *key) for key in plan}  # every bad argument before any training
    device = torch.device(args.device)
    runs = []
    loaded = {}
    for (method, deficit, seed), run in checked.items():
        split = seed if args.dataset == "digits" else None  # the seed draws the digits' split only
        if split not in loaded:
            loaded[split] = train.load(run)
        print(f"{method} / {deficit} deficit / seed {seed}", flush=True)
        curves, recorder = train.train_method(method, run, *loaded[split], device)
        runs.append({
            "method": method, "deficit": deficit, "deficit_epochs": run.deficit_epochs, "seed": seed,
            "final_accuracy": curves["test_accuracy"][-1], "test_accuracy": curves["test_accuracy"],
            "loss": curves["loss"], "seconds": curves["seconds"], "dynamics": train.dynamics(recorder),
        })
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {"config": config, "methods": methods, "seeds": seed_list, "runs": runs}


def rounded(record, digits=4):
    """The record with its per-step measurements rounded to ``digits`` significant digits (they
    are noisy to the second digit; this keeps study.json small)."""
    def short(value):
        return None if value is None else float(f"{value:.{digits}g}")

    runs = [{**run, "dynamics": {key: values if key == "step" else [short(v) for v in values]
                                 for key, values in run["dynamics"].items()}} for run in record["runs"]]
    return {**record, "runs": runs}


def finals(record, method, deficit):
    return [r["final_accuracy"] for r in record["runs"] if r["method"] == method and r["deficit"] == deficit]


def table(record):
    """Markdown: final test accuracy per method (rows) and deficit (columns), mean ± std over the
    seeds with the range, then each deficit's change of the mean against no deficit."""
    config = record["config"]
    early, late = (config[d].replace(":", "–") for d in ("early", "late"))
    headers = ["no deficit", f"early deficit (epochs {early})", f"late deficit (epochs {late})"]
    lines = ["| method | " + " | ".join(headers) + " | early − none | late − none |",
             "| --- | " + " | ".join("---" for _ in headers) + " | --- | --- |"]
    for method in record["methods"]:
        cells, means = [], {}
        for deficit in DEFICITS:
            values = finals(record, method, deficit)
            means[deficit] = statistics.fmean(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{means[deficit]:.4f} ± {spread:.4f} ({min(values):.4f}–{max(values):.4f})")
        changes = [f"{means[d] - means['none']:+.4f}" for d in ("early", "late")]
        lines.append(f"| {method} | " + " | ".join(cells) + " | " + " | ".join(changes) + " |")
    return "\n".join(lines)


def seed_mean(rows):
    """The elementwise mean of equally long lists, skipping None (NaN where all are None)."""
    import numpy as np

    array = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns with no value at all: the first steps
        return np.nanmean(array, axis=0)


def figure(record):
    """One column per deficit: the seed-averaged test accuracy per epoch, then the seed-averaged
    coherence at each lag (moving average over train.SMOOTHING steps); the deficit shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = record["config"]
    fig, grid = plt.subplots(1 + len(LAGS), len(DEFICITS), figsize=(5.5 * len(DEFICITS), 3.6 * (1 + len(LAGS))),
                             squeeze=False, sharey="row")
    colors = {method: f"C{train.METHODS.index(method)}" for method in record["methods"]}
    for column, deficit in enumerate(DEFICITS):
        window = None if deficit == "none" else tuple(int(e) for e in config[deficit].split(":"))
        for method in record["methods"]:
            runs = [r for r in record["runs"] if r["method"] == method and r["deficit"] == deficit]
            epochs = range(1, len(runs[0]["test_accuracy"]) + 1)
            grid[0, column].plot(epochs, seed_mean([r["test_accuracy"] for r in runs]), marker="o", ms=3,
                                 color=colors[method], label=method)
            steps_per_epoch = len(runs[0]["dynamics"]["step"]) / len(epochs)
            for row, lag in enumerate(LAGS, start=1):
                key = f"coherence/{lag}"
                if key not in runs[0]["dynamics"]:
                    continue
                mean = seed_mean([r["dynamics"][key] for r in runs])
                steps = runs[0]["dynamics"]["step"]
                grid[row, column].plot([s / steps_per_epoch for s in steps], train.moving_average(mean),
                                       color=colors[method], lw=1, label=method)
        title = "no deficit" if window is None else f"{deficit} deficit (epochs {window[0]}–{window[1]})"
        grid[0, column].set(title=title, xlabel="epoch", ylabel="test accuracy (seed mean)")
        for row, lag in enumerate(LAGS, start=1):
            grid[row, column].axhline(0.0, color="gray", lw=0.5)
            grid[row, column].set(xlabel="epoch", ylabel=f"cos(g_t, g_t-{lag})",
                                  title=f"coherence, lag {lag} (seed mean, {train.SMOOTHING}-step average)")
        if window is not None:
            # Accuracy is drawn at the end of each epoch, the coherence along epoch fractions.
            grid[0, column].axvspan(window[0] - 0.5, window[1] + 0.5, color="gray", alpha=0.15, lw=0)
            for axes in grid[1:, column]:
                axes.axvspan(window[0] - 1, window[1], color="gray", alpha=0.15, lw=0)
        for axes in grid[:, column]:
            axes.legend(fontsize=8)
    fig.suptitle(f"{config['model']} on {config['dataset']}, {len(record['seeds'])} seeds: "
                 "blurred inputs during the shaded epochs")
    fig.tight_layout()
    return fig


def main(argv=None):
    """Run the study and write its files; return the record."""
    args = parse_args(argv)
    try:
        if args.epochs < 1:
            raise train.UsageError("--epochs must be at least 1")
        record = rounded(study(args))
    except train.UsageError as error:
        sys.exit(f"critical_period.py: error: {error}")
    text = table(record)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(record) + "\n")
    (args.out / "table.md").write_text(text + "\n")
    import matplotlib.pyplot as plt

    fig = figure(record)
    fig.savefig(args.out / "critical_period.png", dpi=100)
    plt.close(fig)
    print(f"wrote {train.listing([args.out / name for name in ('study.json', 'table.md', 'critical_period.png')])}")
    return record


if __name__ == "__main__":
    main()
