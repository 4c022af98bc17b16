"""Adoption: write the config YAML for what an environment has today.

``import_environment`` turns a ``LiveEnvironment`` into config text that the loader accepts and that
plans "No changes." right away: every reference in the solution with its connector, display name and
description, and the environment's bindings to the connections they have now. What lint would flag
gets a YAML comment above the item naming the lint code and why (random suffix, several references
for one connector, personal or broken connection, unbound, unused), so the file is also the to-do list.

Given the current config text, import keeps the rest of the file as the user wrote it and replaces
only the ``references`` section and the environment's ``url``, ``environment_id`` and ``bindings``
(``reconciler.adoption.import_merge``).

Output is deterministic: references and bindings sorted by logical name, no timestamps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.adoption.import_merge import (
    SA_NOTE,
    Existing,
    environment_data,
    kept_bindings,
    merge_import,
    parse_existing,
    restore_service_account,
)
from reconciler.adoption.lint import connection_findings, flows_using
from reconciler.adoption.yamledit import (
    PARK_MARK,
    Parked,
    comment_lines,
    find_entry,
    indent_unit,
    is_comment_line,
    mapping_entries,
    park_block,
    parked_groups,
    parked_lines,
    yaml_key,
    yaml_scalar,
)
from reconciler.config.checks import is_blank
from reconciler.domain import consolidation, rules
from reconciler.domain.model import LiveConnection, LiveEnvironment, LiveReference, LiveUser, connector_name
from reconciler.domain.names import logical_name_problem
from reconciler.domain.naming import NamingTemplate, connector_display_name, random_suffix
from reconciler.domain.rules import Problem
from reconciler.domain.text import inert
from reconciler.errors import ConnrefError


def _duplicate_groups(refs: Sequence[LiveReference]) -> dict[str, list[LiveReference]]:
    groups: dict[str, list[LiveReference]] = {}
    for r in refs:
        groups.setdefault(connector_name(r.connector), []).append(r)
    return {k: v for k, v in groups.items() if len(v) > 1}


def _flows_label(live: LiveEnvironment, logical_name: str) -> str:
    flows = flows_using(live, logical_name)
    return ", ".join(f.name for f in flows) if flows else "no flow"


def _reference_comments(
    ref: LiveReference,
    live: LiveEnvironment,
    duplicates: Mapping[str, list[LiveReference]],
    template: NamingTemplate | None,
    solution: str,
    service_account: str | None,
    foreign_owners: Mapping[str, str],
) -> list[str]:
    """The comments above one declared reference: lint findings, and who owns it when that is not
    ``service_account`` (``foreign_owners``: reference id -> owner)."""
    notes: list[str] = []
    for what, name in (("logical name", ref.logical_name), ("display name", ref.display_name)):
        suffix = random_suffix(name)
        if suffix:
            notes.append(f"CR102 random-suffix: the {what} ends with the random suffix {suffix!r} "
                         "the maker portal adds")
    group = duplicates.get(connector_name(ref.connector))
    if group:
        others = "; ".join(
            f"{r.logical_name} ({_flows_label(live, r.logical_name)})"
            for r in sorted(group, key=lambda r: r.logical_name.lower())
        )
        notes.append(f"CR103 duplicate-connector: one of {len(group)} references for "
                     f"{connector_display_name(ref.connector)}: {others}")
    if template is not None and ref.display_name:
        hint = template.check(ref.display_name, ref.logical_name, ref.connector, solution)
        if hint:
            notes.append(f"CR101 naming-policy: {hint}")
    if not flows_using(live, ref.logical_name):
        notes.append("CR207 unused-reference: no flow uses it")
    if service_account and ref.id in foreign_owners:
        notes.append(f"owned by {foreign_owners[ref.id]}: with service_account set, plan assigns it to "
                     f"{service_account}")
    return notes


def _reference_lines(ref: LiveReference, indent: str, unit: str, notes: list[str],
                     replaces: Sequence[str] = (), suggested: Sequence[str] = (),
                     live: LiveEnvironment | None = None) -> list[str]:
    """One declared reference; ``replaces``: the names the existing config says it replaces (kept as they
    are); ``suggested``: the per-developer duplicates it could replace (a commented-out ``replaces:``)."""
    out: list[str] = []
    for n in notes:
        out += comment_lines(n, indent)
    out.append(f"{indent}{yaml_key(ref.logical_name)}:")
    inner = indent + unit
    # The short connector name reads better; the loader accepts it and normalises to the full id.
    out.append(f"{inner}connector: {yaml_scalar(ref.connector.rstrip('/').rsplit('/', 1)[-1])}")
    # Blank text (spaces, a tab, an ideographic space, a line break) is no value to the config: the loader
    # refuses a blank display_name and reads a blank description as none, so both go as missing ones do.
    if ref.display_name and not is_blank(ref.display_name):
        out.append(f"{inner}display_name: {yaml_scalar(ref.display_name)}")
    else:
        out += comment_lines("no display name today: plan will set this one", inner)
        out.append(f"{inner}display_name: {yaml_scalar(ref.logical_name)}")
    if ref.description and not is_blank(ref.description):
        out.append(f"{inner}description: {yaml_scalar(ref.description)}")
    elif ref.description:
        out += comment_lines("no description today, only blank space: plan will clear it", inner)
    if replaces:
        out.append(f"{inner}replaces:")
        out += [f"{inner}{unit}- {yaml_scalar(name)}" for name in replaces]
    elif suggested and live is not None:
        moved = "; ".join(f"{name}: {_flows_label(live, name)}" for name in suggested)
        out += comment_lines(
            f"CR103 duplicate-connector: to consolidate the {connector_display_name(ref.connector)} references "
            f"onto this one, uncomment the lines below and remove {', '.join(suggested)} from references and "
            "bindings; apply then moves their flows onto this reference and deletes them (docs/adoption.md, "
            f"Consolidating per-developer references). Flows to move: {moved}.", inner)
        out += comment_lines("replaces:", inner, wrap=False)
        for name in suggested:
            out += comment_lines(f"{unit}- {name}", inner, wrap=False)
    return out


def unfit_references(refs: Sequence[LiveReference]) -> list[tuple[LiveReference, str]]:
    """The references whose logical name the config cannot declare (the loader's own rule,
    ``logical_name_problem``), each with why: import leaves them out rather than write a key that
    ``connref validate`` refuses."""
    found = ((r, logical_name_problem(r.logical_name)) for r in sorted(refs, key=lambda r: r.logical_name.lower()))
    return [(r, problem) for r, problem in found if problem]


def unfit_note(ref: LiveReference, problem: str, solution: str) -> str:
    """Why ``ref`` is not imported, for a comment or a warning (shown inert by whoever writes it)."""
    return (f"not imported: '{ref.logical_name}' (in solution {solution}) has an invalid logical name: {problem}; "
            "the config cannot declare it, so plan and apply leave it as it is")


def existing_replaces(existing: Existing | None) -> dict[str, tuple[str, ...]]:
    """Declared reference (lower case) -> the names the existing config says it replaces."""
    refs = existing.data.get("references") if existing is not None else None
    out: dict[str, tuple[str, ...]] = {}
    for name, body in (refs.items() if isinstance(refs, Mapping) else []):
        names = body.get("replaces") if isinstance(body, Mapping) else None
        if isinstance(name, str) and isinstance(names, list):
            out[name.lower()] = tuple(n for n in names if isinstance(n, str))
    return out


def _suggestions(scope: _Scope, existing: Existing | None) -> dict[str, list[str]]:
    """Kept reference (lower case) -> the per-developer duplicates import suggests it replaces: for each
    connector with several references, the one the rules layer would keep (``consolidation.kept_reference``);
    none when the team's policy allows per-developer references, or the config already consolidates them."""
    lint_section = existing.data.get("lint") if existing is not None else None
    policy = lint_section.get("per_developer_references") if isinstance(lint_section, Mapping) else None
    if consolidation.per_developer_severity(policy if isinstance(policy, str) else None) is None:
        return {}
    out: dict[str, list[str]] = {}
    for group in consolidation.duplicate_groups(scope.refs).values():
        kept = consolidation.kept_reference(group, scope.live, scope.service_account)
        out[kept.logical_name.lower()] = [r.logical_name for r in group if r is not kept]
    return out


