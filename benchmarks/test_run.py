"""The standalone runner end to end, on the smallest set."""

import json

from benchmarks import run


def test_runner_writes_one_row_per_implementation(tmp_path, capsys):
    path = tmp_path / "rows.json"
    rows = run.main(["--sets", "resnet20", "--dtypes", "float32", "--repeats", "1", "--json", str(path)])
    assert json.loads(path.read_text()) == rows
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
    assert json.loads(path.read_text()) == rows
    assert [row["set"] for row in rows] == ["resnet20", "synthetic_400"]
    for row in rows:
        assert row["steady_us"] > 0 and row["cold_us"] > 0
        assert row["steady_us_per_tensor"] == row["steady_us"] / row["tensors"]
    assert rows[1]["tensors"] == 400
    assert "steady_us" in capsys.readouterr().out


def test_optimizers_compare_ganadamw_with_fused_adamw(tmp_path):
    path = tmp_path / "optimizers.json"
    rows = run.main(["--optimizers", "--sets", "resnet20", "--dtypes", "float32", "--repeats", "1", "--json", str(path)])
    assert json.loads(path.read_text()) == rows
    assert [row["optimizer"] for row in rows] == ["adamw-fused", "gan+adamw-fused", "ganadamw"]
    assert rows[0]["ratio_to_fused_adamw"] == 1.0 and [row["model_accesses"] for row in rows] == [7, 10, 8]
