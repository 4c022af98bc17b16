"""A stand-in for the Azure DevOps pull request threads API, over loopback HTTP, for the tests of
integrations/azure_devops_pr_comment.py and of the step template that runs it (tests/e2e/test_integrations.py).

It models only what the script relies on, as documented for api-version 7.1 (Pull Request Threads - List /
Create, Pull Request Thread Comments - Update): threads with their comments, soft-deleted threads and
comments, system threads, the ``api-version`` every call must name, ``Bearer`` authentication, and the
service's refusals: 401 for a token it does not know, 203 with a sign-in page (as it can answer a token it
does not take), 403 without the *Contribute to pull requests* permission, 429 with ``Retry-After``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "job-token-3f1c9a"
REPO = "8e5c1a52-0b1f-4c4e-9a51-2f6f1b2c3d4e"
PROJECT = "Flows Project"
PULL_REQUEST = "7"


class FakeThreads:
    """The threads of pull request 7 of one repository, and how the service answers."""

    def __init__(self) -> None:
        self.threads: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.can_contribute = True
        self.sign_in_page = False  # a token it does not take: 203 with an HTML page, as the service can
        self.throttle = 0  # how many calls to answer 429 first
        self.message = "TF401027: You need the Git 'PullRequestContribute' permission to perform this action."
        self.next_id = 1

    def add(self, content: str, *, deleted: bool = False, comment_type: str = "text",
            replies: tuple[str, ...] = ()) -> dict[str, Any]:
        comments = [{"id": 1, "parentCommentId": 0, "content": content, "commentType": comment_type,
                     "isDeleted": False}]
        comments += [{"id": i + 2, "parentCommentId": 1, "content": r, "commentType": "text", "isDeleted": False}
                     for i, r in enumerate(replies)]
        thread = {"id": self.next_id, "status": "active", "isDeleted": deleted, "comments": comments}
        self.next_id += 1
        self.threads.append(thread)
        return thread

    def answer(self, method: str, path: str, auth: str | None, body: bytes) -> tuple[int, str, bytes]:
        self.requests.append((method, path))
        route, _, query = path.partition("?")
        if query != "api-version=7.1":
            return self._json(400, {"message": f"api-version missing or wrong: {query}"})
        if self.sign_in_page:
            return 203, "text/html; charset=utf-8", b"<html><body>Sign in to your account</body></html>"
        if auth != f"Bearer {TOKEN}":
            return self._json(401, {"message": "TF400813: The user '' is not authorized to access this resource."})
        if self.throttle:
            self.throttle -= 1
            return 429, "application/json", b'{"message": "TF400733: request throttled"}'
        base = f"/org/Flows%20Project/_apis/git/repositories/{REPO}/pullRequests/{PULL_REQUEST}/threads"
        if route == base and method == "GET":
            return self._json(200, {"value": self.threads, "count": len(self.threads)})
        if method in ("POST", "PATCH") and not self.can_contribute:
            return self._json(403, {"message": self.message})
        if route == base and method == "POST":
            sent = json.loads(body)
            root = dict(sent["comments"][0], id=1, isDeleted=False)
            thread = {"id": self.next_id, "status": sent.get("status", "active"), "isDeleted": False,
                      "comments": [root]}
            self.next_id += 1
            self.threads.append(thread)
            return self._json(200, thread)
        if route.startswith(base + "/") and method == "PATCH":
            parts = route.removeprefix(base + "/").split("/")
            if len(parts) == 3 and parts[1] == "comments":
                for thread in self.threads:
                    if str(thread["id"]) == parts[0]:
                        for comment in thread["comments"]:
                            if str(comment["id"]) == parts[2]:
                                comment["content"] = json.loads(body)["content"]
                                return self._json(200, comment)
            return self._json(404, {"message": "TF401180: The requested pull request comment was not found."})
        return self._json(404, {"message": "not found"})

    @staticmethod
    def _json(status: int, value: Any) -> tuple[int, str, bytes]:
        return status, "application/json; charset=utf-8", json.dumps(value).encode()


@contextmanager
def serve_threads() -> Iterator[tuple[FakeThreads, dict[str, str]]]:
    """The stand-in on a loopback port, and the predefined variables of a pull request build pointed at it
    (with the job's token as SYSTEM_ACCESSTOKEN)."""
    fake = FakeThreads()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            status, ctype, body = fake.answer(self.command, self.path, self.headers.get("Authorization"),
                                              self.rfile.read(size))
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            if status == 429:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {"SYSTEM_ACCESSTOKEN": TOKEN, "SYSTEM_COLLECTIONURI": f"http://127.0.0.1:{server.server_port}/org/",
           "SYSTEM_TEAMPROJECTID": PROJECT, "BUILD_REPOSITORY_ID": REPO,
           "SYSTEM_PULLREQUEST_PULLREQUESTID": PULL_REQUEST, "NO_PROXY": "127.0.0.1"}
    try:
        yield fake, env
    finally:
        server.shutdown()
        server.server_close()
