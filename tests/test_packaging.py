"""Packaging: every third-party package the code imports is declared with a lower bound, one version source,
an SPDX licence with its LICENSE file, and a wheel built without a single warning that carries the package
data (schemas) and the metadata people and tools read."""

from __future__ import annotations

import ast
import email
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import reconciler

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def lower_bounds() -> dict[str, str]:
    """``.ci/lower_bounds.py``'s reading of pyproject.toml (what make test-minimums pins)."""
    spec = importlib.util.spec_from_file_location("lower_bounds", ROOT / ".ci" / "lower_bounds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bounds: dict[str, str] = module.lower_bounds()
    return bounds


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_levels() -> set[str]:
    """Top-level modules the package imports (absolute imports, anywhere in a file, lazy ones too)."""
    found: set[str] = set()
    for path in (ROOT / "reconciler").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"reconciler", "__future__"}


def test_every_imported_package_is_declared() -> None:
    declared = {_canonical(name) for name in lower_bounds()}
    owners = metadata.packages_distributions()
    missing = []
    for module in sorted(_imported_top_levels()):
        dists = {_canonical(d) for d in owners.get(module, [module])}
        if not dists & declared:
            missing.append(f"{module} (from {', '.join(sorted(dists))})")
    assert missing == [], "imported but not declared in pyproject.toml dependencies"


def test_declared_packages_are_imported() -> None:
    """Nothing declared that the code does not use (a leftover pin holds back everyone's resolver)."""
    owners = metadata.packages_distributions()
    used = {_canonical(d) for m in _imported_top_levels() for d in owners.get(m, [m])}
    assert {_canonical(n) for n in lower_bounds()} - used == set()


def test_every_runtime_dependency_has_a_lower_bound() -> None:
    deps = PYPROJECT["project"]["dependencies"]
    assert len(lower_bounds()) == len(deps)


def test_one_version_source() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "reconciler.__version__"}
    assert metadata.version("connref") == reconciler.__version__


def test_spdx_licence_and_licence_file() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A wheel built from a copy of the project with the installed setuptools (no network), and what the
    build printed."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "reconciler", src / "reconciler", ignore=shutil.ignore_patterns("__pycache__"))
    out = src / "dist"
    code = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    # Byte-compiling disabled (PYTHONDONTWRITEBYTECODE) makes setuptools say so; it is not about the project.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "PYTHONDONTWRITEBYTECODE")}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True,
                          timeout=300, check=False, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    return out / proc.stdout.strip().splitlines()[-1], log


def test_build_emits_no_warning(wheel: tuple[Path, str]) -> None:
    _, log = wheel
    assert not re.search(r"warn|deprecat", log, re.IGNORECASE), log


def test_wheel_metadata_and_contents(wheel: tuple[Path, str]) -> None:
    path, _ = wheel
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_string(z.read(meta_name).decode("utf-8"))
    assert meta["Version"] == reconciler.__version__
    assert meta["License-Expression"] == "MIT"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    requires = {_canonical(re.split(r"[ <>=!;\[]", r, maxsplit=1)[0]) for r in meta.get_all("Requires-Dist") or []}
    assert {_canonical(n) for n in lower_bounds()} <= requires
    schemas = [n for n in names if n.startswith("reconciler/schemas/") and n.endswith(".json")]
    assert schemas, "the JSON Schemas must ship in the wheel"
