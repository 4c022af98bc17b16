"""Good configs load into the model as documented; edge cases of the loader (anchors, merge keys,
loopback URLs, every auth method, file paths, no network)."""

from __future__ import annotations

import os
import socket
import textwrap
import time
from pathlib import Path

import pytest

from reconciler.config.loader import load_config, load_config_text
from reconciler.domain.model import CONNECTOR_PREFIX, AzureStateConfig, Selector
from reconciler.errors import ConfigError, ConfigErrors

DESIGN_EXAMPLE = """\
version: 1
solution: ContosoConnections          # unmanaged solution that holds the references
references:
  contoso_SharePoint:                 # logical name: the key; prefix_name
    connector: shared_sharepointonline  # or /providers/Microsoft.PowerApps/apis/shared_sharepointonline
    display_name: SharePoint ContosoConnections
    description: Sites and lists used by the invoice flows
  contoso_Outlook:
    connector: shared_office365
    display_name: Office 365 Outlook ContosoConnections
environments:
  dev:
    url: https://contoso-dev.crm4.dynamics.com
    environment_id: 6f1c2a3b-0c4d-4e5f-8a9b-0c1d2e3f4a5b   # for the connections API
    auth: pipeline                    # a profile under auth:
    service_account: svc-flows@contoso.com   # owns the references; writes run as it
    bindings:
      contoso_SharePoint: 0f3a9e0c6d2b4e1f9a8b7c6d5e4f3a2b  # a connection name, or
      contoso_Outlook: {owner: svc-flows@contoso.com}         # a selector resolved at plan time
auth:
  pipeline:
    method: client_secret             # also: certificate, federated, managed_identity,
    tenant_id: 11111111-2222-3333-4444-555555555555   #   azure_cli, access_token
    client_id: 22222222-3333-4444-5555-666666666666
    client_secret_env: CONNREF_CLIENT_SECRET
"""

LOOPBACK_HEAD = """\
version: 1
solution: ContosoFlows
references:
  contoso_SharePoint:
    connector: shared_sharepointonline
    display_name: SharePoint ContosoFlows
environments:
  dev:
    url: http://127.0.0.1:8080
    auth: a
"""


