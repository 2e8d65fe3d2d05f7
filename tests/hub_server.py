"""A loopback Hugging Face Hub for tests: the HTTP API that huggingface_hub 2.x and transformers 5.x speak.

Stdlib only (`http.server`), repos held in memory. It answers what the real clients send for
`create_repo`, `upload_folder` / `create_commit`, `snapshot_download`, `hf_hub_download`,
`from_pretrained(..., trust_remote_code=True)`, `pipeline(...)`, `ModelCard.load` and Space variables,
for models, datasets and Spaces. Every file is committed as a "regular" git blob (preupload never asks
for LFS or xet), so no other service is needed.

It is strict where a real Hub is strict, so that tests mean something:
- writes need `Authorization: Bearer <token>` (401 otherwise); a wrong token is refused on reads too;
- a commit goes to an existing branch of an existing repo, its header must come first, `parentCommit`
  (if given) must be the branch head, deleted files must exist, paths must be clean; a commit is
  applied atomically or not at all;
- resolve answers 404 with `X-Error-Code: EntryNotFound` / `RevisionNotFound` / `RepoNotFound`.

For tests: `HubServer.requests` records every (method, path); `fail_commit(n, mode)` makes the n-th commit
request fail with a 500 or a dropped connection before anything is applied.

    with HubServer(token="hf_test") as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test", "HF_HUB_DISABLE_XET": "1"}
        ...  # run the real clients in a subprocess with `env` (HF_ENDPOINT is read at import time)
        assert hub.head("me/model") == sha

Standalone: `python tests/hub_server.py --port 8000 --token hf_test` (then `HF_ENDPOINT=http://127.0.0.1:8000`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
API_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}  # /api/{plural}/...
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # /{prefix}{repo_id}/resolve/...
SPACE_SDKS = ("gradio", "docker", "static", "streamlit")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}")  # the Hub's rule for a namespace or a repo name
SHA_RE = re.compile(r"[0-9a-f]{40}")
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"  # the real Hub's message for a bad token

# What the real Hub puts in a new repo's initial commit (shortened: the LFS patterns do not matter here,
# because this server stores every file as a regular blob).
GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.onnx filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    b"*tfevents* filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's `oid` and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _valid_name(name: str) -> bool:
    return (
        bool(NAME_RE.fullmatch(name))
        and "--" not in name
        and ".." not in name
        and not name.endswith((".", "-", ".git"))
    )


def _valid_path(path: str) -> bool:
    """A file path a commit may write: relative, no empty / `.` / `..` segments, nothing under `.git/`."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\0" in path:
        return False
    parts = path.split("/")
    return all(p not in ("", ".", "..") for p in parts) and parts[0] != ".git"


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, bytes]  # the full tree at this commit: path -> content


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit oid
    variables: dict[str, dict] = field(default_factory=dict)  # Space variables: key -> {value, description, ...}

    def resolve(self, revision: str) -> str | None:
        """A branch name or a full 40-hex commit oid -> commit oid (None when unknown)."""
        if revision in self.branches:
            return self.branches[revision]
        if SHA_RE.fullmatch(revision) and revision in self.commits:
            return revision
        return None


