"""A small Hugging Face Hub-compatible HTTP server for tests, built on the standard library only.

`FakeHub` speaks the subset of the Hub HTTP API that `huggingface_hub`'s real client uses to create repos,
upload folders (inline "regular" uploads, no LFS/Xet), open pull requests and download files::

    with FakeHub(tokens={"hf_valid_token"}) as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_valid_token")
        api.create_repo("me/adapter")
        api.upload_folder(repo_id="me/adapter", folder_path=folder)
        assert hub.files("me/adapter")["adapter_config.json"] == b"{}"

Storage is in memory: repo -> refs ("main", "refs/pr/N") -> commit sha; every commit holds a full snapshot
(path -> bytes) and a parent pointer. New repos start with an "initial commit" holding `.gitattributes`, like the
real Hub (pass `initial_gitattributes=False` to start from an empty snapshot instead).

Faults can be injected per route kind (see `ROUTE_KINDS`) with `fail_next` (answer an HTTP error) and
`drop_next` (close the connection without answering). Every request is recorded in `hub.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import socketserver
import threading
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType, TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

#: Route kinds accepted by `FakeHub.fail_next` / `FakeHub.drop_next`.
ROUTE_KINDS: frozenset[str] = frozenset(
    {
        "create",  # POST /api/repos/create
        "delete",  # DELETE /api/repos/delete
        "validate",  # POST /api/validate-yaml
        "whoami",  # GET /api/whoami-v2
        "info",  # GET /api/{type}s/{repo} and /api/{type}s/{repo}/revision/{rev}
        "preupload",  # POST /api/{type}s/{repo}/preupload/{rev}
        "commit",  # POST /api/{type}s/{repo}/commit/{rev}
        "tree",  # GET /api/{type}s/{repo}/tree/{rev}[/{path}]
        "refs",  # GET /api/{type}s/{repo}/refs
        "commits",  # GET /api/{type}s/{repo}/commits/{rev}
        "discussion",  # POST /api/{type}s/{repo}/discussions, GET .../discussions/{num}
        "resolve",  # GET/HEAD /[{type}s/]{repo}/resolve/{rev}/{path}
    }
)

_REPO_TYPES = ("model", "dataset", "space")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_HEX_RE = re.compile(r"[0-9a-f]{7,40}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_DEFAULT_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    b"*tfevents* filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_sha(content: bytes) -> str:
    """Git blob id of `content` (what the Hub returns as ETag / oid of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now_iso() -> str:
    """Current UTC time in the Hub's `2024-01-01T00:00:00.000Z` format."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Commit:
    """One commit: a full snapshot of the repo files plus metadata."""

    sha: str
    parent: str | None
    title: str
    message: str
    author: str
    created_at: str
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class PullRequest:
    """A pull request (or plain discussion when `is_pull_request` is False)."""

    num: int
    title: str
    description: str
    author: str
    created_at: str
    base: str
    is_pull_request: bool = True

    @property
    def ref(self) -> str:
        """Git ref the PR commits land on."""
        return f"refs/pr/{self.num}"


@dataclass(frozen=True)
class RepoState:
    """Read-only view of a repo, returned by `FakeHub.repo`."""

    repo_id: str
    repo_type: str
    private: bool
    refs: Mapping[str, str]
    pull_requests: tuple[PullRequest, ...]

    @property
    def branches(self) -> list[str]:
        """Branch names (refs that are not PR refs)."""
        return [name for name in self.refs if not name.startswith("refs/")]

    @property
    def pr_refs(self) -> list[str]:
        """PR refs, e.g. `["refs/pr/1"]`, in creation order."""
        return [pr.ref for pr in self.pull_requests if pr.is_pull_request]


@dataclass
class RecordedRequest:
    """A request as received by the server (`status` is filled in once answered; None if dropped)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    kind: str | None
    status: int | None = None

    @property
    def url_path(self) -> str:
        """Path without the query string."""
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, list[str]]:
        """Parsed query string."""
        return parse_qs(urlsplit(self.path).query, keep_blank_values=True)

    @property
    def authorization(self) -> str | None:
        """Value of the Authorization header, if any (header names are case-insensitive)."""
        for key, value in self.headers.items():
            if key.lower() == "authorization":
                return value
        return None


