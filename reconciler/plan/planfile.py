"""Saved plan files: ``connref plan --out FILE`` writes one, ``connref apply FILE`` applies exactly it.

A plan file is versioned JSON holding the plan (its operations, as ``Plan.to_dict()``), the options it
was made with, the digest of the config, and for each environment what the plan was made against: the
state's serial, lineage and digest, the live fingerprint, and the ETag of every live reference row.

At apply time ``check_fresh`` compares those with the present and raises StalePlanError when anything
moved, so a plan is never applied to a world it was not made for. This follows Terraform's saved plans
(``internal/backend/local/backend_local.go``: "Saved plan is stale" on a serial change, "does not match the
given state" on a lineage change) and Atlas's pre-approved plans (refused when the live hash moved).

A plan file travels between jobs (a pipeline artifact), so it is not trusted as written: ``read_plan_file``
checks it against its JSON Schema (``reconciler/schemas/saved-plan-1.json``) and rebuilds every operation
before anything else, and refuses a plan that names an environment its freshness block does not; at apply
time ``check_derived`` compares its operations with the plan made again from the config (whose digest the
file records) and the environment as read, and refuses the file unless they are the same operations
(``to_dict()`` equality, whatever their kind), nor a delete of a reference the state does not record as
managed. An edited plan (another connection, another owner, another row, a delete connref never managed)
is refused with what differs, and nothing is written.

A plan file never holds a secret: only what the plan needs, and ``write_plan_file`` refuses to write when
a secret value known to the run (the values of the ``*_env`` variables of the auth profiles, plus any the
caller passes) would appear in it. The file is written with mode 0600 all the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.domain.model import Config, LiveEnvironment, frozen_map
from reconciler.domain.patterns import has_jwt
from reconciler.domain.text import inert, json_text
from reconciler.errors import PlanError, StalePlanError
from reconciler.schemas.validate import problems
from reconciler.state.jsonfile import JsonFileProblem, load_json
from reconciler.state.local import atomic_write
from reconciler.state.model import EnvState

FORMAT_VERSION = "1.0"
KIND = "connref-saved-plan"
REPLAN = "Run `connref plan --out FILE` again and apply the new plan."

_SECRET_FILE_KEYS = ("client_secret_file", "federated_token_file")
# Option names that must never be saved, whatever a caller passes (belt and braces with the value scan).
_SECRET_WORDS = ("secret", "token", "password", "passphrase", "assertion", "private_key", "credential")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SavedEnvironment:
    """What one environment looked like when the plan was made."""

    environment: str
    state_serial: int | None  # None: no state yet
    state_lineage: str | None
    state_digest: str | None
    live_fingerprint: str
    etags: Mapping[str, str] = field(default_factory=frozen_map, hash=False)  # logical name -> ETag

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": (
                None
                if self.state_serial is None
                else {"serial": self.state_serial, "lineage": self.state_lineage, "digest": self.state_digest}
            ),
            "live_fingerprint": self.live_fingerprint,
            "etags": dict(sorted(self.etags.items(), key=lambda kv: kv[0].lower())),
        }

    @classmethod
    def from_dict(cls, env: str, d: Mapping[str, Any]) -> SavedEnvironment:
        st = d.get("state")
        return cls(
            environment=env,
            state_serial=None if st is None else int(st["serial"]),
            state_lineage=None if st is None else st.get("lineage"),
            state_digest=None if st is None else st.get("digest"),
            live_fingerprint=str(d.get("live_fingerprint", "")),
            etags=frozen_map({str(k): str(v) for k, v in (d.get("etags") or {}).items()}),
        )


@dataclass(frozen=True)
class SavedPlan:
    """A plan file as read. ``plan`` is the ``Plan.to_dict()`` data; ``load_plan()`` rebuilds the object."""

    format_version: str
    created_at: str
    config_path: str | None
    config_digest: str
    options: Mapping[str, Any]
    environments: Mapping[str, SavedEnvironment]
    plan: Mapping[str, Any]
    path: str | None = None

    def load_plan(self) -> Any:
        """The typed ``reconciler.plan.ops.Plan`` (ValueError on a malformed or unknown-major plan body)."""
        from reconciler.plan.ops import Plan

        return Plan.from_dict(self.plan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "kind": KIND,
            "created_at": self.created_at,
            "config": {"path": self.config_path, "digest": self.config_digest},
            "options": dict(sorted(self.options.items())),
            "environments": {k: self.environments[k].to_dict() for k in sorted(self.environments)},
            "plan": dict(self.plan),
        }


# --------------------------------------------------------------------------- helpers for callers


def config_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:`` of the config file's bytes."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def live_etags(live: LiveEnvironment) -> dict[str, str]:
    """Logical name -> ETag of every reference row read (in the solution or not)."""
    return {r.logical_name: r.etag for r in live.references}


def secret_values(config: Config | None, extra: Iterable[str] = ()) -> set[str]:
    """The secret values known to this run: every environment variable an auth profile names with a
    ``*_env`` key (client secrets, access tokens, federated tokens), the content of its secret files
    (``client_secret_file``, ``federated_token_file``), plus ``extra`` (e.g. the federated assertions
    fetched). Short values are ignored: they would match by accident and are not credentials."""
    found = {s for s in extra if s and len(s) >= 8}
    if config is not None:
        for profile in config.auth.values():
            for key, name in profile.options.items():
                value: str | None = None
                if key.endswith("_env") and isinstance(name, str):
                    value = os.environ.get(name)
                elif key in _SECRET_FILE_KEYS and isinstance(name, str):
                    try:
                        with open(name, encoding="utf-8") as f:
                            value = f.read(65536).strip()
                    except (OSError, UnicodeDecodeError):
                        value = None
                if value and len(value) >= 8:
                    found.add(value)
    return found


def _clean_options(options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in options.items():
        if any(w in k.lower() for w in _SECRET_WORDS):
            continue
        out[str(k)] = v
    return out


def _plan_dict(plan: Any) -> dict[str, Any]:
    if isinstance(plan, Mapping):
        return dict(plan)
    d = plan.to_dict()
    if not isinstance(d, dict):
        raise PlanError("plan.to_dict() did not return a mapping")
    return d


# --------------------------------------------------------------------------- write / read


def write_plan_file(
    path: str | os.PathLike[str],
    plan: Any,
    *,
    config_digest: str,
    states: Mapping[str, EnvState | None],
    live_fingerprints: Mapping[str, str],
    etags: Mapping[str, Mapping[str, str]],
    options: Mapping[str, Any] | None = None,
    config_path: str | None = None,
    config: Config | None = None,
    secrets: Iterable[str] = (),
    created_at: str | None = None,
) -> SavedPlan:
    """Write ``plan`` (an ``ops.Plan`` or its ``to_dict()``) and what it was made against to ``path``.

    ``states``, ``live_fingerprints`` and ``etags`` are keyed by environment name (every environment of the
    plan must be in ``live_fingerprints``); ``etags`` maps logical name -> ETag of each live row
    (``live_etags(live)``). ``options`` are the planning flags (``prune``, environments, ...). ``config``
    lets the writer find the run's secret values to check against; ``secrets`` adds more. Written
    atomically with mode 0600. Raises PlanError (and writes nothing) if a secret would be saved."""
    envs: dict[str, SavedEnvironment] = {}
    for env, fingerprint in live_fingerprints.items():
        st = states.get(env)
        envs[env] = SavedEnvironment(
            environment=env,
            state_serial=st.serial if st else None,
            state_lineage=st.lineage if st else None,
            state_digest=st.digest if st else None,
            live_fingerprint=fingerprint,
            etags=frozen_map(dict(etags.get(env, {}))),
        )
    saved = SavedPlan(
        format_version=FORMAT_VERSION,
        created_at=created_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        config_path=config_path,
        config_digest=config_digest,
        options=frozen_map(_clean_options(options or {})),
        environments=frozen_map(envs),
        plan=frozen_map(_plan_dict(plan)),
        path=str(path),
    )
    # Names from live data are written as they are, except what could act on a terminal when the file is
    # printed (a bidi override, a C1 control, a lone surrogate): those as \u escapes, the same JSON value.
    text = json_text(json.dumps(saved.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    leaked = has_jwt(text)  # a JWT is a secret wherever it appears
    for value in secret_values(config, secrets):
        # json.dumps escapes some characters, so look for the raw and the JSON-escaped form.
        leaked = leaked or value in text or json.dumps(value)[1:-1] in text
    if leaked:
        raise PlanError(
            f"refusing to write plan file {path}: it would contain a secret value known to this run "
            "(or a token). Nothing was written."
        )
    atomic_write(Path(path), text.encode("utf-8"), mode=0o600)
    return saved


def read_plan_file(path: str | os.PathLike[str]) -> SavedPlan:
    """Read a plan file. Unknown fields of a known major version are ignored (a newer minor only adds
    fields); an unknown major version is a StalePlanError telling to plan again with this connref; a
    missing, unreadable or damaged file, or one that is not a connref plan, is a PlanError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError as e:
        raise PlanError(f"plan file {p} does not exist.") from e
    except OSError as e:
        raise PlanError(f"plan file {p} cannot be read ({e.strerror or e}). {REPLAN}") from e
    try:
        doc = load_json(raw)
    except JsonFileProblem as e:
        raise PlanError(f"plan file {p} cannot be read as JSON ({e}). {REPLAN}") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise PlanError(f"{p} is not a connref plan file (write one with `connref plan --out FILE`).")
    version = str(doc.get("format_version", ""))
    major = version.split(".")[0]
    if major != FORMAT_VERSION.split(".")[0]:
        raise StalePlanError(
            f"plan file {p} has format_version {version!r}; this connref reads "
            f"{FORMAT_VERSION.split('.')[0]}.x. {REPLAN}"
        )
    found = problems("saved-plan", doc)
    if found:
        raise PlanError(f"plan file {p} is not a valid connref plan (reconciler/schemas/saved-plan-1.json); "
                        "nothing was applied:\n" + "\n".join(f"  - {inert(x)}" for x in found) + f"\n{REPLAN}")
    saved = _saved_plan(doc, p, version)
    _check_environments(saved)
    return saved


