"""``connref validate`` (and every command, since each loads the config first) on the bad-config corpus:
exit 1, every message on stderr exactly as the corpus expects, nothing on stdout, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.e2e_support import run_cli

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