def _binding_lines(
    ref: LiveReference,
    live: LiveEnvironment,
    env_name: str,
    service_account: str | None,
    indent: str,
    kept: Mapping[str, list[str]],
    example_owner: str | None = None,
) -> list[str]:
    """The binding of one live reference: its current connection, or a comment when there is none
    that plan could keep (unbound, or bound to a connection that does not exist)."""
    out: list[str] = []
    if not ref.connection:
        users = _flows_label(live, ref.logical_name)
        out += comment_lines(f"CR202 unbound: not bound to any connection in {env_name} (used by: {users}); "
                        "bind it, e.g.:", indent)
        owner = service_account or example_owner or "svc-account@example.com"
        out += comment_lines(f"{ref.logical_name}: {{owner: {owner}}}", indent, wrap=False)
        return out
    conn = live.connection(ref.connection)
    if conn is None:
        out += comment_lines(f"CR204 connection-not-found: bound to connection {ref.connection}, which does not "
                        f"exist in {env_name}; bind it to a working connection:", indent)
        out += comment_lines(f"{ref.logical_name}: {ref.connection}", indent, wrap=False)
        return out
    findings = connection_findings(env_name, ref.logical_name, ref.connector, conn, live, service_account)
    for f in findings:
        out += comment_lines(f"{f.code} {f.name}: {f.message}", indent)
    owner = rules.owner_label(conn, live) or "unknown owner"
    shown = conn.display_name or conn.name
    label = shown if owner.lower() == shown.lower() else f"{shown} ({owner})"
    refusals = plan_refusals(ref, conn, live)
    if refusals:
        # plan checks every binding, changed or not; a commented-out binding leaves the live one alone
        said = {f.code for f in findings}
        why = "; ".join(f"{p.code} {p.name}" + ("" if p.code in said else f": {p.fix}") for p in refusals)
        out += comment_lines(f"plan would refuse this binding ({why}); it stays commented out "
                        "until fixed:", indent)
        out += comment_lines(f"{ref.logical_name}: {conn.name}  # {label}", indent, wrap=False)
        return out
    if ref.logical_name.lower() in kept:
        return out + kept[ref.logical_name.lower()]
    out.append(f"{indent}{yaml_key(ref.logical_name)}: {yaml_scalar(conn.name)}  # {inert(label)}")
    return out


