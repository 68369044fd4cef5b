"""A validating HTTP proxy between the VEN and a VTN, built from the bundled OpenAPI documents.

Every request is checked against the spec (path template and method declared, query parameters
and JSON or form body against their schemas) and so is every answer (status declared for the
operation, JSON body against the response schema). Violations are collected in ``violations``
(``"REQUEST POST /reports: resources.0.intervals.0.id: 'x' is not of type 'integer'"``); the tests
assert there are none. Real HTTP on 127.0.0.1, ``requests`` upstream.

Why Python rather than Stoplight Prism: Prism's proxy mode needs the ``npm`` install in the test
command and a node process per test module; ``openapi-schema-validator`` (OpenAPI 3.0 schema
dialect: ``nullable``, ``discriminator``) gives the same schema checks in-process in milliseconds.

One documented exemption: the spec cannot be satisfied for ven and resource objects returned by
a VTN (``objectMetadata.objectType`` enum [PROGRAM, EVENT, ...] and ``BlVenRequest.objectType``
enum [BL_VEN_REQUEST] are both required of the same property); responses of those are validated
with the ``BlVenRequest``/``BlResourceRequest`` ``objectType`` constraint removed (the User Guide's
examples use ``VEN``/``RESOURCE``).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests
import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker

SPEC_DIR = Path(__file__).resolve().parent / "openadr3_spec"


@functools.lru_cache(maxsize=4)
def load_spec(version: str = "3.1.1") -> dict[str, Any]:
    """The OpenAPI document of ``version`` (3.1.1 or 3.0.1)."""
    return yaml.safe_load((SPEC_DIR / f"openadr3-{version}.yaml").read_text())


@functools.lru_cache(maxsize=4)
def _response_spec(version: str) -> dict[str, Any]:
    spec = copy.deepcopy(load_spec(version))
    for name in ("BlVenRequest", "BlResourceRequest"):  # see module docstring: the exemption
        schema = spec["components"]["schemas"].get(name)
        if schema is not None:
            schema.get("properties", {}).pop("objectType", None)
            schema["required"] = [r for r in schema.get("required", []) if r != "objectType"]
    return spec


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{[^}]+\}", r"[^/]+", template) + "$")


def operation(spec: dict[str, Any], method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """(template, operation object) for a concrete request path, or None if undeclared."""
    for template, ops in spec["paths"].items():
        if _template_regex(template).match(path) and method.lower() in ops:
            return template, ops[method.lower()]
    return None


def declared_statuses(spec: dict[str, Any], method: str, path: str) -> set[int]:
    found = operation(spec, method, path)
    return set() if found is None else {int(s) for s in found[1]["responses"] if s.isdigit()}


def schema_errors(spec: dict[str, Any], schema: dict[str, Any], instance: Any) -> list[str]:
    """Validation errors of ``instance`` against ``schema`` (refs resolved within ``spec``)."""
    root = {**schema, "components": spec["components"]}
    validator = OAS30Validator(root, format_checker=oas30_format_checker)
    out = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.path))[:5]:
        where = ".".join(str(p) for p in error.absolute_path) or "body"
        out.append(f"{where}: {error.message[:300]}")
    return out


def check_request(spec: dict[str, Any], method: str, path: str, query: dict[str, list[str]],
                  content_type: str, raw: bytes) -> list[str]:
    found = operation(spec, method, path)
    if found is None:
        return [f"{method} {path}: no such operation in the spec"]
    template, op = found
    problems = []
    params = {p["name"]: p for p in op.get("parameters", []) if p.get("in") == "query"}
    for name, values in query.items():
        if name not in params:
            problems.append(f"query {name}: not a declared parameter of {method} {template}")
            continue
        schema = params[name]["schema"]
        value: Any = values if schema.get("type") == "array" else values[0]
        if schema.get("type") == "integer":
            try:
                value = int(values[0])
            except ValueError:
                problems.append(f"query {name}={values[0]!r}: not an integer")
                continue
        problems += [f"query {name}: {e}" for e in schema_errors(spec, schema, value)]
    body_spec = op.get("requestBody")
    if body_spec is not None:
        content = body_spec.get("content", {})
        if "application/json" in content and "json" in content_type:
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                return problems + ["body: not JSON"]
            problems += schema_errors(spec, content["application/json"]["schema"], body)
        elif "application/x-www-form-urlencoded" in content and "form" in content_type:
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            problems += schema_errors(spec, content["application/x-www-form-urlencoded"]["schema"], form)
        else:
            problems.append(f"body: content type {content_type!r}, the spec declares {sorted(content)}")
    return problems


def check_response(spec: dict[str, Any], method: str, path: str, status: int, raw: bytes,
                   version: str = "3.1.1") -> list[str]:
    found = operation(spec, method, path)
    if found is None:
        return []
    template, op = found
    declared = op["responses"].get(str(status))
    if declared is None:
        return [f"status {status}: not declared for {method} {template} ({sorted(op['responses'])})"]
    if "$ref" in declared:
        declared = spec["components"]["responses"][declared["$ref"].rsplit("/", 1)[-1]]
    content = declared.get("content", {})
    if "application/json" not in content or not raw:
        return []
    try:
        body = json.loads(raw)
    except ValueError:
        return ["body: not JSON"]
    return schema_errors(_response_spec(version), content["application/json"]["schema"], body)



def rest_server(handle: Any) -> ThreadingHTTPServer:
    """A quiet threaded HTTP server on a free 127.0.0.1 port whose GET/POST/PUT/DELETE go to
    ``handle(request, method)`` (the test VTN and the validating proxy both serve this way)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            return None

        def do_GET(self) -> None:
            handle(self, "GET")

        def do_POST(self) -> None:
            handle(self, "POST")

        def do_PUT(self) -> None:
            handle(self, "PUT")

        def do_DELETE(self) -> None:
            handle(self, "DELETE")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server


class ValidatingProxy:
    """Forwards 127.0.0.1:<port> → ``upstream``; collects spec violations of both directions."""

    __test__ = False

    def __init__(self, upstream: str, version: str = "3.1.1", verify: bool | str = True) -> None:
        self.upstream = upstream.rstrip("/")
        self.spec, self.version = load_spec(version), version
        self.verify = verify
        self.violations: list[str] = []
        self.exchanges = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._session = requests.Session()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ValidatingProxy:
        self._server = rest_server(self._forward)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="validating-proxy").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._session.close()

    def _note(self, problems: list[str], prefix: str) -> None:
        if problems:
            with self._lock:
                self.violations.extend(f"{prefix}: {p}" for p in problems)

    def _forward(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type", "")
        self._note(check_request(self.spec, method, url.path, parse_qs(url.query), content_type, raw),
                   f"REQUEST {method} {url.path}")
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
        try:
            answer = self._session.request(method, f"{self.upstream}{handler.path}", data=raw or None,
                                           headers=headers, timeout=30, verify=self.verify)
        except requests.RequestException:
            handler.close_connection = True  # the VTN dropped the connection: so does the proxy
            return
        with self._lock:
            self.exchanges += 1
        self._note(check_response(self.spec, method, url.path, answer.status_code, answer.content, self.version),
                   f"RESPONSE {method} {url.path} {answer.status_code}")
        try:
            handler.send_response(answer.status_code)
            handler.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
            handler.send_header("Content-Length", str(len(answer.content)))
            handler.end_headers()
            handler.wfile.write(answer.content)
        except OSError:
            handler.close_connection = True
