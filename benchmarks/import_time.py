"""What ``import gan_kernels`` adds to ``import torch``, in fresh processes, and print one table.

    python benchmarks/import_time.py [--processes N] [--json PATH]

Each of N fresh Python processes (default 5), started from the repository root so that the
checkout's package is the one imported, times ``import torch`` and then ``import gan_kernels``
with ``time.perf_counter()`` around each, and reports which modules the second import added:
whether it loaded ``triton`` or ``torch._dynamo`` (neither is needed until the Triton path runs or
``torch.compile`` traces a call). A row per process; the summary is the median over the processes
of the time ``import gan_kernels`` adds. The first process also pays for a cold file cache; the
median keeps it out.

``--json PATH`` writes ``{"meta": ..., "rows": [...]}`` as the benchmark runner does, its meta
also holding ``processes``, ``median_torch_s`` and ``median_added_s``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import run_meta, write_results  # noqa: E402
from benchmarks.run import format_table  # noqa: E402

# Run by ``python -c`` in each process: one JSON line.
CHILD = """
import json, sys, time
start = time.perf_counter()
import torch
torch_done = time.perf_counter()
before = set(sys.modules)
import gan_kernels
done = time.perf_counter()
added = set(sys.modules) - before
print(json.dumps({
    "torch_s": torch_done - start,
    "added_s": done - torch_done,
    "modules_added": len(added),
    "loads_triton": "triton" in added,
    "loads_dynamo": "torch._dynamo" in added,
    "gan_kernels_file": gan_kernels.__file__,
}))
"""

COLUMNS = [("process", "{}"), ("torch_s", "{:.3f}"), ("added_s", "{:.3f}"), ("modules_added", "{}"),
           ("loads_triton", "{}"), ("loads_dynamo", "{}")]


def measure_once(python: str = sys.executable) -> dict:
    """One fresh process: the seconds of ``import torch``, then those ``import gan_kernels`` adds."""
    done = subprocess.run([python, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(processes: int, python: str = sys.executable) -> list[dict]:
    return [{"process": i, **measure_once(python)} for i in range(processes)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=5, help="fresh processes to time (default 5)")
    parser.add_argument("--json", type=Path, help="write the run's meta and rows to this JSON file")
    arguments = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(arguments)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    rows = measure(args.processes)
    summary = {
        "processes": args.processes,
        "median_torch_s": statistics.median(row["torch_s"] for row in rows),
        "median_added_s": statistics.median(row["added_s"] for row in rows),
    }
    print(format_table(rows, COLUMNS))
    print(f"import gan_kernels adds {summary['median_added_s']:.3f} s to import torch "
          f"({summary['median_torch_s']:.3f} s), median of {args.processes} processes; package: {rows[0]['gan_kernels_file']}")
    if args.json:
        write_results(args.json, {**run_meta("cpu", arguments), **summary}, rows)
    return {**summary, "rows": rows}


if __name__ == "__main__":
    main()
