"""Post connref's plan (or drift report) on an Azure DevOps pull request as one comment, and on each later
run update that comment rather than add another: the Azure DevOps counterpart of the GitHub recipe in
docs/pipelines.md (``gh api`` ... ``gh pr comment``). The step template runs it after connref when its
``pullRequestComment`` parameter is true (``integrations/azure-devops/connref.yml``).

    python azure_devops_pr_comment.py MARKDOWN_FILE

The markdown's first line is connref's hidden marker (``<!-- connref:plan -->``): the comment to update is
the first comment of a thread of this pull request that starts with it. A new one goes in a thread whose
status is *closed*, so a branch policy that wants every comment resolved is not held up by a report.

Inputs, from the environment (an agent sets the predefined variables itself; the token must be mapped):

    SYSTEM_ACCESSTOKEN                 $(System.AccessToken): the job's token (required; never printed)
    SYSTEM_COLLECTIONURI               https://dev.azure.com/<organisation>/
    SYSTEM_TEAMPROJECTID               the project (SYSTEM_TEAMPROJECT when absent)
    BUILD_REPOSITORY_ID                the repository of the pull request
    SYSTEM_PULLREQUEST_PULLREQUESTID   the pull request; absent outside a pull request build: nothing is posted

The REST calls (api-version 7.1): list the pull request's threads; ``PATCH`` the comment found, or ``POST`` a
thread. The job's identity needs *Contribute to pull requests* on the repository; without it the service
answers 403 and this step says which permission to grant. Standard library only, like ``run.py``: it runs
outside connref, whose HTTP client speaks only to Dataverse and the Power Platform.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

API_VERSION = "7.1"
TIMEOUT = 30.0
ATTEMPTS = 3
MAX_WAIT = 30.0
THREAD_STATUS = "closed"


class CommentError(Exception):
    """The comment could not be posted; the message says why and names the URL (never the token)."""


def _defused(text: str) -> str:
    # Text from the service ends up in the log: it must not act as a logging command, nor end the line early.
    return text.replace("##vso[", "##vso [").replace("\r", " ").replace("\n", " ")


def _error(message: str) -> None:
    print(f"##vso[task.logissue type=error]connref: {_defused(message)}", flush=True)


def threads_url(env: Mapping[str, str]) -> str:
    """The pull request's threads endpoint, from the predefined variables (``CommentError`` if any is absent)."""
    missing = [name for name in ("SYSTEM_COLLECTIONURI", "BUILD_REPOSITORY_ID", "SYSTEM_PULLREQUEST_PULLREQUESTID")
               if not env.get(name, "").strip()]
    project = env.get("SYSTEM_TEAMPROJECTID", "").strip() or env.get("SYSTEM_TEAMPROJECT", "").strip()
    if not project:
        missing.append("SYSTEM_TEAMPROJECTID")
    if missing:
        raise CommentError(f"{', '.join(missing)} not set: run this in an Azure Pipelines job")
    pr = env["SYSTEM_PULLREQUEST_PULLREQUESTID"].strip()
    if not pr.isdigit():
        raise CommentError(f"SYSTEM_PULLREQUEST_PULLREQUESTID is not a pull request number: {pr!r}")
    quote = urllib.parse.quote
    base = env["SYSTEM_COLLECTIONURI"].strip().rstrip("/")
    return (f"{base}/{quote(project, safe='')}/_apis/git/repositories/"
            f"{quote(env['BUILD_REPOSITORY_ID'].strip(), safe='')}/pullRequests/{pr}/threads")


def _service_message(body: bytes) -> str:
    try:
        value = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return ""
    message = value.get("message") if isinstance(value, dict) else None
    return str(message)[:500] if message else ""


def _retry_after(headers: Any) -> float:
    try:
        return min(MAX_WAIT, max(0.0, float(headers.get("Retry-After", "") or 2)))
    except ValueError:
        return 2.0


