"""MkDocs hooks: links from the documentation to files of the repository outside ``docs/``.

Pages link to the results, examples and sources they cite with paths relative to the page
(``../benchmarks/results/x.json``), so that the links also work when the Markdown is read in the
repository. The site publishes each linked file under ``repository/`` and points the link there.
A link to a file that does not exist is left as it is, so MkDocs reports it and ``--strict`` fails.

A line ``--8<-- "PATH"`` (PATH relative to the repository root) is replaced by that file, its
relative links rebased onto the page: the changelog page is the repository's ``CHANGELOG.md``.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files, InclusionLevel

REPOSITORY = Path(os.path.abspath(__file__)).parent.parent
PUBLISHED = "repository"
# An inline Markdown link or image: ](target) or ](target#anchor), the target without spaces.
LINK = re.compile(r"(?P<head>\]\()(?P<target>[^)\s#]*)(?P<anchor>#[^)\s]*)?\)")
# Fenced code blocks and code spans, whose text is not Markdown.
CODE = re.compile(r"^(?P<fence>[ \t]*(?:`{3,}|~{3,})).*?^(?P=fence)[ \t]*$|`[^`\n]*`", re.M | re.S)
INCLUDE = re.compile(r'^--8<-- "(?P<path>[^"]+)"[ \t]*$', re.M)


def _normal(path) -> Path:
    """An absolute path with ``..`` removed, symbolic links kept (a checkout may link folders in)."""
    return Path(os.path.normpath(os.path.abspath(path)))


def _relative(target: str) -> bool:
    return bool(target) and "://" not in target and not target.startswith(("/", "mailto:"))


def _rewrite_links(markdown: str, rewrite) -> str:
    """``markdown`` with each relative link target outside code replaced by ``rewrite(target)``."""
    prose = CODE.sub(lambda m: " " * len(m.group(0)), markdown)
    out, last = [], 0
    for link in LINK.finditer(prose):
        if not _relative(link["target"]):
            continue
        out += [markdown[last : link.start()], link["head"], rewrite(link["target"]), link["anchor"] or "", ")"]
        last = link.end()
    return "".join(out + [markdown[last:]])


def _expand_includes(markdown: str, page_dir: Path) -> str:
    def include(match: re.Match) -> str:
        source = REPOSITORY / match["path"]
        if not source.is_file():
            raise PluginError(f"--8<-- names {match['path']}, which does not exist")
        rebase = lambda target: os.path.relpath(_normal(source.parent / target), page_dir)
        return _rewrite_links(source.read_text(encoding="utf-8"), rebase)

    return INCLUDE.sub(include, markdown)


def _published(path: Path) -> str:
    return f"{PUBLISHED}/{path.relative_to(REPOSITORY).as_posix()}"


def _outside_docs(page_dir: Path, target: str, docs_dir: Path) -> Path | None:
    """The repository file that a link of a page in ``page_dir`` names, if it lies outside docs/."""
    path = _normal(page_dir / target)
    if path.is_relative_to(docs_dir) or not path.is_relative_to(REPOSITORY) or not path.is_file():
        return None
    return path


def _page(docs_dir: Path, src_uri: str, markdown: str, found: list[Path]) -> str:
    page_dir = (docs_dir / src_uri).parent

    def rewrite(target: str) -> str:
        path = _outside_docs(page_dir, target, docs_dir)
        if path is None:
            return target
        found.append(path)
        return posixpath.relpath(_published(path), posixpath.dirname(src_uri) or ".")

    return _rewrite_links(_expand_includes(markdown, page_dir), rewrite)


def on_files(files: Files, config) -> Files:
    docs_dir = _normal(config["docs_dir"])
    for page in list(files.documentation_pages()):
        found: list[Path] = []
        _page(docs_dir, page.src_uri, Path(page.abs_src_path).read_text(encoding="utf-8"), found)
        for path in found:
            if files.get_file_from_path(_published(path)) is None:
                files.append(
                    File.generated(config, _published(path), abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV)
                )
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    return _page(_normal(config["docs_dir"]), page.file.src_uri, markdown, [])
