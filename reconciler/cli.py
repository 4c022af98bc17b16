"""The connref command line: argument parsing and exit codes, nothing else.

Each command is a plain function in ``commands.py`` that a test can call; this module turns
``argv`` into a call and every ``ConnrefError`` into exit code 1 with its message on stderr. Exit
codes: 0 success or nothing to do, 1 error, 2 "something to act on" (changes with
``--detailed-exitcode``, drift, lint findings at error severity).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from reconciler import __version__
from reconciler.errors import ConfigErrors, ConnrefError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="connref",
        description="Plan and apply Power Automate connection references per environment.",
    )
    p.add_argument("--version", action="version", version=f"connref {__version__}")
    p.add_argument("-c", "--config", default="connref.yaml", help="config file (default: connref.yaml)")
    p.add_argument("--no-color", action="store_true", help="plain output even on a terminal")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def envs(sp: argparse.ArgumentParser, required: bool = False, many: bool = True) -> None:
        if many:
            sp.add_argument("-e", "--env", dest="envs", action="append", required=required, metavar="ENV",
                            help="environment(s) to act on (repeatable; default: all)")
        else:
            sp.add_argument("-e", "--env", dest="env", required=True, metavar="ENV", help="environment")

    sub.add_parser("validate", help="check the config, no network")

    sp = sub.add_parser("plan", help="read live, diff against the config, print what apply would do")
    envs(sp)
    sp.add_argument("--out", metavar="FILE", help="save the plan for 'connref apply FILE'")
    sp.add_argument("--json", action="store_true", help="print the plan as JSON")
    sp.add_argument("--markdown", metavar="FILE", help="also write the plan as markdown")
    sp.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when there are changes")
    sp.add_argument("--prune", action="store_true", help="delete managed refs no longer declared")

    sp = sub.add_parser("apply", help="apply a fresh plan after confirmation, or exactly a saved plan")
    envs(sp)
    sp.add_argument("planfile", nargs="?", metavar="PLANFILE", help="a plan saved with 'plan --out'")
    sp.add_argument("--auto-approve", action="store_true", help="skip the confirmation prompt")
    sp.add_argument("--lock-timeout", type=float, default=0.0, metavar="SECONDS",
                    help="wait this long for another run's lock (default: 0)")
    sp.add_argument("--prune", action="store_true", help="delete managed references removed from the config")

    sp = sub.add_parser("drift", help="report what changed outside connref (read-only)")
    envs(sp)
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("--markdown", metavar="FILE", help="also write the report as markdown")

    sp = sub.add_parser("import", help="write YAML for what an environment has today")
    envs(sp, many=False)
    sp.add_argument("--solution", help="solution to import (default: the config's, else required)")
    sp.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    sp.add_argument("--from-settings", metavar="FILE",
                    help="read bindings from a deployment settings JSON into the config instead")

    sp = sub.add_parser("lint", help="naming policy, duplicates, personal or broken connections")
    envs(sp)
    sp.add_argument("--json", action="store_true", help="print findings as JSON")

    sp = sub.add_parser("settings", help="write the ConnectionReferences part of a deployment settings file")
    envs(sp, many=False)
    sp.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")

    sp = sub.add_parser("whoami", help="who connref authenticates as and which bindings it may use")
    envs(sp, many=False)

    sp = sub.add_parser("state", help="read the recorded state, release a stale lock")
    ssub = sp.add_subparsers(dest="state_command", metavar="SUBCOMMAND", required=True)
    ssub.add_parser("list", help="environments with state")
    x = ssub.add_parser("show", help="the state of one environment")
    x.add_argument("env", metavar="ENV")
    x.add_argument("--json", action="store_true", help="print the state document as JSON")
    x = ssub.add_parser("unlock", help="release a lock left by a killed run")
    x.add_argument("env", metavar="ENV")
    x.add_argument("lock_id", metavar="LOCK_ID")
    x = ssub.add_parser("restore", help="put the backup of an environment's state back")
    x.add_argument("env", metavar="ENV")

    sp = sub.add_parser("emulator", help="serve the local Dataverse + connections + token emulator")
    sp.add_argument("--port", type=int, default=8080, help="first port (default 8080; 0 picks one)")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    sp.add_argument("--data", action="append", default=[], metavar="FILE",
                    help="environment data file (repeatable: one port each)")
    sp.add_argument("--faults", metavar="FILE", help="fault-injection settings (JSON)")
    sp.add_argument("--tls-cert", metavar="PEM", help="serve https with this certificate")
    sp.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    sp.add_argument("--persist", action="store_true",
                    help="write changes back into the data files (default: serve from memory)")
    return p


def _use_color(args: argparse.Namespace) -> bool:
    if args.no_color or os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


def _terminate_like_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, and map errors to exit codes (the only place that does)."""
    args = _parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # A cancelled pipeline job or a stopped container sends SIGTERM: unwind as for Ctrl-C, so
        # locks are released and nothing is left half-recorded.
        signal.signal(signal.SIGTERM, _terminate_like_interrupt)
    from reconciler import commands

    color = _use_color(args)
    try:
        if args.command == "emulator":
            from reconciler.emulator.server import run_emulator_command

            return run_emulator_command(args)
        return commands.dispatch(args, color=color)
    except ConfigErrors as e:
        print(f"Error: {len(e.errors)} problems in the config:", file=sys.stderr)
        for one in e.errors:
            print(f"  {one}", file=sys.stderr)
        return e.exit_code
    except ConnrefError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``connref plan | head``): stop quietly, as other command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
