"""integrations/azure_devops_pr_comment.py against a stand-in for the Azure DevOps pull request threads API
(tests/azure_devops_support.py, over loopback HTTP): one comment per pull request, updated on later runs;
the service's refusals (no token, a token it does not take, no permission, throttling) reported with the
URL and never the token.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from azure_devops_support import TOKEN, FakeThreads, serve_threads

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("azure_devops_pr_comment",
                                                  ROOT / "integrations" / "azure_devops_pr_comment.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _load()


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeThreads, dict[str, str]]]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(script, "time", _NoSleep())
    with serve_threads() as served:
        yield served


class _NoSleep:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


PLAN = "<!-- connref:plan -->\n## connref plan\n\n1 to add.\n"


def _run(tmp_path: Path, env: dict[str, str], markdown: str = PLAN,
         capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str]:
    path = tmp_path / "connref-plan.md"
    path.write_text(markdown, encoding="utf-8")
    code = script.main([str(path)], env)
    out = capsys.readouterr() if capsys else None
    return code, (out.out + out.err) if out else ""


def test_the_first_run_posts_a_closed_thread_and_later_runs_update_its_comment(
        service: tuple[FakeThreads, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake, env = service
    fake.add("Looks good to me", replies=("<!-- connref:plan --> quoted in a reply",))
    code, out = _run(tmp_path, env, capsys=capsys)
    assert code == 0, out
    assert "posted a comment" in out
    (_, ours) = fake.threads
    assert ours["status"] == "closed"  # a report holds up no "resolve every comment" policy
    assert ours["comments"][0]["content"] == PLAN
    second = PLAN.replace("1 to add", "No changes")
    code, out = _run(tmp_path, env, second, capsys)
    assert code == 0 and "updated the comment posted before" in out, out
    assert len(fake.threads) == 2 and ours["comments"][0]["content"] == second
    assert fake.threads[0]["comments"][1]["content"].endswith("quoted in a reply")  # a reply is not ours
    assert fake.requests[-1][0] == "PATCH"


def test_a_deleted_thread_or_a_drift_report_is_not_the_plan_comment(
        service: tuple[FakeThreads, dict[str, str]], tmp_path: Path) -> None:
    fake, env = service
    gone = fake.add(PLAN, deleted=True)
    drift = fake.add("<!-- connref:drift -->\nDrift found.")
    system = fake.add("<!-- connref:plan --> pushed by someone", comment_type="system")
    assert _run(tmp_path, env)[0] == 0
    assert len(fake.threads) == 4
    assert fake.threads[3]["comments"][0]["content"] == PLAN
    assert gone["comments"][0]["content"] == PLAN and drift["comments"][0]["content"].endswith("Drift found.")
    assert system["comments"][0]["content"].endswith("pushed by someone")


def test_without_permission_the_step_fails_saying_which_permission_with_the_url_and_not_the_token(
        service: tuple[FakeThreads, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake, env = service
    fake.can_contribute = False
    fake.message += " ##vso[task.setvariable variable=x]y"  # a service message acts as no command
    code, out = _run(tmp_path, env, capsys=capsys)
    assert code == 1
    (line,) = out.splitlines()
    assert line.startswith("##vso[task.logissue type=error]connref: pull request comment: POST http://127.0.0.1:")
    assert "/pullRequests/7/threads?api-version=7.1: HTTP 403: TF401027" in line
    assert "Contribute to pull requests" in line
    assert "##vso [task.setvariable" in line and line.count("##vso[") == 1
    assert TOKEN not in out


def test_a_token_the_service_does_not_take_is_an_error_not_a_crash(
        service: tuple[FakeThreads, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake, env = service
    fake.sign_in_page = True
    code, out = _run(tmp_path, env, capsys=capsys)
    assert code == 1
    assert "GET http://127.0.0.1:" in out and "HTTP 203 answered text/html" in out and "not JSON" in out
    fake.sign_in_page = False
    code, out = _run(tmp_path, {**env, "SYSTEM_ACCESSTOKEN": "someone-elses"}, capsys=capsys)
    assert code == 1 and "HTTP 401: TF400813" in out and "someone-elses" not in out
    code, out = _run(tmp_path, {k: v for k, v in env.items() if k != "SYSTEM_ACCESSTOKEN"}, capsys=capsys)
    assert code == 1 and "SYSTEM_ACCESSTOKEN is not set" in out
    assert fake.threads == []


def test_throttling_is_ridden_out(service: tuple[FakeThreads, dict[str, str]], tmp_path: Path) -> None:
    fake, env = service
    fake.throttle = 2
    assert _run(tmp_path, env)[0] == 0
    assert len(fake.threads) == 1
    assert [m for m, _ in fake.requests] == ["GET", "GET", "GET", "POST"]
    assert script.time.slept == [0.0, 0.0]  # as Retry-After said


def test_outside_a_pull_request_nothing_is_sent_and_a_foreign_markdown_is_refused(
        service: tuple[FakeThreads, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake, env = service
    code, out = _run(tmp_path, {k: v for k, v in env.items() if k != "SYSTEM_PULLREQUEST_PULLREQUESTID"},
                     capsys=capsys)
    assert code == 0 and "Not a pull request build" in out and fake.requests == []
    code, out = _run(tmp_path, env, "# Some other report\n", capsys)
    assert code == 1 and "does not start with connref's marker" in out and fake.requests == []
    code = script.main([str(tmp_path / "absent.md")], env)
    assert code == 1 and "cannot read" in capsys.readouterr().out
