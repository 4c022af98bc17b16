"""The lower bounds of connref's runtime dependencies, from pyproject.toml.

    python .ci/lower_bounds.py           # pip constraints: one NAME==LOWER_BOUND per runtime dependency
    python .ci/lower_bounds.py --check   # exit 1 unless the installed versions are exactly those bounds

``make test-minimums`` installs the project with these constraints into a fresh venv, checks that pip
really installed the bounds, and runs the suite there: a declared minimum that does not work fails it.
Every runtime dependency must have a ``>=`` bound (anything else is an error here).
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,.*)?$")


def lower_bounds(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """Distribution name -> lower bound, for every runtime dependency."""
    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    bounds: dict[str, str] = {}
    for dep in deps:
        m = _REQ.match(dep.split(";")[0])
        if not m:
            raise SystemExit(f"{pyproject}: dependency {dep!r} has no '>=' lower bound")
        bounds[m.group(1)] = m.group(2)
    return bounds


def _normal(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", version)]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def main(argv: list[str]) -> int:
    bounds = lower_bounds()
    if argv[1:] == ["--check"]:
        wrong = []
        for name, bound in bounds.items():
            try:
                installed = metadata.version(name)
            except metadata.PackageNotFoundError:
                installed = "not installed"
            if installed == "not installed" or _normal(installed) != _normal(bound):
                wrong.append(f"{name}: declared >={bound}, installed {installed}")
        if wrong:
            print("not at the declared lower bounds:\n  " + "\n  ".join(wrong), file=sys.stderr)
            return 1
        print("installed at the declared lower bounds: " + ", ".join(f"{n}=={v}" for n, v in bounds.items()))
        return 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    for name, bound in bounds.items():
        print(f"{name}=={bound}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
