"""The rules layer on its own: principals, the writer rule, connections, bindings, field differences and
the Problem type. Pure: hand-built live data, no emulator."""

from __future__ import annotations

import dataclasses

import pytest
from builders import C_MAKER, C_OUTLOOK, C_SVC, C_SVC2, MAKER1, MAKER2, PLANNING, SP, SVC

from reconciler.domain import rules
from reconciler.domain.model import LiveConnection, LiveUser, Permission, Selector, connector_id
from reconciler.domain.patterns import has_jwt, is_guid

APP = LiveUser("53033e0c-952a-40c8-9253-8ef4280178c7", "4d8f82e5-79cf-4c66-933c-5f95dff933de",
               "b60019b8@contoso.onmicrosoft.com", "pipeline", application_id="b60019b8-637b-4318-b461-ea6796113c58")
USERS = (SVC, MAKER1, APP)


# --------------------------------------------------------------------------- principals


@pytest.mark.parametrize("given", [
    "svc-flows@contoso.com", "SVC-FLOWS@contoso.com", " svc-flows@contoso.com ", "oid-svc", "OID-SVC", "u-svc",
])
def test_a_principal_resolves_by_upn_object_id_or_systemuserid_without_case(given: str) -> None:
    assert rules.resolve_principal(given, USERS) is SVC


def test_a_principal_resolves_by_application_id() -> None:
    assert rules.resolve_principal("B60019B8-637B-4318-B461-EA6796113C58", USERS) is APP


@pytest.mark.parametrize("given", ["", None, "nobody@contoso.com", "Flows Service Account"])
def test_unknown_principals_resolve_to_nobody(given: str | None) -> None:
    assert rules.resolve_principal(given, USERS) is None


def test_an_enabled_user_wins_over_a_disabled_one_with_the_same_upn() -> None:
    old = LiveUser("u-old", "oid-old", SVC.upn, disabled=True)
    assert rules.resolve_principal(SVC.upn, (old, SVC)) is SVC


def test_the_writer_is_the_service_account_never_silently_the_caller() -> None:
    assert rules.pick_writer("oid-svc", MAKER1, USERS) is SVC
    assert rules.pick_writer("nobody@contoso.com", MAKER1, USERS) is None
    assert rules.pick_writer(None, MAKER1, USERS) is MAKER1
    live = PLANNING.live(writer=None, caller=MAKER1)
    assert rules.writer("svc-flows@contoso.com", live) is None
    assert rules.writer(None, live) is MAKER1


def test_impersonation_only_when_the_writer_is_someone_else() -> None:
    as_app = PLANNING.live(writer=SVC, caller=APP)
    assert rules.impersonated_object_id("svc-flows@contoso.com", as_app) == "oid-svc"
    assert rules.impersonated_object_id(None, as_app) is None
    as_svc = PLANNING.live(writer=SVC, caller=SVC)
    assert rules.impersonated_object_id("svc-flows@contoso.com", as_svc) is None


def test_identity_problems_have_codes() -> None:
    sa = "svc-flows@contoso.com"
    assert [p.code for p in rules.identity_problems("dev", sa, PLANNING.live(writer=None, caller=APP))] == ["CR300"]
    disabled = dataclasses.replace(SVC, disabled=True)
    no_oid = dataclasses.replace(SVC, object_id=None)
    assert [p.code for p in rules.identity_problems("dev", sa, PLANNING.live(writer=disabled, caller=APP))] == [
        "CR301", "CR302"]
    allowed = dataclasses.replace(PLANNING.live(writer=no_oid, caller=APP), caller_can_impersonate=True)
    assert [p.code for p in rules.identity_problems("dev", sa, allowed)] == ["CR304"]
    assert rules.identity_problems("dev", None, PLANNING.live(writer=None, caller=None)) == []


# --------------------------------------------------------------------------- connections


def test_owner_label_prefers_the_users_upn_then_the_api_name_then_the_object_id() -> None:
    live = PLANNING.live(conns=[C_SVC])
    assert rules.owner_label(C_SVC, live) == "svc-flows@contoso.com"
    stranger = LiveConnection("x", connector_id(SP), "X", "Connected", "oid-ext", "ext@fabrikam.com")
    assert rules.owner_label(stranger, live) == "ext@fabrikam.com"
    assert rules.owner_label(dataclasses.replace(stranger, owner_name=None), live) == "oid-ext"
    assert rules.describe_connection(C_SVC, live) == f'"SharePoint svc" (owner svc-flows@contoso.com, {C_SVC.name})'


def test_is_owner_takes_every_form_of_the_principal() -> None:
    live = PLANNING.live()
    for given in ("svc-flows@contoso.com", "oid-svc", "u-svc"):
        assert rules.is_owner(given, C_SVC, live)
    assert not rules.is_owner("maker1@contoso.com", C_SVC, live)


def test_can_use_means_owner_or_shared() -> None:
    assert rules.can_use(SVC, C_SVC) and rules.can_use(SVC, C_MAKER) and rules.can_use(MAKER1, C_MAKER)
    assert not rules.can_use(MAKER2, C_MAKER)
    assert not rules.can_use(None, C_SVC)
    assert not rules.can_use(LiveUser("u-x", None, "x@contoso.com"), C_SVC)
    shared_upper = dataclasses.replace(C_SVC, permissions=(Permission("OID-MAKER2", "CanView"),))
    assert rules.can_use(MAKER2, shared_upper)


# --------------------------------------------------------------------------- bindings


