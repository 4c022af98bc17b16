"""Load and validate ``connref.yaml`` into the frozen ``Config`` of ``reconciler.domain.model``.

Everything here is local: no network call is made, so ``connref validate`` (which runs only
this) is safe anywhere. Every problem is reported as ``file:line:column: field.path: message``;
all problems found in one pass are raised together (``ConfigErrors``) so the user can fix them
at once. The format is documented key by key in ``docs/config.md``.

Secrets never belong in the file: a secret-named key with a value, or a value that looks like a
JWT, a PEM block or an Entra client secret, is an error that names the field but never echoes
the value. For the same reason messages about ids and variable names do not quote the value.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import gc
import os
import re
import stat
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from reconciler.config.checks import (
    PEM_RE,
    SECRET_VALUE_FRAGMENTS,
    absent_if_null,
    connection_name_problem,
    connector_problem,
    env_var_problem,
    is_blank,
    is_empty_node,
    is_loopback_url,
    naming_problem,
    normalise_connector,
    secret_value_kind,
    solution_problem,
    url_problem,
)
from reconciler.config.yamlsource import (
    Map,
    Scalar,
    Seq,
    Strings,
    YNode,
    describe,
    join_path,
    parse_document,
    walk,
)
from reconciler.domain.consolidation import DEFAULT_PER_DEVELOPER_POLICY, PER_DEVELOPER_POLICIES
from reconciler.domain.model import (
    DEFAULT_FLOW_WAIT_SECONDS,
    AuthProfile,
    AzureStateConfig,
    Binding,
    Config,
    DesiredReference,
    EnvironmentConfig,
    FlowSettings,
    Selector,
    frozen_map,
)
from reconciler.domain.names import logical_name_problem, publisher_prefix
from reconciler.domain.patterns import GUID, JWT, is_guid
from reconciler.domain.rules import CODES
from reconciler.domain.text import inert
from reconciler.errors import ConfigError, ConfigErrors, Location

SUPPORTED_VERSION = 1
#: What ``lint: ignore:`` may name, lower-cased: every finding code (CR102) and name (random-suffix).
_FINDING_NAMES = {**{c.code.lower(): c.code for c in CODES.values()}, **{c.name: c.name for c in CODES.values()}}
MAX_DISPLAY_NAME = 200  # docs/dataverse.md §1.2
MAX_DESCRIPTION = 2000

CLOUDS = ("public", "usgov", "usgovhigh", "dod", "china")
FEDERATED_PROVIDERS = ("github", "azure_devops")

# The keys of each mapping, and which of them are required. The loader checks these, and the config's JSON
# Schema (reconciler.config.schema) is generated from them, so the two cannot drift apart.
TOP_KEYS = ("version", "solution", "references", "environments", "auth", "prune", "naming", "lint", "state")
TOP_REQUIRED = ("version", "solution", "references", "environments")
REFERENCE_KEYS = ("connector", "display_name", "description", "replaces")
REFERENCE_REQUIRED = ("connector", "display_name")
ENVIRONMENT_KEYS = (
    "url",
    "environment_id",
    "auth",
    "service_account",
    "bindings",
    "connections_url",
    "cloud",
    "grant_access",
    "flows",
)
ENVIRONMENT_REQUIRED = ("url",)
FLOW_KEYS = ("activate", "keep_off", "wait_seconds")
MAX_FLOW_WAIT_SECONDS = 3600
SELECTOR_KEYS = ("owner", "display_name", "grant_access")
SELECTOR_REQUIRED = ("owner",)
# A binding by connection name with options: {name: <connection name>, grant_access: true}.
NAMED_BINDING_KEYS = ("name", "grant_access")
NAMED_BINDING_REQUIRED = ("name",)
LINT_KEYS = ("ignore", "per_developer_references")
STATE_BACKENDS = ("local", "azurerm")
STATE_KEYS = ("backend", "dir")  # the local backend's
AZURERM_STATE_KEYS = ("backend", "account_url", "container", "key_prefix", "auth", "connection_string_env",
                      "lease_duration")
AZURERM_STATE_REQUIRED = ("container",)
# A blob lease lasts 15 to 60 seconds (or is infinite: never used, a killed run would hold it forever).
LEASE_MIN, LEASE_MAX, LEASE_DEFAULT = 15, 60, 60
# Azure container names: 3-63 lowercase letters, digits and single hyphens, starting and ending with a letter
# or digit (Microsoft Learn, "Naming and referencing containers, blobs, and metadata").
CONTAINER_RE = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
MAX_KEY_PREFIX = 900

# Keys each auth method accepts (besides ``method``); required ones are in ``AUTH_NEEDS``.
COMMON_AUTH_KEYS = ("authority_host", "cloud")
AUTH_METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "client_secret": ("tenant_id", "client_id", "client_secret_env", "client_secret_file"),
    "certificate": ("tenant_id", "client_id", "certificate_path", "certificate_password_env"),
    "federated": (
        "tenant_id",
        "client_id",
        "federated_provider",
        "federated_token_env",
        "federated_token_file",
        "azure_devops_service_connection_id",
        "federated_audience",
    ),
    "managed_identity": ("managed_identity_client_id",),
    "azure_cli": ("tenant_id",),
    "access_token": ("access_token_env", "powerplatform_access_token_env", "powerapps_access_token_env",
                     "graph_access_token_env", "connections_access_token_env"),
}
ALL_AUTH_KEYS = tuple(sorted({"method", *COMMON_AUTH_KEYS, *(k for keys in AUTH_METHOD_KEYS.values() for k in keys)}))
# Option keys that name files: stored as absolute paths, resolved relative to the config file.
FILE_KEYS = ("client_secret_file", "certificate_path", "federated_token_file")
# Option keys that name environment variables, and those that hold GUIDs (with what they are).
AUTH_ENV_KEYS = ("client_secret_env", "certificate_password_env", "federated_token_env", "access_token_env",
                  "powerplatform_access_token_env", "powerapps_access_token_env", "graph_access_token_env",
                  "connections_access_token_env")
AUTH_GUID_KEYS = (("azure_devops_service_connection_id", "service connection id"),
                   ("managed_identity_client_id", "client id of the user-assigned identity"))
# What each method needs: keys it must have, and groups of keys of which it takes exactly one.
AUTH_NEEDS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    "client_secret": (("tenant_id", "client_id"), (("client_secret_env", "client_secret_file"),)),
    "certificate": (("tenant_id", "client_id", "certificate_path"), ()),
    "federated": (("tenant_id", "client_id"), (("federated_provider", "federated_token_env", "federated_token_file"),)),
    "access_token": (("access_token_env",), ()),
}
# federated_provider: azure_devops also needs the service connection id.
AZURE_DEVOPS_REQUIRED = "azure_devops_service_connection_id"

ENV_ID_RE = re.compile(r"(?:Default-)?" + GUID.pattern)
UPN_RE = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
DOMAIN_RE = re.compile(r"(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}")
ENV_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
LINT_CODE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")


def _guid_check(what: str) -> Callable[[str], str | None]:
    """A check for ``Reader.checked``: the value must be a GUID (``what`` names it in the error)."""
    return lambda v: None if is_guid(v) else f"expected a GUID (the {what})"


@functools.lru_cache(maxsize=1024)
def _owner_problem(value: str) -> str | None:
    # Cached: the selectors of a config name the same few owners (a service account) again and again.
    if UPN_RE.fullmatch(value):
        return None
    return "expected the user principal name of the connection owner (name@domain)"


def _tenant_problem(value: str) -> str | None:
    if is_guid(value) or DOMAIN_RE.fullmatch(value):
        return None
    return "expected a GUID or a domain such as contoso.onmicrosoft.com (the tenant)"


def _auth_key_of_other_methods(method: str, key: str) -> str | None:
    """Why ``key`` is refused in a profile of ``method`` when another method takes it, else None."""
    if key in ALL_AUTH_KEYS:
        users = [meth for meth, keys in AUTH_METHOD_KEYS.items() if key in keys]
        return f"does not apply to method {method} (it is for: {', '.join(users)})"
    return None


# Keys whose value would be a secret. ``*_env`` / ``*_file`` / ``*_path`` / ``*_id`` never match.
_SECRET_KEY_WORDS = ("secret", "password", "passwd", "pwd", "token", "private_key", "privatekey", "api_key",
                     "apikey", "assertion", "connection_string", "sas")
_SECRET_KEY_RE = re.compile(r"(?:^|_)(?:" + "|".join(_SECRET_KEY_WORDS) + r")$")
_SECRET_ALTERNATIVES = {
    "client_secret": "client_secret_env or client_secret_file",
    "access_token": "access_token_env",
    "certificate_password": "certificate_password_env",
    "federated_token": "federated_token_env or federated_token_file",
    "private_key": "certificate_path (a file)",
    "connection_string": "connection_string_env",
}


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    # Cached: a config repeats the same few keys (connector, display_name) thousands of times.
    return bool(_SECRET_KEY_RE.search(key.lower().replace("-", "_")))


_FILE_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,5}$")


def _pasted_secret(value: str, resolved: str) -> bool:
    """Whether a ``*_file`` value is a secret pasted where its path belongs: a file that does not exist,
    named with no directory and no extension, at least 16 characters drawn from three of lower case,
    upper case, digits and symbols, with no space (a generated secret, not a file name)."""
    v = value.strip()
    if len(v) < 16 or any(c.isspace() for c in v) or "/" in v or "\\" in v or _FILE_EXTENSION.search(v):
        return False
    classes = sum((any(c.islower() for c in v), any(c.isupper() for c in v), any(c.isdigit() for c in v),
                   any(not c.isalnum() for c in v)))
    return classes >= 3 and not os.path.exists(resolved)


@dataclass(frozen=True)
class _Ctx:
    file: str
    base_dir: str

    def resolve(self, path: str) -> str:
        """``path`` from the config (``~`` expanded) as an absolute path, relative to the config file."""
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(path)))


class _Validator:
    """One pass over the located tree; collects errors, builds the model when there are none."""

    def __init__(self, ctx: _Ctx) -> None:
        self.ctx = ctx
        self.errors: list[ConfigError] = []
        self.flagged: set[int] = set()  # nodes already reported as inline secrets
        self.secret_texts: set[str] = set()  # their text, kept out of every message (a key is in paths)
        self._declared: tuple[list[str], set[str]] | None = None

    # ------------------------------------------------------------------ reporting

    def error(self, node: YNode | Location | None, field: str | None, message: str) -> None:
        if isinstance(node, YNode):
            if id(node) in self.flagged or node.broken:
                return
            loc: Location | None = node.loc
        else:
            loc = node
        self.errors.append(ConfigError(message, loc, field or None))

    def type_error(self, node: YNode, field: str, expected: str) -> None:
        hint = ""
        if (
            isinstance(node, Scalar)
            and not node.quoted
            and isinstance(node.value, int | float)
            and expected == "a string"
        ):
            hint = " (put it in quotes if you meant text)"
        self.error(node, field, f"expected {expected}, got {describe(node)}{hint}")

    # ------------------------------------------------------------------ secrets (first pass)

    def scan_secrets(self, root: YNode, path_of: Mapping[int, str]) -> None:
        # ``walk``'s order (document order, keys before their values), without its list and with the
        # visited set kept for collections only: a scalar reached twice (an alias) is reported once
        # through ``flagged``, and a mapping's keys must be checked once.
        stack: list[YNode] = [root]
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            if isinstance(node, Scalar):
                self._scan_scalar(node, path_of)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, Seq):
                stack.extend(reversed(node.items))
                continue
            if isinstance(node, Map):
                for key, value in reversed(node.pairs):
                    stack.append(value)
                    stack.append(key)
                for key, value in node.pairs:
                    if _secret_key(key.text) and not is_empty_node(value):
                        field = join_path(path_of.get(id(node), ""), key.text)
                        # Only keys that exist are suggested: a name made up from this one (password_env) would
                        # be refused next as an unknown key.
                        alt = _SECRET_ALTERNATIVES.get(
                            key.text.lower(), "the *_env or *_file key of what it is for (client_secret_env, "
                            "client_secret_file, certificate_password_env, federated_token_env, "
                            "connection_string_env; docs/config.md)")
                        self.error(
                            key,
                            field,
                            "secrets must not be written in the config file; put the value in an environment "
                            f"variable or a file and name it with {alt}",
                        )
                        self._flag(value)

    def _scan_scalar(self, node: Scalar, path_of: Mapping[int, str]) -> None:
        if not isinstance(node.value, str) or id(node) in self.flagged:
            return
        what = secret_value_kind(node.value)
        if what:
            self.secret_texts.add(node.value)
            self.error(
                node,
                path_of.get(id(node)),
                f"this value looks like {what}; secrets must not be written in the config file: "
                "put it in an environment variable or a file and name it with a *_env or *_file key",
            )
            self.flagged.add(id(node))

    def _flag(self, node: YNode) -> None:
        for n in walk(node):
            self.flagged.add(id(n))

    # ------------------------------------------------------------------ typed getters

    def keys(
        self,
        m: Map,
        field: str,
        allowed: tuple[str, ...],
        required: tuple[str, ...] = (),
        why_not: Callable[[str], str | None] | None = None,
    ) -> None:
        suggested: set[str] = set()
        for key, _ in m.pairs:
            if key.text in allowed or _secret_key(key.text):
                continue  # secret keys were reported by scan_secrets
            reason = why_not(key.text) if why_not else None
            if reason:
                self.error(key, join_path(field, key.text), reason)
                continue
            close = difflib.get_close_matches(key.text, allowed, n=1, cutoff=0.6)
            if close:
                suggested.add(close[0])
                self.error(key, join_path(field, key.text), f"unknown key; did you mean '{close[0]}'?")
            else:
                self.error(key, join_path(field, key.text), f"unknown key; expected one of: {', '.join(allowed)}")
        for req in required:
            # A misspelt key already says "did you mean <req>?": no second error for the same fix.
            if m.get(req) is None and req not in suggested:
                self.error(m, join_path(field, req), "required key is missing")

    def mapping(self, node: YNode | None, field: str) -> Map | None:
        if node is None:
            return None
        if isinstance(node, Map):
            return node
        self.type_error(node, field, "a mapping")
        return None

    def string(
        self,
        m: Map,
        key: str,
        field: str,
        *,
        max_len: int | None = None,
        nullable: bool = True,
    ) -> str | None:
        """A string value; None when absent (or null and ``nullable``). Empty strings are refused."""
        node = m.get(key)
        if node is None:
            return None
        if isinstance(node, Scalar) and node.value is None and nullable:
            return None
        if not isinstance(node, Scalar) or not isinstance(node.value, str):
            self.type_error(node, join_path(field, key), "a string")
            return None
        if id(node) in self.flagged:
            return None
        value = node.value
        if is_blank(value):
            self.error(node, join_path(field, key), "must not be empty")
            return None
        if max_len is not None and len(value) > max_len:
            self.error(node, join_path(field, key), f"may be at most {max_len} characters (this one has {len(value)})")
            return None
        return value

    def node_of(self, m: Map, key: str) -> YNode:
        node = m.get(key)
        assert node is not None
        return node

    def boolean(self, m: Map, key: str, field: str) -> bool:
        """``key`` of ``m`` as a boolean (absent or null: False); anything else is an error at its place."""
        node = m.get(key)
        if node is None or (isinstance(node, Scalar) and node.value is None):
            return False
        if isinstance(node, Scalar) and isinstance(node.value, bool):
            return node.value
        self.type_error(node, join_path(field, key), "a boolean (true or false)")
        return False

    def checked(self, m: Map, key: str, field: str, check: Callable[[str], str | None], **kw: Any) -> str | None:
        """A string that must also pass ``check`` (returns a problem or None)."""
        value = self.string(m, key, field, **kw)
        if value is None:
            return None
        problem = check(value)
        if problem:
            self.error(self.node_of(m, key), join_path(field, key), problem)
            return None
        return value

    def choice(self, m: Map, key: str, field: str, choices: tuple[str, ...], *, nullable: bool = True) -> str | None:
        def check(v: str) -> str | None:
            if v in choices:
                return None
            close = difflib.get_close_matches(v, choices, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            return f"'{v}' is not one of: {', '.join(choices)}{hint}"

        node = m.get(key)
        if not nullable and isinstance(node, Scalar) and node.value is None:
            self.type_error(node, join_path(field, key), f"one of: {', '.join(choices)}")
            return None
        return self.checked(m, key, field, check, nullable=nullable)

    def auth_name(self, m: Map, field: str, auth: list[str] | None) -> str | None:
        """The ``auth`` key of ``m``: the name of a profile declared under ``auth:`` (``auth`` lists them;
        None: the section is unusable, skip the check)."""
        name = self.string(m, "auth", field)
        if name is not None and auth is not None and name not in auth:
            close = difflib.get_close_matches(name, auth, n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean '{close[0]}'?"
            elif auth:
                hint = f" (declared: {', '.join(auth)})"
            else:
                hint = " (there is no auth section)"
            self.error(self.node_of(m, "auth"), join_path(field, "auth"),
                       f"auth profile '{name}' is not declared under auth{hint}")
        return name

    # ------------------------------------------------------------------ the document

    def document(self, root: YNode) -> Config | None:
        if not isinstance(root, Map):
            self.error(
                root,
                None,
                f"the top level must be a mapping of keys (version, solution, ...), got {describe(root)}",
            )
            return None
        self.keys(root, "", TOP_KEYS, required=TOP_REQUIRED)

        version_node = root.get("version")
        version = SUPPORTED_VERSION
        if version_node is not None:
            if (
                not isinstance(version_node, Scalar)
                or isinstance(version_node.value, bool)
                or not isinstance(version_node.value, int)
            ):
                self.type_error(version_node, "version", "the integer 1")
            elif problem := _int_form_problem(version_node):
                self.error(version_node, "version", problem)
            elif version_node.value != SUPPORTED_VERSION:
                self.error(
                    version_node,
                    "version",
                    f"unsupported version {version_node.value}; this connref reads version {SUPPORTED_VERSION}",
                )

        solution = self.checked(root, "solution", "", solution_problem, nullable=False)
        refs_map = self.mapping(root.get("references"), "references")
        references = self.references(refs_map)
        auth_node = absent_if_null(root.get("auth"))
        auth_map = self.mapping(auth_node, "auth")
        auth = self.auth_profiles(auth_map)
        # Names as declared (valid or not), so a binding to a reference with an error of its own
        # is not reported a second time as undeclared. None: the section is unusable, skip the check.
        ref_names = refs_map.key_texts() if refs_map is not None else None
        auth_names = auth_map.key_texts() if auth_map is not None else ([] if auth_node is None else None)
        environments = self.environments(self.mapping(root.get("environments"), "environments"), ref_names, auth_names)

        prune = False
        prune_node = root.get("prune")
        if prune_node is not None:
            if isinstance(prune_node, Scalar) and isinstance(prune_node.value, bool):
                prune = prune_node.value
            else:
                self.type_error(prune_node, "prune", "a boolean (true or false)")

        naming = self.checked(root, "naming", "", naming_problem)
        lint_map = self.mapping(absent_if_null(root.get("lint")), "lint")
        lint_ignore = self.lint(lint_map)
        per_developer = (self.choice(lint_map, "per_developer_references", "lint", PER_DEVELOPER_POLICIES)
                         if lint_map is not None else None)
        state_dir, remote_state = self.state(self.mapping(absent_if_null(root.get("state")), "state"), auth_names)

        if self.errors or solution is None or references is None or environments is None:
            return None
        return Config(
            path=os.path.abspath(self.ctx.file),
            version=version,
            solution=solution,
            references=frozen_map(references),
            environments=frozen_map(environments),
            auth=frozen_map(auth or {}),
            prune=prune,
            naming=naming,
            lint_ignore=lint_ignore,
            per_developer_policy=per_developer or DEFAULT_PER_DEVELOPER_POLICY,
            state_dir=state_dir,
            remote_state=remote_state,
        )

    # ------------------------------------------------------------------ references

    def references(self, m: Map | None) -> dict[str, DesiredReference] | None:
        if m is None:
            return None
        out: dict[str, DesiredReference] = {}
        first_prefix: tuple[str, str, Location] | None = None
        seen_lower: dict[str, Scalar] = {}
        for key, value in m.pairs:
            name = key.text
            field = join_path("references", name)
            problem = logical_name_problem(name)
            if problem:
                self.error(key, field, f"invalid logical name: {problem}")
            else:
                prefix = publisher_prefix(name) or ""
                if first_prefix is None:
                    first_prefix = (prefix, name, key.loc)
                elif prefix.lower() != first_prefix[0].lower():
                    self.error(
                        key,
                        field,
                        f"publisher prefix '{prefix}' differs from '{first_prefix[0]}' used by "
                        f"{first_prefix[1]} (line {first_prefix[2].line}); "
                        "the references of one solution share one publisher prefix",
                    )
                other = seen_lower.get(name.lower())
                if other is not None:
                    self.error(
                        key,
                        field,
                        f"same logical name as {other.text} (line {other.loc.line}) apart from case; "
                        "Dataverse compares logical names case-insensitively",
                    )
                seen_lower.setdefault(name.lower(), key)
            ref = self.reference(name, value, field)
            if ref is not None and not problem:
                out[name] = ref
        self.check_replacements(m)
        return out

    def replaced_names(self, node: YNode | None, field: str) -> list[tuple[str, Scalar]]:
        """The ``replaces:`` list of one reference: its items that are valid logical names, each once, with
        their field paths."""
        if node is None or (isinstance(node, Scalar) and node.value is None):
            return []
        if not isinstance(node, Seq):
            self.type_error(node, field, "a list of logical names")
            return []
        seen: dict[str, tuple[str, Scalar]] = {}
        for i, item in enumerate(node.items):
            path = join_path(field, i)
            if not isinstance(item, Scalar) or not isinstance(item.value, str):
                self.type_error(item, path, "a logical name")
                continue
            problem = logical_name_problem(item.value)
            if problem:
                hint = " (this looks like a display name; replaces lists logical names)" if " " in item.value else ""
                self.error(item, path, f"invalid logical name: {problem}{hint}")
                continue
            first = seen.get(item.value.lower())
            if first is not None:
                self.error(item, path, f"listed twice: also {first[0]} (logical names compare without case)")
                continue
            seen[item.value.lower()] = (path, item)
        return list(seen.values())

    def check_replacements(self, m: Map) -> None:
        """Across references: a replaced name is not declared itself, and only one reference replaces it."""
        declared: dict[str, Scalar] | None = None  # by lower-case name, made when a reference replaces one
        replaced_by: dict[str, tuple[str, Scalar]] = {}
        for key, value in m.pairs:
            if not isinstance(value, Map):
                continue
            replaces = value.get("replaces")
            if replaces is None:
                continue
            field = join_path(join_path("references", key.text), "replaces")
            for path, item in self.replaced_names(replaces, field):
                name = str(item.value)
                if declared is None:
                    declared = {k.text.lower(): k for k, _ in m.pairs}
                own = declared.get(name.lower())
                if own is not None:
                    what = "itself" if own is key else f"{own.text}, declared at line {own.loc.line}"
                    self.error(item, path, f"a reference cannot replace {what}: a replaced reference is "
                                           "removed, so it is not declared under references")
                    continue
                other = replaced_by.get(name.lower())
                if other is not None:
                    self.error(item, path, f"{name} is already replaced by {other[0]} (line {other[1].loc.line}); "
                                           "one reference replaces it")
                    continue
                replaced_by[name.lower()] = (key.text, item)

    def reference(self, name: str, node: YNode, field: str) -> DesiredReference | None:
        m = self.mapping(node, field)
        if m is None:
            return None
        self.keys(m, field, REFERENCE_KEYS, required=REFERENCE_REQUIRED)
        connector = self.checked(m, "connector", field, connector_problem, nullable=False)
        display_name = self.string(m, "display_name", field, max_len=MAX_DISPLAY_NAME, nullable=False)
        description = self.string(m, "description", field, max_len=MAX_DESCRIPTION)
        if connector is None or display_name is None:
            return None
        # Checked (with locations) by check_replacements, across all references.
        replaces = m.get("replaces")
        names: tuple[str, ...] = ()
        if replaces is not None:
            names = tuple(dict.fromkeys(str(n.value) for n in _items(replaces)
                                        if isinstance(n, Scalar) and isinstance(n.value, str)))
        return DesiredReference(
            logical_name=name,
            connector=normalise_connector(connector),
            display_name=display_name,
            description=description,
            location=m.loc,
            replaces=names,
        )

    # ------------------------------------------------------------------ environments

    def environments(
        self,
        m: Map | None,
        references: list[str] | None,
        auth: list[str] | None,
    ) -> dict[str, EnvironmentConfig] | None:
        if m is None:
            return None
        if not m.pairs:
            self.error(m, "environments", "declare at least one environment")
        out: dict[str, EnvironmentConfig] = {}
        folded: dict[str, Scalar] = {}
        for key, value in m.pairs:
            field = join_path("environments", key.text)
            if not ENV_NAME_RE.fullmatch(key.text):
                self.error(
                    key,
                    field,
                    "an environment name may contain only letters, digits, '_', '.' and '-', "
                    "starting with a letter or digit",
                )
                continue
            first = folded.setdefault(key.text.casefold(), key)
            if first is not key:
                # Each environment has a state file (or blob) and a lock named after it: on a file system that
                # ignores case, dev and DEV would share them.
                self.error(key, field, f"same environment name as {first.text} (line {first.loc.line}) apart from "
                           "case; its state and lock are named after it, and some file systems ignore case")
                continue
            env = self.environment(key.text, value, field, references, auth)
            if env is not None:
                out[key.text] = env
        return out

    def environment(
        self,
        name: str,
        node: YNode,
        field: str,
        references: list[str] | None,
        auth: list[str] | None,
    ) -> EnvironmentConfig | None:
        m = self.mapping(node, field)
        if m is None:
            return None
        self.keys(m, field, ENVIRONMENT_KEYS, required=ENVIRONMENT_REQUIRED)
        url, local_path = self.url(m, "url", field, allow_local=True)
        environment_id = self.checked(
            m,
            "environment_id",
            field,
            lambda v: None if ENV_ID_RE.fullmatch(v) else "expected a GUID (the environment id)",
        )
        auth_name = self.auth_name(m, field, auth)
        service_account = self.checked(
            m,
            "service_account",
            field,
            lambda v: (
                None
                if UPN_RE.fullmatch(v) or is_guid(v)
                else "expected a user principal name (name@domain) or an Entra object id (GUID)"
            ),
        )
        connections_url, _ = self.url(m, "connections_url", field, allow_local=False)
        cloud = self.choice(m, "cloud", field, CLOUDS) or "public"
        url_node = m.get("url")
        if url is not None and local_path is None:
            # A remote environment needs credentials; a local: one is served in-process.
            if m.get("auth") is None:
                self.error(
                    m,
                    join_path(field, "auth"),
                    "required key is missing (the auth profile for a remote environment)",
                )
            loopback = is_loopback_url(url)
            if not loopback and m.get("environment_id") is None and m.get("connections_url") is None:
                self.error(
                    m,
                    join_path(field, "environment_id"),
                    "required key is missing (the connections API is addressed by environment id)",
                )
        grants: set[str] = set()
        bindings = self.bindings(m.get("bindings"), join_path(field, "bindings"), references, grants)
        grant_access = self.boolean(m, "grant_access", field)
        flows = self.flow_settings(m.get("flows"), join_path(field, "flows"))
        if url is None or url_node is None or bindings is None or flows is None:
            return None
        return EnvironmentConfig(
            name=name,
            url=url,
            environment_id=environment_id.lower()
            if environment_id and not environment_id.startswith("Default-")
            else environment_id,
            auth=auth_name,
            service_account=service_account,
            bindings=frozen_map(bindings),
            connections_url=connections_url,
            cloud=cloud,
            local_path=local_path,
            location=m.loc,
            grant_access=grant_access,
            grant_bindings=frozenset(grants),
            flows=flows,
        )

    def flow_settings(self, node: YNode | None, field: str) -> FlowSettings | None:
        """``flows:`` of an environment (docs/config.md): ``activate`` (a boolean), ``keep_off`` (flow names
        or workflow ids, each once) and ``wait_seconds`` (0 to 3600). Absent: the defaults."""
        if node is None or (isinstance(node, Scalar) and node.value is None):
            return FlowSettings()
        m = self.mapping(node, field)
        if m is None:
            return None
        ok = True
        self.keys(m, field, FLOW_KEYS)
        activate = True
        a = m.get("activate")
        if a is not None:
            if isinstance(a, Scalar) and isinstance(a.value, bool):
                activate = a.value
            else:
                self.type_error(a, join_path(field, "activate"), "true or false")
                ok = False
        keep_off: list[str] = []
        k = m.get("keep_off")
        if k is not None and not (isinstance(k, Scalar) and k.value is None):
            if not isinstance(k, Seq):
                self.type_error(k, join_path(field, "keep_off"), "a list of flow names or workflow ids")
                ok = False
            else:
                seen: dict[str, int] = {}
                for i, item in enumerate(k.items):
                    path = join_path(join_path(field, "keep_off"), i)
                    if not isinstance(item, Scalar) or not isinstance(item.value, str):
                        self.type_error(item, path, "a flow name or workflow id (a string)")
                        ok = False
                    elif not item.value.strip():
                        self.error(item, path, "must not be empty")
                        ok = False
                    elif item.value.strip().lower() in seen:
                        first = seen[item.value.strip().lower()]
                        self.error(item, path, f"'{item.value}' is already listed (item {first}); flow names "
                                               "compare without case")
                        ok = False
                    else:
                        seen[item.value.strip().lower()] = i
                        keep_off.append(item.value.strip())
        wait = self.seconds(m.get("wait_seconds"), join_path(field, "wait_seconds"), "a whole number of seconds",
                            f"must be from 0 to {MAX_FLOW_WAIT_SECONDS} seconds", 0, MAX_FLOW_WAIT_SECONDS)
        if not ok or wait is False:
            return None
        if wait is None:
            wait = DEFAULT_FLOW_WAIT_SECONDS
        return FlowSettings(activate=activate, keep_off=tuple(keep_off), wait_seconds=wait, location=m.loc)

    def seconds(self, node: YNode | None, path: str, expected: str, out_of_range: str, low: int,
                high: int) -> int | Literal[False] | None:
        """A whole number from ``low`` to ``high`` written in plain decimal; None when absent, False (reported)
        when it is not one."""
        if node is None:
            return None
        if not isinstance(node, Scalar) or not isinstance(node.value, int) or isinstance(node.value, bool):
            self.type_error(node, path, expected)
            return False
        problem = _int_form_problem(node)
        if problem:
            self.error(node, path, problem)
            return False
        if not low <= node.value <= high:
            self.error(node, path, f"{out_of_range} (got {node.value})")
            return False
        return node.value

    def url(self, m: Map, key: str, field: str, *, allow_local: bool) -> tuple[str | None, str | None]:
        """Returns ``(url, local_path)``; ``local_path`` is the absolute data file for ``local:PATH``."""
        value = self.string(m, key, field, nullable=False)
        if value is None:
            return None, None
        node = self.node_of(m, key)
        path = join_path(field, key)
        value = value.strip()
        if value.lower().startswith("local:"):
            if not allow_local:
                self.error(node, path, "local: is only for an environment's url")
                return None, None
            rel = value[len("local:") :].strip()
            if not rel:
                self.error(node, path, "local: needs the path of an emulator data file, e.g. local:dev.json")
                return None, None
            full = self.ctx.resolve(rel)
            if os.path.isdir(full):
                self.error(node, path, f"local: names a directory, {rel} ({full}); it takes an emulator data file, "
                           "e.g. local:dev.json")
                return None, None
            if not os.path.isfile(full):
                self.error(
                    node,
                    path,
                    f"local data file not found: {rel} (looked for {full}; "
                    "a local: path is relative to the config file)",
                )
                return None, None
            return value, full
        problem = url_problem(value)
        if problem:
            self.error(node, path, problem)
            return None, None
        return value.rstrip("/"), None

    def bindings(self, node: YNode | None, field: str, references: list[str] | None,
                 grants: set[str] | None = None) -> dict[str, Binding] | None:
        if node is None or (isinstance(node, Scalar) and node.value is None):
            return {}  # no bindings: every reference stays as it is (unbound is allowed)
        m = self.mapping(node, field)
        if m is None:
            return None
        out: dict[str, Binding] = {}
        declared = self.declared(references)
        by_lower: dict[str, str] | None = None  # the declared names by lower case, made for the first stray key
        for key, value in m.pairs:
            path = join_path(field, key.text)
            if references is not None and key.text not in declared:
                if by_lower is None:
                    by_lower = {}
                    for r in references:
                        by_lower.setdefault(r.lower(), r)
                same_case = [by_lower[key.text.lower()]] if key.text.lower() in by_lower else []
                if same_case:
                    self.error(
                        key,
                        path,
                        f"differs in case from the declared reference {same_case[0]}; write it exactly",
                    )
                else:
                    close = difflib.get_close_matches(key.text, references, n=1, cutoff=0.6)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    self.error(key, path, f"binding names a reference that is not declared under references{hint}")
            binding = self.binding(value, path)
            if binding is not None:
                out[key.text] = binding
                if grants is not None and isinstance(value, Map) and self.boolean(value, "grant_access", path):
                    grants.add(key.text.lower())
        return out

    def declared(self, references: list[str] | None) -> set[str]:
        """``references`` as a set, made once for all the environments that bind them."""
        if references is None:
            return set()
        if self._declared is None or self._declared[0] is not references:
            self._declared = (references, set(references))
        return self._declared[1]

    def binding(self, node: YNode, field: str) -> Binding | None:
        if isinstance(node, Map) and node.get("name") is not None and node.get("owner") is None:
            self.keys(node, field, NAMED_BINDING_KEYS, required=NAMED_BINDING_REQUIRED)
            named = node.get("name")
            assert named is not None
            return self.binding(named, join_path(field, "name"))
        if isinstance(node, Map):
            self.keys(node, field, SELECTOR_KEYS, required=SELECTOR_REQUIRED)
            owner = self.checked(node, "owner", field, _owner_problem, nullable=False)
            display_name = self.string(node, "display_name", field, max_len=MAX_DISPLAY_NAME)
            if owner is None:
                return None
            return Selector(owner=owner, display_name=display_name)
        if isinstance(node, Scalar) and node.value is None:
            self.error(
                node,
                field,
                "expected a connection name or a selector {owner: ...}; to leave a reference unbound, omit it",
            )
            return None
        if not isinstance(node, Scalar) or not isinstance(node.value, str):
            self.type_error(node, field, "a connection name (string) or a selector {owner: ..., display_name: ...}")
            return None
        if id(node) in self.flagged:
            return None
        name = node.value.strip()
        problem = connection_name_problem(name)
        if problem:
            self.error(node, field, problem)
            return None
        return name

    # ------------------------------------------------------------------ auth

    def auth_profiles(self, m: Map | None) -> dict[str, AuthProfile] | None:
        if m is None:
            return None
        out: dict[str, AuthProfile] = {}
        for key, value in m.pairs:
            field = join_path("auth", key.text)
            if not ENV_NAME_RE.fullmatch(key.text):
                self.error(key, field, "a profile name may contain only letters, digits, '_', '.' and '-'")
                continue
            profile = self.auth_profile(key.text, value, field)
            if profile is not None:
                out[key.text] = profile
        return out

    def auth_profile(self, name: str, node: YNode, field: str) -> AuthProfile | None:
        m = self.mapping(node, field)
        if m is None:
            return None
        method = self.auth_method(m, field)
        if method is None:
            return None
        errors_before = len(self.errors)
        tenant = self.checked(m, "tenant_id", field, _tenant_problem)
        client = self.checked(m, "client_id", field, _guid_check("application (client) id"))
        options = self.auth_options(m, field)
        self.auth_requirements(m, field, method, options)
        if len(self.errors) != errors_before:
            return None
        return AuthProfile(
            name=name,
            method=method,
            tenant_id=tenant.lower() if tenant and is_guid(tenant) else tenant,
            client_id=client.lower() if client else None,
            options=frozen_map(options),
            location=m.loc,
        )

    def auth_method(self, m: Map, field: str) -> str | None:
        """The profile's ``method``, with its keys checked against what that method takes; None (and
        every key checked against all methods' keys) when it is missing or unknown."""
        method = self.choice(m, "method", field, tuple(AUTH_METHOD_KEYS), nullable=False)
        if m.get("method") is None:
            self.error(
                m,
                join_path(field, "method"),
                f"required key is missing (one of: {', '.join(AUTH_METHOD_KEYS)})",
            )
        if method is None:
            self.keys(m, field, ALL_AUTH_KEYS)
            return None
        allowed = ("method", *AUTH_METHOD_KEYS[method], *COMMON_AUTH_KEYS)
        self.keys(m, field, allowed, why_not=lambda key: _auth_key_of_other_methods(method, key))
        return method

    def auth_options(self, m: Map, field: str) -> dict[str, Any]:
        """The profile's options that are given, checked and normalised (file paths absolute, GUIDs in
        lower case, audience and authority host trimmed)."""
        options: dict[str, Any] = {}
        for key in AUTH_ENV_KEYS:
            options[key] = self.checked(m, key, field, env_var_problem)
        for key in FILE_KEYS:
            path = self.string(m, key, field)
            if path is not None and _pasted_secret(path, self.ctx.resolve(path)):
                self.error(self.node_of(m, key), join_path(field, key),
                           "this value looks like a secret, not the path of a file (no file has that name); "
                           "secrets must not be written in the config file: put the secret in a file and "
                           f"give {key} its path, or use an environment variable")
                path = None
            options[key] = None if path is None else self.ctx.resolve(path)
        for key, what in AUTH_GUID_KEYS:
            guid = self.checked(m, key, field, _guid_check(what))
            options[key] = None if guid is None else guid.lower()
        audience = self.string(m, "federated_audience", field)
        options["federated_audience"] = None if audience is None else audience.strip()
        options["federated_provider"] = self.choice(m, "federated_provider", field, FEDERATED_PROVIDERS)
        options["cloud"] = self.choice(m, "cloud", field, CLOUDS)
        options["authority_host"] = self.authority_host(m, field)
        return {k: v for k, v in options.items() if v is not None}

    def authority_host(self, m: Map, field: str) -> str | None:
        authority = self.string(m, "authority_host", field)
        if authority is None:
            return None
        problem = url_problem(authority.strip())
        if problem:
            self.error(self.node_of(m, "authority_host"), join_path(field, "authority_host"), problem)
            return None
        return authority.strip().rstrip("/")

    def auth_requirements(self, m: Map, field: str, method: str, options: Mapping[str, Any]) -> None:
        """Errors for the keys ``method`` needs and does not have (``AUTH_NEEDS``)."""
        # With a secret written inline, that error already says which key to use instead.
        inline_secret = any(_secret_key(k) for k in m.key_texts())
        needs, one_of = AUTH_NEEDS.get(method, ((), ()))
        for k in needs:
            if m.get(k) is None and not inline_secret:
                self.error(m, join_path(field, k), f"required key is missing (method {method} needs it)")
        for keys in one_of:
            present = [k for k in keys if m.get(k) is not None]
            if not present and not inline_secret:
                self.error(m, field, f"method {method} needs one of {', '.join(keys)}; none is given")
            elif len(present) > 1:
                self.error(
                    self.node_of(m, present[1]),
                    join_path(field, present[1]),
                    f"method {method} takes only one of {', '.join(keys)}; {' and '.join(present)} are both given",
                )
        if (method == "federated" and options.get("federated_provider") == "azure_devops"
                and m.get(AZURE_DEVOPS_REQUIRED) is None):
            self.error(
                m,
                join_path(field, AZURE_DEVOPS_REQUIRED),
                "required key is missing (federated_provider azure_devops needs the service connection id)",
            )

    # ------------------------------------------------------------------ lint, state

    def lint(self, m: Map | None) -> tuple[str, ...]:
        if m is None:
            return ()
        self.keys(m, "lint", LINT_KEYS)
        node = m.get("ignore")
        if node is None or (isinstance(node, Scalar) and node.value is None):
            return ()
        if not isinstance(node, Seq):
            self.type_error(node, "lint.ignore", "a list of finding codes")
            return ()
        codes: list[str] = []
        for i, item in enumerate(node.items):
            path = join_path("lint.ignore", i)
            if not isinstance(item, Scalar) or not isinstance(item.value, str):
                self.type_error(item, path, "a string")
            elif not LINT_CODE_RE.fullmatch(item.value):
                self.error(item, path, "expected a finding code (letters, digits, '_' or '-')")
            elif item.value.strip().lower() not in _FINDING_NAMES:
                # A misspelt entry would silently ignore nothing: say so, with the nearest code or name.
                close = difflib.get_close_matches(item.value.strip().lower(), _FINDING_NAMES, n=1, cutoff=0.6)
                hint = f"; did you mean '{_FINDING_NAMES[close[0]]}'?" if close else ""
                self.error(item, path, f"unknown finding code or name '{item.value}'{hint} (the codes and "
                           "names are in docs/adoption.md)")
            else:
                codes.append(item.value)
        return tuple(codes)

    def state(
        self, m: Map | None, auth: list[str] | None
    ) -> tuple[str | None, AzureStateConfig | None]:
        """``state:``: the local directory (``dir``), or ``backend: azurerm`` and its keys."""
        if m is None:
            return None, None
        backend = self.choice(m, "backend", "state", STATE_BACKENDS) if m.get("backend") is not None else "local"
        if backend is None:  # an invalid backend name, reported: check the keys against both backends
            self.keys(m, "state", tuple(dict.fromkeys((*STATE_KEYS, *AZURERM_STATE_KEYS))))
            return None, None
        if backend == "local":
            self.keys(m, "state", STATE_KEYS,
                      why_not=lambda k: f"{k} belongs to the azurerm backend (backend: azurerm)"
                      if k in AZURERM_STATE_KEYS else None)
            value = self.string(m, "dir", "state")
            if value is None:
                return None, None
            full = self.ctx.resolve(value)
            # It need not exist yet (the first apply makes it), but something else in its place is a mistake
            # better reported here, at its line, than by the first command that reads state.
            if os.path.exists(full) and not os.path.isdir(full):
                self.error(self.node_of(m, "dir"), "state.dir",
                           f"{value} ({full}) is not a directory; state.dir names the directory state is kept in")
                return None, None
            return full, None
        return None, self.azurerm_state(m, auth)

    def azurerm_state(self, m: Map, auth: list[str] | None) -> AzureStateConfig | None:
        errors_before = len(self.errors)
        self.keys(m, "state", AZURERM_STATE_KEYS, required=AZURERM_STATE_REQUIRED,
                  why_not=lambda k: "dir is for the local backend; the azurerm backend keeps state in the container"
                  if k == "dir" else None)
        container = self.checked(m, "container", "state", _container_problem, nullable=False)
        key_prefix = self.checked(m, "key_prefix", "state", _key_prefix_problem)
        account_url = self.checked(m, "account_url", "state", _account_url_problem)
        conn_env = self.checked(m, "connection_string_env", "state", env_var_problem)
        auth_name = self.auth_name(m, "state", auth)
        def given(key: str) -> bool:
            node = m.get(key)
            return node is not None and not (isinstance(node, Scalar) and node.value is None)

        has_auth, has_conn = given("auth"), given("connection_string_env")
        # An inline connection string was reported as a secret: that error already says what to write.
        inline = given("connection_string")
        if has_auth and has_conn:
            self.error(self.node_of(m, "connection_string_env"), "state.connection_string_env",
                       "give either auth (an auth profile, for Azure) or connection_string_env (for Azurite), not both")
        elif not has_auth and not has_conn and not inline:
            self.error(m, "state.auth", "the azurerm backend needs auth (an auth profile whose identity may read "
                       "and write blobs in the container) or connection_string_env (for Azurite)")
        if has_auth and not given("account_url"):
            self.error(m, "state.account_url",
                       "required key is missing (the storage account's blob endpoint, "
                       "https://ACCOUNT.blob.core.windows.net)")
        elif has_auth and account_url and urlsplit(account_url.strip()).scheme.lower() == "http":
            # The storage SDK refuses to send a bearer token over plain http, even to loopback: caught here,
            # at the line, rather than by the first command that reaches the blob service.
            self.error(self.node_of(m, "account_url"), "state.account_url",
                       "plain http cannot be used with auth: the storage SDK sends tokens only over https; over "
                       "http use connection_string_env instead of auth (e.g. for Azurite)")
        given_lease = self.seconds(m.get("lease_duration"), "state.lease_duration",
                                   f"an integer number of seconds ({LEASE_MIN}-{LEASE_MAX})",
                                   f"a blob lease lasts {LEASE_MIN} to {LEASE_MAX} seconds", LEASE_MIN, LEASE_MAX)
        lease = given_lease if isinstance(given_lease, int) and not isinstance(given_lease, bool) else LEASE_DEFAULT
        if len(self.errors) != errors_before or container is None:
            return None
        return AzureStateConfig(
            container=container,
            key_prefix=key_prefix or "",
            account_url=account_url.rstrip("/") if account_url else None,
            auth=auth_name,
            connection_string_env=conn_env,
            lease_duration=lease,
            location=m.loc,
        )


