"""The one exception tree of connref; the CLI maps it to exit codes in one place (``cli.run``).

    ConnrefError                      every error connref raises on purpose (exit 1)
    ├── ConfigError                   the YAML is invalid; carries file, line, column, field
    ├── AuthError                     a token could not be obtained; names the profile, never a secret
    │   └── AuthUnavailableError      the token service could not answer (5xx, throttled, unreachable)
    │                                 after the retry budget: a failure, never a refusal to fall back on
    ├── PlanError                     the plan cannot be made safely (bad binding, ambiguous selector,
    │                                 missing privilege, connection not usable by the writer)
    ├── ApiError                      the service answered with an error; carries status, code, message
    │   ├── NotFoundError             404
    │   ├── PreconditionFailedError   412: an ETag moved or a duplicate key
    │   ├── ThrottledError            429 after the retry budget ran out
    │   ├── TransientError            5xx or a dropped connection after the retry budget ran out
    │   │   └── OutcomeUnknownError   a write's answer was lost (dropped after sending, a 5xx or 408, timed
    │   │                             out, an unreadable or self-contradicting answer): it may have been
    │   │                             committed; not resent
    │   └── MalformedResponseError    an answer connref cannot read: not JSON, truncated, too big or
    │                                 too deep, the wrong shape, or paging that loops or leaves the host
    ├── StalePlanError                a saved plan no longer matches state or live (re-plan)
    ├── ApplyError                    some writes failed; carries what was and was not written
    ├── StateError                    the state file is missing, corrupt or from another lineage
    │   ├── StateNotRecordedError     an apply's writes were made, but its state could not be written
    │   └── StateTooNewError          the state was written by a newer connref (a newer format_version):
    │                                 neither used nor rewritten; upgrade connref
    └── LockError                     another run holds the environment's lock; names the holder

Every message is safe to print: no secret and no token ever goes into one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from reconciler.domain.text import inert


class ConnrefError(Exception):
    """Base of every error connref raises on purpose."""

    exit_code = 1


class Location(NamedTuple):
    """Where in a config file an error is: 1-based line and column. A named tuple, not a frozen
    dataclass: the config parser makes one per node of the document, and a tuple is made in half the
    time (a 20,000-line config has about 40,000 nodes)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class ConfigError(ConnrefError):
    """The config is invalid. ``location`` points at the offending node, ``field`` names it."""

    def __init__(self, message: str, location: Location | None = None, field: str | None = None) -> None:
        self.message = message
        self.location = location
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        # The file name (given with -c) and the field path (keys from the file) are shown inert: a newline
        # in a key must not print as a config error of its own.
        where = f"{inert(str(self.location))}: " if self.location else ""
        what = f"{inert(self.field)}: " if self.field else ""
        return f"{where}{what}{self.message}"


class ConfigErrors(ConfigError):
    """Several config errors found in one pass, so the user fixes them all at once: one line each."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(inert(str(e)) for e in errors))

    def __str__(self) -> str:
        return "\n".join(inert(str(e)) for e in self.errors)


class AuthError(ConnrefError):
    """A token could not be obtained for an auth profile."""


class AuthUnavailableError(AuthError):
    """The token service did not answer usefully (5xx, 429, a dropped connection, an unreadable answer)
    after the retry budget. Unlike a refusal, it says nothing about what the identity may do."""


class PlanError(ConnrefError):
    """The plan cannot be made safely; the message says what to fix."""


class ApiError(ConnrefError):
    """The service answered with an error."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        method: str | None = None,
        url: str | None = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.code = code
        self.method = method
        self.url = url
        self.body = body
        super().__init__(message)


class NotFoundError(ApiError):
    """404 from the service."""


class PreconditionFailedError(ApiError):
    """412: an ETag moved since it was read, or a duplicate key."""


class ThrottledError(ApiError):
    """429 persisted past the retry budget."""


class TransientError(ApiError):
    """A 5xx or a dropped connection persisted past the retry budget."""


class OutcomeUnknownError(TransientError):
    """The answer to a write was lost after the request was sent: the connection dropped, the client gave up
    waiting, a 5xx or a 408 came back without the ``$batch`` answer, a 2xx whose body cannot be read, or an
    answer that calls one atomic change set both written and refused. The service may have committed
    it, so it is never sent again blindly: the applier reads back what it wrote first (docs/dataverse.md
    §3.12). ``why`` says what happened, in words safe to print."""

    def __init__(self, message: str, *, why: str, status: int | None = None, method: str | None = None,
                 url: str | None = None) -> None:
        self.why = why
        super().__init__(message, status=status, method=method, url=url)


class MalformedResponseError(ApiError):
    """The service answered with something connref cannot read. ``problem`` says what was wrong (never
    the body itself); the message also names the method, the URL and the status."""

    def __init__(self, message: str, *, problem: str, status: int | None = None, method: str | None = None,
                 url: str | None = None) -> None:
        self.problem = problem
        super().__init__(message, status=status, method=method, url=url)


class StalePlanError(ConnrefError):
    """A saved plan no longer matches the state or the live environment; ``reasons``: one sentence each."""

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or []


class ApplyError(ConnrefError):
    """Some writes failed. ``results`` tells what was and was not written."""

    def __init__(self, message: str, results: Any = None) -> None:
        self.results = results
        super().__init__(message)


class StateError(ConnrefError):
    """The state file is missing, corrupt, or from another lineage."""


class StateNotRecordedError(StateError):
    """An apply's writes were made (or it had none), but the state after it could not be written: the
    environment holds them, and the next apply records them (its refresh rule)."""


class StateTooNewError(StateError):
    """The state was written in a newer format than this connref writes. Reading it would drop the fields this
    connref does not know on its next write (and the backup would keep only the downgraded copy), so it is
    refused: not damaged, and neither a restore nor a fresh state is the fix; a newer connref is."""


class LockError(ConnrefError):
    """Another run holds the lock of an environment."""


def problem_lines(error: BaseException) -> list[str]:
    """The problems an error stands for, one line each: each config error (``file:line:column: ...``), each
    planning problem, or else the error's message. For documents that list errors (JSON, markdown)."""
    many = getattr(error, "errors", None) or getattr(error, "problems", None)
    if isinstance(many, list | tuple) and many:
        return [str(x) for x in many]
    return [str(error)]
