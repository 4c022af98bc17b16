"""The quickstart, end to end, on the embedded emulator: ``make demo`` runs this.

It copies the example config and environment data to a scratch folder (so the demo can be run
again and again from the same starting point), then shows what a team would do on day one: plan against
the messy dev environment (unmanaged: connref creates, renames and rebinds), the test environment the
pipeline just imported the solution into as managed (connref binds the references, sets their owner and
switches the flows on, child flows first) and prod, apply, and plan again to see nothing left to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRATCH = HERE.parent.parent / ".demo"


BOLD, PLAIN = ("\033[1m", "\033[0m") if sys.stdout.isatty() and not os.environ.get("NO_COLOR") else ("", "")


def step(title: str, *args: str, ok: tuple[int, ...] = (0,)) -> None:
    cmd = [sys.executable, "-m", "reconciler", "-c", str(SCRATCH / "connref.yaml"), *args]
    print(f"\n{BOLD}$ connref {' '.join(args)}{PLAIN}   # {title}", flush=True)
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
    step("what would change in dev (unmanaged), test (managed) and prod", "plan", ok=(0,))
    step("make it so, as the service account", "apply", "--auto-approve")
    step("nothing left to do: exit 0 with --detailed-exitcode", "plan", "--detailed-exitcode")
    step("nothing changed behind our back", "drift", ok=(0,))
    step("what is still messy in dev (warnings do not fail)", "lint", "-e", "dev", ok=(0, 2))
    where = SCRATCH.relative_to(Path.cwd()) if SCRATCH.is_relative_to(Path.cwd()) else SCRATCH
    print(f"\nDone. The scratch copy is in {where}/; try: .venv/bin/connref -c {where}/connref.yaml import -e dev")


if __name__ == "__main__":
    main()
