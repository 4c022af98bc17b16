"""Read bindings from a deployment settings file into a config: ``bindings_from_settings`` parses the
file, ``merge_bindings`` writes the bindings into an environment of the config text, keeping its
comments (text edits guided by PyYAML's positions, ``reconciler.adoption.yamledit``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.adoption.import_merge import selector_from
from reconciler.adoption.settings import DeploymentSettings, parse_settings
from reconciler.adoption.yamledit import find_entry, mapping_entries, splice_lines, yaml_key, yaml_scalar
from reconciler.config.checks import connection_name_problem, secret_value_kind
from reconciler.domain.model import Selector
from reconciler.errors import ConfigError


def bindings_from_settings(settings_json: Mapping[str, Any], *, source: str = "<settings>") -> dict[str, str]:
    """``{logical name: connection name}`` from parsed deployment settings JSON, in logical-name
    order. Keys are read case-insensitively (as the Terraform provider reads the file); entries with
    an empty ``ConnectionId`` (the "fill in later" of ``pac solution create-settings``) are left out.
    ``ConfigError`` naming ``source`` and the entry for bad input, a ``ConnectionId`` the config would
    refuse as a binding included."""
    bindings, _ = settings_bindings(parse_settings(settings_json, source), source=source)
    return dict(sorted(bindings.items(), key=lambda p: p[0].lower()))


def settings_bindings(settings: DeploymentSettings, *, source: str) -> tuple[dict[str, str], list[str]]:
    """The bindings a parsed settings file gives (``{logical name: connection name}``) and one note per
    entry it skips: an empty ``ConnectionId`` (what ``pac solution create-settings`` writes) binds
    nothing, and docs/adoption.md promises every skip is printed.

    Every ``ConnectionId`` is first judged as the config judges a binding by name; one it would refuse
    is a ``ConfigError`` naming ``source`` and each such entry, raised before anything is merged, so a
    settings file can never put into the config what ``connref validate`` then rejects. A value that
    looks like a secret is named by its kind only, never repeated."""
    bindings: dict[str, str] = {}
    notes: list[str] = []
    refused: list[str] = []
    for r in settings.connection_references:
        if not r.connection_id:
            notes.append(f"skipped {r.logical_name}: its ConnectionId is empty in {source} "
                         f"(ConnectionReferences[{r.index}]); fill it in, or bind it in the config")
            continue
        problem = connection_id_problem(r.connection_id)
        if problem:
            refused.append(f"{source}: ConnectionReferences[{r.index}] ({r.logical_name}): ConnectionId {problem}")
        else:
            bindings[r.logical_name] = r.connection_id
    if len(refused) == 1:
        raise ConfigError(f"{refused[0]}; nothing was written")
    if refused:
        lines = "\n".join(f"  {line}" for line in refused)
        raise ConfigError(f"{source}: {len(refused)} entries cannot be bindings, so nothing was written:\n{lines}")
    return bindings, notes


def connection_id_problem(value: str) -> str | None:
    """Why a settings file's ``ConnectionId`` cannot be written as a binding, in words that follow
    "ConnectionId": the config's own checks (``reconciler.config.checks``), the secret one first, so a
    secret is refused by its kind and never reaches a later message that might show it."""
    kind = secret_value_kind(value)
    if kind:
        return (f"looks like {kind}, not a connection name, and secrets must not be written in the config "
                "(the value is not shown); put the connection's name there, and if it is a real secret, "
                "treat it as leaked")
    problem = connection_name_problem(value)
    return f"is not a connection name: {problem}" if problem else None


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
    node, data = _parse_config(config_text, env_name, path)
    wanted, notes = _changed_bindings(data, env_name, bindings, path)
    if not wanted:
        return MergeResult(config_text, notes or [f"bindings of {env_name} already match"])
    lines = config_text.splitlines()
    edits = _binding_edits(lines, node, env_name, wanted)
    if edits is None:
        return _rewrite(data, env_name, wanted, notes, path)
    text = "\n".join(splice_lines(lines, edits)).rstrip("\n") + "\n"
    return MergeResult(text, notes)


def _parse_config(config_text: str, env_name: str, path: str) -> tuple[yaml.Node | None, Mapping[str, Any]]:
    """The node tree and the data of the config text; ``ConfigError`` when it is not a config with
    ``env_name`` under ``environments``."""
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
    return node, data


def _changed_bindings(data: Mapping[str, Any], env_name: str, bindings: Mapping[str, str],
                      path: str) -> tuple[dict[str, str], list[str]]:
    """The bindings to write (declared spelling -> connection: those that differ from the config's),
    and one note per change or skipped name."""
    declared_data = data.get("references")
    declared = {str(k).lower(): str(k) for k in (declared_data if isinstance(declared_data, Mapping) else {})}
    current = data["environments"][env_name].get("bindings")
    current = current if isinstance(current, Mapping) else {}
    current_keys = {str(k).lower(): str(k) for k in current}

    notes: list[str] = []
    wanted: dict[str, str] = {}
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
    return wanted, notes


def _binding_edits(lines: list[str], node: yaml.Node | None, env_name: str,
                   wanted: Mapping[str, str]) -> list[tuple[int, int, list[str]]] | None:
    """Text edits that set ``wanted`` in the environment's block-style ``bindings`` (replacing the
    entries of the same names, appending the others); None when that part of the file is not in
    block style and must be written fresh."""
    root = mapping_entries(lines, node, 0, len(lines)) if node is not None else None
    envs = find_entry(root or [], "environments")
    env_entries = mapping_entries(lines, envs.value, envs.key_line + 1, envs.end) if envs else None
    env = find_entry(env_entries or [], env_name)
    children = mapping_entries(lines, env.value, env.key_line + 1, env.end) if env else None
    if root is None or env is None or not children:
        return None
    b = find_entry(children, "bindings")
    ind = " " * children[0].column
    unit = " " * max(children[0].column - env.column, 1)
    if b is None:
        new = [f"{ind}bindings:", *(f"{ind}{unit}{yaml_key(k)}: {yaml_scalar(v)}" for k, v in wanted.items())]
        return [(children[-1].end, children[-1].end, new)]
    entries = mapping_entries(lines, b.value, b.key_line + 1, b.end)
    if entries is None:
        if not (isinstance(b.value, yaml.MappingNode) and not b.value.value):
            return None
        entries = []  # "bindings: {}": write a block mapping instead
    bind = " " * entries[0].column if entries else ind + unit
    edits: list[tuple[int, int, list[str]]] = []
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
    return edits


def _describe_binding(value: Any) -> str:
    sel = selector_from(value)
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
    "connection_id_problem",
    "merge_bindings",
    "settings_bindings",
]
