"""The work behind each CLI command, as plain functions a test can call.

Each command loads the config, opens the environments it needs, runs the pure pieces (planner,
drift, lint, importer, settings) over what the live reader returns, and, for ``apply`` only, the
one writer (``applier``). Commands print and return an exit code; errors are raised as
``ConnrefError`` and turned into exit code 1 by ``cli.run``.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from reconciler import progress
from reconciler.config.loader import load_config
from reconciler.domain.model import Config, LiveEnvironment
from reconciler.domain.text import inert
from reconciler.errors import ApplyError, ConfigError, ConnrefError, PlanError, StateError, StateNotRecordedError

if TYPE_CHECKING:
    from reconciler.api.session import EnvSession
    from reconciler.apply.applier import ApplyResult, BatchProgress, FlowProgress
    from reconciler.plan.explain import EnvironmentExplanation
    from reconciler.plan.ops import EnvironmentPlan, Plan
    from reconciler.state.backend import Snapshot, StateBackend, StateLock
    from reconciler.state.model import EnvState

# Each command imports what it needs when it runs: ``connref validate`` never loads the HTTP client,
# MSAL, the planner or the drift reports (start-up time; measured with ``python -X importtime``).

Out = TextIO

APPROVAL_PROMPT = (
    "\nDo you want to perform these actions?\n"
    "  connref will perform the actions described above.\n"
    "  Only 'yes' will be accepted to approve.\n\n"
    "  Enter a value: "
)


def dispatch(args: argparse.Namespace, *, color: bool, out: Out | None = None, err: Out | None = None) -> int:
    """Run the command ``args.command`` names."""
    o = out or sys.stdout
    e = err or sys.stderr
    handlers: dict[str, Callable[[argparse.Namespace, bool, Out, Out], int]] = {
        "validate": cmd_validate,
        "plan": cmd_plan,
        "apply": cmd_apply,
        "drift": cmd_drift,
        "import": cmd_import,
        "lint": cmd_lint,
        "settings": cmd_settings,
        "whoami": cmd_whoami,
        "state": cmd_state,
        "schema": cmd_schema,
        "completion": cmd_completion,
        "init": cmd_init,
        "show": cmd_show,
        "explain": cmd_explain,
    }
    return handlers[args.command](args, color, o, e)


# --------------------------------------------------------------------------- shared steps


def select_environments(config: Config, wanted: Sequence[str] | None) -> list[str]:
    """The environments to act on, in config order; unknown names are an error listing the known ones."""
    if not wanted:
        return list(config.environments)
    known = {n.lower(): n for n in config.environments}
    chosen: list[str] = []
    for w in wanted:
        name = known.get(w.lower())
        if name is None:
            close = difflib.get_close_matches(w.lower(), list(known), n=1, cutoff=0.6)
            hint = f"; did you mean '{known[close[0]]}'?" if close else ""
            raise ConfigError(
                f"unknown environment '{w}' (the config declares: {', '.join(config.environments) or 'none'}){hint}"
            )
        if name not in chosen:
            chosen.append(name)
    return [n for n in config.environments if n in chosen]


@contextmanager
def opened(config: Config, names: Sequence[str]) -> Iterator[dict[str, EnvSession]]:
    """Sessions for ``names``, closed on exit."""
    from reconciler.api.session import TokenProviders, open_environment
    with ExitStack() as stack:
        # One token provider per (authority, client) for the whole run: shared token cache.
        providers = stack.enter_context(TokenProviders())
        sessions = {n: stack.enter_context(open_environment(config, n, providers=providers)) for n in names}
        yield sessions


def read_all(
    config: Config, sessions: Mapping[str, EnvSession], *, all_references: bool = False,
    err: Out | None = None, managed: Mapping[str, Sequence[str]] | None = None, say_scope: bool = True,
) -> dict[str, LiveEnvironment]:
    """Read every environment at once (up to ``MAX_PARALLEL_ENVIRONMENTS``; each reader also
    parallelises its own collections). ``managed``: per environment, the logical names the state records,
    read wherever they are (prune must find one moved out of the solution).
    A partial view of the connections is said once per environment on ``err`` (with ``say_scope``; a plan
    says it among its own warnings instead)."""
    from reconciler.api.live import MAX_PARALLEL_ENVIRONMENTS
    keep = managed or {}
    if len(sessions) == 1:
        (name, s), = sessions.items()
        lives = {name: _read_reported(s, config, name, all_references=all_references, managed=keep.get(name, ()))}
    else:
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_ENVIRONMENTS, len(sessions))) as pool:
            futures = {n: pool.submit(_read_reported, s, config, n, all_references=all_references,
                                      managed=keep.get(n, ()))
                       for n, s in sessions.items()}
            lives = {n: f.result() for n, f in futures.items()}
    for name, live in lives.items():
        note = live.connections_visibility_note() if say_scope else None
        if note:
            print(f"warning: {name}: {inert(note)}", file=err or sys.stderr)
    return lives


def _read_reported(session: EnvSession, config: Config, name: str, *, all_references: bool,
                   managed: Sequence[str] = ()) -> LiveEnvironment:
    """``read_environment`` with its progress reported (reading, read or failed)."""
    from reconciler.api.live import read_environment
    progress.step(name, progress.START, "reading")
    t0 = time.monotonic()
    try:
        live = read_environment(session.reader, config, name, all_references=all_references, managed=managed)
    except BaseException:
        progress.step(name, progress.FAILED, "reading failed")
        raise
    progress.step(name, progress.DONE, "read %d reference(s), %d connection(s), %d flow(s) in %.1f s",
                  len(live.references), len(live.connections), len(live.flows), time.monotonic() - t0)
    return live


def load_states(config: Config, names: Sequence[str]) -> dict[str, EnvState | None]:
    """The state of each environment (None: nothing applied there yet), read through the config's backend."""
    from reconciler.state.select import backend_for
    with backend_for(config) as backend:
        return {n: backend.load(n) for n in names}


def _states(snapshots: Mapping[str, Snapshot | None]) -> dict[str, EnvState | None]:
    return {n: s.state if s else None for n, s in snapshots.items()}


def managed_names(states: Mapping[str, EnvState | None]) -> dict[str, list[str]]:
    return {n: sorted(s.references) if s else [] for n, s in states.items()}


