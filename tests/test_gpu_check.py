"""benchmarks/gpu_check.py: its dry run end to end on the CPU, so that the prepared GPU run cannot
rot between loans of a GPU, and the pieces that judge a run (time boxes, targets, test reports)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import common, gpu_check

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the check itself runs, not its dry run")
def test_dry_run_writes_every_stage_and_a_summary(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads((out / "results.json").read_text())
    assert document["dry_run"] and document["card"]
    meta = document["meta"]
    assert meta["arguments"] == ["--dry-run", "--out", str(out)] and meta["device"] == "cpu"
    assert meta["device_name"] == document["card"] and meta["torch"] == torch.__version__
    assert {"date", "cpu", "cpu_threads", "platform", "python", "triton", "gan_kernels", "cuda", "gpu",
            "compute_capability"} <= set(meta)
    stages = {s["name"]: s for s in document["stages"]}
    assert list(stages) == list(gpu_check.STAGES)
    assert {name: s["status"] for name, s in stages.items()} == {
        "env": "ok", "tests": "ok", "sanitizer": "skipped", "bench": "ok", "train": "ok", "host": "ok", "aot": "ok"}
    assert "sanitizers skipped" in stages["sanitizer"]["note"] and "driver alone passed" in stages["sanitizer"]["note"]
    tests = stages["tests"]["data"]
    assert tests["passed"] > 0 and tests["failed"] == 0 and tests["errors"] == 0 and not tests["unfinished_files"]
    assert [r["file"] for r in tests["files"]] == list(gpu_check.DRY_RUN_TEST_FILES)
    assert tests["passed"] == sum(r["counts"]["passed"] for r in tests["files"])
    train = stages["train"]["data"]["rows"]
    assert {(r["model"], r["optimizer"], r["mode"]) for r in train} == {
        (model, optimizer, "eager") for model in ("resnet56", "gpt2_small") for optimizer in common.OPTIMIZERS}
    assert all(r["median_ms"] > 0 for r in train)
    assert stages["train"]["data"]["targets"] and all(t["met"] is None for t in stages["train"]["data"]["targets"])
    assert {r["implementation"] for r in stages["bench"]["data"]["rows"]} == {"reference", "compiled", "foreach-eager", "torch"}
    assert {r["optimizer"] for r in stages["bench"]["data"]["optimizer_rows"]} == {"adamw-fused", "gan+adamw-fused", "ganadamw"}
    assert [r["set"] for r in stages["host"]["data"]["rows"]] == ["resnet20", "synthetic_400"]
    from gan_kernels.kernels import aot

    assert [r["kernel"] for r in stages["aot"]["data"]["rows"]] == [variant[0] for variant in aot.variants()]
    driver_log = (out / "sanitizer.log").read_text()
    assert "driver: ok" in driver_log and "GANAdamW bfloat16 amsgrad=True matches GAN(AdamW)" in driver_log
    assert "with a rule of its own matches GAN(AdamW)" in driver_log
    markdown = (out / "results.md").read_text()
    assert "dry run" in markdown and "## Targets (docs/performance.md)" in markdown and "## Compiler report" in markdown
    assert "## Training steps" in markdown and "## Test files" in markdown and "graph_ratio_to_fused_adamw" in markdown
    last_lines = result.stdout.strip().splitlines()
    assert last_lines[0].startswith("stage") and any(line.startswith("aot") for line in last_lines)
    assert "performance targets (docs/performance.md):" in last_lines
    assert "SPEC" not in result.stdout + markdown


def test_a_command_past_its_time_box_is_killed_and_logged(tmp_path):
    log = tmp_path / "stage.log"
    start = time.monotonic()
    result = gpu_check.run([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"], 1.0, log)
    assert result.returncode is None and time.monotonic() - start < 10
    assert "started" in log.read_text()


def test_a_failing_stage_does_not_stop_the_next(tmp_path, monkeypatch):
    def broken(self, stage):
        raise RuntimeError("planted")

    monkeypatch.setattr(gpu_check.Check, "env_stage", broken)
    check = gpu_check.Check(tmp_path, budget=60, dry_run=True)
    stages = check(["env", "aot"])
    assert [(s.name, s.status) for s in stages if s.name in ("env", "aot")] == [("env", "failed"), ("aot", "ok")]
    assert "planted" in stages[0].note
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["meta"]["device_name"] and document["meta"]["arguments"] == []
    assert {s["name"]: s["status"] for s in document["stages"]} == {
        "env": "failed", "tests": "skipped", "sanitizer": "skipped", "bench": "skipped", "train": "skipped",
        "host": "skipped", "aot": "ok"}


def test_targets_are_met_missed_or_not_measured():
    def row(set_name, implementation, ms, fraction=0.5, dtype="float32"):
        return {"set": set_name, "dtype": dtype, "implementation": implementation, "median_ms": ms, "fraction_of_copy_bw": fraction}

    rows = [row("resnet56", "reference", 4.0), row("resnet56", "compiled", 0.3), row("resnet56", "triton", 0.1),
            row("gpt2_small", "triton", 1.0, fraction=0.85), row("tensor_64m", "triton", 1.0, fraction=0.79)]
    found = {t["target"]: t for t in gpu_check.targets(rows)}
    assert found["ResNet-56 float32: >= 20x the reference"]["met"] is True
    assert found["ResNet-56 float32: >= 2x torch.compile of the reference"]["value"] == "3.0x"
    assert found["gpt2_small float32: >= 80% of copy bandwidth"]["met"] is True
    assert found["tensor_64m float32: >= 80% of copy bandwidth"]["met"] is False
    assert found["gpt2_small bfloat16: >= 80% of copy bandwidth"]["met"] is None
    graph_target = "gpt2_small {}, CUDA-graph replay: GANAdamW <= 1.15x AdamW(fused=True)"
    assert found[graph_target.format("float32")]["met"] is None
    optimizer_rows = [{"set": "gpt2_small", "dtype": "float32", "optimizer": "ganadamw", "ratio_to_fused_adamw": 1.3,
                       "graph_ratio_to_fused_adamw": 1.1},
                      {"set": "gpt2_small", "dtype": "bfloat16", "optimizer": "ganadamw", "ratio_to_fused_adamw": 1.0,
                       "graph_ratio_to_fused_adamw": 1.2}]
    found = {t["target"]: t for t in gpu_check.targets(rows, optimizer_rows)}
    assert found[graph_target.format("float32")]["met"] is True  # judged on the replay, not the eager step
    assert found[graph_target.format("bfloat16")]["met"] is False


def test_training_step_targets_judge_ganadamw_on_the_full_configuration_only():
    def row(model, optimizer, mode, overhead, configuration="full"):
        return {"model": model, "optimizer": optimizer, "mode": mode, "overhead_pct": overhead, "configuration": configuration}

    rows = [row("resnet56", "adamw-fused", "eager", 0.0), row("resnet56", "gan+adamw-fused", "eager", 9.0),
            row("resnet56", "ganadamw", "eager", 2.5), row("resnet56", "ganadamw", "graph", 1.5),
            row("gpt2_small", "ganadamw", "eager", 0.5, configuration="tiny")]
    found = {t["target"]: t for t in gpu_check.training_targets(rows)}
    assert found["resnet56 training step, eager: GANAdamW overhead <= 3%"] == {
        "target": "resnet56 training step, eager: GANAdamW overhead <= 3%", "value": "+2.5%", "met": True}
    assert found["resnet56 training step, graph: GANAdamW overhead <= 1%"]["met"] is False
    assert found["gpt2_small training step, eager: GANAdamW overhead <= 3%"]["met"] is None
    assert found["gpt2_small training step, graph: GANAdamW overhead <= 1%"]["value"] is None
    assert len(found) == 4


def test_the_tests_stage_counts_every_file_even_one_that_hangs(tmp_path):
    (tmp_path / "test_quick.py").write_text(
        "import pytest\n"
        "@pytest.mark.gpu\ndef test_a():\n    pass\n"
        "@pytest.mark.gpu\n@pytest.mark.parametrize('x', [1, 2])\ndef test_b(x):\n    assert x == 1\n"
        "@pytest.mark.gpu\n@pytest.mark.skip(reason='planted')\ndef test_c():\n    pass\n"
        "def test_not_selected():\n    pass\n")
    (tmp_path / "test_hangs.py").write_text(
        "import time\nimport pytest\npytestmark = pytest.mark.gpu\n"
        "def test_first():\n    pass\n"
        "def test_sleeps():\n    time.sleep(120)\n"
        "def test_never_reached():\n    pass\n")
    files = [str(tmp_path / "test_quick.py"), str(tmp_path / "test_hangs.py")]
    start = time.monotonic()
    runs = gpu_check.run_test_files(files, 12.0, tmp_path / "scratch", tmp_path / "tests.log", {},
                                    ["-m", "gpu", "-W", "ignore"], workers=2)
    assert time.monotonic() - start < 60
    quick, hangs = runs
    assert quick["status"] == "failed" and quick["counts"] == {"passed": 2, "failed": 1, "errors": 0, "skipped": 1}
    assert [name.split("::")[-1] for name in quick["failed"]] == ["test_b[2]"] and quick["running"] is None
    assert hangs["status"] == "timeout" and hangs["counts"] == {"passed": 1, "failed": 0, "errors": 0, "skipped": 0}
    assert hangs["running"].endswith("test_hangs.py::test_sleeps")
    log = (tmp_path / "tests.log").read_text()
    assert "test_quick.py" in log and "test_hangs.py::test_first PASSED" in log


def test_every_test_file_that_picks_cuda_is_run_by_the_gpu_check():
    """A test file that puts its tensors on CUDA where there is a GPU must mark its tests ``gpu``:
    otherwise the GPU check never runs them."""
    files = gpu_check.gpu_test_files()
    assert {"tests/test_kernels_gpu.py", "tests/test_kernels.py", "tests/test_adamw.py",
            "benchmarks/test_benchmarks.py"} <= set(files)
    assert "tests/test_state.py" not in files
    for folder in ("tests", "benchmarks"):
        for path in (ROOT / folder).glob("test_*.py"):
            text = path.read_text()
            if '"cuda" if torch.cuda.is_available()' in text or "torch.cuda.is_available() else" in text:
                assert str(path.relative_to(ROOT)) in files, path.name


def test_junit_report_counts_and_names_failures(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1">'
        '<testcase classname="tests.a" name="ok"/><testcase classname="tests.a" name="bad"><failure/></testcase>'
        '<testcase classname="tests.b" name="broken"><error/></testcase><testcase classname="tests.b" name="skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    counts, failed = gpu_check._junit_counts(report)
    assert counts == {"passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    assert failed == ["tests.a::bad", "tests.b::broken"]


@pytest.mark.parametrize("code, output, errors, note", [
    (0, "driver: ok\n========= ERROR SUMMARY: 0 errors\n", 0, "0 errors"),
    (99, "driver: ok\n========= ERROR SUMMARY: 3 errors\n", 3, "3 errors"),
    (0, "driver: ok\n========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n", 0, "0 errors"),
    (0, "driver: ok\n", 0, "0 errors (exit 0, no summary line)"),
    (1, "Traceback ...\n========= ERROR SUMMARY: 0 errors\n", 0, "0 errors (driver did not finish)"),
    (1, "Traceback ...\n", None, "exit 1 (driver did not finish)"),
    (None, "driver: single_read gan matches\n", None, "timeout (driver did not finish)"),
])
def test_sanitizer_verdicts(code, output, errors, note):
    result = gpu_check.sanitizer_result(code, output)
    assert result["errors"] == errors and gpu_check.sanitizer_note(result) == note
    assert result["driver_ok"] == ("driver: ok" in output)
