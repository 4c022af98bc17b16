"""Remote mode without a tenant: the unmarked contract tests, and the test files outside tests/emulator/
ported like them (``PORTED_FILES`` in tests/conftest.py), run through the exact code path a real
environment takes (CONNREF_REMOTE_URL/TOKEN/FIXTURE), against a ``connref emulator`` started outside
pytest on a copy of the sample data. Afterwards the environment must be as it was: the tests deleted
every row they created. (docs/emulator.md, "Running the contract tests against a real environment")"""

from __future__ import annotations

import importlib.util
import json
import operator
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.emulator import jwt
from reconciler.emulator.factory import Sample, sample_environment

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# Bounded: the remote-mode run of tests/emulator and the ported files takes a few seconds on two cores.
INNER_TIMEOUT_S = 240
# Tests of the ported files that write (and must clean up) references: they have to pass, not be skipped.
MUST_PASS = (
    "tests/test_client_emulator.py::test_batch_writes_a_change_set",
    "tests/test_client_emulator.py::test_batch_failure_rolls_back_and_names_the_failed_operation",
    "tests/test_client_emulator.py::test_batch_impersonates_with_caller_object_id",
)


def _root_conftest() -> Any:
    # tests/conftest.py builds the fixture document and lists the ported files; load it by path (the
    # module name "conftest" is ambiguous, tests/e2e has one too).
    spec = importlib.util.spec_from_file_location("connref_tests_root_conftest", HERE.parent / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def _fixture_document() -> dict[str, Any]:
    module = _root_conftest()
    return dict(module.fixture_document(module.Target.sample()))


def _ported_files() -> list[str]:
    return [str(HERE.parent / name) for name in sorted(_root_conftest().PORTED_FILES)]


def _snapshot(url: str, token: str) -> dict[str, Any]:
    """What the contract tests may touch, read over HTTP as the application."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url + "/api/data/v9.2/", headers=headers, timeout=10) as c:
        for entity, cols in (
            ("connectionreferences", "connectionreferenceid,connectionreferencelogicalname,connectionid,"
             "description,_ownerid_value,versionnumber"),
            ("solutioncomponents", "solutioncomponentid,objectid,_solutionid_value"),
            ("workflows", "workflowid,statecode,versionnumber"),
        ):
            r = c.get(entity, params={"$select": cols})
            assert r.status_code == 200, r.text
            key = cols.split(",")[0]
            out[entity] = sorted(r.json()["value"], key=operator.itemgetter(key))
    return out


@pytest.mark.emulator_only(reason="starts the emulator command itself")
def test_unmarked_contract_tests_pass_in_remote_mode(tmp_path: Path, signing_key_pem: str) -> None:
    data_file = tmp_path / "dev.json"
    data_file.write_text(json.dumps(sample_environment(signing_key_pem=signing_key_pem)), encoding="utf-8")
    fixture_file = tmp_path / "remote-fixture.json"
    fixture_file.write_text(json.dumps(_fixture_document(), indent=2), encoding="utf-8")

    server = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "emulator", "--port", "0", "--data", str(data_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert m, f"no URL in the emulator's first line: {line!r}"
        url = m.group(1)
        # What a real pipeline would hold: the application's token for the environment's URL.
        token = jwt.mint(
            signing_key_pem,
            tenant_id=Sample.TENANT_ID,
            object_id=Sample.APP_OBJECT_ID,
            app_id=Sample.APP_CLIENT_ID,
            audience=Sample.URL,
        )
        before = _snapshot(url, token)

        env = {
            k: v for k, v in os.environ.items() if not k.startswith("CONNREF_REMOTE_") and k != "PYTEST_ADDOPTS"
        }
        env.update(CONNREF_REMOTE_URL=url, CONNREF_REMOTE_TOKEN=token, CONNREF_REMOTE_FIXTURE=str(fixture_file))
        ported = _ported_files()
        assert ported and all(Path(f).is_file() for f in ported), ported
        inner = subprocess.run(
            [sys.executable, "-m", "pytest", str(HERE), *ported, "-p", "no:cacheprovider", "-rsp", "--no-header"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=INNER_TIMEOUT_S,
        )
        out = inner.stdout
        assert inner.returncode == 0, out[-6000:] + inner.stderr[-2000:]
        summary = out.strip().splitlines()[-1]
        print("remote mode:", summary)  # shown with -s / in CI logs
        passed_m, skipped_m = re.search(r"(\d+) passed", summary), re.search(r"(\d+) skipped", summary)
        assert passed_m and skipped_m, summary
        passed, skipped = int(passed_m.group(1)), int(skipped_m.group(1))
        assert "failed" not in summary and "error" not in summary, summary
        assert passed >= 60, summary  # the unmarked contract tests really ran
        passed_ids = {ln.split()[1] for ln in out.splitlines() if ln.startswith("PASSED ")}
        assert set(MUST_PASS) <= passed_ids, sorted(set(MUST_PASS) - passed_ids)
        for f in ported:  # each ported file took part (none is skipped wholesale: see the reasons below)
            assert any(p.startswith(str(Path(f).relative_to(REPO))) for p in passed_ids), f
        # Every skip says why, and every one is an emulator_only test (none skipped for other reasons
        # except a fixture-file entry left out on purpose).
        reasons = [ln for ln in out.splitlines() if ln.startswith("SKIPPED")]
        counts = [re.search(r"\[(\d+)\]", ln) for ln in reasons]
        assert sum(int(m.group(1)) for m in counts if m) == skipped
        assert all("remote mode: emulator_only: " in ln for ln in reasons), reasons

        # The run left the environment as it was.
        after = _snapshot(url, token)
        for entity, rows in before.items():
            left = [row for row in after[entity] if row not in rows]
            gone = [row for row in rows if row not in after[entity]]
            assert (left, gone) == ([], []), f"{entity}: left behind {left}, changed or removed {gone}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
