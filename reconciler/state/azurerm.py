"""The azurerm state backend: state in Azure Blob storage, locked with blob leases, for pipelines.

Modelled on Terraform's azurerm backend (``internal/backend/remote-state/azure``): one blob per
environment, ``<key_prefix><env>.json`` in the configured container, holding the same state document as the
local backend (``reconciler.state.model``).

- **Lock**: a lease on that blob (created empty first when the environment has no state yet, as Terraform
  does). The lease id is the lock id, and who holds it (``LockInfo``: user@host, pid, operation, when) is
  written into the blob's metadata (``connref_lock``, base64 JSON), since the service never reveals a lease
  id (the record stays after the lease ends, meaningless without one, until the next lock replaces it).
  The lease lasts ``lease_duration`` seconds (15-60) and a thread renews it every third of that while
  the run holds it, so a run killed outright (no ``finally`` runs) frees the environment within one lease
  duration; ``connref state unlock ENV LOCK_ID`` breaks it at once, after checking the id in the metadata.
- **Compare-and-swap**: a write first checks that the stored document is still the version the run read
  (the token, the SHA-256 of its bytes, as for the local backend: the lock rewrites the blob's metadata, so
  the ETag alone cannot say it), then uploads with ``If-Match`` on the ETag it just read and the lease id,
  so the service refuses it when the blob changed in between or the lease was broken: two writers can
  never both succeed.
- **Previous version**: before each write the version being replaced is copied to
  ``<key_prefix><env>.json.backup``; ``state restore`` puts it back and keeps the replaced one as
  ``.json.replaced-<time>`` (``.damaged-<time>`` when unreadable), as the local backend does with files.

Service behaviour relied on (Microsoft Learn, "Lease Blob" and "Specify conditional headers for Blob
service operations"): a lease lasts 15-60 s or is infinite and is renewed with its id; a write to a
leased blob without the lease id is refused (412); ``If-Match`` with a stale ETag is refused (412
ConditionNotMet); breaking with a break period of 0 frees the blob at once.

Outages: the SDK's own retry policy waits 15 s and more between attempts (a closed port kept ``state list``
silent for over a minute, and a renewal stuck in it outlived the lease it renewed), so every client is built
with ``client_options()``: a few retries, a second or two apart, each a warning, and short connection and read
timeouts; a lease renewal is one short attempt, tried again a second later, so a run learns of an outage within
seconds and well inside its lease. With ``-v`` each blob request is logged (method, URL without query values,
status, time), never a header, a key or a SAS token.

Authentication: an auth profile of the config (the token is requested for ``https://storage.azure.com/.default``
through ``reconciler.api``'s token providers, as Dataverse tokens are), or a connection string read from an
environment variable (the Azurite emulator). The blob service is reached through the official Azure SDK
(``azure-storage-blob``, its own HTTP stack): this module is its only user, imported only when the config
chooses this backend.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from azure.core import MatchConditions
from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.storage.blob import (
    BlobClient,
    BlobLeaseClient,
    BlobServiceClient,
    ContainerClient,
    ContentSettings,
    ExponentialRetry,
)

from reconciler.api.auth import TokenProvider
from reconciler.api.client import loggable_url
from reconciler.domain.model import AzureStateConfig, Config
from reconciler.domain.text import inert
from reconciler.errors import AuthError, ConfigError, LockError, StateError, StateTooNewError
from reconciler.state.backend import (
    LockInfo,
    Snapshot,
    StateBackend,
    StateLock,
    check_successor,
    new_lock_info,
    refuse_live_holder,
)
from reconciler.state.jsonfile import load_json
from reconciler.state.model import EnvState, parse_state, refuse_restore_over_newer, serialize_state, token_of

STORAGE_SCOPE = "https://storage.azure.com/.default"
STATE_SUFFIX = ".json"
BACKUP_SUFFIX = ".json.backup"
LOCK_METADATA = "connref_lock"
SERIAL_METADATA = "connref_serial"
LINEAGE_METADATA = "connref_lineage"
POLL_SECONDS = 1.0  # how often a waiting run asks whether the lease is free

# Outages (see the module docstring). Worst case of one operation: (RETRY_TOTAL + 1) attempts, each at most
# CONNECT_TIMEOUT to connect, plus the waits (about 3.5 s): seconds, not minutes. A refused connection fails at
# once, so an unreachable account is reported after about 3.5 s.
RETRY_TOTAL = 3
RETRY_WAITS = (0.5, 1.0, 2.0)  # before the first, second, third retry (each +-25%, so runs do not retry in step)
CONNECT_TIMEOUT = 5.0  # seconds to open a connection
READ_TIMEOUT = 20.0  # seconds of silence in an answer (not the whole transfer)
# A renewal is one attempt this short, tried again RENEW_RETRY_SECONDS after a failure: with renewals every
# third of a lease (at least 5 s), several attempts fit before a lease of 15 s runs out.
RENEW_TIMEOUT = 2.0
RENEW_RETRY_SECONDS = 1.0

log = logging.getLogger(__name__)
#: Each blob request, at debug level (``-v``), as ``reconciler.api.client.request_log_hooks`` logs API requests.
http_log = logging.getLogger("reconciler.state.http")


# --------------------------------------------------------------------------- retries and request log


def _env_of(url: str, container: str, key_prefix: str) -> str | None:
    """The environment whose state (or backup) blob ``url`` names, for the progress display; None otherwise
    (a listing, another blob)."""
    path = unquote(urlsplit(url).path)
    start = path.find(f"/{container}/")
    if start < 0:
        return None
    name = path[start + len(container) + 2:]
    if not name.startswith(key_prefix):
        return None
    name = name[len(key_prefix):]
    for suffix in (BACKUP_SUFFIX, STATE_SUFFIX):
        env = name[: -len(suffix)]
        if name.endswith(suffix) and env and "/" not in env:
            return env
    return None


class BoundedRetry(ExponentialRetry):
    """The storage SDK's retry policy with short waits, each retry logged as a warning.

    The SDK decides what is worth retrying (a refused or dropped connection, a timeout, 408, 5xx; never a 4xx
    answer such as a 412 of a conditional write); this class only decides how long to wait, and says so, as
    ``reconciler.api.client`` does for Dataverse: a run waiting on Azure Storage is never silent."""

    def __init__(self, container: str = "", key_prefix: str = "", *, retry_total: int = RETRY_TOTAL,
                 waits: tuple[float, ...] = RETRY_WAITS) -> None:
        super().__init__(initial_backoff=0, increment_base=0, retry_total=retry_total, retry_to_secondary=False,
                         random_jitter_range=0)
        self.container = container
        self.key_prefix = key_prefix
        self.waits = waits

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        count = max(1, int(settings["count"]))  # 1 before the first retry
        base = self.waits[min(count, len(self.waits)) - 1]
        return base * random.uniform(0.75, 1.25)  # spreads the retries of concurrent runs apart

    def sleep(self, settings: dict[str, Any], transport: Any) -> None:
        delay = self.get_backoff_time(settings)
        count = int(settings["count"])
        total = count + max(0, int(settings["total"]))
        last = settings["history"][-1] if settings["history"] else None
        request = getattr(last, "http_request", None)
        response = getattr(last, "http_response", None)
        error = getattr(last, "error", None)
        # Only the class of an error: the messages of the HTTP stack quote the request's path and query, which may
        # hold a SAS token.
        why = f"HTTP {response.status_code}" if response is not None else type(error).__name__ if error else "?"
        url = str(getattr(request, "url", "")) if request is not None else ""
        env = _env_of(url, self.container, self.key_prefix)
        log.warning(
            "Azure Storage: %s %s: %s; retry %d of %d in %.1f s", getattr(request, "method", "?"),
            loggable_url(url) if url else "?", why, count, total, delay,
            extra={"connref_env": env, "connref_state": "wait", "connref_delay": delay},
        )
        transport.sleep(delay)


def _request_log_hooks(container: str, key_prefix: str) -> dict[str, Any]:
    """The SDK's per-request hooks (``raw_request_hook``, ``raw_response_hook``, called for every attempt) that
    log each blob request at debug level: method, URL without query values (``loggable_url``), status, time to
    the answer. Headers are never logged: they carry the Authorization token or the shared key signature."""

    def on_request(request: PipelineRequest[Any]) -> None:
        if http_log.isEnabledFor(logging.DEBUG):
            request.context["connref_started"] = time.monotonic()

    def on_response(response: PipelineResponse[Any, Any]) -> None:
        if not http_log.isEnabledFor(logging.DEBUG):
            return
        t0 = response.context.get("connref_started")
        elapsed = f"{(time.monotonic() - t0) * 1000:.0f} ms" if isinstance(t0, float) else "?"
        request = response.http_request
        url = str(request.url)
        env = _env_of(url, container, key_prefix)
        http_log.debug("Azure Storage: %s %s -> %s (%s)", request.method, loggable_url(url),
                       response.http_response.status_code, elapsed,
                       extra={"connref_env": env, "connref_state": "request" if env else None})

    return {"raw_request_hook": on_request, "raw_response_hook": on_response}


def client_options(container: str = "", key_prefix: str = "") -> dict[str, Any]:
    """Keyword arguments for a ``BlobServiceClient``: bounded retries and timeouts, and the request log (the
    container and the key prefix say which environment a blob request is about, for the progress display)."""
    return {
        "retry_policy": BoundedRetry(container, key_prefix),
        "connection_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        **_request_log_hooks(container, key_prefix),
    }


# --------------------------------------------------------------------------- credentials


class ProfileCredential:
    """An ``azure.core`` TokenCredential over one of connref's token providers (an auth profile)."""

    def __init__(self, provider: TokenProvider, profile: str) -> None:
        self.provider = provider
        self.profile = profile

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        token = self.provider.get_token(scopes[0] if scopes else STORAGE_SCOPE)
        # The provider caches and refreshes; an expiry this close makes the SDK ask it again before each
        # request, so the SDK never holds a token the provider has already replaced.
        return AccessToken(token, int(time.time()) + 300)

    def __repr__(self) -> str:  # never show the token
        return f"ProfileCredential({self.profile!r})"


