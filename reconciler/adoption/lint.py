"""Lint: what to tidy in a config and, given live environments, in what those environments have.

``lint(config, lives)`` returns findings, each a ``Problem`` of the rules layer with a stable code (``RULES``
lists lint's; docs/adoption.md explains each), a fixed severity and a fix. It is pure: the caller reads the
environments. Whether a binding resolves, a connection is fit and who owns or may use it are the rules
layer's verdicts (``reconciler.domain.rules``), so lint and plan never disagree about a binding.

What it looks for, and why it matters:
- display names that break the team's naming template (``config.naming``), and the random five-hex
  suffixes the maker portal appends (``crdcb_sharedcommondataserviceforapps_109ea``, docs/dataverse.md §1.8);
- several references for one connector in a solution: each maker who edits a flow adds their own,
  so the same connector ends up bound to several people's connections;
- references bound to a connection owned by a person rather than the service account: automated
  flows run as the owner of the bound connections (docs/dataverse.md §5.4);
- unbound references and references bound to connections that are missing, of another connector or
  not ``Connected`` (docs/dataverse.md §4.4): flows using them fail or cannot be turned on;
- bindings in the config to a connection the identity that writes may not use: plan would refuse them;
- references no flow uses, and references whose flows sit in more than one solution.

Severity rules: ``error`` for what breaks flows or the team's declared policy (exit 2), ``warning``
for what works today but is the mess adoption cleans up, ``info`` for context that needs no action.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.domain import consolidation, rules
from reconciler.domain.model import (
    Config,
    DesiredReference,
    EnvironmentConfig,
    LiveConnection,
    LiveEnvironment,
    LiveFlow,
    LiveReference,
    connector_name,
)
from reconciler.domain.naming import PLACEHOLDERS, NamingTemplate, connector_display_name, random_suffix
from reconciler.domain.rules import Code, Problem
from reconciler.domain.text import inert

SEVERITIES = rules.SEVERITIES
ERROR, WARNING, INFO = rules.ERROR, rules.WARNING, rules.INFO

#: The codes lint reports (their names, severities and meanings are the rules layer's ``CODES``).
RULES: Mapping[str, Code] = {
    code: c for code, c in rules.CODES.items()
    if code in {"CR100", "CR101", "CR102", "CR103", "CR104", *(f"CR2{n:02d}" for n in range(11))}
}

#: A lint finding is a ``Problem``: code, severity, message, fix, and where (environment, subject).
Finding = Problem

# Solutions every component also belongs to; they say nothing about which team owns a flow.
_SYSTEM_SOLUTIONS = frozenset({"default", "active", "basic"})


def _finding(code: str, environment: str | None, subject: str, message: str, fix: str) -> Finding:
    return rules.problem(code, message, fix, environment=environment, subject=subject)


# --------------------------------------------------------------------- connection checks (shared with import)


def connection_findings(
    env_name: str,
    logical_name: str,
    connector: str,
    connection: LiveConnection,
    live: LiveEnvironment,
    service_account: str | None,
) -> list[Finding]:
    """Findings about the connection a reference is (or will be) bound to: connector (CR205) and status
    (CR203) as the rules layer judges them, and its owner (CR201)."""
    out = rules.connection_problems(connection, connector, live, subject=logical_name)
    if service_account and not rules.is_owner(service_account, connection, live):
        owner = rules.owner_label(connection, live) or "unknown owner"
        user = rules.resolve_principal(service_account, live.users)
        how = rules.access(connection, user, live).how if user is not None else rules.NO_ACCESS
        if how in (rules.GROUP_UNVERIFIED, rules.UNVERIFIED):
            # Not known either way (CR213 / CR214 say why): claiming no access would contradict whoami.
            shared = ("whether the service account may use it could not be checked, and flows run with the "
                      "owner's credentials")
        elif how != rules.NO_ACCESS:
            shared = "it is shared with the service account, but flows run with the owner's credentials"
        else:
            shared = "the service account cannot even use it"
        out.append(_finding(
            "CR201", env_name, logical_name,
            f"bound to {rules.describe_connection(connection, live)}, owned by {owner}, not by the service "
            f"account {service_account}; {shared}",
            f"bind it to a connection owned by {service_account} (binding: {{owner: {service_account}}})",
        ))
    return out


# --------------------------------------------------------------------------- flows


def flows_using(live: LiveEnvironment, logical_name: str) -> list[LiveFlow]:
    """The flows that use a reference (the rules layer's answer, ``consolidation.flows_using``)."""
    return consolidation.flows_using(live, logical_name)


def solutions_of(flows: Iterable[LiveFlow]) -> list[str]:
    """The solutions the flows belong to, without the system ones every component is in."""
    found = {s for f in flows for s in f.solutions if s.lower() not in _SYSTEM_SOLUTIONS}
    return sorted(found, key=str.lower)


def _flow_list(flows: Sequence[LiveFlow]) -> str:
    return ", ".join(f.name for f in flows) if flows else "no flow"


# --------------------------------------------------------------------------- the lint


@dataclass(frozen=True)
class _Ref:
    """A reference as lint sees it in one scope: declared, live, or both."""

    logical_name: str
    connector: str
    display_name: str | None
    declared: DesiredReference | None
    live: LiveReference | None


def _per_developer(finding: Finding, policy: str) -> Finding | None:
    """A per-developer finding (CR102 on a logical name, CR103) as the team's policy reports it: at the
    policy's severity, or not at all when the policy allows them (``consolidation.per_developer_severity``)."""
    severity = consolidation.per_developer_severity(policy)
    return None if severity is None else dataclasses.replace(finding, severity=severity)


def _names_findings(refs: Iterable[_Ref], env_name: str | None, config: Config,
                    template: NamingTemplate | None) -> list[Finding]:
    out: list[Finding] = []
    for ref in refs:
        parts = []
        for what, name in (("logical name", ref.logical_name), ("display name", ref.display_name)):
            suffix = random_suffix(name)
            if suffix:
                parts.append((what, name, suffix))
        logical = bool(parts) and parts[0][0] == "logical name"
        if logical and consolidation.per_developer_severity(config.per_developer_policy) is None:
            parts = parts[1:]  # the policy allows per-developer logical names; a display name is still tidied
            logical = False
        if parts:
            said = " and ".join(f"{what} {name!r} ends with {suffix!r}" for what, name, suffix in parts)
            keeps = ref.declared is not None and bool(ref.declared.replaces)
            if not logical:
                fix = "rename the display name without the suffix"
            elif keeps:
                # Already the reference the others are consolidated onto: listing it under another's
                # replaces: would undo that.
                fix = ("nothing needed: it is the reference the others are consolidated onto (its replaces:); "
                       "logical names cannot change, so for a name without the suffix declare a new reference "
                       "and list this one under its replaces:")
            else:
                fix = ("consolidate the flows onto one well-named reference per connector: list this one under "
                       "the kept reference's replaces: (logical names cannot change)")
            finding = _finding("CR102", env_name, ref.logical_name,
                               f"{said}: the random suffix the maker portal adds to each maker's reference", fix)
            kept = _per_developer(finding, config.per_developer_policy) if logical else finding
            out.extend([kept] if kept is not None else [])
        if template is not None and ref.display_name is not None:
            hint = template.check(ref.display_name, ref.logical_name, ref.connector, config.solution)
            if hint is not None:
                out.append(_finding(
                    "CR101", env_name, ref.logical_name,
                    f"display name {ref.display_name!r} does not follow the naming template "
                    f"{template.template!r}",
                    hint,
                ))
    return out


def _duplicate_findings(refs: Sequence[_Ref], env_name: str | None, config: Config,
                        live: LiveEnvironment | None) -> list[Finding]:
    solution = config.solution
    groups: dict[str, list[_Ref]] = {}
    for ref in refs:
        if config.replaced_by(ref.logical_name) is not None:
            continue  # being consolidated: CR104 says so
        groups.setdefault(connector_name(ref.connector), []).append(ref)
    out: list[Finding] = []
    for connector, group in sorted(groups.items()):
        if len(group) < 2:
            continue
        names = sorted((r.logical_name for r in group), key=str.lower)
        if live is not None:
            usage = "; ".join(f"{n}: {_flow_list(flows_using(live, n))}" for n in names)
            detail = f"flows using each: {usage}"
        else:
            detail = "references: " + ", ".join(names)
        for ref in sorted(group, key=lambda r: r.logical_name.lower()):
            finding = _per_developer(_finding(
                "CR103", env_name, ref.logical_name,
                f"one of {len(group)} references for {connector_display_name(connector)} ({connector}) "
                f"in solution {solution}; {detail}",
                "keep one reference per connector (e.g. the best-named one) and list the others under its "
                "replaces: (connref import suggests it); apply then moves their flows onto it and deletes them. "
                "If one reference per developer is your team's pattern, set lint: per_developer_references: "
                "allow",
            ), config.per_developer_policy)
            out.extend([finding] if finding is not None else [])
    return out


def _replaced_findings(refs: Sequence[_Ref], env_name: str, config: Config,
                       live: LiveEnvironment) -> list[Finding]:
    """CR104: references the config replaces that the environment still has, and what becomes of them."""
    out: list[Finding] = []
    managed = bool(live.solution and live.solution.managed)
    for ref in refs:
        kept = config.replaced_by(ref.logical_name)
        if kept is None or ref.live is None:
            continue
        flows = flows_using(live, ref.logical_name)
        if managed:
            fix = (f"remove it from {config.solution} in development; the next import of the managed solution "
                   "removes it here (connref does not consolidate a managed environment)")
        else:
            fix = f"run connref apply -e {env_name}: it moves the flows onto {kept.logical_name} and deletes it"
        out.append(_finding(
            "CR104", env_name, ref.logical_name,
            f"replaced by {kept.logical_name} in the config, still in {env_name} (used by: {_flow_list(flows)})",
            fix,
        ))
    return out


def _compile_template(config: Config) -> tuple[NamingTemplate | None, list[Finding]]:
    if not config.naming:
        return None, []
    try:
        return NamingTemplate(config.naming), []
    except ValueError as e:
        known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
        return None, [_finding("CR100", None, "naming", str(e), f"use only the placeholders {known}")]


def _declared_refs(config: Config) -> list[_Ref]:
    return [
        _Ref(name, ref.connector, ref.display_name, ref, None)
        for name, ref in sorted(config.references.items(), key=lambda kv: kv[0].lower())
    ]


def _env_refs(config: Config, live: LiveEnvironment) -> tuple[list[_Ref], list[_Ref]]:
    """(all references in scope for the environment, those not declared in the config)."""
    in_solution = {r.logical_name.lower(): r for r in live.references if r.in_solution}
    both: list[_Ref] = []
    undeclared: list[_Ref] = []
    declared_keys = set()
    for name, ref in config.references.items():
        declared_keys.add(name.lower())
        both.append(_Ref(name, ref.connector, ref.display_name, ref, in_solution.get(name.lower())))
    for key, lref in in_solution.items():
        if key not in declared_keys:
            r = _Ref(lref.logical_name, lref.connector, lref.display_name, None, lref)
            both.append(r)
            undeclared.append(r)
    both.sort(key=lambda r: r.logical_name.lower())
    undeclared.sort(key=lambda r: r.logical_name.lower())
    return both, undeclared


def _env_binding_findings(config: Config, env_name: str, env: EnvironmentConfig | None,
                          refs: Sequence[_Ref], live: LiveEnvironment) -> list[Finding]:
    out: list[Finding] = []
    service_account = env.service_account if env is not None else None
    if not service_account:
        out.append(_finding(
            "CR200", env_name, env_name,
            f"environment {env_name} has no service_account in the config, so references bound to "
            "personal connections (CR201) are not reported",
            "set service_account: under the environment (the UPN or object id of the account that should "
            "own the connections)",
        ))
    bindings = rules.BindingIndex.of(env)
    writer = rules.writer(service_account, live)
    for ref in refs:
        if not ref.declared and config.replaced_by(ref.logical_name) is not None:
            # Being consolidated: CR104 says what becomes of it. Its binding is not the config's to fix (the
            # config may not bind a name it replaces), so no CR201/CR202 advice that could not be followed.
            continue
        binding = bindings.get(ref.logical_name) if ref.declared else None
        connection: LiveConnection | None = None
        if binding is not None:
            found = rules.find_connection(binding, ref.connector, live, subject=ref.logical_name)
            if found.connection is None:
                out.extend(found.problems)  # CR204, CR206
                continue
            connection = found.connection
        elif ref.live is not None and ref.live.connection:
            connection = live.connection(ref.live.connection)
            if connection is None:
                out.append(rules.not_found(ref.live.connection, live, subject=ref.logical_name))
                continue
        if connection is None:
            where = "in the config or " if ref.declared else ""
            users = _flow_list(flows_using(live, ref.logical_name)) if ref.live is not None else "no flow yet"
            out.append(_finding(
                "CR202", env_name, ref.logical_name,
                f"not bound to any connection {where}in {env_name} (used by: {users})",
                f"add a binding under environments.{env_name}.bindings, e.g. "
                f"{{owner: {service_account or 'the service account'}}}",
            ))
            continue
        out.extend(
            connection_findings(env_name, ref.logical_name, ref.connector, connection, live, service_account)
        )
        if binding is not None:
            # Plan refuses a binding the identity that writes may not use: say so before plan does.
            access = rules.access_problem(connection, writer, live, service_account=service_account,
                                          subject=ref.logical_name)
            out.extend([access] if access is not None else [])
            out.extend(_pending_fix(env_name, ref, connection, live, service_account))
    return out


def _pending_fix(env_name: str, ref: _Ref, target: LiveConnection, live: LiveEnvironment,
                 service_account: str | None) -> list[Finding]:
    """What is wrong with the connection a reference has now when the config binds it elsewhere:
    context (info), since ``apply`` replaces it."""
    current = ref.live.connection if ref.live is not None else None
    if not current or rules.same("connection", current, target.name):
        return []
    conn = live.connection(current)
    if conn is None:
        found = [rules.not_found(current, live, subject=ref.logical_name)]
    else:
        found = connection_findings(env_name, ref.logical_name, ref.connector, conn, live, service_account)
    if not found:
        return []
    problems = "; ".join(f"{f.code} {f.name}" for f in found)
    now = rules.describe_connection(conn, live) if conn is not None else current
    return [_finding(
        "CR209", env_name, ref.logical_name,
        f"now bound to {now} ({problems}); the config binds it to {rules.describe_connection(target, live)}",
        f"run connref apply -e {env_name} to rebind it",
    )]


def _usage_findings(env_name: str, refs: Sequence[_Ref], live: LiveEnvironment) -> list[Finding]:
    out: list[Finding] = []
    for ref in refs:
        if ref.live is None:
            continue  # not there yet: plan creates it, and no flow can use it before then
        flows = flows_using(live, ref.logical_name)
        if not flows:
            out.append(_finding(
                "CR207", env_name, ref.logical_name,
                f"no flow in {env_name} uses it",
                "remove it from the config and the solution if nothing will use it (connref does not "
                "delete references unless prune is on)",
            ))
            continue
        sols = solutions_of(flows)
        if len(sols) > 1:
            out.append(_finding(
                "CR208", env_name, ref.logical_name,
                f"used by flows of {len(sols)} solutions ({', '.join(sols)}): {_flow_list(flows)}",
                "keep the reference in one common solution deployed before the solutions whose flows use it",
            ))
    return out


def _ignored(finding: Finding, ignore: Iterable[str]) -> bool:
    """An ignore entry is a code (``CR102``) or a rule name (``random-suffix``), without case."""
    wanted = {entry.strip().lower() for entry in ignore}
    return finding.code.lower() in wanted or finding.name.lower() in wanted


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Config findings first, then by environment, severity, subject and code: stable output to diff."""
    return rules.sort_problems(findings)


def lint(config: Config, lives: Mapping[str, LiveEnvironment] | None = None) -> list[Finding]:
    """Lint ``config`` and, when given, the live environments (keyed by environment name).

    Without ``lives`` only the config is checked: names and duplicate connectors among the declared
    references. A reference an environment's ``bindings`` leave out is not a finding then: the config
    may leave it out to keep whatever it has live (docs/config.md, "bindings"), and only the
    environment can tell whether that is a connection (CR202 with ``lives``). With ``lives`` each
    environment is checked too: its references in the solution (declared or not), the connection
    each is or will be bound to, and which flows use them. Codes in ``config.lint_ignore`` are dropped.
    """
    template, findings = _compile_template(config)
    declared = _declared_refs(config)
    findings += _names_findings(declared, None, config, template)
    if lives is None:
        findings += _duplicate_findings(declared, None, config, None)
    else:
        for env_name, live in sorted(lives.items()):
            env_config = config.environments.get(env_name)
            refs, undeclared = _env_refs(config, live)
            replaced = [r for r in undeclared if config.replaced_by(r.logical_name) is not None]
            findings += _names_findings([r for r in undeclared if r not in replaced], env_name, config, template)
            findings += _duplicate_findings(refs, env_name, config, live)
            findings += _replaced_findings(replaced, env_name, config, live)
            findings += _env_binding_findings(config, env_name, env_config, refs, live)
            findings += _usage_findings(env_name, refs, live)
    kept = [f for f in findings if not _ignored(f, config.lint_ignore)]
    return sort_findings(kept)


# --------------------------------------------------------------------------- output and exit code


def exit_code(findings: Iterable[Finding]) -> int:
    """The CLI's exit code for a lint that ran: 2 when any finding is an error, else 0. (Errors that
    stop lint from running are ``ConnrefError``s: exit 1, mapped by the CLI.)"""
    return 2 if any(f.severity == ERROR for f in findings) else 0


def summary_counts(findings: Iterable[Finding]) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for f in findings:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    return counts


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 or word == "info" else f"{n} {word}s"


def render_findings_text(findings: Sequence[Finding]) -> str:
    """One block per finding (severity, code, where, message, then the fix), and a summary line."""
    if not findings:
        return "No findings.\n"
    lines: list[str] = []
    for f in findings:
        # Subjects, messages and fixes quote live names: shown inert (reconciler.domain.text).
        where = f"{inert(f.environment)}: " if f.environment else "config: "
        lines.append(f"{f.severity:<7} {f.code} {f.name}  {where}{inert(f.subject)}")
        lines.append(f"        {inert(f.message)}")
        lines.append(f"        fix: {inert(f.fix)}")
    counts = summary_counts(findings)
    lines.append("")
    lines.append(
        f"{_plural(len(findings), 'finding')}: "
        + ", ".join(_plural(counts[s], s) for s in SEVERITIES)
        + "."
    )
    return "\n".join(lines) + "\n"


#: The same "MAJOR.MINOR" form as the plan, drift, explain and state documents (a minor only adds fields).
JSON_FORMAT_VERSION = "1.0"


def render_findings_json(findings: Sequence[Finding]) -> str:
    """A versioned JSON document: ``format_version``, ``findings`` (each ``Finding.to_dict()``: ``fix``,
    and ``hint`` with the same value for consumers of the first format),
    ``summary`` (counts per severity) and the ``exit_code`` the CLI returns."""
    doc = {
        "format_version": JSON_FORMAT_VERSION,
        "findings": [f.to_dict() for f in findings],
        "summary": summary_counts(findings),
        "exit_code": exit_code(findings),
    }
    return json.dumps(doc, indent=2) + "\n"  # ASCII: no control or bidi character reaches a terminal


def render_findings_json_error(problems: Sequence[str]) -> str:
    """The JSON document when lint could not run (a config error, a sign-in failure): no findings,
    ``errored`` true and ``errors`` one line each, so stdout still holds exactly one document."""
    doc = {
        "format_version": JSON_FORMAT_VERSION,
        "findings": [],
        "summary": summary_counts(()),
        "exit_code": 1,
        "errored": True,
        "errors": list(problems),
    }
    return json.dumps(doc, indent=2) + "\n"
