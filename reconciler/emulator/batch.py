"""Placeholder replaced below."""
from __future__ import annotations

from .dvcommon import Ctx
from .web import HttpError, Response


def handle(ctx: Ctx) -> Response:
    raise HttpError(501, "", "$batch is not implemented yet.")
