"""The planner: compare what the config declares with what an environment has, and say what to do.

Pure: plain data in (``Config``, ``LiveEnvironment``), typed operations out (``reconciler.plan.ops``). No I/O, so
every rule here is tested with hand-built live data, and the plan shown is exactly the plan applied.

Rules, in the order a reader meets them:
- A declared reference is matched to a live one by logical name, case-insensitively. A case difference is a
  warning and the live name is kept (logical names are immutable; docs/dataverse.md §1.4).
- Missing -> create it in the solution; outside the solution -> add it; present -> update the fields that
  differ (display name, description, connection, owner). The connector of a reference can't change.
- Every binding is checked before anything is written: the connection exists, is for the same connector,
  is Connected (docs/dataverse.md §4.4), and the identity that writes owns it or has it shared, which
  Dataverse requires to set ``connectionid`` (docs/dataverse.md §4.6, §5.3).
- The environment's mode follows its solution (docs/dataverse.md §2.6). In a managed (downstream) environment
  the plan binds and sets owners only: a declared reference missing there is refused (it ships in the
  solution), a display-name or description difference and an unmanaged layer are reported, never written,
  and prune leaves the solution's references alone.
- Every rebind and delete names what uses the reference (flows, canvas apps, agents; docs/dataverse.md
  §2.5, §2.7): a delete something depends on is not planned.
- After the references, the solution's flows that are off and can be switched on once the bindings are
  written are, in passes, children first; the others are listed with why (docs/dataverse.md §5.6, §5.8).
- Every problem of the plan is collected and raised as one ``PlanError``, so the user fixes all at once.

Each verdict above (who writes, whether a binding may be used, which fields differ) is the rules layer's
(``reconciler.domain.rules``); the planner turns its answers into operations and its problems into the
plan's refusal.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from reconciler.domain import rules
from reconciler.domain.model import (
    Binding,
    Config,
    DesiredReference,
    EnvironmentConfig,
    LiveConnection,
    LiveDependent,
    LiveEnvironment,
    LiveReference,
    Selector,
    connector_name,
)
from reconciler.domain.rules import Problem, problem
from reconciler.domain.text import inert
from reconciler.errors import PlanError
from reconciler.plan.consolidate import ConsolidationPlan, plan_consolidation
from reconciler.plan.ops import (
    ActivateFlow,
    AddToSolution,
    ApplyFacts,
    ConnectionInfo,
    CreateReference,
    DeleteReference,
    EnvironmentPlan,
    FieldChange,
    FlowInfo,
    FlowNote,
    Op,
    OwnerInfo,
    Plan,
    ShareConnection,
    UpdateReference,
)


class PlanProblems(PlanError):
    """Every problem found while planning: ``diagnostics`` holds them as ``Problem``s, ``problems`` as
    their readable lines (``ENV: reference: what is wrong; what to do``)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.diagnostics = tuple(problems)
        self.problems = [p.line() for p in problems]
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"The plan cannot be made: {n} problem{'s' if n != 1 else ''} to fix first:"
        # One line per problem, whatever a name from live data holds (a newline in it must not print as a
        # problem of its own).
        return "\n".join([head, *(f"  - {inert(p)}" for p in self.problems)])


# --------------------------------------------------------------------------- entry points


def plan(
    config: Config,
    lives: Mapping[str, LiveEnvironment],
    *,
    prune: bool | None = None,
    managed: Mapping[str, Collection[str]] | None = None,
    created_at: str | None = None,
    restore: Mapping[str, Collection[str]] | None = None,
    reuse: Mapping[str, EnvironmentPlan] | None = None,
) -> Plan:
    """Plan every environment in ``lives`` (in config order). ``prune`` defaults to the config's setting;
    ``managed`` gives, per environment, the logical names connref manages (from state): only those may
    ever be deleted; ``restore`` the flows an earlier apply switched off to move them and did not switch on
    again (from state); ``reuse`` plans already made (by ``plan_each``, same arguments) for environments
    whose live data has not changed since. Raises one ``PlanProblems`` listing the problems of all
    environments."""
    unknown = sorted(set(lives) - set(config.environments))
    if unknown:
        raise PlanError(f"environment(s) not in the config: {', '.join(unknown)}")
    envs: list[EnvironmentPlan] = []
    problems: list[Problem] = []
    for result in plan_each(config, lives, prune=prune, managed=managed, restore=restore, reuse=reuse).values():
        if isinstance(result, PlanProblems):
            problems.extend(result.diagnostics)
        else:
            envs.append(result)
    if problems:
        raise PlanProblems(problems)
    return Plan(
        environments=tuple(envs),
        solution=config.solution,
        created_at=created_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        config_digest=config_digest(config),
    )


