"""One prepared GPU run: prove and time everything in a single command that fits a short loan.

    python benchmarks/gpu_check.py --out DIR [--budget SECONDS] [--stages STAGE ...]   # default budget 420 s
    python benchmarks/gpu_check.py --dry-run --out DIR      # the same on a CPU, tiny, no sanitizers

Run from a checkout (``PYTHONPATH=.``, or ``make gpu-check``) with the Python that has torch,
triton, pytest and pytest-benchmark; it installs nothing. Stages, each in its own time box, each
going on to the next when one fails or times out:

* ``env``: the GPU (name, SM count, L2 size), driver, torch, triton and Python versions;
* ``tests``: every test marked ``gpu`` (those that run on CUDA tensors where there is a GPU; the
  rest are the CPU suite that CI runs), one pytest process per test file, all files at once, each
  with a JUnit report merged into the stage's counts and list of failures. A file still running at
  the end of the stage's time box is killed and its counts are read off its verbose log, with the
  test it was in; a test past 90 s is stopped where pytest-timeout is installed;
* ``sanitizer``: compute-sanitizer's memcheck, racecheck, synccheck and initcheck, concurrently,
  over a small driver (``--driver``) that runs every kernel and checks each result: every mode,
  both statistics forms and a rule of one's own on a mixed-dtype list with tile-edge sizes, and
  GANAdamW's update (float32 and bfloat16 parameters, two groups, amsgrad off and on, a non-finite
  step) against GAN(AdamW) (initcheck matters: a step's outputs are allocated uninitialised). Each
  tool must report on a driver that finished;
* ``bench``: GANAdamW against AdamW(fused=True) and GAN(AdamW(fused=True)), eager and replayed from
  a CUDA graph, then the benchmark runner over every set and dtype (reference, foreach-eager,
  fallback, Triton eager and replayed from a CUDA graph; ``torch.compile`` of the reference on
  ResNet-56 float32 only, which bounds compile time), with GB/s, the fraction of a copy measured
  in the same run and launches per step;
* ``train``: whole training steps (forward, backward, optimizer; bf16 autocast) of ResNet-56 and
  GPT-2 small with AdamW(fused=True), GAN(AdamW(fused=True)) and GANAdamW, eager and captured in a
  CUDA graph, and GAN's overhead in percent (``run.py --training-step``);
* ``host``: the host side of a step per set, steady and cold, and the wall time with launches;
* ``aot``: the compiler's report (registers, spills, vector widths) for the GPU's architecture.

Writes ``DIR/results.json`` and ``DIR/results.md`` (both name the card; commit them as
``benchmarks/results/<card>-<date>-gpu-check-<n>.{json,md}``) and one log per stage, and prints a
summary table last, with each of the package's performance targets (``docs/performance.md``)
marked met or not. ``results.json`` carries a ``meta`` entry like the benchmark runner's results
files: the machine, the versions, the date and time (ISO 8601, UTC) and the command-line
arguments. ``--dry-run`` runs every stage on the CPU with tiny shapes (the kernels in Triton's
interpreter, the tests stage on three files, the sanitizers skipped and said so, the training
steps in their tiny configuration), so that the script is tested on every CI run.
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
STAGES = ("env", "tests", "sanitizer", "bench", "train", "host", "aot")
# Shares of the budget per stage; a stage gets at most its share and never more than what is left.
SHARES = {"env": 0.02, "tests": 0.32, "sanitizer": 0.15, "bench": 0.22, "train": 0.14, "host": 0.06, "aot": 0.09}
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
TARGET_SPEEDUP_VS_REFERENCE = 20.0
TARGET_SPEEDUP_VS_COMPILED = 2.0
TARGET_FRACTION_OF_COPY = 0.8
TARGET_FUSED_RATIO = 1.15
# GANAdamW's overhead on a whole training step over AdamW(fused=True), in percent.
TARGET_TRAINING_OVERHEAD = {"eager": 3.0, "graph": 1.0}


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


# The tests stage: each test file marked ``gpu`` in a pytest process of its own, in parallel; a
# test past TEST_TIMEOUT_S seconds is stopped where pytest-timeout is installed (its traceback is
# dumped at half that time in any case), and a file past the stage's time box is killed.
TEST_TIMEOUT_S = 90
DRY_RUN_TEST_FILES = ("tests/test_rule.py", "tests/test_amp.py", "tests/test_compile.py")
_VERBOSE_RESULT = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
_VERBOSE_START = re.compile(r"^(\S+::\S+) ?$")


def gpu_test_files() -> list[str]:
    """The test files that hold tests marked ``gpu``, largest first (so the longest start first)."""
    files = [path for folder in ("tests", "benchmarks") for path in (ROOT / folder).glob("test_*.py")
             if "pytest.mark.gpu" in path.read_text()]
    return [str(path.relative_to(ROOT)) for path in sorted(files, key=lambda path: (-path.stat().st_size, path.name))]


def run_test_files(files: list[str], timeout: float, scratch: Path, log: Path, env: dict, options: list[str],
                   workers: int) -> list[dict]:
    """Run each test file in its own ``pytest -v`` process, at most ``workers`` at a time, and kill
    whatever still runs ``timeout`` seconds after the start. One dict per file: ``status`` (ok,
    failed, timeout), ``seconds``, ``counts`` and ``failed`` (from its JUnit report, or, for a file
    killed before writing one, from its verbose log) and ``running`` (the test it was in when killed)."""
    scratch.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    pending, running, results = list(files), {}, {}
    while pending or running:
        while pending and len(running) < workers:
            file = pending.pop(0)
            name = re.sub(r"[^A-Za-z0-9]+", "-", file)
            report, output = scratch / f"{name}.xml", scratch / f"{name}.log"
            command = python("-m", "pytest", "-v", "-p", "no:cacheprovider", "-rfE", "--tb=short",
                             f"--junitxml={report}", *options, file)
            with output.open("w") as handle:
                process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": threads, **env},
                                           stdout=handle, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            running[file] = (process, command, report, output, time.monotonic())
        time.sleep(0.1)
        for file, (process, command, report, output, start) in list(running.items()):
            code = process.poll()
            if code is None and time.monotonic() < deadline:
                continue
            if code is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            del running[file]
            text = output.read_text()
            with log.open("a") as handle:
                handle.write(f"$ {' '.join(command)}\n{text}\n")
            counts, failed = _junit_counts(report) if code is not None else ({}, [])
            running_test = None
            if not counts:
                counts, failed, running_test = _verbose_counts(text)
            # Exit 5: nothing collected (every test of the file deselected), not a failure.
            status = "timeout" if code is None else "ok" if code in (0, 5) else "failed"
            results[file] = {"file": file, "status": status, "seconds": round(time.monotonic() - start, 1),
                             "counts": counts, "failed": failed, "running": running_test}
    return [results[file] for file in files]


def _verbose_counts(output: str) -> tuple[dict, list[str], str | None]:
    """Counts and failures read off ``pytest -v`` output, and the test that started but did not
    end (``None`` if none): what a process killed before writing its report leaves."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    key = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped",
           "XFAIL": "skipped"}
    failed, started = [], None
    for line in output.splitlines():
        result = _VERBOSE_RESULT.match(line)
        if result:
            counts[key[result.group(2)]] += 1
            if result.group(2) in ("FAILED", "ERROR"):
                failed.append(result.group(1))
            started = None
        elif _VERBOSE_START.match(line):
            started = _VERBOSE_START.match(line).group(1)
    return counts, failed, started


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
        files = DRY_RUN_TEST_FILES if self.dry_run else gpu_test_files()
        options = ["-m", "gpu", "-o", f"faulthandler_timeout={TEST_TIMEOUT_S // 2}"]
        if has_module("pytest_timeout"):
            options.append(f"--timeout={TEST_TIMEOUT_S}")
        if not self.dry_run:
            options.append("--benchmark-disable")  # the bench stage times; here each benchmark runs once
        workers = max(1, min(len(files), os.cpu_count() or 1))
        runs = run_test_files(files, self.box("tests"), self.scratch / "tests", self.log("tests"), self.env, options, workers)
        totals = {k: sum(r["counts"].get(k, 0) for r in runs) for k in ("passed", "failed", "errors", "skipped")}
        unfinished = [r["file"] for r in runs if r["status"] == "timeout"]
        stage.data = {**totals, "failed_tests": [name for r in runs for name in r["failed"]],
                      "unfinished_files": unfinished, "running_when_killed": [r["running"] for r in runs if r["running"]],
                      "files": runs}
        stage.note = f"{len(files)} files in {workers} processes: " + ", ".join(f"{v} {k}" for k, v in totals.items())
        if unfinished:
            stage.note += f"; {len(unfinished)} file(s) cut off at the time limit: {', '.join(unfinished)}"
        if unfinished:
            stage.status = "timeout"
        else:
            stage.status = "ok" if all(r["status"] == "ok" for r in runs) and totals["passed"] else "failed"

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
            found[tool] = sanitizer_result(code, output)
        stage.data = found
        stage.note = "; ".join(f"{tool}: {sanitizer_note(r)}" for tool, r in found.items())
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
        # GANAdamW first: it has never been timed on a GPU, the gan_ steps have.
        for i, arguments in enumerate([optimizers, *invocations], start=-1):
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
                rows += [r for r in new if not (i > 0 and r["set"] == "resnet56" and r["dtype"] == "float32"
                                                and r["implementation"] in {"reference", "foreach-eager", "torch", "triton"})]
        stage.data = {"rows": rows, "optimizer_rows": optimizer_rows, "targets": targets(rows, optimizer_rows)}
        stage.status = _status(statuses[-1], ok=all(r.returncode == 0 for r in statuses) and len(statuses) == len(invocations) + 1)
        stage.note = f"{len(rows)} step rows, {len(optimizer_rows)} optimizer rows"

    def train_stage(self, stage: Stage) -> None:
        """Whole training steps (forward, backward, optimizer) with and without GAN: the tiny
        configuration on a CPU, ResNet-56 and GPT-2 small on a GPU (``run.py --training-step``)."""
        path = self.scratch / "train.json"
        command = python(str(ROOT / "benchmarks" / "run.py"), "--training-step", "--device", self.device, "--json", str(path))
        if self.dry_run:
            command += ["--repeats", "2"]
        result = run(command, self.box("train"), self.log("train"), self.env)
        rows = load_results(path)[1] if path.exists() else []
        stage.data = {"rows": rows, "targets": training_targets(rows)}
        stage.status = _status(result, ok=result.returncode == 0 and bool(rows))
        stage.note = f"{len(rows)} rows"

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
    for dtype in ("float32", "bfloat16"):
        fused = next((r for r in optimizer_rows if (r["set"], r["dtype"], r["optimizer"]) == ("gpt2_small", dtype, "ganadamw")), None)
        ratio = fused and fused.get("graph_ratio_to_fused_adamw")
        found.append({"target": f"gpt2_small {dtype}, CUDA-graph replay: GANAdamW <= {TARGET_FUSED_RATIO:g}x AdamW(fused=True)",
                      "value": ratio and f"{ratio:.2f}x", "met": None if ratio is None else ratio <= TARGET_FUSED_RATIO})
    return found


