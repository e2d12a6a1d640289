"""The documentation site: every public name has a generated reference entry, and the strict build
fails on what it must (a link to a missing repository file, a missing anchor, a page left out)."""

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gan_kernels

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
# Public names outside gan_kernels.__all__, in the modules users import them from.
MORE_PUBLIC = [
    "gan_kernels.reference.gan_",
    "gan_kernels.rule.autoscale",
    "gan_kernels.distributed.gan_sharded_",
    "gan_kernels.telemetry.GradientRecorder",
    "gan_kernels.telemetry.DEFAULT_LAGS",
    "gan_kernels.integrations.transformers.GANCallback",
    "gan_kernels.integrations.lightning.GANCallback",
]


def documented() -> list[str]:
    return re.findall(r"^::: ([\w.]+)$", REFERENCE.read_text(encoding="utf-8"), flags=re.M)


def test_every_public_name_has_a_generated_reference_entry():
    expected = [f"gan_kernels.{name}" for name in gan_kernels.__all__] + MORE_PUBLIC
    missing = sorted(set(expected) - set(documented()))
    assert not missing, f"docs/reference.md has no ::: entry for {missing}"


def test_every_reference_entry_names_an_object_that_exists():
    for path in documented():
        module, _, name = path.rpartition(".")
        if module.startswith("gan_kernels.integrations."):
            pytest.importorskip(module.rsplit(".", 1)[1])
        assert hasattr(importlib.import_module(module), name), f"docs/reference.md documents {path}, which does not exist"


def build(tmp_path: Path, change=None) -> subprocess.CompletedProcess:
    """Build the site from a copy of the repository's docs, after ``change(copy of docs/)``."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "repo"
    site.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", site)
    shutil.copytree(ROOT / "docs", site / "docs")
    for linked in ("CHANGELOG.md", "gan_kernels", "benchmarks", "examples", "tests", "LICENSE"):
        (site / linked).symlink_to(ROOT / linked)
    if change is not None:
        change(site / "docs")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=site, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )


def append(page: str, text: str):
    def change(docs: Path):
        with open(docs / page, "a", encoding="utf-8") as f:
            f.write(text)

    return change


def test_the_site_builds_and_publishes_the_linked_repository_files(tmp_path):
    result = build(tmp_path)
    assert result.returncode == 0, result.stderr
    linked = re.findall(r"\]\(\.\./(benchmarks/results/[^)#\s]+)\)", (ROOT / "docs" / "performance.md").read_text())
    assert linked, "docs/performance.md cites its results files"
    for path in linked:
        # A Markdown file becomes a page of the site, any other file is copied as it is.
        published = path[: -len(".md")] + "/index.html" if path.endswith(".md") else path
        assert (tmp_path / "site" / "repository" / published).is_file(), f"the site does not publish {path}"


@pytest.mark.parametrize(
    ("page", "text", "complaint"),
    [
        ("stacks.md", "\n[gone](../benchmarks/results/no-such-run.json)\n", "no-such-run.json"),
        ("stacks.md", "\n[gone](method.md#no-such-section)\n", "no-such-section"),
        ("method.md", "\n```text\n[in code, not a link](../nowhere.json)\n```\n", None),
    ],
    ids=["missing repository file", "missing anchor", "a link in code is text"],
)
def test_the_strict_build_fails_on_a_broken_link(tmp_path, page, text, complaint):
    result = build(tmp_path, append(page, text))
    if complaint is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0 and complaint in result.stderr, result.stderr
