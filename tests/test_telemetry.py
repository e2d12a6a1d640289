import copy
import csv
import json
import math

import pytest
import torch

from gan_kernels import GAN, GANAdamW, GANState, attach, reference
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
    assert math.isnan(rows[0]["coherence/1"])
    for row, (previous, current) in zip(rows[1:], zip(seen, seen[1:])):
        cosine = (previous @ current / (previous.norm() * current.norm())).item()
        assert row["coherence/1"] == pytest.approx(cosine, abs=1e-5)

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
    assert rows[1]["coherence/1"] == pytest.approx(1.0, abs=1e-6)


def test_without_coherence_no_gradients_needed():
    recorder = GradientRecorder()
    recorder.record(reference.gan_(steps(1)[0]))
    assert not any(key.startswith(("coherence", "function_step")) for key in recorder.flush()[0])


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


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def backward(model, seed):
    generator = torch.Generator().manual_seed(seed)
    model(torch.randn(16, 4, generator=generator)).square().mean().backward()


def train(model, opt, recorder, steps=3, explicit=False):
    for s in range(steps):
        opt.zero_grad()
        backward(model, s)
        opt.step()
        stats = opt.last_stats
        recorder.record(stats, opt.eligible_grads() if explicit else None)


def test_for_optimizer_names_the_eligible_parameters_of_gan(tmp_path):
    model = tiny_model()
    opt = GAN(torch.optim.AdamW(model.parameters(), lr=1e-3))
    recorder = GradientRecorder.for_optimizer(opt, model, coherence=True)
    train(model, opt, recorder)
    assert recorder.names == ["0.weight", "2.weight"]
    chosen = [p for _, p in recorder.eligible_parameters()]
    assert len(chosen) == 2 and chosen[0] is model[0].weight and chosen[1] is model[2].weight
    rows = recorder.flush()
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert math.isnan(rows[0]["coherence/1"]) and not math.isnan(rows[2]["coherence/1"])
    assert rows[2]["std/2.weight"] == pytest.approx(opt.last_stats.stds[1].item())
    recorder.write_csv(tmp_path / "g.csv")
    header = (tmp_path / "g.csv").read_text().splitlines()[0].split(",")
    assert header == ["step", "global_std", "alpha", "nonfinite", "coherence/1", "coherence/5",
                      "std/0.weight", "std/2.weight"]

    # The gradients default to the optimizer's eligible ones: the same rows as passing them.
    model_b = tiny_model()
    opt_b = GAN(torch.optim.AdamW(model_b.parameters(), lr=1e-3))
    explicit = GradientRecorder.for_optimizer(opt_b, model_b, coherence=True)
    train(model_b, opt_b, explicit, explicit=True)
    assert json.dumps(explicit.flush()) == json.dumps(rows)


@pytest.mark.parametrize("build", ["gan-adamw", "attachment", "attached-optimizer"])
def test_for_optimizer_follows_the_optimizers_eligible_rule(build):
    model = tiny_model()

    def biases(p):
        return p.ndim == 1

    if build == "gan-adamw":
        opt = source = GANAdamW(model.parameters(), lr=1e-3, eligible=biases)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        attachment = attach(opt, eligible=biases)
        source = attachment if build == "attachment" else opt
    recorder = GradientRecorder.for_optimizer(source, model)
    for s in range(2):
        opt.zero_grad()
        backward(model, s)
        opt.step()
        stats = opt.last_stats if build == "gan-adamw" else attachment.last_stats
        recorder.record(stats)
    assert recorder.names == ["0.bias", "2.bias"]
    assert recorder.flush()[1]["std/0.bias"] == pytest.approx(stats.stds[0].item())
    if build != "gan-adamw":
        attachment.remove()


