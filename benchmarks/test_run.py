"""The standalone runner end to end, on the smallest set; its warm-up and its results files."""

import datetime
import json
from pathlib import Path

import pytest

from benchmarks import common, run

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
    assert "steady_us" in capsys.readouterr().out


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
    assert isinstance(meta, dict) and rows and all("set" in row for row in rows)
