"""A small OpenADR 3.1 VTN for tests, written from the OpenAPI document (openadr3-3.1.1.yaml).

Real HTTP on 127.0.0.1 (``http.server`` in a thread). It implements what a VEN uses:

- ``GET /auth/server`` (tokenURL) and ``POST /auth/token`` (client credentials, form body; tokens
  expire after ``token_lifetime_s``; :meth:`TestVTN.expire_tokens` revokes every token at once);
- ``GET /programs``, ``GET /events`` (``programID``, ``targets``, ``skip``, ``limit``), ``GET /events/{id}``;
- ``GET/POST /vens`` (``venName``), ``GET/POST /resources`` (``venID``);
- ``GET/POST /subscriptions``, ``DELETE /subscriptions/{id}``; on creation the callback URL must
  answer the ``?echo=`` challenge; notifications are POSTed with the subscription's bearer token;
- ``GET/POST /reports``.

Object privacy per the Definition: VEN-created objects carry the token's clientID and are listed
only for it; programs and events with targets are visible only when the request's targets, the
targets granted to the VEN (its ven and resource objects) and the object's targets intersect.
Required fields are checked (400 with a ``problem`` body), unknown paths give 404.

Business logic (the utility) acts in-process: :meth:`create_program`, :meth:`create_event`,
:meth:`update_event`, :meth:`delete_event`, :meth:`grant` — each notifies subscribers before it
returns.

Strict where the spec is clear, so it cannot hide a VEN's faults:

- it answers only statuses the OpenAPI document declares for the operation (an undeclared one is
  recorded in ``undeclared`` and the tests assert it stays empty); :meth:`fail_next` refuses to
  inject an undeclared status;
- POST /subscriptions refuses an ``http://`` callback URL with 400 (Definition: "The VTN MUST
  validate that an HTTPS schema is used for the callback URL").

Fault injection (documented, for the VEN's fault tests): :meth:`fail_next` (n answers with a
declared status, or 0 = connection dropped), ``delay_s`` (every answer waits), :meth:`expire_tokens`,
``subscriptions_supported`` (False: 403 on POST /subscriptions), ``ignore_skip`` (every page starts
at 0, as a VTN that ignores ``skip``), ``allow_http_callbacks`` (accept http:// callbacks: only to show
that the VEN refuses to use them), ``raw_events`` (events served exactly as given, valid or not:
:meth:`put_raw_event`). ``public_url``: the address the VEN is given (a validating proxy in front).
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests

from openadr_proxy import declared_statuses, load_spec, rest_server


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")



class TestVTN:
    __test__ = False  # not a pytest class

    def __init__(self, clients: dict[str, str] | None = None, token_lifetime_s: float = 3600.0,
                 ssl_context: Any = None, version: str = "3.1") -> None:
        self.callback_verify: bool | str = True  # TLS verification of webhook callbacks (CA path for tests)
        self.version = version  # "3.0": 3.0.1 paths and schemas (valuesMap targets, /vens/{id}/resources)
        self.clients = clients or {"ven-client": "ven-secret"}
        self.ssl_context = ssl_context  # an ssl.SSLContext: serve HTTPS
        self.token_lifetime_s = token_lifetime_s
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (client id, expiry monotonic)
        self.programs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.vens: dict[str, dict[str, Any]] = {}
        self.resources: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.reports: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every answer
        self.notifications: list[tuple[str, int]] = []  # (callback url, status)
        self.token_requests = 0
        self.delay_s = 0.0
        self.subscriptions_supported = True
        self.vens_may_create = True
        self.ignore_skip = False
        self.allow_http_callbacks = False
        self.public_url: str | None = None  # e.g. a validating proxy in front of this VTN
        self.undeclared: list[str] = []  # answers with a status the spec does not declare (must stay empty)
        self._faults: list[tuple[int, str | None]] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> TestVTN:
        self._server = rest_server(self._handle)
        if self.ssl_context is not None:
            self._server.socket = self.ssl_context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="test-vtn")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        """Where VENs reach this VTN (``public_url`` when a proxy is in front)."""
        return self.public_url or self.direct_url

    @property
    def direct_url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------------ faults

    def fail_next(self, count: int, status: int = 503, path_prefix: str | None = None) -> None:
        """The next ``count`` requests (matching ``path_prefix``) get ``status`` (0: connection dropped).
        Only statuses the spec declares for some operation under ``path_prefix`` are allowed."""
        if status != 0:
            spec = load_spec("3.0.1" if self.version == "3.0" else "3.1.1")
            allowed = {int(code) for template, ops in spec["paths"].items()
                       if path_prefix is None or template.startswith(path_prefix)
                       for name, op in ops.items() if name != "parameters" for code in op["responses"]}
            assert status in allowed, f"status {status}: the spec declares only {sorted(allowed)} here"
        with self._lock:
            self._faults.extend([(status, path_prefix)] * count)

    def recover(self) -> None:
        """Drop every fault still queued."""
        with self._lock:
            self._faults.clear()

    def expire_tokens(self) -> None:
        """Revoke every token now (the VEN must fetch a new one on its next 401)."""
        with self._lock:
            self.tokens.clear()

    # ------------------------------------------------------------------ business logic (in process)

    def _meta(self, object_type: str, prefix: str) -> dict[str, Any]:
        now = _now_iso()
        return {"id": f"{prefix}-{next(self._ids)}", "createdDateTime": now, "modificationDateTime": now,
                "objectType": object_type}

    def create_program(self, program_name: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            program = {**self._meta("PROGRAM", "program"), "programName": program_name, **fields}
            self.programs[program["id"]] = program
        self._notify("PROGRAM", "CREATE", program)
        return program

    def create_event(self, body: dict[str, Any]) -> dict[str, Any]:
        assert body.get("programID") in self.programs, "programID: unknown"
        with self._lock:
            event = {**self._meta("EVENT", "event"), **body}
            self.events[event["id"]] = event
        self._notify("EVENT", "CREATE", event)
        return event

    def put_raw_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Serve ``event`` exactly as given (fault injection: spec-valid but unusual, or invalid)."""
        with self._lock:
            self.events[str(event.get("id"))] = event
        return event

    def update_event(self, event_id: str, **changes: Any) -> dict[str, Any]:
        with self._lock:
            event = {**self.events[event_id], **changes, "modificationDateTime": _now_iso()}
            self.events[event_id] = event
        self._notify("EVENT", "UPDATE", event)
        return event

    def delete_event(self, event_id: str) -> dict[str, Any]:
        with self._lock:
            event = self.events.pop(event_id)
        self._notify("EVENT", "DELETE", event)
        return event

    def grant(self, ven_name: str, targets: list[str]) -> None:
        """BL grants targets to a ven object (only BL may write ven targets)."""
        with self._lock:
            for ven in self.vens.values():
                if ven["venName"] == ven_name:
                    ven["targets"] = sorted(set(ven.get("targets") or []) | set(targets))

    def reports_for(self, event_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.reports.values() if r["eventID"] == event_id]

    # ------------------------------------------------------------------ notifications

    def _notify(self, object_type: str, operation: str, obj: dict[str, Any]) -> None:
        with self._lock:
            subscriptions = list(self.subscriptions.values())
        for sub in subscriptions:
            if obj.get("programID") is not None and sub.get("programID") not in (None, obj.get("programID")):
                continue
            if object_type == "EVENT" and not self._visible(obj, sub.get("targets"), sub["clientID"]):
                continue
            for op in sub["objectOperations"]:
                if object_type in op["objects"] and operation in op["operations"]:
                    headers = {"Content-Type": "application/json"}
                    if op.get("bearerToken"):
                        headers["Authorization"] = f"Bearer {op['bearerToken']}"
                    body = {"objectType": object_type, "operation": operation, "object": obj}
                    try:
                        status = requests.post(op["callbackUrl"], data=json.dumps(body), headers=headers,
                                               timeout=10, verify=self.callback_verify).status_code
                    except requests.RequestException:
                        status = 0
                    self.notifications.append((op["callbackUrl"], status))

    # ------------------------------------------------------------------ privacy

    def _granted(self, client_id: str) -> set[str] | None:
        """Targets granted to the client's ven (and resources); None if it has no ven object."""
        vens = [v for v in self.vens.values() if v.get("clientID") == client_id]
        if not vens:
            return None
        granted: set[str] = set()
        for ven in vens:
            granted.update(ven.get("targets") or [])
            for resource in self.resources.values():
                if resource["venID"] == ven["id"]:
                    granted.update(resource.get("targets") or [])
        return granted

    def _visible(self, obj: dict[str, Any], request_targets: list[str] | None, client_id: str) -> bool:
        if self.version == "3.0":
            return True  # 3.0.1 has no target granting; VENs filter by the valuesMap targets themselves
        raw_targets = obj.get("targets")
        if not isinstance(raw_targets, list) or not raw_targets:
            return True  # no targets, or a raw (invalid) event served as given
        targets = {t for t in raw_targets if isinstance(t, str)}
        granted = self._granted(client_id)
        if granted is None:
            return False
        return bool(targets & granted & set(request_targets or []))

    # ------------------------------------------------------------------ HTTP

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        path, query = url.path, parse_qs(url.query)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            fault = next((f for f in self._faults if f[1] is None or path.startswith(f[1])), None)
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None:
            if fault[0] == 0:
                handler.close_connection = True
                handler.connection.close()
                self.requests.append((method, path, 0))
                return
            self._send(handler, method, path, fault[0], {"title": "injected fault", "status": fault[0]})
            return
        try:
            status, body = self._route(handler, method, path, query, raw)
        except _Problem as problem:
            status, body = problem.status, {"title": problem.title, "status": problem.status,
                                            "detail": problem.detail}
        self._send(handler, method, path, status, body)

    def _send(self, handler: BaseHTTPRequestHandler, method: str, path: str, status: int, body: Any) -> None:
        self.requests.append((method, path, status))
        spec = load_spec("3.0.1" if self.version == "3.0" else "3.1.1")
        declared = declared_statuses(spec, method, path)
        if declared and status not in declared:
            self.undeclared.append(f"{method} {path}: {status} (declared {sorted(declared)})")
        data = b"" if body is None else json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up waiting (timeout tests): the request was still processed
            handler.close_connection = True

    def _client(self, handler: BaseHTTPRequestHandler) -> str:
        auth = handler.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self._lock:
            held = self.tokens.get(token)
            if held is None or held[1] <= time.monotonic():
                raise _Problem(401, "Unauthorized", "missing, unknown or expired bearer token")
            return held[0]

    def _route(self, handler: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, list[str]],
               raw: bytes) -> tuple[int, Any]:
        if path == "/auth/server" and method == "GET" and self.version != "3.0":  # 3.1 only
            return 200, {"tokenURL": f"{self.url}/auth/token"}
        if path == "/auth/token" and method == "POST":
            return self._token(handler, raw)
        client = self._client(handler)
        body = _json(raw) if method in ("POST", "PUT") else None
        parts = [p for p in path.split("/") if p]
        collection = parts[0] if parts else ""
        object_id = parts[1] if len(parts) > 1 else None
        with self._lock:
            if collection == "programs" and method == "GET" and object_id is None:
                items = [p for p in self.programs.values() if self._visible(p, query.get("targets"), client)]
                return 200, _page(items, query, self.ignore_skip)
            if collection == "events" and method == "GET":
                if object_id is not None:
                    event = self.events.get(object_id)
                    if event is None or not self._visible(event, query.get("targets"), client):
                        raise _Problem(404, "Not Found", f"event {object_id}")
                    return 200, event
                items = [e for e in self.events.values() if self._visible(e, query.get("targets"), client)
                         and ("programID" not in query or e.get("programID") == query["programID"][0])]
                return 200, _page(items, query, self.ignore_skip)
            if self.version == "3.0" and collection == "vens" and len(parts) == 3 and parts[2] == "resources":
                ven = self.vens.get(parts[1])
                if ven is None or ven["clientID"] != client:
                    raise _Problem(404, "Not Found", f"ven {parts[1]}")
                if method == "GET":
                    return 200, _page([r for r in self.resources.values() if r["venID"] == ven["id"]], query)
                if method == "POST":
                    _require(body, "resourceName")
                    resource = {**self._meta("RESOURCE", "resource"), "resourceName": body["resourceName"],
                                "venID": ven["id"], "clientID": client, "targets": []}
                    self.resources[resource["id"]] = resource
                    return 201, resource
            if collection == "resources" and self.version == "3.0":
                raise _Problem(404, "Not Found", "3.0.1 has resources under /vens/{venID}/resources")
            if collection == "vens" and object_id is None:
                if method == "GET":
                    items = [v for v in self.vens.values() if v["clientID"] == client
                             and ("venName" not in query or v["venName"] == query["venName"][0])]
                    return 200, _page(items, query)
                if method == "POST":
                    _require(body, *(("venName",) if self.version == "3.0" else ("objectType", "venName")))
                    if self.version != "3.0" and body["objectType"] != "VEN_VEN_REQUEST":
                        raise _Problem(400, "Bad Request", "objectType: VEN_VEN_REQUEST expected from a VEN")
                    if not self.vens_may_create:
                        raise _Problem(403, "Forbidden", "VENs may not create ven objects on this VTN")
                    if any(v["venName"] == body["venName"] for v in self.vens.values()):
                        raise _Problem(409, "Conflict", f"venName {body['venName']} exists")
                    ven = {**self._meta("VEN", "ven"), "venName": body["venName"], "clientID": client,
                           "attributes": body.get("attributes"), "targets": []}
                    self.vens[ven["id"]] = ven
                    return 201, ven
            if collection == "resources" and object_id is None:
                if method == "GET":
                    items = [r for r in self.resources.values() if r["clientID"] == client
                             and ("venID" not in query or r["venID"] == query["venID"][0])]
                    return 200, _page(items, query)
                if method == "POST":
                    _require(body, "objectType", "resourceName", "venID")
                    ven = self.vens.get(body["venID"])
                    if ven is None or ven["clientID"] != client:
                        raise _Problem(400, "Bad Request", f"venID {body['venID']}: not this client's ven")
                    resource = {**self._meta("RESOURCE", "resource"), "resourceName": body["resourceName"],
                                "venID": body["venID"], "clientID": client, "targets": []}
                    self.resources[resource["id"]] = resource
                    return 201, resource
            if collection == "subscriptions":
                if method == "GET" and object_id is None:
                    items = [s for s in self.subscriptions.values() if s["clientID"] == client
                             and ("clientName" not in query or s["clientName"] == query["clientName"][0])]
                    return 200, _page(items, query)
                if method == "POST" and object_id is None:
                    if not self.subscriptions_supported:
                        raise _Problem(403, "Forbidden", "this VTN takes no subscriptions from VENs")
                    _require(body, "clientName", "objectOperations")
                    for op in body["objectOperations"]:
                        _require(op, "objects", "operations", "callbackUrl")
                        if not str(op["callbackUrl"]).startswith("https://") and not self.allow_http_callbacks:
                            raise _Problem(400, "Bad Request", "callbackUrl: HTTPS is required (Definition 3.1.1)")
                        self._challenge(op["callbackUrl"])
                    sub = {**self._meta("SUBSCRIPTION", "subscription"), **body, "clientID": client}
                    self.subscriptions[sub["id"]] = sub
                    return 201, sub
                if method == "DELETE" and object_id is not None:
                    sub = self.subscriptions.get(object_id)
                    if sub is None or sub["clientID"] != client:
                        raise _Problem(404, "Not Found", f"subscription {object_id}")
                    return 200, self.subscriptions.pop(object_id)
            if collection == "reports" and object_id is None:
                if method == "GET":
                    items = [r for r in self.reports.values() if r["clientID"] == client
                             and all(k not in query or r.get(k) == query[k][0]
                                     for k in ("eventID", "clientName", "programID"))]
                    return 200, _page(items, query)
                if method == "POST":
                    _require(body, "eventID", "clientName", "resources",
                             *(("programID",) if self.version == "3.0" else ()))
                    if body["eventID"] not in self.events:
                        raise _Problem(400, "Bad Request", f"eventID {body['eventID']}: unknown")
                    for resource in body["resources"]:
                        _require(resource, "resourceName", "intervals")
                        for interval in resource["intervals"]:
                            _require(interval, "id", "payloads")
                            if not isinstance(interval["id"], int):
                                raise _Problem(400, "Bad Request", "interval id: integer expected")
                            for payload in interval["payloads"]:
                                _require(payload, "type", "values")
                    report = {**self._meta("REPORT", "report"), **body, "clientID": client}
                    self.reports[report["id"]] = report
                    return 201, report
        raise _Problem(404, "Not Found", f"{method} {path}")

    def _token(self, handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, Any]:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        self.token_requests += 1
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        client, secret = form.get("client_id"), form.get("client_secret")
        if client not in self.clients or self.clients[client] != secret:
            return 401, {"error": "invalid_client", "error_description": "unknown client id or wrong secret"}
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = (client, time.monotonic() + self.token_lifetime_s)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": int(self.token_lifetime_s)}

    def _challenge(self, callback_url: str) -> None:
        echo = secrets.token_urlsafe(12)
        try:
            answer = requests.get(callback_url, params={"echo": echo}, timeout=10, verify=self.callback_verify)
        except requests.RequestException as exc:
            raise _Problem(400, "Bad Request", f"callbackUrl did not answer the challenge: {exc}") from exc
        if answer.status_code != 200 or answer.text != echo:
            raise _Problem(400, "Bad Request", "callbackUrl did not echo the challenge")


class _Problem(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise _Problem(400, "Bad Request", "body is not JSON") from exc


def _require(body: Any, *names: str) -> None:
    if not isinstance(body, dict):
        raise _Problem(400, "Bad Request", "body: object expected")
    missing = [n for n in names if n not in body]
    if missing:
        raise _Problem(400, "Bad Request", f"missing required: {', '.join(missing)}")


def _page(items: list[dict[str, Any]], query: dict[str, list[str]], ignore_skip: bool = False
          ) -> list[dict[str, Any]]:
    skip = 0 if ignore_skip else int(query.get("skip", ["0"])[0])
    limit = int(query.get("limit", ["50"])[0])
    if limit > 50 or limit < 0 or skip < 0:
        raise _Problem(400, "Bad Request", "limit: 0..50, skip: >= 0")
    return items[skip:skip + limit]