def sanitizer_result(code: int | None, output: str) -> dict:
    """One compute-sanitizer tool's verdict from its exit status (None: killed) and output.

    memcheck, synccheck and initcheck end with "ERROR SUMMARY: N errors", racecheck with
    "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)". The tools run with
    ``--error-exitcode 99``, so exit status 0 without a summary line also means no error."""
    errors = re.findall(r"(?:ERROR SUMMARY: |RACECHECK SUMMARY: .*?\()(\d+) error", output)
    return {"exit": code, "errors": int(errors[-1]) if errors else 0 if code == 0 else None,
            "summary": bool(errors), "driver_ok": "driver: ok" in output}


def sanitizer_note(result: dict) -> str:
    if result["exit"] is None:
        note = "timeout"
    elif result["errors"] is None:
        note = f"exit {result['exit']}"
    else:
        note = f"{result['errors']} errors" + ("" if result["summary"] else f" (exit {result['exit']}, no summary line)")
    return note + ("" if result["driver_ok"] else " (driver did not finish)")


def training_targets(rows: list[dict]) -> list[dict]:
    """GANAdamW's overhead on a whole training step over AdamW(fused=True), per model and mode,
    against its target (docs/performance.md). Rows of the tiny configuration (a CPU's) show their
    overhead but are not judged."""
    found = []
    for model in dict.fromkeys(row["model"] for row in rows):
        for mode, limit in TARGET_TRAINING_OVERHEAD.items():
            row = next((r for r in rows if (r["model"], r["mode"], r["optimizer"]) == (model, mode, "ganadamw")), None)
            overhead = row and row.get("overhead_pct")
            judged = overhead is not None and row.get("configuration") == "full"
            found.append({"target": f"{model} training step, {mode}: GANAdamW overhead <= {limit:g}%",
                          "value": None if overhead is None else f"{overhead:+.1f}%",
                          "met": overhead <= limit if judged else None})
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
    found = [t for s in document["stages"] for t in (s.get("data") or {}).get("targets", [])]
    if found:
        parts.append("## Targets (docs/performance.md)\n\n" + table(["target", "measured", "met"], [
            [t["target"], t["value"], {True: "yes", False: "NO", None: "not measured"}[t["met"]]] for t in found]))
    if bench.get("rows"):
        columns = ["set", "dtype", "implementation", "median_ms", "speedup_vs_reference", "effective_gb_s",
                   "fraction_of_copy_bw", "launches", "graph_replay_ms"]
        parts.append("## Steps\n\n" + table(columns, [[_cell(r.get(c)) for c in columns] for r in bench["rows"]]))
    if bench.get("optimizer_rows"):
        columns = ["set", "dtype", "optimizer", "median_ms", "ratio_to_fused_adamw", "graph_replay_ms",
                   "graph_ratio_to_fused_adamw", "model_accesses", "model_ratio", "launches"]
        parts.append("## Optimizer steps (model_ratio: the memory model's accesses over AdamW's 7)\n\n"
                     + table(columns, [[_cell(r.get(c)) for c in columns] for r in bench["optimizer_rows"]]))
    train = (stages.get("train", {}).get("data") or {}).get("rows")
    if train:
        columns = ["model", "configuration", "optimizer", "mode", "median_ms", "overhead_pct"]
        parts.append("## Training steps (forward, backward, optimizer; bf16 autocast)\n\n"
                     + table(columns, [[_cell(r.get(c)) for c in columns] for r in train]))
    host = (stages.get("host", {}).get("data") or {}).get("rows")
    if host:
        columns = ["set", "tensors", "steady_us", "steady_us_per_tensor", "cold_us", "launched_us"]
        parts.append("## Host side per step (microseconds)\n\n" + table(columns, [[_cell(r.get(c)) for c in columns] for r in host]))
    aot = (stages.get("aot", {}).get("data") or {}).get("rows")
    if aot:
        columns = ["kernel", "arch", "registers", "local_bytes", "shared_bytes", "vector_loads", "vector_stores"]
        parts.append("## Compiler report\n\n" + table(columns, [[r.get(c) for c in columns] for r in aot]))
    tests = stages.get("tests", {}).get("data") or {}
    if tests.get("files"):
        parts.append("## Test files (pytest -m gpu, one process each)\n\n" + table(
            ["file", "status", "seconds", "passed", "failed", "errors", "skipped", "running when killed"],
            [[r["file"], r["status"], r["seconds"], *(r["counts"].get(k, 0) for k in ("passed", "failed", "errors", "skipped")),
              r["running"]] for r in tests["files"]]))
    if tests.get("failed_tests"):
        parts.append("## Failed tests\n\n" + "\n".join(f"- `{name}`" for name in tests["failed_tests"]))
    return "\n\n".join(parts) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return "-" if value is None else str(value)


