"""The deployment-settings format that ``pac solution import --settings-file`` and pipelines read.

connref speaks it both ways: ``deployment_settings`` writes the ``ConnectionReferences`` part from the
config's bindings for one environment, and ``parse_settings_file`` reads one back (for
``connref import --from-settings``). The shape, as ``pac solution create-settings`` writes it
(https://learn.microsoft.com/power-platform/developer/cli/reference/solution;
https://learn.microsoft.com/power-platform/alm/conn-ref-env-variables-build-tools)::

    {"EnvironmentVariables": [{"SchemaName": "...", "Value": "..."}],
     "ConnectionReferences": [{"LogicalName": "...", "ConnectionId": "...", "ConnectorId": "/providers/..."}]}

Readers treat the keys case-insensitively, as the Terraform provider does
(microsoft/terraform-provider-power-platform, ``internal/services/solution``), so this module does too.
Extra keys some tools add (the ALM Accelerator's ``ConnectionOwner``) are ignored on read.

Bindings are resolved by the rules layer (``reconciler.domain.rules``): a connection name, or a selector
that must match exactly one connection of the reference's connector, the same way plan resolves them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.domain import rules
from reconciler.domain.model import Config, EnvironmentConfig, LiveEnvironment, Selector, connector_id
from reconciler.domain.text import inert
from reconciler.errors import ConfigError, Location, PlanError

# --------------------------------------------------------------------------- writing


def _environment(config: Config, env: str | EnvironmentConfig) -> EnvironmentConfig:
    if isinstance(env, EnvironmentConfig):
        return env
    found = config.environments.get(env)
    if found is None:
        known = ", ".join(sorted(config.environments)) or "none"
        raise ConfigError(f"environment {env!r} is not in the config (known: {known})")
    return found


def deployment_settings(
    config: Config,
    env: str | EnvironmentConfig,
    live: LiveEnvironment | None,
    *,
    strict: bool = False,
) -> dict[str, Any]:
    """The deployment settings for ``env``: every declared reference with the connection the config
    binds it to there, sorted by logical name.

    Names are written as declared; a selector is resolved against ``live`` (a ``PlanError`` without
    one). With ``live`` given, a bound connection must exist and be of the reference's connector,
    because ``pac solution import`` would otherwise fail late with "Invalid Connection". A reference
    the config leaves unbound in ``env`` gets an empty ``ConnectionId`` (what ``pac solution
    create-settings`` writes for "fill in later"), or a ``PlanError`` with ``strict=True``.
    """
    environment = _environment(config, env)
    bindings = rules.BindingIndex.of(environment)
    entries: list[dict[str, str]] = []
    unbound: list[str] = []
    problems: list[rules.Problem] = []
    for logical_name, ref in config.references.items():
        binding = bindings.get(logical_name)
        connection_name = ""
        if binding is None:
            unbound.append(logical_name)
        elif live is None:
            if isinstance(binding, Selector):
                raise PlanError(
                    f"{logical_name}: the selector {binding.describe()} needs the live environment "
                    f"{environment.name} to be resolved"
                )
            connection_name = binding
        else:
            found = rules.find_connection(binding, ref.connector, live, subject=logical_name)
            problems.extend(found.problems)
            if found.connection is not None:
                # The connector only: what pac checks ("Invalid Connection" otherwise).
                mismatch = rules.connector_mismatch(found.connection, ref.connector, live, subject=logical_name)
                problems.extend([mismatch] if mismatch else [])
                connection_name = found.connection.name
        entries.append(
            {
                "LogicalName": logical_name,
                "ConnectionId": connection_name,
                "ConnectorId": connector_id(ref.connector),
            }
        )
    if problems:
        raise PlanError("\n".join(inert(p.line()) for p in problems))
    if strict and unbound:
        raise PlanError(
            f"no binding in environment {environment.name} for: {', '.join(sorted(unbound, key=str.lower))}"
        )
    entries.sort(key=lambda e: (e["LogicalName"].lower(), e["LogicalName"]))
    return {"EnvironmentVariables": [], "ConnectionReferences": entries}


def render_settings_json(settings: Mapping[str, Any]) -> str:
    """The settings as the file to write: two-space JSON with a final newline, keys in the given order."""
    return json.dumps(settings, indent=2) + "\n"  # ASCII: printed to a terminal, nothing in it acts on it


def _key(d: Mapping[str, Any], name: str) -> str | None:
    """The actual key in ``d`` that equals ``name`` case-insensitively."""
    want = name.lower()
    for k in d:
        if isinstance(k, str) and k.lower() == want:
            return k
    return None


def merge_into_existing(existing: Mapping[str, Any], generated: Mapping[str, Any]) -> dict[str, Any]:
    """``existing`` settings with their ``ConnectionReferences`` replaced by ``generated``'s: the
    environment variables and any other keys a team keeps in the same file stay as they were."""
    out = dict(existing)
    key = _key(out, "ConnectionReferences")
    if key is not None:
        out[key] = generated["ConnectionReferences"]
    else:
        out["ConnectionReferences"] = generated["ConnectionReferences"]
    if _key(out, "EnvironmentVariables") is None:
        out["EnvironmentVariables"] = []
    return out


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class SettingsConnectionReference:
    """One ``ConnectionReferences`` entry. ``connection_id`` is None when the file leaves it empty."""

    logical_name: str
    connection_id: str | None
    connector_id: str | None
    index: int


@dataclass(frozen=True)
class SettingsEnvironmentVariable:
    schema_name: str
    value: str | None


@dataclass(frozen=True)
class DeploymentSettings:
    """A parsed deployment settings file."""

    source: str
    connection_references: tuple[SettingsConnectionReference, ...]
    environment_variables: tuple[SettingsEnvironmentVariable, ...] = ()


def _text(entry: Mapping[str, Any], name: str, where: str, *, required: bool) -> str | None:
    key = _key(entry, name)
    value = entry.get(key) if key is not None else None
    if value is None:
        if required:
            raise ConfigError(f"{where}: {name} is missing")
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a string, not {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise ConfigError(f"{where}: {name} is empty")
    return value or None


def parse_settings(data: Any, source: str = "<settings>") -> DeploymentSettings:
    """Validate parsed settings JSON. Every error names ``source`` and the entry (index and logical
    name) so the user can find it."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a JSON object with ConnectionReferences")
    refs_key = _key(data, "ConnectionReferences")
    if refs_key is None:
        raise ConfigError(f"{source}: no ConnectionReferences list")
    raw_refs = data[refs_key]
    if raw_refs is None:
        raw_refs = []
    if not isinstance(raw_refs, list):
        raise ConfigError(f"{source}: ConnectionReferences must be a list")
    refs: list[SettingsConnectionReference] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw_refs):
        where = f"{source}: ConnectionReferences[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"{where}: each entry must be an object with LogicalName, ConnectionId, ConnectorId"
            )
        logical = _text(entry, "LogicalName", where, required=True)
        assert logical is not None
        where = f"{where} ({logical})"
        connection = _text(entry, "ConnectionId", where, required=False)
        connector = _text(entry, "ConnectorId", where, required=False)
        if connector is not None and connector.startswith("/") and not connector.lower().startswith(
            "/providers/microsoft.powerapps/apis/"
        ):
            raise ConfigError(
                f"{where}: ConnectorId {connector!r} is not of the form "
                "/providers/Microsoft.PowerApps/apis/<name>"
            )
        if logical.lower() in seen:
            raise ConfigError(
                f"{where}: LogicalName {logical} appears twice "
                f"(also at ConnectionReferences[{seen[logical.lower()]}])"
            )
        seen[logical.lower()] = i
        refs.append(SettingsConnectionReference(logical, connection, connector, i))

    variables: list[SettingsEnvironmentVariable] = []
    vars_key = _key(data, "EnvironmentVariables")
    raw_vars = data.get(vars_key) if vars_key is not None else None
    if raw_vars is not None:
        if not isinstance(raw_vars, list):
            raise ConfigError(f"{source}: EnvironmentVariables must be a list")
        for i, entry in enumerate(raw_vars):
            where = f"{source}: EnvironmentVariables[{i}]"
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{where}: each entry must be an object with SchemaName and Value")
            schema = _text(entry, "SchemaName", where, required=True)
            assert schema is not None
            value = _text(entry, "Value", where, required=False)
            variables.append(SettingsEnvironmentVariable(schema, value))
    return DeploymentSettings(source, tuple(refs), tuple(variables))


def load_settings_json(path: str | Path) -> Any:
    """Read a settings file as JSON; ``ConfigError`` with the file, line and column on bad JSON.
    ``utf-8-sig`` because files saved by Windows tools often start with a byte-order mark."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such settings file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the settings file ({e.__class__.__name__})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON: {e.msg}", Location(str(p), e.lineno, e.colno)) from None


def parse_settings_file(path: str | Path) -> DeploymentSettings:
    """Read and validate a deployment settings file."""
    return parse_settings(load_settings_json(path), str(path))
