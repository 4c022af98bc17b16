"""The commit an apply records in the state: from the pipeline's variables, else from git (a real
repository made by the git command line)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reconciler.state import record


def test_git_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_SHA", raising=False)
    monkeypatch.delenv("BUILD_SOURCEVERSION", raising=False)
    assert record.git_commit(tmp_path) is None  # not a repository
    monkeypatch.setenv("GITHUB_SHA", "f" * 40)
    assert record.git_commit(tmp_path) == "f" * 40
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True, env=env)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    assert record.git_commit(repo) == head
