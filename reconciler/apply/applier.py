"""The applier: the only module that writes to an environment.

``apply_environment(writer, env_plan)`` turns a plan's operations into Dataverse requests and
sends them in ``$batch`` change sets of at most 1000 (ceil(N/1000) batches for N operations), one
batch after the other:

- create: ``POST connectionreferences`` with ``MSCRM.SolutionUniqueName`` so the row lands in the
  solution (docs/dataverse.md §2.2), its ``connectionid`` and, with a service account, ``ownerid@odata.bind``;
- update (rename, description, rebind, owner): ``PATCH`` with ``If-Match: <ETag read when
  planning>``, owner changes as ``ownerid@odata.bind`` (docs/dataverse.md §3.3, §3.4);
- add to solution: the ``AddSolutionComponent`` action with the component type the plan read;
- delete: ``DELETE`` with ``If-Match``.

Writes impersonate the service account (``CallerObjectId``, docs/dataverse.md §3.10) when the plan says
so. Everything apply needs besides the operations (the writer's object id, the component type) comes
with the plan (``EnvironmentPlan.facts``): the applier reads nothing to decide what to write, and is
handed only what sends a ``$batch`` (``BatchWriter``).

Flows, after the references (docs/dataverse.md §5.6-§5.8):

- a rebind reaches the flows that use the reference asynchronously: the applier waits (bounded by the
  environment's ``flows.wait_seconds``, reporting progress) until the update of every such flow is done,
  and reports each flow whose update failed or did not finish;
- then it switches on the plan's flows, pass by pass (children before parents), as the writer; a flow
  whose update failed, or whose child was not switched on, is not attempted;
- then it reads the flows back and reports any flow the plan switched on that is not on.

A change set is atomic (docs/dataverse.md §3.7): when one operation fails, the
others of its batch are rolled back and later batches are not sent. The result says, per operation,
whether it was written, not written, failed and why, or whether its outcome is unknown; anything but
written raises ``ApplyError`` carrying that result. A 412 means the reference changed since the plan:
the message names it and says to plan again.

A create carries the row id decided when planning, so sending it twice makes one row at most. When the
answer to a change set is lost (``OutcomeUnknownError``: the connection dropped after sending, any 5xx or a
408 without the ``$batch`` answer, a timeout, a 2xx that cannot be read, an answer that calls the change set
both written and refused), it is never sent again blindly: its rows are read back (one filtered
query on their ids) and the rules layer decides (``rules.write_landed``, ``rules.change_set_landed``).
Written: recorded so, with the rows read back. Not written: sent once more (and read back again if that
answer is lost too, or if it fails as a late commit of the first would make it). Neither can be told: the
outcome is unknown, reported as such ("run plan again; nothing else needed"), never as not written
(docs/dataverse.md §3.12).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from reconciler.api.batch_format import (
    ANY_VERSION,
    MAX_BATCH_OPERATIONS,
    BatchOperation,
    OperationResult,
    action_op,
    chunked,
    create_op,
    delete_op,
    update_op,
)
from reconciler.api.odata_filter import Filter, Guid, any_of, odata_bind
from reconciler.api.rows import REFERENCE_COLUMNS, reference_from_row, written_row
from reconciler.apply import consolidate
from reconciler.apply.flowstate import flow_state_request
from reconciler.domain import rules
from reconciler.domain.model import LiveEnvironment, LiveReference, connector_id
from reconciler.domain.text import inert
from reconciler.errors import ApiError, ApplyError, AuthError, OutcomeUnknownError, PreconditionFailedError
from reconciler.plan.ops import (
    ActivateFlow,
    AddToSolution,
    CreateReference,
    DeleteReference,
    EnvironmentPlan,
    Op,
    RepointFlow,
    ShareConnection,
    UpdateReference,
)

ENTITY_SET = "connectionreferences"
#: Plan field -> connectionreference column (connectionreference.md, docs/dataverse.md §1.2).
COLUMNS = {
    "display_name": "connectionreferencedisplayname",
    "description": "description",
    "connection": "connectionid",
}
DUPLICATE_RECORD = "0x80040237"  # "A record with matching key values already exists." (412; docs/dataverse.md §1.5)

Outcome = Literal["written", "not_written", "failed", "unknown"]
#: What the apply says when writes may or may not have been committed (docs/pipelines.md).
PLAN_AGAIN = "run plan again; nothing else needed"


@dataclass(frozen=True)
class OpResult:
    """The outcome of one planned operation."""

    op: Op
    outcome: Outcome
    reason: str = ""
    status: int | None = None
    reference_id: str | None = None  # the new row's id for a create
    row: Mapping[str, Any] | None = None  # the row as written, when the service sent it back

    @property
    def address(self) -> str:
        return self.op.address


@dataclass(frozen=True)
class BatchProgress:
    """Reported after each ``$batch``: ``done`` of ``total`` operations handled, batch ``batch`` of
    ``batches``."""

    environment: str
    batch: int
    batches: int
    done: int
    total: int
    ok: bool


FlowOutcomeKind = Literal["updated", "update_failed", "update_not_finished", "update_not_checked",
                          "switched_on", "not_switched_on", "not_attempted", "not_on",
                          "moved", "not_moved", "move_not_attempted"]
#: Outcomes that leave a flow failing: the apply fails (exit code 1).
FAILING = frozenset({"update_failed", "update_not_finished", "not_switched_on", "not_on"})


@dataclass(frozen=True)
class FlowOutcome:
    """What became of one flow: its update after a rebind (``updated``, ``update_failed``,
    ``update_not_finished``, ``update_not_checked``), its switching on (``switched_on``,
    ``not_switched_on``, ``not_attempted``, ``not_on`` when it is not on when read back), or its move onto
    the reference that replaces its per-developer ones (``moved``, ``not_moved``, ``move_not_attempted``;
    ``on``: True when the move left it on, as it was, without switching it off)."""

    flow_id: str
    name: str
    outcome: FlowOutcomeKind
    reason: str = ""
    on: bool | None = None  # the flow is on at the end (None: not known)

    @property
    def failing(self) -> bool:
        return self.outcome in FAILING


@dataclass(frozen=True)
class FlowProgress:
    """Reported while waiting for the platform's asynchronous update of the flows (docs/dataverse.md §5.7)."""

    environment: str
    done: int
    total: int
    failed: int
    waited: float
    limit: float


