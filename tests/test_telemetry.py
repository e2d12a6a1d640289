import csv
import json
import math

import pytest
import torch

from gan_kernels import GANState, reference
from gan_kernels.telemetry import GradientRecorder
from tests.helpers import clone_all, random_grads


def steps(count):
    shapes = [(8, 3, 3, 3), (10, 8), (64,)]
    return [random_grads(shapes, [torch.float32, torch.bfloat16, torch.float32], seed=s, scale=10.0 ** -s) for s in range(count)]


def test_rows_are_the_reference_stats_with_coherence(tmp_path):
    recorder = GradientRecorder(["conv", "fc", "vec"], coherence=True)
    state = GANState()
    expected, seen = [], []
    for grads in steps(3):
        stats = reference.gan_(grads, state)
        recorder.record(stats, grads)
        expected.append(stats)
        seen.append(torch.cat([g.double().flatten() for g in grads]))
    rows = recorder.flush()
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row, stats in zip(rows, expected):
        assert row["global_std"] == pytest.approx(stats.global_std.item(), rel=1e-6)
        assert row["alpha"] == pytest.approx(stats.alpha.item(), rel=1e-6)
        assert row["nonfinite"] is False
        for name, std in zip(["conv", "fc", "vec"], stats.stds.tolist()):
            assert row[f"std/{name}"] == pytest.approx(std, rel=1e-6)
    assert math.isnan(rows[0]["coherence"])
    for row, (previous, current) in zip(rows[1:], zip(seen, seen[1:])):
        cosine = (previous @ current / (previous.norm() * current.norm())).item()
        assert row["coherence"] == pytest.approx(cosine, abs=1e-5)

    recorder.write_csv(tmp_path / "g.csv")
    with open(tmp_path / "g.csv") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 3 and float(written[2]["std/fc"]) == pytest.approx(rows[2]["std/fc"])
    recorder.write_json(tmp_path / "g.json")
    assert json.loads((tmp_path / "g.json").read_text())[1]["alpha"] == pytest.approx(rows[1]["alpha"])
    assert recorder.column("alpha") == [row["alpha"] for row in rows]


def test_record_does_not_touch_gradients_and_flushes_incrementally():
    recorder = GradientRecorder(coherence=True)
    grads = steps(1)[0]
    before = clone_all(grads)
    recorder.record(reference.gan_(clone_all(grads)), grads)
    assert all(torch.equal(a, b) for a, b in zip(grads, before))
    assert len(recorder.flush()) == 1
    recorder.record(reference.gan_(clone_all(grads)), grads)
    rows = recorder.flush()
    assert len(rows) == 2 and recorder.names == ["layer0", "layer1", "layer2"]
    assert rows[1]["coherence"] == pytest.approx(1.0, abs=1e-6)


def test_without_coherence_no_gradients_needed():
    recorder = GradientRecorder()
    recorder.record(reference.gan_(steps(1)[0]))
    assert math.isnan(recorder.flush()[0]["coherence"])


def test_bad_use():
    stats = reference.gan_(steps(1)[0])
    with pytest.raises(ValueError, match="stats hold 3 tensors but the recorder names 2"):
        GradientRecorder(["a", "b"]).record(stats)
    with pytest.raises(ValueError, match="pass the eligible gradients"):
        GradientRecorder(coherence=True).record(stats)


def test_tensorboard_when_installed(tmp_path):
    recorder = GradientRecorder()
    recorder.record(reference.gan_(steps(1)[0]))
    written = recorder.write_tensorboard(tmp_path / "tb")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert written is False and not (tmp_path / "tb").exists()
    else:
        assert written is True and any((tmp_path / "tb").iterdir())