def plan_each(
    config: Config,
    lives: Mapping[str, LiveEnvironment],
    *,
    prune: bool | None = None,
    managed: Mapping[str, Collection[str]] | None = None,
    restore: Mapping[str, Collection[str]] | None = None,
    reuse: Mapping[str, EnvironmentPlan] | None = None,
) -> dict[str, EnvironmentPlan | PlanProblems]:
    """Per environment of ``lives`` (in config order), its plan or the problems that refuse it."""
    do_prune = config.prune if prune is None else prune
    out: dict[str, EnvironmentPlan | PlanProblems] = {}
    for name, env in config.environments.items():
        if name not in lives:
            continue
        if reuse and name in reuse:
            out[name] = reuse[name]
            continue
        try:
            out[name] = plan_environment(config, env, lives[name], prune=do_prune,
                                         managed=(managed or {}).get(name, ()), restore=(restore or {}).get(name, ()))
        except PlanProblems as e:
            out[name] = e
    return out


def candidates_of(plans: Mapping[str, EnvironmentPlan | PlanProblems]) -> dict[str, list[str]]:
    """Per environment, the ids of the references its plan rebinds or deletes: the ones whose dependents
    (``RetrieveDependenciesForDelete``, docs/dataverse.md §2.7) must be read before the real plan names them
    and keeps every delete something uses. An environment whose plan is refused has none (the refusal
    comes again with the real plan)."""
    out: dict[str, list[str]] = {}
    for name, env_plan in plans.items():
        if isinstance(env_plan, PlanProblems):
            continue
        ids = [op.reference_id for op in env_plan.ops if op.reference_id and (
            isinstance(op, DeleteReference) or (isinstance(op, UpdateReference) and op.rebinds))]
        if ids:
            out[name] = ids
    return out


def dependency_candidates(
    config: Config,
    lives: Mapping[str, LiveEnvironment],
    *,
    prune: bool | None = None,
    managed: Mapping[str, Collection[str]] | None = None,
) -> dict[str, list[str]]:
    """``candidates_of`` the plans of ``lives``."""
    return candidates_of(plan_each(config, lives, prune=prune, managed=managed))


def plan_environment(
    config: Config,
    env: EnvironmentConfig,
    live: LiveEnvironment,
    *,
    prune: bool = False,
    managed: Collection[str] = (),
    restore: Collection[str] = (),
) -> EnvironmentPlan:
    """The operations that bring one environment to the config. Raises ``PlanProblems`` (a ``PlanError``)."""
    return _EnvPlanner(config, env, live).run(prune=prune, managed=managed, restore=restore)


# --------------------------------------------------------------------------- fingerprints


def _digest(data: Any) -> str:
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # A lone surrogate (live data, or a config that round-trips one) has no UTF-8 form: "surrogatepass"
    # gives it one, and every other text the same bytes as before.
    return "sha256:" + hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def live_fingerprint(live: LiveEnvironment) -> str:
    """A stable hash over what the plan was computed from: the references' ids and ETags (Dataverse moves
    the ETag on every write), the solution, and the connections' status and owner."""
    return _digest(
        {
            "solution": live.solution.id.lower() if live.solution else None,
            "component_type": live.component_type,
            "references": sorted([r.id.lower(), r.etag, r.in_solution] for r in live.references),
            "connections": sorted(
                [c.name.lower(), connector_name(c.connector), c.status, (c.owner_object_id or "").lower()]
                for c in live.connections
            ),
            # Flows: a plan that switches flows on is stale once one was switched on or off, or edited.
            "flows": sorted([f.id.lower(), f.state, f.etag] for f in live.flows),
        }
    )


#: The namespace of the row ids of the references connref creates (``create_id``).
CREATE_ID_NAMESPACE = uuid.UUID("6c1f7a0e-3b5d-4e2a-9f8c-0d4b2e6a1c73")