@dataclass(frozen=True)
class ApplyResult:
    """Per-operation outcomes of one environment's apply, for the CLI's summary; ``flows`` says what became
    of the flows (their asynchronous update, switching them on)."""

    environment: str
    results: tuple[OpResult, ...]
    batches_sent: int = 0
    flows: tuple[FlowOutcome, ...] = field(default=())

    @property
    def failing_flows(self) -> tuple[FlowOutcome, ...]:
        return tuple(f for f in self.flows if f.failing)

    @property
    def flows_on(self) -> tuple[str, ...]:
        """The flows this apply left on (ids, lower case): switched on (and on when read back), or left on as
        they were by a move that did not switch them off: the state no longer needs to restore them."""
        last = {f.flow_id.lower(): f for f in self.flows if f.outcome in ("switched_on", "not_on")}
        on = {fid for fid, f in last.items() if f.outcome == "switched_on"}
        return tuple(sorted(on | {f.flow_id.lower() for f in self.flows if f.on}))

    def _with(self, outcome: Outcome) -> tuple[OpResult, ...]:
        return tuple(r for r in self.results if r.outcome == outcome)

    @property
    def written(self) -> tuple[OpResult, ...]:
        return self._with("written")

    @property
    def not_written(self) -> tuple[OpResult, ...]:
        return self._with("not_written")

    @property
    def failed(self) -> tuple[OpResult, ...]:
        return self._with("failed")

    @property
    def unknown(self) -> tuple[OpResult, ...]:
        return self._with("unknown")

    @property
    def ok(self) -> bool:
        return all(r.outcome == "written" for r in self.results) and not self.failing_flows

    def moves_account(self) -> list[str]:
        """Which flows a consolidation moved onto the kept reference and which not (and why): the next plan
        picks up from there."""
        moves = [f for f in self.flows if f.outcome in consolidate.MOVE_OUTCOMES]
        if not moves:
            return []
        moved = [f for f in moves if f.outcome == "moved"]
        lines = [f"  flows moved onto the kept reference: {len(moved)} of {len(moves)}"]
        for f in moves:
            if f.outcome == "moved":
                lines.append(f'    moved: flow "{f.name}"')
            else:
                lines.append(f'    not moved: flow "{f.name}": {f.reason}')
        if len(moved) < len(moves):
            lines.append("  the next plan moves the others (apply again)")
        return lines

    def summary(self, limit: int = 20) -> str:
        """A plain-text account: failures in full, writes of unknown outcome, then what was and was not
        written (only the kinds of outcome that happened are named)."""
        counts = [f"{len(group)} {label}" for label, group in (
            ("written", self.written), ("not written", self.not_written), ("failed", self.failed),
            ("of unknown outcome", self.unknown)) if group]
        lines = [f"{self.environment}: {', '.join(counts) or 'nothing to write'}"]
        for r in self.failed:
            lines.append(f"  ! {r.op.kind} {r.op.logical_name}: {r.reason}")
        if self.unknown:
            lines.append(f"  ? {unknown_outcome(len(self.unknown))} ({self.unknown[0].reason})")
        for f in self.failing_flows:
            lines.append(f'  ! flow "{f.name}": {f.reason}')
        lines.extend(self.moves_account())
        for label, group in (("written", self.written), ("not written", self.not_written),
                             ("outcome unknown", self.unknown)):
            if not group:
                continue
            names = [f"{r.op.kind} {r.op.logical_name}" for r in group[:limit]]
            more = f" and {len(group) - limit} more" if len(group) > limit else ""
            lines.append(f"  {label}: " + ", ".join(names) + more)
        # Each line says one thing: a reason or a name from live data with a newline in it stays on its line.
        return "\n".join(inert(line) for line in lines)


Progress = Callable[[BatchProgress], None]
FlowProgressCallback = Callable[[FlowProgress], None]


def unknown_outcome(n: int) -> str:
    """The sentence for ``n`` writes whose outcome is unknown (docs/pipelines.md says what to do)."""
    return f"the outcome of {n} write{'s' if n != 1 else ''} is unknown: {PLAN_AGAIN}"


# --------------------------------------------------------------------------- ops -> requests


def _create(op: CreateReference) -> BatchOperation:
    body: dict[str, Any] = {}
    if op.reference_id:
        # The row id decided when planning: sent twice, the create still makes one row (docs/dataverse.md §3.12).
        body["connectionreferenceid"] = op.reference_id
    body |= {
        "connectionreferencelogicalname": op.logical_name,
        "connectionreferencedisplayname": op.display_name,
        "connectorid": connector_id(op.connector),
    }
    if op.description is not None:
        body["description"] = op.description
    if op.connection is not None:
        body["connectionid"] = op.connection.name
    if op.owner is not None:
        body["ownerid@odata.bind"] = odata_bind("systemusers", op.owner.systemuserid)
    return create_op(ENTITY_SET, body, solution_unique_name=op.solution, label=op.logical_name,
                     select=REFERENCE_COLUMNS)


