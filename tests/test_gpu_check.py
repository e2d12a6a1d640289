"""benchmarks/gpu_check.py: its dry run end to end on the CPU, so that the prepared GPU run cannot
rot between loans of a GPU, and the pieces that judge a run (time boxes, targets, test reports)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

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
        "env": "ok", "tests": "ok", "sanitizer": "skipped", "bench": "ok", "host": "ok", "aot": "ok"}
    assert "sanitizers skipped" in stages["sanitizer"]["note"] and "driver alone passed" in stages["sanitizer"]["note"]
    assert stages["tests"]["data"]["passed"] > 0 and stages["tests"]["data"]["failed"] == 0
    assert {r["implementation"] for r in stages["bench"]["data"]["rows"]} == {"reference", "compiled", "foreach-eager", "torch"}
    assert {r["optimizer"] for r in stages["bench"]["data"]["optimizer_rows"]} == {"adamw-fused", "gan+adamw-fused", "ganadamw"}
    assert [r["set"] for r in stages["host"]["data"]["rows"]] == ["resnet20", "synthetic_400"]
    from gan_kernels.kernels import aot

    assert [r["kernel"] for r in stages["aot"]["data"]["rows"]] == [variant[0] for variant in aot.variants()]
    assert "driver: ok" in (out / "sanitizer.log").read_text()
    markdown = (out / "results.md").read_text()
    assert "dry run" in markdown and "## Targets (docs/performance.md)" in markdown and "## Compiler report" in markdown
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
        "env": "failed", "tests": "skipped", "sanitizer": "skipped", "bench": "skipped", "host": "skipped", "aot": "ok"}


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
    assert found["gpt2_small float32: GANAdamW <= 1.15x AdamW(fused=True)"]["met"] is None
    optimizer_rows = [{"set": "gpt2_small", "dtype": "float32", "optimizer": "ganadamw", "ratio_to_fused_adamw": 1.1}]
    found = {t["target"]: t for t in gpu_check.targets(rows, optimizer_rows)}
    assert found["gpt2_small float32: GANAdamW <= 1.15x AdamW(fused=True)"]["met"] is True


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