def test_binding_index_is_case_insensitive() -> None:
    index = rules.BindingIndex({"contoso_SharePoint": "abc"})
    assert index.get("CONTOSO_sharepoint") == "abc"
    assert index.get("contoso_Other") is None
    assert "contoso_sharepoint" in index


def judge(binding: str | Selector, writer: LiveUser | None = SVC, *conns: LiveConnection,
          service_account: str | None = "svc-flows@contoso.com") -> rules.Resolution:
    live = PLANNING.live(conns=conns or (C_SVC, C_SVC2, C_MAKER, C_OUTLOOK), writer=writer)
    return rules.judge_binding(binding, connector_id(SP), writer, live, service_account=service_account,
                               subject="contoso_SharePoint")


def test_judge_binding_codes() -> None:
    assert judge(C_SVC.name).usable == C_SVC
    assert judge(C_SVC.name.upper()).usable == C_SVC
    assert [p.code for p in judge("missing").problems] == ["CR204"]
    assert [p.code for p in judge(C_OUTLOOK.name).problems] == ["CR205"]
    broken = dataclasses.replace(C_SVC, status="Error")
    assert [p.code for p in judge(C_SVC.name, SVC, broken).problems] == ["CR203"]
    assert [p.code for p in judge(C_SVC.name, MAKER2).problems] == ["CR210"]
    assert [p.code for p in judge(C_SVC.name, None, service_account=None).problems] == ["CR303"]
    assert [p.code for p in judge(Selector("svc-flows@contoso.com")).problems] == ["CR206"]
    assert [p.code for p in judge(Selector("nobody@contoso.com")).problems] == ["CR206"]
    assert judge(Selector("SVC-flows@contoso.com", "sharepoint SVC")).usable == C_SVC
    found = judge(C_SVC.name, MAKER2).problems[0]
    assert (found.environment, found.subject, found.severity) == ("dev", "contoso_SharePoint", "error")


def test_connection_health() -> None:
    live = PLANNING.live(conns=[C_SVC, dataclasses.replace(C_SVC2, status="Expired")])
    assert rules.connection_health(None, live) is None
    assert rules.connection_health(C_SVC.name, live) is None
    health = rules.connection_health(C_SVC2.name, live)
    assert health is not None and health.code == "CR203" and "status Expired" in health.message
    missing = rules.connection_health("gone", live)
    assert missing is not None and missing.code == "CR204"


# --------------------------------------------------------------------------- fields


def test_differences_normalise_each_field() -> None:
    expected = {"display_name": "A", "description": "", "connector": "shared_sharepointonline",
                "connection": "ABC", "owner": "U-SVC"}
    actual = {"display_name": "a", "description": None, "connector": connector_id("SHARED_SharePointOnline"),
              "connection": "abc", "owner": "u-svc"}
    (d,) = rules.differences(expected, actual)
    assert (d.field, d.expected, d.actual, d.normalised()) == ("display_name", "A", "a", ("A", "a"))


def test_differences_follow_the_expected_order_and_compare_only_its_fields() -> None:
    diffs = rules.differences({"owner": "u1", "display_name": "New"}, {"display_name": "Old", "connection": "x"})
    assert [(d.field, d.expected, d.actual) for d in diffs] == [("owner", "u1", None), ("display_name", "New", "Old")]


# --------------------------------------------------------------------------- problems


def test_problem_forms() -> None:
    p = rules.problem("CR204", "connection x not found", "bind another", environment="dev", subject="contoso_A")
    assert (p.severity, p.name) == ("error", "connection-not-found")
    assert p.line() == "dev: contoso_A: connection x not found; bind another"
    assert rules.problem("CR310", "m", "f", environment="dev").line() == "dev: m; f"
    assert p.to_dict() == {"code": "CR204", "name": "connection-not-found", "severity": "error",
                           "environment": "dev", "subject": "contoso_A", "message": "connection x not found",
                           "fix": "bind another", "hint": "bind another"}


def test_every_code_has_a_known_severity_and_a_unique_name() -> None:
    assert all(c.severity in rules.SEVERITIES for c in rules.CODES.values())
    names = [c.name for c in rules.CODES.values()]
    assert len(names) == len(set(names))


# --------------------------------------------------------------------------- patterns


def test_patterns() -> None:
    assert is_guid("4D8F82E5-79cf-4c66-933c-5f95dff933de")
    assert not is_guid("4d8f82e5-79cf-4c66-933c-5f95dff933de\n") and not is_guid("") and not is_guid(None)
    assert has_jwt("Bearer eyJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJ4In0.c2lnbmF0dXJl")
    assert not has_jwt("eyJ.x.y") and not has_jwt("a description")


# --------------------------------------------------------------------------- a flow write whose answer was lost


def test_a_flow_write_whose_answer_was_lost_is_told_by_its_row() -> None:
    off = {"statecode": 0, "statuscode": 1}
    row = {"@odata.etag": 'W/"7"', "statecode": 1, "statuscode": 2}
    assert rules.flow_write_landed(etag='W/"7"', expected=off, found=row) is False  # still as it was sent to
    assert rules.flow_write_landed(etag='W/"7"', expected=off, found={**row, **off, "@odata.etag": 'W/"8"'})
    # Changed in another way since (another ETag, not the values written), or gone: it cannot tell.
    assert rules.flow_write_landed(etag='W/"7"', expected=off, found={**row, "@odata.etag": 'W/"9"'}) is None
    assert rules.flow_write_landed(etag='W/"7"', expected=off, found=None) is None
    assert rules.flow_write_landed(etag=None, expected={"clientdata": "{}"}, found=row) is None