def _update(op: UpdateReference) -> BatchOperation:
    body: dict[str, Any] = {}
    for name, value in op.new_values().items():
        if name == "owner":
            if value:
                body["ownerid@odata.bind"] = odata_bind("systemusers", value)
        elif name in COLUMNS:
            body[COLUMNS[name]] = value
        else:
            raise ValueError(f"{op.address}: no column for field {name!r}")
    return update_op(ENTITY_SET, _id(op), body, etag=op.etag, label=op.logical_name, select=REFERENCE_COLUMNS)


def _add_to_solution(op: AddToSolution, component_type: int) -> BatchOperation:
    # AddSolutionComponent (webapi/reference/addsolutioncomponent): the component must exist.
    body = {
        "ComponentId": _id(op),
        "ComponentType": component_type,
        "SolutionUniqueName": op.solution,
        "AddRequiredComponents": False,
        "DoNotIncludeSubcomponents": True,
    }
    return action_op("AddSolutionComponent", body, label=op.logical_name)


def _delete(op: DeleteReference) -> BatchOperation:
    return delete_op(ENTITY_SET, _id(op), etag=op.etag, label=op.logical_name)


def _activate(op: ActivateFlow) -> BatchOperation:
    # statecode 1 / statuscode 2 (docs/dataverse.md §5.1). If-Match: * (the row must exist), deliberately,
    # rather than the ETag read when planning: the asynchronous update this apply's rebinds started may itself
    # write the flow's row (UNCONFIRMED, docs/dataverse.md §5.7), and switching on sets the same state whatever
    # version it meets, so it overwrites nothing anyone edited; a saved plan is refused at the start of apply
    # when a flow moved since it was made (the live fingerprint covers the flows).
    return flow_state_request(op.flow_id, f"flow {op.logical_name}", on=True, etag=ANY_VERSION)


def _id(op: Op) -> str:
    if not op.reference_id:
        raise ValueError(f"{op.address}: the plan has no reference id for a {op.kind}")
    return op.reference_id


def to_requests(ops: Sequence[Op], component_type: int | None) -> list[BatchOperation]:
    """The batch operation of each plan operation, in plan order."""
    out: list[BatchOperation] = []
    for op in ops:
        if isinstance(op, CreateReference):
            out.append(_create(op))
        elif isinstance(op, UpdateReference):
            out.append(_update(op))
        elif isinstance(op, AddToSolution):
            if component_type is None:
                raise ValueError("adding to a solution needs the component type")
            out.append(_add_to_solution(op, component_type))
        elif isinstance(op, DeleteReference):
            out.append(_delete(op))
        elif isinstance(op, ActivateFlow):
            out.append(_activate(op))
        else:  # pragma: no cover - Op is a closed union
            raise TypeError(f"unknown operation {type(op).__name__}")
    return out


# --------------------------------------------------------------------------- apply


def _failure_reason(op: Op, error: ApiError | None, fallback: str) -> str:
    if isinstance(error, PreconditionFailedError):
        if isinstance(op, CreateReference) or error.code == DUPLICATE_RECORD:
            return (f"a reference named {op.logical_name} already exists in {op.environment} (created since "
                    f"the plan was made?): plan again. Service said: {error}")
        return (f"{op.logical_name} changed in {op.environment} since the plan was made (its ETag moved), so "
                f"it was not overwritten: plan again. Service said: {error}")
    return str(error) if error is not None else fallback


class BatchWriter(Protocol):
    """What the applier writes through: one atomic ``$batch`` change set per call (``execute_batch``), or
    independent writes in one ``$batch``, each committed or refused on its own (``execute_each``)."""

    def execute_batch(
        self, operations: Sequence[BatchOperation], *, caller_object_id: str | None = None
    ) -> list[OperationResult]: ...

    def execute_each(
        self, operations: Sequence[BatchOperation], *, caller_object_id: str | None = None
    ) -> list[OperationResult]: ...


class ConnectionSharer(Protocol):
    """What the applier grants access through: one share of one connection, as an admin (the connections
    client's ``share_admin``; docs/dataverse.md §4.8)."""

    def share_admin(self, connector: str, name: str, *, principal_id: str, principal_type: str, role: str,
                    tenant_id: str | None = None) -> None: ...


class FlowReader(Protocol):
    """What the applier reads flows and their system jobs through after writing (a read-only client: the
    session's ``reader.dataverse``): to wait for the platform's asynchronous update and to verify."""

    def get_all(self, entity_set: str, *, select: Sequence[str] | None = None, filter: Filter | None = None,
                orderby: str | None = None) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class FlowWatch:
    """How apply follows the flows after writing (docs/dataverse.md §5.7): ``reader`` (None: nothing is read,
    the updates are reported not checked), at most ``wait_seconds`` for the asynchronous update (the
    environment's ``flows.wait_seconds``), ``progress`` while waiting; ``sleep`` and ``clock`` are the
    waiting's (a test hands its own)."""

    reader: FlowReader | None
    wait_seconds: float = 300
    progress: FlowProgressCallback | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


#: How the applier reads rows back (the caller's live reader, ``reconciler.api.live.read_reference_rows``):
#: the rows, as the service answers them, of the references with these ids that exist.
RowReader = Callable[[list[str]], list[dict[str, Any]]]


