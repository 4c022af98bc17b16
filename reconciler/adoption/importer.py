"""Adoption: write the config YAML for what an environment has today, and read bindings from a
deployment settings file into a config.

``import_environment`` turns a ``LiveEnvironment`` into config text that the loader accepts and that
plans "No changes." right away: every reference in the solution with its connector, display name and
description, and the environment's bindings to the connections they have now. What lint would flag
gets a YAML comment above the item naming the lint code and why (random suffix, several references
for one connector, personal or broken connection, unbound, unused), so the file is also the to-do list.

Given the current config text, import keeps the rest of the file as the user wrote it (auth
profiles, other environments, comments) and replaces only the ``references`` section and the
environment's ``url``, ``environment_id`` and ``bindings``. The file is edited as text, guided by
the positions PyYAML reports, because a YAML round trip through a parser drops comments (the text
edits are in ``reconciler.adoption.yamledit``).

Output is deterministic: references and bindings sorted by logical name, no timestamps.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.adoption.lint import (
    NamingTemplate,
    connection_findings,
    connector_display_name,
    flows_using,
    is_connected,
    random_suffix,
)
from reconciler.adoption.settings import connection_owner_label, parse_settings, resolve_binding
from reconciler.adoption.yamledit import (
    PARK_MARK,
    Entry,
    Parked,
    comment_lines,
    find_entry,
    indent_unit,
    is_comment_line,
    mapping_entries,
    park_block,
    parked_groups,
    parked_lines,
    splice_lines,
    strip_generated,
    yaml_key,
    yaml_scalar,
)
from reconciler.domain.model import LiveConnection, LiveEnvironment, LiveReference, LiveUser, Selector, connector_name
from reconciler.errors import ConfigError, ConnrefError, PlanError

# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class _Existing:
    """What import reuses from the current config text (all optional)."""

    text: str
    lines: list[str]
    root: list[Entry]
    data: Mapping[str, Any]


def _parse_existing(text: str | None) -> _Existing | None:
    if not text or not text.strip():
        return None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if node is None or not isinstance(data, Mapping):
        return None
    lines = text.splitlines()
    root = mapping_entries(lines, node, 0, len(lines))
    if root is None:
        return None
    return _Existing(text, lines, root, data)


def _env_data(existing: _Existing | None, env_name: str) -> Mapping[str, Any]:
    if existing is None:
        return {}
    envs = existing.data.get("environments")
    env = envs.get(env_name) if isinstance(envs, Mapping) else None
    return env if isinstance(env, Mapping) else {}


def _selector_from(value: Any) -> str | Selector | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("owner"), str):
        dn = value.get("display_name")
        return Selector(value["owner"], dn if isinstance(dn, str) else None)
    return None


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


def _reference_lines(ref: LiveReference, indent: str, unit: str, notes: list[str]) -> list[str]:
    out: list[str] = []
    for n in notes:
        out += comment_lines(n, indent)
    out.append(f"{indent}{yaml_key(ref.logical_name)}:")
    inner = indent + unit
    # The short connector name reads better; the loader accepts it and normalises to the full id.
    out.append(f"{inner}connector: {yaml_scalar(ref.connector.rstrip('/').rsplit('/', 1)[-1])}")
    if ref.display_name:
        out.append(f"{inner}display_name: {yaml_scalar(ref.display_name)}")
    else:
        out += comment_lines("no display name today: plan will set this one", inner)
        out.append(f"{inner}display_name: {yaml_scalar(ref.logical_name)}")
    if ref.description:
        out.append(f"{inner}description: {yaml_scalar(ref.description)}")
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
    for f in connection_findings(env_name, ref.logical_name, ref.connector, conn, live, service_account):
        out += comment_lines(f"{f.code} {f.name}: {f.message}", indent)
    owner = connection_owner_label(conn, live)
    shown = conn.display_name or conn.name
    label = shown if owner.lower() == shown.lower() else f"{shown} ({owner})"
    refusal = planner_refusal(ref, conn, live)
    if refusal is not None:
        # plan checks every binding, changed or not; a commented-out binding leaves the live one alone
        out += comment_lines(f"plan would refuse this binding ({refusal}); it stays commented out "
                        "until fixed:", indent)
        out += comment_lines(f"{ref.logical_name}: {conn.name}  # {label}", indent, wrap=False)
        return out
    if ref.logical_name.lower() in kept:
        return out + kept[ref.logical_name.lower()]
    out.append(f"{indent}{yaml_key(ref.logical_name)}: {yaml_scalar(conn.name)}  # {label}")
    return out


def planner_refusal(ref: LiveReference, conn: LiveConnection, live: LiveEnvironment) -> str | None:
    """Why the planner would reject binding ``ref`` to ``conn`` (its checks: same connector, status
    Connected, usable by the identity that writes; see planner module docstring), or None."""
    if connector_name(conn.connector) != connector_name(ref.connector):
        return f"the connection is for {connector_name(conn.connector)}"
    if not is_connected(conn):
        return f"the connection's status is {conn.status or 'unknown'}"
    writer = live.writer or live.caller
    if writer is None:
        return "the identity that writes is unknown"
    if not conn.usable_by(writer.object_id):
        return f"the connection is not shared with {writer.describe()}, which writes bindings"
    return None


def _kept_bindings(existing: _Existing | None, env_name: str, live: LiveEnvironment,
                   refs: Mapping[str, LiveReference]) -> tuple[dict[str, list[str]], list[Parked]]:
    """Existing binding entries to keep: (those of live references that still resolve to the connection
    the reference has now, verbatim, keyed by lower-cased name; (key, YAML) of those to park)."""
    if existing is None:
        return {}, []
    envs = find_entry(existing.root, "environments")
    if envs is None:
        return {}, []
    env_entries = mapping_entries(existing.lines, envs.value, envs.key_line + 1, envs.end) or []
    env = find_entry(env_entries, env_name)
    if env is None:
        return {}, []
    children = mapping_entries(existing.lines, env.value, env.key_line + 1, env.end) or []
    b = find_entry(children, "bindings")
    if b is None:
        return {}, []
    entries = mapping_entries(existing.lines, b.value, b.key_line + 1, b.end) or []
    data = _env_data(existing, env_name).get("bindings")
    data = data if isinstance(data, Mapping) else {}
    same: dict[str, list[str]] = {}
    absent: list[Parked] = list(parked_groups(existing.lines[b.key_line + 1:b.end]))
    for e in entries:
        text = strip_generated(existing.lines[e.start:e.end])
        ref = refs.get(e.key.lower())
        if ref is None:
            absent.append((e.key, park_block(existing.lines[e.start:e.end], e.column)))
            continue
        binding = _selector_from(data.get(e.key))
        if binding is None or not ref.connection:
            continue
        try:
            conn = resolve_binding(binding, ref.connector, live)
        except PlanError:
            continue
        if conn.name.lower() == ref.connection.lower():
            same[e.key.lower()] = text
    return same, absent


def _reindent(block: list[str], from_col: int, to: str) -> list[str]:
    out = []
    for line in block:
        if not line.strip():
            out.append("")
            continue
        stripped = line[from_col:] if line[:from_col].strip() == "" else line.lstrip()
        out.append(to + stripped)
    return out


# --------------------------------------------------------------------------- the service_account line

# When the environment has a service account but references are owned by others, import writes the
# service_account line commented out after a note starting with this, so plan right after import has
# no changes (with the line, plan makes the service account the owner of each reference).
_SA_NOTE = "service_account commented out by import: "
# The line after the note: as import wrote it, or uncommented by hand with the note left above it.
_SA_LINE = re.compile(r"^(\s*)(?:#\s?)?service_account:\s*(\S.*?)\s*$")


def _restore_service_account(existing: _Existing, env_name: str) -> _Existing:
    """``existing`` with the service_account line an earlier import commented out in ``env_name``'s
    section active again (its note dropped), so this import decides afresh and, facing the same
    environment, writes the same text."""
    envs = find_entry(existing.root, "environments")
    env_entries = mapping_entries(existing.lines, envs.value, envs.key_line + 1, envs.end) if envs else None
    env = find_entry(env_entries or [], env_name)
    if env is None:
        return existing
    lines = existing.lines
    for i in range(env.key_line + 1, env.end):
        if not lines[i].strip().startswith("# " + _SA_NOTE):
            continue
        j = i + 1
        while j < env.end and lines[j].strip().startswith("#   "):
            j += 1
        m = _SA_LINE.match(lines[j]) if j < env.end else None
        if m is None:
            return existing
        restored = _parse_existing("\n".join([*lines[:i], f"{m.group(1)}service_account: {m.group(2)}",
                                              *lines[j + 1:]]) + "\n")
        return restored if restored is not None and isinstance(
            _env_data(restored, env_name).get("service_account"), str) else existing
    return existing


def _service_account_user(live: LiveEnvironment, service_account: str) -> LiveUser | None:
    """The Dataverse user of the service account (the live reader matches it by ``domainname``)."""
    want = service_account.lower()
    if live.writer is not None and (live.writer.upn or "").lower() == want:
        return live.writer
    return next((u for u in live.users if (u.upn or "").lower() == want), None)


def _foreign_owners(refs: Sequence[LiveReference], live: LiveEnvironment,
                    sa_user: LiveUser | None, service_account: str) -> dict[str, str]:
    """Reference id -> its owner, for the references the service account does not own (the ones plan
    would give to it: planner compares ``_ownerid_value`` with the writer's ``systemuserid``)."""
    out: dict[str, str] = {}
    for r in refs:
        owner = live.user(r.owner_id)
        if sa_user is not None:
            if (r.owner_id or "").lower() == sa_user.systemuserid.lower():
                continue
        elif owner is not None and (owner.upn or "").lower() == service_account.lower():
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
    note = (f"{_SA_NOTE}{are} owned by {owners} today. Uncomment it to have plan make "
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
    existing = _parse_existing(existing_config_text)
    if existing is not None:
        existing = _restore_service_account(existing, env_name)
    env_data = _env_data(existing, env_name)
    if service_account is None and isinstance(env_data.get("service_account"), str):
        service_account = env_data["service_account"]
    naming = existing.data.get("naming") if existing else None
    template: NamingTemplate | None = None
    if isinstance(naming, str) and naming:
        try:
            template = NamingTemplate(naming)
        except ValueError:
            template = None  # lint reports CR100; import still works

    unit = indent_unit(existing.lines, existing.root) if existing else "  "
    refs = sorted((r for r in live.references if r.in_solution), key=lambda r: (r.logical_name.lower(), r.id))
    outside = sorted((r for r in live.references if not r.in_solution), key=lambda r: r.logical_name.lower())
    by_key = {r.logical_name.lower(): r for r in refs}
    duplicates = _duplicate_groups(refs)

    # service_account: kept only when the service account owns every reference already, so that plan
    # right after import has no changes; else written commented out, and everything below is judged
    # with the caller writing, as plan will then (live reader: no service account -> writer = caller).
    foreign: dict[str, str] = {}
    sa_lines: list[str] | None = None
    if service_account:
        sa_user = _service_account_user(live, service_account)
        foreign = _foreign_owners(refs, live, sa_user, service_account)
        sa_lines = _service_account_lines(service_account, foreign, unit * 2)
        if foreign:
            live = dataclasses.replace(live, writer=live.caller)
        else:
            if sa_user is not None and live.writer != sa_user:
                live = dataclasses.replace(live, writer=sa_user)
            old_sa = env_data.get("service_account")
            if isinstance(old_sa, str) and old_sa.lower() == service_account.lower():
                sa_lines = None  # the line stays as the user wrote it
    active_sa = service_account if not foreign else None

    # references:
    ref_lines = ["references:"]
    if not refs:
        ref_lines += comment_lines(f"solution {solution} has no connection references in {env_name}", unit)
    for r in refs:
        notes = _reference_comments(r, live, duplicates, template, solution, service_account, foreign)
        ref_lines += _reference_lines(r, unit, unit, notes)
    # References the old config declared and the environment lacks are parked, not declared: plan
    # would create them, and import promises a config that plans no changes.
    parked: dict[str, Parked] = {}
    newly_parked: set[str] = set()
    if existing is not None:
        old = find_entry(existing.root, "references")
        if old is not None:
            for key, content in parked_groups(existing.lines[old.key_line + 1:old.end]):
                parked[key.lower()] = (key, content)
            for e in mapping_entries(existing.lines, old.value, old.key_line + 1, old.end) or []:
                if e.key.lower() not in by_key:
                    parked[e.key.lower()] = (e.key, park_block(existing.lines[e.start:e.end], e.column))
                    newly_parked.add(e.key.lower())
    for low in sorted(parked):
        key, content = parked[low]
        if low in by_key:
            continue  # it exists now: declared above from what the environment has
        ref_lines += parked_lines(key, content, unit, (
            f"parked: {key} is not in solution {solution} in {env_name}, so declaring it would make plan "
            f"create it there. Remove the '{PARK_MARK.strip()}' marks here and on its bindings to declare "
            "it again."
        ))
    if outside:
        ref_lines += comment_lines(f"Also in {env_name} but not in solution {solution} (not imported):", unit)
        for r in outside:
            ref_lines += comment_lines(f"  {r.logical_name} ({connector_name(r.connector)}, "
                                  f"{r.display_name or 'no display name'})", unit)
    if not any(line.strip() and not is_comment_line(line) for line in ref_lines[1:]):
        ref_lines[0] = "references: {}"

    # environments.<env>.bindings:
    same, absent = _kept_bindings(existing, env_name, live, by_key)
    b_indent = unit * 3
    binding_lines = [f"{unit * 2}bindings:"]
    if not active_sa:
        binding_lines += comment_lines("no service_account for this environment: bindings to personal "
                                  "connections are not flagged (see lint code CR200)", b_indent)
    for r in refs:
        binding_lines += _binding_lines(r, live, env_name, active_sa, b_indent, same, service_account)
    for key, content in sorted(absent, key=lambda kc: kc[0].lower()):
        if key.lower() not in by_key:
            binding_lines += parked_lines(key, content, b_indent, None)
    if all(is_comment_line(line) or not line.strip() for line in binding_lines[1:]):
        # Only comments under the key would load as null: an empty mapping keeps the type right.
        binding_lines[0] = f"{unit * 2}bindings: {{}}"

    url_line = f"{unit * 2}url: {yaml_scalar(env_url)}"
    id_line = f"{unit * 2}environment_id: {yaml_scalar(environment_id)}" if environment_id else None

    if existing is None:
        out = [
            f"# connref config imported from environment {env_name} (solution {solution}).",
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
    return _merge_import(existing, env_name, solution, unit, ref_lines, url_line, id_line, binding_lines,
                         newly_parked, sa_lines)


def _merge_import(existing: _Existing, env_name: str, solution: str, unit: str, ref_lines: list[str],
                  url_line: str, id_line: str | None, binding_lines: list[str], parked: set[str],
                  sa_lines: list[str] | None = None) -> str:
    lines = existing.lines
    edits: list[tuple[int, int, list[str]]] = []
    root = existing.root

    def replace_top(key: str, new: list[str]) -> bool:
        e = find_entry(root, key)
        if e is None:
            return False
        # keep the comments above the key, replace the key and its value
        edits.append((e.key_line, e.end, new))
        return True

    head: list[str] = []
    if not replace_top("version", ["version: 1"]):
        head.append("version: 1")
    if not replace_top("solution", [f"solution: {yaml_scalar(solution)}"]):
        head.append(f"solution: {yaml_scalar(solution)}")
    tail: list[str] = []
    if not replace_top("references", ref_lines):
        tail += ref_lines

    env_block = [f"{unit}{yaml_key(env_name)}:", url_line, *([id_line] if id_line else []), *(sa_lines or []),
                 *binding_lines]
    envs = find_entry(root, "environments")
    env_entries = mapping_entries(lines, envs.value, envs.key_line + 1, envs.end) if envs else None
    if envs is None:
        tail += ["environments:", *env_block]
    elif env_entries is None:
        # Flow style or empty: write the section fresh (with the other environments as data).
        data = existing.data.get("environments")
        others = {k: v for k, v in (data.items() if isinstance(data, Mapping) else []) if k != env_name}
        fresh = ["environments:"]
        if others:
            dumped = yaml.safe_dump(others, default_flow_style=False, sort_keys=False, allow_unicode=True)
            fresh += [unit + line for line in dumped.splitlines()]
        fresh += env_block
        edits.append((envs.key_line, envs.end, fresh))
    else:
        env = find_entry(env_entries, env_name)
        if env is None:
            last = env_entries[-1] if env_entries else None
            at = last.end if last else envs.key_line + 1
            edits.append((at, at, env_block))
        else:
            edits += _env_edits(lines, env, url_line, id_line, binding_lines, unit, sa_lines)
        for other in env_entries:
            if other.key != env_name:
                edits += _park_bindings(lines, other, parked)

    out = splice_lines(lines, edits)
    if head:
        # after the leading comments of the file
        i = 0
        while i < len(out) and (is_comment_line(out[i]) or out[i].strip() == "---"):
            i += 1
        out[i:i] = head
    if tail:
        if out and out[-1].strip():
            out.append("")
        out += tail
    return "\n".join(out).rstrip("\n") + "\n"


def _park_bindings(lines: Sequence[str], env: Entry, parked: set[str]) -> list[tuple[int, int, list[str]]]:
    """Edits that park another environment's bindings to references import parked, so the config
    stays valid (a binding must name a declared reference)."""
    if not parked:
        return []
    children = mapping_entries(lines, env.value, env.key_line + 1, env.end) or []
    b = find_entry(children, "bindings")
    if b is None:
        return []
    edits = []
    for e in mapping_entries(lines, b.value, b.key_line + 1, b.end) or []:
        if e.key.lower() in parked:
            indent = " " * e.column
            edits.append((e.key_line, e.end, parked_lines(e.key, park_block(lines[e.key_line:e.end], e.column),
                                                           indent, None)))
    return edits


def _env_edits(lines: Sequence[str], env: Entry, url_line: str, id_line: str | None,
               binding_lines: list[str], unit: str,
               sa_lines: list[str] | None = None) -> list[tuple[int, int, list[str]]]:
    """Edits of one environment's section: its url, environment_id and bindings replaced, and its
    service_account line replaced by ``sa_lines`` (inserted before the bindings when missing; left
    alone when ``sa_lines`` is None)."""
    children = mapping_entries(lines, env.value, env.key_line + 1, env.end)
    if children is None or not children:
        return [(env.key_line, env.end, [f"{' ' * env.column}{yaml_key(env.key)}:", url_line,
                                          *([id_line] if id_line else []), *(sa_lines or []), *binding_lines])]
    col = children[0].column
    ind = " " * col

    def at_col(line: str) -> str:
        return ind + line.lstrip(" ")

    def nested(block: list[str]) -> list[str]:
        # binding_lines were written for env entries at 2 units; shift to this file's column
        return _reindent(block, len(unit) * 2, ind)

    edits: list[tuple[int, int, list[str]]] = []
    url = find_entry(children, "url")
    eid = find_entry(children, "environment_id")
    b = find_entry(children, "bindings")
    if url is not None:
        edits.append((url.key_line, url.end, [at_col(url_line)]))
    if eid is not None:
        keep = [at_col(id_line)] if id_line else list(lines[eid.key_line:eid.end])
        edits.append((eid.key_line, eid.end, keep))
    insert: list[str] = []
    if url is None:
        insert.append(at_col(url_line))
    if eid is None and id_line:
        insert.append(at_col(id_line))
    if insert:
        at = url.end if url is not None else children[0].start
        edits.append((at, at, insert))
    sa = find_entry(children, "service_account")
    sa_new = nested(sa_lines) if sa_lines is not None else []
    if sa is not None and sa_lines is not None:
        edits.append((sa.key_line, sa.end, sa_new))
        sa_new = []
    if b is not None:
        if sa_new:
            edits.append((b.start, b.start, sa_new))
        edits.append((b.key_line, b.end, nested(binding_lines)))
    else:
        end = children[-1].end
        edits.append((end, end, sa_new + nested(binding_lines)))
    return edits


# --------------------------------------------------------------------------- deployment settings -> bindings


def bindings_from_settings(settings_json: Mapping[str, Any], *, source: str = "<settings>") -> dict[str, str]:
    """``{logical name: connection name}`` from parsed deployment settings JSON, in logical-name
    order. Keys are read case-insensitively (as the Terraform provider reads the file); entries with
    an empty ``ConnectionId`` (the "fill in later" of ``pac solution create-settings``) are left out.
    ``ConfigError`` naming ``source`` and the entry for bad input."""
    parsed = parse_settings(settings_json, source)
    pairs = [(r.logical_name, r.connection_id) for r in parsed.connection_references if r.connection_id]
    return {name: conn for name, conn in sorted(pairs, key=lambda p: p[0].lower()) if conn}


@dataclass
class MergeResult:
    """The new config text and what happened, one line per change, for the CLI to print."""

    text: str
    notes: list[str] = field(default_factory=list)
    rewritten: bool = False


def merge_bindings(
    config_text: str,
    env_name: str,
    bindings: Mapping[str, str],
    *,
    path: str = "connref.yaml",
) -> MergeResult:
    """``config_text`` with ``bindings`` set under ``environments.<env_name>.bindings``.

    Existing bindings for the same logical names (compared case-insensitively) are replaced, other
    bindings are kept, new ones are appended; comments on the lines that did not change stay. A
    logical name not declared under ``references`` is skipped with a note (the loader would reject a
    binding for it). When the file is not in block style, the whole file is written fresh from its
    data (comments lost) and ``rewritten`` says so. ``ConfigError`` when the environment is not in
    the config or the text is not a config.
    """
    try:
        node = yaml.compose(config_text)
        data = yaml.safe_load(config_text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: not a connref config (the top level must be a mapping)")
    envs_data = data.get("environments")
    if not isinstance(envs_data, Mapping) or not isinstance(envs_data.get(env_name), Mapping):
        raise ConfigError(f"{path}: environment {env_name!r} is not in the config; add it (url, auth) first")
    declared_data = data.get("references")
    declared = {str(k).lower(): str(k) for k in (declared_data if isinstance(declared_data, Mapping) else {})}
    current = envs_data[env_name].get("bindings")
    current = current if isinstance(current, Mapping) else {}
    current_keys = {str(k).lower(): str(k) for k in current}

    notes: list[str] = []
    wanted: dict[str, str] = {}  # declared spelling -> connection
    for name in sorted(bindings, key=str.lower):
        conn = bindings[name]
        spelled = declared.get(name.lower())
        if spelled is None:
            notes.append(f"skipped {name}: not declared under references in {path}")
            continue
        old_key = current_keys.get(name.lower())
        old = current.get(old_key) if old_key is not None else None
        if old_key is not None and not isinstance(old, Mapping) and str(old).lower() == conn.lower():
            continue
        old_text = _describe_binding(old) if old_key is not None else None
        notes.append(
            f"{spelled}: {old_text} -> {conn}" if old_text is not None else f"{spelled}: bound to {conn}"
        )
        wanted[spelled] = conn
    if not wanted:
        return MergeResult(config_text, notes or [f"bindings of {env_name} already match"])

    lines = config_text.splitlines()
    root = mapping_entries(lines, node, 0, len(lines)) if node is not None else None
    envs = find_entry(root or [], "environments")
    env_entries = mapping_entries(lines, envs.value, envs.key_line + 1, envs.end) if envs else None
    env = find_entry(env_entries or [], env_name)
    children = mapping_entries(lines, env.value, env.key_line + 1, env.end) if env else None
    if root is None or env is None or not children:
        return _rewrite(data, env_name, wanted, notes, path)
    b = find_entry(children, "bindings")
    ind = " " * children[0].column
    unit = " " * max(children[0].column - env.column, 1)
    edits: list[tuple[int, int, list[str]]] = []
    if b is None:
        new = [f"{ind}bindings:", *(f"{ind}{unit}{yaml_key(k)}: {yaml_scalar(v)}" for k, v in wanted.items())]
        edits.append((children[-1].end, children[-1].end, new))
    else:
        entries = mapping_entries(lines, b.value, b.key_line + 1, b.end)
        if entries is None:
            if isinstance(b.value, yaml.MappingNode) and not b.value.value:
                entries = []  # "bindings: {}": write a block mapping instead
            else:
                return _rewrite(data, env_name, wanted, notes, path)
        bind = " " * entries[0].column if entries else ind + unit
        appended: list[str] = []
        for k, v in wanted.items():
            hit = find_entry(entries, k, fold=True)
            line = f"{bind}{yaml_key(k)}: {yaml_scalar(v)}"
            if hit is not None:
                edits.append((hit.key_line, hit.end, [line]))
            else:
                appended.append(line)
        if not entries:
            edits.append((b.key_line, b.end, [f"{ind}bindings:", *appended]))
        elif appended:
            end = entries[-1].end
            edits.append((end, end, appended))
    text = "\n".join(splice_lines(lines, edits)).rstrip("\n") + "\n"
    return MergeResult(text, notes)


def _describe_binding(value: Any) -> str:
    sel = _selector_from(value)
    if isinstance(sel, Selector):
        return sel.describe()
    return str(value)


def _rewrite(data: Mapping[str, Any], env_name: str, wanted: Mapping[str, str], notes: list[str],
             path: str) -> MergeResult:
    new = dict(data)
    envs = dict(new["environments"])
    env = dict(envs[env_name])
    bindings = dict(env.get("bindings") or {})
    for k, v in wanted.items():
        for old in [x for x in bindings if str(x).lower() == k.lower()]:
            del bindings[old]
        bindings[k] = v
    env["bindings"] = dict(sorted(bindings.items(), key=lambda kv: str(kv[0]).lower()))
    envs[env_name] = env
    new["environments"] = envs
    text = yaml.safe_dump(new, default_flow_style=False, sort_keys=False, allow_unicode=True)
    notes.append(f"{path} is not in plain block style here: wrote the whole file fresh, without its comments")
    return MergeResult(text, notes, rewritten=True)


__all__ = [
    "MergeResult",
    "bindings_from_settings",
    "import_environment",
    "merge_bindings",
]