# --------------------------------------------------------------------------- errors


def _code(e: HttpResponseError) -> str:
    """The service's error code (``LeaseIdMissing``, ``ContainerNotFound``...); the SDK gives an enum member
    for the codes it knows and a string for the others."""
    code = getattr(e, "error_code", None)
    return str(getattr(code, "value", code) or "")


@contextlib.contextmanager
def _azure_errors(what: str, where: str, auth_hint: str) -> Iterator[None]:
    """Turn what the Azure SDK raises into connref errors naming the blob and what to check."""
    try:
        yield
    except (ConfigError, StateError, LockError, AuthError):
        raise
    except ClientAuthenticationError as e:
        raise StateError(
            f"Azure Storage refused to {what} {where} ({e.status_code} {_code(e) or 'authentication failed'}): "
            f"{auth_hint}"
        ) from None
    except ResourceNotFoundError as e:
        if _code(e) == "ContainerNotFound":
            raise StateError(
                f"cannot {what} {where}: the container does not exist; create it first "
                "(az storage container create --name CONTAINER --account-name ACCOUNT --auth-mode login)"
            ) from None
        raise StateError(f"cannot {what} {where}: not found ({_code(e) or e.status_code}).") from None
    except HttpResponseError as e:
        if e.status_code == 403:
            raise StateError(
                f"Azure Storage refused to {what} {where} (403 {_code(e) or 'Forbidden'}): {auth_hint}"
            ) from None
        raise StateError(
            f"Azure Storage answered {e.status_code} {_code(e)} when asked to {what} {where}."
        ) from None
    except (ServiceRequestError, ServiceResponseError) as e:
        raise StateError(f"cannot reach Azure Storage to {what} {where}: {type(e).__name__}.") from None
    except AzureError as e:
        raise StateError(f"Azure Storage: cannot {what} {where}: {type(e).__name__}.") from None
    except ValueError as e:
        # The SDK checks its own settings when a request is made (a token over plain http, a malformed
        # endpoint): a setting of the config, not a bug. Its messages name settings, never credentials.
        raise StateError(
            f"the Azure Storage client refused to {what} {where}: {inert(str(e))[:300]} Check state: in the config."
        ) from None


