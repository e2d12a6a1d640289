"""examples/train.py at real scale, on a tiny slice of the digits: a run killed with SIGKILL and
resumed ends bit for bit where an uninterrupted run ends, a torn checkpoint falls back to the one
before, a checkpoint of another run is refused, options are checked before anything is written,
two processes under torchrun end on the single process's weights, and --amp, --channels-last and
--compile train."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import load_example, tiny_digits

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "tiny_train.py"
RUN = ["--methods", "adamw,gan", "--epochs", "2", "--batch-size", "48", "--device", "cpu"]
TIMEOUT = 300


def environment(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def train(argv, **env):
    """Run tests/tiny_train.py to its end; return its stderr."""
    done = subprocess.run([sys.executable, str(RUNNER), *argv], env=environment(**env), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def final_state(out, method):
    return load_example("checkpoints").read(out / "checkpoints" / f"{method}.pt")


def assert_same_tensors(a, b):
    """Equal structure and bitwise-equal tensors (float tensors compared as raw bits)."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.view(torch.uint8) if a.is_floating_point() and a.dim() else a, b.view(torch.uint8) if b.is_floating_point() and b.dim() else b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    else:
        assert a == b or (a != a and b != b)


def assert_same_results(out, expected, methods=("adamw", "gan")):
    """metrics.json, the CSVs and every method's final model, optimizer and recorder equal bit for bit
    (the seconds and the config, which says --resume, aside)."""
    got, want = (json.loads((o / "metrics.json").read_text()) for o in (out, expected))
    for key in ("final_accuracy", "best_accuracy", "dynamics", "world_size"):
        assert got[key] == want[key], key
    for method in methods:
        assert {k: v for k, v in got["curves"][method].items() if k != "seconds"} == \
               {k: v for k, v in want["curves"][method].items() if k != "seconds"}
        assert (out / f"gradients_{method}.csv").read_bytes() == (expected / f"gradients_{method}.csv").read_bytes()
        a, b = final_state(out, method), final_state(expected, method)
        for key in ("position", "model", "optimizer", "scheduler", "recorder", "curves", "identity"):
            assert_same_tensors(a[key], b[key])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    train(RUN + ["--out", str(out)])
    return out


def assert_killed_at_and_resumed(reference, out, step):
    """Run with a checkpoint every step, SIGKILLed as it begins its ``step``-th training step (the
    warm-up's steps counted), then resume: the results equal the uninterrupted run's."""
    process = subprocess.run([sys.executable, str(RUNNER), *RUN, "--checkpoint-every", "1", "--out", str(out)],
                             env=environment(TINY_TRAIN_KILL_AT=str(step)), capture_output=True, timeout=TIMEOUT)
    assert process.returncode == -signal.SIGKILL, f"the run was not killed at step {step}"
    assert not (out / "metrics.json").exists()
    stderr = train(RUN + ["--checkpoint-every", "1", "--resume", "--out", str(out)])
    assert "warning" not in stderr
    assert_same_results(out, reference)


def test_a_run_killed_at_a_random_step_resumes_to_the_same_weights_metrics_and_curves(reference, tmp_path):
    # Steps 1-4 are the warm-up's; 5-12 the training steps of AdamW and then GAN.
    assert_killed_at_and_resumed(reference, tmp_path / "killed", random.Random(os.getpid()).randint(5, 12))


# The warm-up takes 2 steps per method, then each method 2 epochs of 2 steps: step 7 begins AdamW's
# second epoch and step 11 GAN's, right after an epoch's checkpoint, so the resumed run draws that
# epoch's order from the restored generator.
@pytest.mark.parametrize("step", [6, 7, 11])
def test_a_run_killed_at_a_given_step_resumes_to_the_same_results(reference, tmp_path, step):
    assert_killed_at_and_resumed(reference, tmp_path / "killed", step)


