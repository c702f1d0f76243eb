"""Comments cite the repository's own docs, and every cited section exists.

A comment that rests on a design rule says where the rule is written: `docs/<NAME>.md, '<Section>'`, the section's
heading word for word. These tests read every such citation in the package, the tests and the benchmarks and
check the file and the heading; they also refuse citations of a design brief that is not in the repository, and
check that the links of docs/DESIGN.md lead somewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CITING = ("openslip", "tests", "benchmarks")
# `docs/DESIGN.md, 'Bad input'` (single or double quotes, on one line)
CITATION = re.compile(r"""docs/(?P<file>[\w-]+\.md), (?P<q>['"])(?P<section>[^'"\n]+)(?P=q)""")
# A citation broken over two lines: the file and its comma at the end of a line, or an unclosed quote.
BROKEN = re.compile(r"""docs/[\w-]+\.md,\s*$|docs/[\w-]+\.md, ['"][^'"\n]*$""", re.MULTILINE)
# Section numbers of a brief the repository does not hold (written in two parts so this file does not match).
EXTERNAL = re.compile("DESIGN" + r"(\.md)?,? *(§|defect)|" + "DESIGN" + ":")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _sources() -> list[Path]:
    return sorted(p for part in CITING for p in (ROOT / part).rglob("*") if p.suffix in {".py", ".md"})


def _headings(doc: Path) -> list[str]:
    """The headings of a Markdown file, outside fenced code blocks."""
    out, fenced = [], False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            out.append(m.group(1))
    return out


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _citations() -> list[tuple[str, int, str, str]]:
    found = []
    for path in _sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in CITATION.finditer(line):
                found.append((str(path.relative_to(ROOT)), number, m.group("file"), m.group("section")))
    return found


CITATIONS = _citations()


def test_the_code_cites_the_design_notes() -> None:
    # a guard against a pattern that silently matches nothing
    assert sum(cited == "DESIGN.md" for _, _, cited, _ in CITATIONS) >= 30


@pytest.mark.parametrize(("where", "line", "cited", "section"), CITATIONS, ids=[f"{w}:{n}" for w, n, _, _ in CITATIONS])
def test_cited_section_exists(where: str, line: int, cited: str, section: str) -> None:
    doc = ROOT / "docs" / cited
    assert doc.is_file(), f"{where}:{line} cites docs/{cited}, which does not exist"
    headings = _headings(doc)
    assert section in headings, f"{where}:{line} cites docs/{cited}, '{section}': no such heading in {headings}"


def test_no_citation_is_broken_over_lines() -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}"
        for path in _sources()
        for text in [path.read_text(encoding="utf-8")]
        for m in BROKEN.finditer(text)
    ]
    assert not broken, f"write `docs/<NAME>.md, '<Section>'` on one line: {broken}"


def test_no_citation_of_a_brief_outside_the_repository() -> None:
    files = [*_sources(), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    external = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if EXTERNAL.search(line)
    ]
    assert not external, f"cite docs/DESIGN.md by section title instead: {external}"


def test_design_notes_links_resolve() -> None:
    design = ROOT / "docs" / "DESIGN.md"
    bad = []
    for target in LINK.findall(design.read_text(encoding="utf-8")):
        name, _, anchor = target.partition("#")
        doc = (design.parent / name).resolve() if name else design
        if not doc.is_file():
            bad.append(f"{target}: no such file")
        elif anchor and anchor not in {_anchor(h) for h in _headings(doc)}:
            bad.append(f"{target}: no such heading")
    assert not bad, bad


def test_design_notes_are_linked_from_the_docs() -> None:
    assert "DESIGN.md" in (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert "docs/DESIGN.md" in (ROOT / "README.md").read_text(encoding="utf-8")
