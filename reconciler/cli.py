"""The connref command line: argument parsing and exit codes, nothing else.

Each command is a plain function in ``commands.py`` that a test can call; this module turns
``argv`` into a call and every ``ConnrefError`` into exit code 1 with its message on stderr. Exit
codes: 0 success or nothing to do, 1 error, 2 "something to act on" (changes with
``--detailed-exitcode``, drift, lint findings at error severity).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from reconciler import __version__
from reconciler.errors import ConfigErrors, ConnrefError

#: The default config file, when neither ``-c`` nor ``CONNREF_CONFIG`` names one.
DEFAULT_CONFIG = "connref.yaml"
CONFIG_ENV = "CONNREF_CONFIG"

#: Shells ``connref completion`` writes scripts for.
SHELLS = ("bash", "zsh", "fish")

#: Commands that act on exactly one environment (``-e`` once); the others take several or all.
SINGLE_ENV_COMMANDS = ("import", "settings", "whoami", "explain")


class Parser(argparse.ArgumentParser):
    """argparse with connref's usage errors: exit 1 (2 means "changes", "drift" or "findings"), the usage
    of the command that was being parsed, and a did-you-mean for a mistyped command, option or choice."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        lines = [f"{self.prog}: error: {message}"]
        hint = self.suggestion(message)
        if hint:
            lines.append(hint)
        what = "the commands and options" if " " not in self.prog else "the options of this command"
        lines.append(f"Run '{self.prog} --help' for {what}.")
        self.exit(1, "\n".join(lines) + "\n")

    def suggestion(self, message: str) -> str | None:
        """A did-you-mean for the value the message complains about, from this parser's own options
        (global options included) and choices."""
        m = re.search(r"invalid choice: (?:'([^']*)'|\"([^\"]*)\"|(\S+))", message)
        if m:
            value = next(g for g in m.groups() if g is not None)
            choices = [str(c) for a in self._actions if a.choices for c in a.choices]
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            return f"Did you mean '{close[0]}'?" if close else None
        m = re.search(r"unrecognized arguments: (.*)", message)
        if m:
            options = {o.lstrip("-"): o for a in self._actions for o in a.option_strings if o.startswith("--")}
            hints = []
            for token in m.group(1).split():
                name = token.split("=", 1)[0]
                if not name.startswith("--"):
                    continue
                close = difflib.get_close_matches(name.lstrip("-"), list(options), n=1, cutoff=0.7)
                if close:
                    hints.append(f"Did you mean '{options[close[0]]}' (for '{name}')?")
            return "\n".join(hints) or None
        return None

    def parse_args(  # type: ignore[override]  # typeshed overloads it; connref calls only this form
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            # Reported by the command that was parsing, with its usage, not the top-level one.
            chosen_parser(self, ns).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


def chosen_parser(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)parser the parsed ``ns`` went through (``connref state show`` -> its parser)."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            return parser
        name = getattr(ns, sub.dest, None)
        if name not in sub.choices:
            return parser
        parser = sub.choices[name]


class EnvAction(argparse.Action):
    """``-e dev prod``, ``-e dev,prod`` and ``-e dev -e prod`` all give ``["dev", "prod"]``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        names = list(getattr(namespace, self.dest, None) or [])
        for value in [values] if isinstance(values, str) else list(values or []):
            for part in str(value).split(","):
                if not part.strip():
                    parser.error(f"argument {option_string}: an empty environment name in {value!r}")
                names.append(part.strip())
        setattr(namespace, self.dest, names)


def path_arg(value: str) -> str:
    """The ``type`` of every option and argument that takes a path. An empty or blank value is a usage error
    naming the option: it is what an unset variable gives (``apply --auto-approve "$PLANFILE"``), and taking
    it as "not given" would apply a fresh, unreviewed plan, save no plan, or read another config."""
    if not value.strip():
        raise argparse.ArgumentTypeError(
            f"expected a path, got {value!r} (an empty path; is the variable that should hold it unset?)"
        )
    return value


def _global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command accepts, before or after the command name. On the top-level parser
    they carry the defaults; on a command they are only set when given (``SUPPRESS``), so a value given
    before the command is kept, and one given after it wins. ``-v`` after the command counts apart
    (``verbose_after``) and is added up."""
    default: Any = None if top else argparse.SUPPRESS
    g = p.add_argument_group("global options") if not top else p
    g.add_argument("-c", "--config", metavar="PATH", default=default, type=path_arg,
                   help=f"config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})")
    g.add_argument("--no-color", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="plain output even on a terminal")
    g.add_argument("-v", "--verbose", dest="verbose" if top else "verbose_after", action="count",
                   default=0 if top else argparse.SUPPRESS,
                   help="log each request, retry and wait on stderr (as CONNREF_LOG=debug)")


def build_parser() -> Parser:
    p = Parser(
        prog="connref",
        description="Plan and apply Power Automate connection references per environment.",
        epilog="Global options (-c, --no-color, -v) go before or after the command. "
        "Exit codes: 0 ok, 1 error (usage errors too), 2 changes/drift/findings where the command says so.",
    )
    p.add_argument("--version", action="version", version=f"connref {__version__}")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".")
        _global_options(sp, top=False)
        return sp

    def envs(sp: argparse.ArgumentParser, many: bool = True) -> None:
        if many:
            sp.add_argument("-e", "--env", dest="envs", action=EnvAction, nargs="+", metavar="ENV",
                            help="environment(s) to act on: -e dev prod, -e dev,prod or -e dev -e prod "
                            "(default: all)")
        else:
            sp.add_argument("-e", "--env", dest="envs", action=EnvAction, nargs="+", required=True, metavar="ENV",
                            help="the one environment to act on")

    command("validate", "check the config, no network")

    sp = command("plan", "read live, diff against the config, print what apply would do")
    envs(sp)
    sp.add_argument("--out", metavar="FILE", type=path_arg, help="save the plan for 'connref apply FILE'")
    sp.add_argument("--json", action="store_true", help="print the plan as JSON")
    sp.add_argument("--markdown", metavar="FILE", type=path_arg, help="also write the plan as markdown")
    sp.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when there are changes")
    sp.add_argument("--prune", action="store_true", help="delete managed refs no longer declared")
    sp.add_argument("--explain", action="store_true",
                    help="also show who the flows the plan changes will run as (as connref explain does)")

    sp = command("explain", "who each flow runs as and why: trigger, references, connections, owners")
    sp.add_argument("-e", "--env", dest="envs", action=EnvAction, required=True, metavar="ENV",
                    help="the one environment to read")
    sp.add_argument("flows", nargs="*", metavar="FLOW",
                    help="flows to explain, by name or workflowid (default: the solution's flows)")
    sp.add_argument("--json", action="store_true", help="print the explanation as JSON")

    sp = command("show", "print a saved plan for review (no config, no network)")
    sp.add_argument("planfile", metavar="PLANFILE", type=path_arg, help="a plan saved with 'plan --out'")
    sp.add_argument("--json", action="store_true", help="print the plan as JSON (the plan --json document)")
    sp.add_argument("--markdown", metavar="FILE", type=path_arg, help="also write the plan as markdown")

    sp = command("apply", "apply a fresh plan after confirmation, or exactly a saved plan")
    envs(sp)
    sp.add_argument("planfile", nargs="?", metavar="PLANFILE", type=path_arg, help="a plan saved with 'plan --out'")
    sp.add_argument("--auto-approve", action="store_true", help="skip the confirmation prompt")
    sp.add_argument("--lock-timeout", type=float, default=0.0, metavar="SECONDS",
                    help="wait this long for another run's lock (default: 0)")
    sp.add_argument("--prune", action="store_true", help="delete managed references removed from the config")

    sp = command("drift", "report what changed outside connref (read-only)")
    envs(sp)
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("--markdown", metavar="FILE", type=path_arg, help="also write the report as markdown")

    sp = command("import", "write YAML for what an environment has today")
    envs(sp, many=False)
    sp.add_argument("--solution", help="solution to import (default: the config's, else required)")
    sp.add_argument("-o", "--output", metavar="FILE", type=path_arg, help="write here instead of stdout")
    sp.add_argument("--from-settings", metavar="FILE", type=path_arg,
                    help="read bindings from a deployment settings JSON into the config instead")

    sp = command("lint", "naming policy, duplicates, personal or broken connections")
    envs(sp)
    sp.add_argument("--json", action="store_true", help="print findings as JSON")

    sp = command("settings", "write the ConnectionReferences part of a deployment settings file")
    envs(sp, many=False)
    sp.add_argument("-o", "--output", metavar="FILE", type=path_arg, help="write here instead of stdout")

    sp = command("whoami", "who connref authenticates as and which bindings it may use")
    envs(sp, many=False)

    sp = command("state", "read the recorded state, release a stale lock")
    ssub = sp.add_subparsers(dest="state_command", metavar="SUBCOMMAND", required=True, parser_class=Parser)

    def state_command(name: str, help: str) -> argparse.ArgumentParser:
        x = ssub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".")
        _global_options(x, top=False)
        return x

    state_command("list", "environments with state")
    x = state_command("show", "the state of one environment")
    x.add_argument("env", metavar="ENV")
    x.add_argument("--json", action="store_true", help="print the state document as JSON")
    x = state_command("unlock", "release a lock left by a killed run")
    x.add_argument("env", metavar="ENV")
    x.add_argument("lock_id", metavar="LOCK_ID")
    x.add_argument("--force", action="store_true",
                   help="release it even when the process that took it still runs on this host (when "
                        "that pid now belongs to another program)")
    x = state_command("restore", "put the backup of an environment's state back")
    x.add_argument("env", metavar="ENV")
    x = state_command("migrate", "copy state between the local directory and the azurerm backend")
    x.add_argument("--to", required=True, choices=("azurerm", "local"),
                   help="azurerm: local directory -> the config's backend; local: the config's backend -> directory")
    x.add_argument("--dir", metavar="DIR", type=path_arg,
                   help="the local state directory (default: state/ next to the config)")
    envs(x)
    x.add_argument("--lock-timeout", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another run's lock (default: 0)")

    sp = command("init", "write a starter connref.yaml (and, with --emulator, data to try it on)")
    sp.add_argument("directory", nargs="?", default=".", metavar="DIR", type=path_arg,
                    help="where to write (default: here)")
    sp.add_argument("--emulator", action="store_true",
                    help="the quickstart: two environments served by the built-in emulator, ready to plan")
    sp.add_argument("--force", action="store_true", help="overwrite files that exist")

    sp = command("completion", "print a shell completion script (bash, zsh or fish)")
    sp.add_argument("shell", nargs="?", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    sp.add_argument("--list-environments", action="store_true", help=argparse.SUPPRESS)

    sp = command("schema", "print the JSON Schema of the config file (for editors)")
    sp.add_argument("-o", "--output", metavar="FILE", type=path_arg, help="write here instead of stdout")

    sp = command("emulator", "serve the local Dataverse + connections + token emulator")
    sp.add_argument("--port", type=int, default=8080, help="first port (default 8080; 0 picks one)")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    sp.add_argument("--data", action="append", default=[], metavar="FILE", type=path_arg,
                    help="environment data file (repeatable: one port each)")
    sp.add_argument("--faults", metavar="FILE", type=path_arg, help="fault-injection settings (JSON)")
    sp.add_argument("--latency-ms", dest="latency_ms", type=int, metavar="MS",
                    help="delay every request by MS milliseconds, token endpoint included")
    sp.add_argument("--tls", action="store_true",
                    help="serve https with a throwaway certificate authority and print a config snippet that "
                    "signs in (docs/emulator.md)")
    sp.add_argument("--tls-cert", metavar="PEM", type=path_arg, help="serve https with this certificate")
    sp.add_argument("--tls-key", metavar="PEM", type=path_arg, help="private key for --tls-cert")
    sp.add_argument("--persist", action="store_true",
                    help="write changes back into the data files (default: serve from memory)")
    return p


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` into the namespace the commands read: global options merged wherever they were
    given, the config resolved (``-c``, else ``$CONNREF_CONFIG``, else ``connref.yaml``), ``-e`` checked
    against what the command accepts. A usage error raises ``SystemExit(1)`` after printing why."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = int(args.verbose or 0) + int(getattr(args, "verbose_after", 0) or 0)
    if args.config is None:
        args.config = os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    envs: list[str] = list(getattr(args, "envs", None) or [])
    if args.command == "apply" and args.planfile is None and envs and os.path.isfile(envs[-1]):
        # ``apply -e dev plan.json``: -e takes several names, so the plan file landed in the list.
        args.planfile = envs.pop()
        args.envs = envs
    if args.command == "completion" and not args.shell and not args.list_environments:
        chosen_parser(parser, args).error("the following arguments are required: SHELL (bash, zsh or fish)")
    if args.command in SINGLE_ENV_COMMANDS:
        if len(envs) != 1:
            chosen_parser(parser, args).error(
                f"{args.command} works on one environment at a time; got {len(envs)}: {', '.join(envs)} "
                "(run it once per environment)"
            )
        args.env = envs[0]
    return args


def _shown(error: BaseException) -> str:
    """An error message as printed: its lines kept, each inert (messages quote names and answers from
    live data and the config, reconciler.domain.text)."""
    from reconciler.domain.text import inert

    return "\n".join(inert(line) for line in str(error).split("\n"))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, unwound as Ctrl-C is (locks released, nothing half-recorded), told apart at the end: a
    process ended by SIGTERM exits 143 (128 + 15), by Ctrl-C 130, as shells and CI runners expect."""


def _terminate_like_interrupt(signum: int, frame: object) -> None:
    raise _Terminated


def _interrupted(e: KeyboardInterrupt, args: argparse.Namespace | None) -> int:
    terminated = isinstance(e, _Terminated)
    print("Terminated." if terminated else "Interrupted.", file=sys.stderr)
    if args is not None and getattr(args, "command", None) == "apply":
        # Writes already sent may have been made: say how to find out, as a run that fails does.
        print("Changes sent before the interruption may have been made: 'connref plan' shows what is left, and "
              "'connref apply' again finishes the work.", file=sys.stderr)
    return 143 if terminated else 130


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, and map errors to exit codes (the only place that does)."""
    try:
        args = parse(argv)
    except SystemExit as e:  # --help and --version (0), usage errors (1)
        return e.code if isinstance(e.code, int) else 1
    try:
        if threading.current_thread() is threading.main_thread():
            # A cancelled pipeline job or a stopped container sends SIGTERM: unwind as for Ctrl-C, so
            # locks are released and nothing is left half-recorded. From here on, an interrupt (during
            # the imports below too) ends in "Interrupted." and exit code 130 (SIGTERM: "Terminated." and
            # 143), never a traceback.
            signal.signal(signal.SIGTERM, _terminate_like_interrupt)
        from reconciler import commands
        from reconciler.console import run_output

        with run_output(verbose=args.verbose, no_color=args.no_color, out=sys.stdout, err=sys.stderr,
                        environ=os.environ) as color:
            if args.command == "emulator":
                from reconciler.emulator.server import run_emulator_command

                return run_emulator_command(args)
            return commands.dispatch(args, color=color)
    except ConfigErrors as e:
        print(f"Error: {len(e.errors)} problems in the config:", file=sys.stderr)
        for one in e.errors:
            print(f"  {_shown(one)}", file=sys.stderr)
        return e.exit_code
    except ConnrefError as e:
        print(f"Error: {_shown(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        return _interrupted(e, args)
    except BrokenPipeError:
        # The reader went away (``connref plan | head``): stop quietly, as other command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as e:  # the last resort: a bug must not end in a traceback
        # Every error connref expects is a ConnrefError; anything else is a bug. Say so in one line (inert:
        # the message may quote data), and show where only when asked (-v), for the report.
        print(f"Error: connref failed unexpectedly ({type(e).__name__}: {_shown(e)}). This is a bug in connref: "
              "nothing more was done; run the command again with -v to see where it failed, and report it.",
              file=sys.stderr)
        if getattr(args, "verbose", 0):
            import traceback

            traceback.print_exc(file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except KeyboardInterrupt as e:  # an interrupt while an error was being reported
        return _interrupted(e, None)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