def summary(stages: list[Stage]) -> str:
    lines = [f"{'stage':<10} {'status':<8} {'seconds':>7}  note"]
    lines += [f"{s.name:<10} {s.status:<8} {s.seconds:>7.0f}  {s.note}" for s in stages]
    found = [t for s in stages for t in s.data.get("targets", [])]
    if found:
        lines.append("performance targets (docs/performance.md):")
    for target in found:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        lines.append(f"target  {verdict:<12} {target['value'] or '-':>7}  {target['target']}")
    return "\n".join(lines)


def driver() -> int:
    """What the sanitizers watch: every kernel the package launches, each result checked.

    * ``gan_``'s kernels: every mode and both statistics forms, and a rule of one's own, on a
      mixed-dtype list with tile-edge sizes (and a strided view, which is staged), several steps
      each, every step against the float64 evaluation;
    * GANAdamW's update kernel: float32 and bfloat16 parameters with tile-edge sizes in two
      parameter groups, amsgrad off and on, the built-in rule and a rule of one's own, against
      GAN(torch.optim.AdamW) step by step, with a non-finite step in the middle that must change
      nothing.

    Prints ``driver: ok`` at the end; raises on a wrong result."""
    import torch

    from gan_kernels import plan as plans
    from gan_kernels.kernels.layout import tile_elements
    from tests.helpers import check_steps_against_exact, random_grads
    from tests.test_rule import counting_rule

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rounding = "nearest" if device == "cuda" else "truncate"
    f32, bf16 = tile_elements(torch.float32), tile_elements(torch.bfloat16)
    shapes = [(1,), (f32 - 1,), (f32,), (f32 + 1,), (bf16 - 1,), (bf16 + 1,), (33, 7), (0,), (2 * f32 + 3,)]
    dtypes = [torch.float32, torch.float32, torch.float32, torch.float32, torch.bfloat16, torch.bfloat16,
              torch.float16, torch.float32, torch.float16]
    cases = [(form, mode, None) for form in ("single_read", "two_pass") for mode in ("gan", "center", "gc", "znorm")]
    for form, mode, rule in [*cases, ("single_read", "gan", counting_rule)]:
        grads = [g.to(device) for g in random_grads(shapes, dtypes, seed=len(mode), scale=1e-3, offset=2e-4)]
        base = torch.randn(40, 30, device=device)
        grads.append(base[:, ::3])

        def kernel_step(gradients, state, mode, form=form, rule=rule):
            plan = plans.lookup(gradients, "triton") or plans.build(gradients, "triton")
            return plan.step(gradients, state, mode, rule, stats_form=form)

        check_steps_against_exact(kernel_step, grads, mode, steps=3, rounding=rounding, rule=rule)
        print(f"driver: {form} {mode}{' with a rule of its own' if rule else ''} matches the float64 evaluation", flush=True)
    for dtype, amsgrad, rule in ((torch.float32, False, None), (torch.bfloat16, True, None), (torch.float32, True, counting_rule)):
        _drive_ganadamw(dtype, amsgrad, rule, truncating=device == "cpu")
        print(f"driver: GANAdamW {str(dtype)[6:]} amsgrad={amsgrad}{' with a rule of its own' if rule else ''} "
              "matches GAN(AdamW)", flush=True)
    if device == "cuda":
        torch.cuda.synchronize()
    print("driver: ok", flush=True)
    return 0


