"""The config's JSON Schema (``connref schema``) agrees with the loader: every config the loader accepts,
the schema accepts; every corpus file the loader refuses for a structural reason (a key, a type, a value's
form), the schema refuses too. What a schema cannot express is listed here with its reason, and checked
to still be beyond it, so the list cannot go stale."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from e2e.e2e_support import run_cli

from reconciler.config.loader import load_config
from reconciler.config.schema import FILE_NAME, config_schema, render_schema
from reconciler.errors import ConfigError
from reconciler.schemas import load_schema

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "config_corpus"
CASES = sorted(p.stem for p in CORPUS.glob("*.yaml"))

# Corpus cases the loader refuses for a reason no JSON Schema can state.
BEYOND_SCHEMA = {
    "auth_profile_undeclared": "an environment names an auth profile that is not declared (a cross-reference)",
    "auth_section_missing": "an environment names an auth profile and there is no auth section (a cross-reference)",
    "state_azurerm_auth_undeclared": "the state backend names an auth profile that is not declared (a cross-reference)",
    "binding_case_mismatch": "a binding names a declared reference in another case (a cross-reference)",
    "binding_undeclared_reference": "a binding names a reference that is not declared (a cross-reference)",
    "logical_names_differ_in_case": "two keys differ only in case (the schema compares keys exactly)",
    "prefix_mismatch": "all references share one publisher prefix (a relation between keys)",
    "duplicate_reference": "a duplicate key (gone once the YAML is parsed into data)",
    "duplicate_url": "a duplicate key (gone once the YAML is parsed into data)",
    "local_file_missing": "the local: data file must exist (the file system)",
    "naming_unbalanced": "the naming template's braces (a format string)",
    "naming_unknown_placeholder": "the naming template's placeholders (a format string)",
    "jwt_in_description": "a secret pasted into a value (recognised by its shape anywhere)",
    "pem_block": "a secret pasted into a value (recognised by its shape anywhere)",
    "entra_secret_in_description": "a secret pasted into a value (recognised by its shape anywhere)",
    "secret_in_file_path": "a secret pasted where a file's path belongs (no such file, and its shape)",
    "replaces_declared": "a replaced name is also declared under references (a cross-reference)",
    "replaces_itself": "a reference replaces its own name (a cross-reference)",
    "replaces_twice": "two references replace the same name (a relation between references)",
    "replaces_listed_twice": "a name listed twice apart from case (the schema compares items exactly)",
    "flows_keep_off_duplicate": "two flow names that differ only in case (uniqueItems compares exactly)",
    "environment_names_differ_in_case": "two keys differ only in case (the schema compares keys exactly)",
    "flows_wait_octal": "010 is a number to the schema (YAML 1.1 reads it as octal 8; the editor as 10)",
    "state_dir_is_a_file": "state.dir must not be a file (the file system)",
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _data(path: Path) -> Any:
    """The YAML as plain data, as an editor's YAML server sees it; None when it is not valid YAML at all (an
    editor reports that itself, before any schema)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError, RecursionError):  # RecursionError: nested thousands deep
        return None


def test_the_committed_schema_is_the_generated_one() -> None:
    committed = (ROOT / "reconciler" / "schemas" / FILE_NAME).read_text(encoding="utf-8")
    assert committed == render_schema(), "regenerate: connref schema -o reconciler/schemas/config-1.json"
    assert load_schema("config") == config_schema()


def test_connref_schema_prints_it(tmp_path: Path) -> None:
    r = run_cli("schema")
    assert r.code == 0
    assert json.loads(r.out) == config_schema()
    out = tmp_path / "connref.schema.json"
    r = run_cli("schema", "-o", str(out))
    assert r.code == 0 and json.loads(out.read_text()) == config_schema()


