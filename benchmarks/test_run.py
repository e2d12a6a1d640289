"""The standalone runner end to end, on the smallest set; its warm-up, its training steps and its
results files."""

import collections
import datetime
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import common, models, run, shapes

RESULTS = Path(__file__).resolve().parent / "results"
META_KEYS = {"date", "arguments", "device", "device_name", "cpu", "cpu_threads", "cpu_count", "gpu",
             "compute_capability", "platform", "python", "torch", "triton", "cuda", "gan_kernels"}


def test_runner_writes_one_row_per_implementation(tmp_path, capsys):
    path = tmp_path / "rows.json"
    rows = run.main(["--sets", "resnet20", "--dtypes", "float32", "--repeats", "1", "--json", str(path)])
    assert common.load_results(path)[1] == rows
    names = {row["implementation"] for row in rows}
    assert {"reference", "compiled", "torch"} <= names
    for row in rows:
        assert row["set"] == "resnet20" and row["tensors"] == 20 and row["median_ms"] > 0
        assert row["fraction_of_copy_bw"] > 0
    assert next(r for r in rows if r["implementation"] == "reference")["speedup_vs_reference"] == 1.0
    table = capsys.readouterr().out
    assert "resnet20" in table and "fraction_of_copy_bw" in table


def test_host_only_times_the_host_side_of_each_set(tmp_path, capsys):
    path = tmp_path / "host.json"
    rows = run.main(["--host-only", "--sets", "resnet20", "synthetic_400", "--json", str(path)])
    assert common.load_results(path)[1] == rows
    assert [row["set"] for row in rows] == ["resnet20", "synthetic_400"]
    for row in rows:
        assert row["steady_us"] > 0 and row["cold_us"] > 0
        assert row["steady_us_per_tensor"] == row["steady_us"] / row["tensors"]
    assert rows[1]["tensors"] == 400
    # The optimizers step the weights and the model's 1-D parameters: ResNet-20 has 19 batch norms
    # after its convolutions and a classifier bias.
    assert [row["params"] for row in rows] == [20 + 2 * 19 + 1, 800]
    for row in rows:
        assert row["ganadamw_steady_us"] > 0 and row["ganadamw_cold_us"] > 0
        assert row["gan_adamw_fused_steady_us"] > 0 and row["gan_adamw_fused_cold_us"] > 0
        # The ratio is of GANAdamW's steps and the gan_ steps timed between them.
        assert row["gan_steady_us_beside"] > 0
        assert row["ganadamw_vs_gan_"] == row["ganadamw_steady_us"] / row["gan_steady_us_beside"]
    assert "ganadamw_steady_us" in capsys.readouterr().out


def test_optimizers_compare_ganadamw_with_fused_adamw(tmp_path):
    path = tmp_path / "optimizers.json"
    rows = run.main(["--optimizers", "--sets", "resnet20", "--dtypes", "float32", "--repeats", "1", "--json", str(path)])
    assert common.load_results(path)[1] == rows
    assert [row["optimizer"] for row in rows] == ["adamw-fused", "gan+adamw-fused", "ganadamw"]
    assert rows[0]["ratio_to_fused_adamw"] == 1.0 and [row["model_accesses"] for row in rows] == [7, 10, 8]


# -- warm-up: the order of calls, with stub implementations (nothing about times is asserted) --