def _saved_plan(doc: Mapping[str, Any], p: Path, version: str) -> SavedPlan:
    """The ``SavedPlan`` of a document the schema accepted, its plan rebuilt once (an operation that does not
    rebuild is a PlanError here, not a traceback halfway through an apply)."""
    try:
        cfg = doc.get("config") or {}
        saved = SavedPlan(
            format_version=version,
            created_at=str(doc["created_at"]),
            config_path=cfg.get("path"),
            config_digest=str(cfg["digest"]),
            options=frozen_map(doc.get("options") or {}),
            environments=frozen_map(
                {
                    env: SavedEnvironment.from_dict(env, d)
                    for env, d in (doc.get("environments") or {}).items()
                }
            ),
            plan=frozen_map(doc["plan"]),
            path=str(p),
        )
        saved.load_plan()
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PlanError(f"plan file {p} is damaged: missing or invalid field ({inert(str(e))}). {REPLAN}") from e
    return saved


def _check_environments(saved: SavedPlan) -> None:
    """A plan acts only on environments its freshness block records what they looked like."""
    planned = [e.environment for e in saved.load_plan().environments]
    outside = [e for e in planned if e not in saved.environments]
    twice = sorted({e for e in planned if planned.count(e) > 1})
    if outside or twice:
        what = (f"environment(s) its freshness block does not record: {', '.join(outside)}" if outside
                else f"environment(s) twice: {', '.join(twice)}")
        raise PlanError(inert(f"plan file {saved.path} names {what}; nothing was applied. {REPLAN}"))


