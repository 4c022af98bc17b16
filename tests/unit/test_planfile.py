"""Saved plan files: round trip, versioning, permissions, no secrets, and stale-plan detection."""

from __future__ import annotations

import dataclasses
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from builders import SPN, replace_ref, state_of
from builders import drift_config as config
from builders import drift_live as live

from reconciler.domain.model import AuthProfile, Config, DesiredReference, LiveEnvironment, connector_id, frozen_map
from reconciler.errors import PlanError, StalePlanError
from reconciler.plan import planfile as pf
from reconciler.plan.planner import live_fingerprint, plan
from reconciler.state.model import EnvState
from reconciler.state.record import record_apply

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.secret-access-token-for-this-run.c2lnbmF0dXJl"
SECRET = "Qz8~client-secret-value-not-to-be-saved"


def pending_config() -> Config:
    """The config renames contoso_SharePoint: a plan with one update."""
    base = config()
    refs = dict(base.references)
    refs[SPN] = DesiredReference(
        SPN, connector_id("shared_sharepointonline"), "SharePoint (renamed)", "Sites"
    )
    auth = {
        "pipeline": AuthProfile(
            "pipeline", "access_token", options=frozen_map({"access_token_env": "CONNREF_T_TOKEN"})
        ),
        "ci": AuthProfile(
            "ci",
            "client_secret",
            "tenant",
            "client",
            options=frozen_map({"client_secret_env": "CONNREF_T_SECRET"}),
        ),
    }
    return dataclasses.replace(base, references=frozen_map(refs), auth=frozen_map(auth))


def write(
    path: Path, cfg: Config, env: LiveEnvironment, st: EnvState | None, **kw: Any
) -> tuple[pf.SavedPlan, Any]:
    p = plan(cfg, {"dev": env}, managed={"dev": list(st.references) if st else []})
    saved = pf.write_plan_file(
        path,
        p,
        config_digest=p.config_digest,
        states={"dev": st},
        live_fingerprints={"dev": live_fingerprint(env)},
        etags={"dev": pf.live_etags(env)},
        options=kw.pop("options", {"environments": ["dev"], "prune": False}),
        config_path="connref.yaml",
        config=cfg,
        **kw,
    )
    return saved, p


@pytest.fixture(autouse=True)
def _secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNREF_T_TOKEN", TOKEN)
    monkeypatch.setenv("CONNREF_T_SECRET", SECRET)


# --------------------------------------------------------------------------- writing and reading


def test_round_trip(tmp_path: Path) -> None:
    env = live()
    st = state_of(env)
    path = tmp_path / "plan.json"
    saved, p = write(path, pending_config(), env, st)
    back = pf.read_plan_file(path)
    assert back == dataclasses.replace(saved, path=str(path))
    assert back.load_plan().to_dict() == p.to_dict()
    assert [op.kind for op in back.load_plan().ops] == ["update"]
    e = back.environments["dev"]
    assert (e.state_serial, e.state_lineage, e.state_digest) == (st.serial, st.lineage, st.digest)
    assert e.etags[SPN] == 'W/"100"' and e.live_fingerprint == live_fingerprint(env)
    assert back.options == {"environments": ["dev"], "prune": False}
    doc = json.loads(path.read_text())
    assert doc["format_version"] == pf.FORMAT_VERSION and doc["kind"] == pf.KIND


