"""Seed-paired comparison of the methods on MNIST-1D: which optimizer ends more accurate, and how
sure is that.

    python examples/compare.py                       # 5 methods x 5 seeds, the small 1-D CNN
    python examples/compare.py --out docs/mnist1d    # regenerate the committed study

For every seed, examples/train.py is run once (through its ``main``) with ``--dataset mnist1d``
and all the methods: within one run every method trains the same model from the same seed, so
from the same initial weights, on the same batches in the same order. The methods of one seed
thus differ only by the optimizer, and the study compares them seed by seed: for each method the
paired difference of its final test accuracy against AdamW's on the same seed, with a 95%
t-interval over the seeds (mean difference +- t(0.975, n-1) * sd / sqrt(n), the t quantile from
:func:`t_quantile`). The data are the same for every seed (MNIST-1D's generator has its own seed).

``--out`` receives ``study.json`` (the configuration, the command, every run's per-epoch test
accuracy and loss rounded to 4 digits, and the summary), ``study.md`` (the table and the exact
command) and ``study.png`` (mean test accuracy per epoch with +-1 std bands over the seeds, and the
paired difference against AdamW with its 95% interval). Each seed's train.py output (metrics.json,
dynamics.png) goes to ``--runs``/seed-N. Bad input ends with a one-line error before any training.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

# examples/train.py, imported by path (the examples folder is not a package); it loads its own siblings.
_spec = importlib.util.spec_from_file_location("gan_examples_train", Path(__file__).with_name("train.py"))
train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train)

DEFAULT_METHODS = ("adamw", "gc", "znorm", "gan", "gan-fused")
BASELINE = "adamw"
# Two-sided 95% quantiles t(0.975, df) of Student's t for df = 1..30 (standard tables, 3 decimals).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df):
    """t(0.975, df): the table above up to 30 degrees of freedom, beyond it the Cornish-Fisher
    expansion around the normal quantile (within 1e-3 of the exact value there)."""
    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = statistics.NormalDist().inv_cdf(0.975)
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def paired_interval(values, baseline):
    """The paired difference ``values - baseline`` (one pair per seed): its mean, its std over the
    seeds and the 95% t-interval of the mean, as a dict with keys ``mean``, ``std``, ``low``,
    ``high``, ``per_seed``. Needs at least two pairs."""
    differences = [v - b for v, b in zip(values, baseline, strict=True)]
    mean, spread = statistics.fmean(differences), statistics.stdev(differences)
    half = t_quantile(len(differences) - 1) * spread / math.sqrt(len(differences))
    return {"mean": mean, "std": spread, "low": mean - half, "high": mean + half, "per_seed": differences}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from {', '.join(train.METHODS)}, with {BASELINE} among them "
                             f"(default: {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated distinct seeds, at least two (default: 0,1,2,3,4)")
    parser.add_argument("--model", help="one of the 1-D models of train.py (default: train.py's for mnist1d)")
    parser.add_argument("--epochs", type=int, help="default: train.py's for mnist1d")
    parser.add_argument("--batch-size", type=int, help="default: train.py's for mnist1d")
    parser.add_argument("--lr", type=float, help="default: train.py's for mnist1d")
    parser.add_argument("--samples", type=int, metavar="N", help="generate N MNIST-1D signals, split 80/20 (default 5000)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: the 1-D models are too small to gain from more)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/mnist1d-study"))
    parser.add_argument("--runs", type=Path, default=Path("runs/mnist1d-study/runs"),
                        help="where each seed's train.py run writes (default: runs/mnist1d-study/runs)")
    return parser.parse_args(argv)


def seeds(text):
    """The seeds of ``--seeds``: distinct integers, at least two (a paired interval needs two)."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if len(values) < 2 or len(set(values)) != len(values):
        raise train.UsageError(f"--seeds takes at least two distinct comma-separated integers such as 0,1,2,3,4, got {text!r}")
    return values