def check_applyable(saved: SavedPlan) -> None:
    """Refuse (StalePlanError) a plan saved by a connref that did not record what apply needs besides
    the operations (the identity writes act as, the solution component type: ``ops.ApplyFacts``): apply
    takes them from the plan and reads nothing to decide what to write, so such a plan is planned again
    rather than guessed at."""
    from reconciler.plan.ops import Plan

    try:
        plan = Plan.from_dict(saved.plan)
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"plan file {saved.path} is damaged: {e}. {REPLAN}") from e
    without = [env.environment for env in plan.environments if env.ops and env.facts is None]
    if without:
        raise StalePlanError(
            f"plan file {saved.path} was made by an earlier connref: it does not record the identity writes "
            f"act as and the solution component type of {', '.join(without)}, which apply now takes from the "
            f"plan. {REPLAN}"
        )


# --------------------------------------------------------------------------- freshness


def stale_reasons(
    saved: SavedPlan,
    *,
    current_state_by_env: Mapping[str, EnvState | None],
    current_live_fingerprint_by_env: Mapping[str, str] | None = None,
    current_etags: Mapping[str, Mapping[str, str]] | None = None,
    current_config_digest: str | None = None,
) -> list[str]:
    """Every reason ``saved`` no longer applies, one sentence each (empty: the plan is fresh).

    Only the environments of the plan are checked. ``current_etags`` is keyed by environment, then logical
    name (``live_etags(live)``); when given for an environment, ETag moves are named per reference and
    they explain a fingerprint move, which is then not reported twice."""
    reasons: list[str] = []
    if current_config_digest is not None and current_config_digest != saved.config_digest:
        reasons.append("the config file changed since the plan was made")
    for env in sorted(saved.environments):
        was = saved.environments[env]
        reasons += _state_reasons(env, was, current_state_by_env.get(env))
        etag_reasons = (_etag_reasons(env, was.etags, current_etags[env])
                        if current_etags is not None and env in current_etags else [])
        reasons += etag_reasons
        if current_live_fingerprint_by_env is not None and env in current_live_fingerprint_by_env:
            fp = current_live_fingerprint_by_env[env]
            if fp != was.live_fingerprint and not etag_reasons:
                reasons.append(
                    f"{env}: the live environment changed since the plan (connections, owners or rows)"
                )
    return reasons


