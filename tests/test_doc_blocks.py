"""Every Python code block of README.md and docs/**/*.md runs as written.

Each fenced block whose language is ``python`` (or ``py``, ``python3``) is one test, named after
its page and the line of its opening fence (``docs/api.md:123``). It runs with ``exec`` as a
script would (``__name__ == "__main__"``), in a fresh namespace, in a temporary working directory
(blocks may write files), after seeding ``random``, ``torch`` and ``numpy`` with 0; tracebacks
point at the page's own line numbers. A ``pycon`` block is an interactive session (``>>>``
prompts): it runs as a doctest and its output must match (``...`` elides, whitespace is
normalised). Blocks in any other language (``text`` for signatures and output, ``bash`` for
commands, ...) are not run, but every fence must name its language: a fence without one fails
its page's test.

Markers are HTML comments, one per line, on the lines right above a fence (no blank line in
between), so that rendered pages do not show them. They apply to Python blocks only::

    <!-- skip: needs a CUDA GPU and a model download -->     always skipped, with this reason (required)
    <!-- requires: cuda -->                                  skipped where CUDA is unavailable, run elsewhere
    <!-- requires: transformers, accelerate -->              skipped where one of these modules is not installed
    <!-- continues -->                                       runs after the page's previous Python block

``requires`` takes a comma-separated list of ``cuda`` and modules from the package's optional
extras (``markdown_blocks.MODULES``; add a module there to name it). ``continues`` builds an
example up over several blocks: the test of a block marked so runs, in one namespace, every
block of its chain (back to the nearest earlier Python block not marked ``continues``), then
itself; a failure in an earlier block fails it, naming that block, and a skipped earlier block
skips it. Anything else fails the page's test (and the block's): an unknown marker name, ``skip``
without a reason, an unknown requirement, ``continues`` with an argument or on a page's first
Python block, a marker on a non-Python block, a marker comment not right above a fence, a fence
never closed. No block is left out silently: a block runs, or its test is reported skipped
with the reason.
"""

import random

import pytest
import torch

from tests import markdown_blocks as md

PAGES = {md.relative(path): md.read(path) for path in md.pages()}
BLOCKS = {block.where: (page, block) for page in PAGES.values() for block in page.python_blocks()}


@pytest.mark.parametrize("name", list(PAGES))
def test_the_page_marks_up_its_blocks(name):
    problems = PAGES[name].problems
    if problems:
        pytest.fail(f"{name}:\n  " + "\n  ".join(problems), pytrace=False)


def needs_cuda(page, block) -> bool:
    """Whether the block, or one it continues, requires CUDA: the GPU check runs those (marked gpu)."""
    return any(name == "requires" and "cuda" in [part.strip() for part in argument.split(",")]
               for each in md.chain(page, block) for _, name, argument in each.markers)


@pytest.mark.parametrize(
    "where", [pytest.param(where, marks=pytest.mark.gpu) if needs_cuda(*BLOCKS[where]) else where for where in BLOCKS]
)
def test_the_block_runs(where, tmp_path):
    page, block = BLOCKS[where]
    for each in md.chain(page, block):
        if each.problems:
            pytest.fail(f"{each.where}: " + "; ".join(each.problems), pytrace=False)
    md.run_as_test(page, block, tmp_path)


# -- the runner itself, on pages written here -----------------------------------------------------


def page(text):
    return md.parse(text, "page.md")


def test_blocks_inside_list_items_are_read_dedented_with_their_lines():
    parsed = page("Intro\n\n- item:\n\n  ```python\n  x = 1\n  if x:\n      y = 2\n  ```\n\n```py\nz = 3\n```\n")
    assert [(b.line, b.language, b.code) for b in parsed.blocks] == [
        (5, "python", "x = 1\nif x:\n    y = 2\n"), (11, "py", "z = 3\n")]
    assert [b.where for b in parsed.blocks] == ["page.md:5", "page.md:11"]


def test_other_languages_are_read_not_run():
    parsed = page("```text\nf(x) -> y\n```\n\n~~~bash\npip install .\n~~~\n\n````python title=\"ex\"\n```\n````\n")
    assert [b.language for b in parsed.blocks] == ["text", "bash", "python"]
    assert [b.line for b in parsed.python_blocks()] == [9]
    assert parsed.blocks[2].code == "```\n" and not parsed.problems


@pytest.mark.parametrize("text,problem", [
    ("```\nx = 1\n```\n", "line 1: a fence without a language"),
    ("<!-- skip -->\n```python\nx = 1\n```\n", "line 1: 'skip' needs a reason"),
    ("<!-- skip:   -->\n```python\nx = 1\n```\n", "line 1: 'skip' needs a reason"),
    ("<!-- skipped: no GPU -->\n```python\nx = 1\n```\n", "line 1: unknown marker 'skipped'"),
    ("<!-- requires: transfomers -->\n```python\nx = 1\n```\n", "line 1: 'requires' names cuda or modules"),
    ("<!-- requires -->\n```python\nx = 1\n```\n", "line 1: 'requires' names cuda or modules"),
    ("```python\nx = 1\n```\n<!-- continues: yes -->\n```python\ny = x\n```\n", "line 4: 'continues' takes no argument"),
    ("<!-- continues -->\n```python\nx = 1\n```\n", "line 2: 'continues' on the page's first Python block"),
    ("<!-- skip: output -->\n```text\n1\n```\n", "line 1: markers apply to Python blocks, not to a text block"),
    ("<!-- skip: no GPU -->\n\n```python\nx = 1\n```\n", "line 1: marker 'skip' is not on the lines just above a fence"),
    ("<!-- a note, not a marker -->\n```python\nx = 1\n```\n", "line 1: 'a note, not a marker' is not a marker"),
    ("text\n\n```python\nx = 1\n", "line 3: the fence is never closed"),
])
def test_bad_markup_fails_the_page_and_the_block(text, problem):
    parsed = page(text)
    assert any(p.startswith(problem) for p in parsed.problems), parsed.problems
    python = parsed.python_blocks()
    if python and "fence" not in problem and "not on the lines" not in problem:
        with pytest.raises(md.BlockFailed, match="bad markers"):
            md.run(parsed, python[-1])