class HttpError(Exception):
    """An error answer: status, JSON `{"error": message}`, optional X-Error-Code."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _DropConnection(Exception):
    """Raised to close the socket without any answer (fault injection)."""


class HubServer:
    """An in-memory Hub on 127.0.0.1, served from a background thread.

    Args:
        token: the one token accepted (`Authorization: Bearer <token>`); writes without it answer 401.
            `None` turns authentication off.
        host, port: where to listen; port 0 picks a free port.
        user: the namespace of the token's owner (used when create_repo gives no organization).
        fail_commits: {n: "500" | "drop"}: make the n-th commit request (1-based, counted from start) fail.
    """

    def __init__(
        self,
        token: str | None = "hf_test",
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "test-user",
        fail_commits: dict[int, str] | None = None,
    ):
        self.token = token
        self.user = user
        self._host, self._port = host, port
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._requests: list[tuple[str, str]] = []
        self._commit_requests = 0
        self._failures: dict[int, str] = {}
        self._counter = 0  # makes every commit oid unique, even for identical trees
        for n, mode in (fail_commits or {}).items():
            self.fail_commit(n, mode)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        handler = type("BoundHubHandler", (_HubHandler,), {"hub": self})
        self._httpd = ThreadingHTTPServer((self._host, self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="HubServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint to put in HF_ENDPOINT, e.g. http://127.0.0.1:41234 (no trailing slash)."""
        if self._httpd is None:
            raise RuntimeError("HubServer is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- test helpers ------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request received so far, in order, as (method, path without query string)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def commit_requests(self) -> int:
        """How many commit requests arrived so far (failed and refused ones included)."""
        with self._lock:
            return self._commit_requests

    def fail_commit(self, nth: int, mode: str = "500") -> None:
        """Make the nth commit request since start fail before anything is applied.

        mode "500": answer 500 Internal Server Error; "drop": read the request, then close the connection unanswered.
        """
        if mode not in ("500", "drop"):
            raise ValueError(f"mode must be '500' or 'drop', got {mode!r}")
        with self._lock:
            self._failures[int(nth)] = mode

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def head(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> str:
        """The commit oid a branch points to."""
        with self._lock:
            return self._repo(repo_type, repo_id).branches[branch]

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[Commit]:
        """The history of a revision, newest first (the initial commit last)."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            oid = repo.resolve(revision)
            history = []
            while oid is not None:
                history.append(repo.commits[oid])
                oid = repo.commits[oid].parent
            return history

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The files of a repo at a revision: path -> content."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            oid = repo.resolve(revision)
            if oid is None:
                raise KeyError(f"unknown revision {revision!r} of {repo_type} {repo_id}")
            return dict(repo.commits[oid].files)

    def variables(self, repo_id: str) -> dict[str, str]:
        """A Space's variables: key -> value."""
        with self._lock:
            return {k: v["value"] for k, v in self._repo("space", repo_id).variables.items()}

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id!r}") from None

    # -- state changes (called by the handler, under the lock) -------------------------------------------------

    def _new_commit(self, repo: Repo, parent: str | None, title: str, message: str, files: dict[str, bytes]) -> str:
        self._counter += 1
        digest = hashlib.sha1()
        for part in (repo.repo_type, repo.repo_id, parent or "", title, message, str(self._counter), str(time.time())):
            digest.update(part.encode() + b"\0")
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_oid(files[path]).encode())
        oid = digest.hexdigest()
        repo.commits[oid] = Commit(oid, parent, title, message, _now(), dict(files))
        return oid

    def _create_repo(self, repo_type: str, repo_id: str, private: bool, sdk: str | None) -> Repo:
        repo = Repo(repo_type, repo_id, private, sdk, _now())
        files = {".gitattributes": GITATTRIBUTES}
        if repo_type == "space":  # the Hub writes a README with the Space settings into a new Space
            name = repo_id.split("/")[1]
            files["README.md"] = (
                f"---\ntitle: {name}\nemoji: 🚀\ncolorFrom: blue\ncolorTo: gray\nsdk: {sdk}\n"
                f"app_file: app.py\npinned: false\n---\n"
            ).encode()
        repo.branches["main"] = self._new_commit(repo, None, "initial commit", "", files)
        self._repos[(repo_type, repo_id)] = repo
        return repo