def test_written_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("old, world-readable")
    path.chmod(0o644)
    write(path, pending_config(), live(), None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_plan_file_never_contains_the_runs_secrets(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    write(path, pending_config(), live(), None, options={"environments": ["dev"], "client_secret": SECRET})
    raw = path.read_bytes()
    assert TOKEN.encode() not in raw and SECRET.encode() not in raw
    assert "client_secret" not in json.loads(raw)["options"]


def test_refuses_to_write_a_secret_under_any_name(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    with pytest.raises(PlanError, match="would contain a secret") as e:
        write(path, pending_config(), live(), None, options={"note": f"Bearer {TOKEN}"})
    assert TOKEN not in str(e.value)
    assert not path.exists()
    with pytest.raises(PlanError):
        write(path, pending_config(), live(), None, secrets=["contoso_Outlook"])  # a caller-given secret
    assert not path.exists()


def test_unknown_minor_fields_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    write(path, pending_config(), live(), state_of(live()))
    doc = json.loads(path.read_text())
    doc["format_version"] = "1.9"
    doc["added_in_1_9"] = {"x": 1}
    doc["environments"]["dev"]["also_new"] = True
    path.write_text(json.dumps(doc))
    back = pf.read_plan_file(path)
    assert back.format_version == "1.9" and back.environments["dev"].etags[SPN] == 'W/"100"'


def test_unknown_major_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    write(path, pending_config(), live(), None)
    doc = json.loads(path.read_text())
    doc["format_version"] = "2.0"
    path.write_text(json.dumps(doc))
    with pytest.raises(StalePlanError, match=r"format_version '2\.0'.*reads 1\.x.*plan --out"):
        pf.read_plan_file(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [('{"format_version": "1.0"}', "not a connref plan"), ("{trunc", "cannot be read as JSON"),
     # Nested past what the decoder, or the schema check after it, recurses into: once a RecursionError.
     ("[" * 100_000 + "]" * 100_000, "cannot be read as JSON .it is nested deeper than"),
     ('{"kind": "connref-saved-plan", "format_version": "1.0", "plan": ' + '{"a":' * 5000 + "1" + "}" * 5001,
      "cannot be read as JSON .it is nested deeper than"),
     ('{"kind": "connref-saved-plan", "format_version": "1.0", "x": NaN}', "NaN")],
    ids=["not-a-plan", "truncated", "nested-lists", "nested-objects", "nan"],
)
def test_not_a_plan_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(PlanError, match=match):
        pf.read_plan_file(path)
    with pytest.raises(PlanError, match="does not exist"):
        pf.read_plan_file(tmp_path / "nope.json")


# --------------------------------------------------------------------------- staleness


def _next_apply(st: EnvState) -> EnvState:
    env = live()
    return record_apply(st, "dev", env, declared=[r.logical_name for r in env.references], user="other-run")


StaleCase = tuple[
    Callable[[EnvState], EnvState | None], Callable[[LiveEnvironment], LiveEnvironment], list[str]
]
STALE: dict[str, StaleCase] = {
    "fresh": (lambda s: s, lambda e: e, []),
    "serial-changed": (
        _next_apply,
        lambda e: e,
        ["dev: the state was written since the plan (serial 1 -> 2)"],
    ),
    "lineage-changed": (
        lambda s: dataclasses.replace(state_of(live()), serial=1),
        lambda e: e,
        ["dev: the state lineage changed"],
    ),
    "state-gone": (lambda s: None, lambda e: e, ["dev: the state (serial 1) is gone since the plan"]),
    "same-serial-other-content": (
        lambda s: dataclasses.replace(s, solution="Other"),
        lambda e: e,
        ["same serial, different content"],
    ),
    "etag-changed": (
        lambda s: s,
        lambda e: replace_ref(e, SPN, connection="c-sp-alice", etag='W/"101"'),
        [f'dev: reference {SPN} changed since the plan (ETag W/"100" -> W/"101")'],
    ),
    "row-deleted": (
        lambda s: s,
        lambda e: dataclasses.replace(e, references=tuple(r for r in e.references if r.logical_name != SPN)),
        [f"dev: reference {SPN} was deleted since the plan"],
    ),
    "connection-status-changed": (
        lambda s: s,
        lambda e: dataclasses.replace(
            e, connections=tuple(dataclasses.replace(c, status="Error") for c in e.connections)
        ),
        ["dev: the live environment changed since the plan"],
    ),
}


@pytest.mark.parametrize("case", list(STALE), ids=list(STALE))
def test_check_fresh(tmp_path: Path, case: str) -> None:
    change_state, change_live, expected = STALE[case]
    env, st = live(), state_of(live())
    path = tmp_path / "plan.json"
    write(path, pending_config(), env, st)
    saved = pf.read_plan_file(path)
    now_env = change_live(env)
    kwargs: dict[str, Any] = dict(
        current_state_by_env={"dev": change_state(st)},
        current_live_fingerprint_by_env={"dev": live_fingerprint(now_env)},
        current_etags={"dev": pf.live_etags(now_env)},
    )
    reasons = pf.stale_reasons(saved, **kwargs)
    assert len(reasons) == len(expected)
    for want, got in zip(expected, reasons, strict=True):
        assert got.startswith(want) or want in got
    if not expected:
        pf.check_fresh(saved, **kwargs)
        return
    with pytest.raises(StalePlanError) as e:
        pf.check_fresh(saved, **kwargs)
    msg = str(e.value)
    assert f"saved plan {path} is stale; nothing was applied" in msg
    assert expected[0] in msg and "connref plan --out FILE` again" in msg
    assert e.value.reasons == reasons


def test_first_plan_without_state_is_stale_once_a_state_exists(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    write(path, pending_config(), live(), None)
    saved = pf.read_plan_file(path)
    pf.check_fresh(saved, current_state_by_env={"dev": None})
    with pytest.raises(StalePlanError, match="a state was created since the plan"):
        pf.check_fresh(saved, current_state_by_env={"dev": state_of(live())})


def test_config_change_is_stale_when_checked(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    saved, _ = write(path, pending_config(), live(), None)
    pf.check_fresh(saved, current_state_by_env={"dev": None}, current_config_digest=saved.config_digest)
    with pytest.raises(StalePlanError, match="config file changed"):
        pf.check_fresh(saved, current_state_by_env={"dev": None}, current_config_digest="sha256:other")


def test_secret_file_content_and_any_jwt_are_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("file-held-client-secret-0123456789\n")
    cfg = pending_config()
    auth = dict(cfg.auth)
    auth["file"] = AuthProfile(
        "file", "client_secret", options=frozen_map({"client_secret_file": str(secret_file)})
    )
    cfg = dataclasses.replace(cfg, auth=frozen_map(auth))
    path = tmp_path / "plan.json"
    with pytest.raises(PlanError, match="would contain a secret"):
        write(path, cfg, live(), None, options={"x": "file-held-client-secret-0123456789"})
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmNvbnRvc28ifQ.sig"  # a token nobody told the writer about
    with pytest.raises(PlanError):
        write(path, cfg, live(), None, options={"x": jwt})
    assert not path.exists()
    write(path, cfg, live(), None)  # the secrets themselves are never part of a plan
    assert b"file-held-client-secret" not in path.read_bytes()
