"""Import and the environment's service_account: kept when the service account owns every imported
reference, written commented out (with a note naming the owners) when it does not, so that plan right
after import has no changes; the rest of the import is then judged with the caller writing, as plan
judges it without a service account; a re-import gives the same text and brings the line back once the
service account owns everything."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from builders import ALICE, C_ALICE_SP, C_SVC_OUTLOOK, C_SVC_SP, SA, messy_live

from reconciler.config.loader import load_config
from reconciler.domain.model import LiveEnvironment
from reconciler.plan.ops import UpdateReference
from reconciler.plan.planner import plan_environment
from unit.test_importer import EXISTING, do_import, owned_by_svc, prose, write_config

COMMENTED = "    # service_account: svc-flows@contoso.com\n"
ACTIVE = "    service_account: svc-flows@contoso.com\n"
NOTE = "service_account commented out by import:"


def read_with_sa() -> LiveEnvironment:
    """The messy environment as the live reader returns it for a config with the service account:
    Alice calls, the service account writes; Alice and Bob own two references."""
    return dataclasses.replace(messy_live(), caller=ALICE, writer=messy_live().writer, caller_can_impersonate=True)


def read_without_sa(env: LiveEnvironment | None = None) -> LiveEnvironment:
    """The same environment read for a config without a service account: the caller writes."""
    env = env or read_with_sa()
    return dataclasses.replace(env, writer=env.caller)


def existing_with_comment() -> str:
    return EXISTING.replace(ACTIVE, "    # the team's flows account\n" + ACTIVE)


def test_foreign_owners_comment_the_line_out_in_an_existing_config(tmp_path: Path) -> None:
    text = do_import(read_with_sa(), existing_with_comment())
    # the user's comment stays; the line is commented out after a note saying why
    assert "    # the team's flows account\n    # service_account commented out by import:" in text
    assert COMMENTED + "    bindings:\n" in text and ACTIVE not in text
    assert (
        "service_account commented out by import: 2 references are owned by alice@contoso.com, "
        "bob@contoso.com today. Uncomment it to have plan make svc-flows@contoso.com their owner; "
        "plan then shows '~ owner' changes for them."
    ) in prose(text)
    data = yaml.safe_load(text)
    dev = data["environments"]["dev"]
    assert "service_account" not in dev
    # bindings judged for Alice, who writes without a service account: only her own connection is
    # usable; the service account's (Outlook, the Spare selector) would be refused
    assert dev["bindings"] == {"contoso_sharedsharepointonline_8f4b0": C_ALICE_SP.name}
    assert "# contoso_Outlook: " + C_SVC_OUTLOOK.name in text
    assert "CR210 connection-not-usable: share it with a security group alice@contoso.com belongs to" in prose(text)
    # no service account in the written config: lint's CR201 does not apply, and import says so
    assert "CR201" not in text and "no service_account for this environment" in text
    cfg = load_config(str(write_config(tmp_path, text)))
    assert cfg.environments["dev"].service_account is None
    assert plan_environment(cfg, cfg.environments["dev"], read_without_sa()).ops == ()


def test_uncommenting_leaves_only_the_announced_owner_changes(tmp_path: Path) -> None:
    text = do_import(read_with_sa(), EXISTING)
    announced = {line.split()[3].rstrip(":") for line in text.splitlines() if "plan assigns it to" in line}
    assert announced == {"alice@contoso.com", "bob@contoso.com"}
    cfg = load_config(str(write_config(tmp_path, text.replace(COMMENTED, ACTIVE))))
    assert cfg.environments["dev"].service_account == SA
    ops = plan_environment(cfg, cfg.environments["dev"], read_with_sa()).ops
    assert all(isinstance(op, UpdateReference) for op in ops)
    assert {(op.logical_name, tuple(c.field for c in op.changes)) for op in ops if isinstance(op, UpdateReference)} == {
        ("contoso_sharedsharepointonline_8f4b0", ("owner",)),
        ("contoso_sharedsharepointonline_30e7d", ("owner",)),
    }


def test_reimport_with_the_line_commented_out_is_stable() -> None:
    first = do_import(read_with_sa(), existing_with_comment())
    # as the CLI imports again: the config has no service account now, so the reader's writer is the caller
    second = do_import(read_without_sa(), first)
    assert second == first
    assert do_import(read_without_sa(), second) == first
    assert first.count(NOTE) == 1


def test_uncommented_by_hand_with_the_note_left_is_decided_again() -> None:
    first = do_import(read_with_sa(), EXISTING)
    by_hand = first.replace(COMMENTED, ACTIVE)
    assert do_import(read_with_sa(), by_hand) == first  # others still own references: one note, commented
    now = owned_by_svc(read_with_sa())
    second = do_import(now, by_hand)
    assert ACTIVE in second and NOTE not in second


def test_the_line_stays_as_written_when_the_service_account_owns_everything(tmp_path: Path) -> None:
    existing = EXISTING.replace(ACTIVE, "    service_account: svc-flows@contoso.com   # the team's account\n")
    env = owned_by_svc(read_with_sa())
    text = do_import(env, existing)
    assert "    service_account: svc-flows@contoso.com   # the team's account\n" in text
    assert NOTE not in text and "plan assigns it" not in text
    # judged for the service account: its own connections are kept, personal ones flagged
    bindings = yaml.safe_load(text)["environments"]["dev"]["bindings"]
    assert bindings["contoso_Outlook"] == C_SVC_OUTLOOK.name
    assert "CR201 personal-connection" in text
    assert do_import(env, text) == text
    cfg = load_config(str(write_config(tmp_path, text)))
    assert plan_environment(cfg, cfg.environments["dev"], env).ops == ()


def test_the_line_comes_back_once_the_service_account_owns_everything() -> None:
    first = do_import(read_with_sa(), EXISTING)
    assert COMMENTED in first
    # the owners were changed outside connref; the config still has the line commented out
    now = owned_by_svc(read_without_sa())
    second = do_import(now, first)
    assert ACTIVE + "    bindings:\n" in second and NOTE not in second and COMMENTED not in second
    # judged for the service account again, as plan will with the line back
    assert yaml.safe_load(second)["environments"]["dev"]["bindings"]["contoso_Outlook"] == C_SVC_OUTLOOK.name


def test_fresh_config_writes_the_line_commented_out_or_as_is(tmp_path: Path) -> None:
    commented = do_import(read_with_sa(), service_account=SA)
    assert COMMENTED in commented and NOTE in commented
    cfg = load_config(str(write_config(tmp_path, commented)))
    assert cfg.environments["dev"].service_account is None
    assert plan_environment(cfg, cfg.environments["dev"], read_without_sa()).ops == ()
    assert do_import(read_without_sa(), commented) == commented

    env = owned_by_svc(read_with_sa())
    kept = do_import(env, service_account=SA)
    assert ACTIVE in kept and NOTE not in kept
    cfg = load_config(str(write_config(tmp_path, kept)))
    assert cfg.environments["dev"].service_account == SA
    assert dict(cfg.environments["dev"].bindings)["contoso_Spare"] == C_SVC_SP.name
    assert plan_environment(cfg, cfg.environments["dev"], env).ops == ()


def test_one_foreign_reference_reads_in_the_singular() -> None:
    env = owned_by_svc(read_with_sa())
    env = dataclasses.replace(env, references=tuple(
        dataclasses.replace(r, owner_id=ALICE.systemuserid) if r.logical_name == "contoso_Outlook" else r
        for r in env.references
    ))
    assert "1 reference is owned by alice@contoso.com today" in prose(do_import(env, EXISTING))