@pytest.fixture
def calls(monkeypatch):
    """Stub every implementation and the copy with recorders, and record where each set's
    measurement and each timing begin: a list of events in the order they happened."""
    events = []

    def make_step(name):
        def step(grads, state):
            events.append(("call", name, str(grads[0].dtype).removeprefix("torch.")))
        return step

    def copy_step(copies, source):
        events.append(("call", "copy", str(source[0].dtype).removeprefix("torch.")))

    for module in (common, run):
        monkeypatch.setattr(module, "make_step", make_step)
        monkeypatch.setattr(module, "copy_step", copy_step)
    medians, measure = run.cpu_medians, run.measure

    def timed(candidates, restore, repeats):
        events.append(("timed",))
        return medians(candidates, restore, repeats)

    def measured(set_name, dtype_name, *args):
        events.append(("measure", set_name, dtype_name))
        return measure(set_name, dtype_name, *args)

    monkeypatch.setattr(run, "cpu_medians", timed)
    monkeypatch.setattr(run, "measure", measured)
    monkeypatch.setattr(run, "launches_per_step", lambda *args: 0)
    return events


def test_every_implementation_and_the_copy_are_warmed_up_before_the_first_set(calls):
    implementations = ["reference", "compiled", "foreach-eager", "torch"]
    run.main(["--device", "cpu", "--sets", "resnet20", "resnet56", "--dtypes", "float32", "bfloat16",
              "--implementations", *implementations, "--repeats", "1"])
    first_set = calls.index(("measure", "resnet20", "float32"))
    assert ("timed",) not in calls[:first_set]
    warmed = {event[1:] for event in calls[:first_set]}
    assert warmed == {(name, dtype) for name in [*implementations, "copy"] for dtype in ("float32", "bfloat16")}
    # Each set is still warmed up on its own before it is timed.
    for start in [i for i, event in enumerate(calls) if event[0] == "measure"]:
        before_timing = calls[start:calls.index(("timed",), start)]
        assert {event[1] for event in before_timing if event[0] == "call"} == set(implementations)


def test_every_optimizer_is_warmed_up_before_the_first_set(monkeypatch):
    events = []

    class Recorder:
        def __init__(self, name, params, capturable=False):
            self.name, self.dtype = name, str(params[0].dtype).removeprefix("torch.")

        def step(self):
            events.append(("step", self.name, self.dtype))

    rows = common.optimizer_rows

    def measured(set_name, dtype_name, *args):
        events.append(("measure", set_name, dtype_name))
        return rows(set_name, dtype_name, *args)

    monkeypatch.setattr(common, "make_optimizer", Recorder)
    monkeypatch.setattr(common, "launches_per_step", lambda *args: 0)
    monkeypatch.setattr(run, "optimizer_rows", measured)
    run.main(["--device", "cpu", "--optimizers", "--sets", "resnet20", "--dtypes", "float32", "bfloat16", "--repeats", "1"])
    first_set = events.index(("measure", "resnet20", "float32"))
    warmed = {event[1:] for event in events[:first_set]}
    assert warmed == {(name, dtype) for name in common.OPTIMIZERS for dtype in ("float32", "bfloat16")}


# -- training steps ----------------------------------------------------------------------------


def test_training_step_times_every_model_and_optimizer_eagerly_on_a_cpu(tmp_path, capsys):
    path = tmp_path / "training.json"
    rows = run.main(["--training-step", "--device", "cpu", "--json", str(path), "--repeats", "2"])
    document = json.loads(path.read_text())
    assert set(document) == {"meta", "rows"} and document["rows"] == rows and document["meta"]["device"] == "cpu"
    assert [(r["model"], r["optimizer"], r["mode"]) for r in rows] == [
        (model, name, "eager") for model in ("resnet56", "gpt2_small") for name in common.OPTIMIZERS]
    for row in rows:
        workload = models.WORKLOADS[row["model"]]["tiny"]
        assert row["configuration"] == "tiny" and row["device"] == common.device_name("cpu")
        assert (row["batch"], row["input"]) == (workload.batch, workload.input)
        assert row["parameters"] == sum(p.numel() for p in workload.build().parameters())
        assert math.isfinite(row["median_ms"]) and 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["steps"] == 2
        adamw = next(r for r in rows if (r["model"], r["mode"], r["optimizer"]) == (row["model"], row["mode"], "adamw-fused"))
        assert row["overhead_pct"] == pytest.approx(100 * (row["median_ms"] / adamw["median_ms"] - 1))
    assert [r["overhead_pct"] for r in rows if r["optimizer"] == "adamw-fused"] == [0.0, 0.0]
    assert "overhead_pct" in capsys.readouterr().out


