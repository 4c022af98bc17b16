"""JSON Schemas (draft 2020-12) of the documents connref prints and writes, one file per document and major
format version: ``plan-1.json`` (``plan --json``, ``show --json``), ``saved-plan-1.json`` (``plan --out``),
``drift-1.json`` (``drift --json``), ``lint-1.json`` (``lint --json``), ``state-1.json`` (a state document,
``state show --json``). A minor format version only adds fields, so a schema stays valid for all of 1.x.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

#: Document kind -> schema file name.
SCHEMAS = {
    "plan": "plan-1.json",
    "saved-plan": "saved-plan-1.json",
    "drift": "drift-1.json",
    "lint": "lint-1.json",
    "state": "state-1.json",
}


def load_schema(kind: str) -> dict[str, Any]:
    """The schema of a document kind (a key of ``SCHEMAS``), as parsed JSON."""
    try:
        name = SCHEMAS[kind]
    except KeyError:
        raise ValueError(f"no schema for {kind!r}; known: {', '.join(SCHEMAS)}") from None
    doc: dict[str, Any] = json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))
    return doc
