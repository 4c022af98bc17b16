"""Access tokens for connref's two APIs (Dataverse and the connections API), one provider per auth profile.

Every method goes through MSAL except ``access_token`` (a bearer token handed in by the pipeline).
Providers cache tokens for the process and renew them before they expire.
"""

from __future__ import annotations

from typing import Protocol


class TokenProvider(Protocol):
    """Gives a bearer token for a scope such as ``https://org.crm.dynamics.com/.default``."""

    def get_token(self, scope: str) -> str: ...


class StaticTokenProvider:
    """A fixed bearer token (``method: access_token``); the same token serves every scope."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, scope: str) -> str:
        return self._token

    def __repr__(self) -> str:  # never show the token
        return "StaticTokenProvider(<redacted>)"