def test_a_corrupt_checkpoint_is_detected_and_the_previous_one_used(reference, tmp_path):
    out = tmp_path / "corrupt"
    shutil.copytree(reference, out)
    latest = out / "checkpoints" / "gan.pt"
    body = bytearray(latest.read_bytes())
    body[len(body) // 2] ^= 0xFF  # one flipped byte inside the payload
    latest.write_bytes(bytes(body))
    (out / "checkpoints" / "adamw.pt").write_bytes((out / "checkpoints" / "adamw.pt").read_bytes()[:1000])  # torn
    stderr = train(RUN + ["--resume", "--out", str(out)])
    warnings = [line for line in stderr.splitlines() if line.startswith("train.py: warning:")]
    assert len(warnings) == 2 and "adamw.pt is unreadable" in warnings[0] and "gan.pt is checksum mismatch" in warnings[1]
    assert all("resuming from the previous one" in line for line in warnings)
    assert_same_results(out, reference)  # the previous checkpoint (end of epoch 1) redid epoch 2 exactly


def test_checkpoints_load_with_weights_only(reference):
    record = torch.load(reference / "checkpoints" / "gan.pt", weights_only=True)
    assert set(record) == {"format", "sha256", "payload"} and record["payload"].dtype == torch.uint8
    state = final_state(reference, "gan")
    assert state["position"] == {"epoch": 2, "step": 0} and "gan" in state["optimizer"]
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda", "generators"}


@pytest.mark.parametrize("argv,message", [
    (["--lr", "0.01"], "is from another run: lr 0.003 there, 0.01 here"),
    (["--epochs", "3"], "is from another run: epochs 2 there, 3 here"),
    (["--amp", "bf16"], "is from another run: amp 'none' there, 'bf16' here"),
])
def test_a_checkpoint_of_another_run_is_refused_in_one_line(reference, argv, message, tmp_path, monkeypatch):
    out = tmp_path / "other"
    shutil.copytree(reference / "checkpoints", out / "checkpoints")
    demo = load_example("train")
    tiny_digits(demo, monkeypatch)
    options = dict(zip(RUN[::2], RUN[1::2])) | dict(zip(argv[::2], argv[1::2]))
    with pytest.raises(SystemExit) as exit_info:
        demo.main([item for pair in options.items() for item in pair] + ["--resume", "--out", str(out)])
    text = str(exit_info.value.code)
    assert text.startswith("train.py: error: checkpoint ") and message in text and "\n" not in text
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]