def _encode_lock(info: LockInfo) -> str:
    # Metadata values travel as HTTP headers: ASCII only, hence base64 (as Terraform's azurerm backend).
    return base64.b64encode(json.dumps(info.to_dict(), sort_keys=True).encode("utf-8")).decode("ascii")


def _decode_lock(value: str | None) -> LockInfo | None:
    if not value:
        return None
    try:
        doc = load_json(base64.b64decode(value, validate=True))
        return LockInfo.from_dict(doc) if isinstance(doc, dict) else None
    except (binascii.Error, ValueError, KeyError, TypeError):  # JsonFileProblem is a ValueError
        return None


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


# --------------------------------------------------------------------------- the lock


class BlobLock:
    """A held lease on an environment's state blob, renewed by a daemon thread until ``release()``.

    ``lost`` says why the lease can no longer be renewed (broken with ``state unlock``, or gone); a write
    under a lost lock is refused by the service, and the backend says so before trying."""

    def __init__(self, backend: AzureBlobBackend, blob: BlobClient, lease: BlobLeaseClient, info: LockInfo,
                 duration: int) -> None:
        self.backend = backend
        self.blob = blob
        self.lease = lease
        self._info = info
        self.duration = duration
        self.renewals = 0
        self._renewed = threading.Condition()
        self.lost: str | None = None
        self.released = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{info.environment}", daemon=True)
        self._thread.start()

    @property
    def info(self) -> LockInfo:
        return self._info

    @property
    def id(self) -> str:
        return self._info.id

    def _renew_loop(self) -> None:
        interval = self.duration / 3
        wait = interval
        last = time.monotonic()
        while not self._stop.wait(wait):
            try:
                # One short attempt, not the client's retries: a renewal stuck in retries could outlast the lease.
                self.lease.renew(retry_total=0, connection_timeout=RENEW_TIMEOUT, read_timeout=RENEW_TIMEOUT)
            except HttpResponseError as e:
                if e.status_code in (409, 412):  # broken, released or replaced: it will not come back
                    self.lost = f"the lease was lost ({_code(e) or e.status_code}); was it broken with state unlock?"
                    return
                why = f"HTTP {e.status_code} {_code(e)}".strip()
            except AzureError as e:
                why = type(e).__name__  # the class only: the HTTP stack's messages quote the URL
            else:
                last = time.monotonic()
                wait = interval
                with self._renewed:
                    self.renewals += 1
                    self._renewed.notify_all()
                continue
            # An outage or a blip: try again soon rather than at the next tick, while the lease still holds.
            wait = RENEW_RETRY_SECONDS
            left = self.duration - (time.monotonic() - last)
            log.warning(
                "Azure Storage: renewing the lease on the state of %s (lock id %s) failed (%s); the lease %s; "
                "trying again in %.0f s", self._info.environment, self.id, why,
                f"ends in {left:.0f} s unless renewed" if left > 0 else "has expired: the next write is refused "
                "if another run took the lock meanwhile", wait,
                extra={"connref_env": self._info.environment, "connref_state": "wait", "connref_delay": wait},
            )

    def wait_for_renewals(self, count: int, timeout: float) -> bool:
        """Block until the lease has been renewed ``count`` times (False after ``timeout`` seconds)."""
        with self._renewed:
            return self._renewed.wait_for(lambda: self.renewals >= count, timeout)

    def release(self) -> None:
        """Stop renewing and release the lease. Idempotent; never raises (a lease
        that was broken meanwhile belongs to nobody, or to the next run, and is left alone)."""
        if self.released:
            return
        self.released = True
        self._stop.set()
        self._thread.join(timeout=self.duration)
        # The holder record stays in the metadata (rewriting it would move the ETag under the run's last
        # write); without an active lease it means nothing, and the next lock replaces it.
        with contextlib.suppress(AzureError):
            # One short attempt: if the service cannot be reached, the lease ends by itself within its duration.
            self.lease.release(retry_total=0, connection_timeout=RENEW_TIMEOUT, read_timeout=RENEW_TIMEOUT)

    def __enter__(self) -> BlobLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"BlobLock({self._info.environment!r}, id={self.id}, released={self.released})"


