"""A minimal in-memory Hugging Face Hub API on 127.0.0.1 for offline tests (stdlib only).

Covers what `huggingface_hub` and `transformers` use to push and pull model repositories: repo
creation, card metadata validation (YAML parsing only), pre-upload (every file answered "regular", so
no LFS/Xet), NDJSON commits with base64 content, model info, file listing and `resolve` downloads with
the commit and ETag headers.
Not covered: authentication (any token passes), LFS/Xet storage, pull requests, branches other than
main, datasets, running spaces (a space's files are stored as a model's), rate limits, gated repos.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class HubState:
    """Repositories: repo_id -> list of commits, each {"oid", "files": {path: bytes}}."""

    def __init__(self) -> None:
        self.repos: dict[str, list[dict]] = {}
        self.lock = threading.Lock()

    def files(self, repo_id: str, revision: str = "main") -> tuple[str, dict[str, bytes]] | None:
        commits = self.repos.get(repo_id)
        if not commits:
            return None
        if revision == "main":
            return commits[-1]["oid"], commits[-1]["files"]
        for commit in commits:
            if commit["oid"] == revision:
                return commit["oid"], commit["files"]
        return None


class HubHandler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # --- plumbing -------------------------------------------------------------------------------------
    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False
    ) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _not_found(self, code: str = "RepoNotFound", head: bool = False) -> None:
        self._send(404, b'{"error": "not found"}', {"X-Error-Code": code}, head=head)

    # --- routes ---------------------------------------------------------------------------------------
    def do_POST(self) -> None:
        path = unquote(self.path.split("?")[0])
        body = self._body()
        if path == "/api/repos/create":
            request = json.loads(body or b"{}")
            repo_id = (
                f"{request['organization']}/{request['name']}"
                if request.get("organization")
                else request["name"]
            )
            with self.state.lock:
                if repo_id in self.state.repos:
                    return self._json(
                        409, {"error": "You already created this model repo", "url": f"/{repo_id}"}
                    )
                self.state.repos[repo_id] = [{"oid": hashlib.sha1(repo_id.encode()).hexdigest(), "files": {}}]
            return self._json(200, {"url": f"{self.server_url}/{repo_id}", "name": repo_id, "id": repo_id})
        if path == "/api/validate-yaml":
            return self._validate_yaml(body)
        match = re.fullmatch(r"/api/(?:models|spaces)/(.+?)/preupload/([^/]+)", path)
        if match:
            files = json.loads(body)["files"]
            answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self._json(200, {"files": answer})
        match = re.fullmatch(r"/api/(?:models|spaces)/(.+?)/commit/([^/]+)", path)
        if match:
            return self._commit(match.group(1), body)
        return self._not_found("EndpointNotFound")

    def _validate_yaml(self, body: bytes) -> None:
        """Parses the card metadata (the real Hub also checks it against its schemas)."""
        import yaml

        content = json.loads(body)["content"]
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            return self._json(400, {"errors": [{"message": str(error)}], "warnings": []})
        if not isinstance(metadata, dict):
            return self._json(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
        return self._json(200, {"errors": [], "warnings": []})

    def _commit(self, repo_id: str, body: bytes) -> None:
        with self.state.lock:
            commits = self.state.repos.get(repo_id)
            if commits is None:
                return self._not_found()
            files = dict(commits[-1]["files"])
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item.get("value", {})
                if item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    files = {
                        p: c
                        for p, c in files.items()
                        if p != value["path"] and not p.startswith(value["path"].rstrip("/") + "/")
                    }
                elif item["key"] == "lfsFile":
                    return self._json(400, {"error": "LFS uploads are not supported by the test Hub"})
            oid = hashlib.sha1(
                json.dumps(sorted((p, hashlib.sha1(c).hexdigest()) for p, c in files.items())).encode()
                + str(len(commits)).encode()
            ).hexdigest()
            commits.append({"oid": oid, "files": files})
        return self._json(
            200,
            {
                "commitUrl": f"{self.server_url}/{repo_id}/commit/{oid}",
                "commitOid": oid,
                "pullRequestUrl": None,
            },
        )

    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_GET(self) -> None:
        self._get(head=False)

    def _get(self, head: bool) -> None:
        path = unquote(self.path.split("?")[0])
        match = re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path)
        if match and "/tree/" not in path:
            return self._model_info(match.group(1), match.group(2) or "main")
        match = re.fullmatch(r"/api/models/(.+?)/tree/([^/]+)(?:/(.*))?", path)
        if match:
            return self._tree(match.group(1), match.group(2), match.group(3) or "")
        match = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
        if match:
            return self._resolve(match.group(1), match.group(2), match.group(3), head)
        return self._not_found("EndpointNotFound", head=head)

    def _model_info(self, repo_id: str, revision: str) -> None:
        found = self.state.files(repo_id, revision)
        if found is None:
            return self._not_found()
        oid, files = found
        siblings = [{"rfilename": p, "size": len(c)} for p, c in sorted(files.items())]
        return self._json(
            200,
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": oid,
                "siblings": siblings,
                "private": False,
                "tags": [],
            },
        )

    def _tree(self, repo_id: str, revision: str, folder: str) -> None:
        found = self.state.files(repo_id, revision)
        if found is None:
            return self._not_found()
        _, files = found
        entries = [
            {"type": "file", "path": p, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
            for p, c in sorted(files.items())
            if not folder or p.startswith(folder.rstrip("/") + "/")
        ]
        return self._json(200, entries)

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
        found = self.state.files(repo_id, revision)
        if found is None:
            return self._not_found(head=head)
        oid, files = found
        if filename not in files:
            return self._send(
                404,
                b'{"error": "Entry not found"}',
                {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid},
                head=head,
            )
        content = files[filename]
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": oid,
            "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
        }
        return self._send(200, content, headers, head=head)


class LocalHub:
    """Runs the test Hub in a background thread: `with LocalHub() as hub: hub.url`."""

    def __init__(self) -> None:
        self.state = HubState()
        handler = type("BoundHubHandler", (HubHandler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        handler.server_url = self.url
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
