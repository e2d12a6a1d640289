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