def _drive_ganadamw(dtype, amsgrad: bool, rule, truncating: bool, steps: int = 4) -> None:
    """GANAdamW on its fused kernels (three launches a step, checked) against GAN(AdamW), two
    parameter groups, step by step; step 2 is first tried with a NaN gradient, which must leave
    every parameter exactly as it was."""
    import torch

    from gan_kernels import GAN, GANAdamW
    from gan_kernels.kernels import launch
    from tests.test_adamw import assert_close, bits, make_params, param_groups, set_grads

    ours, theirs = make_params(dtype), make_params(dtype)
    fused = GANAdamW(param_groups(ours, 2), lr=1e-2, amsgrad=amsgrad, backend="triton", rule=rule)
    composed = GAN(torch.optim.AdamW(param_groups(theirs, 2), lr=1e-2, amsgrad=amsgrad), rule=rule)
    for step in range(steps):
        if step == 2:
            set_grads(ours, step)
            ours[0].grad[1, 2] = float("nan")
            before = [bits(p.detach()) for p in ours]
            fused.step()
            if not fused.last_stats.nonfinite.item() or any(not torch.equal(bits(p.detach()), b) for p, b in zip(ours, before)):
                raise AssertionError("GANAdamW changed parameters on a non-finite step")
        set_grads(ours, step)
        set_grads(theirs, step)
        with launch.count_launches() as launches:
            fused.step()
        if launches[0] != 3:
            raise AssertionError(f"GANAdamW took {launches[0]} kernel launches, not the fused path's 3")
        composed.step()
        # The interpreter truncates float32 to bfloat16 (compiled kernels round to nearest): up to
        # one bfloat16 ulp more per step there.
        assert_close(ours, theirs, dtype, extra=(step + 1) * 2.0**-8 if truncating and dtype == torch.bfloat16 else 0.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="the folder for results.json, results.md and the logs")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny shapes, no sanitizers")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run (default 420)")
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
