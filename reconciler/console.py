"""What one CLI run shows besides its result: colour, log level, and progress per environment.

**Colour** (``color_enabled``), first rule that applies:

1. ``--no-color``: off.
2. ``NO_COLOR`` set to any non-empty value: off (https://no-color.org).
3. ``FORCE_COLOR`` set to any non-empty value: on, even when the output is not a terminal
   (https://force-color.org).
4. ``TERM=dumb``: off.
5. Otherwise on exactly when the output is a terminal.

**Log level** (``log_threshold``): ``-v``/``--verbose`` or ``CONNREF_LOG=debug`` logs each request (method,
URL without query values, status, time) and each retry; ``CONNREF_LOG=info`` one line per step and each
retry; ``CONNREF_LOG=warning`` only warnings. The default is ``info`` when stderr is not a terminal (a
pipeline log gets one line per step) and ``warning`` on a terminal, where a live status line per
environment shows the steps instead. A retry that waits more than a second is a warning: always shown.

**Progress** (``ProgressHandler``): the records of ``reconciler.progress`` and the HTTP client become, on a
terminal that can redraw (not ``TERM=dumb``), a live status line per environment (rich) while reading or
applying; otherwise log lines on stderr. Log lines never carry a secret: the client logs URLs without
query values, never headers or bodies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from reconciler.domain.text import inert
from reconciler.progress import DONE, ENV, FAILED, FINAL, REQUEST, START, STATE, UPDATE, WAIT

LOG_ENV = "CONNREF_LOG"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def color_enabled(stream: Any, *, no_color_flag: bool, environ: Mapping[str, str]) -> bool:
    """Whether to write ANSI colour to ``stream`` (rules in the module docstring)."""
    if no_color_flag or environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR"):
        return True
    if environ.get("TERM") == "dumb":
        return False
    return _isatty(stream)


def can_redraw(stream: Any, environ: Mapping[str, str]) -> bool:
    """Whether a live display may move the cursor on ``stream``: a terminal that is not ``TERM=dumb``."""
    return _isatty(stream) and environ.get("TERM") != "dumb"


def log_threshold(verbose: int, environ: Mapping[str, str], *, live: bool) -> tuple[int, str | None]:
    """The lowest level printed, and a problem with ``CONNREF_LOG`` to report (or None)."""
    default = logging.WARNING if live else logging.INFO
    problem = None
    level = default
    raw = environ.get(LOG_ENV, "").strip()
    if raw:
        if raw.lower() in LEVELS:
            level = LEVELS[raw.lower()]
        else:
            problem = f"{LOG_ENV}={raw!r} is not one of {', '.join(LEVELS)}; using the default"
    if verbose:
        level = min(level, logging.DEBUG)
    return level, problem


@dataclass
class _EnvStatus:
    text: str
    state: str
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    note: str | None = None
    spinner: Any = None


class ProgressHandler(logging.Handler):
    """Prints the records at or above ``threshold`` on ``stream``; with ``live``, also keeps one status
    line per environment on screen while any environment is being read or applied."""

    def __init__(self, stream: IO[str], *, threshold: int, live: bool, color: bool) -> None:
        super().__init__(logging.DEBUG)
        self.stream = stream
        self.threshold = threshold
        self.live = live
        self.color = color
        self.t0 = time.monotonic()
        self._envs: dict[str, _EnvStatus] = {}
        self._display: Any = None  # rich.live.Live while a status is on screen

    # -- logging.Handler

    def emit(self, record: logging.LogRecord) -> None:
        try:
            env = getattr(record, ENV, None)
            state = getattr(record, STATE, None)
            if self.live and env and state:
                self._track(str(env), str(state), record)
            if record.levelno >= self.threshold:
                self._print(self._line(record))
            if self._display is not None and self._envs and all(s.state in FINAL for s in self._envs.values()):
                self._stop()
        except Exception:  # a display problem must never fail the run
            self.handleError(record)

    def close(self) -> None:
        self._stop()
        super().close()

    # -- lines

    def _line(self, record: logging.LogRecord) -> str:
        msg = inert(record.getMessage())  # messages quote URLs and names from live data
        if record.levelno >= logging.ERROR:
            return f"error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"warning: {msg}"
        return f"[{time.monotonic() - self.t0:5.1f}s] {msg}"

    def _print(self, line: str) -> None:
        if self._display is not None:
            self._display.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    # -- live status

    def _track(self, env: str, state: str, record: logging.LogRecord) -> None:
        text = inert(record.getMessage().removeprefix(f"{env}: "))
        status = self._envs.get(env)
        if state == START:
            if status is None or status.state in FINAL:
                self._envs[env] = status = _EnvStatus(text, state)
            status.text, status.state = text, state
            self._start()
        elif status is None:
            return
        elif state in (UPDATE, DONE, FAILED):
            status.text, status.state, status.note = text, state, None
        elif state == REQUEST:
            status.requests += 1
            status.note = None
        elif state == WAIT:
            delay = float(getattr(record, "connref_delay", 0.0))
            status.note = f"waiting {delay:.0f} s before a retry" if delay >= 1 else "retrying"

    def _start(self) -> None:
        if self._display is not None:
            return
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream, force_terminal=True, color_system="auto" if self.color else None,
                          highlight=False, soft_wrap=True)
        self._display = Live(_StatusView(self._envs), console=console, refresh_per_second=8, transient=False,
                             redirect_stdout=False, redirect_stderr=False)
        self._display.start()

    def _stop(self) -> None:
        display, self._display = self._display, None
        if display is not None:
            display.stop()
            self._envs.clear()


class _StatusView:
    """The rich renderable of the status lines (rebuilt at each refresh)."""

    def __init__(self, envs: Mapping[str, _EnvStatus]) -> None:
        self.envs = envs

    def __rich__(self) -> Any:
        from rich.spinner import Spinner
        from rich.table import Table

        grid = Table.grid(padding=(0, 1))
        width = max((len(n) for n in self.envs), default=0)
        for name, s in list(self.envs.items()):
            seconds = time.monotonic() - s.started
            detail = s.note or s.text
            if s.state in FINAL:
                mark: Any = "✓" if s.state == DONE else "✗"
                line = f"{name:<{width}}  {detail}"
            else:
                if s.spinner is None:
                    s.spinner = Spinner("dots")
                mark = s.spinner
                requests = f"{s.requests} request" + ("" if s.requests == 1 else "s")
                line = f"{name:<{width}}  {detail} ({requests}, {seconds:.0f} s)"
            grid.add_row(mark, line)
        return grid


@contextmanager
def run_output(*, verbose: int, no_color: bool, out: Any, err: IO[str],
               environ: Mapping[str, str]) -> Iterator[bool]:
    """Set up logging and progress for one CLI run; yields whether ``out`` gets colour. On exit the live
    display is stopped (before the caller prints an error) and logging is put back as it was."""
    live = can_redraw(err, environ)
    threshold, problem = log_threshold(verbose, environ, live=live)
    handler = ProgressHandler(err, threshold=threshold, live=live,
                              color=color_enabled(err, no_color_flag=no_color, environ=environ))
    logger = logging.getLogger("reconciler")
    saved = (logger.level, logger.propagate)
    logger.setLevel(logging.DEBUG if live else threshold)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        if problem:
            logger.warning("%s", problem)
        yield color_enabled(out, no_color_flag=no_color, environ=environ)
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