# --------------------------------------------------------------------------- the backend


class AzureBlobBackend(StateBackend):
    """State blobs in one container; see the module docstring for the layout and the guarantees."""

    kind = "azurerm"

    def __init__(
        self,
        container: ContainerClient,
        *,
        key_prefix: str = "",
        lease_duration: int = 60,
        auth_hint: str = "check the credentials",
        closers: tuple[Callable[[], None], ...] = (),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.container = container
        self.key_prefix = key_prefix
        self.lease_duration = lease_duration
        self.auth_hint = auth_hint
        self._closers = closers
        self._sleep = sleep
        self._clock = clock
        self._closed = False

    # ------------------------------------------------------------------ names

    def _name(self, env: str, suffix: str = STATE_SUFFIX) -> str:
        if not env or env in {".", ".."} or "/" in env or "\\" in env or "\0" in env:
            raise StateError(f"invalid environment name for a state blob: {env!r}")
        return f"{self.key_prefix}{env}{suffix}"

    def _blob(self, env: str, suffix: str = STATE_SUFFIX) -> BlobClient:
        return self.container.get_blob_client(self._name(env, suffix))

    def _url(self, name: str) -> str:
        return f"{self.container.url.rstrip('/')}/{name}"

    def location(self, env: str) -> str:
        return self._url(self._name(env))

    def _errors(self, what: str, where: str) -> contextlib.AbstractContextManager[None]:
        return _azure_errors(what, where, self.auth_hint)

    # ------------------------------------------------------------------ reading

    def _download(self, blob: BlobClient, where: str) -> tuple[bytes, str] | None:
        """(bytes, ETag) of a blob, or None when it does not exist."""
        with self._errors("read", where):
            try:
                downloader = blob.download_blob()
            except ResourceNotFoundError as e:
                if _code(e) == "ContainerNotFound":
                    raise
                return None
            return downloader.readall(), str(downloader.properties.etag)

    def _recovery_hint(self, env: str) -> str:
        bak = self._url(self._name(env, BACKUP_SUFFIX))
        try:
            prev = self.backup(env)
        except StateError:
            return f"The backup {bak} is unreadable too; fix one of the blobs by hand."
        if prev is None:
            return (f"No backup ({bak}) exists. Fix the blob by hand, or delete it to start a new state "
                    "(connref then forgets what it manages there).")
        return (f"The previous good state is in {bak} (serial {prev.serial}, {len(prev.references)} "
                f"references): restore it with `connref state restore {env}`.")

    def read(self, env: str) -> Snapshot | None:
        where = self.location(env)
        got = self._download(self._blob(env), where)
        if got is None or not got[0]:
            return None  # no state, or only the empty blob a lock creates
        raw = got[0]
        try:
            return Snapshot(parse_state(raw, where, env), token_of(raw))
        except StateTooNewError:
            raise  # not damaged: the backup and a new state are the wrong advice
        except StateError as e:
            raise StateError(f"{e} {self._recovery_hint(env)}") from e

    def backup(self, env: str) -> EnvState | None:
        where = self._url(self._name(env, BACKUP_SUFFIX))
        got = self._download(self._blob(env, BACKUP_SUFFIX), where)
        if got is None or not got[0]:
            return None
        return parse_state(got[0], where, env)

    def environments(self) -> list[str]:
        where = f"{self.container.url} (blobs {self.key_prefix}*{STATE_SUFFIX})"
        out: list[str] = []
        with self._errors("list", where):
            for item in self.container.list_blobs(name_starts_with=self.key_prefix or None):
                name = str(item.name)[len(self.key_prefix):]
                if name.endswith(STATE_SUFFIX) and "/" not in name and (item.size or 0) > 0:
                    out.append(name[: -len(STATE_SUFFIX)])
        return sorted(out)

    # ------------------------------------------------------------------ locking

    def lock_info(self, env: str) -> LockInfo | None:
        where = self.location(env)
        with self._errors("read the lease of", where):
            try:
                props = self._blob(env).get_blob_properties()
            except ResourceNotFoundError as e:
                if _code(e) == "ContainerNotFound":
                    raise
                return None
        if props.lease.state not in ("leased", "breaking"):
            return None
        info = _decode_lock((props.metadata or {}).get(LOCK_METADATA))
        if info is None:
            return LockInfo(id="unknown", environment=env, operation="?",
                            holder="unknown (a lease without connref's holder record)", host="", pid=0,
                            created=props.last_modified.strftime("%Y-%m-%dT%H:%M:%SZ")
                            if props.last_modified else "?")
        return info

    def _locked_message(self, env: str, info: LockInfo, waited: float) -> str:
        if info.id == "unknown":
            release = ("If no run is in progress, break the lease: az storage blob lease break "
                       f"--container-name {self.container.container_name} --blob-name {self._name(env)}.")
        else:
            release = f"If no other run is in progress, release it with: connref state unlock {env} {info.id}"
        return (
            f"environment {env!r} is locked by {info.describe()}, lock id {info.id} (lease on "
            f"{self.location(env)}); gave up after waiting {waited:.1f}s (--lock-timeout). The lease of a run "
            f"that was killed expires by itself within its lease duration. {release}"
        )

    def lock(self, env: str, operation: str, *, timeout: float = 0.0) -> StateLock:
        blob = self._blob(env)
        where = self.location(env)
        info = new_lock_info(env, operation)
        start = self._clock()
        while True:
            with self._errors("lock", where):
                try:
                    blob.upload_blob(b"", overwrite=False)  # a blob to lease: empty means "no state yet"
                except ResourceExistsError:
                    pass
                except HttpResponseError as e:
                    if _code(e) != "LeaseIdMissing":  # exists and leased: the acquire below says by whom
                        raise
                lease = BlobLeaseClient(blob, lease_id=info.id)
                try:
                    lease.acquire(lease_duration=self.lease_duration)
                except ResourceExistsError:
                    pass  # LeaseAlreadyPresent: held by another run
                except ResourceNotFoundError as e:
                    if _code(e) == "ContainerNotFound":
                        raise
                    continue  # deleted between the two calls: create it again
                else:
                    held = BlobLock(self, blob, lease, info, self.lease_duration)
                    try:
                        props = blob.get_blob_properties(lease=lease)
                        metadata = {**(props.metadata or {}), LOCK_METADATA: _encode_lock(info)}
                        blob.set_blob_metadata(metadata, lease=lease)
                    except BaseException:
                        held.release()
                        raise
                    return held
            waited = self._clock() - start
            if waited >= timeout:
                holder = self.lock_info(env)
                if holder is None:
                    continue  # released between the attempt and the look: try again at once
                raise LockError(self._locked_message(env, holder, waited))
            self._sleep(max(0.0, min(POLL_SECONDS, timeout - waited)))

    def unlock(self, env: str, lock_id: str, *, force: bool = False) -> LockInfo:
        blob = self._blob(env)
        where = self.location(env)
        with self._errors("unlock", where):
            try:
                props = blob.get_blob_properties()
            except ResourceNotFoundError as e:
                if _code(e) == "ContainerNotFound":
                    raise
                raise LockError(f"environment {env!r} is not locked ({where} does not exist).") from None
            if props.lease.state not in ("leased", "breaking"):
                raise LockError(f"environment {env!r} is not locked ({where} has no active lease).")
            info = _decode_lock((props.metadata or {}).get(LOCK_METADATA))
            if info is None:
                raise LockError(
                    f"the lease on {where} carries no connref holder record, so its id cannot be checked: if no "
                    f"run holds it, break it with az storage blob lease break --container-name "
                    f"{self.container.container_name} --blob-name {self._name(env)}."
                )
            if info.id != lock_id:
                raise LockError(
                    f"lock id {lock_id!r} does not match the lock held on {env!r} (id {info.id}, "
                    f"{info.describe()}); nothing released."
                )
            if not force:
                refuse_live_holder(env, info, f"lease on {where}")
            try:
                # Only the lease that was looked at: if it changed hands meanwhile, the ETag moved too.
                BlobLeaseClient(blob).break_lease(lease_break_period=0, etag=props.etag,
                                                  match_condition=MatchConditions.IfNotModified)
            except ResourceModifiedError:
                raise LockError(f"the lock of {env!r} changed while it was being released; look again with "
                                "connref state list. Nothing released.") from None
        return info

    # ------------------------------------------------------------------ writing

    def _held(self, lock: StateLock, env: str) -> BlobLock:
        if not isinstance(lock, BlobLock) or lock.backend is not self or lock.info.environment != env:
            raise StateError(f"writing the state of {env!r} needs this backend's lock of {env!r}.")
        if lock.released or lock.lost:
            why = lock.lost or "it was released"
            raise StateError(f"the lock of {env!r} (id {lock.id}) is no longer held ({why}): nothing was written "
                             f"to {self.location(env)}. Plan again.")
        return lock

    def _metadata(self, state: EnvState, lock: BlobLock) -> dict[str, str]:
        return {
            SERIAL_METADATA: str(state.serial),
            LINEAGE_METADATA: state.lineage,
            LOCK_METADATA: _encode_lock(lock.info),
        }

    def _put(self, blob: BlobClient, data: bytes, *, etag: str, lock: BlobLock, metadata: dict[str, str],
             where: str) -> str:
        """Replace the blob's content if its ETag is still ``etag`` and ``lock`` still holds its lease."""
        try:
            result = blob.upload_blob(
                data, overwrite=True, lease=lock.lease, etag=etag, match_condition=MatchConditions.IfNotModified,
                metadata=metadata, content_settings=ContentSettings(content_type="application/json"),
            )
        except ResourceModifiedError:
            raise StateError(
                f"state {where} changed since this run read it (another run or a hand edit): nothing was "
                "written. Plan again."
            ) from None
        except HttpResponseError as e:
            if "Lease" in _code(e):
                raise StateError(
                    f"the lock of {lock.info.environment!r} (id {lock.id}) was broken while this run held it "
                    f"({_code(e)}): nothing was written to {where}. Plan again."
                ) from None
            raise
        return str(result["etag"])

    def _backup_current(self, env: str, raw: bytes) -> None:
        """Keep ``raw`` (the version about to be replaced) as the backup blob."""
        self._blob(env, BACKUP_SUFFIX).upload_blob(
            raw, overwrite=True, content_settings=ContentSettings(content_type="application/json"))

    def write(self, state: EnvState, *, token: str | None, lock: StateLock) -> str:
        env = state.environment
        held = self._held(lock, env)
        blob = self._blob(env)
        where = self.location(env)
        with self._errors("write", where):
            got = self._download(blob, where)
            raw, etag = got if got is not None else (b"", "")
            if not etag:  # the lock creates the blob; it cannot be gone while leased
                raise StateError(f"state {where} disappeared while this run held its lease: nothing was written.")
            current: EnvState | None = None
            if raw:
                try:
                    current = parse_state(raw, where, env)
                except StateTooNewError:
                    raise
                except StateError as e:
                    raise StateError(f"refusing to overwrite a damaged state: {e} {self._recovery_hint(env)}") from e
            if (token is None and raw) or (token is not None and (not raw or token_of(raw) != token)):
                raise StateError(
                    f"state {where} changed since this run read it (another run or a hand edit): nothing was "
                    "written. Plan again."
                )
            if current is not None:
                check_successor(current, state, where)
                self._backup_current(env, raw)
            data = serialize_state(state)
            self._put(blob, data, etag=etag, lock=held, metadata=self._metadata(state, held), where=where)
            return token_of(data)

    def restore(self, env: str, *, lock: StateLock) -> EnvState:
        held = self._held(lock, env)
        blob = self._blob(env)
        where = self.location(env)
        bak_where = self._url(self._name(env, BACKUP_SUFFIX))
        with self._errors("restore", where):
            got_bak = self._download(self._blob(env, BACKUP_SUFFIX), bak_where)
            if got_bak is None or not got_bak[0]:
                raise StateError(f"no backup to restore: {bak_where} does not exist.")
            backup = parse_state(got_bak[0], bak_where, env)
            serial = backup.serial
            got = self._download(blob, where)
            raw, etag = got if got is not None else (b"", "")
            if raw:
                refuse_restore_over_newer(raw, where, env)
                kind = "damaged"
                with contextlib.suppress(StateError):
                    current = parse_state(raw, where, env)
                    kind = "replaced"
                    if current.lineage == backup.lineage:
                        serial = max(serial, current.serial)
                self._blob(env, f"{STATE_SUFFIX}.{kind}-{_stamp()}").upload_blob(raw, overwrite=True)
            restored = replace(backup, serial=serial + 1)
            self._put(blob, serialize_state(restored), etag=etag, lock=held,
                      metadata=self._metadata(restored, held), where=where)
        return restored

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for close in self._closers:
            with contextlib.suppress(Exception):
                close()

    def __repr__(self) -> str:
        return f"AzureBlobBackend({self.container.url!r}, key_prefix={self.key_prefix!r})"


# --------------------------------------------------------------------------- from the config


def open_azure_backend(config: Config, settings: AzureStateConfig) -> AzureBlobBackend:
    """The backend ``state: {backend: azurerm, ...}`` describes, with its credential."""
    where = f"state: in {config.path}"
    if settings.connection_string_env:
        name = settings.connection_string_env
        value = os.environ.get(name, "").strip()
        if not value:
            raise ConfigError(f"the environment variable {name} (state.connection_string_env) is empty or not set",
                              settings.location, "state.connection_string_env")
        try:
            service = BlobServiceClient.from_connection_string(
                value, **client_options(settings.container, settings.key_prefix))
        except ValueError:
            raise ConfigError(f"the environment variable {name} does not hold a storage connection string",
                              settings.location, "state.connection_string_env") from None
        if settings.account_url and service.url.rstrip("/") != settings.account_url.rstrip("/"):
            service.close()
            raise ConfigError(f"state.account_url ({settings.account_url}) is not the blob endpoint of the "
                              f"connection string in {name}", settings.location, "state.account_url")
        container = service.get_container_client(settings.container)
        hint = f"check the connection string in {name}."
        return AzureBlobBackend(container, key_prefix=settings.key_prefix, lease_duration=settings.lease_duration,
                                auth_hint=hint, closers=(service.close,))

    profile = config.auth.get(settings.auth or "")
    if profile is None or not settings.account_url:
        raise ConfigError(f"the azurerm state backend needs auth and account_url ({where})", settings.location,
                          "state")
    if urlsplit(settings.account_url).scheme.lower() != "https":
        # The SDK refuses to send a token over plain http (even to loopback), on the first request; the loader
        # reports this at the line, and this keeps a config built otherwise from reaching that request.
        raise ConfigError(f"state.account_url ({settings.account_url}) is plain http: the storage SDK sends tokens "
                          "only over https; over http use connection_string_env instead of auth (e.g. for Azurite)",
                          settings.location, "state.account_url")
    from reconciler.api.session import TokenProviders

    providers = TokenProviders()
    try:
        credential = ProfileCredential(providers.for_profile(profile), profile.name)
        service = BlobServiceClient(settings.account_url, credential=credential,
                                    **client_options(settings.container, settings.key_prefix))
    except ValueError as e:  # the SDK's check of its settings: about the config, and it names no secret
        providers.close()
        raise ConfigError(f"the Azure Storage client refused this endpoint: {inert(str(e))[:300]}",
                          settings.location, "state.account_url") from None
    except BaseException:
        providers.close()
        raise
    container = service.get_container_client(settings.container)
    hint = (f"give the identity of auth profile '{profile.name}' the 'Storage Blob Data Contributor' role on "
            f"container {settings.container} (or 'Storage Blob Data Reader' for plan and drift only).")
    return AzureBlobBackend(container, key_prefix=settings.key_prefix, lease_duration=settings.lease_duration,
                            auth_hint=hint, closers=(service.close, providers.close))