# --------------------------------------------------------------------------- output files


class OutputRefused(ConnrefError):
    """An output path (``--out``, ``--markdown``, ``-o``) names a file connref reads and must not overwrite."""


def _write_error(path: str, e: OSError) -> ConnrefError:
    # mkdir of a folder over an existing file says "File exists"; what the user must fix is the path.
    reason = "Not a directory" if isinstance(e, FileExistsError) else (e.strerror or e.__class__.__name__)
    return ConnrefError(f"cannot write {path}: {reason}")


def _write_text(path: str, text: str) -> None:
    """Write an output file (``-o``, ``--markdown``), making its folder if needed (``-o settings/prod.json``
    in a fresh checkout); a file that cannot be written is an error naming it, not a traceback. A link is
    written through, and a pipe or terminal is written to (``--markdown /dev/stderr``): the text is only a
    copy of what the command shows, so nothing depends on it being whole."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as e:
        raise _write_error(path, e) from None


def _plan_file_target(path: str) -> Path:
    """The file ``plan --out PATH`` writes: ``PATH``, or the file a symbolic link at ``PATH`` leads to.

    A plan file is written whole or not at all (a temporary file renamed over the target), and a rename
    replaces whatever the name held. Over a link that would swap the link for a regular file and leave the
    file it points to stale, while ``-o`` and ``--markdown`` write through links: so the link is followed
    and the file it leads to gets the plan, atomically, as a user who made the link means. Anything else
    that exists must be a regular file: a rename would replace a device or a pipe by a file (as root,
    ``/dev/full``), and a plan must be a file ``connref apply`` can read back."""
    from reconciler.config.loader import FILE_KINDS

    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as e:  # a file where a folder should be, a loop of links, no permission
        raise _write_error(path, e) from None
    if stat.S_ISDIR(mode):
        raise ConnrefError(f"cannot write {path}: Is a directory")
    if not stat.S_ISREG(mode):
        kind = next((what for test, what in FILE_KINDS if test(mode)), "not a file")
        raise ConnrefError(f"cannot write {path}: it is {kind}, not a regular file; a plan file is saved "
                           "to a regular file (or a new one)")
    return target


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: the same path once links and ``..`` are resolved, or one file under
    two names (a hard link, a case-insensitive file system)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _inputs(config_path: str, config: Config | None = None, *, with_config: bool = True) -> dict[str, str]:
    """The files a run reads that no output may overwrite, and what each is: the config file and the data
    file of each ``local:`` environment (``--markdown dev.json`` would wipe out the emulated environment)."""
    files = {config_path: "the config file in use"} if with_config else {}
    for name, env in (config.environments.items() if config else ()):
        if env.local_path:
            files[env.local_path] = f"the data file of environment {name} ({env.url})"
    return files


def _check_outputs(outputs: Mapping[str, str | None], inputs: Mapping[str, str]) -> None:
    """Refuse, before anything is written, output paths that name one of ``inputs`` or the same file twice.
    ``outputs``: option -> path (None: not given)."""
    given = [(option, path) for option, path in outputs.items() if path is not None]
    for i, (option, path) in enumerate(given):
        for file, what in inputs.items():
            if os.path.exists(file) and _same_file(path, file):
                raise OutputRefused(f"refusing to write {option} {path}: it is {what}; nothing was written")
        for other_option, other in given[:i]:
            if _same_file(path, other):
                raise OutputRefused(f"{other_option} and {option} name the same file ({path}): give each its own "
                                    "path; nothing was written")


def _config_if_readable(path: str) -> Config | None:
    """The config at ``path`` for a command that does not need one (``show``, ``schema``), to know which
    files its outputs must leave alone; None when there is none or it cannot be read."""
    if not os.path.isfile(path):
        return None
    try:
        return load_config(path)
    except ConnrefError:
        return None


def flows_to_restore(states: Mapping[str, EnvState | None]) -> dict[str, list[str]]:
    """Per environment, the flows an earlier apply switched off to move them and did not switch on again."""
    return {n: sorted(s.flows_to_restore) if s else [] for n, s in states.items()}


def plan_with_dependents(config: Config, sessions: Mapping[str, EnvSession], lives: Mapping[str, LiveEnvironment],
                         states: Mapping[str, EnvState | None], prune: bool) -> tuple[dict[str, LiveEnvironment], Plan]:
    """The plan of ``lives``, and ``lives`` with what uses each reference the plan would rebind or delete
    (flows, canvas apps, agents: ``RetrieveDependenciesForDelete``, docs/dataverse.md §2.7), read before the
    plan is final so it names them and never deletes a reference something uses. Nothing is read for an
    environment the plan leaves alone, and its first plan is kept (planning twice doubled a plan's CPU)."""
    from reconciler.api.live import read_dependents
    from reconciler.plan import planner

    do_prune, managed, restore = (True if prune else None), managed_names(states), flows_to_restore(states)
    first = planner.plan_each(config, lives, prune=do_prune, managed=managed, restore=restore)
    wanted = planner.candidates_of(first)
    lives = {n: read_dependents(sessions[n].reader, live, wanted[n]) if n in wanted else live
             for n, live in lives.items()}
    reuse = {n: p for n, p in first.items() if n not in wanted and not isinstance(p, planner.PlanProblems)}
    return lives, planner.plan(config, lives, prune=do_prune, managed=managed, restore=restore, reuse=reuse)


# --------------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    config = load_config(args.config)
    envs = ", ".join(config.environments) or "none"
    print(f"The configuration is valid: {len(config.references)} reference(s), "
          f"{len(config.environments)} environment(s) ({envs}).", file=out)
    return 0


# --------------------------------------------------------------------------- plan


def _reportable(caught: BaseException) -> ConnrefError:
    """What a JSON or markdown report says of a run that stopped: its error, or that it was cancelled."""
    if isinstance(caught, ConnrefError):
        return caught
    return ConnrefError("the run was cancelled (Ctrl-C or SIGTERM) before it finished; nothing more was read "
                        "or written")


def cmd_plan(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    from reconciler.plan import render
    outputs = {"--out": args.out, "--markdown": args.markdown}
    try:
        # The outputs are checked before anything is read: the config file first (also one that does not
        # load), then the data files it names.
        _check_outputs(outputs, _inputs(args.config))
        config = load_config(args.config)
        _check_outputs(outputs, _inputs(config.path, config))
        if args.out is not None:
            _plan_file_target(args.out)
        names = select_environments(config, args.envs)
        states = load_states(config, names)
        with opened(config, names) as sessions:
            lives = read_all(config, sessions, err=err, managed=managed_names(states), say_scope=False)
            lives, plan = plan_with_dependents(config, sessions, lives, states, args.prune)
        if args.out is not None:
            save_plan(args.out, config, plan, lives, states, prune=args.prune)
    except (ConnrefError, KeyboardInterrupt) as caught:
        # A pipeline still gets one JSON document on stdout and a markdown comment that says why, also when
        # the run is cancelled (unless the markdown's own path was refused).
        e = _reportable(caught)
        if args.json:
            print(json.dumps(render.render_json_error(e), indent=2), file=out)
        if args.markdown is not None and not isinstance(e, OutputRefused):
            _write_text(args.markdown, render.render_markdown_error(e))
        raise
    explained = _plan_explanation(config, lives, plan) if args.explain else None
    if args.json:
        doc = render.render_json(plan)
        if explained is not None:
            from reconciler.plan.explain import render_json_doc
            doc["explain"] = render_json_doc(explained)
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(render.render_text(plan, color=color), file=out)
        if explained is not None:
            from reconciler.plan.explain import render_text as explain_text
            print("\n" + explain_text(explained, heading="Who the flows this plan changes will run as:"), file=out,
                  end="")
    if args.markdown is not None:
        hint = f"connref show {args.out}" if args.out is not None else None
        _write_text(args.markdown, render.render_markdown(plan, full_plan_hint=hint))
    if args.out is not None:
        # With --json, stdout holds the JSON document and nothing else.
        print(f"\nSaved the plan to {args.out}. Apply exactly this plan with: connref apply {args.out}",
              file=err if args.json else out)
    return 2 if args.detailed_exitcode and plan_has_changes(plan) else 0


def _plan_explanation(config: Config, lives: Mapping[str, LiveEnvironment],
                      plan: Plan) -> list[EnvironmentExplanation]:
    from reconciler.plan.explain import explain_for_plan
    return explain_for_plan(config, lives, {env.environment: env.ops for env in plan.environments})


def plan_has_changes(plan: Plan) -> bool:
    return any(env.ops for env in plan.environments)


def save_plan(path: str, config: Config, plan: Plan, lives: Mapping[str, LiveEnvironment],
              states: Mapping[str, EnvState | None], *, prune: bool) -> None:
    from reconciler.plan import planfile, planner
    target = _plan_file_target(path)
    digest = planfile.config_digest(config.path)
    try:
        planfile.write_plan_file(
            target,
            plan,
            config_digest=digest,
            states=states,
            live_fingerprints={n: planner.live_fingerprint(live) for n, live in lives.items()},
            etags={n: planfile.live_etags(live) for n, live in lives.items()},
            options={"prune": bool(prune)},
            config_path=config.path,
            config=config,
        )
    except OSError as e:  # only the write itself touches the file system here
        raise _write_error(path, e) from None


# --------------------------------------------------------------------------- apply


def _confirm(out: Out) -> bool:
    if sys.stdin is None or not sys.stdin.isatty():
        raise ConnrefError(
            "apply needs approval and there is no terminal to ask: run 'connref apply --auto-approve', "
            "or save a plan with 'connref plan --out FILE' and run 'connref apply FILE'"
        )
    out.write(APPROVAL_PROMPT)
    out.flush()
    return sys.stdin.readline().strip() == "yes"


def _report_batch(p: BatchProgress) -> None:
    """One ``$batch`` of a long apply written (or failed): a status update, a log line in pipelines."""
    progress.step(p.environment, progress.UPDATE, "batch %d/%d %s (%d/%d changes)", p.batch, p.batches,
                  "written" if p.ok else "FAILED", p.done, p.total)


def _report_flows(p: FlowProgress) -> None:
    """Waiting for the platform's asynchronous update of the flows after a rebind (docs/dataverse.md §5.7)."""
    failed = f", {p.failed} failed" if p.failed else ""
    progress.step(p.environment, progress.UPDATE, "waiting for the flows to take the new connections: "
                  "%d/%d updated%s (%.0f s of at most %.0f s)", p.done, p.total, failed, p.waited, p.limit)


def cmd_apply(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    from reconciler.plan import planfile, planner, render
    from reconciler.state.select import backend_for
    saved: planfile.SavedPlan | None = None
    if args.planfile is not None:
        if args.envs or args.prune:
            raise ConnrefError("a saved plan is applied exactly as planned: -e/--env and --prune are not "
                               "allowed with PLANFILE (they were fixed when the plan was made)")
        # First of all, the file: its schema, every operation rebuilt, its environments in its freshness block.
        saved = planfile.read_plan_file(args.planfile)
        planfile.check_applyable(saved)
    config = load_config(args.config)
    if saved is not None:
        names = select_environments(config, list(saved.environments))
    else:
        names = select_environments(config, args.envs)

    with ExitStack() as stack:
        backend = stack.enter_context(backend_for(config))
        locks = {n: stack.enter_context(backend.lock(n, "apply", timeout=args.lock_timeout)) for n in names}
        # Read the state only under the lock: another apply may just have moved it.
        snapshots = backend.load_many(names)
        states = _states(snapshots)
        sessions = stack.enter_context(opened(config, names))
        # The plan shown says a partial view of the connections among its warnings.
        lives = read_all(config, sessions, err=err, managed=managed_names(states), say_scope=False)
        if saved is not None:
            planfile.check_fresh(
                saved,
                current_state_by_env=states,
                current_live_fingerprint_by_env={n: planner.live_fingerprint(lv) for n, lv in lives.items()},
                current_etags={n: planfile.live_etags(lv) for n, lv in lives.items()},
                current_config_digest=planfile.config_digest(config.path),
            )
            plan = saved.load_plan()
            # The operations must be exactly those the config implies for the environments as read: an
            # edited file (another connection, owner or row, a delete of what connref never managed) is refused.
            # What uses each reference is read as for a new plan: the derived rebinds name it too.
            lives, derived = plan_with_dependents(config, sessions, lives, states, bool(saved.options.get("prune")))
            planfile.check_derived(saved, plan, derived, states)
            print(render.render_text(plan, color=color), file=out)
        else:
            lives, plan = plan_with_dependents(config, sessions, lives, states, args.prune)
            print(render.render_text(plan, color=color), file=out)
            if plan_has_changes(plan) and not args.auto_approve and not _confirm(out):
                print("\nApply cancelled: nothing was written.", file=out)
                return 1
        return _apply_plan(config, plan, sessions, lives, snapshots, backend, locks, out, err)


def _apply_plan(config: Config, plan: Plan, sessions: Mapping[str, EnvSession],
                lives: Mapping[str, LiveEnvironment], snapshots: Mapping[str, Snapshot | None],
                backend: StateBackend, locks: Mapping[str, StateLock], out: Out, err: Out) -> int:
    from reconciler.state import record as record_state
    from reconciler.state.backend import Snapshot
    results: dict[str, ApplyResult] = {}
    failures: list[ConnrefError] = []
    commit = record_state.git_commit(Path(config.path).parent)
    for env_plan in plan.environments:
        name = env_plan.environment
        snap = snapshots.get(name)
        marked: list[Snapshot] = []

        def mark(flows: Mapping[str, str], name: str = name, snap: Snapshot | None = snap,
                 marked: list[Snapshot] = marked) -> None:
            # Before flows that are on are switched off to be edited: the state says they must end on, so
            # an apply interrupted before they are is finished by the next one (docs/dataverse.md §5.9).
            state = record_state.mark_flows_to_restore(snap.state if snap else None, name, flows,
                                                       solution=config.solution)
            token = backend.write(state, token=snap.token if snap else None, lock=locks[name])
            marked.append(Snapshot(state, token))

        result = _apply_environment(sessions[name], env_plan, failures, mark)
        if result is not None:
            results[name] = result
        try:
            _record(config, name, env_plan, result, sessions[name], lives[name], marked[-1] if marked else snap,
                    backend, locks[name], commit, out)
        except StateNotRecordedError as e:
            # The other environments have states of their own: they are applied and recorded all the same.
            failures.append(e)

    _print_apply_summary(plan, results, out, failed=bool(failures))
    if failures:
        raise ApplyError("\n".join(str(f) for f in failures))
    return 0


def _apply_environment(session: EnvSession, env_plan: EnvironmentPlan, failures: list[ConnrefError],
                       before_switch_off: Callable[[Mapping[str, str]], None] | None = None) -> ApplyResult | None:
    """Write one environment's plan (None: nothing to write). A write that did not succeed is an
    ``ApplyError`` added to ``failures``; its result is returned all the same, so what was written is
    recorded. ``before_switch_off``: see ``apply_environment``."""
    from reconciler.api.live import read_reference_rows
    from reconciler.apply.applier import ApplyResult, FlowWatch, apply_environment
    name = env_plan.environment
    if not env_plan.ops:
        return None
    progress.step(name, progress.START, "applying %d change(s)", len(env_plan.ops))
    try:
        # The applier alone is handed the client that sends $batch; it reads back through the reader.
        read_rows = functools.partial(read_reference_rows, session.reader)
        watch = FlowWatch(session.reader.dataverse, wait_seconds=session.env.flows.wait_seconds,
                          progress=_report_flows)
        result = apply_environment(session.dataverse, read_rows, env_plan, progress=_report_batch,
                                   sharer=session.connections, flows=watch, before_switch_off=before_switch_off)
    except ApplyError as e:
        if not isinstance(e.results, ApplyResult):
            progress.step(name, progress.FAILED, "apply failed")
            raise
        failures.append(e)
        result = e.results
    except BaseException:
        progress.step(name, progress.FAILED, "apply failed")
        raise
    _report_applied(name, result)
    return result


def _record(config: Config, name: str, env_plan: EnvironmentPlan, result: ApplyResult | None,
            session: EnvSession, live: LiveEnvironment, snap: Snapshot | None, backend: StateBackend,
            lock: StateLock, commit: str | None, out: Out) -> None:
    """The state after an apply, by one rule whatever the apply wrote (state/README.md, "When the state is
    refreshed"): every declared reference is recorded as the environment has it now, except those whose
    write did not happen (failed, not written, outcome unknown: their record stays), and managed
    references gone from the environment are forgotten; flows to restore known to be on are no longer
    recorded (``_flows_on``). Written when that changes what the state records
    (a first state: when the apply wrote something or had nothing to write); what the refresh took in
    without writing it is said."""
    from reconciler.api.live import read_reference_rows
    from reconciler.apply.applier import live_after_apply
    from reconciler.state import record as record_state
    prev = snap.state if snap else None
    gone = _gone(config, prev, session, live)
    if gone:
        print(f"\n{name}: no longer managed (not declared, and deleted from the environment): "
              + ", ".join(gone), file=out)
    written = result.written if result else ()
    if prev is None and env_plan.ops and not written:
        return  # a first apply that wrote nothing: no state claims an apply happened
    # The ETags the writes produced came back in the same $batch (or were read back after a lost answer):
    # only what was written changes, and nothing is read again.
    read_rows = functools.partial(read_reference_rows, session.reader)
    live_after = live_after_apply(live, result, read_rows) if result else live

    def names(outcome: str) -> list[str]:
        # References only: switching a flow on or moving it records nothing in the state.
        return [r.op.logical_name for r in (result.results if result else ())
                if r.outcome == outcome and r.op.kind not in ("activate_flow", "repoint_flow")]

    new_state = record_state.record_apply(
        prev, name, live_after, declared=list(config.references), ops=[r.op for r in written],
        failed=names("failed"), unknown=names("unknown"), not_written=names("not_written"),
        solution=config.solution, commit=commit, gone=gone, flows_on=_flows_on(env_plan, live, result),
    )
    if (prev is not None and record_state.same_records(prev, new_state)
            and prev.flows_to_restore == new_state.flows_to_restore):
        return  # already recorded as it is: the state stays as it is
    try:
        backend.write(new_state, token=snap.token if snap else None, lock=lock)
    except (ConnrefError, OSError) as e:
        # The environment holds what was written whatever happens to the state: say so, and what failed.
        detail = str(e.args[0] if isinstance(e, ConnrefError) and e.args else e).rstrip(". ")
        made = "the changes this apply wrote are in the environment, and " if written else ""
        raise StateNotRecordedError(
            f"{name}: the state could not be recorded in {backend.location(name)}: {detail}. Nothing is lost: "
            f"{made}the next apply records the environment as it is (fix the cause first)."
        ) from None
    changes = record_state.recorded_changes(prev, new_state, (r.op.logical_name for r in written))
    _report_recorded(config, name, changes, out)


def _report_recorded(config: Config, name: str, changes: Sequence[tuple[str, str, object, object]], out: Out) -> None:
    """Say what the state now records that this apply did not write: outside changes to what the config
    leaves alone, and references already as the config declares whose record was missing."""
    from reconciler.domain import rules
    env = config.environments[name]
    outside: list[str] = []
    matching: list[str] = []
    for logical_name, field, before, after in changes:
        shown = f"{logical_name} {field} {_quoted(before)} -> {_quoted(after)}"
        (matching if field in rules.governed_fields(env, logical_name) else outside).append(shown)
    # The blank line before each is connref's own; only what comes from the config and live data is inert.
    if outside:
        print(f"\n{inert(name)}: changed outside connref since the state last recorded it, now recorded as it is "
              f"(the config does not set it): {inert('; '.join(outside))}", file=out)
    if matching:
        print(f"\n{inert(name)}: already as the config declares, now recorded (written by an earlier apply whose "
              f"answer or state record was lost, or by hand): {inert('; '.join(matching))}", file=out)


def _quoted(value: object) -> str:
    return f'"{value}"' if value not in (None, "") else "(none)"


def _flows_on(env_plan: EnvironmentPlan, live: LiveEnvironment, result: ApplyResult | None) -> set[str]:
    """The flows known to be on after an apply (ids, lower case): those it left on, and those that were on when
    planning and that it did not move (the state no longer needs to restore them)."""
    moved = {op.flow_id.lower() for op in env_plan.repoints}
    on = {f.id.lower() for f in live.flows if f.is_on and f.id.lower() not in moved}
    return on | set(result.flows_on if result else ())


def _gone(config: Config, prev: EnvState | None, session: EnvSession, live: LiveEnvironment) -> list[str]:
    """The references the state manages that are neither declared nor in the environment any more
    (``record.vanished``). ``live`` holds the solution's and the declared references only, so a candidate
    is looked for again among all of them (it may just have left the solution): one more read, and only
    when there is a candidate."""
    from reconciler.api.live import read_environment
    from reconciler.state import record as record_state

    declared = list(config.references)
    candidates = record_state.vanished(prev, declared, (r.logical_name for r in live.references))
    if not candidates:
        return []
    everything = read_environment(session.reader, config, live.name, all_references=True)
    return record_state.vanished(prev, declared, (r.logical_name for r in everything.references))


def _report_applied(name: str, result: ApplyResult | None) -> None:
    written = len(result.written) if result else 0
    failed = len(result.failed) if result else 0
    if failed:
        progress.step(name, progress.FAILED, "applied: %d written, %d failed", written, failed)
    else:
        progress.step(name, progress.DONE, "applied: %d written", written)


_FLOW_MARKS = {"updated": "✓", "switched_on": "✓", "update_not_checked": "·", "not_attempted": "·", "moved": "✓",
               "move_not_attempted": "·"}
_FLOW_WORDS = {"updated": "took the new connection", "update_failed": "update failed",
               "update_not_finished": "update did not finish", "update_not_checked": "update not checked",
               "switched_on": "switched on", "not_switched_on": "not switched on",
               "not_attempted": "not switched on", "not_on": "not on",
               "moved": "moved onto the kept reference", "not_moved": "not moved",
               "move_not_attempted": "not moved"}


def _print_apply_summary(plan: Plan, results: Mapping[str, ApplyResult], out: Out, *, failed: bool) -> None:
    """What was written, per environment, then one closing line: "Apply complete!" only when every
    change was written (Terraform's wording); otherwise what was and was not, before the error."""
    from reconciler.apply.applier import unknown_outcome
    from reconciler.plan.ops import Counts

    unwritten = unknown = failing = 0
    for env, result in results.items():
        print(f"\n{inert(env)}:", file=out)
        for r in result.results:
            if r.op.kind in ("activate_flow", "repoint_flow"):
                unwritten += r.op.kind == "repoint_flow" and r.outcome != "written"
                continue  # said with the flows below
            mark = {"written": "✓", "not_written": "·", "failed": "✗", "unknown": "?"}.get(r.outcome, "?")
            reason = f": {inert(r.reason)}" if r.reason else ""
            outcome = "outcome unknown" if r.outcome == "unknown" else r.outcome.replace("_", " ")
            print(f"  {mark} {r.op.kind} {inert(r.op.logical_name)} ({outcome}){reason}", file=out)
            if r.outcome == "unknown":
                unknown += 1
            elif r.outcome != "written":
                unwritten += 1
        for f in result.flows:
            mark = _FLOW_MARKS.get(f.outcome, "✗")
            reason = f": {inert(f.reason)}" if f.reason else ""
            print(f'  {mark} flow "{inert(f.name)}" ({_FLOW_WORDS[f.outcome]}){reason}', file=out)
            failing += f.failing
    # Per reference, as the plan's summary counts (ops.Counts.of).
    done = Counts.of(r.op for result in results.values() for r in result.written)
    counts = f"{done.add} added, {done.change} changed, {done.destroy} destroyed"
    if failed:
        # Writes whose outcome is unknown are never called "not written": they may have been committed.
        parts = [f"{unwritten} change(s) not written"] if unwritten else []
        if unknown:
            parts.append(unknown_outcome(unknown))
        if failing:
            parts.append(f"{failing} flow(s) left failing")
        print(f"\nApply failed: {counts}; {'; '.join(parts) or 'nothing left unwritten'}. "
              "The error follows; run plan to see what is left.", file=out)
        return
    if not results:
        print("\nNo changes. Nothing was written.", file=out)
        return
    print(f"\nApply complete! Changes: {counts}.", file=out)


# --------------------------------------------------------------------------- drift


def cmd_drift(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    from reconciler.drift import render as drift_render
    from reconciler.drift.detect import detect_drift
    outputs = {"--markdown": args.markdown}
    try:
        _check_outputs(outputs, _inputs(args.config))
        config = load_config(args.config)
        _check_outputs(outputs, _inputs(config.path, config))
        names = select_environments(config, args.envs)
        states = load_states(config, names)
        with opened(config, names) as sessions:
            # All references: a managed one moved out of the solution must not read as deleted.
            lives = read_all(config, sessions, all_references=True, err=err)
        reports = [detect_drift(config, n, lives[n], states[n]) for n in names]
    except (ConnrefError, KeyboardInterrupt) as caught:
        e = _reportable(caught)
        if args.json:
            print(drift_render.render_json_error(e), file=out, end="")
        if args.markdown is not None and not isinstance(e, OutputRefused):
            _write_text(args.markdown, drift_render.render_markdown_error(e))
        raise
    if args.json:
        print(drift_render.render_json(reports), file=out)
    else:
        print(drift_render.render_text(reports), file=out)
    if args.markdown is not None:
        _write_text(args.markdown, drift_render.render_markdown(reports))
    return 2 if any(r.has_drift for r in reports) else 0


# --------------------------------------------------------------------------- show


def cmd_show(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    """A saved plan for a reviewer: what it will do (as ``plan`` prints it) and what it was made against.
    Needs no config and no network."""
    from reconciler.plan import planfile, render
    try:
        if args.markdown is not None:
            # No config is needed, but one that is there is still not to be overwritten, nor the plan shown.
            _check_outputs({"--markdown": args.markdown},
                           {args.planfile: "the plan file shown",
                            **_inputs(args.config, _config_if_readable(args.config))})
        saved = planfile.read_plan_file(args.planfile)
        try:
            plan = saved.load_plan()
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"plan file {args.planfile} is damaged: {e}. {planfile.REPLAN}") from e
    except ConnrefError as e:
        if args.json:  # stdout holds one document, also for a file that is not a plan
            print(json.dumps(render.render_json_error(e), indent=2), file=out)
        raise
    if args.json:
        doc = render.render_json(plan)
        doc["saved_plan"] = {
            "path": str(args.planfile),
            "created_at": saved.created_at,
            "config_path": saved.config_path,
            "config_digest": saved.config_digest,
            "options": dict(saved.options),
            "environments": {
                name: {"state_serial": env.state_serial, "state_lineage": env.state_lineage}
                for name, env in sorted(saved.environments.items())
            },
        }
        print(json.dumps(doc, indent=2), file=out)
    else:
        # A plan file travels between jobs: what it says is shown inert.
        print(inert(f"Saved plan {args.planfile}, made {saved.created_at} from {saved.config_path or 'a config'} "
                    f"({saved.config_digest[:19]}…)."), file=out)
        for name, env in sorted(saved.environments.items()):
            against = f"state serial {env.state_serial}" if env.state_serial is not None else "no state yet"
            print(inert(f"  {name}: made against {against}"), file=out)
        options = ", ".join(f"{k}={v}" for k, v in sorted(saved.options.items())) or "none"
        print(inert(f"  options: {options}") + "\n", file=out)
        print(render.render_text(plan, color=color), file=out)
    if args.markdown is not None:
        _write_text(args.markdown, render.render_markdown(plan, full_plan_hint=f"connref show {args.planfile}"))
    return 0


# --------------------------------------------------------------------------- import


def cmd_import(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    from reconciler.adoption.bindings_merge import merge_bindings, settings_bindings
    from reconciler.adoption.import_generate import import_environment, unfit_note, unfit_references
    from reconciler.adoption.settings import parse_settings_file
    from reconciler.api.live import read_environment
    config = load_config(args.config)
    # import writes a config, so -o may rewrite the config in place (docs/adoption.md); never a data file.
    _check_outputs({"-o": args.output}, {
        **({args.from_settings: "the settings file read"} if args.from_settings is not None else {}),
        **_inputs(config.path, config, with_config=False)})
    (name,) = select_environments(config, [args.env])
    config_text = Path(config.path).read_text(encoding="utf-8")
    if args.from_settings is not None:
        settings = parse_settings_file(args.from_settings)
        bindings, skipped = settings_bindings(settings, source=str(args.from_settings))
        merged = merge_bindings(config_text, name, bindings, path=config.path)
        for note in [*skipped, *merged.notes]:
            print(inert(note), file=err)
        if merged.rewritten:
            print("note: the config was written fresh from its data (its comments could not be kept)",
                  file=err)
        _refuse_unless_valid(merged.text, config.path, f"the config merged with {args.from_settings}")
        return _emit(merged.text, args.output, out, err)

    solution = args.solution or config.solution
    target = replace(config, solution=solution)
    env = target.environments[name]
    with opened(target, [name]) as sessions:
        live = read_environment(sessions[name].reader, target, name)
    if live.solution is None:
        raise ConnrefError(f"solution '{solution}' does not exist in environment {name}")
    in_solution = replace(live, references=tuple(r for r in live.references if r.in_solution))
    text = import_environment(
        in_solution, solution=solution, env_name=name, env_url=env.url, environment_id=env.environment_id,
        existing_config_text=config_text, service_account=env.service_account,
    )
    for ref, problem in unfit_references(in_solution.references):
        print(f"warning: {inert(unfit_note(ref, problem, solution))}", file=err)
    _refuse_unless_valid(text, config.path, f"the config imported from {name}")
    return _emit(text, args.output, out, err)


def _refuse_unless_valid(text: str, config_path: str, what: str) -> None:
    """Raise unless ``text`` loads as a config, as ``connref validate`` would load it: import never
    writes a file its own validate rejects. Relative paths (``local:`` files) resolve as in the config
    the text was made from. The loader's messages never repeat a secret; lines are given by number
    because the file they point into was not written."""
    from reconciler.config.loader import load_config_text
    from reconciler.errors import ConfigErrors
    try:
        load_config_text(text, config_path)
    except ConfigErrors as e:
        problems = list(e.errors)
    except ConfigError as e:
        problems = [e]
    else:
        return
    lines = []
    for p in problems:
        where = f"line {p.location.line}, column {p.location.column}: " if p.location else ""
        lines.append(inert(f"  {where}{p.field + ': ' if p.field else ''}{p.message}"))
    raise ConnrefError(f"{what} would not pass connref validate, so nothing was written:\n" + "\n".join(lines))


def _emit(text: str, path: str | None, out: Out, err: Out) -> int:
    if path is not None:
        _write_text(path, text)
        print(f"Wrote {path}.", file=err)
    else:
        out.write(text if text.endswith("\n") else text + "\n")
    return 0


# --------------------------------------------------------------------------- lint


def cmd_lint(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    from reconciler.adoption import lint
    from reconciler.errors import problem_lines
    try:
        config = load_config(args.config)
        lives: dict[str, LiveEnvironment] | None = None
        if args.envs:
            names = select_environments(config, args.envs)
            with opened(config, names) as sessions:
                lives = read_all(config, sessions, all_references=True, err=err)
        findings = lint.lint(config, lives)
    except (ConnrefError, KeyboardInterrupt) as caught:
        if args.json:  # stdout holds one document, also when lint could not run
            print(lint.render_findings_json_error(problem_lines(_reportable(caught))), file=out, end="")
        raise
    print(lint.render_findings_json(findings) if args.json else lint.render_findings_text(findings), file=out)
    return lint.exit_code(findings)


# --------------------------------------------------------------------------- settings


def cmd_settings(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    from reconciler.adoption.settings import deployment_settings, render_settings_json
    from reconciler.api.live import read_environment
    config = load_config(args.config)
    _check_outputs({"-o": args.output}, _inputs(config.path, config))
    (name,) = select_environments(config, [args.env])
    with opened(config, [name]) as sessions:
        live = read_environment(sessions[name].reader, config, name)
    settings = deployment_settings(config, name, live, strict=True)
    return _emit(render_settings_json(settings), args.output, out, err)


# --------------------------------------------------------------------------- whoami


def cmd_whoami(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    from reconciler.api.live import read_environment
    from reconciler.domain import rules
    config = load_config(args.config)
    (name,) = select_environments(config, [args.env])
    env = config.environments[name]
    with opened(config, [name]) as sessions:
        live = read_environment(sessions[name].reader, config, name)
    sa = env.service_account
    caller, writer = live.caller, rules.writer(sa, live)
    identity = rules.identity_problems(name, sa, live)

    def say(line: str) -> None:
        # Every line quotes names from live data (users, connections): shown inert.
        print(inert(line), file=out)

    say(f"Environment {name} ({env.url})")
    if caller:
        kind = f"application {caller.application_id}" if caller.application_id else "user"
        say(f"  authenticated as: {caller.describe()} ({kind}, object id {caller.object_id})")
    if sa and writer is not None:
        say(f"  service account:  {writer.describe()} (object id {writer.object_id})")
        if rules.impersonates(sa, live) and not any(p.code == "CR302" for p in identity):
            say("  may write as the service account: yes")
    for p in identity:
        if p.code == "CR302":
            say(f"  ✗ may write as the service account: NO ({p.code} {p.message}): {p.fix}")
        else:
            say(f"  ✗ {p.code} {p.text()}")
    problems = len(identity)
    note = live.connections_visibility_note()
    if note:
        say(f"  note: {note}")
    if writer is None:
        say("  bindings: not checked (the identity that writes is unknown)")
        return 2
    say(f"  writes act as:    {writer.describe()}")
    bindings = rules.BindingIndex.of(env)
    for logical_name, ref in config.references.items():
        binding = bindings.get(logical_name)
        if binding is None:
            say(f"  - {logical_name}: no binding declared")
            continue
        grant = env.grants(logical_name)
        judged = rules.judge_binding(binding, ref.connector, writer, live, service_account=sa, grant=grant)
        if judged.usable is not None:
            how = rules.access(judged.usable, writer, live)
            shown = ("none yet; apply shares it (grant_access)" if grant and how.how == rules.NO_ACCESS
                     else how.describe())
            say(f"  ✓ {logical_name}: may use {rules.describe_connection(judged.usable, live)}; access: {shown}")
        for p in judged.warnings:
            say(f"  ! {logical_name}: {p.code} {p.text()}")
        for p in judged.problems:
            problems += 1
            say(f"  ✗ {logical_name}: {p.code} {p.text()}")
    return 2 if problems else 0


# --------------------------------------------------------------------------- explain


def cmd_explain(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    """Who each flow runs as and why (``reconciler.plan.explain``); read-only."""
    from reconciler.api.live import read_environment
    from reconciler.plan import explain
    config = load_config(args.config)
    (name,) = select_environments(config, [args.env])
    with opened(config, [name]) as sessions:
        live = read_environment(sessions[name].reader, config, name)
    flows = explain.select_flows(config, name, live, args.flows)
    result = [explain.explain_environment(config, name, live, flows)]
    print(explain.render_json(result) if args.json else explain.render_text(result), file=out, end="")
    return 0


# --------------------------------------------------------------------------- state


def cmd_state(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    from reconciler.state import render as render_state
    from reconciler.state.select import backend_for
    config = load_config(args.config)
    sub = args.state_command
    with backend_for(config) as backend:
        if sub == "list":
            summaries = render_state.list_states(backend)
            print(render_state.render_state_list(summaries), file=out)
            if any(s["status"] != "ok" for s in summaries):
                return 1  # listed all the same, each with what is wrong: a check in a pipeline must fail
        elif sub == "show":
            (name,) = select_environments(config, [args.env])
            doc = render_state.show_state(backend, name)
            text = json.dumps(doc, indent=2, sort_keys=True) if args.json else render_state.render_state_show(doc)
            print(text, file=out)
        elif sub == "unlock":
            (name,) = select_environments(config, [args.env])
            info = backend.unlock(name, args.lock_id, force=args.force)
            print(f"Released the lock of {name} held by {inert(info.describe())}.", file=out)
        elif sub == "restore":
            (name,) = select_environments(config, [args.env])
            with backend.lock(name, "state restore", timeout=0.0) as lock:
                restored = backend.restore(name, lock=lock)
            print(f"Restored the state of {name} from its backup (serial {restored.serial}).", file=out)
        elif sub == "migrate":
            _migrate(config, backend, args, out)
    return 0


def _migrate(config: Config, configured: StateBackend, args: argparse.Namespace, out: Out) -> None:
    """``connref state migrate --to azurerm|local``: copy every environment's state (or those of ``-e``)
    from the local directory into the azurerm backend the config declares, or back. The documents are copied
    byte for byte (serial, lineage, history), so the next apply continues the same history. A destination
    that already holds the same version is left alone; one with another history or a newer serial is
    refused."""
    from reconciler.state.local import DEFAULT_STATE_DIR, LocalBackend

    if configured.kind != "azurerm":
        raise ConfigError(
            "state migrate copies between a local directory and the azurerm backend: declare the backend in the "
            "config first (state: {backend: azurerm, account_url: ..., container: ..., auth: ...}, see "
            "docs/pipelines.md)", None, "state")
    directory = (Path(args.dir).resolve() if args.dir is not None
                 else Path(config.path).resolve().parent / DEFAULT_STATE_DIR)
    local = LocalBackend(directory)
    source, target = (local, configured) if args.to == "azurerm" else (configured, local)
    names = select_environments(config, args.envs) if args.envs else source.environments()
    if not names:
        where = str(local.directory) if source is local else "the azurerm backend"
        print(f"No state to migrate: no environment has state in {where}.", file=out)
        return
    copied = 0
    for name in names:
        with source.lock(name, "state migrate", timeout=args.lock_timeout) as src_lock, \
                target.lock(name, "state migrate", timeout=args.lock_timeout) as dst_lock:
            del src_lock  # held so no apply moves the source while it is copied
            snap = source.read(name)
            if snap is None:
                print(f"{name}: no state at {source.location(name)}; skipped.", file=out)
                continue
            there = target.read(name)
            if there is not None and there.token == snap.token:
                print(f"{name}: {target.location(name)} already holds serial {snap.state.serial}; left as it is.",
                      file=out)
                continue
            if there is not None and (there.state.lineage != snap.state.lineage
                                      or there.state.serial >= snap.state.serial):
                raise StateError(
                    f"{name}: {target.location(name)} already holds another state (serial {there.state.serial}, "
                    f"lineage {there.state.lineage}) than {source.location(name)} (serial {snap.state.serial}, "
                    f"lineage {snap.state.lineage}); nothing was copied for {name}. Move one of them away first."
                )
            target.write(snap.state, token=there.token if there else None, lock=dst_lock)
            copied += 1
            print(f"{name}: copied serial {snap.state.serial} from {source.location(name)} to "
                  f"{target.location(name)}.", file=out)
    if copied:
        print(f"Migrated {copied} environment(s). The source was left as it was; remove it once every run uses "
              f"the {'azurerm backend' if args.to == 'azurerm' else 'local directory'}.", file=out)


# --------------------------------------------------------------------------- schema


def cmd_schema(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    """The config's JSON Schema (no config needed): for editors, ``# yaml-language-server: $schema=...``."""
    from reconciler.config.schema import render_schema

    if args.output is not None:
        _check_outputs({"-o": args.output}, _inputs(args.config, _config_if_readable(args.config)))
    return _emit(render_schema(), args.output, out, err)


# --------------------------------------------------------------------------- completion


def cmd_completion(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    """A completion script for ``args.shell``; with ``--list-environments`` (what the scripts call), the
    environment names of the config, one per line, and nothing at all when the config cannot be read."""
    if args.list_environments:
        try:
            config = load_config(args.config)
        except ConnrefError:
            return 0
        for name in config.environments:
            print(name, file=out)
        return 0
    from reconciler.cli import build_parser
    from reconciler.completion import script

    out.write(script(args.shell, build_parser()))
    return 0


# --------------------------------------------------------------------------- init

STARTER_CONFIG = """\
# yaml-language-server: $schema=connref.schema.json
# connref: the connection references of one solution, and the connection each one is bound to in each
# environment. Replace the values marked <-, then run: connref validate, connref whoami -e dev, connref plan.
# Every key: `connref schema` (or docs/config.md). To start from what an environment has today instead,
# fill in the environment and auth below and run: connref import -e dev -o connref.yaml
version: 1
solution: ContosoFlows                                 # <- the unique name of your unmanaged solution
references:
  contoso_SharePoint:                                  # <- logical name: <publisher prefix>_<name>
    connector: shared_sharepointonline
    display_name: SharePoint ContosoFlows
environments:
  dev:
    url: https://contoso-dev.crm4.dynamics.com         # <- the environment's URL
    environment_id: 00000000-0000-0000-0000-000000000000  # <- its Power Platform environment id
    auth: pipeline
    service_account: svc-flows@contoso.com             # <- owns the references and their connections
    bindings:
      contoso_SharePoint: {owner: svc-flows@contoso.com}  # or a connection name
auth:
  pipeline:
    method: client_secret                              # or certificate, federated, managed_identity, ...
    tenant_id: 00000000-0000-0000-0000-000000000000    # <- your tenant
    client_id: 00000000-0000-0000-0000-000000000000    # <- the app registration connref signs in as
    client_secret_env: CONNREF_CLIENT_SECRET           # the variable that holds the secret (never the secret)
"""


def cmd_init(args: argparse.Namespace, color: bool, out: Out, err: Out) -> int:
    """Write a starter config (and its JSON Schema for editors) into ``args.directory``; with ``--emulator``,
    the quickstart: a config and three environments served by the built-in emulator, ready to plan."""
    from reconciler.config.schema import render_schema

    target = Path(args.directory)
    if args.emulator:
        from reconciler.emulator.quickstart import quickstart_files

        files = quickstart_files(schema_path="connref.schema.json")
    else:
        files = {"connref.yaml": STARTER_CONFIG}
    files["connref.schema.json"] = render_schema()
    existing = [n for n in files if (target / n).exists()]
    if existing and not args.force:
        raise ConnrefError(f"{target} already has {', '.join(existing)}: nothing was written "
                           "(--force overwrites them)")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = target / name
        path.write_text(text, encoding="utf-8")
        if name == ".demo-secret":
            path.chmod(0o600)
    print(f"Wrote {', '.join(str(target / n) for n in files)}.", file=out)
    where = "" if target.resolve() == Path.cwd().resolve() else f"cd {args.directory} && "
    if args.emulator:
        print(f"Next: {where}connref plan    (then apply, drift, lint -e dev, import -e dev: see the README's tour)",
              file=out)
    else:
        print(f"Next: replace the values marked <- in connref.yaml, then {where}connref validate", file=out)
    return 0