def write(tmp_path: Path, text: str, name: str = "connref.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_design_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DESIGN_EXAMPLE))
    assert config.version == 1
    assert config.solution == "ContosoConnections"
    assert list(config.references) == ["contoso_SharePoint", "contoso_Outlook"]
    sp = config.references["contoso_SharePoint"]
    assert sp.connector == CONNECTOR_PREFIX + "shared_sharepointonline"
    assert sp.description == "Sites and lists used by the invoice flows"
    assert config.references["contoso_Outlook"].description is None
    assert sp.location is not None and (sp.location.line, sp.location.column) == (5, 5)
    dev = config.environments["dev"]
    assert dev.url == "https://contoso-dev.crm4.dynamics.com"
    assert dev.local_path is None and not dev.is_local
    assert dev.cloud == "public"
    assert dev.bindings["contoso_SharePoint"] == "0f3a9e0c6d2b4e1f9a8b7c6d5e4f3a2b"
    assert dev.bindings["contoso_Outlook"] == Selector(owner="svc-flows@contoso.com")
    profile = config.auth["pipeline"]
    assert profile.method == "client_secret"
    assert profile.tenant_id == "11111111-2222-3333-4444-555555555555"
    assert dict(profile.options) == {"client_secret_env": "CONNREF_CLIENT_SECRET"}
    assert config.prune is False and config.naming is None and config.lint_ignore == () and config.state_dir is None
    assert config.reference("CONTOSO_sharepoint") is sp
    assert config.path == str(tmp_path / "connref.yaml")


def test_optional_top_level_keys(tmp_path: Path) -> None:
    text = DESIGN_EXAMPLE + textwrap.dedent(
        """\
        prune: true
        naming: "{connector} {solution}"
        lint:
          ignore: [CR102, duplicate-connector]
        state:
          dir: ../connref-state
        """
    )
    config = load_config(write(tmp_path, text))
    assert config.prune is True
    assert config.naming == "{connector} {solution}"
    assert config.lint_ignore == ("CR102", "duplicate-connector")
    assert config.state_dir == str(tmp_path.parent / "connref-state")


def test_azurerm_state_backend(tmp_path: Path) -> None:
    text = DESIGN_EXAMPLE + textwrap.dedent(
        """\
        state:
          backend: azurerm
          account_url: https://contosostate.blob.core.windows.net/
          container: connref-state
          key_prefix: flows/
          auth: pipeline
        """
    )
    config = load_config(write(tmp_path, text))
    assert config.state_dir is None
    assert config.remote_state == AzureStateConfig(
        container="connref-state", key_prefix="flows/", account_url="https://contosostate.blob.core.windows.net",
        auth="pipeline", connection_string_env=None, lease_duration=60,
    )
    azurite = load_config(write(tmp_path, DESIGN_EXAMPLE + "state: {backend: azurerm, container: connref-ci, "
                                "connection_string_env: AZURITE_CONNECTION_STRING, lease_duration: 15}\n"))
    assert azurite.remote_state is not None
    assert (azurite.remote_state.connection_string_env, azurite.remote_state.lease_duration) == (
        "AZURITE_CONNECTION_STRING", 15)
    assert load_config(write(tmp_path, DESIGN_EXAMPLE + "state: {backend: local}\n")).remote_state is None


def test_full_connector_id_and_case_of_prefix_are_normalised(tmp_path: Path) -> None:
    text = (
        LOOPBACK_HEAD.replace(
            "connector: shared_sharepointonline",
            "connector: /providers/microsoft.powerapps/apis/shared_sharepointonline",
        )
        + "auth:\n  a: {method: azure_cli}\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.references["contoso_SharePoint"].connector == CONNECTOR_PREFIX + "shared_sharepointonline"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "http://localhost:9000/", "http://[::1]:8443", "https://127.0.0.1:8443"],
)
def test_loopback_urls_need_no_environment_id(tmp_path: Path, url: str) -> None:
    text = LOOPBACK_HEAD.replace("http://127.0.0.1:8080", url) + "auth:\n  a: {method: azure_cli}\n"
    env = load_config(write(tmp_path, text)).environments["dev"]
    assert env.url == url.rstrip("/")
    assert env.environment_id is None


def test_default_environment_id_form_and_guid_case(tmp_path: Path) -> None:
    text = DESIGN_EXAMPLE.replace(
        "6f1c2a3b-0c4d-4e5f-8a9b-0c1d2e3f4a5b", "Default-11111111-2222-3333-4444-555555555555"
    ).replace("22222222-3333-4444-5555-666666666666", "22222222-3333-4444-5555-66666666ABCD")
    config = load_config(write(tmp_path, text))
    assert config.environments["dev"].environment_id == "Default-11111111-2222-3333-4444-555555555555"
    assert config.auth["pipeline"].client_id == "22222222-3333-4444-5555-66666666abcd"


def test_connections_url_replaces_environment_id(tmp_path: Path) -> None:
    text = DESIGN_EXAMPLE.replace(
        "    environment_id: 6f1c2a3b-0c4d-4e5f-8a9b-0c1d2e3f4a5b   # for the connections API\n",
        "    connections_url: https://connections.example.test/\n    cloud: usgov\n",
    )
    env = load_config(write(tmp_path, text)).environments["dev"]
    assert env.connections_url == "https://connections.example.test"
    assert env.environment_id is None
    assert env.cloud == "usgov"


def test_local_environment_resolves_relative_to_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dev.json").write_text("{}", encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the working directory does not matter
    text = LOOPBACK_HEAD.replace("http://127.0.0.1:8080", "local:data/dev.json").replace("    auth: a\n", "")
    config = load_config(write(tmp_path, text))
    env = config.environments["dev"]
    assert env.url == "local:data/dev.json"
    assert env.local_path == str(tmp_path / "data" / "dev.json")
    assert env.is_local and env.auth is None and env.bindings == {}


def test_selector_with_display_name(tmp_path: Path) -> None:
    text = DESIGN_EXAMPLE.replace(
        "{owner: svc-flows@contoso.com}", "{owner: svc-flows@contoso.com, display_name: Outlook (svc)}"
    )
    binding = load_config(write(tmp_path, text)).environments["dev"].bindings["contoso_Outlook"]
    assert binding == Selector(owner="svc-flows@contoso.com", display_name="Outlook (svc)")
    assert binding.describe() == "{owner: svc-flows@contoso.com, display_name: Outlook (svc)}"


AUTH_CASES = {
    "client_secret_file": (
        "method: client_secret\n    tenant_id: contoso.onmicrosoft.com\n"
        "    client_id: 22222222-3333-4444-5555-666666666666\n    client_secret_file: secrets/app.txt",
        {"client_secret_file": "secrets/app.txt"},
    ),
    "certificate": (
        "method: certificate\n    tenant_id: 11111111-2222-3333-4444-555555555555\n"
        "    client_id: 22222222-3333-4444-5555-666666666666\n    certificate_path: certs/app.pem\n"
        "    certificate_password_env: CERT_PASSWORD",
        {"certificate_path": "certs/app.pem", "certificate_password_env": "CERT_PASSWORD"},
    ),
    "federated_github": (
        "method: federated\n    tenant_id: 11111111-2222-3333-4444-555555555555\n"
        "    client_id: 22222222-3333-4444-5555-666666666666\n    federated_provider: github",
        {"federated_provider": "github"},
    ),
    "federated_ado": (
        "method: federated\n    tenant_id: 11111111-2222-3333-4444-555555555555\n"
        "    client_id: 22222222-3333-4444-5555-666666666666\n    federated_provider: azure_devops\n"
        "    azure_devops_service_connection_id: 33333333-4444-5555-6666-777777777777",
        {
            "federated_provider": "azure_devops",
            "azure_devops_service_connection_id": "33333333-4444-5555-6666-777777777777",
        },
    ),
    "federated_file": (
        "method: federated\n    tenant_id: 11111111-2222-3333-4444-555555555555\n"
        "    client_id: 22222222-3333-4444-5555-666666666666\n    federated_token_file: /var/run/token\n"
        "    authority_host: http://127.0.0.1:9999/",
        {"federated_token_file": "/var/run/token", "authority_host": "http://127.0.0.1:9999"},
    ),
    "managed_identity": (
        "method: managed_identity\n    managed_identity_client_id: 44444444-5555-6666-7777-888888888888\n"
        "    cloud: china",
        {"managed_identity_client_id": "44444444-5555-6666-7777-888888888888", "cloud": "china"},
    ),
    "azure_cli": ("method: azure_cli", {}),
    "access_token": (
        "method: access_token\n    access_token_env: CONNREF_TOKEN",
        {"access_token_env": "CONNREF_TOKEN"},
    ),
}


@pytest.mark.parametrize("case", sorted(AUTH_CASES))
def test_every_auth_method(tmp_path: Path, case: str) -> None:
    body, options = AUTH_CASES[case]
    config = load_config(write(tmp_path, LOOPBACK_HEAD + "auth:\n  a:\n    " + body + "\n"))
    profile = config.auth["a"]
    assert profile.method == body.split()[1]
    # File options are made absolute against the config's folder, so auth need not know it.
    expected = {
        k: str(tmp_path / v) if k.endswith(("_file", "_path")) and not v.startswith("/") else v
        for k, v in options.items()
    }
    assert dict(profile.options) == expected


def test_anchors_aliases_and_merge_keys(tmp_path: Path) -> None:
    text = """\
        version: 1
        solution: ContosoFlows
        references:
          contoso_A: &sp
            connector: shared_sharepointonline
            display_name: SharePoint ContosoFlows
          contoso_B:
            <<: *sp
            display_name: SharePoint B
          contoso_C:
            <<: [{description: from the first}, {description: from the second, display_name: C}]
            connector: shared_teams
        environments:
          dev: &env
            url: http://127.0.0.1:8080
            auth: a
          test: *env
        auth:
          a: {method: azure_cli}
        """
    config = load_config(write(tmp_path, text))
    assert config.references["contoso_A"].display_name == "SharePoint ContosoFlows"
    b = config.references["contoso_B"]
    assert b.connector == CONNECTOR_PREFIX + "shared_sharepointonline"
    assert b.display_name == "SharePoint B"  # the explicit key wins over the merged one
    c = config.references["contoso_C"]
    assert (c.description, c.display_name) == ("from the first", "C")  # the earlier merged mapping wins
    assert config.environments["test"].url == config.environments["dev"].url
    assert config.environments["test"].name == "test"


def test_anchor_outside_known_keys_is_an_unknown_key(tmp_path: Path) -> None:
    text = "x-defaults: &sp\n  a: 1\n" + LOOPBACK_HEAD + "auth:\n  a: {method: azure_cli}\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value).endswith(
        ":1:1: x-defaults: unknown key; expected one of: version, solution, references, "
        "environments, auth, prune, naming, lint, state"
    )