def create_id(env_url: str, logical_name: str, fingerprint: str) -> str:
    """The row id a create carries (docs/dataverse.md §3.12), decided when planning: the same for the same
    environment, logical name and live state, so a plan made twice from one world, or made again when a
    saved plan is applied, names the same row; another once anything in the environment moved (a reference
    deleted and declared again gets a new id). Sent in the create, it makes a create sent twice one row."""
    name = f"{env_url.rstrip('/').lower()}\n{logical_name.lower()}\n{fingerprint}"
    return str(uuid.uuid5(CREATE_ID_NAMESPACE, name))


def config_digest(config: Config) -> str:
    """A stable hash of what the config asks for (file paths and line numbers left out)."""

    def binding(b: Binding) -> Any:
        return {"owner": b.owner, "display_name": b.display_name} if isinstance(b, Selector) else b

    return _digest(
        {
            "solution": config.solution,
            "prune": config.prune,
            "references": {
                name: [r.connector, r.display_name, r.description, *([sorted(r.replaces)] if r.replaces else [])]
                for name, r in config.references.items()
            },
            "environments": {
                name: {
                    "url": e.url,
                    "service_account": e.service_account,
                    "bindings": {k: binding(v) for k, v in e.bindings.items()},
                    **({"grant_access": e.grant_access, "grant_bindings": sorted(e.grant_bindings)}
                       if e.grant_access or e.grant_bindings else {}),
                    "flows": [e.flows.activate, sorted(k.lower() for k in e.flows.keep_off)],
                }
                for name, e in config.environments.items()
            },
        }
    )


# --------------------------------------------------------------------------- one environment


def _before(ref: LiveReference, owner: OwnerInfo | None) -> dict[str, Any]:
    """A live reference as an op shows it before the change (an update, an add to the solution, a delete):
    made only for an op, since most references of a plan need none (an environment in sync)."""
    return {
        "logical_name": ref.logical_name,
        "connector": ref.connector,
        "display_name": ref.display_name,
        "description": ref.description,
        "connection": ref.connection,
        "owner": owner.describe() if owner else None,
        "in_solution": ref.in_solution,
    }


