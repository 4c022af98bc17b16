"""The quickstart, end to end, on the embedded emulator: ``make demo`` runs this.

It copies the example config and environment data to a scratch folder (so the demo can be run
again and again from the same starting point), then shows what a team would do on day one:
plan against the messy dev and prod environments, apply, and plan again to see nothing left to do.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRATCH = HERE.parent.parent / ".demo"


def step(title: str, *args: str, ok: tuple[int, ...] = (0,)) -> None:
    cmd = [sys.executable, "-m", "reconciler", "-c", str(SCRATCH / "connref.yaml"), *args]
    print(f"\n\033[1m$ connref {' '.join(args)}\033[0m   # {title}", flush=True)
    code = subprocess.run(cmd, check=False).returncode
    if code not in ok:
        print(f"demo: 'connref {' '.join(args)}' exited {code}", file=sys.stderr)
        raise SystemExit(1)


def main() -> None:
    if SCRATCH.exists():
        shutil.rmtree(SCRATCH)
    shutil.copytree(HERE, SCRATCH, ignore=shutil.ignore_patterns("demo.py", "__pycache__", "make_data.py"))
    print(f"Copied the quickstart to {SCRATCH} (the examples stay untouched).")
    step("check the config, no network", "validate")
    step("what would change in dev and prod", "plan", ok=(0,))
    step("make it so, as the service account", "apply", "--auto-approve")
    step("nothing left to do: exit 0 with --detailed-exitcode", "plan", "--detailed-exitcode")
    step("nothing changed behind our back", "drift", ok=(0,))
    print("\nDone. Try 'connref lint -e dev' on the same files to see the mess that is left to tidy:")
    print(f"  .venv/bin/connref -c {SCRATCH.relative_to(Path.cwd()) if SCRATCH.is_relative_to(Path.cwd()) else SCRATCH}"
          "/connref.yaml lint -e dev")


if __name__ == "__main__":
    main()