def plan_refusals(ref: LiveReference, conn: LiveConnection, live: LiveEnvironment) -> list[Problem]:
    """Why plan would refuse binding ``ref`` to ``conn`` as ``live`` stands (the rules layer's checks:
    same connector, Connected, usable by the identity that writes), or nothing."""
    found = rules.connection_problems(conn, ref.connector, live, subject=ref.logical_name)
    access = rules.access_problem(conn, rules.writer(None, live), live, service_account=None,
                                  subject=ref.logical_name)
    return found + ([access] if access is not None else [])


def _foreign_owners(refs: Sequence[LiveReference], live: LiveEnvironment,
                    sa_user: LiveUser | None, service_account: str) -> dict[str, str]:
    """Reference id -> its owner, for the references the service account does not own (the ones plan
    would give to it: planner compares ``_ownerid_value`` with the writer's ``systemuserid``)."""
    out: dict[str, str] = {}
    for r in refs:
        owner = live.user(r.owner_id)
        if sa_user is not None:
            if rules.same("owner", r.owner_id, sa_user.systemuserid):
                continue
        elif owner is not None and service_account.strip().lower() in rules.principal_keys(owner):
            continue
        out[r.id] = owner.describe() if owner else (r.owner_id or "nobody")
    return out


def _service_account_lines(service_account: str, foreign: Mapping[str, str], indent: str) -> list[str]:
    """The service_account line at ``indent``: as is when the service account owns every reference,
    else commented out after a note saying who owns them and what uncommenting does."""
    line = f"service_account: {yaml_scalar(service_account)}"
    if not foreign:
        return [indent + line]
    owners = ", ".join(sorted(set(foreign.values()), key=str.lower))
    n = len(foreign)
    are = f"{n} reference is" if n == 1 else f"{n} references are"
    note = (f"{SA_NOTE}{are} owned by {owners} today. Uncomment it to have plan make "
            f"{service_account} their owner; plan then shows '~ owner' changes for them.")
    return comment_lines(note, indent) + comment_lines(line, indent, wrap=False)


