"""The import-time benchmark end to end, on two processes: its rows, summary, table and results
file (no duration is asserted)."""

import statistics

from benchmarks import common, import_time

ROW_KEYS = {"process", "torch_s", "added_s", "modules_added", "loads_triton", "loads_dynamo", "gan_kernels_file"}


def test_import_time_reports_each_process_and_the_median(tmp_path, capsys):
    path = tmp_path / "import.json"
    result = import_time.main(["--processes", "2", "--json", str(path)])
    rows = result["rows"]
    assert [row["process"] for row in rows] == [0, 1]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["torch_s"] > 0 and row["added_s"] > 0 and row["modules_added"] > 0
        assert isinstance(row["loads_triton"], bool) and isinstance(row["loads_dynamo"], bool)
        # The checkout's package is the one timed.
        assert row["gan_kernels_file"] == str(import_time.ROOT / "gan_kernels" / "__init__.py")
    assert result["processes"] == 2
    assert result["median_added_s"] == statistics.median(row["added_s"] for row in rows)
    assert result["median_torch_s"] == statistics.median(row["torch_s"] for row in rows)
    meta, written = common.load_results(path)
    assert written == rows
    assert meta["processes"] == 2 and meta["median_added_s"] == result["median_added_s"]
    assert meta["arguments"] == ["--processes", "2", "--json", str(path)]
    out = capsys.readouterr().out
    assert "added_s" in out and "median of 2 processes" in out
