"""Import's edits of an existing config: what import reuses from the current config text, and how the
newly generated sections are spliced into it.

Import keeps the rest of the file as the user wrote it (auth profiles, other environments,
comments) and replaces only the ``references`` section and the environment's ``url``,
``environment_id`` and ``bindings``. The file is edited as text, guided by the positions PyYAML
reports, because a YAML round trip through a parser drops comments (the text edits are in
``reconciler.adoption.yamledit``). The generator is ``reconciler.adoption.import_generate``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.adoption.yamledit import (
    Entry,
    Parked,
    find_entry,
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
from reconciler.domain import rules
from reconciler.domain.model import LiveEnvironment, LiveReference, Selector

# --------------------------------------------------------------------------- the existing config


@dataclass(frozen=True)
class Existing:
    """What import reuses from the current config text (all optional)."""

    text: str
    lines: list[str]
    root: list[Entry]
    data: Mapping[str, Any]


def parse_existing(text: str | None) -> Existing | None:
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
    return Existing(text, lines, root, data)


def environment_data(existing: Existing | None, env_name: str) -> Mapping[str, Any]:
    if existing is None:
        return {}
    envs = existing.data.get("environments")
    env = envs.get(env_name) if isinstance(envs, Mapping) else None
    return env if isinstance(env, Mapping) else {}


def selector_from(value: Any) -> str | Selector | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("owner"), str):
        dn = value.get("display_name")
        return Selector(value["owner"], dn if isinstance(dn, str) else None)
    return None


def kept_bindings(existing: Existing | None, env_name: str, live: LiveEnvironment,
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
    data = environment_data(existing, env_name).get("bindings")
    data = data if isinstance(data, Mapping) else {}
    same: dict[str, list[str]] = {}
    absent: list[Parked] = list(parked_groups(existing.lines[b.key_line + 1:b.end]))
    for e in entries:
        text = strip_generated(existing.lines[e.start:e.end])
        ref = refs.get(e.key.lower())
        if ref is None:
            absent.append((e.key, park_block(existing.lines[e.start:e.end], e.column)))
            continue
        binding = selector_from(data.get(e.key))
        if binding is None or not ref.connection:
            continue
        conn = rules.find_connection(binding, ref.connector, live).connection
        if conn is not None and rules.same("connection", conn.name, ref.connection):
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
SA_NOTE = "service_account commented out by import: "
# The line after the note: as import wrote it, or uncommented by hand with the note left above it.
_SA_LINE = re.compile(r"^(\s*)(?:#\s?)?service_account:\s*(\S.*?)\s*$")


def restore_service_account(existing: Existing, env_name: str) -> Existing:
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
        if not lines[i].strip().startswith("# " + SA_NOTE):
            continue
        j = i + 1
        while j < env.end and lines[j].strip().startswith("#   "):
            j += 1
        m = _SA_LINE.match(lines[j]) if j < env.end else None
        if m is None:
            return existing
        restored = parse_existing("\n".join([*lines[:i], f"{m.group(1)}service_account: {m.group(2)}",
                                              *lines[j + 1:]]) + "\n")
        return restored if restored is not None and isinstance(
            environment_data(restored, env_name).get("service_account"), str) else existing
    return existing


# --------------------------------------------------------------------------- splicing the import in


def merge_import(existing: Existing, env_name: str, solution: str, unit: str, ref_lines: list[str],
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
        edits.append((envs.key_line, envs.end, _fresh_environments(existing, env_name, unit, env_block)))
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
        at = _leading_comments_end(out)
        out[at:at] = head
    if tail:
        if out and out[-1].strip():
            out.append("")
        out += tail
    return "\n".join(out).rstrip("\n") + "\n"


def _fresh_environments(existing: Existing, env_name: str, unit: str, env_block: list[str]) -> list[str]:
    """The ``environments`` section written fresh, when it is in flow style or empty: the other
    environments as data, then ``env_block``."""
    data = existing.data.get("environments")
    others = {k: v for k, v in (data.items() if isinstance(data, Mapping) else []) if k != env_name}
    fresh = ["environments:"]
    if others:
        dumped = yaml.safe_dump(others, default_flow_style=False, sort_keys=False, allow_unicode=True)
        fresh += [unit + line for line in dumped.splitlines()]
    return fresh + env_block


def _leading_comments_end(lines: Sequence[str]) -> int:
    """The index of the first line after the file's leading comments (and ``---``)."""
    i = 0
    while i < len(lines) and (is_comment_line(lines[i]) or lines[i].strip() == "---"):
        i += 1
    return i


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