class _HubHandler(BaseHTTPRequestHandler):
    """Routes one request to a method; every answer has a Content-Length (HTTP/1.1 keep-alive)."""

    hub: HubServer  # set on the bound subclass
    protocol_version = "HTTP/1.1"
    server_version = "HubServer/1.0"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature; silence per-request stderr lines
        pass

    # -- plumbing ----------------------------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        with self.hub._lock:
            self.hub._requests.append((self.command, split.path))
        self.query = parse_qs(split.query)
        self.body = self._read_body()  # always read it, so that the connection can be reused
        try:
            self._route(split.path)
        except _DropConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except HttpError as e:
            headers = dict(e.headers)
            headers["X-Error-Message"] = e.message
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json({"error": e.message}, status=e.status, headers=headers)
        except Exception as e:  # a bug in this server: say so, as a real 500 would
            self._json({"error": f"HubServer internal error: {type(e).__name__}: {e}"}, status=500)

    def _send(self, status: int, body: bytes, headers: dict | None = None, content_type: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _body_json(self):
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise HttpError(400, "request body is not valid JSON") from None

    def _base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    # -- auth --------------------------------------------------------------------------------------------------

    def _auth(self) -> str:
        """'ok' (the configured token, or auth off), 'anonymous' (no token) or 'invalid' (a wrong token)."""
        header = self.headers.get("Authorization")
        if self.hub.token is None:
            return "ok"
        if not header:
            return "anonymous"
        scheme, _, value = header.partition(" ")
        return "ok" if scheme.lower() == "bearer" and value.strip() == self.hub.token else "invalid"

    def _check_read(self) -> bool:
        """Refuse a wrong token (as the Hub does, even on reads); return whether the caller is authenticated."""
        status = self._auth()
        if status == "invalid":
            raise HttpError(401, INVALID_CREDENTIALS)
        return status == "ok"

    def _check_write(self) -> None:
        status = self._auth()
        if status == "invalid":
            raise HttpError(401, INVALID_CREDENTIALS)
        if status == "anonymous":
            raise HttpError(401, "You must be authenticated to perform this action: pass a token with write access")

    def _get_repo(self, repo_type: str, repo_id: str, authenticated: bool) -> Repo:
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authenticated):
            raise HttpError(404, f"{repo_type.capitalize()} repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _get_revision(self, repo: Repo, revision: str) -> str:
        oid = repo.resolve(revision)
        if oid is None:
            raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return oid

    # -- routing -----------------------------------------------------------------------------------------------

    def _route(self, path: str) -> None:
        raw = path.split("/")[1:]  # keep quoted segments whole: revisions are quoted with safe=""
        parts = [unquote(p) for p in raw]
        method = self.command
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo()
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo()
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if rest == ["agent-harnesses"] and method == "GET":
                # huggingface_hub fetches this registry (once a day, cached under HF_HOME) to build its user agent
                return self._json({"standardEnvVars": [], "harnesses": {}})
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml()
            if len(rest) >= 3 and rest[0] in API_PLURAL:
                repo_type, repo_id, tail = API_PLURAL[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:]
                return self._repo_api(method, repo_type, repo_id, tail)
        else:
            repo_type = "model"
            if parts and parts[0] in ("datasets", "spaces"):
                repo_type, parts = API_PLURAL[parts[0]], parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise HttpError(404, f"HubServer does not implement {method} {path}")

    def _repo_api(self, method: str, repo_type: str, repo_id: str, tail: list[str]) -> None:
        if not tail and method == "GET":
            return self._repo_info(repo_type, repo_id, "main")
        if len(tail) == 2 and tail[0] == "revision" and method == "GET":
            return self._repo_info(repo_type, repo_id, tail[1])
        if len(tail) == 2 and tail[0] == "preupload" and method == "POST":
            return self._preupload(repo_type, repo_id, tail[1])
        if len(tail) == 2 and tail[0] == "commit" and method == "POST":
            return self._commit(repo_type, repo_id, tail[1])
        if len(tail) >= 2 and tail[0] == "tree" and method == "GET":
            return self._tree(repo_type, repo_id, tail[1], "/".join(tail[2:]))
        if len(tail) == 2 and tail[0] == "paths-info" and method == "POST":
            return self._paths_info(repo_type, repo_id, tail[1])
        if len(tail) == 2 and tail[0] == "commits" and method == "GET":
            return self._list_commits(repo_type, repo_id, tail[1])
        if tail == ["refs"] and method == "GET":
            return self._refs(repo_type, repo_id)
        if len(tail) == 2 and tail[0] == "branch" and method == "POST":
            return self._create_branch(repo_type, repo_id, tail[1])
        if tail == ["variables"] and repo_type == "space" and method in ("GET", "POST", "DELETE"):
            return self._variables(repo_id, method)
        raise HttpError(404, f"HubServer does not implement {method} /api/{repo_type}s/{repo_id}/{'/'.join(tail)}")

    # -- endpoints ---------------------------------------------------------------------------------------------

    def _whoami(self) -> None:
        if self._auth() != "ok":
            raise HttpError(401, INVALID_CREDENTIALS)
        self._json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": self.hub.user,
                "fullname": self.hub.user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _create_repo(self) -> None:
        self._check_write()
        payload = self._body_json()
        if not isinstance(payload, dict):
            raise HttpError(400, "expected a JSON object")
        name, namespace = payload.get("name"), payload.get("organization") or self.hub.user
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HttpError(400, f"Invalid repo type: {repo_type}")
        if not isinstance(name, str) or not _valid_name(name) or not _valid_name(namespace):
            raise HttpError(400, f"Invalid repo name: {namespace}/{name}")
        sdk = payload.get("sdk")
        if repo_type == "space" and sdk not in SPACE_SDKS:
            raise HttpError(400, f"A Space needs an sdk, one of {', '.join(SPACE_SDKS)}; got {sdk!r}")
        repo_id = f"{namespace}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = f"{self._base_url()}/{URL_PREFIX[repo_type]}{repo_id}"
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub._repos:
                # The real Hub answers 409 with the url; create_repo(exist_ok=True) relies on the status only.
                self._json({"error": f"You already created this {repo_type} repo", "url": url}, status=409)
                return
            self.hub._create_repo(repo_type, repo_id, private, sdk if repo_type == "space" else None)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        self._check_write()
        payload = self._body_json() or {}
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload.get('name')}"
        with self.hub._lock:
            if self.hub._repos.pop((repo_type, repo_id), None) is None:
                raise HttpError(404, f"{repo_type.capitalize()} repository not found: {repo_id}", "RepoNotFound")
        self._json({})

    def _validate_yaml(self) -> None:
        self._check_read()
        payload = self._body_json()
        content = payload.get("content") if isinstance(payload, dict) else None
        if not isinstance(content, str):
            raise HttpError(400, "expected {'content': str, 'repoType': str}")
        errors = []
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
        if match:
            try:
                import yaml  # PyYAML comes with huggingface_hub; without it the header is taken as valid

                meta = yaml.safe_load(match.group(1))
                if meta is not None and not isinstance(meta, dict):
                    errors.append({"message": "the YAML header must be a mapping"})
            except ImportError:
                pass
            except Exception as e:  # yaml.YAMLError
                errors.append({"message": f"invalid YAML: {e}"})
        warnings = [] if match else [{"message": "empty or missing yaml metadata in repo card"}]
        self._json({"errors": errors, "warnings": warnings}, status=400 if errors else 200)

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        authenticated = self._check_read()
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, authenticated)
            oid = self._get_revision(repo, revision)
            commit = repo.commits[oid]
            blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
            siblings = []
            for path in sorted(commit.files):
                entry = {"rfilename": path}
                if blobs:
                    entry.update(size=len(commit.files[path]), blobId=git_blob_oid(commit.files[path]))
                siblings.append(entry)
            info = {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
            if repo_type == "model":
                info.update(modelId=repo_id, downloads=0)
            if repo_type == "space":
                info.update(
                    sdk=repo.sdk, runtime={"stage": "NO_APP_FILE" if "app.py" not in commit.files else "BUILDING"}
                )
        self._json(info)

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._check_write()
        payload = self._body_json()
        files = payload.get("files") if isinstance(payload, dict) else None
        if not isinstance(files, list):
            raise HttpError(400, "expected {'files': [{'path', 'sample', 'size'}, ...]}")
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, True)
            head = self._get_revision(repo, revision)
            current = repo.commits[head].files
        answer = []
        for f in files:
            path = f.get("path") if isinstance(f, dict) else None
            if not _valid_path(path) or not isinstance(f.get("size"), int):
                raise HttpError(400, f"invalid preupload entry: {f!r}")
            oid = git_blob_oid(current[path]) if path in current else None
            # "regular" for everything: the content then travels base64 inside the commit request (no LFS, no xet)
            answer.append({"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        self._json({"files": answer, "commitOid": head})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub._lock:
            self.hub._commit_requests += 1
            failure = self.hub._failures.pop(self.hub._commit_requests, None)
        if failure == "drop":
            raise _DropConnection
        if failure == "500":
            raise HttpError(500, "Internal Error - injected by HubServer.fail_commit; nothing was committed")
        self._check_write()
        if self.query.get("create_pr"):
            raise HttpError(400, "HubServer does not implement pull requests (create_pr)")
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/x-ndjson":
            raise HttpError(400, "a commit is sent as application/x-ndjson")
        try:
            lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        except ValueError:
            raise HttpError(400, "commit body is not valid ndjson") from None
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
            raise HttpError(400, "the first line of a commit must be its header")
        header = lines[0].get("value") or {}
        title = header.get("summary")
        if not isinstance(title, str) or not title.strip():
            raise HttpError(400, "the commit summary (title) must not be empty")

        with self.hub._lock:  # validate everything, then apply: all or nothing
            repo = self._get_repo(repo_type, repo_id, True)
            if revision not in repo.branches:
                if SHA_RE.fullmatch(revision) and revision in repo.commits:
                    raise HttpError(400, f"Cannot commit to a commit oid ({revision}): name a branch")
                raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.branches[revision]
            parent = header.get("parentCommit")
            if parent is not None:
                if not isinstance(parent, str) or parent not in repo.commits:
                    raise HttpError(400, f"parentCommit {parent!r} is not a commit of {repo_id}")
                if parent != head:
                    raise HttpError(412, f"parentCommit {parent} is not the head of {revision} ({head})")
            files = dict(repo.commits[head].files)
            for line in lines[1:]:
                key, value = (line.get("key"), line.get("value")) if isinstance(line, dict) else (None, None)
                path = value.get("path") if isinstance(value, dict) else None
                if key == "header":
                    raise HttpError(400, "a commit has exactly one header, on its first line")
                if not _valid_path(path if key != "deletedFolder" else (path or "").rstrip("/")):
                    raise HttpError(400, f"invalid path in commit: {path!r}")
                if key == "file":
                    encoding = value.get("encoding", "utf-8")
                    content = value.get("content")
                    if not isinstance(content, str) or encoding not in ("base64", "utf-8"):
                        raise HttpError(400, f"invalid file entry for {path}")
                    try:
                        files[path] = (
                            base64.b64decode(content, validate=True) if encoding == "base64" else content.encode()
                        )
                    except ValueError:
                        raise HttpError(400, f"invalid base64 content for {path}") from None
                elif key == "deletedFile":
                    if path not in files:
                        raise HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise HttpError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
                elif key == "lfsFile":
                    raise HttpError(422, f"LFS object for {path} not found: this server only takes regular files")
                else:
                    raise HttpError(400, f"unknown commit operation {key!r}")
            oid = self.hub._new_commit(repo, head, title, header.get("description") or "", files)
            repo.branches[revision] = oid
        commit_url = f"{self._base_url()}/{URL_PREFIX[repo_type]}{repo_id}/commit/{oid}"
        self._json({"success": True, "commitOid": oid, "commitUrl": commit_url, "pullRequestUrl": None})

    def _entries(self, files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
        """Tree entries under `prefix` (a folder path, '' for the root), files and folders, sorted by path."""
        base = prefix.rstrip("/") + "/" if prefix else ""
        entries: dict[str, dict] = {}
        for path, content in files.items():
            if not path.startswith(base):
                continue
            parts = path[len(base) :].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = base + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": git_blob_oid(folder.encode()), "size": 0})
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "oid": git_blob_oid(content), "size": len(content)}
        return [{**entry, "path": path} for path, entry in sorted(entries.items())]

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        authenticated = self._check_read()
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, authenticated)
            files = repo.commits[self._get_revision(repo, revision)].files
        entries = self._entries(files, path, recursive)
        if path and not entries:
            raise HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        self._json(entries)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        authenticated = self._check_read()
        form = parse_qs(self.body.decode())
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, authenticated)
            files = repo.commits[self._get_revision(repo, revision)].files
        answer = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in files:
                answer.append(
                    {"type": "file", "path": path, "oid": git_blob_oid(files[path]), "size": len(files[path])}
                )
            elif any(p.startswith(path + "/") for p in files):
                answer.append({"type": "directory", "path": path, "oid": git_blob_oid(path.encode()), "size": 0})
        self._json(answer)

    def _list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        authenticated = self._check_read()
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, authenticated)
            self._get_revision(repo, revision)
            history = self.hub.commits(repo_id, repo_type, revision)
        self._json(
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "authors": [{"user": self.hub.user}],
                }
                for c in history
            ]
        )

    def _refs(self, repo_type: str, repo_id: str) -> None:
        authenticated = self._check_read()
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, authenticated)
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in repo.branches.items()]
        self._json({"branches": branches, "tags": [], "converts": []})

    def _create_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        """HfApi.create_branch: a new branch at `startingPoint` (default main); 409 when it exists."""
        self._check_write()
        start = (self._body_json() or {}).get("startingPoint") or "main"
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, True)
            if branch in repo.branches:
                raise HttpError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = self._get_revision(repo, start)
        self._json({})

    def _variables(self, repo_id: str, method: str) -> None:
        self._check_write()  # reading a Space's variables needs write access on the real Hub too
        payload = self._body_json() if method != "GET" else None
        with self.hub._lock:
            repo = self._get_repo("space", repo_id, True)
            if method == "POST":
                key, value = (payload or {}).get("key"), (payload or {}).get("value")
                if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    raise HttpError(400, f"invalid variable key: {key!r}")
                if not isinstance(value, str):
                    raise HttpError(400, "a variable value is a string")
                repo.variables[key] = {"value": value, "description": payload.get("description"), "updatedAt": _now()}
            elif method == "DELETE":
                repo.variables.pop((payload or {}).get("key"), None)
            answer = {k: dict(v) for k, v in repo.variables.items()}
        self._json(answer)

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        authenticated = self._check_read()
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, authenticated)
            oid = self._get_revision(repo, revision)
            content = repo.commits[oid].files.get(path)
        if content is None:
            # X-Repo-Commit on a 404 lets the client remember that the file does not exist at this commit
            raise HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": oid})
        headers = {"X-Repo-Commit": oid, "ETag": f'"{git_blob_oid(content)}"', "Accept-Ranges": "bytes"}
        status, body = 200, content
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(content) - 1, len(content) - 1)
            if start >= len(content) and len(content) > 0:
                raise HttpError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(content)}"})
            status, body = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        self._send(status, body, headers, content_type="application/octet-stream")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on, 0 = any free port (default: %(default)s)"
    )
    parser.add_argument(
        "--token", default="hf_test", help="the accepted token; '' turns auth off (default: %(default)s)"
    )
    parser.add_argument("--user", default="test-user", help="namespace of the token's owner (default: %(default)s)")
    args = parser.parse_args(argv)
    hub = HubServer(token=args.token or None, host=args.host, port=args.port, user=args.user).start()
    print(
        f"HubServer listening on {hub.url}  (HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1); Ctrl-C stops it", flush=True
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
