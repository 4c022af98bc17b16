"""Comment-preserving edits of YAML text.

A YAML round trip through a parser drops comments, so config files are edited as text, guided by
the positions PyYAML reports: ``mapping_entries`` maps a block mapping to line ranges (``Entry``), ``find_entry``
looks one up, ``splice_lines`` replaces line ranges, ``indent_unit`` tells the file's indentation step.
``yaml_scalar`` writes a value that loads back to exactly itself; ``comment_lines`` writes wrapped comment
lines; the parked-block helpers keep declarations commented out with a mark (``#| ``) so a later edit
can find them again, and ``strip_generated`` drops the comments an earlier import wrote.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import yaml

from reconciler.domain.text import inert, is_inert


def yaml_scalar(value: str | int | bool | None) -> str:
    """``value`` as a YAML scalar that loads back to exactly ``value``: plain when that is safe,
    quoted otherwise (``yes``, ``1.0``, ``a: b``, ``x #y`` and friends). A value holding a control,
    line-breaking or bidi character (anything ``inert`` would show escaped) is double-quoted with every
    character outside ASCII escaped (``"\\e"``, ``"\\u202E"``), so the file holds no such character raw
    and still loads back to the same string."""
    if value is None:
        return "null"
    hostile = isinstance(value, str) and not is_inert(value)
    text = yaml.safe_dump({"k": value}, allow_unicode=not hostile, width=2**30,
                          default_style='"' if hostile else None, default_flow_style=False)
    # With default_style the key is quoted too: skip past it either way.
    out = text.split(": ", 1)[1].rstrip("\n")
    return out


def yaml_key(name: str) -> str:
    return yaml_scalar(name)


_COMMENT_WIDTH = 100


def comment_lines(text: str, indent: str, *, wrap: bool = True) -> list[str]:
    """``text`` as comment lines at ``indent``, wrapped so a reader need not scroll sideways
    (continuation lines indented by two more spaces). ``wrap=False`` for commented-out YAML that the
    user is meant to uncomment as is: exactly one line.

    ``text`` is one paragraph; call once per line for several. Comments quote live names (display
    names, flow names, owners), so the whole text is shown inert, a line break included (as ``\\n``):
    nothing in a name can end the comment and start a line of its own, such as a binding that reads as
    one import commented out."""
    shown = inert(text)
    if not wrap:
        return [f"{indent}# {shown}".rstrip()]
    width = max(_COMMENT_WIDTH - len(indent) - 2, 40)
    wrapped = textwrap.wrap(shown, width=width, subsequent_indent="  ", break_long_words=False,
                            break_on_hyphens=False) or [""]
    return [f"{indent}# {line}".rstrip() for line in wrapped]


# The comments import itself writes, so a re-import replaces them instead of piling them up.
_GENERATED = re.compile(
    r"#\s(CR\d{3}\s|declared before, |Also in \S+ but not in solution|plan would refuse"
    r"|owned by \S+: with |no service_account for this environment"
    r"|solution \S+ has no connection references|no display name today|parked: )"
)


# Declarations import takes out of the config but keeps for the user: YAML commented out with this
# mark, so a later import can find them again and the user can restore them by deleting the mark.
PARK_MARK = "#| "


Parked = tuple[str, list[str]]


def parked_groups(lines: Sequence[str]) -> list[Parked]:
    """The parked declarations in ``lines``: (key, its YAML lines without the mark and indentation)."""
    groups: list[tuple[str, list[str]]] = []
    for line in lines:
        text = line.strip()
        if not text.startswith(PARK_MARK.strip()):
            continue
        content = text[len(PARK_MARK):] if text.startswith(PARK_MARK) else text[len(PARK_MARK.strip()):]
        if content and not content[0].isspace() and ":" in content:
            groups.append((content.split(":", 1)[0].strip().strip("'\""), [content]))
        elif groups:
            groups[-1][1].append(content)
    return groups


def park_block(block: Sequence[str], column: int) -> list[str]:
    """An entry's YAML lines (its comments dropped), without the indentation of ``column``."""
    out = []
    for line in strip_generated(block):
        if not line.strip() or is_comment_line(line):
            continue
        out.append(line[column:] if line[:column].strip() == "" else line.lstrip())
    return out


def parked_lines(key: str, content: Sequence[str], indent: str, note: str | None) -> list[str]:
    out = comment_lines(note, indent) if note else []
    return out + [f"{indent}{PARK_MARK}{line}".rstrip() for line in content]


def strip_generated(block: Sequence[str]) -> list[str]:
    """``block`` without the comments an earlier import wrote: a generated line, its wrapped
    continuation lines (``#   ...``), and the commented-out example after one that ends with ``:``."""
    out: list[str] = []
    in_generated = False
    example_next = False
    for line in block:
        text = line.strip()
        if text.startswith(PARK_MARK.strip()):
            continue  # parked declarations are collected and written again separately
        if not text.startswith("#"):
            in_generated = example_next = False
            out.append(line)
            continue
        if _GENERATED.match(text):
            in_generated, example_next = True, text.endswith(":")
            continue
        if in_generated and text.startswith("#   "):
            example_next = example_next or text.endswith(":")
            continue
        if in_generated and example_next:
            example_next = False
            continue
        in_generated = example_next = False
        out.append(line)
    return out


@dataclass
class Entry:
    """One ``key: value`` of a block mapping, as lines of the file: ``start`` includes the comment lines
    directly above the key, ``end`` excludes the blank lines that separate it from the next entry."""

    key: str
    start: int
    key_line: int
    end: int
    column: int
    value: yaml.Node


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def is_comment_line(line: str) -> bool:
    return line.lstrip().startswith("#")


def mapping_entries(lines: Sequence[str], node: yaml.Node, lo: int, hi: int) -> list[Entry] | None:
    """The entries of the block mapping ``node`` between lines ``lo`` and ``hi``; None when ``node`` is
    not a block mapping with plain string keys (then the caller falls back to a rewrite)."""
    if not isinstance(node, yaml.MappingNode) or node.flow_style:
        return None
    keys: list[tuple[str, int, int, yaml.Node]] = []
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            return None
        keys.append((str(k.value), k.start_mark.line, k.start_mark.column, v))
    out: list[Entry] = []
    for i, (key, line, col, value) in enumerate(keys):
        floor = keys[i - 1][1] + 1 if i else lo
        if i and isinstance(keys[i - 1][3], yaml.ScalarNode):
            floor = max(floor, keys[i - 1][3].end_mark.line + 1)
        start = line
        # Comments directly above a key, at its indentation, belong to it; deeper ones close the
        # previous entry (what an import writes after the last binding, for instance).
        while start - 1 >= floor and is_comment_line(lines[start - 1]) and _indent(lines[start - 1]) == col:
            start -= 1
        out.append(Entry(key, start, line, hi, col, value))
    for i in range(len(out) - 1):
        out[i].end = out[i + 1].start
    for e in out:  # leave separating blank lines outside the entry
        while e.end > e.key_line + 1 and not lines[e.end - 1].strip():
            e.end -= 1
    return out


def find_entry(entries: Iterable[Entry], key: str, *, fold: bool = False) -> Entry | None:
    for e in entries:
        if e.key == key or (fold and e.key.lower() == key.lower()):
            return e
    return None


def splice_lines(lines: list[str], edits: list[tuple[int, int, list[str]]]) -> list[str]:
    """Replace line ranges ``[start, end)`` with new lines; ranges must not overlap."""
    out = list(lines)
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        out[start:end] = new
    return out


def indent_unit(lines: Sequence[str], root_entries: Sequence[Entry]) -> str:
    """The indentation step the file uses (two spaces when it cannot tell)."""
    for name in ("environments", "references", "auth"):
        e = find_entry(root_entries, name)
        if e is not None:
            children = mapping_entries(lines, e.value, e.key_line + 1, e.end)
            if children and children[0].column > 0:
                return " " * children[0].column
    return "  "