def test_parameters_without_a_gradient_are_named_by_step(tmp_path):
    """A layer that gets no gradient at some step: rows are keyed by name, the CSV has every
    column (empty where a step lacks it) and coherence restarts when the set changes."""

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 8)
            self.left = torch.nn.Linear(8, 2)
            self.right = torch.nn.Linear(8, 2)

        def forward(self, x, head):
            return getattr(self, head)(torch.relu(self.body(x)))

    torch.manual_seed(0)
    model = TwoHeads()
    opt = GAN(torch.optim.SGD(model.parameters(), lr=0.1))
    recorder = GradientRecorder.for_optimizer(opt, model, coherence=True)
    for s, head in enumerate(["left", "left", "right", "right"]):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(16, 4, generator=torch.Generator().manual_seed(s)), head).square().mean().backward()
        opt.step()
        recorder.record(opt.last_stats)
    rows = recorder.flush()
    assert recorder.names == ["body.weight", "left.weight", "right.weight"]
    assert [sorted(k for k in row if k.startswith("std/")) for row in rows] == [
        ["std/body.weight", "std/left.weight"]] * 2 + [["std/body.weight", "std/right.weight"]] * 2
    assert rows[3]["std/right.weight"] == pytest.approx(opt.last_stats.stds[1].item())
    coherence = [row["coherence/1"] for row in rows]
    assert math.isnan(coherence[0]) and math.isnan(coherence[2])
    assert not math.isnan(coherence[1]) and not math.isnan(coherence[3])
    left = recorder.column("std/left.weight")
    assert not math.isnan(left[1]) and math.isnan(left[2])
    with pytest.raises(KeyError, match="std/nothing"):
        recorder.column("std/nothing")

    recorder.write_csv(tmp_path / "g.csv")
    with open(tmp_path / "g.csv") as f:
        reader = csv.DictReader(f)
        written = list(reader)
    assert reader.fieldnames == ["step", "global_std", "alpha", "nonfinite", "coherence/1", "coherence/5",
                                 "std/body.weight", "std/left.weight", "std/right.weight"]
    assert written[0]["std/right.weight"] == "" and written[3]["std/left.weight"] == ""
    assert float(written[3]["std/right.weight"]) == pytest.approx(rows[3]["std/right.weight"])


def test_for_optimizer_bad_use():
    model = tiny_model()
    opt = GAN(torch.optim.AdamW(model.parameters(), lr=1e-3))
    recorder = GradientRecorder.for_optimizer(opt, model)
    with pytest.raises(ValueError, match="record after the optimizer's step"):
        recorder.record(opt.last_stats)
    backward(model, 0)
    opt.step()
    opt.zero_grad()
    with pytest.raises(ValueError, match="before the gradients are zeroed"):
        recorder.record(opt.last_stats)
    with pytest.raises(ValueError, match="not parameters of the model"):
        GradientRecorder.for_optimizer(opt, torch.nn.Linear(4, 8))
    with pytest.raises(ValueError, match="for_optimizer"):
        GradientRecorder().eligible_parameters()


def test_record_does_not_read_values_on_the_host(monkeypatch):
    """Recording only queues device work: nothing per step reads a tensor's value on the host."""
    model = tiny_model()
    opt = GAN(torch.optim.AdamW(model.parameters(), lr=1e-3))
    recorder = GradientRecorder.for_optimizer(opt, model, coherence=True, probe=torch.randn(5, 4), probe_every=1)
    backward(model, 0)
    opt.step()

    def host_read(self, *args, **kwargs):
        raise AssertionError("record() read a tensor's value on the host")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
            patch.setattr(torch.Tensor, name, host_read)
        recorder.record(opt.last_stats)
        recorder.record(opt.last_stats)
    rows = recorder.flush()
    assert len(rows) == 2 and math.isfinite(rows[1]["coherence/1"]) and math.isfinite(rows[1]["function_step"])


def cosine(a, b):
    return (a @ b / (a.norm() * b.norm())).item()


def test_coherence_at_any_lags_against_float64_and_restarts_when_the_layout_changes():
    """cos(g_t, g_{t-m}) for m in {1, 3}, computed in float64 from copies of what was recorded; a
    step with other shapes starts the history again; the ring holds max(lags) + 1 copies."""
    recorder = GradientRecorder(["conv", "fc", "vec"], coherence=[3, 1, 3])
    assert recorder.lags == (1, 3)
    history = []
    for grads in steps(7):
        recorder.record(reference.gan_(grads), grads)
        history.append(torch.cat([g.double().flatten() for g in grads]))
    other = [torch.randn(5, 5), torch.randn(3), torch.randn(4, 2)]  # same names, other shapes
    recorder.record(reference.gan_(clone_all(other)), other)
    rows = recorder.flush()
    for t, row in enumerate(rows[:7]):
        for m in (1, 3):
            if t < m:
                assert math.isnan(row[f"coherence/{m}"]), (t, m)
            else:
                assert row[f"coherence/{m}"] == pytest.approx(cosine(history[t], history[t - m]), abs=2e-6), (t, m)
    assert math.isnan(rows[7]["coherence/1"]) and math.isnan(rows[7]["coherence/3"])
    elements = sum(g.numel() for g in other)
    assert recorder.saved_bytes == 4 * (3 + 1) * elements + 4 * (3 + 1)


