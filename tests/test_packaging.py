"""The distributions install cleanly: the wheel holds the package alone with its py.typed marker and
a description an index can show (no relative link, no image), and the sdist holds every module the
tests import, so that a few test files pass from the unpacked sdist with its own package and tests."""

from __future__ import annotations

import ast
import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("build")

ROOT = Path(__file__).resolve().parent.parent
# What .gitignore keeps out of the checkout's files stays out of the copy the distributions are
# built from. The copy also starts without an egg-info: setuptools reads a stale one's SOURCES.txt
# back into the sdist, which would hide a file that MANIFEST.in no longer takes.
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.py[cod]",
                                 ".pytest_cache", ".hypothesis", ".benchmarks", "runs", "gpu-check")
TEST_FOLDERS = ("tests", "benchmarks")
# Run from the unpacked sdist: the fresh-process imports, the kernels in Triton's interpreter that
# tests/conftest.py selects on a CPU (with tests/helpers.py), and the documents' links.
QUICK_TESTS = ("tests/test_import.py", "tests/test_plan.py", "tests/test_docs.py")


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement of ``path`` may name: ``from a.b import c`` gives a.b and a.b.c."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def local_files(module: str) -> set[str]:
    """The checkout's files that importing ``module`` runs: its own and its packages' __init__.py."""
    parts = module.split(".")
    found = set()
    for depth in range(1, len(parts) + 1):
        stem = ROOT.joinpath(*parts[:depth])
        for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
            if candidate.is_file():
                found.add(candidate.relative_to(ROOT).as_posix())
    return found


def files_the_tests_need() -> set[str]:
    """The test modules, what their import statements reach in the checkout, and the conftest.py
    files pytest loads without any import."""
    sources = [path for folder in TEST_FOLDERS for path in (ROOT / folder).rglob("*.py")]
    needed = {path.relative_to(ROOT).as_posix() for path in sources if path.name.startswith(("test_", "conftest"))}
    for path in sources:
        for module in imported_modules(path):
            needed |= local_files(module)
    return needed


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist members, wheel, unpacked sdist folder), built from a clean copy of the checkout."""
    tmp = tmp_path_factory.mktemp("packaging")
    source, dist, unpacked = tmp / "source", tmp / "dist", tmp / "unpacked"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (sdist,), (wheel,) = dist.glob("*.tar.gz"), dist.glob("*.whl")
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        archive.extractall(unpacked, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return members, wheel, unpacked / top


def test_the_wheel_holds_the_package_alone_with_its_py_typed_marker(built):
    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "gan_kernels/py.typed" in names
    outside = [name for name in names if name.split("/")[0] != "gan_kernels" and ".dist-info/" not in name]
    assert outside == []


def test_the_wheel_description_has_no_relative_link_nor_image(built):
    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        message = email.message_from_bytes(archive.read(metadata))
    description = message.get_payload()
    assert message["Description-Content-Type"].startswith("text/markdown")
    assert "pip install ." in description
    assert not re.search(r"!\[|<img\b", description, flags=re.I), "an image in the description"
    targets = re.findall(r"\]\(\s*<?([^)\s>]+)", description)  # [text](target)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$", description, flags=re.M)  # [label]: target
    targets += re.findall(r"\b(?:href|src)\s*=\s*[\"']([^\"']+)", description, flags=re.I)
    relative = [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I)]
    assert relative == [], f"relative links in the description: {relative}"


def test_the_sdist_holds_every_file_the_tests_import(built):
    members, _, _ = built
    needed = files_the_tests_need()
    assert {"tests/__init__.py", "tests/conftest.py", "tests/helpers.py", "benchmarks/common.py"} <= needed
    assert sorted(needed - members) == []


def test_quick_tests_pass_from_the_unpacked_sdist(built):
    _, _, unpacked = built
    env = {name: value for name, value in os.environ.items()
           if name not in ("PYTHONPATH", "PYTEST_ADDOPTS", "TRITON_INTERPRET")}
    code = "import gan_kernels, tests.helpers; print(gan_kernels.__file__, tests.helpers.__file__, sep='\\n')"
    where = subprocess.run([sys.executable, "-c", code], cwd=unpacked, env=env, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert len(where) == 2 and all(Path(path).resolve().is_relative_to(unpacked.resolve()) for path in where), where
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *QUICK_TESTS],
                          cwd=unpacked, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert f"rootdir: {unpacked}" in done.stdout
    assert re.search(r"\b\d+ passed\b", done.stdout)