@pytest.mark.parametrize("name", CASES)
def test_corpus_refusals_agree(name: str, validator: jsonschema.Draft202012Validator) -> None:
    path = CORPUS / f"{name}.yaml"
    with pytest.raises(ConfigError):
        load_config(str(path))
    data = _data(path)
    if data is None:
        assert name not in BEYOND_SCHEMA
        pytest.skip("not valid YAML: the editor reports it before the schema")
    errors = list(validator.iter_errors(data))
    if name in BEYOND_SCHEMA:
        assert errors == [], f"the schema now catches {name}: remove it from BEYOND_SCHEMA"
    else:
        assert errors, f"the loader refuses {name} for a structural reason the schema accepts"


def test_beyond_schema_names_real_cases() -> None:
    assert set(BEYOND_SCHEMA) <= set(CASES)


def _yaml_blocks(md: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", md.read_text(encoding="utf-8"), re.S)


def _good_configs(tmp_path: Path) -> list[Path]:
    """Every whole config in the repository the loader accepts: examples, and the yaml blocks of README and
    docs that start a config (written next to the quickstart data so local: paths resolve)."""
    found = sorted(ROOT.glob("examples/**/connref.yaml"))
    qs = ROOT / "examples" / "quickstart"
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    n = 0
    for md in docs:
        for block in _yaml_blocks(md):
            if not re.search(r"^version:", block, re.M):
                continue
            n += 1
            path = tmp_path / f"doc{n}.yaml"
            path.write_text(block, encoding="utf-8")
            for data in ("dev.json", "prod.json", ".demo-secret"):
                target = tmp_path / data
                if not target.exists():
                    target.write_bytes((qs / data).read_bytes())
            found.append(path)
    good = []
    for path in found:
        try:
            load_config(str(path))
        except ConfigError:
            continue
        good.append(path)
    return good


def test_every_config_the_loader_accepts_the_schema_accepts(
    tmp_path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    good = _good_configs(tmp_path)
    assert len(good) >= 4, good  # the quickstart, the README's and docs/config.md's examples
    for path in good:
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(_data(path))]
        assert errors == [], path


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("url: http://127.0.0.1:8080\n    auth: a", True),
        ("url: http://LOCALHOST:8080\n    auth: a", True),
        ("url: http://[::1]:8080\n    auth: a", True),
        ("url: https://127.0.0.1:8443\n    auth: a", True),  # loopback: no environment_id needed
        ("url: https://contoso.crm4.dynamics.com\n    auth: a", False),  # environment_id missing
        ("url: https://contoso.crm4.dynamics.com\n    auth: a\n    connections_url: https://x.example", True),
        ("url: local:dev.json", True),
        ("url: https://contoso.crm4.dynamics.com/?x=1\n    auth: a\n    environment_id: "
         "6f1c2a3b-0c4d-4e5f-8a9b-0c1d2e3f4a5b", False),
        ("url: http://127.0.0.1:8080", False),  # remote: auth needed
    ],
)
def test_environment_rules(text: str, ok: bool, validator: jsonschema.Draft202012Validator) -> None:
    doc = yaml.safe_load(
        "version: 1\nsolution: S\nreferences: {}\nenvironments:\n  dev:\n    " + text
        + "\nauth:\n  a:\n    method: azure_cli\n"
    )
    assert validator.is_valid(doc) is ok


def test_patterns_are_portable_to_editors() -> None:
    """Editors compile patterns as ECMA-262 (unicode mode): no Python-only syntax."""
    patterns: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "pattern" and isinstance(v, str):
                    patterns.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config_schema())
    assert len(patterns) > 10
    for p in patterns:
        assert not re.search(r"\(\?[PiLmsux<]|\\[AZdDwW]|\\-(?![^\[]*\])", p), p


def test_the_quickstart_carries_the_schema_its_config_names() -> None:
    # The quickstart is copied elsewhere (the README's tour, make demo): the schema goes with it, so an editor
    # still completes and checks the copy.
    quickstart = ROOT / "examples" / "quickstart"
    first = (quickstart / "connref.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=connref.schema.json"
    shipped = (quickstart / "connref.schema.json").read_text(encoding="utf-8")
    assert shipped == render_schema(), "regenerate: connref schema -o examples/quickstart/connref.schema.json"