def apply_environment(
    writer: BatchWriter,
    read_rows: RowReader,
    env_plan: EnvironmentPlan,
    *,
    progress: Progress | None = None,
    flows: FlowWatch | None = None,
    batch_size: int = MAX_BATCH_OPERATIONS,
    sharer: ConnectionSharer | None = None,
    before_switch_off: Callable[[Mapping[str, str]], None] | None = None,
) -> ApplyResult:
    """Write one environment's plan: first the grants of access (``ShareConnection``) through ``sharer``, then
    the reference writes through ``writer``, in change sets of at most ``batch_size`` operations (``read_rows``,
    the caller's live reader, reads back a change set whose answer was lost); then (docs/dataverse.md
    §5.6-§5.8) wait for the asynchronous update of the flows the rebinds reach, move the flows a consolidation
    moves (switched off and edited: ``reconciler.apply.consolidate``; ``before_switch_off`` is called with the
    flows it is about to switch off, before the first of them is), switch the plan's flows on pass by pass
    (those the moves switched off among them) and read them back (``flows``: how, and through which read-only
    client; without it the updates are not waited for and nothing is read back), and delete the replaced
    references nothing uses any more. Returns the result when everything was written and no flow is left
    failing; raises ``ApplyError`` (with ``results`` = the ``ApplyResult``) when anything was not, failed,
    ended with an unknown outcome, or a flow is left failing, and before sending anything when the plan lacks
    the facts apply needs (a plan made by an earlier connref)."""
    ref_ops: list[Op] = [op for op in env_plan.reference_ops if not isinstance(op, ShareConnection)]
    shares = [op for op in env_plan.ops if isinstance(op, ShareConnection)]
    activations = list(env_plan.activations)
    repoints, retires = list(env_plan.repoints), list(env_plan.retires)
    if not ref_ops and not shares and not activations and not repoints and not retires:
        return ApplyResult(env_plan.environment, ())
    facts = env_plan.facts
    if facts is None:
        raise ApplyError(f"the plan of environment {env_plan.environment} does not record the identity writes "
                         "act as and the solution component type (it was made by an earlier connref): "
                         "run 'connref plan' again")
    unversioned = _without_etag((*ref_ops, *repoints, *retires))
    if unversioned:
        raise ApplyError(f"the plan of environment {env_plan.environment} has no ETag for "
                         f"{', '.join(unversioned)}, so writing it could overwrite a change made since the plan "
                         "was read: nothing was written; run 'connref plan' again")
    # Grants first: a binding needs its connection shared with the writer before it is written.
    granted = _share_all(sharer, shares)
    if any(r.outcome != "written" for r in granted):
        unsent = [OpResult(op, "not_written", "not sent: a grant of access failed") for op in (*ref_ops, *activations)]
        result = ApplyResult(env_plan.environment, (*granted, *unsent), batches_sent=0)
        raise ApplyError(_apply_error_message(result), results=result)
    caller_object_id = facts.writer_object_id
    watch = flows or FlowWatch(None)
    watched = _watched_flows(ref_ops)
    known_jobs = _jobs(watch.reader, watched) if watched and watch.reader is not None else {}

    results, batches_sent = _write_references(writer, read_rows, env_plan.environment, ref_ops,
                                              facts.component_type, caller_object_id, progress, batch_size)
    written = {id(r.op) for r in results if r.outcome == "written"}
    reached = {f for op in ref_ops if id(op) in written for f in _flows_of(op)}
    outcomes: list[FlowOutcome] = []
    if reached:
        outcomes.extend(_wait_for_updates(watch, env_plan.environment, {k: watched[k] for k in reached},
                                          known_jobs))
    refs_ok = all(r.outcome == "written" for r in results)
    mover = consolidate.Mover(writer, functools.partial(_flow_row, watch.reader), caller_object_id)
    moves = _move_flows(mover, repoints, refs_ok, before_switch_off, results, outcomes)
    if activations and refs_ok:
        outcomes.extend(_wait_for_earlier_updates(watch, env_plan.environment, activations, reached))
    if activations:
        # A flow a move was to switch off and did not is on as it was: nothing to switch on. A flow that was
        # off and was not moved still uses the replaced reference the plan's activation did not judge it by.
        still_on = {m.op.flow_id.lower() for m in moves if m.still_on}
        unmoved = {m.op.flow_id.lower() for m in moves if not m.moved and not m.op.switch_off}
        act_results, act_flows = _switch_on(writer, watch.reader,
                                            [a for a in activations if a.flow_id.lower() not in still_on | unmoved],
                                            caller_object_id, outcomes, refs_ok)
        results.extend(OpResult(a, "not_written", "not needed: it was not switched off to be moved, and is on")
                       for a in activations if a.flow_id.lower() in still_on)
        results.extend(OpResult(a, "not_written", "not attempted: it was off and was not moved onto the kept "
                                "reference, so it still uses the one replaced; the next apply moves it, then "
                                "switches it on") for a in activations if a.flow_id.lower() in unmoved)
        results.extend(act_results)
        outcomes.extend(act_flows)
    if retires:
        send, held = consolidate.retire_requests(retires, moves)
        results.extend(OpResult(op, "not_written", held[id(op)]) for op in retires if id(op) in held)
        retire_results, _ = _write_references(writer, read_rows, env_plan.environment, list(send),
                                              facts.component_type, caller_object_id, None, batch_size)
        results.extend(retire_results)

    result = ApplyResult(env_plan.environment, (*granted, *results), batches_sent=batches_sent,
                         flows=tuple(outcomes))
    if not result.ok:
        raise ApplyError(_apply_error_message(result), results=result)
    return result


def _without_etag(ops: Sequence[Op]) -> list[str]:
    """The operations that write over a row read when planning (an update, a delete, a flow's move) and carry
    no ETag to send as ``If-Match``. Every row read has one (docs/dataverse.md §3.4), so only a plan made
    from an answer that lacked it, or made by hand, gets here: sent, it would overwrite any change made since
    with ``If-Match: *``."""
    # A RetireReference (a consolidation's delete) is a DeleteReference.
    return [op.address for op in ops
            if isinstance(op, UpdateReference | DeleteReference | RepointFlow) and not (op.etag or "").strip()]


def _flow_row(reader: FlowReader | None, flow_id: str) -> dict[str, Any] | None:
    """One flow's row (state, definition, ETag), to read back a move whose answer was lost; None when there is
    no reader or no such row."""
    if reader is None:
        return None
    rows = reader.get_all("workflows", select=consolidate.FLOW_READ_COLUMNS, filter=any_of("workflowid",
                                                                                        [Guid(flow_id)]))
    return rows[0] if rows else None


