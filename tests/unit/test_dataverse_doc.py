"""docs/dataverse.md stays the one place platform facts are cited from.

Every ``docs/dataverse.md §N.M`` in code, tests, examples and docs, and every Markdown link to
``dataverse.md#anchor``, must name a section that exists; no file may cite notes that are not in the
repository; and a ``§`` that is not such a citation (other than an RFC section) is refused, so a
citation cannot slip past in another form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "docs" / "dataverse.md"
SCANNED = ("reconciler", "tests", "docs", "examples", "state", "README.md")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".json", ".txt", ".toml"}

SECTION_HEADING = re.compile(r"^### (\d+\.\d+) ", re.MULTILINE)
SEC = r"§(\d+\.\d+)"
# "docs/dataverse.md §1.2", "dataverse.md §1.2, §3.4", "docs/dataverse.md §4.2-§4.5" (may wrap lines).
TEXT_CITATION = re.compile(rf"dataverse\.md\s+{SEC}((?:\s*(?:,|-|and)\s*{SEC})*)")
# "[§3.10](dataverse.md#310-impersonation)", "[dataverse.md §2.1](docs/dataverse.md#21-...)".
LINK = re.compile(r"\[([^\]]*)\]\(((?:\.\./|\./)?(?:docs/)?dataverse\.md)(?:#([^)\s]*))?\)")
RFC_SECTION = re.compile(r"RFC \d+ §$")
# Ways of pointing at notes outside the repository. Built from parts so this file does not match itself.
OUTSIDE = [re.compile(p, re.IGNORECASE) for p in (
    "shared" + r"\s+(?:reference\s+)?notes",
    "reference" + r"\s+notes",
    "dataverse" + r"-api\.md",
    "landscape" + r"\.md",
    "reconciler-semantics" + r"-and-style\.md",
    r"\.\./" + "shared/",
    "/work/" + "shared",
    r"\b(?:notes|reference)\s+" + "§",
)]


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections(text: str) -> dict[str, str]:
    """Section number -> anchor, from the ``### N.M Title`` headings of docs/dataverse.md."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = SECTION_HEADING.match(line)
        if m:
            if m.group(1) in found:
                raise AssertionError(f"docs/dataverse.md: section §{m.group(1)} appears twice")
            found[m.group(1)] = slug(line[4:])
    return found


def heading_anchors(text: str) -> set[str]:
    """The anchors of every heading of a Markdown text."""
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


@dataclass(frozen=True)
class Scan:
    """One file being checked: says where a problem is."""

    name: str
    text: str

    def at(self, pos: int, problem: str) -> str:
        line = self.text.count("\n", 0, pos) + 1
        return f"{self.name}:{line}: {problem}"


def problems_in(name: str, text: str, known: dict[str, str], *, own: bool = False,
                other_anchors: frozenset[str] = frozenset()) -> list[str]:
    """What is wrong with the citations of one file. ``own``: the text is docs/dataverse.md itself, where
    a bare ``§N.M`` refers to its own sections and ``(#anchor)`` links to its own headings.
    ``other_anchors``: anchors of the page's headings that are not numbered sections."""
    scan = Scan(name, text)
    anchors = {a: n for n, a in known.items()}
    covered: list[tuple[int, int]] = []  # spans read as citations: their '§' are accounted for
    found = text_citation_problems(scan, known, covered)
    found += link_problems(scan, anchors, other_anchors, covered)
    found += stray_section_signs(scan, known, own, covered)
    if own:
        found += [scan.at(m.start(), f"links #{m.group(1)}, which is no heading")
                  for m in re.finditer(r"\]\(#([^)\s]+)\)", text)
                  if m.group(1) not in anchors and m.group(1) not in other_anchors]
    found += [scan.at(m.start(), f"cites notes outside the repository: {m.group(0)!r}")
              for pattern in OUTSIDE for m in pattern.finditer(text)]
    return found


def text_citation_problems(scan: Scan, known: dict[str, str], covered: list[tuple[int, int]]) -> list[str]:
    """``dataverse.md §N.M`` citations of sections that do not exist (their spans added to ``covered``)."""
    found: list[str] = []
    for m in TEXT_CITATION.finditer(scan.text):
        covered.append(m.span())
        for number in [m.group(1), *re.findall(SEC, m.group(2) or "")]:
            if number not in known:
                found.append(scan.at(m.start(), f"cites docs/dataverse.md §{number}, which does not exist"))
    return found


