"""``make`` from nothing: a Python older than 3.11 is refused with what to do (and no half-built .venv is
left to be reused), and .venv is rebuilt when it was made from another interpreter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None or sys.platform == "win32", reason="needs make")


def _project(tmp_path: Path) -> Path:
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(ROOT / "Makefile", work / "Makefile")
    return work


def _fake_python(directory: Path, name: str, version: str) -> Path:
    """An executable that says it is Python ``version`` and fails every ``-c`` check, as an old one does."""
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Python {version}"; exit 0; fi\nexit 1\n')
    path.chmod(0o755)
    return path


def _make(work: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env.pop("PY", None)
    if path is not None:
        env["PATH"] = path
    make = shutil.which("make")
    assert make is not None
    # Without pip: what is tested is which interpreter .venv comes from, not the install (faster).
    return subprocess.run([make, "--no-print-directory", "VENV_ARGS=--without-pip", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_an_old_python_is_refused_before_any_venv(tmp_path: Path) -> None:
    work = _project(tmp_path)
    old = _fake_python(tmp_path / "bin", "python3", "3.10.12")
    r = _make(work, "test", f"PY={old}")
    assert r.returncode != 0
    assert f"connref needs Python 3.11 or newer; PY={old} is Python 3.10.12." in r.stdout
    assert "make PY=/path/to/python3.12 test" in r.stdout
    assert not (work / ".venv").exists()


def test_no_suitable_python_on_path_says_which_is_needed(tmp_path: Path) -> None:
    work = _project(tmp_path)
    bin_dir = tmp_path / "bin"
    _fake_python(bin_dir, "python3", "3.9.18")
    r = _make(work, "demo", path=str(bin_dir))
    assert r.returncode != 0
    assert "connref needs Python 3.11 or newer, and none of python3, python3.13, python3.12, python3.11 is." in r.stdout
    assert not (work / ".venv").exists()


def _identity(python: str) -> str | None:
    code = "import os, sys; print(os.path.realpath(getattr(sys, '_base_executable', sys.executable)))"
    try:
        out = subprocess.run([python, "-c", code + "; sys.exit(sys.version_info < (3, 11))"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out


def _two_interpreters() -> tuple[str, str] | None:
    mine = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    for candidate in ("python3.11", "python3.12", "python3.13", "/usr/bin/python3", "/usr/local/bin/python3"):
        found = shutil.which(candidate)
        if found and (other := _identity(found)) and other != mine:
            return mine, found
    return None


def test_venv_is_rebuilt_when_the_interpreter_changes(tmp_path: Path) -> None:
    pair = _two_interpreters()
    if pair is None:
        pytest.skip("needs two different Python 3.11+ interpreters on this machine")
    first, second = pair
    work = _project(tmp_path)
    r = _make(work, "venv-interpreter", f"PY={first}")
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = work / ".venv" / "pyvenv.cfg"
    made = cfg.stat().st_mtime_ns
    # Same interpreter: kept as it is.
    r = _make(work, "venv-interpreter", f"PY={first}")
    assert r.returncode == 0 and "Rebuilding" not in r.stdout
    assert cfg.stat().st_mtime_ns == made
    # Another interpreter: rebuilt, and it says why.
    r = _make(work, "venv-interpreter", f"PY={second}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Rebuilding .venv: it was made from" in r.stdout
    assert _identity(str(work / ".venv" / "bin" / "python")) == _identity(second)


def test_a_broken_venv_is_rebuilt(tmp_path: Path) -> None:
    work = _project(tmp_path)
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "python").write_text("#!/bin/sh\nexit 127\n")
    (work / ".venv" / "bin" / "python").chmod(0o755)
    r = _make(work, "venv-interpreter", f"PY={python}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "an interpreter that no longer runs" in r.stdout
    assert _identity(str(work / ".venv" / "bin" / "python")) == _identity(python)