def _move_flows(mover: consolidate.Mover, repoints: list[RepointFlow], refs_ok: bool,
                before_switch_off: Callable[[Mapping[str, str]], None] | None, results: list[OpResult],
                flows: list[FlowOutcome]) -> list[consolidate.Move]:
    """Move the flows of a consolidation (``reconciler.apply.consolidate``): not attempted when a reference
    write failed (the kept reference may not exist yet) or a flow's asynchronous update failed. Each move's
    result goes into ``results`` and its outcome into ``flows``."""
    if not repoints:
        return []
    failed_update = {u.flow_id for u in flows if u.failing}
    if not refs_ok:
        moves = [consolidate.Move(op, "move_not_attempted", "not attempted: not every reference change was written")
                 for op in repoints]
    else:
        ready = [op for op in repoints if op.flow_id.lower() not in failed_update]
        moves = consolidate.move_flows(mover, ready, before_switch_off)
        moves += [consolidate.Move(op, "move_not_attempted", "not attempted: its update after the rebind failed or did "
                                   "not finish") for op in repoints if op.flow_id.lower() in failed_update]
    for m in moves:
        if m.moved:
            results.append(OpResult(m.op, "written", "", m.result.status if m.result else None))
        elif m.outcome == "move_not_attempted":
            results.append(OpResult(m.op, "not_written", m.reason))
        else:
            results.append(OpResult(m.op, "failed", m.reason, m.result.status if m.result else None))
        flows.append(FlowOutcome(m.op.flow_id.lower(), m.op.logical_name, m.outcome, m.reason,
                                 on=True if m.still_on else None))
    return moves


def _write_references(writer: BatchWriter, read_rows: RowReader, environment: str, ops: list[Op],
                      component_type: int | None, caller_object_id: str | None, progress: Progress | None,
                      batch_size: int) -> tuple[list[OpResult], int]:
    """The reference operations in change sets of at most ``batch_size``, one batch after the other; a failed
    batch stops the later ones."""
    if not ops:
        return [], 0
    requests = to_requests(ops, component_type)
    results: list[OpResult] = []
    batches = list(chunked(requests, batch_size))
    failed_at: int | None = None
    for number, batch in enumerate(batches, start=1):
        start = len(results)
        batch_ops = ops[start : start + len(batch)]
        if failed_at is not None:
            skipped = "not sent: an earlier batch failed"
            results.extend(OpResult(op, "not_written", skipped) for op in batch_ops)
            continue
        done = _ChangeSet(writer, read_rows, batch_ops, batch, caller_object_id).apply()
        results.extend(done)
        if any(r.outcome != "written" for r in done):
            failed_at = number
        if progress is not None:
            progress(BatchProgress(environment, number, len(batches), len(results), len(ops),
                                   ok=failed_at is None))
    return results, failed_at or len(batches)


# --------------------------------------------------------------------------- flows


def _flows_of(op: Op) -> list[str]:
    """The flows a written operation sends an asynchronous update to: those using a rebound reference."""
    if isinstance(op, UpdateReference) and op.rebinds:
        return [d.id.lower() for d in op.dependents if d.kind == "flow"]
    return []


def _watched_flows(ops: Sequence[Op]) -> dict[str, str]:
    """Flow id (lower case) -> name, for every flow a rebind of the plan reaches."""
    out: dict[str, str] = {}
    for op in ops:
        if isinstance(op, UpdateReference) and op.rebinds:
            for d in op.dependents:
                if d.kind == "flow":
                    out[d.id.lower()] = d.name
    return out


JOB_COLUMNS = ("asyncoperationid", "statecode", "statuscode", "message", "friendlymessage",
               "_regardingobjectid_value", "createdon")
JOB_COMPLETED = 3  # asyncoperation statecode Completed; statuscode 30 Succeeded, 31 Failed, 32 Canceled
JOB_SUCCEEDED = 30
FLOW_IDS_PER_READ = 50