@pytest.mark.parametrize("coherence,lags", [(True, (1, 5)), (False, ()), ([], ()), (2, (2,)), ((5, 1), (1, 5))])
def test_coherence_argument(coherence, lags):
    recorder = GradientRecorder(coherence=coherence)
    assert recorder.lags == lags and recorder.coherence == bool(lags)
    grads = steps(1)[0]
    recorder.record(reference.gan_(clone_all(grads)), grads)
    assert [key for key in recorder.flush()[0] if key.startswith("coherence")] == [f"coherence/{m}" for m in lags]


@pytest.mark.parametrize("kwargs,message", [
    ({"coherence": 0}, "positive integers"),
    ({"coherence": [1, -5]}, "positive integers"),
    ({"coherence": 2.0}, "positive integers"),
    ({"coherence": "5"}, "positive integers"),
    ({"coherence": [1.5]}, "positive integers"),
    ({"probe_every": 0, "model": torch.nn.Identity(), "probe": torch.ones(1)}, "probe_every"),
    ({"model": torch.nn.Identity()}, "both a model and a probe"),
    ({"probe": torch.ones(1)}, "both a model and a probe"),
])
def test_bad_telemetry_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientRecorder(**kwargs)


class Probed(torch.nn.Module):
    """Linear, BatchNorm and dropout: a probe must not change the running statistics, nor drop."""

    def __init__(self, output="tensor"):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                        torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
        self.output = output

    def forward(self, x):
        y = self.body(x)
        return {"tensor": y, "tuple": (y, x), "logits": {"logits": y, "other": x}}[self.output]


def eval_outputs(model, probe):
    """The model's outputs on the probe, in eval mode, on a copy (nothing of the model touched)."""
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        return twin.body(probe).double()


@pytest.mark.parametrize("output", ["tensor", "tuple", "logits"])
def test_function_step_is_the_rms_output_distance_between_probes(output):
    model = Probed(output)
    probe = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    snapshots = [eval_outputs(model, probe)]
    recorder = GradientRecorder.for_optimizer(opt, model, probe=probe, probe_every=2)
    model.body[3].eval()  # a submodule the user put in eval mode stays so
    for s in range(5):
        opt.zero_grad()
        model.body(torch.randn(16, 4, generator=torch.Generator().manual_seed(s))).square().mean().backward()
        opt.step()
        running = model.body[1].running_mean.clone()
        recorder.record()
        assert torch.equal(model.body[1].running_mean, running)
        assert model.training and model.body[1].training and not model.body[3].training
        if (s + 1) % 2 == 0:
            snapshots.append(eval_outputs(model, probe))
    rows = recorder.flush()
    values = [row["function_step"] for row in rows]
    assert math.isnan(values[0]) and math.isnan(values[2]) and math.isnan(values[4])
    for index, (before, after) in zip((1, 3), zip(snapshots, snapshots[1:])):
        expected = ((after - before).square().sum(1).mean().sqrt()).item()
        assert expected > 0 and values[index] == pytest.approx(expected, rel=1e-5)
    assert recorder.saved_bytes == 10 * 3 * 4
    assert "global_std" not in rows[0] and "coherence/1" not in rows[0]