def run_arguments(args, methods, seed):
    """The checked train.py arguments of one seed's run."""
    argv = ["--dataset", "mnist1d", "--methods", ",".join(methods), "--seed", str(seed), "--device", args.device,
            "--no-coherence", "--probe-every", "0", "--out", str(args.runs / f"seed-{seed}")]
    for option in ("model", "epochs", "batch_size", "lr", "samples"):
        value = getattr(args, option)
        if value is not None:
            argv += [f"--{option.replace('_', '-')}", str(value)]
    train.check_args(train.parse_args(argv))
    return argv


def plan(args):
    """The methods and each seed's train.py arguments; every bad argument raises UsageError here."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if BASELINE not in methods:
        raise train.UsageError(f"--methods must include {BASELINE}, the baseline of the paired differences")
    if len(set(methods)) != len(methods):
        raise train.UsageError(f"--methods names a method twice: {args.methods!r}")
    if args.threads < 1:
        raise train.UsageError("--threads must be at least 1")
    # The baseline first: the table and the figure list it first.
    methods = [BASELINE] + [m for m in methods if m != BASELINE]
    return methods, {seed: run_arguments(args, methods, seed) for seed in seeds(args.seeds)}


def rounded(values, digits=4):
    return [round(v, digits) for v in values]


def summarize(methods, runs):
    """Per method: final accuracies per seed, their mean and std, and (except the baseline) the
    paired difference against the baseline."""
    finals = {m: [run["test_accuracy"][m][-1] for run in runs] for m in methods}
    summary = {}
    for method in methods:
        summary[method] = {"final_accuracy": finals[method], "mean": statistics.fmean(finals[method]),
                           "std": statistics.stdev(finals[method])}
        if method != BASELINE:
            summary[method]["paired_difference"] = paired_interval(finals[method], finals[BASELINE])
    return summary


def table(record):
    """Markdown: per method the final test accuracy (mean ± std over the seeds), and the paired
    difference against AdamW with its 95% interval and the seeds it wins, ties and loses."""
    n = len(record["seeds"])
    lines = [f"| method | final test accuracy (mean ± std, {n} seeds) | − {BASELINE}, paired (mean [95% interval]) | seeds better / equal / worse |",
             "| --- | --- | --- | --- |"]
    for method in record["methods"]:
        row = record["summary"][method]
        cells = [method, f"{row['mean']:.4f} ± {row['std']:.4f}"]
        if method == BASELINE:
            cells += ["—", "—"]
        else:
            pair = row["paired_difference"]
            better = sum(d > 0 for d in pair["per_seed"])
            worse = sum(d < 0 for d in pair["per_seed"])
            cells += [f"{pair['mean']:+.4f} [{pair['low']:+.4f}, {pair['high']:+.4f}]", f"{better} / {n - better - worse} / {worse}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(record):
    """study.md: what was run, the table, how to read it and the exact command."""
    config = record["config"]
    return "\n".join([
        f"# {config['model']} on MNIST-1D ({config['train_size']} train, {config['test_size']} test signals): "
        f"{len(record['methods'])} methods, {len(record['seeds'])} seeds",
        "",
        f"{config['epochs']} epochs, batch size {config['batch_size']}, learning rate {config['lr']:g} (cosine), "
        f"weight decay {config['weight_decay']:g}; seeds {', '.join(map(str, record['seeds']))}. "
        "Every method of a seed starts from the same weights and sees the same batches.",
        "",
        table(record),
        "",
        f"Paired difference: per seed, the method's final test accuracy minus {BASELINE}'s; mean over the seeds "
        f"with the 95% t-interval mean ± t(0.975, n−1)·sd/√n (t(0.975, {len(record['seeds']) - 1}) = "
        f"{t_quantile(len(record['seeds']) - 1)}). One test signal is {1 / config['test_size']:.4f}.",
        "",
        f"Run time: {record['seconds'] / 60:.1f} minutes on {record['device']}.",
        "",
        "Command:",
        "",
        f"    {record['command']}",
        "",
    ])


def figure(record):
    """Left: every method's test accuracy per epoch, mean over the seeds with a ±1 std band.
    Right: each method's paired difference against the baseline per epoch, mean with its 95%
    t-interval as the band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (curves, paired) = plt.subplots(1, 2, figsize=(13, 4.8))
    n = len(record["seeds"])
    half_width = t_quantile(n - 1) / math.sqrt(n)
    baseline = np.array([run["test_accuracy"][BASELINE] for run in record["runs"]])
    for method in record["methods"]:
        color = f"C{train.METHODS.index(method)}"
        accuracy = np.array([run["test_accuracy"][method] for run in record["runs"]])
        epochs = np.arange(1, accuracy.shape[1] + 1)
        mean, spread = accuracy.mean(0), accuracy.std(0, ddof=1)
        curves.plot(epochs, mean, color=color, lw=1.2, label=method)
        curves.fill_between(epochs, mean - spread, mean + spread, color=color, alpha=0.15, lw=0)
        if method != BASELINE:
            difference = accuracy - baseline
            mean, spread = difference.mean(0), difference.std(0, ddof=1)
            paired.plot(epochs, mean, color=color, lw=1.2, label=f"{method} − {BASELINE}")
            paired.fill_between(epochs, mean - half_width * spread, mean + half_width * spread, color=color, alpha=0.15, lw=0)
    paired.axhline(0.0, color="gray", lw=0.8)
    # The last epochs are where the methods separate: zoom the accuracy axis onto them.
    final = [record["summary"][m]["mean"] for m in record["methods"]]
    curves.set_ylim(max(0.0, min(final) - 0.1), min(1.0, max(final) + 0.03))
    curves.set(xlabel="epoch", ylabel="test accuracy", title=f"test accuracy, mean ± std over {n} seeds")
    paired.set(xlabel="epoch", ylabel=f"test accuracy − {BASELINE}'s (same seed)",
               title=f"paired difference against {BASELINE}, mean and 95% t-interval")
    curves.legend()
    paired.legend()
    config = record["config"]
    fig.suptitle(f"{config['model']} on MNIST-1D ({config['train_size']} train signals)")
    fig.tight_layout()
    return fig


