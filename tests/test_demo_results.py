"""docs/studies.md shows the committed default run of examples/train.py: its table is what
docs/demo/metrics.json holds, and the file is the default run, so that the two cannot drift apart."""

import json
import re
from pathlib import Path

import pytest

from tests.helpers import load_example

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "docs" / "studies.md"
METRICS = ROOT / "docs" / "demo" / "metrics.json"
COMMAND = "python examples/train.py --out docs/demo"
HEADER = "| method | final accuracy | best accuracy |"
# The table's name for each method.
LABELS = {"adamw": "AdamW", "gc": "GC (one mean per output channel)", "znorm": "ZNorm", "gan": "GAN"}


def demo_table(text: str) -> list[str]:
    """The rows of the one table in ``text`` with the default run's header."""
    tables = re.findall(rf"^{re.escape(HEADER)}\n\| --- \| --- \| --- \|\n((?:\|.*\|\n?)+)", text, flags=re.M)
    assert len(tables) == 1, f"docs/studies.md has {len(tables)} tables headed {HEADER!r}, not one"
    return tables[0].strip().splitlines()


def expected_rows(metrics: dict) -> list[str]:
    return [f"| {LABELS[method]} | {final:.4f} | {metrics['best_accuracy'][method]:.4f} |"
            for method, final in metrics["final_accuracy"].items()]


def test_the_table_is_what_the_committed_run_holds():
    metrics = json.loads(METRICS.read_text())
    assert demo_table(STUDIES.read_text()) == expected_rows(metrics), (
        f"the default run's table in docs/studies.md differs from docs/demo/metrics.json; rerun `{COMMAND}` "
        "and rewrite the table and the figures after it from the file")


def test_the_section_names_the_file_and_the_command():
    text = STUDIES.read_text()
    assert "[demo/metrics.json](demo/metrics.json)" in text and COMMAND in text


def test_the_committed_file_is_the_default_run():
    pytest.importorskip("tqdm")
    metrics = json.loads(METRICS.read_text())
    defaults = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(load_example("train").parse_args([])).items()}
    config = dict(metrics["config"])
    # Written to docs/demo by COMMAND, on a CPU: the default device is cuda where there is one.
    assert config.pop("out") == "docs/demo" and config.pop("device") == "cpu"
    defaults.pop("out"), defaults.pop("device")
    assert config == defaults
    assert list(metrics["final_accuracy"]) == list(LABELS) == defaults["methods"]


def test_the_readme_quotes_the_committed_mnist1d_study():
    study = (ROOT / "docs" / "mnist1d" / "study.md").read_text()
    table = "\n".join(line for line in study.splitlines() if line.startswith("| "))
    readme = (ROOT / "README.md").read_text()
    assert table and table in readme, "README.md's MNIST-1D table differs from docs/mnist1d/study.md"
    assert "python examples/compare.py --out docs/mnist1d" in readme and "python examples/compare.py --out docs/mnist1d" in study
