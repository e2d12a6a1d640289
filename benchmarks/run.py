"""Time GAN implementations on the gradient shapes of real models and print one table.

    python benchmarks/run.py [--device cpu|cuda] [--sets ...] [--dtypes ...] [--quick] [--json PATH] [--save]
    python benchmarks/run.py --training-step [--device cpu|cuda] [--models ...] [--full] [--repeats N] [--json PATH]

Implementations: ``reference`` (eager, one tensor at a time), ``compiled`` (``torch.compile`` of the
reference), ``torch`` (the multi-tensor fallback) and, on CUDA, ``triton`` (the fused kernels; its
CUDA-graph replay time is reported too). Per row: the median time of one step, the speedup over
the reference, the effective bandwidth under the 3-accesses model (one read for the statistics,
one read and one write to apply: 12 bytes per element in float32, 6 in bfloat16), that bandwidth
as a fraction of the device's own copy bandwidth measured in the same run on the same tensors, and
the kernel launches per step. On CUDA times come from CUDA events (``triton.testing.do_bench``,
median); on a CPU from wall time, gradients restored between steps outside the timing.

Before the first set is timed, every implementation selected and the copy run a few times on a
small set in each dtype (``torch.compile`` included), so that a process's one-time costs (lazy
imports, the allocator's growth, the first compilation, Triton's JIT, thread pools starting) stay
out of the first rows; each set is warmed up again before it is timed.

``--training-step`` times whole training steps instead -- zero the gradients in place, forward and
loss under bf16 autocast (float32 parameters), backward, optimizer step -- of ResNet-56 (CIFAR,
batch 128, 3x32x32, 100 classes) and GPT-2 small (batch 8, sequence 512) with each optimizer:
``adamw-fused`` (``AdamW(fused=True)``), ``gan+adamw-fused`` (``GAN`` around it) and ``ganadamw``.
Every optimizer starts from the same initialisation and trains on one static batch. Modes:
``eager``, and on CUDA ``graph``, the whole step captured in one CUDA graph (capturable
optimizers, a few steps on a side stream first) and replayed. A row per model, optimizer and mode
gives the median step, its 10th and 90th percentiles over the ``steps`` timed, and
``overhead_pct``, the percent by which the median is slower than ``adamw-fused``'s in the same
model and mode (``graph`` rows exist on CUDA only). On a CPU the default is the tiny configuration
of each model (ResNet-8 on 16x16 images, batch 8; a 2-layer width-64 GPT, sequence 32, vocabulary
512), which runs in seconds; ``--full`` forces the full one, the default on CUDA. ``--repeats``
counts the timed steps on a CPU; on CUDA each row comes from CUDA events over about half a second
of steps.

``--json PATH`` and ``--save`` write ``{"meta": ..., "rows": [...]}``: ``meta`` names the machine
(device, CPU model, threads, GPU and compute capability, platform), the versions (Python, torch,
Triton, CUDA, gan_kernels), the date and time (ISO 8601, UTC) and the command-line arguments.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    DTYPES,
    IMPLEMENTATIONS,
    available,
    OPTIMIZERS,
    copy_step,
    cpu_medians,
    cpu_times,
    cuda_graph,
    cuda_graph_median,
    cuda_median,
    cuda_times,
    device_name,
    elements,
    host_times,
    launched_step_us,
    launches_per_step,
    make_grads,
    make_optimizer,
    make_step,
    optimizer_host_times,
    optimizer_rows,
    percentile,
    run_meta,
    warm_up,
    warm_up_optimizers,
    write_results,
)
from benchmarks.models import WORKLOADS, Workload  # noqa: E402
from benchmarks.shapes import SETS  # noqa: E402
from gan_kernels import GANState  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_SETS = ["resnet56", "vgg16_bn"]
# The set on which --host-only warms up the Triton path's host side before the sets it times.
HOST_WARM_UP_SET = "resnet20"
OPTIMIZER_SETS = ["gpt2_small", "resnet56", "vgg16_bn"]
# CUDA events over about half a second per optimizer and mode: tens of steps of either model, so
# that a difference of a percent stands out of the noise, and all rows fit in the GPU check's budget.
TRAINING_REP_MS = 500
TRAINING_WARM_UP_STEPS = 3
TRAINING_REPEATS = 10
# What the GAN(AdamW(fused=True)) host rows time besides host work: torch's fused AdamW is not a
# Triton kernel, so it runs.
FUSED_ADAMW_INCLUDES = {
    "cpu": "torch's fused AdamW CPU kernel, run for real",
    "cuda": "torch's fused AdamW kernel launch, and its GPU time (each step synchronises)",
}


def measure(set_name: str, dtype_name: str, device: str, implementations: list[str], repeats: int) -> list[dict]:
    """Rows for one gradient set and dtype: every implementation, timed against one copy."""
    source = make_grads(set_name, DTYPES[dtype_name], device)
    grads = [g.clone() for g in source]
    copies = [g.clone() for g in source]

    def restore():
        torch._foreach_copy_(grads, source)

    steps = {name: make_step(name) for name in implementations}
    states = {name: GANState() for name in implementations}
    for name, step in steps.items():  # warm-up: compiles, caches layouts
        restore()
        step(grads, states[name])
    launches = {}
    for name, step in steps.items():
        restore()
        launches[name] = launches_per_step(lambda: step(grads, states[name]), device, name)

    candidates = {"copy": lambda: copy_step(copies, source)}
    candidates.update({name: (lambda step=step, state=states[name]: step(grads, state)) for name, step in steps.items()})
    if device == "cuda":
        seconds = {name: cuda_median(fn) for name, fn in candidates.items()}
        graph = cuda_graph_median(lambda: steps["triton"](grads, states["triton"])) if "triton" in steps else None
    else:
        seconds = cpu_medians(candidates, restore, repeats)
        graph = None

    count = elements(set_name)
    element_size = source[0].element_size()
    copy_gb_s = 2 * count * element_size / seconds.pop("copy") / 1e9
    rows = []
    for name, time_s in seconds.items():
        effective = 3 * count * element_size / time_s / 1e9
        rows.append({
            "set": set_name,
            "implementation": name,
            "dtype": dtype_name,
            "device": device_name(device),
            "tensors": len(source),
            "elements": count,
            "median_ms": time_s * 1e3,
            "speedup_vs_reference": seconds["reference"] / time_s,
            "effective_gb_s": effective,
            "copy_gb_s": copy_gb_s,
            "fraction_of_copy_bw": effective / copy_gb_s,
            "launches": launches[name],
            "graph_replay_ms": graph * 1e3 if graph is not None and name == "triton" else None,
        })
    return rows


ROW_COLUMNS = [
    ("set", "{}"), ("implementation", "{}"), ("dtype", "{}"), ("median_ms", "{:.3f}"),
    ("speedup_vs_reference", "{:.2f}x"), ("effective_gb_s", "{:.1f}"), ("copy_gb_s", "{:.1f}"),
    ("fraction_of_copy_bw", "{:.0%}"), ("launches", "{}"), ("graph_replay_ms", "{:.3f}"),
]
OPTIMIZER_COLUMNS = [
    ("set", "{}"), ("optimizer", "{}"), ("dtype", "{}"), ("median_ms", "{:.3f}"), ("ratio_to_fused_adamw", "{:.2f}x"),
    ("graph_replay_ms", "{:.3f}"), ("graph_ratio_to_fused_adamw", "{:.2f}x"), ("model_accesses", "{}"),
    ("model_ratio", "{:.2f}x"), ("launches", "{}"),
]
TRAINING_COLUMNS = [
    ("model", "{}"), ("configuration", "{}"), ("optimizer", "{}"), ("mode", "{}"), ("batch", "{}"),
    ("input", "{}"), ("parameters", "{:,}"), ("median_ms", "{:.3f}"), ("p10_ms", "{:.3f}"), ("p90_ms", "{:.3f}"),
    ("steps", "{}"), ("overhead_pct", "{:+.1f}%"),
]
HOST_COLUMNS = [
    ("set", "{}"), ("tensors", "{}"), ("steady_us", "{:.1f}"), ("steady_us_per_tensor", "{:.2f}"),
    ("cold_us", "{:.1f}"), ("launched_us", "{:.1f}"), ("params", "{}"), ("ganadamw_steady_us", "{:.1f}"), ("gan_steady_us_beside", "{:.1f}"),
    ("ganadamw_vs_gan_", "{:.2f}x"), ("ganadamw_cold_us", "{:.1f}"), ("gan_adamw_fused_steady_us", "{:.1f}"),
    ("gan_adamw_fused_cold_us", "{:.1f}"),
]


def format_table(rows: list[dict], columns: list[tuple[str, str]] = ROW_COLUMNS) -> str:
    cells = [[("-" if row.get(name) is None else fmt.format(row[name])) for name, fmt in columns] for row in rows]
    widths = [max(len(name), *(len(c[i]) for c in cells)) for i, (name, _) in enumerate(columns)]
    lines = ["  ".join(name.ljust(w) for (name, _), w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(c, widths)) for c in cells]
    return "\n".join(lines)


def result_path(device: str, suffix: str = "") -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")
    return RESULTS / f"{slug}-{datetime.date.today().isoformat()}{suffix}.json"


def host_only(args) -> list[dict]:
    """The host side of one Triton step per set (float32): steady state and cold, and on CUDA the
    wall time per step with the kernels really launched; beside it the host side of a GANAdamW
    step and of a GAN(AdamW(fused=True)) step over the same weights plus the model's 1-D
    parameters (:func:`benchmarks.common.optimizer_host_times`)."""
    if args.device == "cpu":
        # On CPU tensors the Triton path runs only under the interpreter; no kernel runs here.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    host_times(HOST_WARM_UP_SET, args.device, steps=3, cold_steps=2)  # first-call costs, untimed
    for name in ("ganadamw", "gan+adamw-fused"):
        optimizer_host_times(HOST_WARM_UP_SET, name, args.device, steps=3, cold_steps=2)
    rows = []
    for set_name in tqdm(args.sets or list(SETS), desc="host side", unit="set", file=sys.stderr):
        row = host_times(set_name, args.device)
        row["device"] = device_name(args.device)
        if args.device == "cuda":
            row["launched_us"] = launched_step_us(set_name)
        ours = optimizer_host_times(set_name, "ganadamw", args.device)
        theirs = optimizer_host_times(set_name, "gan+adamw-fused", args.device)
        row.update(params=ours["params"], ganadamw_steady_us=ours["steady_us"], ganadamw_cold_us=ours["cold_us"],
                   ganadamw_vs_gan_=ours["steady_us"] / ours["gan_steady_us"], gan_steady_us_beside=ours["gan_steady_us"], gan_adamw_fused_steady_us=theirs["steady_us"],
                   gan_adamw_fused_cold_us=theirs["cold_us"], gan_adamw_fused_includes=FUSED_ADAMW_INCLUDES[args.device])
        rows.append(row)
    print(f"device: {device_name(args.device)}; torch {torch.__version__}; host microseconds per step, Triton launches "
          f"stubbed: gan_ over the weights' gradients (tensors); GANAdamW and GAN(AdamW(fused=True)) over the weights "
          f"and their 1-D parameters (params); GAN(AdamW(fused=True)) includes {FUSED_ADAMW_INCLUDES[args.device]}")
    print(format_table(rows, HOST_COLUMNS))
    write_rows(rows, args, "-host")
    return rows


def optimizers(args, repeats: int) -> list[dict]:
    """GANAdamW against AdamW(fused=True) and the composition, per set and dtype."""
    warm_up_optimizers(args.device, args.dtypes, list(OPTIMIZERS))
    rows = []
    combinations = [(s, d) for s in (args.sets or OPTIMIZER_SETS) for d in args.dtypes]
    for set_name, dtype_name in tqdm(combinations, desc="optimizers", unit="set", file=sys.stderr):
        rows += optimizer_rows(set_name, dtype_name, args.device, list(OPTIMIZERS), repeats)
    print(f"device: {device_name(args.device)}; torch {torch.__version__}; one optimizer step; "
          "model_accesses: reads and writes per element (AdamW alone 7)")
    print(format_table(rows, OPTIMIZER_COLUMNS))
    write_rows(rows, args, "-optimizers")
    return rows


def training_setup(workload: Workload, optimizer_name: str, device: str, capturable: bool = False,
                   seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, Callable[[], None]]:
    """``(model, optimizer, step)`` for one training run of ``workload``: the model in float32 on
    ``device``, initialised from ``seed`` (the same weights whatever the optimizer), the optimizer
    ``optimizer_name`` of :data:`OPTIMIZERS` over its parameters (``capturable``: the form a CUDA
    graph can capture), and one static batch sampled from ``seed``. ``step()`` runs one whole
    training step on that batch and mutates the parameters, their gradients, the model's buffers
    (batch-norm statistics) and the optimizer's state."""
    torch.manual_seed(seed)
    model = workload.build().to(device)
    inputs, targets = (t.to(device) for t in workload.sample(torch.Generator().manual_seed(seed)))
    optimizer = make_optimizer(optimizer_name, list(model.parameters()), capturable)

    def step() -> None:
        # In place rather than set to None: a CUDA graph replays into the gradient buffers it
        # captured, and the eager step zeroes them too, so that both modes do the same work.
        optimizer.zero_grad(set_to_none=False)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            logits = model(inputs)
            loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten())
        loss.backward()
        optimizer.step()

    return model, optimizer, step


