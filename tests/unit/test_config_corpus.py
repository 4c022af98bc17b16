"""Bad-config corpus: every ``tests/config_corpus/NAME.yaml`` must fail with exactly the message in
``NAME.expected`` (``file:line:column: field: message``, one line per error; ``{dir}`` stands for
the corpus folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.config.loader import load_config
from reconciler.errors import ConfigError, ConfigErrors

CORPUS = Path(__file__).resolve().parents[1] / "config_corpus"
CASES = sorted(p.stem for p in CORPUS.glob("*.yaml"))
LINE_RE = re.compile(r"^(?P<file>[\w.-]+\.yaml):(?P<line>\d+):(?P<col>\d+): ")


def _load_error(name: str, monkeypatch: pytest.MonkeyPatch) -> ConfigError:
    monkeypatch.chdir(CORPUS)
    with pytest.raises(ConfigError) as info:
        load_config(f"{name}.yaml")
    return info.value


def test_corpus_is_complete() -> None:
    assert len(CASES) >= 60
    missing = [c for c in CASES if not (CORPUS / f"{c}.expected").is_file()]
    assert missing == []
    orphans = [p.stem for p in CORPUS.glob("*.expected") if not (CORPUS / f"{p.stem}.yaml").is_file()]
    assert orphans == []


@pytest.mark.parametrize("name", CASES)
def test_bad_config_message(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = (CORPUS / f"{name}.expected").read_text(encoding="utf-8").rstrip("\n")
    expected = expected.replace("{dir}", str(CORPUS))
    err = _load_error(name, monkeypatch)
    assert str(err) == expected
    # Every line names the file and a position inside it.
    lines = str(err).splitlines()
    source_lines = (CORPUS / f"{name}.yaml").read_text(encoding="utf-8").splitlines() or [""]
    for line in lines:
        m = LINE_RE.match(line)
        assert m, line
        assert m["file"] == f"{name}.yaml"
        assert 1 <= int(m["line"]) <= len(source_lines) + 1
    # Several problems come as ConfigErrors, one ConfigError each, in file order.
    if len(lines) > 1:
        assert isinstance(err, ConfigErrors)
        assert [str(e) for e in err.errors] == lines
        positions = [(e.location.line, e.location.column) for e in err.errors if e.location]
        assert positions == sorted(positions)
    else:
        assert not isinstance(err, ConfigErrors)
        assert err.location is not None and err.location.file == f"{name}.yaml"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("inline_client_secret", "Not-a-real-secret"),
        ("inline_password_elsewhere", "hunter2"),
        ("jwt_in_description", "eyJhbGciOiJSUzI1NiJ9"),
        ("pem_block", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
        ("entra_secret_as_client_id", "Xy71Q~abcdefghijklmnopqrstuvwxyz0123456_"),
        ("entra_secret_in_description", "Qm82Q~Abcdefghijklmnopqrstuvwxyz01234.5"),
        ("secret_in_file_path", "jS8vQ2pLx9Tr4NwZb7Ke-Ua"),
        ("secret_in_env_var_name", "s3cr3t value!"),
        ("url_with_credentials", "pa55"),
    ],
)
def test_messages_never_echo_a_secret(name: str, secret: str, monkeypatch: pytest.MonkeyPatch) -> None:
    err = _load_error(name, monkeypatch)
    assert secret not in str(err)
    assert secret not in repr(err.args)


def test_field_and_location_are_structured(monkeypatch: pytest.MonkeyPatch) -> None:
    err = _load_error("binding_undeclared_reference", monkeypatch)
    assert err.field == "environments.dev.bindings.contoso_Outlook"
    assert err.location is not None
    assert (err.location.line, err.location.column) == (11, 7)


@pytest.mark.parametrize("name", CASES)
def test_messages_are_the_same_without_libyaml(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader uses libyaml when PyYAML has it; without it (pure-Python parser) every message,
    line and column is the same."""
    from reconciler.config import yamlsource

    with_fast = str(_load_error(name, monkeypatch))
    monkeypatch.setattr(yamlsource, "FAST_LOADER", None)
    assert str(_load_error(name, monkeypatch)) == with_fast


def test_libyaml_is_used_when_present_and_gives_the_same_tree() -> None:
    import yaml

    from reconciler.config import yamlsource

    assert yamlsource.FAST_LOADER is getattr(yaml, "CSafeLoader", None)
    text = (CORPUS.parent.parent / "examples" / "quickstart" / "connref.yaml").read_text(encoding="utf-8")

    def flat(fast: bool) -> list[tuple[str, int, int, object]]:
        tree, errors = yamlsource.parse(text, "q.yaml", fast=fast)
        assert tree is not None and errors == []
        return [(type(n).__name__, n.loc.line, n.loc.column,
                 n.value if isinstance(n, yamlsource.Scalar) else None) for n in yamlsource.walk(tree)]

    assert flat(True) == flat(False)


TRICKY = """\
version: 1
'quoted key': "double"
plain: text
empty:
nulls: [~, null, Null]
numbers: [1, -2, 0x1F, 1.5, .inf]
flags: [true, False, yes, on]
date: 2026-03-01
stamp: 2026-03-01T09:00:00Z
nested:
  - a: 1
    b: [x, 'y']
  - {c: d}
block: |
  two
  lines
1: integer key
"""


@pytest.mark.parametrize("text", [TRICKY, "", "# only a comment\n", "---\n", "- a\n- b\n", "plain scalar\n"])
def test_plain_documents_are_built_from_events_into_the_same_tree(text: str) -> None:
    import yaml

    from reconciler.config import yamlsource

    def flat(tree: yamlsource.YNode | None) -> list[tuple[object, ...]]:
        if tree is None:
            return []
        return [(type(n).__name__, n.loc, n.value if isinstance(n, yamlsource.Scalar) else None,
                 n.text if isinstance(n, yamlsource.Scalar) else None,
                 n.quoted if isinstance(n, yamlsource.Scalar) else None) for n in yamlsource.walk(tree)]

    built = yamlsource._build_plain(yaml.CSafeLoader, text, "t.yaml")
    assert built is not None  # plain: no composer needed
    composed = yamlsource._parse_with(yaml.SafeLoader, text, "t.yaml")
    assert built[1] == composed[1] == []
    assert flat(built[0]) == flat(composed[0])


@pytest.mark.parametrize("text", ["a: &x 1\nb: *x\n", "a: !!str 1\n", "<<: {a: 1}\nb: 2\n", "a: 1\na: 2\n",
                                  "? [a]\n: 1\n", "a: 1\n---\nb: 2\n", "a: 2026-13-45\n"])
def test_other_documents_go_through_the_composer(text: str) -> None:
    import yaml

    from reconciler.config import yamlsource

    assert yamlsource._build_plain(yaml.CSafeLoader, text, "t.yaml") is None