def test_on_cuda_each_mode_is_measured_against_its_own_adamw_row(monkeypatch):
    """The rows of a CUDA run with the setup and the timing stubbed, so that no GPU is needed:
    eager and graph rows of every optimizer, each overhead over adamw-fused in the same mode."""
    seconds = {("eager", "adamw-fused"): 0.010, ("eager", "gan+adamw-fused"): 0.0112, ("eager", "ganadamw"): 0.0103,
               ("graph", "adamw-fused"): 0.008, ("graph", "gan+adamw-fused"): 0.0084, ("graph", "ganadamw"): 0.0081}

    def setup(workload, name, device, capturable=False, seed=0):
        def step():
            pass
        step.key = ("graph" if capturable else "eager", name)
        return nn.Linear(2, 3), None, step

    class Graph:
        def __init__(self, step, warm_up_calls):
            self.replay = step

    monkeypatch.setattr(run, "training_setup", setup)
    # Three steps timed, the middle one the median: the percentiles must come from the same list.
    monkeypatch.setattr(run, "cuda_times", lambda step, rep_ms: [seconds[step.key] * f for f in (1.5, 1.0, 0.9)])
    monkeypatch.setattr(run, "cuda_graph", Graph)
    monkeypatch.setattr(run, "device_name", lambda device: "a GPU")
    rows = run.training_rows(models.WORKLOADS["gpt2_small"]["full"], "cuda", repeats=1)
    assert [(r["mode"], r["optimizer"]) for r in rows] == list(seconds)
    for row in rows:
        mode, name = row["mode"], row["optimizer"]
        assert row["median_ms"] == pytest.approx(seconds[mode, name] * 1e3) and row["steps"] == 3
        assert (row["p10_ms"], row["p90_ms"]) == pytest.approx((seconds[mode, name] * 920, seconds[mode, name] * 1400))
        assert row["overhead_pct"] == pytest.approx(100 * (seconds[mode, name] / seconds[mode, "adamw-fused"] - 1))
        assert (row["model"], row["configuration"], row["batch"], row["input"]) == ("gpt2_small", "full", 8, "seq 512")
        assert row["parameters"] == 9 and row["device"] == "a GPU"


