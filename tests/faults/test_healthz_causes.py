"""/healthz names the causes when the status lists ``unhealthy_causes`` (issue 10 item 2: with the
store's disk full /healthz stayed 200). A real HTTP server on 127.0.0.1 and a fake status function."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from hashflex.control.http import StatusServer

NOW = datetime(2025, 7, 1, 17, 0, tzinfo=timezone.utc)


@pytest.fixture
def serve() -> Iterator[Callable[[dict[str, Any]], str]]:
    servers: list[StatusServer] = []

    def start(status: dict[str, Any]) -> str:
        server = StatusServer(lambda _now: status, lambda: NOW, port=0)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_named_causes_make_healthz_503_with_a_json_body(serve: Callable[[dict[str, Any]], str]) -> None:
    causes = ["store_unavailable: disk I/O error", "price_feed: stale"]
    base = serve({"healthy": True, "unhealthy_causes": causes})  # causes win over a stale "healthy"
    code, content_type, body = get(base + "/healthz")
    assert code == 503 and content_type == "application/json"
    assert json.loads(body) == {"healthy": False, "unhealthy_causes": causes}


@pytest.mark.parametrize("status, expected", [
    ({"healthy": True, "unhealthy_causes": []}, (200, b"ok\n")),
    ({"healthy": True}, (200, b"ok\n")),
    ({"healthy": False}, (503, b"unhealthy\n")),
    ({"healthy": True, "unhealthy_causes": "not a list"}, (200, b"ok\n")),
])
def test_without_causes_healthz_behaves_as_before(serve: Callable[[dict[str, Any]], str], status: dict,
                                                 expected: tuple[int, bytes]) -> None:
    code, _, body = get(serve(status) + "/healthz")
    assert (code, body) == expected


def test_status_and_metrics_still_answer_with_causes(serve: Callable[[dict[str, Any]], str]) -> None:
    base = serve({"healthy": False, "unhealthy_causes": ["store_unavailable: disk full"],
                  "input_rejections": {"noise": {"stale:timestamp": 3}}})
    code, _, body = get(base + "/status")
    assert code == 200 and json.loads(body)["unhealthy_causes"] == ["store_unavailable: disk full"]
    code, _, body = get(base + "/metrics")
    assert code == 200
    assert b'hashflex_input_rejections_total{kind="noise",reason="stale:timestamp"} 3.0' in body