def import_environment(
    live: LiveEnvironment,
    *,
    solution: str,
    env_name: str,
    env_url: str,
    environment_id: str | None,
    existing_config_text: str | None = None,
    service_account: str | None = None,
) -> str:
    """Config YAML declaring what ``live`` has in ``solution`` today.

    Without ``existing_config_text`` the result is a complete config (version, solution, references,
    one environment). With it, the result is that config with its ``version``, ``solution`` and
    ``references`` replaced and the ``env_name`` environment's ``url``, ``environment_id`` and
    ``bindings`` replaced (added when missing); everything else is kept as written, comments included.
    References the old config declared but ``live`` lacks are *parked*: written back commented out
    with a ``#| `` mark, with every environment's bindings to them, because declaring them would make
    plan create them; deleting the marks restores them, and a later import declares them again once
    the environment has them. A binding the old config gave by selector is kept when it still
    resolves to the connection the reference has now.

    ``service_account`` (default: the environment's ``service_account`` in the existing config) is
    who should own the references and connections. When it owns every imported reference, the
    environment's ``service_account`` line is kept (written, for a fresh config) and bindings to
    connections owned by anyone else get a CR201 comment. When some reference is owned by someone
    else, plan with that line would make the service account their owner, so the line is written
    commented out after a note naming the owners (uncommenting it is the user's call), and the
    rest (CR201, which bindings plan would refuse) is judged as plan will judge it then: without a
    service account, the caller writing. A later import finds that commented line and decides again.
    Raises ``ConnrefError`` when the solution is not in the environment.
    """
    if live.solution is None:
        raise ConnrefError(
            f"solution {solution!r} does not exist in environment {env_name}; pass the unique name of the "
            "solution that holds the connection references (--solution)"
        )
    solution = live.solution.unique_name or solution
    existing = parse_existing(existing_config_text)
    if existing is not None:
        existing = restore_service_account(existing, env_name)
    env_data = environment_data(existing, env_name)
    if service_account is None and isinstance(env_data.get("service_account"), str):
        service_account = env_data["service_account"]
    unit = indent_unit(existing.lines, existing.root) if existing else "  "
    refs = sorted((r for r in live.references if r.in_solution), key=lambda r: (r.logical_name.lower(), r.id))
    unfit = unfit_references(refs)
    left_out = {u for u, _ in unfit}
    refs = [r for r in refs if r not in left_out]
    replaced = _replaced_here(refs, existing)
    refs = [r for r in refs if r not in replaced]
    live, foreign, sa_lines = _service_account_decision(live, refs, service_account, env_data, unit)
    scope = _Scope(live, solution, env_name, unit, tuple(refs), service_account, foreign, replaced, tuple(unfit))
    ref_lines, newly_parked = _references_section(scope, existing)
    binding_lines = _bindings_section(scope, existing)
    url_line = f"{unit * 2}url: {yaml_scalar(env_url)}"
    id_line = f"{unit * 2}environment_id: {yaml_scalar(environment_id)}" if environment_id else None

    if existing is None:
        out = [
            f"# connref config imported from environment {inert(env_name)} (solution {inert(solution)}).",
            "# Comments with a lint code (CR...) mark what to tidy: see docs/adoption.md.",
            "version: 1",
            f"solution: {yaml_scalar(solution)}",
            "",
            *ref_lines,
            "",
            "environments:",
            f"{unit}{yaml_key(env_name)}:",
            url_line,
            *([id_line] if id_line else []),
            *(sa_lines or []),
            *binding_lines,
        ]
        return "\n".join(out) + "\n"
    return merge_import(existing, env_name, solution, unit, ref_lines, url_line, id_line, binding_lines,
                         newly_parked, sa_lines)