def call(method: str, url: str, token: str, body: Any | None = None) -> Any:
    """One REST call; its JSON answer. Throttling and server errors are tried again (``Retry-After``)."""
    full = f"{url}{'&' if '?' in url else '?'}api-version={API_VERSION}"
    data = json.dumps(body).encode("utf-8") if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    for attempt in range(1, ATTEMPTS + 1):
        request = urllib.request.Request(full, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                status, ctype, raw = answer.status, answer.headers.get("Content-Type", ""), answer.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            if (e.code == 429 or e.code >= 500) and attempt < ATTEMPTS:
                time.sleep(_retry_after(e.headers))
                continue
            said = _service_message(raw)
            hint = ""
            if e.code in (401, 403):
                hint = (" (the job's identity, e.g. '<project> Build Service', needs 'Contribute to pull requests' on "
                        "the repository, and SYSTEM_ACCESSTOKEN must be mapped from $(System.AccessToken))")
            raise CommentError(f"{method} {full}: HTTP {e.code}{': ' + said if said else ''}{hint}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            if attempt < ATTEMPTS:
                time.sleep(2.0)
                continue
            reason = getattr(e, "reason", e)
            raise CommentError(f"{method} {full}: no answer ({reason})") from None
        # A token the service does not accept can be answered 203 with a sign-in page rather than 401.
        if "json" not in ctype.lower():
            raise CommentError(f"{method} {full}: HTTP {status} answered {ctype or 'no content type'}, not JSON: "
                               "is SYSTEM_ACCESSTOKEN mapped from $(System.AccessToken)?")
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError:
            raise CommentError(f"{method} {full}: HTTP {status} answered a body that is not JSON") from None
    raise AssertionError("unreachable")


def find_comment(threads: Any, marker: str) -> tuple[int, int] | None:
    """(thread id, comment id) of the first live root comment that starts with ``marker``; None if none."""
    if not isinstance(threads, dict) or not isinstance(threads.get("value"), list):
        raise CommentError("the threads list is not {'value': [...]}")
    for thread in threads["value"]:
        if not isinstance(thread, dict) or thread.get("isDeleted") or not isinstance(thread.get("id"), int):
            continue
        for comment in thread.get("comments") or []:
            if (isinstance(comment, dict) and not comment.get("isDeleted") and comment.get("parentCommentId", 0) == 0
                    and comment.get("commentType") != "system" and isinstance(comment.get("id"), int)
                    and str(comment.get("content") or "").startswith(marker)):
                return thread["id"], comment["id"]
    return None


def post_or_update(markdown: str, env: Mapping[str, str]) -> str:
    """Update the comment posted before, or post one; what was done, in words."""
    token = env.get("SYSTEM_ACCESSTOKEN", "").strip()
    if not token:
        raise CommentError("SYSTEM_ACCESSTOKEN is not set: map it in the step, env: SYSTEM_ACCESSTOKEN: "
                           "$(System.AccessToken)")
    marker = markdown.split("\n", 1)[0].strip()
    if not (marker.startswith("<!-- connref:") and marker.endswith("-->")):
        raise CommentError("the markdown does not start with connref's marker (<!-- connref:... -->)")
    url = threads_url(env)
    found = find_comment(call("GET", url, token), marker)
    if found:
        thread_id, comment_id = found
        call("PATCH", f"{url}/{thread_id}/comments/{comment_id}", token, {"content": markdown})
        return f"updated the comment posted before (thread {thread_id})"
    created = call("POST", url, token, {"comments": [{"parentCommentId": 0, "content": markdown, "commentType": 1}],
                                        "status": THREAD_STATUS})
    new_id = created.get("id") if isinstance(created, dict) else None
    return f"posted a comment (thread {new_id})"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if env is None else env
    if len(args) != 1:
        print("usage: azure_devops_pr_comment.py MARKDOWN_FILE", file=sys.stderr)
        return 2
    if not environ.get("SYSTEM_PULLREQUEST_PULLREQUESTID", "").strip():
        print("Not a pull request build: no comment posted.", flush=True)
        return 0
    path = Path(args[0])
    try:
        markdown = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        _error(f"cannot read {path}: {getattr(e, 'strerror', None) or e}")
        return 1
    try:
        done = post_or_update(markdown, environ)
    except CommentError as e:
        _error(f"pull request comment: {e}")
        return 1
    print(f"connref: {done}.", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
