"""The one reader of the JSON files connref keeps for itself: state files (and blobs), lock files and
saved plans.

These files are written by connref, but they sit on a disk or in a container where a person, a tool or
a fault can change them, so they are read as untrusted input. ``json.loads`` alone raises
``RecursionError`` on a document nested a few thousand levels deep (and code that walks a deep document
afterwards fails the same way at a depth the decoder accepts), a ``ValueError`` on an integer of more
than 4,300 digits, and accepts ``NaN`` and ``Infinity``, which are not JSON. ``load_json`` refuses each
of them with a ``JsonFileProblem`` whose words are safe to print (never a part of the file), so every
caller reports a damaged file the way it reports any other damage.

connref's own documents nest at most eight levels (a saved plan); ``MAX_DEPTH`` leaves
ample room for a newer minor version and stays far below what any reader of them recurses into.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.api.shapes import ShapeProblem, bounded_int, depth_of, no_constant

#: Deepest nesting accepted (a scalar is depth 0, ``[]`` depth 1).
MAX_DEPTH = 64


class JsonFileProblem(ValueError):
    """What is wrong with a JSON file, in words that quote nothing from it."""


def load_json(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``raw`` (UTF-8 bytes, or text already decoded).

    Raises ``JsonFileProblem`` when it is not UTF-8, not JSON, nested deeper than ``max_depth``, or holds
    ``NaN``, ``Infinity`` or an integer too long to be one connref wrote."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonFileProblem(f"it is not UTF-8 text (byte {e.start})") from None
    else:
        text = raw
    try:
        # The same bounds as the answers of the services (reconciler.api.shapes): no NaN, no integer longer
        # than connref ever writes.
        value = json.loads(text, parse_constant=no_constant, parse_int=bounded_int)
    except ShapeProblem as e:
        raise JsonFileProblem(str(e).replace("the JSON holds", "it holds")) from None
    except json.JSONDecodeError as e:
        raise JsonFileProblem(f"it is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except RecursionError:  # the decoder recurses once per level: deep enough, and it gives up
        raise JsonFileProblem(f"it is nested deeper than {max_depth} levels") from None
    except ValueError as e:  # a number Python will not convert
        raise JsonFileProblem(f"it holds a number connref cannot read ({type(e).__name__})") from None
    # What the decoder still accepts (a few hundred levels) is more than the code reading the document
    # (schema checks, serialisers) may recurse into: refused here, at the one bound.
    if depth_of(value, max_depth) > max_depth:
        raise JsonFileProblem(f"it is nested deeper than {max_depth} levels")
    return value
