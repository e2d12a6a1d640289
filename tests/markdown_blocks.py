"""The fenced code blocks of the project's markdown pages (README.md and docs/**/*.md), their
markers, and how a Python block is run. The syntax is described in tests/test_doc_blocks.py."""

from __future__ import annotations

import doctest
import importlib.util
import os
import random
import re
import textwrap
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PYTHON = {"python", "py", "python3"}
SESSION = {"pycon"}  # an interactive session: run as a doctest, its output compared
RUN = PYTHON | SESSION
SEED = 0

OPENING = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
COMMENT = re.compile(r"^[ \t]*<!--(?P<body>.*?)-->[ \t]*$")
MARKER = re.compile(r"^(?P<name>[A-Za-z][\w-]*)[ \t]*(?::(?P<argument>.*))?$", re.S)
MARKER_NAMES = ("skip", "requires", "continues")
# What `requires:` may name: CUDA, or a module from the package's optional extras (a name outside
# this list is an error, so that a misspelt requirement cannot skip a block for ever).
MODULES = ("transformers", "accelerate", "lightning", "sklearn", "matplotlib", "tensorboard", "triton", "numpy", "tqdm")


def pages() -> list[Path]:
    """README.md and every markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    info: str  # the info string after the fence, stripped
    code: str  # the body, dedented (blocks inside list items are indented)
    markers: list[tuple[int, str, str | None]] = field(default_factory=list)  # (line, name, argument)
    problems: list[str] = field(default_factory=list)

    @property
    def language(self) -> str:
        return self.info.split()[0].lower() if self.info else ""

    @property
    def runs(self) -> bool:
        return self.language in RUN

    @property
    def where(self) -> str:
        return f"{relative(self.path)}:{self.line}"

    def marked(self, name: str) -> list[str | None]:
        return [argument for _, marker, argument in self.markers if marker == name]


@dataclass
class Page:
    path: Path
    blocks: list[Block]
    problems: list[str]  # markup errors of the page, each starting with its line

    def python_blocks(self) -> list[Block]:
        return [block for block in self.blocks if block.runs]


def parse_marker(line: int, body: str) -> tuple[tuple[int, str, str | None] | None, str | None]:
    """(marker, problem) for the text inside one HTML comment above a fence."""
    match = MARKER.match(body.strip())
    if not match:
        return None, f"line {line}: {body.strip()!r} is not a marker (known: {', '.join(MARKER_NAMES)})"
    name, argument = match["name"], match["argument"]
    argument = None if argument is None else argument.strip()
    if name not in MARKER_NAMES:
        return None, f"line {line}: unknown marker {name!r} (known: {', '.join(MARKER_NAMES)})"
    if name == "skip" and not argument:
        return None, f"line {line}: 'skip' needs a reason: <!-- skip: why the block cannot run -->"
    if name == "continues" and argument is not None:
        return None, f"line {line}: 'continues' takes no argument"
    if name == "requires":
        names = [n.strip() for n in (argument or "").split(",")]
        unknown = [n for n in names if n != "cuda" and n not in MODULES]
        if not argument or unknown:
            return None, (f"line {line}: 'requires' names cuda or modules among {', '.join(MODULES)}, "
                          f"got {argument!r}")
    return (line, name, argument), None


def parse(text: str, path: Path | str = "<text>") -> Page:
    """Every fenced code block of a markdown text, with the markers on the lines just above it."""
    path = Path(path)
    lines = text.splitlines()
    blocks, problems, consumed, inside = [], [], set(), set()
    i = 0
    while i < len(lines):
        opening = OPENING.match(lines[i])
        if not opening or (opening["fence"][0] == "`" and "`" in opening["info"]):
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
        if end is None:
            problems.append(f"line {i + 1}: the fence is never closed")
            end = len(lines)
        inside.update(range(i + 1, end + 2))
        body = [line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end]]
        block = Block(path, i + 1, info, textwrap.dedent("".join(line + "\n" for line in body)))
        if not info:
            problems.append(f"line {i + 1}: a fence without a language (name one: python, text, bash, ...)")
        j = i - 1
        while j >= 0 and (comment := COMMENT.match(lines[j])):
            consumed.add(j + 1)
            marker, problem = parse_marker(j + 1, comment["body"])
            if marker:
                block.markers.insert(0, marker)
            if problem:
                block.problems.insert(0, problem)
            j -= 1
        if block.markers and not block.runs:
            block.problems.append(f"line {block.markers[0][0]}: markers apply to Python blocks, "
                                  f"not to a {block.language or 'unlabelled'} block")
        blocks.append(block)
        problems.extend(block.problems)
        i = end + 1
    for n, line in enumerate(lines, 1):  # a marker left apart from its fence would be ignored
        comment = COMMENT.match(line)
        marker = comment and MARKER.match(comment["body"].strip())
        if marker and n not in consumed | inside and marker["name"] in MARKER_NAMES:
            problems.append(f"line {n}: marker {marker['name']!r} is not on the lines just above a fence")
    chain_problems(blocks, problems)
    return Page(path, blocks, problems)


def chain_problems(blocks: list[Block], problems: list[str]) -> None:
    python = [block for block in blocks if block.runs]
    if python and python[0].marked("continues"):
        problem = f"line {python[0].line}: 'continues' on the page's first Python block, which has nothing to continue"
        python[0].problems.append(problem)
        problems.append(problem)


def read(path: Path) -> Page:
    return parse(path.read_text(encoding="utf-8"), path)


def chain(page: Page, block: Block) -> list[Block]:
    """The blocks that run, in order, for ``block``: the blocks it continues, then itself."""
    python = page.python_blocks()
    k = python.index(block)
    start = k
    while start > 0 and python[start].marked("continues"):
        start -= 1
    return python[start:k + 1]


def skip_reason(block: Block) -> str | None:
    """Why the block does not run here, or None when it runs."""
    for reason in block.marked("skip"):
        return f"{block.where}: {reason}"
    for argument in block.marked("requires"):
        for name in (n.strip() for n in argument.split(",")):
            if name == "cuda" and not torch.cuda.is_available():
                return f"{block.where}: needs a CUDA GPU, none here"
            if name != "cuda" and importlib.util.find_spec(name) is None:
                return f"{block.where}: needs {name}, which is not installed"
    return None


class BlockFailed(AssertionError):
    """A block raised: the message names the page's line and holds the block's own traceback."""


def execute(block: Block, namespace: dict) -> None:
    """Runs one block in ``namespace``; a failure raises ``BlockFailed`` naming the page's line."""
    __tracebackhide__ = True  # pytest shows the block's traceback in the message, not this frame
    filename = str(block.path.resolve()) if block.path.exists() else str(block.path)
    if block.language in SESSION:
        test = doctest.DocTestParser().get_doctest(block.code, namespace, block.where, filename, block.line)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        report = []
        runner.run(test, out=report.append, clear_globs=False)
        if runner.failures:
            raise BlockFailed(f"{block.where}: the session's output differs\n" + "".join(report))
        return
    source = "\n" * block.line + block.code  # the body's first line is the line after the fence
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as error:
        text = (error.text or "").rstrip()
        raise BlockFailed(f"{relative(block.path)}:{error.lineno}: SyntaxError: {error.msg}\n    {text.strip()}") from None
    try:
        exec(code, namespace)
    except Exception as error:
        inside = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == filename]
        line = inside[-1] if inside else block.line
        shown = "".join(traceback.format_exception(type(error), error, error.__traceback__.tb_next))
        raise BlockFailed(f"{relative(block.path)}:{line}: {type(error).__name__}: {error}\n\n{shown}") from None


