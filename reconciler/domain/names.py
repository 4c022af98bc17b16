"""Naming rules for connection reference logical names and publisher prefixes (pure functions).

Source: docs/dataverse.md §1.6, after the solution publisher documentation ("between
two and eight characters long, and can contain only alphanumeric characters. It cannot start with
'mscrm'") and the 200-character maximum of ``connectionreferencelogicalname``. Which characters
Dataverse accepts after the prefix is not documented; connref allows what shipped solutions and
Copilot Studio use: letters, digits, ``_``, ``.`` and ``-``.
"""

from __future__ import annotations

import re

MAX_LOGICAL_NAME = 200
PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{1,7}")
REST_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_BAD_CHAR_RE = re.compile(r"[^A-Za-z0-9_.\-]")


def publisher_prefix(logical_name: str) -> str | None:
    """The part before the first underscore, or None when there is no underscore."""
    head, sep, _ = logical_name.partition("_")
    return head if sep else None


def prefix_problem(prefix: str) -> str | None:
    """Why a publisher prefix is invalid, or None when it is valid."""
    if not 2 <= len(prefix) <= 8:
        return f"the publisher prefix '{prefix}' must be 2 to 8 characters long"
    if not prefix[0].isascii() or not prefix[0].isalpha():
        return f"the publisher prefix '{prefix}' must start with a letter"
    if not PREFIX_RE.fullmatch(prefix):
        return f"the publisher prefix '{prefix}' may contain only letters and digits"
    if prefix.lower().startswith("mscrm"):
        return "the publisher prefix must not start with 'mscrm' (reserved by Microsoft)"
    return None


def logical_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid connection reference logical name, or None when it is valid.

    Valid: ``<prefix>_<rest>``, prefix per ``prefix_problem``, rest of letters, digits, ``_``, ``.``
    and ``-``, at most 200 characters in all."""
    if len(name) > MAX_LOGICAL_NAME:
        return f"a logical name may be at most {MAX_LOGICAL_NAME} characters (this one has {len(name)})"
    prefix = publisher_prefix(name)
    if prefix is None:
        return "a logical name must be <publisher prefix>_<name>, e.g. contoso_SharePoint"
    problem = prefix_problem(prefix)
    if problem:
        return problem
    rest = name[len(prefix) + 1 :]
    if not rest:
        return "a logical name needs a name after the publisher prefix and '_'"
    if not REST_RE.fullmatch(rest):
        bad = _BAD_CHAR_RE.search(rest)
        shown = repr(bad.group(0)) if bad else "a character"
        return f"a logical name may contain only letters, digits, '_', '.' and '-' (found {shown})"
    return None


def is_valid_logical_name(name: str) -> bool:
    return logical_name_problem(name) is None