class _EnvPlanner:
    def __init__(self, config: Config, env: EnvironmentConfig, live: LiveEnvironment) -> None:
        self.config = config
        self.env = env
        self.live = live
        self.writer = rules.writer(env.service_account, live)
        self.bindings = rules.BindingIndex.of(env)
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.fingerprint = live_fingerprint(live)
        self.shares: dict[str, ShareConnection] = {}  # connection name (lower) -> the grant it needs
        # (binding, connector, grant) -> the connection judge_binding found usable with nothing to say
        self.judged: dict[tuple[Binding, str, bool], LiveConnection] = {}
        self.mode = rules.environment_mode(live.solution)
        self.managed_env = self.mode == rules.MANAGED
        # The owner every managed reference gets: the service account, when one is configured (the same
        # for every reference: worked out once).
        self.service_owner = (self.owner_info(self.writer.systemuserid)
                              if env.service_account and self.writer is not None else None)

    def warn(self, code: str, ref: str | None, message: str, fix: str) -> None:
        self.warnings.append(problem(code, message, fix, environment=self.env.name, subject=ref).line())

    # ---- helpers

    def problem(self, code: str, ref: str | None, message: str, fix: str) -> None:
        self.problems.append(problem(code, message, fix, environment=self.env.name, subject=ref))

    def info(self, conn: LiveConnection) -> ConnectionInfo:
        return ConnectionInfo(conn.name, conn.display_name, rules.owner_label(conn, self.live), conn.status)

    def owner_info(self, systemuserid: str | None) -> OwnerInfo | None:
        if not systemuserid:
            return None
        user = self.live.user(systemuserid)
        return OwnerInfo(systemuserid, user.upn if user else None)

    # ---- the run

    def run(self, *, prune: bool, managed: Collection[str], restore: Collection[str] = ()) -> EnvironmentPlan:
        self.problems.extend(rules.identity_problems(self.env.name, self.env.service_account, self.live))
        scope = self.live.connections_visibility_note()
        if scope:  # the caller's list only: say so in the plan itself (docs/dataverse.md §4.3)
            self.warnings.append(f"{self.env.name}: {scope}")
        if self.live.solution is None:
            self.problem("CR310", None, f"solution {self.config.solution} not found in environment {self.env.name}",
                         "create it, or fix solution: in the config (its unique name, not its display name)")
        by_name: dict[str, list[LiveReference]] = {}
        for ref in self.live.references:
            by_name.setdefault(ref.logical_name.lower(), []).append(ref)

        ops: list[Op] = []
        for desired in self.config.references.values():
            ops.extend(self.plan_reference(desired, by_name.get(desired.logical_name.lower(), [])))
        if prune:
            ops.extend(self.plan_prune(by_name, {m.lower() for m in managed}))
        ops.extend(self.shares.values())

        cons = plan_consolidation(self.config, self.env, self.live, writer=self.writer,
                                  bound_after=self.bound_after(ops), restore=restore,
                                  managed_env=self.managed_env, user_label=self.user_label,
                                  granted=set(self.shares))
        self.problems.extend(cons.problems)
        self.warnings.extend(p.line() for p in cons.warnings)
        self.check_keep_off()
        if self.problems:
            raise PlanProblems(self.problems)
        order = {"share": -1, "add_to_solution": 0, "create": 1, "update": 2, "delete": 3}
        ops.sort(key=lambda op: (op.logical_name.lower(), order[op.kind]))
        activations, notes = self.plan_flows(ops, cons)
        return EnvironmentPlan(
            environment=self.env.name,
            ops=(*ops, *cons.repoints, *activations, *cons.retires),
            warnings=tuple(self.warnings),
            fingerprint=self.fingerprint,
            connections_scope=self.live.connections_scope,
            facts=ApplyFacts(
                writer_object_id=rules.impersonated_object_id(self.env.service_account, self.live),
                component_type=self.live.component_type,
            ),
            mode=self.mode,
            flow_notes=notes,
        )

    def plan_reference(self, desired: DesiredReference, matches: list[LiveReference]) -> list[Op]:
        name = desired.logical_name
        if len(matches) > 1:
            names = ", ".join(sorted(m.logical_name for m in matches))
            self.problem("CR311", name, f"several live references match it ignoring case ({names})",
                         "remove the extras")
            return []
        binding = self.bindings.get(name)
        target = self.resolve(desired, binding) if binding is not None else None
        if self.managed_env and (not matches or not matches[0].in_solution):
            where = ("is not in environment " if not matches else "is in environment ") + self.env.name + (
                "" if not matches else " only outside the solution")
            self.problem(
                "CR313", name,
                f"declared in the config but {where}, whose solution {self.config.solution} is managed; connref "
                "does not create references or add them to a managed solution",
                f"ship it in the solution: add it to {self.config.solution} in development, export the solution "
                "as managed and import the new version here, then apply again",
            )
            return []
        if not matches:
            return [self.create(desired, target)]
        return self.update(desired, matches[0], binding, target)

    def create(self, desired: DesiredReference, target: LiveConnection | None) -> CreateReference:
        owner = self.service_owner
        after = {
            "logical_name": desired.logical_name,
            "connector": desired.connector,
            "display_name": desired.display_name,
            "description": desired.description,
            "connection": target.name if target else None,
            "owner": owner.describe() if owner else None,
            "in_solution": True,
        }
        return CreateReference(
            environment=self.env.name,
            logical_name=desired.logical_name,
            reference_id=create_id(self.env.url, desired.logical_name, self.fingerprint),
            reason=f"declared in the config and not found in environment {self.env.name}",
            after=after,
            solution=self.config.solution,
            connector=desired.connector,
            display_name=desired.display_name,
            description=desired.description,
            connection=self.info(target) if target else None,
            owner=owner,
        )

    def update(
        self,
        desired: DesiredReference,
        ref: LiveReference,
        binding: Binding | None,
        target: LiveConnection | None,
    ) -> list[Op]:
        name = ref.logical_name
        if ref.logical_name != desired.logical_name:
            self.warnings.append(
                f"{self.env.name}: {desired.logical_name} is {ref.logical_name} in the environment; logical "
                f"names can't change, so {ref.logical_name} is kept (spell it so in the config)"
            )
        if not rules.same_connector(ref.connector, desired.connector):
            self.problem(
                "CR312", name,
                f"the live reference is for connector {connector_name(ref.connector)} but the config "
                f"declares {connector_name(desired.connector)}",
                "the connector of a reference can't change: declare a new logical name for the new connector",
            )
            return []

        common: dict[str, Any] = {
            "environment": self.env.name,
            "logical_name": name,
            "reference_id": ref.id,
            "etag": ref.etag,
        }
        ops: list[Op] = [] if ref.in_solution else [self.add_to_solution(ref, common)]

        # Unbound in the config: the live binding is left alone (it may be set by hand or by another tool).
        # Without a service account the owner is left alone too.
        new_owner = self.service_owner
        managed_ref = self.managed_env or ref.managed
        if managed_ref:
            self.report_managed(desired, ref)
        expected: dict[str, str | None] = {} if managed_ref else {
            "display_name": desired.display_name, "description": desired.description}
        if target is not None:
            expected["connection"] = target.name
        if new_owner is not None:
            expected["owner"] = new_owner.systemuserid
        actual = {"display_name": ref.display_name, "description": ref.description,
                  "connection": ref.connection, "owner": ref.owner_id}
        changes: list[FieldChange] = []
        reasons: list[str] = []
        old_conn = new_conn = None
        found = rules.differences(expected, actual)
        # Needed only when the reference changes (most references do not).
        old_owner = self.owner_info(ref.owner_id) if found else None
        for d in found:
            if d.field == "connection" and target is not None:  # in ``expected`` only with a target
                live_old = self.live.connection(ref.connection) if ref.connection else None
                if live_old is not None:
                    old_conn = self.info(live_old)
                elif ref.connection:
                    old_conn = ConnectionInfo(ref.connection, status="not found")
                new_conn = self.info(target)
                changes.append(FieldChange("connection", ref.connection, target.name))
                how = f"selected by {binding.describe()}" if isinstance(binding, Selector) else "named in the config"
                other = "another connection" if ref.connection else "a connection to this unbound reference"
                reasons.append(f"the config binds {other} ({how})")
            elif d.field == "owner" and new_owner is not None:
                changes.append(
                    FieldChange("owner", old_owner.describe() if old_owner else None, new_owner.describe())
                )
                was = old_owner.describe() if old_owner else "nobody"
                reasons.append(f"owned by {was}, not the service account")
            else:
                changes.append(FieldChange(d.field, d.actual, d.expected))
                reasons.append(f"the {d.field.replace('_', ' ')} differs from the config")
        if not any(c.field == "owner" for c in changes):
            new_owner = None

        if changes:
            before = _before(ref, old_owner)
            after = dict(before)
            for c in changes:
                after[c.field] = c.after
            ops.append(
                UpdateReference(
                    **common,
                    reason="; ".join(reasons),
                    before=before,
                    after=after,
                    changes=tuple(changes),
                    old_connection=old_conn,
                    new_connection=new_conn,
                    old_owner=old_owner if new_owner else None,
                    new_owner=new_owner,
                    dependents=self.dependents_of(ref) if new_conn is not None else (),
                )
            )
        return ops

    def add_to_solution(self, ref: LiveReference, common: Mapping[str, Any]) -> AddToSolution:
        before = _before(ref, self.owner_info(ref.owner_id))
        return AddToSolution(
            **common,
            reason=f"declared in the config and found in environment {self.env.name} outside "
            f"solution {self.config.solution}",
            before=before,
            after={**before, "in_solution": True},
            solution=self.config.solution,
        )

    def report_managed(self, desired: DesiredReference, ref: LiveReference) -> None:
        """A managed reference: its display name and description come with the solution (a difference is
        reported, never written); an unmanaged layer over it is reported (docs/dataverse.md §2.6)."""
        found = rules.managed_field_problems(ref, display_name=desired.display_name,
                                             description=desired.description, solution=self.config.solution,
                                             environment=self.env.name)
        layer = rules.unmanaged_layer_problem(ref, self.live.layers.get(ref.id.lower(), ()),
                                              environment=self.env.name)
        self.warnings.extend(p.line() for p in (*found, *([layer] if layer else [])))

    def dependents_of(self, ref: LiveReference) -> tuple[FlowInfo, ...]:
        """What uses a reference: from ``RetrieveDependenciesForDelete`` when it was read, else the flows
        whose ``clientdata`` names it (docs/dataverse.md §2.5, §5.2)."""
        read = self.live.dependents.get(ref.id.lower())
        if read is not None:
            return tuple(self.dependent_info(d) for d in read)
        key = ref.logical_name.lower()
        return tuple(
            FlowInfo(f.id, f.name, "flow", f.state_name, self.user_label(f.owner_id))
            for f in sorted(self.live.flows, key=lambda f: (f.name.lower(), f.id))
            if key in {r.lower() for r in f.references}
        )

    def dependent_info(self, dep: LiveDependent) -> FlowInfo:
        flow = self.live.flow(dep.id) if dep.kind == "flow" else None
        if flow is not None:
            return FlowInfo(flow.id, flow.name, "flow", flow.state_name, self.user_label(flow.owner_id))
        return FlowInfo(dep.id, dep.name, dep.kind, dep.state, self.user_label(dep.owner_id))

    def user_label(self, systemuserid: str | None) -> str | None:
        user = self.live.user(systemuserid)
        return user.describe() if user else systemuserid

    def plan_prune(self, by_name: Mapping[str, list[LiveReference]], managed: set[str]) -> list[Op]:
        """Delete references connref manages that the config no longer declares, unless something uses them
        (flows, canvas apps, agents: ``RetrieveDependenciesForDelete``, docs/dataverse.md §2.7). References
        connref never managed are never deleted, nor managed components (they go with their solution)."""
        declared = {n.lower() for n in self.config.references}
        replaced = set(self.config.replacements)  # consolidation retires them, after their flows move
        ops: list[Op] = []
        for key, refs in sorted(by_name.items()):
            if key in declared or key in replaced or key not in managed:
                continue
            for ref in refs:
                if self.managed_env or ref.managed:
                    self.warn(
                        "CR322", ref.logical_name,
                        f"no longer declared, but it is part of the managed solution {self.config.solution}, so "
                        "prune leaves it",
                        "remove it from the solution in development; the next managed import removes it here",
                    )
                    continue
                users = self.dependents_of(ref)
                if users:
                    self.warn(
                        "CR323", ref.logical_name,
                        "no longer declared but not deleted: " + "; ".join(u.describe() for u in users)
                        + (" uses" if len(users) == 1 else " use") + " it",
                        "bind them to another reference, or remove them, before pruning it",
                    )
                    continue
                owner = self.owner_info(ref.owner_id)
                ops.append(
                    DeleteReference(
                        environment=self.env.name,
                        logical_name=ref.logical_name,
                        reference_id=ref.id,
                        etag=ref.etag,
                        reason="managed by connref, no longer declared in the config, and prune is on",
                        before=_before(ref, owner),
                        flows=users,
                    )
                )
        return ops

    # ---- flows

    def bound_after(self, ops: list[Op]) -> dict[str, str | None]:
        """Lower-case logical name -> the connection each reference will have once ``ops`` are written."""
        bound: dict[str, str | None] = {r.logical_name.lower(): r.connection for r in self.live.references}
        for op in ops:
            if isinstance(op, CreateReference):
                bound[op.logical_name.lower()] = op.connection.name if op.connection else None
            elif isinstance(op, UpdateReference) and op.new_connection is not None:
                bound[op.logical_name.lower()] = op.new_connection.name
            elif isinstance(op, DeleteReference):
                bound.pop(op.logical_name.lower(), None)
        return bound

    def plan_flows(self, ops: list[Op], cons: ConsolidationPlan | None = None
                   ) -> tuple[tuple[ActivateFlow, ...], tuple[FlowNote, ...]]:
        """The solution's flows that are off: which apply switches on once the bindings are written, in
        passes (children first), and which stay off and why (``rules.activation_verdict``). A flow the
        consolidation moves is judged with its new definition, and as off when the move switches it off; the
        flows the moves switch off, and those an earlier apply switched off to move them (``cons.again``), are
        switched on again whatever ``flows.activate`` and ``flows.keep_off`` say."""
        cons = cons or ConsolidationPlan()
        flows = [cons.projected.get(f.id.lower(), f) for f in self.live.flows]
        sol = self.config.solution.lower()
        chosen = [f for f in flows if any(s.lower() == sol for s in f.solutions) or f.id.lower() in cons.again]
        verdict = rules.activation_verdict(
            chosen,
            {f.id.lower(): f for f in flows},
            bound_after=self.bound_after(ops),
            connection=self.live.connection,
            describe=lambda c: rules.describe_connection(c, self.live),
            writer=self.writer,
            writer_label=self.writer.describe() if self.writer else "the identity that writes",
            settings=self.env.flows,
            live=self.live,
            granted=set(self.shares),
            restore=cons.again,
            replaced={name: kept.logical_name for name, kept in self.config.replacements.items()},
        )
        return self.activation_ops(verdict, cons)

    def check_keep_off(self) -> None:
        """CR317: a ``flows.keep_off`` entry that names no flow of the environment. A misspelt name keeps
        nothing off, and the flow it meant would be switched on: refused rather than guessed."""
        unmatched = self.env.flows.keep_off_unmatched((f.id, f.name) for f in self.live.flows)
        names = ", ".join(f'"{f.name}"' for f in sorted(self.live.flows, key=lambda f: f.name.lower()))
        for entry in unmatched:
            self.problem("CR317", None,
                         f'flows.keep_off names "{entry}", which is no flow of environment {self.env.name} '
                         f"(its flows: {names or 'none'})",
                         f"fix the name in environments.{self.env.name}.flows.keep_off, or remove it")

    def activation_ops(self, verdict: rules.ActivationVerdict, cons: ConsolidationPlan
                       ) -> tuple[tuple[ActivateFlow, ...], tuple[FlowNote, ...]]:
        who = self.writer.describe() if self.writer else "the identity that writes"
        moving = {op.flow_id.lower() for op in cons.repoints if op.switch_off}
        activations = []
        for a in verdict.activations:
            f = a.flow
            needs = " after its child flows" if f.children else ""
            fid = f.id.lower()
            why = ("on, and switched off to move it onto the reference that replaces its per-developer ones"
                   if fid in moving else
                   "an earlier apply switched it off to move it onto the reference that replaces its "
                   "per-developer ones and did not switch it on again" if fid in cons.again else "off")
            activations.append(ActivateFlow(
                environment=self.env.name,
                logical_name=f.name,
                etag=f.etag or None,
                reason=f"{why}, and every reference it uses will be bound to a connection {who} may use; "
                       f"switched on as {who}{needs}",
                before={"state": f.state_name},
                after={"state": "On"},
                flow_id=f.id,
                pass_number=a.pass_number,
                owner=self.user_label(f.owner_id),
                references=f.references,
                children=f.children,
            ))
        notes = tuple(
            FlowNote(h.flow.id, h.flow.name, h.kind, h.reasons, h.flow.state_name, self.user_label(h.flow.owner_id))
            for h in verdict.held
        )
        return tuple(activations), notes

    # ---- bindings

    def resolve(self, desired: DesiredReference, binding: Binding) -> LiveConnection | None:
        """The connection a binding names, checked (``rules.judge_binding``); ``None`` (problems recorded)
        when it can't be used."""
        grant = self.env.grants(desired.logical_name)
        key = (binding, desired.connector, grant)
        conn = self.judged.get(key)
        if conn is None:
            found = rules.judge_binding(binding, desired.connector, self.writer, self.live,
                                        service_account=self.env.service_account, subject=desired.logical_name,
                                        grant=grant)
            self.problems.extend(found.problems)
            self.warnings.extend(p.line() for p in found.warnings)
            conn = found.usable
            # Thousands of references share a binding: a verdict that says nothing about the reference (no
            # problem, no warning, both of which name it) is the same for every one of them.
            if conn is not None and not found.problems and not found.warnings:
                self.judged[key] = conn
        if conn is not None and grant and rules.needs_grant(conn, self.writer, self.live):
            self.grant(desired.logical_name, conn)
        return conn

    def grant(self, logical_name: str, conn: LiveConnection) -> None:
        """A share of ``conn`` with the writer (``grant_access``), once per connection."""
        writer = self.writer
        assert writer is not None and writer.object_id
        if conn.name.lower() in self.shares:
            return
        kind = "ServicePrincipal" if writer.application_id else "User"
        if kind == "User":
            self.warnings.append(
                f"{self.env.name}: {logical_name}: {writer.describe()} is a person; the platform may refuse to "
                "share a connection with a user that does not represent a service principal (docs/service-account.md)")
        self.shares[conn.name.lower()] = ShareConnection(
            environment=self.env.name,
            logical_name=logical_name,
            reason=f"grant_access: {writer.describe()} writes the binding and has no access to the connection",
            after={"connection": conn.name, "principal": writer.object_id, "role": rules.SHARE_ROLE},
            connection=self.info(conn),
            connector=conn.connector.rstrip("/").rsplit("/", 1)[-1],
            principal_id=str(writer.object_id),
            principal_type=kind,
            principal=writer.describe(),
            role=rules.SHARE_ROLE,
        )
