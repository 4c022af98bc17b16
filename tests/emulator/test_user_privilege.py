"""RetrieveUserPrivilegeByPrivilegeName, which connref uses to tell at plan time whether the pipeline's
identity may impersonate the service account (prvActOnBehalfOfAnotherUser)."""

from __future__ import annotations

from typing import Any

import httpx

FN = "systemusers({id})/Microsoft.Dynamics.CRM.RetrieveUserPrivilegeByPrivilegeName(PrivilegeName=@p)"


def test_holder_gets_the_privilege_listed(dv: httpx.Client, target: Any) -> None:
    r = dv.get(FN.format(id=target.APP_USER_ID), params={"@p": "'prvActOnBehalfOfAnotherUser'"})
    assert r.status_code == 200, r.text
    names = [p["PrivilegeName"] for p in r.json()["RolePrivileges"]]
    assert names == ["prvActOnBehalfOfAnotherUser"]


def test_user_without_it_gets_an_empty_list(dv: httpx.Client, target: Any) -> None:
    r = dv.get(FN.format(id=target.MAKER_USER_ID), params={"@p": "'prvActOnBehalfOfAnotherUser'"})
    assert r.status_code == 200, r.text
    assert r.json()["RolePrivileges"] == []
