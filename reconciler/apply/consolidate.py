"""Applying a consolidation: move each flow onto the kept reference, then delete the replaced references
nothing uses any more. Called by ``reconciler.apply.applier.apply_environment`` (the writer), after the
references are written and their rebinds have reached the flows; the flows switched off here are switched on
again by the plan's flow activation (``ActivateFlow``, the applier's ``_switch_on``), in its passes.

Per flow (``RepointFlow``; docs/dataverse.md §5.1, §5.9), one request each, as the writer:

1. a flow that is on is switched off (``reconciler.apply.flowstate``), with ``If-Match`` the ETag read when
   planning: a flow changed since is not touched (412: plan again);
2. its new definition is written (``clientdata``), with ``If-Match`` the ETag the previous write returned
   (or the one read when planning).

Before the first flow is switched off, ``before_switch_off`` is called with the flows about to be switched
off, so the caller records them (the state's flows to restore): an apply interrupted at any point before they
are on again is finished by the next one. A flow switched off whose definition could not be written is still
switched on again by its activation, with the definition it had. The first flow that is not moved stops the
moves: the flows after it are not attempted (and stay as they are).

Then each replaced reference (``RetireReference``) is deleted, with ``If-Match``, once every flow that used
it was moved; otherwise it is not sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from reconciler.api.batch_format import BatchOperation, OperationResult, delete_op, update_op
from reconciler.apply.flowstate import flow_state_request
from reconciler.domain import rules
from reconciler.errors import ApiError, OutcomeUnknownError, PreconditionFailedError
from reconciler.plan.ops import RepointFlow, RetireReference

FLOW_ROW = ("workflowid", "statecode")
#: What a move whose answer was lost reads back of its flow.
FLOW_READ_COLUMNS = ("workflowid", "statecode", "statuscode", "clientdata")

#: Outcomes of a move: ``moved`` (its new definition written), ``not_moved`` (a write refused: as it was, but
#: off when it was switched off), ``move_not_attempted`` (nothing sent: as it was).
MoveOutcome = Literal["moved", "not_moved", "move_not_attempted"]
MOVE_OUTCOMES = frozenset({"moved", "not_moved", "move_not_attempted"})


@dataclass(frozen=True)
class Move:
    """What became of one ``RepointFlow``: the outcome, why, whether this apply switched it off (or may have:
    a switch-off whose answer was lost), and the ``OperationResult`` of the write that decided it."""

    op: RepointFlow
    outcome: MoveOutcome
    reason: str = ""
    switched_off: bool = False
    result: OperationResult | None = None

    @property
    def moved(self) -> bool:
        return self.outcome == "moved"

    @property
    def still_on(self) -> bool:
        """It was on and is on as it was: never switched off."""
        return self.op.switch_off and not self.switched_off


def _etag(r: OperationResult) -> str | None:
    body = r.body if isinstance(r.body, dict) else {}
    value = body.get("@odata.etag")
    return str(value) if value else None


class BatchWriter(Protocol):
    """What the moves write through: one atomic ``$batch`` change set per call."""

    def execute_batch(
        self, operations: Sequence[BatchOperation], *, caller_object_id: str | None = None
    ) -> list[OperationResult]: ...


#: Reads one flow's row (state, definition, ETag) by id; None when there is none. Handed in by the caller
#: (its live reader): the applier reads nothing of its own.
FlowReader = Callable[[str], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Mover:
    """Writes the moves through ``writer`` as ``caller_object_id``; ``read_flow`` reads a flow back when the
    answer to a write was lost."""

    writer: BatchWriter
    read_flow: FlowReader
    caller_object_id: str | None = None


def _send(mover: Mover, request: BatchOperation, op: RepointFlow, etag: str | None) -> OperationResult:
    """One write to the flow's row. When its answer is lost, it is not sent again: the row is read back and
    the rules layer says whether it was written (``rules.flow_write_landed``; docs/dataverse.md §3.12)."""
    try:
        (r,) = mover.writer.execute_batch([request], caller_object_id=mover.caller_object_id)
    except OutcomeUnknownError as lost:
        return _settle(mover, request, op, etag, lost)
    except ApiError as exc:
        r = OperationResult(request, "failed", status=exc.status, error=exc, reason=str(exc))
    return r


def _settle(mover: Mover, request: BatchOperation, op: RepointFlow, etag: str | None,
            lost: OutcomeUnknownError) -> OperationResult:
    unknown = OperationResult(request, "failed", status=lost.status, error=lost, reason=str(lost))
    try:
        row = mover.read_flow(op.flow_id)
    except ApiError:
        return unknown
    landed = rules.flow_write_landed(etag=etag, expected=request.body or {}, found=row)
    if landed:
        return OperationResult(request, "written", body=row, reason=f"{lost.why}; read back: written")
    if landed is False:
        return OperationResult(request, "not_written", status=lost.status, reason=f"{lost.why}; read back: not written")
    return unknown


def _why(r: OperationResult, what: str, op: RepointFlow) -> str:
    if isinstance(r.error, PreconditionFailedError):
        return (f'flow "{op.logical_name}" changed in {op.environment} since the plan was made (its ETag moved), '
                f"so it was not {what}: plan again. Service said: {r.error}")
    return f"could not be {what}: {r.error or r.reason or f'HTTP {r.status}'}"


def _refused(r: OperationResult) -> bool:
    """Nothing of the write was written: the service refused it (4xx), or its row, read back after its answer
    was lost, says so. A lost answer that the read-back could not settle is no refusal, whatever its status
    (a 408 is a 4xx; docs/dataverse.md §3.12)."""
    if isinstance(r.error, OutcomeUnknownError):
        return False
    return r.outcome == "not_written" or (r.status is not None and 400 <= r.status < 500)


def move_flow(mover: Mover, op: RepointFlow) -> Move:
    """Switch off (when on), then write the new definition: one flow."""
    etag = op.etag
    label = f'flow "{op.logical_name}"'
    if op.switch_off:
        r = _send(mover, flow_state_request(op.flow_id, f"{label}: switch off", on=False, etag=etag,
                                            select=FLOW_ROW), op, etag)
        if not r.ok:
            if _refused(r):
                return Move(op, "not_moved", _why(r, "switched off to edit it; it is on, as it was", op), False, r)
            # No answer to go by: it may be off. Its activation switches it on again (harmless if it is on).
            return Move(op, "not_moved", _why(r, "switched off to edit it", op) + "; it may be off: its activation "
                        "below switches it on again", True, r)
        etag = _etag(r) or etag
    edit = update_op("workflows", op.flow_id, {"clientdata": op.clientdata}, etag=etag,
                     label=f"{label}: new definition", select=FLOW_ROW)
    r = _send(mover, edit, op, etag)
    if not r.ok:
        why = _why(r, "given its new definition", op)
        again = ("; it is off, with the definition it had: its activation below switches it on again, or, if "
                 "that fails, the next apply moves it and switches it on") if op.switch_off else ""
        return Move(op, "not_moved", why + again, op.switch_off, r)
    return Move(op, "moved", "", op.switch_off, r)


def move_flows(mover: Mover, ops: Sequence[RepointFlow],
               before_switch_off: Callable[[Mapping[str, str]], None] | None = None) -> list[Move]:
    """Move the flows in plan order; the first that is not moved stops the others (``move_not_attempted``)."""
    switching = {op.flow_id.lower(): op.logical_name for op in ops if op.switch_off}
    if switching and before_switch_off is not None:
        before_switch_off(switching)
    out: list[Move] = []
    stopped: str | None = None
    for op in ops:
        if stopped is not None:
            out.append(Move(op, "move_not_attempted", f"not attempted: {stopped}"))
            continue
        move = move_flow(mover, op)
        out.append(move)
        if not move.moved:
            stopped = f'flow "{op.logical_name}" was not moved'
    return out


def retire_requests(ops: Sequence[RetireReference], moves: Sequence[Move]) -> tuple[list[RetireReference],
                                                                                   dict[int, str]]:
    """(the replaced references to delete now, id(op) -> why not for the others): a reference is deleted once
    every flow that used it was moved by this apply (or, moved before, uses it no more)."""
    not_moved = {m.op.flow_id.lower(): m.op.logical_name for m in moves if not m.moved}
    send: list[RetireReference] = []
    held: dict[int, str] = {}
    for op in ops:
        stuck = [not_moved[f.id.lower()] for f in op.flows if f.id.lower() in not_moved]
        if stuck:
            held[id(op)] = ("not sent: flows still use it (not moved: " + ", ".join(f'"{n}"' for n in stuck)
                            + "): the next apply deletes it once they are moved")
        else:
            send.append(op)
    return send, held


def delete_request(op: RetireReference) -> Any:
    """The ``DELETE`` of a replaced reference, with ``If-Match`` its ETag as read."""
    if not op.reference_id:
        raise ValueError(f"{op.address}: the plan has no reference id for a retire")
    return delete_op("connectionreferences", op.reference_id, etag=op.etag, label=op.logical_name)