def _state_reasons(env: str, was: SavedEnvironment, now: EnvState | None) -> list[str]:
    """Why the state of ``env`` is not the one the plan was made against (empty: it is)."""
    if was.state_serial is None:
        if now is None:
            return []
        return [f"{env}: a state was created since the plan (now serial {now.serial}): another run applied"]
    if now is None:
        return [f"{env}: the state (serial {was.state_serial}) is gone since the plan"]
    if was.state_lineage != now.lineage:
        return [f"{env}: the state lineage changed ({was.state_lineage} -> {now.lineage}): the state was "
                "replaced since the plan"]
    if was.state_serial != now.serial:
        return [f"{env}: the state was written since the plan (serial {was.state_serial} -> {now.serial})"]
    if was.state_digest and was.state_digest != now.digest:
        return [f"{env}: the state changed since the plan (same serial, different content)"]
    return []


def _etag_reasons(env: str, saved: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """One sentence per reference (logical name -> ETag) deleted, added or changed since the plan."""
    cur = {k.lower(): (k, v) for k, v in current.items()}
    old = {k.lower(): (k, v) for k, v in saved.items()}
    reasons: list[str] = []
    for key in sorted(set(old) | set(cur)):
        if key not in cur:
            reasons.append(f"{env}: reference {old[key][0]} was deleted since the plan")
        elif key not in old:
            reasons.append(f"{env}: reference {cur[key][0]} appeared since the plan")
        elif old[key][1] != cur[key][1]:
            reasons.append(
                f"{env}: reference {old[key][0]} changed since the plan "
                f"(ETag {old[key][1]} -> {cur[key][1]})"
            )
    return reasons


def check_fresh(
    saved: SavedPlan,
    *,
    current_state_by_env: Mapping[str, EnvState | None],
    current_live_fingerprint_by_env: Mapping[str, str] | None = None,
    current_etags: Mapping[str, Mapping[str, str]] | None = None,
    current_config_digest: str | None = None,
) -> None:
    """Raise StalePlanError listing what moved (serial, lineage, state content, a row's ETag, the live
    fingerprint) since ``saved`` was made, ending with the instruction to plan again. Returns when fresh."""
    reasons = stale_reasons(
        saved,
        current_state_by_env=current_state_by_env,
        current_live_fingerprint_by_env=current_live_fingerprint_by_env,
        current_etags=current_etags,
        current_config_digest=current_config_digest,
    )
    if reasons:
        where = f" {saved.path}" if saved.path else ""
        raise StalePlanError(
            f"saved plan{where} is stale; nothing was applied:\n"
            + "\n".join(f"  - {inert(r)}" for r in reasons)
            + f"\n{REPLAN}",
            reasons,
        )


# --------------------------------------------------------------------------- the operations themselves

#: Keys of an operation that are prose for people, not what apply does.
_PROSE = frozenset({"reason"})


def normalised_ops(ops: Iterable[Any]) -> list[dict[str, Any]]:
    """Operations as plain JSON data (``to_dict()``, keys sorted), without their prose (``reason``): two
    operations that do the same are equal, whatever their kind."""
    out = []
    for op in ops:
        d = json.loads(json.dumps(op.to_dict(), sort_keys=True))
        out.append({k: v for k, v in d.items() if k not in _PROSE})
    return out


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return inert(text if len(text) <= 120 else text[:117] + "...")


def _field_differences(mine: Mapping[str, Any], theirs: Mapping[str, Any],
                       prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, value in the file, value implied) for every field that differs; inside two objects,
    the fields of theirs that differ (``new_connection.name``), so the line shows what was changed."""
    out: list[tuple[str, Any, Any]] = []
    for name in sorted(set(mine) | set(theirs)):
        a, b = mine.get(name), theirs.get(name)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _field_differences(a, b, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", a, b))
    return out


def _op_differences(env: str, saved: list[dict[str, Any]], derived: list[dict[str, Any]]) -> list[str]:
    """What differs between the saved operations of ``env`` and those the config implies, one line each."""
    def key(d: Mapping[str, Any]) -> tuple[str, str]:
        return str(d.get("kind")), str(d.get("logical_name", "")).lower()

    out: list[str] = []
    theirs = {key(d): d for d in derived}
    ours = {key(d): d for d in saved}
    for k, d in ours.items():
        other = theirs.get(k)
        if other is None:
            out.append(f"{env}: {k[0]} {d.get('logical_name')} is not what the config implies (it implies no "
                       "such operation)")
            continue
        for name, mine, theirs_value in _field_differences(d, other):
            out.append(f"{env}: {k[0]} {d.get('logical_name')}: {name} is {_shown(mine)} in the file; "
                       f"the config implies {_shown(theirs_value)}")
    for k, d in theirs.items():
        if k not in ours:
            out.append(f"{env}: the file lacks {k[0]} {d.get('logical_name')}, which the config implies")
    if not out and saved != derived:
        out.append(f"{env}: the operations are not in the order the config implies")
    return out


def derived_problems(saved_plan: Any, derived: Any, states: Mapping[str, EnvState | None]) -> list[str]:
    """Why a saved plan's operations (``saved_plan``, the typed plan of the file) are not exactly those of
    ``derived``, the plan made again from the config and the environments as read (empty: they are):
    a delete of a reference the state does not record as managed (with that row id), then every operation
    that differs, is missing or is extra, by ``to_dict()`` equality of the normalised operations, and the
    facts apply takes from the file (``apply_facts``: whom writes act as) when they differ."""
    reasons: list[str] = []
    for env_plan in saved_plan.environments:
        st = states.get(env_plan.environment)
        for op in env_plan.ops:
            # Prune's deletes; any other operation that deletes is checked by the equality below (the config
            # must imply it).
            if op.kind != "delete":
                continue
            managed = st.reference(op.logical_name) if st else None
            if managed is None or managed.id.lower() != (op.reference_id or "").lower():
                reasons.append(inert(f"{env_plan.environment}: the file deletes {op.logical_name} (row "
                                     f"{op.reference_id}), which the state does not record as managed; connref "
                                     "deletes only what it manages"))
    by_env = {e.environment: e for e in derived.environments}
    for env_plan in saved_plan.environments:
        other = by_env.get(env_plan.environment)
        mine = normalised_ops(env_plan.ops)
        theirs = normalised_ops(other.ops) if other is not None else []
        if mine != theirs:
            reasons += _op_differences(env_plan.environment, mine, theirs)
        reasons += _facts_differences(env_plan, other)
    return reasons


def _facts_differences(env_plan: Any, other: Any) -> list[str]:
    """What differs between the facts apply takes from the file (the identity writes act as, the component
    type: ``ops.ApplyFacts``) and those read again, for an environment the file writes to."""
    if not env_plan.ops:
        return []
    mine = env_plan.facts.to_dict() if env_plan.facts is not None else {}
    theirs = other.facts.to_dict() if other is not None and other.facts is not None else {}
    return [f"{env_plan.environment}: apply_facts.{name} is {_shown(a)} in the file; the environment as read "
            f"implies {_shown(b)}" for name, a, b in _field_differences(mine, theirs)]


def check_derived(saved: SavedPlan, saved_plan: Any, derived: Any, states: Mapping[str, EnvState | None]) -> None:
    """Raise ``PlanError`` (nothing is applied) unless the saved plan's operations are exactly what the config
    implies for the environments as they are (``derived_problems``)."""
    reasons = derived_problems(saved_plan, derived, states)
    if reasons:
        where = f" {saved.path}" if saved.path else ""
        raise PlanError(
            f"saved plan{where} was refused; nothing was applied: its operations are not what the config "
            "(whose digest it records) implies for the environment as it is:\n"
            + "\n".join(f"  - {inert(r)}" for r in reasons)
            + "\nA plan file is applied only as `connref plan --out FILE` wrote it. " + REPLAN
        )
