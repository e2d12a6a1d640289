"""Time GAN implementations on real models' gradient shapes and print one table.

    python benchmarks/run.py [--sets resnet56 vgg16_bn] [--dtypes float32] [--repeats 20] [--json PATH]

Each row: the median wall time of one step (gradients restored between steps, outside the timing),
the speedup over the reference, the effective bandwidth under the 3-accesses-per-element model (one
read for the statistics, one read and one write to apply), and the time over the memory floor: 3
accesses per element at the bandwidth of a plain copy of the same tensors, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.shapes import SETS  # noqa: E402
from gan_kernels import GANState, gan_, reference  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def implementations() -> dict[str, Callable]:
    return {
        "reference": lambda grads, state: reference.gan_(grads, state),
        "torch": lambda grads, state: gan_(grads, state, backend="torch"),
    }


def make_grads(shapes, dtype, device, seed=0) -> list[torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return [
        (torch.randn(shape, generator=generator) * 1e-2 + 1e-3).to(dtype=dtype, device=device)
        for shape in shapes
    ]


def interleaved_medians(
    candidates: dict[str, Callable[[], object]], restore: Callable[[], object], repeats: int
) -> dict[str, float]:
    """Median wall time of each candidate, timed in turn within every round so that a drift in the
    machine's speed (memory bandwidth varies on shared hosts) affects all of them alike. ``restore``
    runs, untimed, before each call."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(repeats + 2):
        for name, fn in candidates.items():
            restore()
            start = time.perf_counter()
            fn()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def run(sets, dtypes, repeats, device="cpu") -> list[dict]:
    rows = []
    device_name = platform.processor() or platform.machine()
    for set_name in sets:
        shapes = SETS[set_name]()
        elements = sum(math.prod(s) for s in shapes)
        for dtype_name in dtypes:
            source = make_grads(shapes, DTYPES[dtype_name], device)
            grads = [g.clone() for g in source]
            copies = [g.clone() for g in source]
            candidates = {"copy": lambda: torch._foreach_copy_(copies, source)}
            for impl_name, impl in implementations().items():
                candidates[impl_name] = lambda impl=impl, state=GANState(): impl(grads, state)
            times = interleaved_medians(candidates, lambda: torch._foreach_copy_(grads, source), repeats)
            copy_time = times.pop("copy")
            floor = 1.5 * copy_time  # a copy is 2 accesses per element; GAN needs 3
            element_size = source[0].element_size()
            for impl_name, seconds in times.items():
                rows.append(
                    {
                        "set": set_name,
                        "implementation": impl_name,
                        "dtype": dtype_name,
                        "device": device_name,
                        "tensors": len(shapes),
                        "elements": elements,
                        "median_ms": seconds * 1e3,
                        "speedup_vs_reference": times["reference"] / seconds,
                        "effective_gb_s": 3 * elements * element_size / seconds / 1e9,
                        "copy_gb_s": 2 * elements * element_size / copy_time / 1e9,
                        "time_over_floor": seconds / floor,
                    }
                )
    return rows


def print_table(rows: list[dict]) -> None:
    columns = [
        ("set", "{}"), ("implementation", "{}"), ("dtype", "{}"), ("tensors", "{}"),
        ("median_ms", "{:.3f}"), ("speedup_vs_reference", "{:.2f}x"),
        ("effective_gb_s", "{:.1f}"), ("copy_gb_s", "{:.1f}"), ("time_over_floor", "{:.2f}x"),
    ]
    cells = [[fmt.format(row[name]) for name, fmt in columns] for row in rows]
    widths = [max(len(name), *(len(c[i]) for c in cells)) for i, (name, _) in enumerate(columns)]
    print("  ".join(name.ljust(w) for (name, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["resnet56", "vgg16_bn"], choices=sorted(SETS))
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = run(args.sets, args.dtypes, args.repeats)
    print(f"device: {rows[0]['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
