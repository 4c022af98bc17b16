"""What a run shows besides its result: colour by the conventions (NO_COLOR, FORCE_COLOR, TERM=dumb,
--no-color), the log level (-v, CONNREF_LOG), one line per step in logs, a live status per environment on
a terminal, and throttling waits that are never silent."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import pytest

from e2e.e2e_support import Served, Workspace, run_cli
from reconciler.api.client import loggable_url
from reconciler.console import ProgressHandler, color_enabled, log_threshold

SGR = re.compile(r"\x1b\[[0-9;]*m")  # a colour or style escape
ANY_ESCAPE = "\x1b["
REQUEST_LINE = re.compile(r"(GET|POST|PATCH|DELETE) (https?://\S+) -> \d{3}(?: \(\d+ ms\)|$)", re.MULTILINE)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# --------------------------------------------------------------------------- colour rules


@pytest.mark.parametrize(
    ("flag", "environ", "tty", "expected"),
    [
        (False, {}, True, True),
        (False, {}, False, False),
        (True, {}, True, False),  # --no-color
        (False, {"NO_COLOR": "1"}, True, False),
        (False, {"NO_COLOR": ""}, True, True),  # empty means unset (no-color.org)
        (False, {"FORCE_COLOR": "1"}, False, True),  # force-color.org: on even when piped
        (False, {"FORCE_COLOR": "0"}, False, True),  # any non-empty value
        (False, {"FORCE_COLOR": ""}, False, False),
        (False, {"NO_COLOR": "1", "FORCE_COLOR": "1"}, True, False),  # NO_COLOR wins
        (True, {"FORCE_COLOR": "1"}, True, False),  # --no-color wins
        (False, {"TERM": "dumb"}, True, False),
        (False, {"TERM": "dumb", "FORCE_COLOR": "1"}, True, True),  # forced on purpose
    ],
)
def test_colour_precedence(flag: bool, environ: dict[str, str], tty: bool, expected: bool) -> None:
    stream = _Tty() if tty else io.StringIO()
    assert color_enabled(stream, no_color_flag=flag, environ=environ) is expected


def test_force_color_colours_piped_output(quickstart: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    r = quickstart.run("plan", "-e", "dev")
    assert r.code == 0, r.err
    assert SGR.search(r.out)
    r = quickstart.run("plan", "-e", "dev", "--no-color")
    assert not SGR.search(r.out)


def _in_pty(argv: list[str], env: dict[str, str]) -> str:
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", *argv], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return out.decode("utf-8", "replace")


def _term_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "CONNREF_LOG")}
    env["TERM"] = "xterm-256color"
    env.update(extra)
    return env


@pytest.mark.emulator_only
@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_term_dumb_gets_neither_colour_nor_redraws(quickstart: Workspace) -> None:
    out = _in_pty(["-c", str(quickstart.config), "plan", "-e", "dev"], _term_env(TERM="dumb"))
    assert "Plan:" in out
    assert ANY_ESCAPE not in out
    # No live display: steps are plain log lines, as in a pipeline.
    assert "dev: reading" in out and "dev: read 4 reference(s)" in out


@pytest.mark.emulator_only
@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_live_status_per_environment_on_a_terminal(quickstart: Workspace) -> None:
    out = _in_pty(["-c", str(quickstart.config), "plan"], _term_env())
    assert "Plan:" in out
    # The final status line of each environment stays on screen; no timestamped log lines by default.
    assert re.search(r"✓ dev\s+read 4 reference\(s\)", out), out
    assert re.search(r"✓ prod\s+read 4 reference\(s\)", out), out
    assert not re.search(r"\[\s*\d+\.\ds\] dev: reading", out)
    assert SGR.search(out)


# --------------------------------------------------------------------------- log levels


def test_pipeline_logs_get_one_line_per_step(quickstart: Workspace) -> None:
    r = quickstart.run("plan")
    assert r.code == 0, r.err
    for env in ("dev", "prod"):
        assert re.search(rf"^\[\s*\d+\.\ds\] {env}: reading$", r.err, re.M), r.err
        assert re.search(rf"^\[\s*\d+\.\ds\] {env}: read 4 reference\(s\), \d+ connection\(s\)", r.err, re.M)
    assert not REQUEST_LINE.search(r.err)  # requests only with -v


def test_apply_logs_each_environment_and_batch(quickstart: Workspace) -> None:
    r = quickstart.run("apply", "--auto-approve", "-e", "dev")
    assert r.code == 0, r.err
    assert re.search(r"dev: applying \d+ change\(s\)", r.err)
    assert re.search(r"dev: batch 1/1 written \(\d+/\d+ changes\)", r.err)
    assert re.search(r"dev: applied: \d+ written", r.err)


def test_connref_log_warning_keeps_logs_quiet(quickstart: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNREF_LOG", "warning")
    r = quickstart.run("plan")
    assert r.code == 0
    assert r.err == ""


@pytest.mark.parametrize("how", ["-v", "--verbose", "env"])
def test_verbose_logs_every_request_without_query_values(
    quickstart: Workspace, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "env":
        monkeypatch.setenv("CONNREF_LOG", "debug")
        r = quickstart.run("plan", "-e", "dev")
    else:
        r = quickstart.run("plan", "-e", "dev", how)  # after the command, as a global option
    assert r.code == 0, r.err
    urls = REQUEST_LINE.findall(r.err)
    assert any("/api/data/v9.2/connectionreferences" in u for _, u in urls), r.err
    assert any("/oauth2/v2.0/token" in u for _, u in urls)  # token requests too (never their bodies)
    for _, url in urls:
        query = url.partition("?")[2]
        assert all(part.endswith("=...") for part in query.split("&") if part), url
    assert "ContosoFlows" not in "".join(u for _, u in urls)  # the $filter values are not logged


def test_verbose_before_and_after_the_command_add_up(quickstart: Workspace) -> None:
    r = run_cli("-v", "-c", str(quickstart.config), "validate", "-v")
    assert r.code == 0


def test_bad_connref_log_is_reported(quickstart: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNREF_LOG", "loud")
    r = quickstart.run("validate")
    assert r.code == 0
    assert "warning: CONNREF_LOG='loud' is not one of debug, info, warning, error" in r.err


def test_log_threshold_defaults() -> None:
    assert log_threshold(0, {}, live=True) == (logging.WARNING, None)
    assert log_threshold(0, {}, live=False) == (logging.INFO, None)
    assert log_threshold(1, {"CONNREF_LOG": "warning"}, live=False)[0] == logging.DEBUG
    assert log_threshold(0, {"CONNREF_LOG": "DEBUG"}, live=True)[0] == logging.DEBUG


def test_loggable_url_drops_user_info_and_query_values() -> None:
    assert loggable_url("https://user:pw@host.example:8443/a/b?x=secret&$filter=name eq 'y'") == (
        "https://host.example:8443/a/b?x=...&$filter=..."
    )
    assert loggable_url("http://[::1]:8080/p") == "http://[::1]:8080/p"
    assert "eyJ" not in loggable_url("https://h/eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2ln")


# --------------------------------------------------------------------------- throttling

# A read sent on its own in every plan (the Dataverse reads travel in read $batches, whose parts are not
# throttled one by one: the service throttles requests).
CONNECTION_LIST = "/providers/Microsoft.PowerApps/scopes/admin/environments/*/connections"


@pytest.mark.emulator_only
def test_a_throttling_wait_over_a_second_is_always_shown(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNREF_LOG", "warning")  # even with steps and requests hidden
    served.apps["dev"].faults.throttle(CONNECTION_LIST, retry_after=2, times=1)
    r = served.run("plan", "-e", "dev")
    assert r.code == 0, r.err
    assert re.search(
        r"^warning: dev: GET https://127\.0\.0\.1:\d+/providers/Microsoft\.PowerApps/scopes/admin/environments/"
        r"[0-9a-f-]+/connections\?api-version=\.\.\.: HTTP 429 \(throttled\), Retry-After 2 s; retry 1 of 5 in 2\.0 s$",
        r.err, re.M,
    ), r.err


@pytest.mark.emulator_only
def test_a_short_retry_is_logged_only_at_info(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    served.apps["dev"].faults.throttle(CONNECTION_LIST, retry_after=0, times=1)
    monkeypatch.setenv("CONNREF_LOG", "warning")
    r = served.run("plan", "-e", "dev")
    assert r.code == 0 and "retry 1 of 5" not in r.err
    served.apps["dev"].faults.throttle(CONNECTION_LIST, retry_after=0, times=1)
    monkeypatch.setenv("CONNREF_LOG", "info")
    r = served.run("plan", "-e", "dev")
    assert r.code == 0 and re.search(r"\] dev: GET \S+: HTTP 429 \(throttled\), Retry-After 0 s; retry 1 of 5", r.err)


def test_status_lines_follow_each_environment() -> None:
    """The live display's bookkeeping: a status per environment, requests counted, a wait noted, and the
    display closed once every environment has finished."""
    from reconciler import progress

    stream = _Tty()
    handler = ProgressHandler(stream, threshold=logging.WARNING, live=True, color=False)
    logger = logging.getLogger("reconciler")
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    client_log = logging.getLogger("reconciler.api.client")
    try:
        progress.step("dev", progress.START, "reading")
        progress.step("prod", progress.START, "reading")
        assert handler._display is not None
        for _ in range(3):
            client_log.debug("dev: GET x -> 200", extra={"connref_env": "dev", "connref_state": "request"})
        client_log.warning("dev: waiting", extra={"connref_env": "dev", "connref_state": "wait", "connref_delay": 4.0})
        assert handler._envs["dev"].requests == 3
        assert handler._envs["dev"].note == "waiting 4 s before a retry"
        progress.step("dev", progress.DONE, "read")
        assert handler._display is not None  # prod is still reading
        progress.step("prod", progress.FAILED, "reading failed")
        assert handler._display is None
        text = stream.getvalue()
        assert "warning: dev: waiting" in text
        assert "✓ dev" in text and "✗ prod" in text
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        handler.close()
