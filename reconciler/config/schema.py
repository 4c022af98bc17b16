"""The JSON Schema (draft 2020-12) of ``connref.yaml``, generated from the tables and patterns the loader
checks (``reconciler.config.loader``, ``reconciler.config.checks``, ``reconciler.domain.names``), so an
editor (yaml-language-server, VS Code, JetBrains) completes and checks the same keys, types and value
forms ``connref validate`` does. ``connref schema`` prints it; ``reconciler/schemas/config-1.json`` is the
same document, committed (a test keeps the two equal).

What a schema cannot say stays with the loader: duplicate keys, a binding or ``auth:`` that names
something undeclared, references of one solution sharing one publisher prefix, logical names differing
only in case, a ``local:`` file that must exist, the placeholders of ``naming``, and secrets pasted into a
value. ``tests/test_config_schema.py`` lists each such corpus case with its reason and checks that every
other config the loader refuses, the schema refuses too.
"""

from __future__ import annotations

import json
import re
from typing import Any

from reconciler.config.checks import CONNECTOR_NAME_RE, ENV_VAR_RE, MAX_CONNECTION_NAME, SOLUTION_RE
from reconciler.config.loader import (
    ALL_AUTH_KEYS,
    AUTH_METHOD_KEYS,
    AUTH_NEEDS,
    AZURE_DEVOPS_REQUIRED,
    AZURERM_STATE_KEYS,
    AZURERM_STATE_REQUIRED,
    CLOUDS,
    COMMON_AUTH_KEYS,
    CONTAINER_RE,
    DOMAIN_RE,
    ENV_ID_RE,
    ENV_NAME_RE,
    ENVIRONMENT_KEYS,
    ENVIRONMENT_REQUIRED,
    FEDERATED_PROVIDERS,
    FILE_KEYS,
    FLOW_KEYS,
    LEASE_MAX,
    LEASE_MIN,
    LINT_KEYS,
    MAX_DESCRIPTION,
    MAX_DISPLAY_NAME,
    MAX_FLOW_WAIT_SECONDS,
    MAX_KEY_PREFIX,
    NAMED_BINDING_KEYS,
    NAMED_BINDING_REQUIRED,
    REFERENCE_KEYS,
    REFERENCE_REQUIRED,
    SELECTOR_KEYS,
    SELECTOR_REQUIRED,
    STATE_BACKENDS,
    STATE_KEYS,
    SUPPORTED_VERSION,
    TOP_KEYS,
    TOP_REQUIRED,
    UPN_RE,
)
from reconciler.domain.consolidation import PER_DEVELOPER_POLICIES
from reconciler.domain.model import CONNECTOR_PREFIX
from reconciler.domain.names import MAX_LOGICAL_NAME, PREFIX_RE, REST_RE
from reconciler.domain.patterns import GUID

DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: The file name of the committed copy in ``reconciler/schemas/``.
FILE_NAME = "config-1.json"
DOCS = "docs/config.md"


def _whole(pattern: str) -> str:
    """A Python ``fullmatch`` pattern as a JSON Schema pattern (which matches anywhere unless anchored)."""
    return f"^(?:{pattern})$"


