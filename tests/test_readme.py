"""The telemetry snippet runs as written and writes the CSV it describes. It is found by its text
in README.md or a docs/ page, exactly once; tests/test_doc_blocks.py runs every block too."""

import csv
import math

from tests import markdown_blocks as md

NEEDLES = ("GradientRecorder.for_optimizer", "# columns:")


def test_the_telemetry_snippet_runs_as_written(tmp_path):
    page, block = md.find(*NEEDLES)
    md.run_as_test(page, block, tmp_path)
    written = sorted(tmp_path.glob("*.csv"))
    assert written, f"{block.where} should write a CSV"
    with open(written[0], newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert rows and any(name.startswith("std/") for name in reader.fieldnames)
    assert "step" in reader.fieldnames and "alpha" in reader.fieldnames
    assert {"coherence/1", "coherence/5", "function_step"} <= set(reader.fieldnames)
    assert math.isfinite(float(rows[-1]["alpha"]))
