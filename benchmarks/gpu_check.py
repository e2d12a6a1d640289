"""One prepared GPU run: prove and time everything in a single command that fits a short loan.

    python benchmarks/gpu_check.py --out DIR [--budget SECONDS] [--stages STAGE ...]
    python benchmarks/gpu_check.py --dry-run --out DIR      # the same on a CPU, tiny, no sanitizers

Run from a checkout (``PYTHONPATH=.``, or ``make gpu-check``) with the Python that has torch,
triton, pytest and pytest-benchmark; it installs nothing. Stages, each in its own time box, each
going on to the next when one fails or times out:

* ``env``: the GPU (name, SM count, L2 size), driver, torch, triton and Python versions;
* ``tests``: the whole test suite (the kernel tests run compiled on CUDA tensors), with a per-test
  time limit where pytest-timeout is installed, in parallel where pytest-xdist is;
* ``sanitizer``: compute-sanitizer's memcheck, racecheck, synccheck and initcheck, concurrently,
  over a small driver (``--driver``) that runs every mode and both statistics forms on a
  mixed-dtype list with tile-edge sizes for several steps and checks each against the float64
  evaluation (initcheck matters: a step's outputs are allocated uninitialised);
* ``bench``: the benchmark runner over every set and dtype (reference, foreach-eager, fallback,
  Triton eager and replayed from a CUDA graph; ``torch.compile`` of the reference on ResNet-56
  float32 only, which bounds compile time), with GB/s, the fraction of a copy measured in the
  same run and launches per step; and GANAdamW against AdamW(fused=True) and the composition;
* ``host``: the host side of a step per set, steady and cold, and the wall time with launches;
* ``aot``: the compiler's report (registers, spills, vector widths) for the GPU's architecture.

Writes ``DIR/results.json`` and ``DIR/results.md`` (both name the card; commit them as
``benchmarks/results/<card>-<date>-gpu-check.{json,md}``) and one log per stage, and prints a
summary table last, with each of the package's performance targets (``docs/performance.md``)
marked met or not. ``results.json`` carries a ``meta`` entry like the benchmark runner's results
files: the machine, the versions, the date and time (ISO 8601, UTC) and the command-line
arguments. ``--dry-run`` runs every stage on the CPU with tiny shapes (the kernels in Triton's
interpreter, the sanitizers skipped and said so), so that the script is tested on every CI run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STAGES = ("env", "tests", "sanitizer", "bench", "host", "aot")
# Shares of the budget per stage; a stage gets at most its share and never more than what is left.
SHARES = {"env": 0.02, "tests": 0.40, "sanitizer": 0.15, "bench": 0.28, "host": 0.07, "aot": 0.08}
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
TARGET_SPEEDUP_VS_REFERENCE = 20.0
TARGET_SPEEDUP_VS_COMPILED = 2.0
TARGET_FRACTION_OF_COPY = 0.8
TARGET_FUSED_RATIO = 1.15


@dataclass
class Stage:
    name: str
    status: str = "skipped"  # ok, failed, timeout, skipped
    seconds: float = 0.0
    note: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Run:
    returncode: int | None  # None: killed at the time limit
    output: str
    seconds: float


def run(command: list[str], timeout: float, log: Path, env: dict | None = None) -> Run:
    """Run ``command`` in its own process group, kill the group at ``timeout`` seconds, and append
    its output to ``log``."""
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=max(timeout, 1))
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        returncode = None
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command)}\n{output}\n")
    return Run(returncode, output, time.monotonic() - start)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def card_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Check:
    def __init__(self, out: Path, budget: float, dry_run: bool, arguments: list[str] | None = None) -> None:
        import torch

        self.torch = torch
        self.out = out
        self.dry_run = dry_run
        self.cuda = torch.cuda.is_available() and not dry_run
        self.device = "cuda" if self.cuda else "cpu"
        self.budget = budget
        self.deadline = time.monotonic() + budget
        self.scratch = Path(tempfile.mkdtemp(prefix="gan-gpu-check-"))
        # Without a GPU the kernels run in Triton's interpreter on CPU tensors.
        self.env = {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        if not self.cuda:
            self.env["TRITON_INTERPRET"] = "1"
        self.meta = _meta(self.device, arguments or [])

    def box(self, stage: str) -> float:
        """The stage's share of the budget among the stages that run, at most what is left."""
        share = SHARES[stage] / sum(SHARES[name] for name in self.names)
        return max(0.0, min(share * self.budget, self.deadline - time.monotonic()))

    def log(self, stage: str) -> Path:
        return self.out / f"{stage}.log"

    # -- stages -------------------------------------------------------------------------------

    def env_stage(self, stage: Stage) -> None:
        torch = self.torch
        info = {"python": platform.python_version(), "torch": torch.__version__,
                "triton": _version("triton"), "platform": platform.platform()}
        if self.cuda:
            properties = torch.cuda.get_device_properties(0)
            info.update(device=properties.name, capability=f"{properties.major}.{properties.minor}",
                        sm_count=properties.multi_processor_count,
                        l2_bytes=getattr(properties, "L2_cache_size", None),
                        memory_bytes=properties.total_memory, cuda=torch.version.cuda)
            smi = run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem",
                       "--format=csv,noheader"], self.box("env"), self.log("env")) if shutil.which("nvidia-smi") else None
            if smi is not None and smi.returncode == 0:
                info["driver"], info["max_sm_clock"], info["max_memory_clock"] = [v.strip() for v in smi.output.strip().split(",")]
        else:
            from benchmarks.common import device_name

            info["device"] = device_name("cpu")
        stage.data = info
        stage.status = "ok"
        stage.note = f"{info['device']}; torch {info['torch']}, triton {info['triton']}, Python {info['python']}"

    def tests_stage(self, stage: Stage) -> None:
        report = self.scratch / "tests.xml"
        # -v names every test as it ends, so a log cut off at the time limit still says which failed.
        command = python("-m", "pytest", "-v", "-p", "no:cacheprovider", "-rfE", "--tb=short", "--durations=15",
                         f"--junitxml={report}")
        command += ["tests/test_rule.py", "tests/test_state.py"] if self.dry_run else ["tests"]
        if has_module("pytest_timeout"):
            command.append("--timeout=120")
        if has_module("xdist") and not self.dry_run:
            command += ["-n", str(min(12, os.cpu_count() or 1))]
        result = run(command, self.box("tests"), self.log("tests"), self.env)
        counts, failed = _junit_counts(report)
        stage.data = {**counts, "failed_tests": failed}
        stage.note = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no report"
        stage.status = _status(result, ok=result.returncode == 0)

    def sanitizer_stage(self, stage: Stage) -> None:
        driver = python(str(Path(__file__).resolve()), "--driver")
        if not self.cuda:
            result = run(driver, self.box("sanitizer"), self.log("sanitizer"), self.env)
            stage.status = "skipped" if result.returncode == 0 else _status(result, ok=False)
            stage.note = ("no CUDA: sanitizers skipped; the driver alone passed in the interpreter"
                          if result.returncode == 0 else "no CUDA: sanitizers skipped; the driver alone FAILED")
            return
        sanitizer = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
        if not Path(sanitizer).exists():
            stage.note = "compute-sanitizer not found"
            return
        # Without the caching allocator every allocation is its own, so memcheck sees an access
        # past a tensor and initcheck a read of memory nothing wrote.
        env = {**self.env, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
        deadline = time.monotonic() + self.box("sanitizer")
        processes = {}
        for tool in SANITIZER_TOOLS:
            command = [sanitizer, "--tool", tool, "--error-exitcode", "99", *driver]
            processes[tool] = (command, subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                                         stderr=subprocess.STDOUT, text=True, start_new_session=True))
        found = {}
        for tool, (command, process) in processes.items():
            try:
                output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
                code = process.returncode
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                output, _ = process.communicate()
                code = None
            with self.log("sanitizer").open("a") as handle:
                handle.write(f"$ {' '.join(command)}\n{output}\n")
            # memcheck, synccheck and initcheck end with "ERROR SUMMARY: N errors", racecheck with
            # "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)".
            errors = re.findall(r"(?:ERROR SUMMARY: |RACECHECK SUMMARY: .*?\()(\d+) error", output)
            found[tool] = {"exit": code, "errors": int(errors[-1]) if errors else None, "driver_ok": "driver: ok" in output}
        stage.data = found
        stage.note = "; ".join(
            f"{tool}: " + ("timeout" if r["exit"] is None else f"{r['errors']} errors" if r["errors"] is not None else f"exit {r['exit']}")
            + ("" if r["driver_ok"] else " (driver did not finish)")
            for tool, r in found.items()
        )
        clean = all(r["exit"] == 0 and r["errors"] == 0 and r["driver_ok"] for r in found.values())
        stage.status = "ok" if clean else "timeout" if any(r["exit"] is None for r in found.values()) else "failed"

    def bench_stage(self, stage: Stage) -> None:
        runner = str(ROOT / "benchmarks" / "run.py")
        if self.dry_run:
            invocations = [["--sets", "resnet20", "--dtypes", "float32", "--repeats", "1",
                            "--implementations", "reference", "compiled", "foreach-eager", "torch"]]
        else:
            invocations = [
                ["--sets", "resnet56", "--dtypes", "float32",
                 "--implementations", "reference", "compiled", "foreach-eager", "torch", "triton"],
                ["--implementations", "reference", "foreach-eager", "torch", "triton"],
            ]
        optimizers = (["--optimizers", "--sets", "resnet20", "--dtypes", "float32", "--repeats", "1"] if self.dry_run
                      else ["--optimizers"])
        rows, optimizer_rows, statuses, deadline = [], [], [], time.monotonic() + self.box("bench")
        for i, arguments in enumerate([*invocations, optimizers]):
            path = self.scratch / f"bench{i}.json"
            result = run(python(runner, "--device", self.device, *arguments, "--json", str(path)),
                         deadline - time.monotonic(), self.log("bench"), self.env)
            statuses.append(result)
            if not path.exists():
                continue
            _, new = load_results(path)
            if arguments is optimizers:
                optimizer_rows = new
            else:
                rows += [r for r in new if not (i and r["set"] == "resnet56" and r["dtype"] == "float32"
                                                and r["implementation"] in {"reference", "foreach-eager", "torch", "triton"})]
        stage.data = {"rows": rows, "optimizer_rows": optimizer_rows, "targets": targets(rows, optimizer_rows)}
        stage.status = _status(statuses[-1], ok=all(r.returncode == 0 for r in statuses) and len(statuses) == len(invocations) + 1)
        stage.note = f"{len(rows)} step rows, {len(optimizer_rows)} optimizer rows"

    def host_stage(self, stage: Stage) -> None:
        path = self.scratch / "host.json"
        sets = ["resnet20", "synthetic_400"] if self.dry_run else []
        command = python(str(ROOT / "benchmarks" / "run.py"), "--host-only", "--device", self.device, "--json", str(path))
        result = run(command + (["--sets", *sets] if sets else []), self.box("host"), self.log("host"), self.env)
        stage.data = {"rows": load_results(path)[1] if path.exists() else []}
        stage.status = _status(result, ok=result.returncode == 0)
        stage.note = f"{len(stage.data['rows'])} sets"

    def aot_stage(self, stage: Stage) -> None:
        path = self.scratch / "aot.json"
        arch = 90
        if self.cuda:
            major, minor = self.torch.cuda.get_device_capability(0)
            arch = 10 * major + minor
        env = {k: v for k, v in self.env.items() if k != "TRITON_INTERPRET"}
        result = run(python("-m", "gan_kernels.kernels.aot", "--arch", str(arch), "--json", str(path)),
                     self.box("aot"), self.log("aot"), {**env, "TRITON_INTERPRET": "0"})
        rows = json.loads(path.read_text()) if path.exists() else []
        stage.data = {"rows": rows}
        spills = [r["kernel"] for r in rows if r["local_bytes"] or r["stack_bytes"]]
        stage.status = _status(result, ok=result.returncode == 0 and rows and not spills)
        stage.note = f"{len(rows)} kernels for sm_{arch}" + (f"; local memory in {', '.join(spills)}" if spills else ", no local memory")

    # -- the whole run ------------------------------------------------------------------------

    def __call__(self, names: list[str]) -> list[Stage]:
        self.names = names
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob("*.log"):
            stale.unlink()
        stages = []
        for name in STAGES:
            stage = Stage(name)
            if name in names:
                start = time.monotonic()
                if self.box(name) <= 0:
                    stage.status, stage.note = "timeout", "no time left in the budget"
                else:
                    try:
                        getattr(self, f"{name}_stage")(stage)
                    except Exception as error:  # noqa: BLE001 - a broken stage must not stop the others
                        stage.status, stage.note = "failed", f"{type(error).__name__}: {error}"
                stage.seconds = time.monotonic() - start
            stages.append(stage)
            self.write(stages)
        return stages

    def write(self, stages: list[Stage]) -> None:
        """Write what there is so far: each stage rewrites the results, so a run cut short keeps
        everything finished before."""
        env = next((s.data for s in stages if s.name == "env"), {})
        card = env.get("device", "unknown device")
        document = {"meta": self.meta, "card": card, "date": datetime.date.today().isoformat(), "dry_run": self.dry_run,
                    "budget_s": self.budget, "stages": [asdict(s) for s in stages]}
        (self.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
        (self.out / "results.md").write_text(markdown(document))


def _meta(device: str, arguments: list[str]) -> dict:
    """The run's meta, as the benchmark runner writes it; a failure to gather it is recorded, not raised."""
    try:
        from benchmarks.common import run_meta

        return run_meta(device, arguments)
    except Exception as error:  # noqa: BLE001 - the stages must run even so
        return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "arguments": list(arguments), "error": f"{type(error).__name__}: {error}"}