def test_function_step_with_gan_and_every_step(tmp_path):
    model = Probed()
    probe = torch.randn(6, 4)
    before = eval_outputs(model, probe)
    opt = GAN(torch.optim.AdamW(model.parameters(), lr=1e-2))
    recorder = GradientRecorder.for_optimizer(opt, model, coherence=True, probe=probe, probe_every=1)
    train(model, opt, recorder, steps=1)
    row = recorder.flush()[0]
    expected = (eval_outputs(model, probe) - before).square().sum(1).mean().sqrt().item()
    assert row["function_step"] == pytest.approx(expected, rel=1e-5) and math.isfinite(row["alpha"])
    recorder.write_csv(tmp_path / "g.csv")
    header = (tmp_path / "g.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["step", "global_std", "alpha", "nonfinite", "coherence/1", "coherence/5", "function_step"]
    recorder.write_json(tmp_path / "g.json")
    assert json.loads((tmp_path / "g.json").read_text())[0]["function_step"] == pytest.approx(expected, rel=1e-5)


def test_a_plain_optimizer_records_coherence_and_function_step_without_stats():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = GradientRecorder.for_optimizer(opt, model, coherence=1, probe=torch.randn(5, 4))
    seen = []
    for s in range(3):
        opt.zero_grad()
        backward(model, s)
        opt.step()
        recorder.record()
        seen.append(torch.cat([model[0].weight.grad.double().flatten(), model[2].weight.grad.double().flatten()]))
    rows = recorder.flush()
    assert recorder.names == ["0.weight", "2.weight"]
    assert rows[2]["coherence/1"] == pytest.approx(cosine(seen[2], seen[1]), abs=2e-6)
    assert list(rows[0]) == ["step", "coherence/1", "function_step"]

    plain = GradientRecorder(coherence=True)
    plain.record(None, [torch.randn(3, 3)])
    assert plain.flush()[0]["step"] == 1
    probed = GradientRecorder(model=model, probe=torch.randn(5, 4), probe_every=1)
    probed.record()  # the function-space step alone needs no gradients
    assert list(probed.flush()[0]) == ["step", "function_step"]
    with pytest.raises(ValueError, match="nothing to record"):
        GradientRecorder().record()
    with pytest.raises(ValueError, match="needs the eligible gradients"):
        GradientRecorder(coherence=True).record()
    gan = GAN(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="record after the optimizer's step"):
        GradientRecorder.for_optimizer(gan, model, coherence=True).record()


def test_a_probe_output_without_a_tensor_is_refused():
    class Words(torch.nn.Module):
        def forward(self, x):
            return "words"

    with pytest.raises(TypeError, match="probe's output is a str"):
        GradientRecorder(model=Words(), probe=torch.ones(1))


def test_a_refused_record_changes_nothing():
    recorder = GradientRecorder(coherence=True, model=torch.nn.Linear(4, 2), probe=torch.randn(3, 4), probe_every=1)
    grads = steps(2)
    recorder.record(reference.gan_(clone_all(grads[0])), grads[0])
    with pytest.raises(ValueError, match="3 eligible tensors are named but 2 gradients were given"):
        recorder.record(reference.gan_(clone_all(grads[1])), grads[1][:2])
    assert recorder.names == ["layer0", "layer1", "layer2"] and len(recorder.flush()) == 1
    recorder.record(reference.gan_(clone_all(grads[1])), grads[1])
    rows = recorder.flush()
    expected = cosine(*(torch.cat([g.double().flatten() for g in step]) for step in grads))
    assert [row["step"] for row in rows] == [1, 2] and rows[1]["coherence/1"] == pytest.approx(expected, abs=2e-6)
    assert rows[1]["function_step"] == 0.0  # probed at both steps, the model unchanged


def test_a_recorder_loaded_from_its_state_dict_continues_exactly():
    import io

    model = torch.nn.Linear(3, 2)
    probe = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))

    def recorder():
        return GradientRecorder(["w", "b"], coherence=(1, 2), model=model, probe=probe, probe_every=2)

    def step(rec, s):
        model.weight.data.add_(0.1)
        generator = torch.Generator().manual_seed(s)
        grads = [torch.randn(2, 3, generator=generator), torch.randn(2, generator=generator)]
        rec.record(reference.gan_(grads, GANState()), grads)

    initial = model.weight.detach().clone()
    whole, first = recorder(), recorder()
    for s in range(4):
        step(whole, s)
    model.weight.data.copy_(initial)
    for s in range(2):
        step(first, s)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = recorder()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    step(resumed, 2)
    step(resumed, 3)
    assert json.dumps(resumed.flush()) == json.dumps(whole.flush()) and resumed.names == whole.names
    # The saved ring gave step 3's coherence, the saved probe outputs step 4's function step.
    assert not math.isnan(whole.rows[2]["coherence/2"]) and not math.isnan(whole.rows[3]["function_step"])
    with pytest.raises(ValueError, match="lags"):
        GradientRecorder(["w", "b"], coherence=1).load_state_dict(first.state_dict())