def test_merge_key_does_not_count_as_duplicate_but_repeated_explicit_key_does(tmp_path: Path) -> None:
    base = LOOPBACK_HEAD + "auth:\n  a: {method: azure_cli}\n"
    text = base.replace("  contoso_SharePoint:\n", "  contoso_SharePoint: &base\n").replace(
        "environments:\n",
        "  contoso_Other:\n    <<: *base\n    connector: shared_office365\n    connector: shared_teams\n"
        "environments:\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value) == (
        "connref.yaml:10:5: references.contoso_Other.connector: duplicate key; first defined at line 9, "
        "column 5 (YAML would silently keep only the last one)"
    ).replace("connref.yaml", str(tmp_path / "connref.yaml"))


def test_alias_bomb_is_not_expanded(tmp_path: Path) -> None:
    # Nine levels of ten aliases would be 10**9 nodes if expanded; the loader shares them.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = (
        LOOPBACK_HEAD + "auth:\n  a: {method: azure_cli}\nlint:\n  bomb:\n" + "".join(f"    {line}\n" for line in lines)
    )
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "lint.bomb: unknown key" in str(info.value)
    assert time.monotonic() - started < 5


def test_many_errors_are_collected_in_one_pass(tmp_path: Path) -> None:
    text = (
        DESIGN_EXAMPLE.replace("version: 1", "version: 3")
        .replace("shared_office365", "office365")
        .replace("auth: pipeline", "auth: pipelin")
        .replace("CONNREF_CLIENT_SECRET", "'not a name'")
    )
    with pytest.raises(ConfigErrors) as info:
        load_config(write(tmp_path, text))
    fields = [e.field for e in info.value.errors]
    assert fields == [
        "version",
        "references.contoso_Outlook.connector",
        "environments.dev.auth",
        "auth.pipeline.client_secret_env",
    ]
    assert all(e.location is not None and e.location.file.endswith("connref.yaml") for e in info.value.errors)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"))
    assert str(info.value).startswith(f"cannot read the config file {tmp_path / 'nope.yaml'}: ")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"version: 1\nsolution: Caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    assert str(info.value) == f"{bad}:2:14: the config file is not valid UTF-8"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + DESIGN_EXAMPLE.encode("utf-8"))
    assert load_config(str(path)).solution == "ContosoConnections"