@dataclass(frozen=True)
class _Scope:
    """What one import writes from: the environment (with the writer plan will use), the solution's
    references in output order, the service account and the references it does not own."""

    live: LiveEnvironment
    solution: str
    env_name: str
    unit: str
    refs: tuple[LiveReference, ...]
    service_account: str | None
    foreign: Mapping[str, str]  # reference id -> its owner, when not the service account
    # References the existing config replaces by one the environment has: not declared (apply retires them).
    replaced: Mapping[LiveReference, str] = dataclasses.field(default_factory=dict)
    # References whose logical names the config cannot declare, with why: left out, with a comment.
    unfit: tuple[tuple[LiveReference, str], ...] = ()

    @property
    def by_key(self) -> dict[str, LiveReference]:
        return {r.logical_name.lower(): r for r in self.refs}

    @property
    def active_service_account(self) -> str | None:
        """The service account plan will write as: none while its line is commented out."""
        return self.service_account if not self.foreign else None


def _replaced_here(refs: Sequence[LiveReference], existing: Existing | None) -> dict[LiveReference, str]:
    """The references the existing config replaces (``replaces:``) by a reference the environment has ->
    that reference's name: the consolidation is under way, so import declares the kept one with its
    ``replaces:`` and not these (declaring both is an error)."""
    names = {r.logical_name.lower(): r.logical_name for r in refs}
    out: dict[LiveReference, str] = {}
    for kept, replaced in existing_replaces(existing).items():
        if kept not in names:
            continue
        wanted = {n.lower() for n in replaced}
        out.update({r: names[kept] for r in refs if r.logical_name.lower() in wanted})
    return out


def _service_account_decision(
    live: LiveEnvironment, refs: Sequence[LiveReference], service_account: str | None,
    env_data: Mapping[str, object], unit: str,
) -> tuple[LiveEnvironment, dict[str, str], list[str] | None]:
    """(the environment as plan will judge it, the references the service account does not own, the
    service_account lines to write: None to leave the existing line alone).

    The line is kept only when the service account owns every reference already, so that plan right
    after import has no changes; else it is written commented out, and everything is judged with the
    caller writing, as plan will then (live reader: no service account -> writer = caller)."""
    if not service_account:
        return live, {}, None
    writers = (live.writer,) if live.writer is not None else ()
    sa_user = rules.resolve_principal(service_account, (*writers, *live.users))
    foreign = _foreign_owners(refs, live, sa_user, service_account)
    sa_lines: list[str] | None = _service_account_lines(service_account, foreign, unit * 2)
    if foreign:
        return dataclasses.replace(live, writer=live.caller), foreign, sa_lines
    if sa_user is not None and live.writer != sa_user:
        live = dataclasses.replace(live, writer=sa_user)
    old_sa = env_data.get("service_account")
    if isinstance(old_sa, str) and old_sa.lower() == service_account.lower():
        sa_lines = None  # the line stays as the user wrote it
    return live, foreign, sa_lines


def _naming_template(existing: Existing | None) -> NamingTemplate | None:
    naming = existing.data.get("naming") if existing else None
    if not isinstance(naming, str) or not naming:
        return None
    try:
        return NamingTemplate(naming)
    except ValueError:
        return None  # lint reports CR100; import still works


