"""``connref validate`` (and every command, since each loads the config first) on the bad-config corpus:
exit 1, every message on stderr exactly as the corpus expects, nothing on stdout, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.e2e_support import Workspace, run_cli

CORPUS = Path(__file__).resolve().parents[1] / "config_corpus"
CASES = sorted(p.stem for p in CORPUS.glob("*.yaml"))


def _expected(name: str) -> list[str]:
    text = (CORPUS / f"{name}.expected").read_text().replace("{dir}", str(CORPUS))
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("name", CASES)
def test_validate_reports_every_error_with_its_location(name: str) -> None:
    r = run_cli("-c", str(CORPUS / f"{name}.yaml"), "validate")
    assert r.code == 1
    assert r.out == ""
    for line in _expected(name):
        assert line in r.err, f"missing from stderr: {line}\n---\n{r.err}"
    # One short report: no traceback (a RecursionError once printed ~200 KB), no echo of the file.
    assert "Traceback" not in r.err
    assert len(r.err) < 200 * max(1, len(_expected(name))) + 200


@pytest.mark.parametrize("command", [["plan"], ["apply", "--auto-approve"], ["drift"], ["lint"]])
def test_other_commands_stop_at_the_config_before_any_network(command: list[str]) -> None:
    r = run_cli("-c", str(CORPUS / "duplicate_reference.yaml"), *command)
    assert r.code == 1
    assert "duplicate" in r.err.lower()
    assert "http" not in r.err.lower()


@pytest.mark.parametrize("content, said", [
    (b"[" * 5000 + b"]" * 5000, "its JSON is nested too deeply to read"),
    (b"\xff\xfe{}", "not UTF-8 text (byte 0 cannot be read as UTF-8)"),
    (b'{"environment": ', "not valid JSON"),
])
def test_an_unreadable_local_data_file_is_an_error_naming_it_at_the_environments_url(
        quickstart: Workspace, content: bytes, said: str) -> None:
    (quickstart.dir / "dev.json").write_bytes(content)
    r = quickstart.run("plan", "-e", "dev")
    assert r.code == 1 and "Traceback" not in r.err, r.err
    (line,) = r.err.strip().splitlines()
    assert f"environments.dev.url: {quickstart.dir / 'dev.json'}: {said}" in line, line


def test_a_local_url_naming_a_directory_says_so(quickstart: Workspace) -> None:
    (quickstart.dir / "adir").mkdir()
    quickstart.config.write_text(quickstart.config.read_text().replace("local:dev.json", "local:adir", 1))
    r = quickstart.run("validate")
    assert r.code == 1
    assert "environments.dev.url: local: names a directory, adir" in r.err, r.err
