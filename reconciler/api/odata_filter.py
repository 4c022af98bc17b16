"""OData literals and expressions, built only from escaped values and checked names.

``$filter`` expressions come from ``eq``, ``ne``, ``any_of``, ``all_of`` and ``either``, which escape every
value through ``literal`` (strings in single quotes, single quotes doubled: OData ABNF ``SQUOTE-in-string``)
and accept only plain column names, so no user value can change the meaning of a query. ``entity_path``
and ``odata_bind`` write the key path of one row (``connectionreferences(<guid>)``) from the same checked
parts. Pure text: no I/O; ``reconciler.api.client`` puts these into requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.domain.patterns import is_guid

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# --------------------------------------------------------------------------- filter builder


@dataclass(frozen=True)
class Guid:
    """A GUID literal: written unquoted in a filter, as OData 4.0 writes Edm.Guid values."""

    value: str

    def __post_init__(self) -> None:
        if not is_guid(self.value):
            raise ValueError(f"not a GUID: {self.value!r}")


@dataclass(frozen=True)
class Filter:
    """An OData ``$filter`` expression built only from escaped literals and checked column names."""

    text: str

    def __and__(self, other: Filter) -> Filter:
        return Filter(f"({self.text}) and ({other.text})")

    def __or__(self, other: Filter) -> Filter:
        return Filter(f"({self.text}) or ({other.text})")

    def __str__(self) -> str:
        return self.text


def literal(value: object) -> str:
    """An OData literal: strings quoted with single quotes doubled (OData ABNF ``SQUOTE-in-string``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Guid):
        return value.value.lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no OData literal for {type(value).__name__}")


def checked_column(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a column name: {name!r}")
    return name


def eq(column: str, value: object) -> Filter:
    """``column eq value``; string comparison is case-insensitive on Dataverse (docs/dataverse.md §3.6)."""
    return Filter(f"{checked_column(column)} eq {literal(value)}")


def ne(column: str, value: object) -> Filter:
    return Filter(f"{checked_column(column)} ne {literal(value)}")


def any_of(column: str, values: Iterable[object]) -> Filter:
    """``(column eq v1 or column eq v2 ...)``: one request for a set of keys instead of one per key."""
    parts = [f"{checked_column(column)} eq {literal(v)}" for v in values]
    if not parts:
        raise ValueError("any_of needs at least one value")
    return Filter("(" + " or ".join(parts) + ")")


def all_of(*filters: Filter) -> Filter:
    return Filter(" and ".join(f"({f.text})" for f in filters))


def either(*filters: Filter) -> Filter:
    return Filter(" or ".join(f"({f.text})" for f in filters))


# --------------------------------------------------------------------------- row paths


def entity_path(entity_set: str, entity_id: str) -> str:
    """``connectionreferences(<guid>)``, relative to the API root."""
    return f"{checked_column(entity_set)}({Guid(entity_id).value.lower()})"


def odata_bind(entity_set: str, entity_id: str) -> str:
    """The value of a ``<nav>@odata.bind`` property, e.g. ``systemusers(<guid>)``."""
    return entity_path(entity_set, entity_id)