def test_unbound_environment_and_empty_references_are_valid(tmp_path: Path) -> None:
    text = (
        "version: 1\nsolution: ContosoFlows\nreferences: {}\n"
        "environments:\n  dev:\n    url: http://localhost:1\n    auth: a\n"
        "auth:\n  a: {method: azure_cli}\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.references == {} and config.environments["dev"].bindings == {}


def test_no_network_during_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the config loader opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    config = load_config(write(tmp_path, DESIGN_EXAMPLE))
    assert config.environments["dev"].url.startswith("https://")


def test_load_config_text_uses_the_given_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("version: 1\nsolution: [x]\n", os.path.join("conf", "c.yaml"))
    assert (
        str(info.value).splitlines()[0] == os.path.join("conf", "c.yaml") + ":1:1: references: required key is missing"
    )


def test_optional_sections_may_be_empty(tmp_path: Path) -> None:
    text = LOOPBACK_HEAD.replace("    auth: a\n", "") + "auth:\nlint:\nstate:\nprune: false\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    # An empty auth section is no section: the remote environment still needs a profile.
    assert str(info.value).endswith(
        ":9:5: environments.dev.auth: required key is missing (the auth profile for a remote environment)"
    )
    text = text.replace("    url: http://127.0.0.1:8080\n", "    url: local:dev.json\n")
    (tmp_path / "dev.json").write_text("{}", encoding="utf-8")
    config = load_config(write(tmp_path, text))
    assert config.auth == {} and config.lint_ignore == () and config.state_dir is None


def test_replaces_loads_and_answers_which_reference_replaces_a_name(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, textwrap.dedent("""\
        version: 1
        solution: ContosoFlows
        references:
          contoso_SharePoint:
            connector: shared_sharepointonline
            display_name: SharePoint ContosoFlows
            replaces:
              - contoso_sharedsharepointonline_30e7d
              - contoso_sharedsharepointonline_8f4b0
          contoso_Outlook:
            connector: shared_office365
            display_name: Outlook ContosoFlows
            replaces: []
        environments:
          dev:
            url: http://127.0.0.1:8080
            auth: a
        auth:
          a: {method: azure_cli}
        """)))
    sharepoint = config.references["contoso_SharePoint"]
    assert sharepoint.replaces == ("contoso_sharedsharepointonline_30e7d", "contoso_sharedsharepointonline_8f4b0")
    assert config.references["contoso_Outlook"].replaces == ()
    assert config.replaced_by("CONTOSO_sharedsharepointonline_8F4B0") is sharepoint
    assert config.replaced_by("contoso_SharePoint") is None
    assert set(config.replacements) == {"contoso_sharedsharepointonline_30e7d", "contoso_sharedsharepointonline_8f4b0"}


def test_a_surrogate_pair_written_as_two_escapes_is_the_character_it_stands_for(tmp_path: Path) -> None:
    # JSON writes a character beyond U+FFFF as two \u escapes; the pure YAML loader keeps them apart.
    text = LOOPBACK_HEAD.replace("display_name: SharePoint ContosoFlows",
                                 'display_name: "SharePoint \\uD83D\\uDE00 ContosoFlows"')
    assert text != LOOPBACK_HEAD
    text += "auth:\n  a:\n    method: access_token\n    access_token_env: CONNREF_TOKEN\n"
    config = load_config_text(text, str(tmp_path / "connref.yaml"))
    (ref,) = config.references.values()
    assert ref.display_name == "SharePoint \U0001F600 ContosoFlows"