def _jobs(reader: FlowReader, flow_ids: Mapping[str, str] | Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Flow id -> its system jobs (``asyncoperations`` regarding the flow, docs/dataverse.md §5.7), newest
    first; one request per 50 flows."""
    ids = sorted(flow_ids)
    out: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for start in range(0, len(ids), FLOW_IDS_PER_READ):
        chunk = [Guid(i) for i in ids[start:start + FLOW_IDS_PER_READ]]
        rows = reader.get_all("asyncoperations", select=JOB_COLUMNS,
                              filter=any_of("_regardingobjectid_value", chunk), orderby="createdon desc")
        for row in rows:
            key = str(row.get("_regardingobjectid_value") or "").lower()
            if key in out:
                out[key].append(row)
    return out


def _settled(jobs: list[dict[str, Any]], before: set[str], fid: str, name: str) -> FlowOutcome | None:
    """The outcome of a flow's update from its jobs (every job started since the writes, one per rebound
    reference the flow uses, must be done), or None while one is under way."""
    new = [j for j in jobs if str(j.get("asyncoperationid")).lower() not in before]
    if not new or any(j.get("statecode") != JOB_COMPLETED for j in new):
        return None
    bad = [j for j in new if j.get("statuscode") != JOB_SUCCEEDED]
    if not bad:
        return FlowOutcome(fid, name, "updated")
    job = bad[0]
    why = job.get("friendlymessage") or job.get("message") or f"status {job.get('statuscode')}"
    return FlowOutcome(fid, name, "update_failed", f"the platform's update of the flow after the rebind failed: {why}")


def _wait_for_updates(watch: FlowWatch, environment: str, flows: Mapping[str, str],
                      known: Mapping[str, list[dict[str, Any]]]) -> list[FlowOutcome]:
    """Wait until the update a rebind sent to each flow has finished (a job that was not there before the
    writes, completed), at most ``watch.wait_seconds``; the outcome of each flow."""
    limit = float(watch.wait_seconds) if watch.reader is not None else 0.0
    before = {fid: {str(j.get("asyncoperationid")).lower() for j in known.get(fid, [])} for fid in flows}
    done: dict[str, FlowOutcome] = {}
    start = watch.clock()
    delay = 0.5
    while watch.reader is not None and limit > 0:
        for fid, jobs in _jobs(watch.reader, [f for f in flows if f not in done]).items():
            outcome = _settled(jobs, before[fid], fid, flows[fid])
            if outcome is not None:
                done[fid] = outcome
        waited = watch.clock() - start
        if watch.progress is not None:
            watch.progress(FlowProgress(environment, len(done), len(flows),
                                        sum(1 for o in done.values() if o.failing), waited, limit))
        if len(done) == len(flows) or waited >= limit:
            break
        watch.sleep(min(delay, max(limit - waited, 0.0)))
        delay = min(delay * 2, 5.0)
    for fid, name in flows.items():
        if fid in done:
            continue
        if limit <= 0:
            done[fid] = FlowOutcome(fid, name, "update_not_checked",
                                    "not waited for: flows.wait_seconds is 0 for this environment")
        else:
            done[fid] = FlowOutcome(fid, name, "update_not_finished",
                                    f"the platform's update of the flow after the rebind did not finish within "
                                    f"{limit:g} s (flows.wait_seconds): check the flow, then plan again")
    return [done[f] for f in sorted(flows, key=lambda f: (flows[f].lower(), f))]


def _wait_for_earlier_updates(watch: FlowWatch, environment: str, activations: Sequence[ActivateFlow],
                              waited_for: Collection[str]) -> list[FlowOutcome]:
    """The flows to switch on whose update is still under way although this apply rebound nothing they use:
    a rebind by an earlier apply that was stopped while it waited (Ctrl-C, a cancelled job), or one made in
    the portal. Switching such a flow on fails until its update is done (docs/dataverse.md §5.7), so it is
    waited for as this apply's own rebinds are; one read of the flows' jobs per 50 flows, none without
    flows to switch on."""
    names = {a.flow_id.lower(): a.logical_name for a in activations if a.flow_id.lower() not in waited_for}
    if watch.reader is None or not names:
        return []
    jobs = _jobs(watch.reader, names)
    pending = {fid: names[fid] for fid, found in jobs.items()
               if any(j.get("statecode") != JOB_COMPLETED for j in found)}
    if not pending:
        return []
    done_before = {fid: [j for j in jobs[fid] if j.get("statecode") == JOB_COMPLETED] for fid in pending}
    return _wait_for_updates(watch, environment, pending, done_before)


def _not_attempted(op: ActivateFlow, refs_ok: bool, failed_update: set[str], unavailable: set[str]) -> str | None:
    """Why a flow is not switched on without asking the platform, or None."""
    if not refs_ok:
        return "not attempted: not every reference change was written"
    if op.flow_id.lower() in failed_update:
        return "not attempted: its update after the rebind failed or did not finish"
    if any(c.lower() in unavailable for c in op.children):
        return "not attempted: a child flow it runs was not switched on"
    return None


#: Flows switched on per ``$batch``. Dataverse runs a batch's requests one after the other and a request
#: must finish within its time limit; switching a flow on registers its triggers with the flow service,
#: which takes time of its own (docs/dataverse.md §5.3): a small batch stays far inside the limit while
#: ten flows cost one round trip instead of ten.
FLOWS_PER_SWITCH_BATCH = 10


def _send_switches(writer: BatchWriter, ops: Sequence[ActivateFlow],
                   caller_object_id: str | None) -> list[OperationResult]:
    """Switch flows on, each in its own part of one ``$batch`` (one refusal stops none of the others).
    Sending it again changes nothing once a flow is on (the same state, ``If-Match: *``), so a lost answer
    is sent once more rather than left unknown; the read-back after the passes checks it."""
    requests = [_activate(op) for op in ops]
    lost: OutcomeUnknownError | None = None
    for _ in range(2):
        try:
            return writer.execute_each(requests, caller_object_id=caller_object_id)
        except OutcomeUnknownError as exc:
            lost = exc
        except ApiError as exc:  # the batch as a whole was refused: none of them was switched on
            return [OperationResult(r, "failed", status=exc.status, error=exc, reason=str(exc)) for r in requests]
    assert lost is not None
    return [OperationResult(r, "failed", status=lost.status, error=lost,
                            reason=f"{lost.why}, twice: check the flow, then plan again") for r in requests]


def _switch_on(writer: BatchWriter, reader: FlowReader | None, activations: list[ActivateFlow],
               caller_object_id: str | None, updates: list[FlowOutcome],
               refs_ok: bool) -> tuple[list[OpResult], list[FlowOutcome]]:
    """Switch the flows on, pass by pass (children first), up to ``FLOWS_PER_SWITCH_BATCH`` in one ``$batch``
    (each with its own verdict), as the writer; then read them back (through ``reader``, when given). A flow
    is not attempted when the references were not all written, its update failed, or a child of it was not
    switched on."""
    failed_update = {u.flow_id for u in updates if u.failing}
    results: list[OpResult] = []
    outcomes: dict[str, FlowOutcome] = {}
    unavailable: set[str] = set(failed_update)
    for number in sorted({a.pass_number for a in activations}):
        in_pass = [a for a in activations if a.pass_number == number]
        done: list[OpResult | None] = [None] * len(in_pass)  # in the pass's order, as the plan lists them
        ready: list[tuple[int, ActivateFlow]] = []
        for i, op in enumerate(in_pass):
            why = _not_attempted(op, refs_ok, failed_update, unavailable)
            if why is None:
                ready.append((i, op))
                continue
            fid = op.flow_id.lower()
            unavailable.add(fid)
            done[i] = OpResult(op, "not_written", why)
            outcomes[fid] = FlowOutcome(fid, op.logical_name, "not_attempted", why)
        # A pass's flows do not run one another (children are in earlier passes): any order, batched.
        for start in range(0, len(ready), FLOWS_PER_SWITCH_BATCH):
            batch = ready[start:start + FLOWS_PER_SWITCH_BATCH]
            sent = _send_switches(writer, [op for _, op in batch], caller_object_id)
            for (i, op), r in zip(batch, sent, strict=True):
                fid = op.flow_id.lower()
                result = done[i] = _op_result(op, r)
                if result.outcome == "written":
                    outcomes[fid] = FlowOutcome(fid, op.logical_name, "switched_on")
                else:
                    unavailable.add(fid)
                    outcomes[fid] = FlowOutcome(fid, op.logical_name, "not_switched_on",
                                                result.reason or "the platform refused to switch it on")
        results.extend(r for r in done if r is not None)
    switched = [fid for fid, o in outcomes.items() if o.outcome == "switched_on"]
    if switched and reader is not None:
        state: dict[str, Any] = {}
        for start in range(0, len(switched), FLOW_IDS_PER_READ):
            chunk = [Guid(f) for f in switched[start:start + FLOW_IDS_PER_READ]]
            for row in reader.get_all("workflows", select=("workflowid", "statecode"),
                                      filter=any_of("workflowid", chunk)):
                state[str(row.get("workflowid") or "").lower()] = row.get("statecode")
        for fid in switched:
            if state.get(fid) != 1:
                o = outcomes[fid]
                outcomes[fid] = FlowOutcome(fid, o.name, "not_on",
                                            "switched on, but it is not on when read back: check it in the portal")
    order = {a.flow_id.lower(): i for i, a in enumerate(activations)}
    return results, sorted(outcomes.values(), key=lambda o: order.get(o.flow_id, 0))


def _action(op: Op) -> str:
    """What a write does to its row, for the rules layer's read-back verdict."""
    if isinstance(op, CreateReference):
        return "create"
    if isinstance(op, UpdateReference):
        return "update"
    if isinstance(op, DeleteReference):
        return "delete"
    return op.kind


