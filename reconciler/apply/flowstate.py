"""The one request that switches a cloud flow on or off (docs/dataverse.md §5.1: ``statecode`` 1 /
``statuscode`` 2 is on, ``statecode`` 0 / ``statuscode`` 1 is off). One rule for both directions: the
applier's flow activation (``ActivateFlow``) switches on with it, and a step that must switch a flow off
(to edit its definition, docs/dataverse.md §5.9) switches off with it."""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.api.batch_format import BatchOperation, update_op

ON = {"statecode": 1, "statuscode": 2}
OFF = {"statecode": 0, "statuscode": 1}


def flow_state_request(flow_id: str, label: str, *, on: bool, etag: str | None,
                       select: Sequence[str] | None = None) -> BatchOperation:
    """``PATCH workflows(id)`` with the state; ``If-Match`` ``etag``: the ETag the flow was read with, or
    ``ANY_VERSION`` (the row must exist, whatever its version) where the caller means it. No ETag is a
    ``ValueError`` (``update_op``). With ``select`` the answer carries the row (its new ETag)."""
    return update_op("workflows", flow_id, ON if on else OFF, etag=etag, label=label, select=select)
