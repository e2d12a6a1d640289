"""The README's telemetry snippet runs as written."""

import csv
import math
import re
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "GradientRecorder.for_optimizer"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def python_blocks(text):
    """Every fenced Python code block of a markdown text, dedented (blocks inside list items are indented)."""
    return [textwrap.dedent(match["code"]) for match in FENCE.finditer(text)]


def test_the_fence_parser_reads_indented_blocks():
    text = "Intro\n\n  ```python\n  x = 1\n  if x:\n      y = 2\n  ```\n\n```python\nz = 3\n```\n"
    assert python_blocks(text) == ["x = 1\nif x:\n    y = 2\n", "z = 3\n"]


def test_the_telemetry_snippet_runs_as_written(tmp_path, monkeypatch):
    blocks = [block for block in python_blocks(README.read_text(encoding="utf-8")) if MARKER in block]
    assert len(blocks) == 1, f"README.md should hold exactly one python code block using {MARKER}, found {len(blocks)}"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md (telemetry snippet)", "exec"), {"__name__": "readme_snippet"})
    written = sorted(tmp_path.glob("*.csv"))
    assert written, "the snippet should write a CSV"
    with open(written[0], newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert rows and any(name.startswith("std/") for name in reader.fieldnames)
    assert "step" in reader.fieldnames and "alpha" in reader.fieldnames
    assert {"coherence/1", "coherence/5", "function_step"} <= set(reader.fieldnames)
    assert math.isfinite(float(rows[-1]["alpha"]))