def training_rows(workload: Workload, device: str, repeats: int) -> list[dict]:
    """One row per optimizer of :data:`OPTIMIZERS` and mode: the median, 10th and 90th percentile
    milliseconds of a whole training step of ``workload`` (eager; on CUDA also replayed from a CUDA
    graph), the number of steps timed, and the overhead in percent of the median over
    ``adamw-fused``'s in the same mode. On a CPU the eager steps of the optimizers take turns
    within each of ``repeats`` rounds (:func:`cpu_times`)."""
    runs = {name: training_setup(workload, name, device) for name in OPTIMIZERS}
    steps = {name: step for name, (_, _, step) in runs.items()}
    parameters = sum(p.numel() for p in runs["adamw-fused"][0].parameters())
    if device == "cuda":
        times = {"eager": {name: cuda_times(step, TRAINING_REP_MS) for name, step in steps.items()}}
    else:
        times = {"eager": cpu_times(steps, lambda: None, repeats)}
    del runs, steps
    if device == "cuda":
        times["graph"] = {}
        for name in OPTIMIZERS:  # one model at a time: a graph's memory pool lives as long as it does
            # The step holds the model, the optimizer and the batch, whose memory the graph reads
            # and writes outside its own pool: it must outlive every replay.
            step = training_setup(workload, name, device, capturable=True)[2]
            graph = cuda_graph(step, TRAINING_WARM_UP_STEPS)
            times["graph"][name] = cuda_times(graph.replay, TRAINING_REP_MS)
            del graph, step
    rows = []
    for mode, by_optimizer in times.items():
        adamw_s = statistics.median(by_optimizer["adamw-fused"])
        for name, values in by_optimizer.items():
            median_s = statistics.median(values)
            rows.append({
                "model": workload.model, "configuration": workload.configuration, "optimizer": name,
                "mode": mode, "batch": workload.batch, "input": workload.input, "parameters": parameters,
                "median_ms": median_s * 1e3, "p10_ms": percentile(values, 0.1) * 1e3,
                "p90_ms": percentile(values, 0.9) * 1e3, "steps": len(values),
                "overhead_pct": 100 * (median_s / adamw_s - 1), "device": device_name(device),
            })
    return rows