def _references_section(scope: _Scope, existing: Existing | None) -> tuple[list[str], set[str]]:
    """The ``references:`` section, and the (lower-cased) names import parks now."""
    unit, solution, env_name = scope.unit, scope.solution, scope.env_name
    ref_lines = ["references:"]
    if not scope.refs and not scope.unfit:
        ref_lines += comment_lines(f"solution {solution} has no connection references in {env_name}", unit)
    for r, problem in scope.unfit:
        ref_lines += comment_lines(unfit_note(r, problem, solution), unit)
    template = _naming_template(existing)
    duplicates = _duplicate_groups(scope.refs)
    replaces = existing_replaces(existing)
    suggested = _suggestions(scope, existing)
    for r in scope.refs:
        notes = _reference_comments(r, scope.live, duplicates, template, solution, scope.service_account,
                                    scope.foreign)
        ref_lines += _reference_lines(r, unit, unit, notes, replaces.get(r.logical_name.lower(), ()),
                                      suggested.get(r.logical_name.lower(), ()), scope.live)
    managed_env = scope.live.solution is not None and scope.live.solution.managed
    for r in scope.replaced:
        # What becomes of it is what the plan says (docs/adoption.md): connref edits and deletes only what an
        # unmanaged environment lets it.
        flows = _flows_label(scope.live, r.logical_name)
        fate = ("the next import of the solution, with its flows moved where it is developed, removes it"
                if managed_env else
                f"apply moves its flows ({flows}); it is managed, so it stays until the solution it came with "
                "drops it" if r.managed else f"apply moves its flows ({flows}) and deletes it")
        ref_lines += comment_lines(
            f"{r.logical_name} is replaced by {scope.replaced[r]} (its replaces:), so it is not declared; {fate}",
            unit)
    # References the old config declared and the environment lacks are parked, not declared: plan
    # would create them, and import promises a config that plans no changes.
    by_key = scope.by_key
    parked, newly_parked = _parked_references(existing, by_key)
    for low in sorted(parked):
        key, content = parked[low]
        if low in by_key:
            continue  # it exists now: declared above from what the environment has
        ref_lines += parked_lines(key, content, unit, (
            f"parked: {key} is not in solution {solution} in {env_name}, so declaring it would make plan "
            f"create it there. Remove the '{PARK_MARK.strip()}' marks here and on its bindings to declare "
            "it again."
        ))
    outside = sorted((r for r in scope.live.references if not r.in_solution), key=lambda r: r.logical_name.lower())
    if outside:
        ref_lines += comment_lines(f"Also in {env_name} but not in solution {solution} (not imported):", unit)
        for r in outside:
            ref_lines += comment_lines(f"  {r.logical_name} ({connector_name(r.connector)}, "
                                  f"{r.display_name or 'no display name'})", unit)
    if not any(line.strip() and not is_comment_line(line) for line in ref_lines[1:]):
        ref_lines[0] = "references: {}"
    return ref_lines, newly_parked


def _parked_references(existing: Existing | None,
                       by_key: Mapping[str, LiveReference]) -> tuple[dict[str, Parked], set[str]]:
    """The references to write parked (lower-cased name -> (name, YAML)): those parked before, and those
    the existing config declares that the environment lacks; and the names of the latter."""
    parked: dict[str, Parked] = {}
    newly_parked: set[str] = set()
    old = find_entry(existing.root, "references") if existing is not None else None
    if existing is None or old is None:
        return parked, newly_parked
    for key, content in parked_groups(existing.lines[old.key_line + 1:old.end]):
        parked[key.lower()] = (key, content)
    for e in mapping_entries(existing.lines, old.value, old.key_line + 1, old.end) or []:
        if e.key.lower() not in by_key:
            parked[e.key.lower()] = (e.key, park_block(existing.lines[e.start:e.end], e.column))
            newly_parked.add(e.key.lower())
    return parked, newly_parked


def _bindings_section(scope: _Scope, existing: Existing | None) -> list[str]:
    """The environment's ``bindings:``: each reference's current connection (or why not), the existing
    entries that still hold, and the parked bindings."""
    unit, by_key = scope.unit, scope.by_key
    same, absent = kept_bindings(existing, scope.env_name, scope.live, by_key)
    b_indent = unit * 3
    binding_lines = [f"{unit * 2}bindings:"]
    active_sa = scope.active_service_account
    if not active_sa:
        binding_lines += comment_lines("no service_account for this environment: bindings to personal "
                                  "connections are not flagged (see lint code CR200)", b_indent)
    for r in scope.refs:
        binding_lines += _binding_lines(r, scope.live, scope.env_name, active_sa, b_indent, same,
                                        scope.service_account)
    for key, content in sorted(absent, key=lambda kc: kc[0].lower()):
        if key.lower() not in by_key:
            binding_lines += parked_lines(key, content, b_indent, None)
    if all(is_comment_line(line) or not line.strip() for line in binding_lines[1:]):
        # Only comments under the key would load as null: an empty mapping keeps the type right.
        binding_lines[0] = f"{unit * 2}bindings: {{}}"
    return binding_lines


__all__ = ["import_environment", "plan_refusals", "unfit_note", "unfit_references"]