#: Writes that may be sent again whatever became of the first: adding a component already in the solution
#: changes nothing (AddSolutionComponent).
_REPEATABLE = (AddToSolution,)


class _ChangeSet:
    """One ``$batch`` change set: sent, and when its answer is lost, read back and settled."""

    def __init__(self, writer: BatchWriter, read_rows: RowReader, ops: list[Op],
                 batch: Sequence[BatchOperation], caller_object_id: str | None) -> None:
        self.writer = writer
        self.read_rows = read_rows
        self.ops = ops
        self.batch = batch
        self.caller_object_id = caller_object_id

    def _send(self) -> list[OperationResult]:
        return self.writer.execute_batch(self.batch, caller_object_id=self.caller_object_id)

    def apply(self) -> list[OpResult]:
        try:
            outcomes = self._send()
        except OutcomeUnknownError as lost:
            return self._settle(lost)
        except ApiError as exc:
            # The batch request as a whole was refused (403, throttling past the budget...): nothing
            # of it was written.
            return [OpResult(op, "not_written", f"the batch was refused: {exc}", exc.status) for op in self.ops]
        return [_op_result(op, r) for op, r in zip(self.ops, outcomes, strict=True)]

    def _settle(self, lost: OutcomeUnknownError) -> list[OpResult]:
        """The answer was lost: read back; written -> recorded so; not written -> sent once more."""
        verdict, rows, why = self._read_back()
        if verdict == rules.WRITTEN:
            return self._written(rows, lost)
        if verdict == rules.UNKNOWN and not all(isinstance(op, _REPEATABLE) for op in self.ops):
            return self._unknown(lost, why)
        try:
            outcomes = self._send()
        except OutcomeUnknownError as again:
            verdict, rows, why = self._read_back()
            if verdict == rules.WRITTEN:
                return self._written(rows, again)
            if verdict == rules.NOT_WRITTEN:
                reason = f"{lost.why}; sent once more: {again.why}; read back: not written"
                return [OpResult(op, "not_written", reason, again.status) for op in self.ops]
            return self._unknown(again, why)
        except ApiError as exc:
            return [OpResult(op, "not_written", f"the batch was refused when sent once more: {exc}", exc.status)
                    for op in self.ops]
        results = [_op_result(op, r) for op, r in zip(self.ops, outcomes, strict=True)]
        if any(r.status == 412 for r in results):
            # Refused because its ids or ETags are taken: the first one may have been committed late.
            verdict, rows, _ = self._read_back()
            if verdict == rules.WRITTEN:
                return self._written(rows, lost)
        return results

    def _read_back(self) -> tuple[str, dict[str, dict[str, Any]], str]:
        """(verdict, rows read back by id, why not) for the change set, from one filtered read of its rows."""
        ids = [op.reference_id for op in self.ops if op.reference_id]
        try:
            rows = {str(row["connectionreferenceid"]).lower(): row for row in self.read_rows(ids)}
        except ApiError as exc:
            return rules.UNKNOWN, {}, f"reading back what was written failed: {exc}"
        verdicts = []
        for op in self.ops:
            row = rows.get((op.reference_id or "").lower())
            found = reference_from_row(row, False) if row is not None else None
            expected = op.new_values() if isinstance(op, UpdateReference) else {}
            verdicts.append(rules.write_landed(_action(op), logical_name=op.logical_name, etag=op.etag,
                                               expected=expected, found=found))
        verdict = rules.change_set_landed(verdicts)
        return verdict, rows, "" if verdict != rules.UNKNOWN else "the rows read back cannot tell"

    def _written(self, rows: Mapping[str, dict[str, Any]], lost: OutcomeUnknownError) -> list[OpResult]:
        out = []
        for op in self.ops:
            row = rows.get((op.reference_id or "").lower())
            keep = row if isinstance(op, CreateReference | UpdateReference) else None
            new_id = op.reference_id if isinstance(op, CreateReference) else None
            out.append(OpResult(op, "written", f"{lost.why}; read back: written", None,
                                reference_id=new_id, row=keep))
        return out

    def _unknown(self, lost: OutcomeUnknownError, why: str) -> list[OpResult]:
        reason = f"{lost.why}, and {why}" if why else lost.why
        return [OpResult(op, "unknown", reason, lost.status) for op in self.ops]