@pytest.mark.parametrize("argv,message", [
    (["--out", "README.md/sub"], "--out README.md/sub cannot be created: "),
    (["--out", "README.md"], "--out README.md is a file, not a folder"),
    (["--methods", "gan,gan"], "--methods names 'gan' more than once"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--lr", "0"], "--lr must be a finite number above 0, got 0.0"),
    (["--lr", "nan"], "--lr must be a finite number above 0"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number of at least 0, got -1.0"),
    (["--checkpoint-every", "-2"], "--checkpoint-every must be 0 (epoch ends only) or a number of steps"),
    (["--amp", "fp8"], "unknown --amp 'fp8'; accepted: none, bf16, fp16"),
])
def test_options_are_checked_before_anything_is_written(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    before = sorted(ROOT.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        load_example("train").main(["--out", str(tmp_path / "run")] + argv)
    text = str(exit_info.value.code)
    assert text.startswith("train.py: error: ") and message in text and "\n" not in text
    assert sorted(ROOT.iterdir()) == before and not (tmp_path / "run").exists()


def test_two_processes_end_on_the_weights_of_one_and_resume(tmp_path):
    argv = ["--model", "tiny_cnn", "--methods", "gan", "--epochs", "2", "--batch-size", "48", "--device", "cpu"]
    single, double = tmp_path / "single", tmp_path / "double"
    rows = tmp_path / "rows"
    rows.mkdir()
    train(argv + ["--out", str(single)])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(RUNNER)]
    done = subprocess.run(torchrun + argv + ["--out", str(double)], env=environment(TINY_TRAIN_ROWS=str(rows)),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((double / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and json.loads((single / "metrics.json").read_text())["world_size"] == 1
    # Every process saw the same all-reduced gradients: GAN's statistics and the telemetry agree exactly.
    assert json.loads((rows / "rows_gan_0.json").read_text()) == json.loads((rows / "rows_gan_1.json").read_text())
    one, two = final_state(single, "gan"), final_state(double, "gan")
    for name, weight in one["model"].items():
        torch.testing.assert_close(two["model"][name], weight, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(metrics["curves"]["gan"]["loss"]),
                               torch.tensor(json.loads((single / "metrics.json").read_text())["curves"]["gan"]["loss"]))
    # Process 0's checkpoints resume under torchrun: back to the end of epoch 1, then epoch 2 again.
    resumed = tmp_path / "resumed"
    shutil.copytree(double / "checkpoints", resumed / "checkpoints")
    os.replace(resumed / "checkpoints" / "gan.prev.pt", resumed / "checkpoints" / "gan.pt")
    done = subprocess.run(torchrun + argv + ["--resume", "--out", str(resumed)], env=environment(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from epoch 1, step 0" in done.stdout
    assert_same_tensors(final_state(resumed, "gan")["model"], two["model"])


def tiny_demo(monkeypatch):
    """examples/train.py on the tiny digits, with tests/tiny_train.py's model without BatchNorm."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_train import tiny_cnn

    demo = load_example("train")
    tiny_digits(demo, monkeypatch)
    monkeypatch.setitem(demo.models.MODELS, "tiny_cnn", tiny_cnn)
    return demo, tiny_cnn


@pytest.mark.parametrize("options", [["--amp", "bf16"], ["--amp", "fp16"], ["--channels-last"]])
def test_gpu_options_train_on_the_cpu(options, tmp_path, monkeypatch):
    demo, _ = tiny_demo(monkeypatch)
    accuracies = demo.main(["--model", "tiny_cnn", "--methods", "adamw,gan", "--epochs", "1", "--batch-size", "48",
                            "--device", "cpu", "--out", str(tmp_path)] + options)
    assert all(0.0 <= a <= 1.0 for a in accuracies.values())
    state = final_state(tmp_path, "gan")
    row = json.loads((tmp_path / "metrics.json").read_text())["dynamics"]["gan"]
    assert row["step"] == [1, 2]
    if "fp16" in options:
        assert state["scaler"]["scale"] > 0  # the loss scaler's state is checkpointed
    else:
        assert state["scaler"] is None


def test_compile_trains_the_compiled_model(tmp_path, monkeypatch):
    demo, tiny_cnn = tiny_demo(monkeypatch)
    accuracies = demo.main(["--model", "tiny_cnn", "--methods", "gan", "--epochs", "1", "--batch-size", "48",
                            "--device", "cpu", "--probe-every", "0", "--no-coherence", "--compile", "--out", str(tmp_path)])
    assert 0.0 <= accuracies["gan"] <= 1.0
    assert list(final_state(tmp_path, "gan")["model"]) == list(tiny_cnn(1, 10).state_dict())  # saved unwrapped


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("options", [["--amp", "bf16", "--channels-last", "--compile"], ["--amp", "fp16"]])
def test_gpu_options_train_on_cuda(options, tmp_path, monkeypatch):
    # The GPU check runs this (tests marked gpu): GAN's kernels under autocast, the fp16 scaler,
    # channels-last and the compiled model on a CUDA device.
    demo, _ = tiny_demo(monkeypatch)
    accuracies = demo.main(["--model", "tiny_cnn", "--methods", "adamw,gan,gan-fused", "--epochs", "1",
                            "--batch-size", "48", "--device", "cuda", "--out", str(tmp_path)] + options)
    assert all(0.0 <= a <= 1.0 for a in accuracies.values())
    assert json.loads((tmp_path / "metrics.json").read_text())["dynamics"]["gan"]["step"] == [1, 2]