def load_results(path: Path) -> tuple[dict, list[dict]]:
    """``(meta, rows)`` of a file the benchmark runner wrote (imported here, not at the top, so
    that the script's own import stays light)."""
    from benchmarks.common import load_results as load

    return load(path)


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _status(result: Run, ok: bool) -> str:
    return "timeout" if result.returncode is None else "ok" if ok else "failed"


def _junit_counts(report: Path) -> tuple[dict, list[str]]:
    if not report.exists():
        return {}, []
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return {"passed": passed, "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}, failed


def targets(rows: list[dict], optimizer_rows: list[dict] = ()) -> list[dict]:
    """The package's performance targets (docs/performance.md), from the benchmark rows: met,
    missed, or not measured."""

    def find(set_name, dtype, implementation):
        return next((r for r in rows if (r["set"], r["dtype"], r["implementation"]) == (set_name, dtype, implementation)), None)

    found = []
    triton, reference, compiled = (find("resnet56", "float32", name) for name in ("triton", "reference", "compiled"))
    speedup = triton and reference and reference["median_ms"] / triton["median_ms"]
    found.append({"target": f"ResNet-56 float32: >= {TARGET_SPEEDUP_VS_REFERENCE:g}x the reference",
                  "value": speedup and f"{speedup:.1f}x", "met": None if speedup is None else speedup >= TARGET_SPEEDUP_VS_REFERENCE})
    over_compiled = triton and compiled and compiled["median_ms"] / triton["median_ms"]
    found.append({"target": f"ResNet-56 float32: >= {TARGET_SPEEDUP_VS_COMPILED:g}x torch.compile of the reference",
                  "value": over_compiled and f"{over_compiled:.1f}x",
                  "met": None if over_compiled is None else over_compiled >= TARGET_SPEEDUP_VS_COMPILED})
    for set_name in ("gpt2_small", "tensor_64m"):
        for dtype in ("float32", "bfloat16"):
            row = find(set_name, dtype, "triton")
            fraction = row and row["fraction_of_copy_bw"]
            found.append({"target": f"{set_name} {dtype}: >= {TARGET_FRACTION_OF_COPY:.0%} of copy bandwidth",
                          "value": fraction and f"{fraction:.0%}", "met": None if fraction is None else fraction >= TARGET_FRACTION_OF_COPY})
    fused = next((r for r in optimizer_rows if (r["set"], r["dtype"], r["optimizer"]) == ("gpt2_small", "float32", "ganadamw")), None)
    ratio = fused and fused["ratio_to_fused_adamw"]
    found.append({"target": f"gpt2_small float32: GANAdamW <= {TARGET_FUSED_RATIO:g}x AdamW(fused=True)",
                  "value": ratio and f"{ratio:.2f}x", "met": None if ratio is None else ratio <= TARGET_FUSED_RATIO})
    return found


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("-" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(document: dict) -> str:
    stages = {s["name"]: s for s in document["stages"]}
    parts = [f"# GPU check: {document['card']}, {document['date']}" + (" (dry run on the CPU)" if document["dry_run"] else "")]
    meta = document.get("meta") or {}
    if meta:
        parts.append(f"Started {meta.get('date')}; gan_kernels {meta.get('gan_kernels', '-')}; "
                     f"arguments: `{' '.join(meta.get('arguments') or []) or '(none)'}`")
    env = stages.get("env", {}).get("data") or {}
    if env:
        parts.append(table(["field", "value"], [[k, v] for k, v in env.items()]))
    parts.append(table(["stage", "status", "seconds", "note"],
                       [[s["name"], s["status"], f"{s['seconds']:.0f}", s["note"]] for s in document["stages"]]))
    bench = stages.get("bench", {}).get("data") or {}
    if bench.get("targets"):
        parts.append("## Targets (docs/performance.md)\n\n" + table(["target", "measured", "met"], [
            [t["target"], t["value"], {True: "yes", False: "NO", None: "not measured"}[t["met"]]] for t in bench["targets"]]))
    if bench.get("rows"):
        columns = ["set", "dtype", "implementation", "median_ms", "speedup_vs_reference", "effective_gb_s",
                   "fraction_of_copy_bw", "launches", "graph_replay_ms"]
        parts.append("## Steps\n\n" + table(columns, [[_cell(r.get(c)) for c in columns] for r in bench["rows"]]))
    if bench.get("optimizer_rows"):
        columns = ["set", "dtype", "optimizer", "median_ms", "ratio_to_fused_adamw", "model_accesses", "model_ratio", "launches"]
        parts.append("## Optimizer steps\n\n" + table(columns, [[_cell(r.get(c)) for c in columns] for r in bench["optimizer_rows"]]))
    host = (stages.get("host", {}).get("data") or {}).get("rows")
    if host:
        columns = ["set", "tensors", "steady_us", "steady_us_per_tensor", "cold_us", "launched_us"]
        parts.append("## Host side per step (microseconds)\n\n" + table(columns, [[_cell(r.get(c)) for c in columns] for r in host]))
    aot = (stages.get("aot", {}).get("data") or {}).get("rows")
    if aot:
        columns = ["kernel", "arch", "registers", "local_bytes", "shared_bytes", "vector_loads", "vector_stores"]
        parts.append("## Compiler report\n\n" + table(columns, [[r.get(c) for c in columns] for r in aot]))
    failed = (stages.get("tests", {}).get("data") or {}).get("failed_tests")
    if failed:
        parts.append("## Failed tests\n\n" + "\n".join(f"- `{name}`" for name in failed))
    return "\n\n".join(parts) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return "-" if value is None else str(value)


def summary(stages: list[Stage]) -> str:
    lines = [f"{'stage':<10} {'status':<8} {'seconds':>7}  note"]
    lines += [f"{s.name:<10} {s.status:<8} {s.seconds:>7.0f}  {s.note}" for s in stages]
    bench = next((s for s in stages if s.name == "bench"), None)
    found = bench.data.get("targets", []) if bench else []
    if found:
        lines.append("performance targets (docs/performance.md):")
    for target in found:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        lines.append(f"target  {verdict:<12} {target['value'] or '-':>7}  {target['target']}")
    return "\n".join(lines)


def driver() -> int:
    """What the sanitizers watch: every mode and both statistics forms on a mixed-dtype list with
    tile-edge sizes (and a strided view, which is staged), several steps each, every step against
    the float64 evaluation. Prints ``driver: ok`` at the end; raises on a wrong result."""
    import torch

    from gan_kernels import plan as plans
    from gan_kernels.kernels.layout import tile_elements
    from tests.helpers import check_steps_against_exact, random_grads

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rounding = "nearest" if device == "cuda" else "truncate"
    f32, bf16 = tile_elements(torch.float32), tile_elements(torch.bfloat16)
    shapes = [(1,), (f32 - 1,), (f32,), (f32 + 1,), (bf16 - 1,), (bf16 + 1,), (33, 7), (0,), (2 * f32 + 3,)]
    dtypes = [torch.float32, torch.float32, torch.float32, torch.float32, torch.bfloat16, torch.bfloat16,
              torch.float16, torch.float32, torch.float16]
    for form in ("single_read", "two_pass"):
        for mode in ("gan", "center", "gc", "znorm"):
            grads = [g.to(device) for g in random_grads(shapes, dtypes, seed=len(mode), scale=1e-3, offset=2e-4)]
            base = torch.randn(40, 30, device=device)
            grads.append(base[:, ::3])

            def kernel_step(gradients, state, mode, form=form):
                plan = plans.lookup(gradients, "triton") or plans.build(gradients, "triton")
                return plan.step(gradients, state, mode, stats_form=form)

            check_steps_against_exact(kernel_step, grads, mode, steps=3, rounding=rounding)
            print(f"driver: {form} {mode} matches the float64 evaluation", flush=True)
    if device == "cuda":
        torch.cuda.synchronize()
    print("driver: ok", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="the folder for results.json, results.md and the logs")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny shapes, no sanitizers")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (default 450)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="default: all")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:
        return driver()
    if args.out is None:
        parser.error("--out DIR is required")
    check = Check(args.out, args.budget, args.dry_run, sys.argv[1:] if argv is None else list(argv))
    stages = check(args.stages)
    print(summary(stages))
    return 0 if all(s.status in ("ok", "skipped") for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