def link_problems(scan: Scan, anchors: dict[str, str], other_anchors: frozenset[str],
                  covered: list[tuple[int, int]]) -> list[str]:
    """Links to dataverse.md anchors that are no section, or whose text names another section (their
    spans added to ``covered``)."""
    found: list[str] = []
    for m in LINK.finditer(scan.text):
        covered.append(m.span())
        label, anchor = m.group(1), m.group(3)
        if anchor is None:
            continue
        if anchor not in anchors:
            if anchor not in other_anchors or re.search(SEC, label):
                found.append(scan.at(m.start(), f"links dataverse.md#{anchor}, which is no section"))
            continue
        found += [scan.at(m.start(), f"link text §{number} points at §{anchors[anchor]}")
                  for number in re.findall(SEC, label) if number != anchors[anchor]]
    return found


def stray_section_signs(scan: Scan, known: dict[str, str], own: bool, covered: list[tuple[int, int]]) -> list[str]:
    """Every '§' outside a citation (but an RFC's), or, in docs/dataverse.md itself, naming no section."""
    found: list[str] = []
    text = scan.text
    for m in re.finditer("§", text):
        if any(start <= m.start() < end for start, end in covered):
            continue
        if RFC_SECTION.search(text[max(0, m.start() - 16):m.end()]):
            continue
        own_ref = re.match(SEC, text[m.start():])
        if own and own_ref:
            if own_ref.group(1) not in known:
                found.append(scan.at(m.start(), f"refers to §{own_ref.group(1)}, which does not exist"))
            continue
        found.append(scan.at(m.start(), "'§' outside a docs/dataverse.md citation: "
                             f"{text[max(0, m.start() - 30):m.end() + 10]!r}"))
    return found


def scanned_files() -> list[Path]:
    me = Path(__file__).resolve()
    files: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in sorted(path.rglob("*"))
                         if p.is_file() and p.suffix in SUFFIXES and p.resolve() != me
                         and ".venv" not in p.parts and "__pycache__" not in p.parts)
    return files


KNOWN = sections(FACTS.read_text(encoding="utf-8"))
HEADINGS = frozenset(heading_anchors(FACTS.read_text(encoding="utf-8")))


def test_the_facts_page_has_numbered_sections_each_with_a_source() -> None:
    text = FACTS.read_text(encoding="utf-8")
    assert len(KNOWN) >= 30
    bodies = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    missing = [b.splitlines()[0] for b in bodies if not re.search(r"\bSources?\b", b)]
    assert missing == [], f"sections without a source: {missing}"


def test_every_citation_names_an_existing_section_and_none_cites_outside_notes() -> None:
    found: list[str] = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        found += problems_in(str(path.relative_to(ROOT)), text, KNOWN, own=path.resolve() == FACTS.resolve(),
                             other_anchors=HEADINGS)
    assert found == [], "\n".join(found)


def test_the_code_cites_the_facts_page() -> None:
    """The check has something to check: the platform clients and the emulator cite sections."""
    cited = {path.relative_to(ROOT).as_posix() for path in scanned_files()
             if TEXT_CITATION.search(path.read_text(encoding="utf-8", errors="replace"))}
    for module in ("reconciler/api/client.py", "reconciler/api/live.py", "reconciler/emulator/connrefs.py"):
        assert module in cited


@pytest.mark.parametrize(("text", "expected"), [
    ("# docs/dataverse.md §9.9", "§9.9, which does not exist"),
    ("# docs/dataverse.md §1.2, §9.8", "§9.8, which does not exist"),
    ("see [§3.10](dataverse.md#no-such-anchor)", "no section"),
    ("see [§1.2](dataverse.md#310-impersonation)", "link text §1.2 points at §3.10"),
    ("(" + "shared" + " notes §2.6)", "outside"),
    ("(" + "dataverse" + "-api.md §7)", "outside"),
    ("(reference §6.2)", "outside"),
    ("see " + "reconciler-semantics" + "-and-style.md.", "outside"),
    ("(" + "landscape" + ".md)", "outside"),
    ("(§2.4)", "'§' outside a docs/dataverse.md citation"),
])
def test_the_check_refuses_bad_citations(text: str, expected: str) -> None:
    found = problems_in("x.py", text, KNOWN)
    assert any(expected in p for p in found), found


def test_the_check_refuses_a_broken_link_inside_the_facts_page() -> None:
    found = problems_in("docs/dataverse.md", "see [1.2](#12-no-such-heading) and §9.1", KNOWN, own=True,
                        other_anchors=HEADINGS)
    assert any("#12-no-such-heading, which is no heading" in p for p in found), found
    assert any("§9.1, which does not exist" in p for p in found), found


@pytest.mark.parametrize("text", [
    "# docs/dataverse.md §1.2",
    "# docs/dataverse.md §4.2-§4.5, §6.1",
    "(docs/dataverse.md §3.3,\n§3.4)",
    "[§3.10](dataverse.md#310-impersonation) and [dataverse.md](dataverse.md)",
    "Basic auth (RFC 6749 §2.3.1)",
])
def test_the_check_accepts_good_citations(text: str) -> None:
    assert problems_in("x.py", text, KNOWN) == []
