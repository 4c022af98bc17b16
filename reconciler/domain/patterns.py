"""Text patterns more than one layer recognises, each written once: a GUID and a JWT.

Pure: no I/O. The config loader, the OData filter builder, the ``$batch`` reader, the live reader, the
HTTP client's redaction and the saved-plan writer all use these, so they agree on what a GUID or a token
looks like.
"""

from __future__ import annotations

import re

#: A GUID in its canonical 8-4-4-4-12 hex form, either case (Dataverse ids, Entra object and client ids).
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

#: A JSON Web Token (an access token or a federated assertion): a base64url JSON header (``{"`` encodes
#: as ``eyJ``), a payload and an optional signature, dot-separated. A secret wherever it appears.
JWT = re.compile(r"eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*")


def is_guid(value: str | None) -> bool:
    """True when the whole of ``value`` is a GUID."""
    return bool(value) and GUID.fullmatch(value or "") is not None


def has_jwt(text: str) -> bool:
    """True when ``text`` contains something shaped like a JWT."""
    return JWT.search(text) is not None