def run(page: Page, block: Block) -> dict:
    """Runs ``block`` (after the blocks it continues) in a fresh namespace with a fixed seed, in the
    current working directory, and returns the namespace. A failure in an earlier block of the
    chain fails this one, naming it; the caller decides on skips (``chain_skip``)."""
    __tracebackhide__ = True
    for each in chain(page, block):
        if each.problems:
            raise BlockFailed(f"{each.where}: bad markers: " + "; ".join(each.problems))
    random.seed(SEED)
    torch.manual_seed(SEED)
    try:
        import numpy
    except ImportError:
        pass
    else:
        numpy.random.seed(SEED)
    namespace = {"__name__": "__main__"}
    for each in chain(page, block):
        try:
            execute(each, namespace)
        except BlockFailed as failure:
            if each is block:
                raise
            raise BlockFailed(f"{each.where}, which {block.where} continues, failed: {failure}") from None
    return namespace


@contextmanager
def isolated():
    """Restores what a block may change for the tests that run after it in the same process: the
    random generators' states, torch's default dtype and whether grad mode is on."""
    python_state, dtype, grad = random.getstate(), torch.get_default_dtype(), torch.is_grad_enabled()
    try:
        import numpy
    except ImportError:
        numpy = None
    numpy_state = numpy.random.get_state() if numpy else None
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            if numpy:
                numpy.random.set_state(numpy_state)
            torch.set_default_dtype(dtype)
            torch.set_grad_enabled(grad)


def chain_skip(page: Page, block: Block) -> str | None:
    """Why ``block`` does not run here: its own markers, or those of a block it continues."""
    for each in reversed(chain(page, block)):
        reason = skip_reason(each)
        if reason:
            return reason if each is block else f"continues {reason}"
    return None


def run_as_test(page: Page, block: Block, directory: Path) -> dict:
    """What a test does with a block: skips it, with the reason, where it does not run here; else
    runs it (``run``) in ``directory``, isolated, and returns its namespace."""
    import pytest

    reason = chain_skip(page, block)
    if reason:
        pytest.skip(reason)
    before = os.getcwd()
    os.chdir(directory)
    try:
        with isolated():
            return run(page, block)
    finally:
        os.chdir(before)


def find(*needles: str) -> tuple[Page, Block]:
    """The one Python block, across README.md and docs/, whose code holds every needle."""
    found = [(page, block) for page in map(read, pages()) for block in page.python_blocks()
             if all(needle in block.code for needle in needles)]
    assert len(found) == 1, (f"exactly one Python block in README.md and docs/ should hold {needles!r}, found "
                             f"{len(found)}: {', '.join(block.where for _, block in found) or 'none'}")
    return found[0]