def test_comments_that_are_not_markers_may_stand_anywhere_but_above_a_fence():
    assert not page("<!-- a note -->\n\ntext\n\n```html\n<!-- skip -->\n```\n").problems


def test_markers_are_read_and_skips_give_their_reasons():
    parsed = page("<!-- skip: needs a CUDA GPU -->\n```python\nx\n```\n"
                  "<!-- requires: cuda -->\n<!-- requires: numpy -->\n```python\ny\n```\n")
    first, second = parsed.blocks
    assert md.skip_reason(first) == "page.md:2: needs a CUDA GPU"
    assert second.markers == [(5, "requires", "cuda"), (6, "requires", "numpy")]
    assert md.skip_reason(second) == (None if torch.cuda.is_available() else "page.md:7: needs a CUDA GPU, none here")


def test_a_requirement_that_is_not_installed_skips(monkeypatch):
    monkeypatch.setattr(md.importlib.util, "find_spec", lambda name: None)
    parsed = page("<!-- requires: transformers, accelerate -->\n```python\nimport transformers\n```\n")
    assert md.skip_reason(parsed.blocks[0]) == "page.md:2: needs transformers, which is not installed"


def test_a_block_that_raises_fails_at_its_own_line():
    parsed = page("Text\n\n```python\nx = 1\nraise ValueError('planted')\n```\n")
    with pytest.raises(md.BlockFailed, match=r"^page.md:5: ValueError: planted\n") as caught:
        md.run(parsed, parsed.blocks[0])
    assert 'File "page.md", line 5' in str(caught.value)


def test_a_syntax_error_names_its_line():
    parsed = page("```python\nx = 1\nf(a, *, b)\n```\n")
    with pytest.raises(md.BlockFailed, match=r"^page.md:3: SyntaxError: .*\n    f\(a, \*, b\)"):
        md.run(parsed, parsed.blocks[0])


def test_continues_runs_the_chain_in_one_namespace():
    parsed = page("```python\nx = [1]\n```\n\n```text\nout\n```\n\n<!-- continues -->\n```python\nx.append(2)\n```\n"
                  "<!-- continues -->\n```python\nassert x == [1, 2]\ny = len(x)\n```\n\n```python\nz = 0\n```\n")
    first, second, third, fourth = parsed.python_blocks()
    assert md.chain(parsed, third) == [first, second, third]
    assert md.chain(parsed, fourth) == [fourth]
    assert md.run(parsed, third)["y"] == 2
    assert "x" not in md.run(parsed, fourth)


def test_continues_after_a_failing_block_fails_naming_it():
    parsed = page("```python\nx = 1 / 0\n```\n<!-- continues -->\n```python\ny = 1\n```\n")
    with pytest.raises(md.BlockFailed, match=r"^page.md:1, which page.md:5 continues, failed: page.md:2: ZeroDivisionError"):
        md.run(parsed, parsed.blocks[1])


def test_continues_after_a_skipped_block_is_skipped():
    parsed = page("<!-- skip: planted -->\n```python\nx = 1\n```\n<!-- continues -->\n```python\ny = x\n```\n")
    assert md.chain_skip(parsed, parsed.blocks[1]) == "continues page.md:2: planted"


def test_a_block_leaves_the_process_as_it_found_it():
    parsed = page("```python\nimport random, torch\nrandom.seed(1)\ntorch.manual_seed(1)\n"
                  "torch.set_default_dtype(torch.float64)\ntorch.set_grad_enabled(False)\n```\n")
    random.seed(7), torch.manual_seed(7)
    expected = random.random(), torch.rand(())
    random.seed(7), torch.manual_seed(7)
    with md.isolated():
        md.run(parsed, parsed.blocks[0])
    assert (random.random(), torch.rand(())) == expected
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()


def test_every_run_starts_fresh_and_seeded():
    parsed = page("```python\nimport random, torch\nassert 'leftover' not in globals()\nleftover = 1\n"
                  "values = (random.random(), torch.rand(()).item())\n```\n")
    assert md.run(parsed, parsed.blocks[0])["values"] == md.run(parsed, parsed.blocks[0])["values"]


def test_a_session_runs_as_a_doctest():
    good = page("```pycon\n>>> x = 2\n>>> x * 3\n6\n>>> list(range(20))\n[0, 1, ..., 19]\n```\n")
    md.run(good, good.blocks[0])
    bad = page("```pycon\n>>> 2 * 3\n7\n```\n")
    with pytest.raises(md.BlockFailed, match="the session's output differs"):
        md.run(bad, bad.blocks[0])


def test_find_wants_exactly_one_block():
    with pytest.raises(AssertionError, match="found 0"):
        md.find("no block holds this text, \x00")
    with pytest.raises(AssertionError, match=r"found ([2-9]|[1-9][0-9]+):"):
        md.find("import torch")
