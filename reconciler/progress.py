"""Progress of a run, per environment, as log records: what the CLI shows while connref works.

The work (commands, the HTTP client) says what happens to each environment with ``step``: ``start``
(reading or applying began), ``update`` (a batch written), ``done``, ``failed``; the client adds
``request`` (each HTTP answer, debug level) and ``wait`` (a retry's wait). Each record carries the
environment's name in ``connref_env`` and the kind in ``connref_state``. ``reconciler.console`` turns
them into a live status line per environment on a terminal, or one log line per step otherwise. Nothing
here prints, and nothing here imports a terminal library.
"""

from __future__ import annotations

import logging

log = logging.getLogger("reconciler.progress")

ENV = "connref_env"
STATE = "connref_state"
START, UPDATE, DONE, FAILED = "start", "update", "done", "failed"
REQUEST, WAIT = "request", "wait"
FINAL = frozenset({DONE, FAILED})


def step(environment: str, state: str, message: str, *args: object, level: int = logging.INFO) -> None:
    """Report that ``environment`` reached ``state``; ``message % args`` says it in words."""
    log.log(level, "%s: " + message, environment, *args, extra={ENV: environment, STATE: state})