def main(argv=None):
    """Run the study and write study.json, study.md and study.png; return the record."""
    command = shlex.join(["python", "examples/compare.py", *(sys.argv[1:] if argv is None else argv)])
    args = parse_args(argv)
    try:
        methods, runs = plan(args)
    except train.UsageError as error:
        sys.exit(f"compare.py: error: {error}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = []
    try:
        for seed, run_argv in runs.items():
            print(f"seed {seed}", flush=True)
            train.main(run_argv)
            metrics = json.loads((args.runs / f"seed-{seed}" / "metrics.json").read_text())
            curves = metrics["curves"]
            results.append({"seed": seed, "seconds": {m: round(curves[m]["seconds"], 1) for m in methods},
                            "test_accuracy": {m: rounded(curves[m]["test_accuracy"]) for m in methods},
                            "loss": {m: rounded(curves[m]["loss"]) for m in methods}})
    finally:
        torch.set_num_threads(threads)  # a caller in the same process keeps its own setting
    seconds = time.perf_counter() - start
    config = {key: metrics["config"][key] for key in ("model", "epochs", "batch_size", "lr", "weight_decay")}
    images = train.load(train.parse_args(runs[next(iter(runs))]))[0]
    config.update(train_size=len(images.train_y), test_size=len(images.test_y), samples=args.samples, threads=args.threads)
    device = f"{args.device} with {args.threads} torch thread{'s' if args.threads > 1 else ''}"
    record = {"command": command, "config": config, "methods": methods, "seeds": list(runs), "device": device,
              "seconds": round(seconds, 1), "runs": results}
    record["summary"] = summarize(methods, results)
    text = table(record)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.out / "study.md").write_text(report(record))
    import matplotlib.pyplot as plt

    fig = figure(record)
    fig.savefig(args.out / "study.png", dpi=100)
    plt.close(fig)
    print(f"wrote {train.listing([args.out / name for name in ('study.json', 'study.md', 'study.png')])} "
          f"in {seconds / 60:.1f} minutes")
    return record


if __name__ == "__main__":
    main()