@dataclass
class _Fault:
    status: int | None  # None => drop the connection
    remaining: int
    message: str


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    private: bool
    author: str
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    discussions: dict[int, PullRequest] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """Commit sha for a branch name, `refs/heads/X`, `refs/pr/N`, or a (possibly short) commit sha."""
        if revision in self.refs:
            return self.refs[revision]
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in self.refs:
            return self.refs[revision[len("refs/heads/") :]]
        if _HEX_RE.fullmatch(revision):
            matches = [sha for sha in self.commits if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None

    def history(self, sha: str) -> list[Commit]:
        """Commits reachable from `sha`, oldest first."""
        out: list[Commit] = []
        current: str | None = sha
        while current is not None:
            commit = self.commits[current]
            out.append(commit)
            current = commit.parent
        return out[::-1]


class _HubError(Exception):
    """Raised by route handlers to answer an error."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}
        self.extra = extra or {}


@dataclass
class _Response:
    status: int
    body: bytes
    headers: dict[str, str]


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    return _Response(
        status,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
    )


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer without reverse DNS lookups at bind time and with a larger accept backlog."""

    daemon_threads = True
    request_queue_size = 64
    hub: FakeHub

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    """Parses a request, records it, applies faults and auth, then dispatches to the route handler."""

    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: no stale keep-alive sockets at shutdown
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        """Silence the default stderr access log."""

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch()

    # ------------------------------------------------------------------ plumbing

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        hub = self.server.hub
        body = self._read_body()
        split = urlsplit(self.path)
        segments = split.path.split("/")[1:]
        route = _match_route(self.command, segments)
        record = RecordedRequest(
            method=self.command,
            path=self.path,
            headers=dict(self.headers.items()),
            body=body,
            kind=route[0] if route else None,
        )
        hub._record(record)

        fault = hub._take_fault(record.kind) if record.kind else None
        if fault is not None and fault.status is None:
            self._drop()
            return
        try:
            if fault is not None:
                assert fault.status is not None
                raise _HubError(fault.status, fault.message)
            if route is None:
                raise _HubError(404, f"Sorry, we can't find the page you are looking for: {split.path}")
            user = self._authenticate()
            kind, handler, args = route
            response = handler(
                _Context(
                    hub=hub,
                    user=user,
                    query=parse_qs(split.query, keep_blank_values=True),
                    body=body,
                    host=self.headers.get("Host"),
                    method=self.command,
                    headers=self.headers,
                ),
                *args,
            )
        except _HubError as err:
            headers = dict(err.headers)
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
            headers["X-Error-Message"] = err.message
            response = _json_response({"error": err.message, **err.extra}, err.status, headers)
        except Exception as exc:  # a bug in the fake server: answer 500 and keep it visible to tests
            hub._server_errors.append(f"{self.command} {self.path}: {exc!r}\n{traceback.format_exc()}")
            response = _json_response({"error": f"FakeHub internal error: {exc!r}"}, 500)
        record.status = response.status
        self._send(response)

    def _authenticate(self) -> str | None:
        """Username of a valid bearer token, None when anonymous; raises 401 for an invalid token."""
        header = self.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        user = self.server.hub._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise _HubError(401, _INVALID_CREDENTIALS)
        return user

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        headers = {"Content-Length": str(len(response.body)), **response.headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    def _drop(self) -> None:
        """Close the connection without answering (the client sees 'server disconnected')."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass
class _Context:
    hub: FakeHub
    user: str | None
    query: dict[str, list[str]]
    body: bytes
    host: str | None
    method: str
    headers: Any

    @property
    def base_url(self) -> str:
        """The server's own URL as seen by the client."""
        return f"http://{self.host}" if self.host else self.hub.endpoint

    def flag(self, name: str) -> bool:
        values = self.query.get(name)
        return bool(values) and values[-1].lower() in ("1", "true", "yes")

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as err:
            raise _HubError(400, f"Invalid JSON body: {err}") from err

    def require_user(self) -> str:
        if self.user is None:
            raise _HubError(401, "You must be authenticated to access this resource")
        return self.user


# ---------------------------------------------------------------------------------------------- routing


def _split_revision(parts: list[str]) -> tuple[str, list[str]] | None:
    """Take the revision off the (raw) path segments: `refs%2Fpr%2F1` or unencoded `refs/pr/1`."""
    if not parts:
        return None
    if parts[0] == "refs" and len(parts) >= 3:
        return "/".join(unquote(p) for p in parts[:3]), parts[3:]
    return unquote(parts[0]), parts[1:]


def _match_route(method: str, raw: list[str]) -> tuple[str, Any, tuple[Any, ...]] | None:
    """Map (method, raw path segments) to (route kind, handler, handler args)."""
    if raw[:2] == ["api", "repos"] and len(raw) == 3:
        if raw[2] == "create" and method == "POST":
            return "create", _create_repo, ()
        if raw[2] == "delete" and method == "DELETE":
            return "delete", _delete_repo, ()
        return None
    if raw == ["api", "validate-yaml"] and method == "POST":
        return "validate", _validate_yaml, ()
    if raw == ["api", "whoami-v2"] and method == "GET":
        return "whoami", _whoami, ()
    if len(raw) >= 4 and raw[0] == "api" and raw[1] in ("models", "datasets", "spaces"):
        repo_type = raw[1][:-1]
        repo_id = f"{unquote(raw[2])}/{unquote(raw[3])}"
        rest = raw[4:]
        if rest in ([], [""]):
            return ("info", _repo_info, (repo_type, repo_id, None)) if method == "GET" else None
        action, tail = rest[0], rest[1:]
        split = _split_revision(tail)
        if action == "revision" and method == "GET" and split and split[1] in ([], [""]):
            return "info", _repo_info, (repo_type, repo_id, split[0])
        if action == "preupload" and method == "POST" and split and not split[1]:
            return "preupload", _preupload, (repo_type, repo_id, split[0])
        if action == "commit" and method == "POST" and split and not split[1]:
            return "commit", _commit, (repo_type, repo_id, split[0])
        if action == "tree" and method == "GET" and split:
            path = "/".join(unquote(p) for p in split[1] if p)
            return "tree", _tree, (repo_type, repo_id, split[0], path)
        if action == "refs" and method == "GET" and not tail:
            return "refs", _refs, (repo_type, repo_id)
        if action == "commits" and method == "GET" and split and not split[1]:
            return "commits", _list_commits, (repo_type, repo_id, split[0])
        if action == "discussions" and method == "POST" and not tail:
            return "discussion", _create_discussion, (repo_type, repo_id)
        if action == "discussions" and method == "GET" and len(tail) == 1 and tail[0].isdigit():
            return "discussion", _discussion_details, (repo_type, repo_id, int(tail[0]))
        return None
    if method in ("GET", "HEAD"):
        repo_type = "model"
        parts = raw
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, parts = parts[0][:-1], parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve":
            split = _split_revision(parts[3:])
            if split and split[1] and all(split[1]):
                repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
                path = "/".join(unquote(p) for p in split[1])
                return "resolve", _resolve, (repo_type, repo_id, split[0], path)
    return None


# ---------------------------------------------------------------------------------------------- handlers


def _create_repo(ctx: _Context) -> _Response:
    user = ctx.require_user()
    payload = ctx.json()
    name = payload.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise _HubError(400, "Invalid repo name")
    namespace = payload.get("organization") or user
    repo_type = payload.get("type") or "model"
    if repo_type not in _REPO_TYPES:
        raise _HubError(400, f"Invalid repo type: {repo_type}")
    private = payload.get("visibility") == "private" or bool(payload.get("private"))
    repo_id = f"{namespace}/{name}"
    url = f"{ctx.base_url}/{_URL_PREFIX[repo_type]}{repo_id}"
    with ctx.hub._lock:
        if (repo_type, repo_id) in ctx.hub._repos:
            # The client reads "url" from the 409 body when exist_ok=True.
            raise _HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
        ctx.hub._new_repo(repo_type, repo_id, private=private, author=user)
    return _json_response({"url": url, "name": repo_id, "id": repo_id})


def _delete_repo(ctx: _Context) -> _Response:
    user = ctx.require_user()
    payload = ctx.json()
    repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
    repo_type = payload.get("type") or "model"
    with ctx.hub._lock:
        if ctx.hub._repos.pop((repo_type, repo_id), None) is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
    return _json_response({})


def _validate_yaml(ctx: _Context) -> _Response:
    payload = ctx.json()
    if not isinstance(payload.get("content"), str):
        raise _HubError(400, "Missing 'content'")
    return _json_response({"errors": [], "warnings": []})


def _whoami(ctx: _Context) -> _Response:
    user = ctx.require_user()
    return _json_response(
        {"type": "user", "id": user, "name": user, "fullname": user, "orgs": [], "auth": {"type": "access_token"}}
    )


def _get_repo(ctx: _Context, repo_type: str, repo_id: str) -> _Repo:
    """Look up a repo; private repos are invisible (404) to anonymous requests, like on the Hub."""
    repo = ctx.hub._repos.get((repo_type, repo_id))
    if repo is None or (repo.private and ctx.user is None):
        raise _HubError(404, "Repository not found", "RepoNotFound")
    return repo


def _resolve_rev(repo: _Repo, revision: str) -> str:
    sha = repo.resolve(revision)
    if sha is None:
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
    return sha


def _repo_url(ctx: _Context, repo: _Repo) -> str:
    return f"{ctx.base_url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"


def _repo_info(ctx: _Context, repo_type: str, repo_id: str, revision: str | None) -> _Response:
    with ctx.hub._lock:
        repo = _get_repo(ctx, repo_type, repo_id)
        sha = _resolve_rev(repo, revision or "main")
        commit = repo.commits[sha]
        payload = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": sha,
            "lastModified": commit.created_at,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [
                {"rfilename": path, "size": len(data), "blobId": git_blob_sha(data)}
                for path, data in sorted(commit.files.items())
            ],
        }
        if repo_type == "model":
            payload["modelId"] = repo_id
        if repo_type == "space":
            payload["sdk"] = "static"
    return _json_response(payload)


def _preupload(ctx: _Context, repo_type: str, repo_id: str, revision: str) -> _Response:
    ctx.require_user()
    payload = ctx.json()
    files = payload.get("files")
    if not isinstance(files, list):
        raise _HubError(400, "Missing 'files'")
    with ctx.hub._lock:
        repo = _get_repo(ctx, repo_type, repo_id)
        sha = _resolve_rev(repo, revision)
        snapshot = repo.commits[sha].files
        out = []
        for entry in files:
            path = entry.get("path")
            existing = snapshot.get(path)
            out.append(
                {
                    "path": path,
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha(existing) if existing is not None else None,
                }
            )
    return _json_response({"files": out, "commitOid": sha})


def _validate_path(path: Any) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
        raise _HubError(400, f"Invalid path: {path!r}")
    return path


def _parse_commit_body(body: bytes) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    header: dict[str, Any] | None = None
    operations: list[tuple[str, dict[str, Any]]] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as err:
            raise _HubError(400, f"Invalid NDJSON line: {err}") from err
        key, value = item.get("key"), item.get("value")
        if not isinstance(value, dict):
            raise _HubError(400, f"Invalid commit item: {item!r}")
        if key == "header":
            header = value
        else:
            operations.append((key, value))
    if header is None or not header.get("summary"):
        raise _HubError(400, "Commit header with a non-empty 'summary' is required")
    return header, operations


def _apply_operations(files: dict[str, bytes], operations: list[tuple[str, dict[str, Any]]]) -> None:
    for key, value in operations:
        path = _validate_path(value.get("path", "").rstrip("/") if key == "deletedFolder" else value.get("path"))
        if key == "file":
            content = value.get("content", "")
            if value.get("encoding") == "base64":
                try:
                    files[path] = base64.b64decode(content, validate=True)
                except ValueError as err:
                    raise _HubError(400, f"Invalid base64 content for {path}") from err
            else:
                files[path] = str(content).encode()
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            doomed = [p for p in files if p.startswith(path + "/")]
            if not doomed:
                raise _HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del files[p]
        elif key == "lfsFile":
            raise _HubError(400, "FakeHub does not store LFS files (preupload always answers 'regular')")
        else:
            raise _HubError(400, f"Unknown commit operation: {key!r}")


def _commit(ctx: _Context, repo_type: str, repo_id: str, revision: str) -> _Response:
    user = ctx.require_user()
    header, operations = _parse_commit_body(ctx.body)
    create_pr = ctx.flag("create_pr")
    with ctx.hub._lock:
        repo = _get_repo(ctx, repo_type, repo_id)
        revision = revision.removeprefix("refs/heads/")
        if revision not in repo.refs or (create_pr and revision.startswith("refs/")):
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.refs[revision]
        parent_commit = header.get("parentCommit")
        if parent_commit and not create_pr and not head.startswith(parent_commit):
            raise _HubError(412, f"A commit has happened since. Please refresh and try again. ({head})")
        base = repo.resolve(parent_commit) if (create_pr and parent_commit) else head
        if base is None:
            raise _HubError(404, f"Invalid rev id: {parent_commit}", "RevisionNotFound")
        files = dict(repo.commits[base].files)
        _apply_operations(files, operations)
        target = revision
        pr: PullRequest | None = None
        if create_pr:
            pr = ctx.hub._open_pr(repo, header["summary"], header.get("description") or "", user, base=revision)
            repo.refs[pr.ref] = base
            target = pr.ref
        commit = ctx.hub._add_commit(
            repo, target, files, title=header["summary"], message=header.get("description") or "", author=user
        )
        repo_url = _repo_url(ctx, repo)
    payload: dict[str, Any] = {
        "success": True,
        "commitOid": commit.sha,
        "commitUrl": f"{repo_url}/commit/{commit.sha}",
        "hookOutput": "",
    }
    if pr is not None:
        payload["pullRequestUrl"] = f"{repo_url}/discussions/{pr.num}"
    return _json_response(payload)


def _tree(ctx: _Context, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
    recursive = ctx.flag("recursive")
    with ctx.hub._lock:
        repo = _get_repo(ctx, repo_type, repo_id)
        files = repo.commits[_resolve_rev(repo, revision)].files
    prefix = f"{path}/" if path else ""
    below = {p: d for p, d in files.items() if p.startswith(prefix)}
    if path and not below:
        raise _HubError(404, f"Entry not found: {path}", "EntryNotFound")
    entries: dict[str, dict[str, Any]] = {}
    for file_path, data in sorted(below.items()):
        parts = file_path[len(prefix) :].split("/")
        for depth in range(1, len(parts)):
            folder = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                oid = hashlib.sha1(f"tree:{folder}".encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
            if not recursive:
                break
        if recursive or len(parts) == 1:
            entries[file_path] = {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": file_path}
    return _json_response(sorted(entries.values(), key=lambda e: e["path"]))


def _refs(ctx: _Context, repo_type: str, repo_id: str) -> _Response:
    with ctx.hub._lock:
        repo = _get_repo(ctx, repo_type, repo_id)
        refs = dict(repo.refs)

    def fmt(name: str, ref: str) -> dict[str, str]:
        return {"name": name, "ref": ref, "targetCommit": refs[name]}

    payload: dict[str, Any] = {
        "branches": [fmt(n, f"refs/heads/{n}") for n in refs if not n.startswith("refs/")],
        "converts": [],
        "tags": [],
    }
    if ctx.flag("include_prs"):
        payload["pullRequests"] = [fmt(n, n) for n in refs if n.startswith("refs/pr/")]
    return _json_response(payload)


def _list_commits(ctx: _Context, repo_type: str, repo_id: str, revision: str) -> _Response:
    with ctx.hub._lock:
        repo = _get_repo(ctx, repo_type, repo_id)
        history = repo.history(_resolve_rev(repo, revision))
    return _json_response(
        [
            {
                "id": c.sha,
                "authors": [{"user": c.author}],
                "date": c.created_at,
                "title": c.title,
                "message": c.message,
                "formatted": {"title": c.title, "message": c.message},
            }
            for c in reversed(history)
        ]
    )


def _create_discussion(ctx: _Context, repo_type: str, repo_id: str) -> _Response:
    user = ctx.require_user()
    payload = ctx.json()
    with ctx.hub._lock:
        repo = _get_repo(ctx, repo_type, repo_id)
        is_pr = bool(payload.get("pullRequest"))
        pr = ctx.hub._open_pr(
            repo, str(payload.get("title") or ""), str(payload.get("description") or ""), user, "main", is_pr
        )
        if is_pr:
            repo.refs[pr.ref] = repo.refs["main"]
        url = f"{_repo_url(ctx, repo)}/discussions/{pr.num}"
    return _json_response({"num": pr.num, "url": url, "pullRequest": is_pr})


def _discussion_details(ctx: _Context, repo_type: str, repo_id: str, num: int) -> _Response:
    with ctx.hub._lock:
        repo = _get_repo(ctx, repo_type, repo_id)
        pr = repo.discussions.get(num)
        if pr is None:
            raise _HubError(404, f"Discussion {num} not found")
        head = repo.refs.get(pr.ref)
    payload: dict[str, Any] = {
        "num": pr.num,
        "title": pr.title,
        "author": {"name": pr.author},
        "createdAt": pr.created_at,
        "status": "draft" if pr.is_pull_request else "open",
        "repo": {"name": repo_id, "type": repo_type},
        "isPullRequest": pr.is_pull_request,
        "events": [],
        "diff": "",
    }
    if pr.is_pull_request:
        payload["changes"] = {"base": f"refs/heads/{pr.base}", "headCommitId": head}
        payload["filesWithConflicts"] = []
    return _json_response(payload)


def _resolve(ctx: _Context, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
    with ctx.hub._lock:
        repo = _get_repo(ctx, repo_type, repo_id)
        sha = _resolve_rev(repo, revision)
        data = repo.commits[sha].files.get(path)
    if data is None:
        raise _HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": sha})
    headers = {
        "Content-Type": "application/octet-stream",
        "ETag": f'"{git_blob_sha(data)}"',
        "X-Repo-Commit": sha,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
    }
    status = 200
    range_header = ctx.headers.get("Range")
    match = _RANGE_RE.fullmatch(range_header.strip()) if range_header else None
    if match and (match.group(1) or match.group(2)):
        size = len(data)
        if match.group(1):
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        else:
            start, end = max(size - int(match.group(2)), 0), size - 1
        if start >= size or start > end:
            raise _HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        data, status = data[start : end + 1], 206
    return _Response(status, data, headers)


# ---------------------------------------------------------------------------------------------- public API


class FakeHub:
    """In-memory Hub-compatible server on 127.0.0.1.

    Args:
        tokens: valid tokens; either an iterable (all map to `username`) or a mapping token -> username.
            Any valid token may read every repo and write to any namespace.
        username: user name for tokens given as an iterable (namespace of `create_repo("name")`).
        host / port: where to listen; port 0 picks a free port.
        initial_gitattributes: like the Hub, start each repo with an "initial commit" holding `.gitattributes`.
    """

    def __init__(
        self,
        tokens: Iterable[str] | Mapping[str, str] = (),
        *,
        username: str = "fake-user",
        host: str = "127.0.0.1",
        port: int = 0,
        initial_gitattributes: bool = True,
    ) -> None:
        self._tokens: dict[str, str] = dict(tokens) if isinstance(tokens, Mapping) else dict.fromkeys(tokens, username)
        self._host = host
        self._port = port
        self._initial_gitattributes = initial_gitattributes
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._requests: list[RecordedRequest] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._server_errors: list[str] = []
        self._counter = itertools.count()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeHub:
        """Bind and serve in a daemon thread (idempotent)."""
        if self._server is None:
            server = _Server((self._host, self._port), _Handler)
            server.hub = self
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Port the server listens on (only once started)."""
        if self._server is None:
            raise RuntimeError("FakeHub is not started")
        return self._server.server_port

    @property
    def endpoint(self) -> str:
        """Base URL to pass as `endpoint=` to huggingface_hub, e.g. `http://127.0.0.1:PORT`."""
        return f"http://{self._host}:{self.port}"

    # ------------------------------------------------------------------ fault injection

    def fail_next(self, kind: str, status: int, count: int = 1, message: str | None = None) -> None:
        """Answer the next `count` requests of route `kind` with `status` and JSON `{"error": ...}`.

        Note that huggingface_hub retries some calls on 5xx (e.g. preupload, and commits made by the Xet
        upload pipeline): use a large `count` (e.g. 100) to make such a call fail for good.
        """
        self._add_fault(kind, _Fault(status, count, message or f"FakeHub injected error {status}"))

    def drop_next(self, kind: str, count: int = 1) -> None:
        """Close the connection of the next `count` requests of route `kind` after reading them, without answering."""
        self._add_fault(kind, _Fault(None, count, "dropped"))

    def clear_faults(self) -> None:
        """Forget all pending injected faults."""
        with self._lock:
            self._faults.clear()

    def _add_fault(self, kind: str, fault: _Fault) -> None:
        if kind not in ROUTE_KINDS:
            raise ValueError(f"Unknown route kind {kind!r}; expected one of {sorted(ROUTE_KINDS)}")
        if fault.remaining < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.setdefault(kind, []).append(fault)

    def _take_fault(self, kind: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(kind)
            if not queue:
                return None
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
            return fault

    # ------------------------------------------------------------------ inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """Copy of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_of(self, kind: str) -> list[RecordedRequest]:
        """Recorded requests of one route kind."""
        return [r for r in self.requests if r.kind == kind]

    @property
    def server_errors(self) -> list[str]:
        """Unexpected exceptions raised inside the server (answered as 500); should stay empty."""
        with self._lock:
            return list(self._server_errors)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _repo(self, repo_id: str, repo_type: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"No {repo_type} repo {repo_id!r} on the FakeHub")
        return repo

    def has_repo(self, repo_id: str, repo_type: str = "model") -> bool:
        """Whether the repo exists."""
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def repo(self, repo_id: str, repo_type: str = "model") -> RepoState:
        """Snapshot of a repo's metadata: private flag, refs (name -> sha), pull requests."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            return RepoState(
                repo_id=repo.repo_id,
                repo_type=repo.repo_type,
                private=repo.private,
                refs=MappingProxyType(dict(repo.refs)),
                pull_requests=tuple(repo.discussions[n] for n in sorted(repo.discussions)),
            )

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Files (path -> bytes) at `revision` (branch, `refs/pr/N` or commit sha)."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            sha = repo.resolve(revision)
            if sha is None:
                raise KeyError(f"Unknown revision {revision!r} in {repo_id!r}")
            return dict(repo.commits[sha].files)

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """History reachable from `revision`, oldest first (the last item is the head)."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            sha = repo.resolve(revision)
            if sha is None:
                raise KeyError(f"Unknown revision {revision!r} in {repo_id!r}")
            return repo.history(sha)

    # ------------------------------------------------------------------ seeding (bypasses HTTP)

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | None = None,
        *,
        private: bool = False,
        repo_type: str = "model",
        message: str = "Add files",
    ) -> str:
        """Create a repo directly (e.g. a base model to download) and return its head commit sha."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"Repo {repo_id!r} already exists")
            repo = self._new_repo(repo_type, repo_id, private=private, author=repo_id.split("/")[0])
            if files:
                return self.add_commit(repo_id, files, message=message, repo_type=repo_type)
            return repo.refs["main"]

    def add_commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        revision: str = "main",
        message: str = "Update files",
        delete: Iterable[str] = (),
        repo_type: str = "model",
    ) -> str:
        """Commit `files` (added/overwritten) and `delete` (removed) on a branch directly; return the new sha."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            snapshot = dict(repo.commits[repo.refs[revision]].files)
            for path in delete:
                snapshot.pop(path, None)
            snapshot.update({_validate_path(p): bytes(d) for p, d in files.items()})
            return self._add_commit(repo, revision, snapshot, title=message, message="", author=repo.author).sha

    def _new_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str) -> _Repo:
        repo = _Repo(repo_id=repo_id, repo_type=repo_type, private=private, author=author, created_at=_now_iso())
        self._repos[(repo_type, repo_id)] = repo
        initial = {".gitattributes": _DEFAULT_GITATTRIBUTES} if self._initial_gitattributes else {}
        self._add_commit(repo, "main", initial, title="initial commit", message="", author=author, parent=None)
        return repo

    def _add_commit(
        self,
        repo: _Repo,
        ref: str,
        files: dict[str, bytes],
        *,
        title: str,
        message: str,
        author: str,
        parent: str | None = "",
    ) -> Commit:
        """Append a commit on `ref` (parent defaults to the ref's current head)."""
        parent_sha = repo.refs.get(ref) if parent == "" else parent
        seed = json.dumps(
            [
                repo.repo_id,
                parent_sha,
                title,
                sorted((p, git_blob_sha(d)) for p, d in files.items()),
                next(self._counter),
            ]
        )
        commit = Commit(
            sha=hashlib.sha1(seed.encode()).hexdigest(),
            parent=parent_sha,
            title=title,
            message=message,
            author=author,
            created_at=_now_iso(),
            files=MappingProxyType(dict(files)),
        )
        repo.commits[commit.sha] = commit
        repo.refs[ref] = commit.sha
        return commit

    def _open_pr(
        self, repo: _Repo, title: str, description: str, author: str, base: str, is_pull_request: bool = True
    ) -> PullRequest:
        num = max(repo.discussions, default=0) + 1
        pr = PullRequest(num, title, description, author, _now_iso(), base, is_pull_request)
        repo.discussions[num] = pr
        return pr