def _ci(text: str) -> str:
    """``text`` matched case-insensitively, written without flags (JSON Schema patterns have none)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else _escape(c) for c in text)


def _escape(c: str) -> str:
    # Only the characters ECMA-262 calls syntax characters (and '/'): an escaped ordinary character is an
    # error in a unicode-mode JavaScript pattern, which is how editors compile them.
    return "\\" + c if c in "^$\\.*+?()[]{}|/" else c


NONBLANK = r"\S"
LOOPBACK_HOST = rf"(?:{_ci('localhost')}|127(?:\.[0-9]{{1,3}}){{3}}|\[::1\])"
_HTTPS_URL = rf"{_ci('https://')}[^/?#@\s]+(?:/[^?#\s]*)?"
_LOOPBACK_HTTP_URL = rf"{_ci('http://')}{LOOPBACK_HOST}(?::[0-9]{{1,5}})?(?:/[^?#\s]*)?"
_LOCAL = rf"{_ci('local:')}\s*\S.*"
_API_PATH = rf"^\s*{_ci('http')}[Ss]?://[^?#]*/{_ci('api/data')}"
_LOGICAL_NAME = rf"(?!{_ci('mscrm')}){PREFIX_RE.pattern}_{REST_RE.pattern}"
_CONNECTOR = rf"(?:{_ci(CONNECTOR_PREFIX)})?{CONNECTOR_NAME_RE.pattern}"


def _string(description: str, *, nullable: bool = False, pattern: str | None = None, max_length: int | None = None,
            enum: tuple[str, ...] | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"description": description, "type": ["string", "null"] if nullable else "string"}
    if enum is not None:
        node["enum"] = [*enum, None] if nullable else list(enum)
        return node
    node["pattern"] = pattern or NONBLANK
    if max_length is not None:
        node["maxLength"] = max_length
    return node


def _url(description: str, *, allow_local: bool, nullable: bool = False) -> dict[str, Any]:
    forms = [_HTTPS_URL, _LOOPBACK_HTTP_URL] + ([_LOCAL] if allow_local else [])
    node = _string(description, nullable=nullable, pattern=rf"^\s*(?:{'|'.join(forms)})\s*$")
    node["not"] = {"type": "string", "pattern": _API_PATH}
    return node


def _mapping(description: str, properties: dict[str, Any], keys: tuple[str, ...], required: tuple[str, ...] = (),
             *, nullable: bool = False) -> dict[str, Any]:
    assert set(properties) == set(keys), sorted(set(properties) ^ set(keys))
    node: dict[str, Any] = {
        "description": description,
        "type": ["object", "null"] if nullable else "object",
        "properties": {k: properties[k] for k in keys},
        "additionalProperties": False,
    }
    if required:
        node["required"] = list(required)
    return node


def _guid(description: str) -> dict[str, Any]:
    return _string(description, nullable=True, pattern=_whole(GUID.pattern))


def _auth_properties() -> dict[str, Any]:
    env_var = _whole(ENV_VAR_RE.pattern)
    props: dict[str, Any] = {
        "method": _string("How connref gets tokens.", enum=tuple(AUTH_METHOD_KEYS)),
        "tenant_id": _string("The tenant: a GUID, or a domain such as contoso.onmicrosoft.com.", nullable=True,
                             pattern=_whole(f"{GUID.pattern}|{DOMAIN_RE.pattern}")),
        "client_id": _guid("The application (client) id of the app registration."),
        "client_secret_env": _string("Name of the environment variable that holds the client secret.",
                                     nullable=True, pattern=env_var),
        "certificate_password_env": _string("Name of the environment variable that holds the certificate's "
                                            "password.", nullable=True, pattern=env_var),
        "federated_token_env": _string("Name of the environment variable that holds a federated token.",
                                       nullable=True, pattern=env_var),
        "access_token_env": _string("Name of the environment variable that holds a bearer token for Dataverse.",
                                    nullable=True, pattern=env_var),
        "powerplatform_access_token_env": _string("Name of the environment variable that holds a bearer token for "
                                                  "the Power Platform API (https://api.powerplatform.com).",
                                                  nullable=True, pattern=env_var),
        "powerapps_access_token_env": _string("Name of the environment variable that holds a bearer token for the "
                                              "Power Apps admin API (https://service.powerapps.com): lists every "
                                              "connection and grants access.", nullable=True, pattern=env_var),
        "graph_access_token_env": _string("Name of the environment variable that holds a bearer token for "
                                          "Microsoft Graph (group membership).", nullable=True, pattern=env_var),
        "connections_access_token_env": _string("Older name of powerplatform_access_token_env.", nullable=True,
                                                pattern=env_var),
        "federated_provider": _string("Where the federated token comes from.", nullable=True,
                                      enum=FEDERATED_PROVIDERS),
        "azure_devops_service_connection_id": _guid("The Azure DevOps service connection (workload identity) id."),
        "managed_identity_client_id": _guid("Client id of a user-assigned managed identity (omit for "
                                            "system-assigned)."),
        "federated_audience": _string("Audience of the federated token (default api://AzureADTokenExchange).",
                                      nullable=True),
        "cloud": _string("The Microsoft cloud (default: the environment's).", nullable=True, enum=CLOUDS),
        "authority_host": _url("The token authority host (https, or loopback http for an emulator).",
                               allow_local=False, nullable=True),
    }
    for key in FILE_KEYS:
        props[key] = _string(f"{key}: a file path, relative to the config file.", nullable=True)
    assert set(props) == set(ALL_AUTH_KEYS), sorted(set(props) ^ set(ALL_AUTH_KEYS))
    return props


def _auth_profile() -> dict[str, Any]:
    rules: list[dict[str, Any]] = []
    for method, keys in AUTH_METHOD_KEYS.items():
        then: dict[str, Any] = {"propertyNames": {"enum": ["method", *keys, *COMMON_AUTH_KEYS]}}
        needs, one_of = AUTH_NEEDS.get(method, ((), ()))
        if needs:
            then["required"] = list(needs)
        if one_of:
            then["allOf"] = [{"oneOf": [{"required": [k]} for k in group]} for group in one_of]
        rules.append({"if": {"properties": {"method": {"const": method}}, "required": ["method"]}, "then": then})
    rules.append({
        "if": {"properties": {"federated_provider": {"const": "azure_devops"}}, "required": ["federated_provider"]},
        "then": {"required": [AZURE_DEVOPS_REQUIRED]},
    })
    return {
        "description": "An auth profile: method and its keys. Secrets are never written here, only the names of "
        "the environment variables or files that hold them.",
        "type": "object",
        "required": ["method"],
        "properties": _auth_properties(),
        "additionalProperties": False,
        "allOf": rules,
    }


def _binding() -> dict[str, Any]:
    selector = _mapping(
        "A selector resolved at plan time to exactly one connection of the reference's connector.",
        {
            "owner": _string("UPN of the connection's owner.", pattern=_whole(UPN_RE.pattern)),
            "display_name": _string("The connection's display name, when the owner has several.", nullable=True,
                                    max_length=MAX_DISPLAY_NAME),
            "grant_access": _grant_access(),
        },
        SELECTOR_KEYS, SELECTOR_REQUIRED,
    )
    by_name = _string("The connection's name (the last segment of its id).", pattern=r"^\s*[^/\s]+\s*$",
                      max_length=MAX_CONNECTION_NAME)
    named = _mapping("A connection name with options.", {"name": by_name, "grant_access": _grant_access()},
                     NAMED_BINDING_KEYS, NAMED_BINDING_REQUIRED)
    return {"description": "The connection a reference is bound to: its name, {name, grant_access}, or a selector "
            "{owner, display_name, grant_access}.",
            "oneOf": [by_name, named, selector]}


def _grant_access() -> dict[str, Any]:
    return {"description": "apply shares the bound connection with the identity that writes (CanView) when it "
            "has no access, through the admin route (docs/service-account.md).", "type": ["boolean", "null"]}


def _environment() -> dict[str, Any]:
    env = _mapping(
        "An environment: where it is, how to sign in, and the connection each reference is bound to.",
        {
            "url": _url("The environment's Dataverse URL (https://org.crm.dynamics.com), a loopback emulator "
                        "(http://127.0.0.1:PORT), or local:PATH (the built-in emulator, a data file).",
                        allow_local=True),
            "environment_id": _string("The Power Platform environment id (a GUID, or Default-<tenant GUID>).",
                                      nullable=True, pattern=_whole(ENV_ID_RE.pattern)),
            "auth": _string("The name of a profile under auth:.", nullable=True),
            "service_account": _string("UPN or Entra object id of the account that should own the references and "
                                       "their connections; writes act as it.", nullable=True,
                                       pattern=_whole(f"{UPN_RE.pattern}|{GUID.pattern}")),
            "bindings": {
                "description": "Reference logical name -> the connection it is bound to. Leave a reference out to "
                "keep what it has.",
                "type": ["object", "null"],
                "additionalProperties": {"$ref": "#/$defs/binding"},
            },
            "connections_url": _url("Base URL of the connections API (default: derived from environment_id).",
                                    allow_local=False),
            "cloud": _string("The Microsoft cloud.", nullable=True, enum=CLOUDS),
            "grant_access": _grant_access(),
            "flows": _mapping(
                "Switching the solution's flows on after binding (docs/config.md#flows).",
                {
                    "activate": {"description": "Switch on the solution's flows that are off once their references "
                                 "are bound (default true).", "type": "boolean"},
                    "keep_off": {"description": "Flow names or workflow ids never switched on (compared without "
                                 "case, each listed once).", "type": ["array", "null"],
                                 "items": {"type": "string", "pattern": NONBLANK}},
                    "wait_seconds": {"description": "How long apply waits for the flows to take the new connections "
                                     "after a rebind (default 300).", "type": "integer", "minimum": 0,
                                     "maximum": MAX_FLOW_WAIT_SECONDS},
                },
                FLOW_KEYS, nullable=True,
            ),
        },
        ENVIRONMENT_KEYS, ENVIRONMENT_REQUIRED,
    )
    not_local = {"type": "string", "not": {"pattern": rf"^\s*{_ci('local:')}"}}
    remote_https = {"type": "string", "pattern": rf"^\s*{_ci('https://')}(?!{LOOPBACK_HOST}(?:[:/]|\s*$))"}
    env["allOf"] = [
        # A remote environment (not local:) needs credentials.
        {"if": {"properties": {"url": not_local}, "required": ["url"]}, "then": {"required": ["auth"]}},
        # The connections API is addressed by environment id, unless its URL is given (or it is loopback).
        {"if": {"properties": {"url": remote_https}, "required": ["url"]},
         "then": {"anyOf": [{"required": ["environment_id"]}, {"required": ["connections_url"]}]}},
    ]
    return env


def _reference() -> dict[str, Any]:
    return _mapping(
        "A connection reference the solution should have.",
        {
            "connector": _string(f"shared_<name> or {CONNECTOR_PREFIX}shared_<name>.",
                                 pattern=_whole(_CONNECTOR), max_length=MAX_CONNECTION_NAME),
            "display_name": _string("The display name.", max_length=MAX_DISPLAY_NAME),
            "description": _string("What it is for.", nullable=True, max_length=MAX_DESCRIPTION),
            "replaces": {
                "description": "Logical names of the references this one replaces (per-developer duplicates): in "
                "an unmanaged environment their flows are moved onto this reference and they are deleted. A "
                "replaced name is not declared under references, and only one reference replaces it.",
                "type": ["array", "null"],
                "uniqueItems": True,
                "items": {"type": "string", "pattern": _whole(_LOGICAL_NAME), "maxLength": MAX_LOGICAL_NAME},
            },
        },
        REFERENCE_KEYS, REFERENCE_REQUIRED,
    )


def _finding_names_pattern() -> str:
    """A pattern for what ``lint: ignore:`` takes: a finding code or name in any case (JSON Schema patterns
    have no flag for that, so each letter is a class of its two cases)."""
    from reconciler.domain.rules import CODES

    def any_case(word: str) -> str:
        # Codes and names are letters, digits and '-': nothing else to escape (and "\\-" is not portable).
        assert re.fullmatch(r"[A-Za-z0-9-]+", word), word
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)

    words = sorted({w for c in CODES.values() for w in (c.code, c.name)})
    return _whole("|".join(any_case(w) for w in words))


def _state() -> dict[str, Any]:
    """``state:``: the local directory (``dir``), or ``backend: azurerm`` with its keys."""
    keys = tuple(dict.fromkeys((*STATE_KEYS, *AZURERM_STATE_KEYS)))
    node = _mapping("Where the state is kept: a local directory (default), or Azure Blob storage.", {
        "backend": _string("local (default) or azurerm (Azure Blob storage, locked with blob leases).",
                           nullable=True, enum=STATE_BACKENDS),
        "dir": _string("local: folder of the state files, relative to the config file (default: state/).",
                       nullable=True),
        "account_url": _url("azurerm: the storage account's blob endpoint, https://ACCOUNT.blob.core.windows.net.",
                            allow_local=False),
        "container": _string("azurerm: the container that holds the state blobs (it must exist).",
                             pattern=_whole(CONTAINER_RE.pattern)),
        "key_prefix": _string("azurerm: prefix of the blob names, e.g. connref/.", nullable=True,
                              pattern=r"^(?![/])[^\\\x00-\x1f]*\S[^\\\x00-\x1f]*$", max_length=MAX_KEY_PREFIX),
        "auth": _string("azurerm: the auth profile whose token (for Azure Storage) reads and writes the blobs.",
                        nullable=True),
        "connection_string_env": _string("azurerm: name of the environment variable holding a storage connection "
                                         "string (Azurite).", pattern=_whole(ENV_VAR_RE.pattern)),
        "lease_duration": {"description": "azurerm: seconds a lock's lease lasts between renewals.",
                           "type": "integer", "minimum": LEASE_MIN, "maximum": LEASE_MAX},
    }, keys, nullable=True)
    azurerm = {"properties": {"backend": {"const": "azurerm"}}, "required": ["backend"]}
    node["if"] = azurerm
    node["then"] = {
        "required": list(AZURERM_STATE_REQUIRED),
        "propertyNames": {"enum": list(AZURERM_STATE_KEYS)},
        "oneOf": [{"required": ["auth"]}, {"required": ["connection_string_env"]}],
        "dependentRequired": {"auth": ["account_url"]},
        # The storage SDK sends a token only over https: a plain http endpoint (Azurite) needs
        # connection_string_env, so with auth the URL must be https even on loopback.
        "if": {"required": ["auth"]},
        "then": {"properties": {"account_url": {"pattern": r"^\s*[Hh][Tt][Tt][Pp][Ss]://"}}},
    }
    node["else"] = {"propertyNames": {"enum": list(STATE_KEYS)}}
    return node


def config_schema() -> dict[str, Any]:
    """The schema as a JSON-ready dict."""
    top = _mapping(
        f"connref config (connref.yaml), format version {SUPPORTED_VERSION}. Every key: {DOCS}.",
        {
            "version": {"description": "The format version.", "type": "integer", "const": SUPPORTED_VERSION},
            "solution": _string("Unique name of the unmanaged solution that holds the references.",
                                pattern=_whole(SOLUTION_RE.pattern)),
            "references": {
                "description": "The references the solution should have, keyed by logical name "
                "(<publisher prefix>_<name>).",
                "type": "object",
                "propertyNames": {"pattern": _whole(_LOGICAL_NAME), "maxLength": MAX_LOGICAL_NAME},
                "additionalProperties": {"$ref": "#/$defs/reference"},
            },
            "environments": {
                "description": "At least one environment, keyed by a name you choose (used with -e).",
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": _whole(ENV_NAME_RE.pattern)},
                "additionalProperties": {"$ref": "#/$defs/environment"},
            },
            "auth": {
                "description": "Auth profiles, keyed by a name you choose.",
                "type": ["object", "null"],
                "propertyNames": {"pattern": _whole(ENV_NAME_RE.pattern)},
                "additionalProperties": {"$ref": "#/$defs/auth_profile"},
            },
            "prune": {"description": "Delete managed references that are no longer declared.", "type": "boolean"},
            "naming": _string("Display-name template for connref lint, e.g. '{connector} {solution}'.",
                              nullable=True),
            "lint": _mapping("Lint settings.", {
                "ignore": {"description": "Finding codes or rule names lint should not report.",
                           "type": ["array", "null"],
                           "items": {"type": "string", "pattern": _finding_names_pattern()}},
                "per_developer_references": {
                    "description": "Per-developer references (several references for one connector, logical "
                    "names with the portal's random suffix): allow (the team's pattern), warn (default) or error.",
                    "type": ["string", "null"], "enum": [*PER_DEVELOPER_POLICIES, None]},
            }, LINT_KEYS, nullable=True),
            "state": _state(),
        },
        TOP_KEYS, TOP_REQUIRED,
    )
    return {
        "$schema": DIALECT,
        "$id": f"urn:connref:schema:config:{SUPPORTED_VERSION}",
        "title": "connref.yaml",
        **top,
        "$defs": {
            "reference": _reference(),
            "environment": _environment(),
            "binding": _binding(),
            "auth_profile": _auth_profile(),
        },
    }


def render_schema() -> str:
    """The schema as the text ``connref schema`` prints and ``reconciler/schemas/config-1.json`` holds."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"