def _container_problem(value: str) -> str | None:
    if CONTAINER_RE.fullmatch(value):
        return None
    return ("expected a container name: 3-63 lowercase letters, digits and single hyphens, starting with a "
            "letter or digit")


def _key_prefix_problem(value: str) -> str | None:
    if value.startswith("/") or "\\" in value or any(ord(c) < 32 for c in value):
        return "expected a blob name prefix such as 'connref/' (no leading '/', no backslash or control character)"
    if len(value) > MAX_KEY_PREFIX:
        return f"a blob name prefix may be at most {MAX_KEY_PREFIX} characters"
    return None


def _account_url_problem(value: str) -> str | None:
    problem = url_problem(value)
    if problem:
        return problem.replace(" (or local:PATH for the built-in emulator)", "")
    if urlsplit(value).query:
        return "expected the blob endpoint without a query (no SAS token: use auth or connection_string_env)"
    return None


def _items(node: YNode | None) -> list[YNode]:
    return node.items if isinstance(node, Seq) else []


# ---------------------------------------------------------------------- entry points


def _path_index(root: YNode) -> dict[int, str]:
    """Field path of every node (the first path it is reached by, for shared alias targets)."""
    paths: dict[int, str] = {id(root): ""}
    stack: list[tuple[YNode, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        children: list[tuple[YNode, str]] = []
        if isinstance(node, Map):
            for k, v in node.pairs:
                p = join_path(path, k.text)
                children.append((k, p))
                children.append((v, p))
        elif isinstance(node, Seq):
            children = [(v, join_path(path, i)) for i, v in enumerate(node.items)]
        for child, p in children:
            if id(child) not in paths:
                paths[id(child)] = p
                stack.append((child, p))
    return paths


class _LazyPaths(Mapping[int, str]):
    """``_path_index(root)``, built only when a secret is found (a config without one never pays
    for the walk)."""

    def __init__(self, root: YNode) -> None:
        self._root = root
        self._index: dict[int, str] | None = None

    def _paths(self) -> dict[int, str]:
        if self._index is None:
            self._index = _path_index(self._root)
        return self._index

    def __getitem__(self, key: int) -> str:
        return self._paths()[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self._paths())

    def __len__(self) -> int:
        return len(self._paths())


def _may_hold_secrets(strings: Strings) -> bool:
    """False when no key of the tree is secret-named and no string in it holds a fragment a secret value
    needs: then ``scan_secrets`` would find nothing, and its walk over every node is skipped. Checked on
    all the strings joined (a line each), so the answer costs a few scans of the text at C speed."""
    keys = "\n".join(strings.keys) + "\n"
    everything = keys + "\n".join(strings.values)
    if any(fragment in everything for fragment in SECRET_VALUE_FRAGMENTS):
        return True
    # A secret-named key ends with one of the words (``_SECRET_KEY_RE``): then the word is followed by
    # the newline that ends the key here.
    keys = keys.lower().replace("-", "_")
    return any(word + "\n" in keys for word in _SECRET_KEY_WORDS)


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Load without the cyclic garbage collector. A large config makes a few hundred thousand objects
    (tree nodes, locations, model records), none of them in a cycle and all alive until the load ends,
    so the collector's passes free nothing, yet each full one walks the growing tree again: a third of
    the CPU of loading a 20,000-line config. Reference counting frees everything as before; the
    collector is switched back on (if it was on) however the load ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")


def _int_form_problem(node: Scalar) -> str | None:
    """Why an integer is refused although YAML read it as one: YAML 1.1 (what PyYAML reads) takes ``010`` as
    octal 8, ``0x10`` as 16, ``1:30`` as 90 and ``1_000`` as 1000; a setting read as another number than the
    one written is refused, not guessed."""
    if _PLAIN_INT.fullmatch(node.text.strip()):
        return None
    return (f"{node.text.strip()} is read as {node.value} by YAML (a leading 0 is octal, 0x hexadecimal, a colon "
            "base 60); write the number in plain decimal")


def _without_secrets(text: str, secrets: Collection[str]) -> str:
    """``text`` with each of ``secrets`` (the strings reported as secrets) and whatever else is shaped like
    a token replaced by what it is. A key can be a pasted secret, and every field path below it repeats
    it: the value is refused, and must not be echoed."""
    for secret in secrets:
        text = text.replace(secret, "(a secret)")
    if "-----BEGIN " in text or "eyJ" in text:
        text = JWT.sub("(a token)", PEM_RE.sub("(a PEM block)", text))
    return text


def _screened(error: ConfigError, secrets: Collection[str]) -> ConfigError:
    field = _without_secrets(error.field, secrets) if error.field else error.field
    message = _without_secrets(error.message, secrets)
    if field == error.field and message == error.message:
        return error
    return ConfigError(message, error.location, field)


def _raise(errors: list[ConfigError], secrets: Collection[str] = ()) -> None:
    errors = [_screened(e, secrets) for e in errors]
    ordered = sorted(errors, key=lambda e: (e.location.line, e.location.column) if e.location else (0, 0))
    if len(ordered) == 1:
        raise ordered[0]
    raise ConfigErrors(ordered)


def load_config_text(text: str, path: str) -> Config:
    """Validate YAML ``text`` as if read from ``path`` (relative paths resolve against its folder)."""
    with _cyclic_gc_paused():
        return _load_config_text(text, path)


def _load_config_text(text: str, path: str) -> Config:
    ctx = _Ctx(file=path, base_dir=os.path.dirname(os.path.abspath(path)))
    parsed = parse_document(text, path)
    root, errors = parsed.tree, parsed.errors
    if root is None and not errors:
        raise ConfigError(
            "the config file is empty; it needs at least version, solution, references and environments",
            Location(path, 1, 1),
        )
    if root is None:
        _raise(errors)
    assert root is not None
    validator = _Validator(ctx)
    validator.errors.extend(errors)
    if parsed.strings is None or _may_hold_secrets(parsed.strings):
        validator.scan_secrets(root, _LazyPaths(root))
    config = validator.document(root)
    if validator.errors or config is None:
        _raise(validator.errors or [ConfigError("invalid config", root.loc)], validator.secret_texts)
    assert config is not None
    return config


#: What a path that is not a regular file is, as error messages say it (config, plan files, outputs).
FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


#: The largest config file read: a config of 10,000 references bound in 20 environments is about 13 MB.
MAX_CONFIG_BYTES = 32 * 1024 * 1024


def _too_big(path: str, size: int | None) -> str:
    what = f"is {size / (1024 * 1024):.1f} MiB" if size is not None else "grew past the limit while it was read"
    return (f"the config file {inert(path)} {what}; connref reads config files of at most "
            f"{MAX_CONFIG_BYTES // (1024 * 1024)} MiB ({MAX_CONFIG_BYTES} bytes)")


def read_config_bytes(path: str) -> bytes:
    """The bytes of the config file at ``path``, which must be a regular file (or a link to one).

    The file is opened without blocking, so a named pipe with no writer is refused at once instead of
    hanging ``validate``; devices (``/dev/zero``) and directories are refused before any read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {inert(path)}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((what for test, what in FILE_KINDS if test(mode)), "not a file")
            raise ConfigError(
                f"cannot read the config file {inert(path)}: it is {kind}, not a regular file; "
                "give the path of a YAML file with -c"
            )
        size = os.fstat(fd).st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(_too_big(path, size))
        if flags & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # the file object owns it now
            raw = fh.read(MAX_CONFIG_BYTES + 1)  # a file that grows while it is read stops here too
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(_too_big(path, None))
        return raw
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {inert(path)}: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def load_config(path: str) -> Config:
    """Read, validate and return the config at ``path``; raises ``ConfigError`` (one problem) or
    ``ConfigErrors`` (several), each naming ``file:line:column`` and the field."""
    raw = read_config_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError("the config file is not valid UTF-8", Location(path, line, column)) from None
    return load_config_text(text, path)