def test_the_configuration_is_tiny_on_a_cpu_unless_full(monkeypatch):
    chosen = []
    monkeypatch.setattr(run, "training_rows", lambda workload, device, repeats: chosen.append(workload) or [{"model": workload.model}])
    run.main(["--training-step", "--device", "cpu", "--models", "gpt2_small"])
    run.main(["--training-step", "--device", "cpu", "--models", "resnet56", "--full"])
    assert chosen == [models.WORKLOADS["gpt2_small"]["tiny"], models.WORKLOADS["resnet56"]["full"]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_training_step_on_cuda_without_a_device_is_an_error(capsys):
    with pytest.raises(SystemExit):
        run.main(["--training-step", "--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


def eligible_shapes(model: nn.Module, conv1d: bool = False) -> collections.Counter:
    """The multiset of a model's weight shapes (ndim > 1); ``conv1d``: linear weights transposed to
    the in x out layout of GPT-2's Conv1D, as :func:`benchmarks.shapes.gpt2_small` lists them."""
    found = collections.Counter()
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if parameter.ndim > 1:
                transpose = conv1d and isinstance(module, nn.Linear)
                found[tuple(parameter.shape[::-1] if transpose else parameter.shape)] += 1
    return found


def test_gpt2_small_has_gpt2s_parameters_and_the_benchmarked_shapes():
    with torch.device("meta"):
        model = models.gpt2()
        logits = model(torch.zeros(2, 16, dtype=torch.long))
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # GPT-2 small's published count
    assert eligible_shapes(model, conv1d=True) == collections.Counter(shapes.gpt2_small())
    assert logits.shape == (2, 16, 50257)  # the head is the token embedding, counted once


def test_the_full_resnet56_has_the_benchmarked_shapes():
    with torch.device("meta"):
        model = models.WORKLOADS["resnet56"]["full"].build()
    assert eligible_shapes(model) == collections.Counter(shapes.cifar_resnet(56))


@pytest.mark.parametrize("model", list(models.WORKLOADS))
def test_one_training_step_moves_every_parameter_and_applies_gan(model):
    """One eager step of each optimizer from the same initialisation: Adam's first step moves every
    tensor by about lr (1e-3; weight decay alone would be some 1e-5), GAN(AdamW) and GANAdamW agree,
    and both differ from AdamW alone on the weights GAN transforms."""
    workload = models.WORKLOADS[model]["tiny"]
    initial, after = None, {}
    for name in common.OPTIMIZERS:
        network, _, step = run.training_setup(workload, name, "cpu")
        before = [p.detach().clone() for p in network.parameters()]
        if initial is None:
            initial = before
        assert all(torch.equal(a, b) for a, b in zip(before, initial))
        step()
        after[name] = [p.detach().clone() for p in network.parameters()]
        for a, b in zip(after[name], before):
            assert 0.5e-3 < (a - b).abs().max() <= 1.02e-3, name
    for a, b in zip(after["gan+adamw-fused"], after["ganadamw"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    eligible = [i for i, p in enumerate(initial) if p.ndim > 1]
    assert max((after["adamw-fused"][i] - after["ganadamw"][i]).abs().max() for i in eligible) > 1e-4


# -- results files -------------------------------------------------------------------------------


def test_results_file_holds_the_runs_meta_and_its_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "measure", lambda set_name, dtype_name, *args: [{"set": set_name, "dtype": dtype_name}])
    monkeypatch.setattr(run, "warm_up", lambda *args: None)
    path = tmp_path / "rows.json"
    arguments = ["--device", "cpu", "--sets", "resnet20", "--dtypes", "float32", "--json", str(path)]
    rows = run.main(arguments)
    document = json.loads(path.read_text())
    assert set(document) == {"meta", "rows"} and document["rows"] == rows == [{"set": "resnet20", "dtype": "float32"}]
    meta = document["meta"]
    assert set(meta) == META_KEYS
    assert meta["arguments"] == arguments and meta["device"] == "cpu" and meta["device_name"] == common.device_name("cpu")
    started = datetime.datetime.fromisoformat(meta["date"])
    assert started.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - started) < datetime.timedelta(minutes=10)
    assert meta["cpu_threads"] >= 1 and meta["torch"] and meta["python"] and meta["gan_kernels"]
    assert meta["gpu"] is None and meta["compute_capability"] is None and meta["cuda"] is None
    assert common.load_results(path) == (meta, rows)


def test_a_legacy_bare_list_of_rows_loads_with_an_empty_meta(tmp_path):
    path = tmp_path / "legacy.json"
    rows = [{"set": "resnet20", "implementation": "reference", "median_ms": 1.0}]
    path.write_text(json.dumps(rows))
    assert common.load_results(path) == ({}, rows)
    path.write_text(json.dumps({"card": "a GPU check's document"}))
    with pytest.raises(ValueError):
        common.load_results(path)


@pytest.mark.parametrize("path", sorted(p.name for p in RESULTS.glob("*.json") if "gpu-check" not in p.name))
def test_committed_results_load(path):
    meta, rows = common.load_results(RESULTS / path)
    # Import-time runs (benchmarks/import_time.py) have a row per process, not per gradient set.
    key = "added_s" if "-import" in path else "set"
    assert isinstance(meta, dict) and rows and all(key in row for row in rows)