def training_step(args) -> list[dict]:
    """Rows of :func:`training_rows` for each model selected, in the tiny configuration on a CPU
    unless ``--full``, in the full one on CUDA."""
    configuration = "full" if args.full or args.device == "cuda" else "tiny"
    rows = []
    for model in tqdm(args.models or list(WORKLOADS), desc="training steps", unit="model", file=sys.stderr):
        rows += training_rows(WORKLOADS[model][configuration], args.device, args.repeats or TRAINING_REPEATS)
    print(f"device: {device_name(args.device)}; torch {torch.__version__}; whole training steps (forward, "
          "backward, optimizer) in bf16 autocast; overhead_pct: over adamw-fused in the same model and mode")
    print(format_table(rows, TRAINING_COLUMNS))
    write_rows(rows, args, "-training-step")
    return rows


def write_rows(rows: list[dict], args, suffix: str = "") -> None:
    """Write ``{"meta": ..., "rows": rows}`` to ``--json`` and, with ``--save``, to the results folder."""
    for path in [args.json, result_path(args.device, suffix) if args.save else None]:
        if path is not None:
            write_results(path, args.meta, rows)
            print(f"wrote {path}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), help="default: all (with --quick: %s)" % " ".join(QUICK_SETS))
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=sorted(DTYPES, reverse=True))
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--quick", action="store_true", help="the two CIFAR-size sets and fewer repeats")
    parser.add_argument("--repeats", type=int, help="timed steps per implementation on a CPU (default 30, 10 with --quick; "
                        f"{TRAINING_REPEATS} with --training-step)")
    parser.add_argument("--json", type=Path, help="write the run's meta and rows to this JSON file")
    parser.add_argument("--save", action="store_true", help="write the run's meta and rows to benchmarks/results/<device>-<date>.json")
    parser.add_argument("--host-only", action="store_true",
                        help="time the host side of a Triton step (kernel launches stubbed), steady and cold")
    parser.add_argument("--optimizers", action="store_true",
                        help="time GANAdamW against AdamW(fused=True) and GAN(AdamW(fused=True)) (default sets: "
                             + " ".join(OPTIMIZER_SETS) + ")")
    parser.add_argument("--training-step", action="store_true",
                        help="time whole training steps (forward, backward, optimizer; bf16 autocast) of each "
                             "model with each optimizer, eager and on CUDA from a CUDA graph")
    parser.add_argument("--models", nargs="+", choices=list(WORKLOADS), help="with --training-step; default: all")
    parser.add_argument("--full", action="store_true",
                        help="with --training-step: the full models and batches on a CPU too (the default on CUDA)")
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(arguments)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    args.meta = run_meta(args.device, arguments)
    if args.host_only:
        return host_only(args)
    if args.training_step:
        return training_step(args)
    if args.optimizers:
        return optimizers(args, repeats=args.repeats or (10 if args.quick else 30))
    sets = args.sets or (QUICK_SETS if args.quick else list(SETS))
    repeats = args.repeats or (10 if args.quick else 30)
    implementations = [name for name in args.implementations if available(name, args.device)]
    if "reference" not in implementations:
        implementations.insert(0, "reference")

    warm_up(args.device, args.dtypes, implementations)
    rows = []
    combinations = [(s, d) for s in sets for d in args.dtypes]
    for set_name, dtype_name in tqdm(combinations, desc="benchmark", unit="set", file=sys.stderr):
        rows += measure(set_name, dtype_name, args.device, implementations, repeats)
    print(f"device: {device_name(args.device)}; torch {torch.__version__}")
    print(format_table(rows))
    write_rows(rows, args)
    return rows


if __name__ == "__main__":
    main()