def _share_all(sharer: ConnectionSharer | None, shares: Sequence[ShareConnection]) -> list[OpResult]:
    """Share each connection with the writer through the admin route (docs/dataverse.md §4.8), in plan
    order; after a refusal the rest is not sent."""
    out: list[OpResult] = []
    for op in shares:
        if out and out[-1].outcome != "written":
            out.append(OpResult(op, "not_written", "not sent: an earlier grant failed"))
            continue
        if sharer is None:
            out.append(OpResult(op, "not_written", "no connections API for this environment"))
            continue
        try:
            sharer.share_admin(op.connector, op.connection.name, principal_id=op.principal_id,
                                            principal_type=op.principal_type, role=op.role)
        except (ApiError, AuthError) as exc:
            hint = ("; granting needs a Power Platform admin or a registered management app "
                    "(New-PowerAppManagementApp) and a token for https://service.powerapps.com")
            out.append(OpResult(op, "failed", f"{exc}{hint}", getattr(exc, "status", None)))
            continue
        out.append(OpResult(op, "written", ""))
    return out


def _op_result(op: Op, r: OperationResult) -> OpResult:
    if r.outcome == "failed":
        return OpResult(op, "failed", _failure_reason(op, r.error, r.reason), r.status)
    if r.outcome == "not_written":
        return OpResult(op, "not_written", r.reason, r.status)
    new_id = r.entity_id if isinstance(op, CreateReference) else None
    # A row the answer carries without its ETag (or in a shape connref does not read) is not recorded: the
    # row is read back after the apply (``live_after_apply``), so the state never holds an empty ETag.
    row = written_row(r.body)
    if new_id is None and row is not None and isinstance(op, CreateReference):
        new_id = str(row["connectionreferenceid"]).lower()
    return OpResult(op, "written", "", r.status, reference_id=new_id, row=row)


def _apply_error_message(result: ApplyResult) -> str:
    stale = [r for r in result.failed if "plan again" in r.reason]
    head = f"apply of environment {result.environment} did not complete"
    others = [r for r in result.results if not isinstance(r.op, ActivateFlow)]
    if result.failing_flows and all(r.outcome == "written" for r in others):
        names = ", ".join(f'"{inert(f.name)}"' for f in result.failing_flows)
        # "wrote the references" only when it did: a run with only flows to switch on wrote none.
        what = "wrote the references, but" if others else "had only flows to switch on, and"
        head = f"apply of environment {result.environment} {what} flows are left failing: {names}"
    if result.unknown:
        head += f": {unknown_outcome(len(result.unknown))}"
    elif stale:
        names = ", ".join(r.op.logical_name for r in stale)
        head += f": {names} changed since the plan was made. Run 'connref plan' again"
    return head + ".\n" + result.summary()


# --------------------------------------------------------------------------- after the apply


def live_after_apply(live: LiveEnvironment, result: ApplyResult,
                     read_rows: RowReader) -> LiveEnvironment:
    """The environment as the apply left it: ``live`` (read before writing) with every written
    reference replaced by the row the service sent back in the same ``$batch`` (new ETag, owner,
    binding), references added to the solution marked so, deleted ones dropped. Only what was written
    changes, and nothing is read again; a written row the service did not send back is asked of
    ``read_rows`` (the caller's live reader: ``reconciler.api.live.read_reference_rows``, one filtered
    query per 50 ids)."""
    by_id: dict[str, LiveReference] = {r.id: r for r in live.references}
    added: list[LiveReference] = []
    missing: dict[str, bool] = {}  # id -> in the solution
    for r in result.written:
        op = r.op
        if isinstance(op, ShareConnection | ActivateFlow | RepointFlow):
            continue  # a grant, a flow switched on or moved changes no reference
        if isinstance(op, DeleteReference):
            by_id.pop(op.reference_id or "", None)
            continue
        if isinstance(op, AddToSolution):
            old = by_id.get(op.reference_id or "")
            if old is not None:
                by_id[old.id] = replace(old, in_solution=True)
            continue
        ref_id = (r.reference_id if isinstance(op, CreateReference) else op.reference_id) or ""
        old = by_id.get(ref_id)
        in_solution = True if isinstance(op, CreateReference) else bool(old and old.in_solution)
        if r.row is None:
            if ref_id:
                missing[ref_id] = in_solution
            continue
        new = reference_from_row(r.row, in_solution)
        if ref_id in by_id:
            by_id[ref_id] = replace(new, in_solution=by_id[ref_id].in_solution or in_solution)
        else:
            added.append(new)
    if missing:
        for new in (reference_from_row(row, False) for row in read_rows(list(missing))):
            if new.id in by_id:
                by_id[new.id] = replace(new, in_solution=by_id[new.id].in_solution or missing[new.id])
            else:
                added.append(replace(new, in_solution=missing[new.id]))
    return replace(live, references=(*by_id.values(), *added))
