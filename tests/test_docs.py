"""The repository states its own contract: the README and docs/ link only to files that exist,
nothing points at a contract outside the repository, and the rule example says what it computes."""

import re
from pathlib import Path

import pytest

from tests import markdown_blocks as md

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
SOURCES = [p for folder in ("gan_kernels", "tests", "benchmarks", "examples") for p in (ROOT / folder).rglob("*.py")]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


def test_documents_named_in_the_code_exist():
    for path in SOURCES + MARKDOWN:
        for name in re.findall(r"\bdocs/[\w-]+\.md\b", path.read_text()):
            assert (ROOT / name).exists(), f"{path.relative_to(ROOT)} names {name}, which does not exist"


def test_no_reference_to_a_contract_outside_the_repository():
    pattern = re.compile("SPEC" + r"(\.md|\s*§)")
    for path in SOURCES + MARKDOWN:
        assert not pattern.search(path.read_text()), f"{path.relative_to(ROOT)} refers to a document outside the repository"


def test_the_rule_example_runs_and_says_what_it_says(tmp_path):
    # The example's rule makes alpha min(1, sigma) ** 0.5.
    stats = md.run_as_test(*md.find("def sqrt_rule"), tmp_path)["opt"].last_stats
    assert stats.alpha.item() == pytest.approx(stats.global_std.clamp(max=1).sqrt().item(), rel=1e-6)


def test_every_public_name_is_in_the_api_reference():
    import gan_kernels
    from gan_kernels import telemetry

    api = (ROOT / "docs" / "api.md").read_text()
    for name in [*gan_kernels.__all__, "GradientRecorder", "DEFAULT_LAGS", "saved_bytes"]:
        assert re.search(rf"\b{name}\b", api), f"docs/api.md does not mention {name}"
    assert telemetry.DEFAULT_LAGS == (1, 5) and "m = 1 and 5" in api


def test_the_docs_show_the_committed_study_table():
    # The table may live in README.md or any docs/ page; every copy is the committed one.
    committed = ROOT / "docs" / "critical-period" / "table.md"
    table = committed.read_text().strip()
    header = table.splitlines()[0]
    texts = {md.relative(path): path.read_text() for path in md.pages() if path != committed}
    showing = [name for name, text in texts.items() if table in text]
    assert showing, "no page of README.md and docs/ shows docs/critical-period/table.md"
    for name, text in texts.items():
        assert text.count(header) == (name in showing), f"{name}'s critical-period table differs from table.md"
        if name in showing:
            assert "python examples/critical_period.py --out docs/critical-period" in text, (
                f"{name} shows the table without the command that regenerates it")
