"""Text from live data or the config made safe to show: one pure module, used by every renderer.

Display names, connection names, flow names, descriptions and owner names come from Dataverse, the
connections API or a config file that anyone may have edited. Printed as they are, an ESC sequence in
a display name would drive the reader's terminal (move the cursor, rewrite earlier lines, set the
window title), a bidi override would make ``contoso_Evil`` read as something else, and a backtick or a
link in a pull-request comment would turn into markup. So:

- ``inert(text)`` for terminals, logs and error messages: every control character (C0, DEL, C1), line
  and paragraph separator, lone surrogate and bidi embedding/override/isolate/mark is shown as a visible
  escape (``\\x1b``, ``\\x07``, ``\\n``, ``\\u202e``), so what is printed is exactly one line of plain
  characters that cannot change how anything else is displayed. Other text is unchanged.
- ``md(text)`` for markdown text (table cells, list items, quotes): ``inert`` first, then HTML special
  characters as entities, backslash escapes for the punctuation that starts inline markup (code,
  emphasis, links and images, strikethrough, table cells) and for a block marker at the start, and a
  zero-width space after ``@`` and ``#`` (before a digit) and inside ``://`` and ``www.`` so that no
  mention, issue reference and no autolink comes out of data.
- ``md_code(text)``: a code span that holds ``text`` literally (a fence longer than any backtick run in
  it; ``|`` escaped, as GitHub-flavoured tables need even inside code).
- ``html_text(text)``: text inside raw HTML of a markdown document (``<summary>``): ``inert``, then HTML
  escapes, and no mention.

They are pure functions of a string; applying one twice is harmless but shows the escapes escaped, so
apply them once, where the text is written out.
"""

from __future__ import annotations

import html
import re
import unicodedata

# C0 controls, DEL and C1 controls (Unicode category Cc), the line and paragraph separators, lone
# surrogates (printing one fails with UnicodeEncodeError), the byte-order mark / zero-width no-break
# space, and the bidi formatting characters: ALM, LRM, RLM, LRE..RLO (embeddings and overrides), and
# LRI..PDI (isolates). Unicode: UAX #9 (bidi) and the Cc general category.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# The ASCII punctuation that starts inline markup in CommonMark and GitHub-flavoured markdown: code,
# emphasis, links and images, strikethrough, table cells, and the backslash itself. A backslash before
# any ASCII punctuation character is always a literal (CommonMark 0.31, "Backslash escapes"). ``_`` is
# left alone between two letters or digits, where it cannot open or close emphasis ("intraword").
_MD_INLINE = re.compile(r"([\\`*\[\]!~|])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# What starts a block when it opens a line (a heading, a quote, a list item, a setext underline).
_MD_BLOCK_START = re.compile(r"^(\s*)(?:([#>+=-])|(\d+)([.)]))")
_ZWSP = "&#8203;"


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def inert(text: object) -> str:
    """``text`` (anything: ``str()`` is taken) with every character that could act on a terminal, or
    reorder what is displayed, shown as a visible escape."""
    s = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape, s)


# What ``inert`` escapes that ``json.dumps(..., ensure_ascii=False)`` leaves raw inside strings (it escapes
# the C0 controls itself; a raw newline in its output is the indentation's, outside any string).
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")


def json_text(text: str) -> str:
    """JSON text made by ``json.dumps(..., ensure_ascii=False)`` with each character that could act on a
    terminal or reorder what is displayed written as its ``\\u`` escape: the same JSON value, readable (other
    non-ASCII text stays as it is), and safe to print with ``cat``. A lone surrogate becomes its escape too,
    so the text always has a UTF-8 form."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def is_inert(text: str) -> bool:
    """True when ``inert`` would leave ``text`` as it is (nothing in it acts on a terminal)."""
    return _UNSAFE.search(text) is None


def _unseen(ch: str) -> bool:
    """A character a reader cannot see, or cannot tell from a plain space: a format character (Cf: zero-width
    space and joiners, soft hyphen, word joiner) or a space other than U+0020 (Zs: no-break, thin, ideographic)."""
    category = unicodedata.category(ch)
    return category == "Cf" or (category == "Zs" and ch != " ")


def _seen(text: str) -> str:
    return "".join(" " if unicodedata.category(c) == "Zs" else "" if _unseen(c) else c for c in text)


def told_apart(before: str, after: str) -> tuple[str, str]:
    """``before`` and ``after`` as a change shows them: when they differ only in characters a reader cannot
    see (``"Dataverse\\u00a0Flows"`` -> ``"Dataverse Flows"``), those characters are escaped in both, so the
    change is visible; otherwise both as they are (an emoji keeps its joiners)."""
    if before == after or _seen(before) != _seen(after):
        return before, after

    def escaped(text: str) -> str:
        return "".join(f"\\u{ord(c):04x}" if _unseen(c) else c for c in text)

    return escaped(before), escaped(after)


def md(text: object) -> str:
    """``text`` as literal markdown text: no emphasis, code, link, image, HTML, heading, list, table cell
    break, mention or autolink can come out of it."""
    s = inert(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_INLINE.sub(lambda m: "\\" + m.group(0), s)
    s = _MD_BLOCK_START.sub(
        lambda m: m.group(1) + ("\\" + m.group(2) if m.group(2) else m.group(3) + "\\" + m.group(4)), s)
    # A zero-width space breaks the patterns GitHub links by itself (mentions, e-mail addresses, bare
    # URLs, www.): the text reads the same.
    # "#12" and "owner/repo#12" link to an issue or pull request of the repository the comment is in. (Before
    # the other zero-width spaces: their entity, &#8203;, has a "#" before a digit of its own.)
    s = re.sub(r"#(?=\d)", "#" + _ZWSP, s)
    s = s.replace("@", "@" + _ZWSP).replace("://", ":" + _ZWSP + "//")
    return re.sub(r"(?i)\b(www)\.", lambda m: m.group(1) + _ZWSP + ".", s)


def md_code(text: object, *, table: bool = False) -> str:
    """``text`` as a markdown code span, shown exactly (after ``inert``). In a table cell (``table``),
    ``|`` is escaped: GitHub-flavoured markdown splits cells on it even inside code."""
    s = inert(text)
    if table:
        s = s.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def html_text(text: object) -> str:
    """``text`` as the content of an HTML element in a markdown document: no tag, entity, mention or issue
    reference."""
    s = re.sub(r"#(?=\d)", "#" + _ZWSP, html.escape(inert(text), quote=True))
    return s.replace("@", "@" + _ZWSP)
