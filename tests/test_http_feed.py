"""HTTP price feeds against a real HTTP server on 127.0.0.1 (http.server in a thread).

Responses have the recorded ERCOT API shape (``_meta``, ``fields``, ``data``). Nothing in
``requests`` is mocked; only the retry sleep is replaced by a recorder.
"""

from __future__ import annotations

import email.utils
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from hashflex.feeds.http import (
    DAM_SPP_PATH,
    RT_SPP_PATH,
    ErcotApiConfig,
    PriceFeedAuthError,
    PriceFeedConfigError,
    PriceFeedConnectionError,
    PriceFeedHTTPError,
    PriceFeedResponseError,
    PriceFeedTimeout,
    PricePoller,
    RetryPolicy,
    fetch_generic_prices,
)
from test_ercot_contract import assert_price_contract

ENV = {"ERCOT_API_KEY": "k-123", "ERCOT_ID_TOKEN": "tok-456"}
RT_FIELDS = ["deliveryDate", "deliveryHour", "deliveryInterval", "settlementPoint", "settlementPointType",
             "settlementPointPrice", "DSTFlag"]
DAM_FIELDS = ["deliveryDate", "hourEnding", "settlementPoint", "settlementPointPrice", "DSTFlag"]


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class FakeApi:
    """Routes: path -> function(query, n-th call to this path) -> Reply."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[dict[str, str], int], Reply]] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                with api._lock:
                    api.seen.append(Seen(parts.path, query, dict(self.headers)))
                    n = sum(1 for s in api.seen if s.path == parts.path)
                route = api.routes.get(parts.path)
                reply = route(query, n) if route else Reply(404, {"error": "no route"})
                time.sleep(reply.delay_s)
                raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/public-reports"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi()
    yield server
    server.close()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def poller(api: FakeApi, sleeps: list[float], **cfg: Any) -> PricePoller:
    retry = cfg.pop("retry", RetryPolicy(max_attempts=4))
    config = ErcotApiConfig(base_url=api.url, read_timeout_s=cfg.pop("read_timeout_s", 5.0), retry=retry, **cfg)
    return PricePoller(config, sleep=sleeps.append, environ=ENV)


def page(rows: list[list], n: int, total: int, fields: list[str] = RT_FIELDS) -> dict:
    return {"_meta": {"totalRecords": 5, "pageSize": 2, "totalPages": total, "currentPage": n,
                      "query": {"parameterCount": 2}},
            "report": {"reportEMIL": "NP6-905-CD", "reportName": "spp_node_zone_hub"},
            "fields": [{"name": f, "label": f, "cardinality": 1, "dataType": "VARCHAR"} for f in fields],
            "data": rows, "_links": {}}


RT_ROWS = [["2025-04-10", 19, 1, "HB_NORTH", "HU", 36.1, False],
           ["2025-04-10", 19, 2, "HB_NORTH", "HU", 37.76, False],
           ["2025-04-10", 19, 3, "HB_NORTH", "HU", 39.0, False],
           ["2025-04-10", 19, 4, "HB_NORTH", "HU", -2.5, False],
           ["2025-04-10", 20, 1, "HB_NORTH", "HU", 6100.0, False]]


def paged_rt(query: dict[str, str], n: int) -> Reply:
    p = int(query["page"])
    return Reply(body=page(RT_ROWS[(p - 1) * 2:p * 2], p, 3))


def ok_after(failures: list[Reply]) -> Callable[[dict[str, str], int], Reply]:
    def route(query: dict[str, str], n: int) -> Reply:
        return failures[n - 1] if n <= len(failures) else paged_rt(query, n)
    return route


# ------------------------------------------------------------------------------------- ERCOT API
def test_pages_until_total_pages_and_sends_auth_headers(api: FakeApi, sleeps: list[float]) -> None:
    api.routes["/api/public-reports" + RT_SPP_PATH] = paged_rt
    with poller(api, sleeps) as p:
        df = p.fetch_rt_prices(date(2025, 4, 10), date(2025, 4, 10), settlement_point="HB_NORTH")
    assert_price_contract(df)
    assert df["price_usd_mwh"].tolist() == [36.1, 37.76, 39.0, -2.5, 6100.0]
    assert df["interval_start"].iloc[0] == pd.Timestamp("2025-04-10 23:00", tz="UTC")
    assert [s.query["page"] for s in api.seen] == ["1", "2", "3"]
    first = api.seen[0]
    assert first.query["deliveryDateFrom"] == "2025-04-10" and first.query["settlementPoint"] == "HB_NORTH"
    assert first.headers["Ocp-Apim-Subscription-Key"] == "k-123"
    assert first.headers["Authorization"] == "Bearer tok-456"
    assert sleeps == []


def test_429_retry_after_is_honoured(api: FakeApi, sleeps: list[float]) -> None:
    api.routes["/api/public-reports" + RT_SPP_PATH] = ok_after([Reply(429, {"m": "rate"}, {"Retry-After": "7"})])
    with poller(api, sleeps) as p:
        df = p.fetch_rt_prices(date(2025, 4, 10), date(2025, 4, 10))
    assert len(df) == 5
    assert sleeps == [7.0]
    assert [s.query["page"] for s in api.seen] == ["1", "1", "2", "3"]


def test_retry_after_as_http_date(api: FakeApi, sleeps: list[float]) -> None:
    when = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    api.routes["/api/public-reports" + RT_SPP_PATH] = ok_after([Reply(429, {}, {"Retry-After": when})])
    with poller(api, sleeps) as p:
        assert len(p.fetch_rt_prices(date(2025, 4, 10), date(2025, 4, 10))) == 5
    assert len(sleeps) == 1 and 25 <= sleeps[0] <= 30


def test_server_ignoring_page_parameter_is_caught(api: FakeApi, sleeps: list[float]) -> None:
    api.routes["/api/public-reports" + RT_SPP_PATH] = lambda q, n: Reply(body=page(RT_ROWS[:2], 1, 2))
    with poller(api, sleeps) as p, pytest.raises(PriceFeedResponseError, match="asked for page 2, got 1"):
        p.fetch_rt_prices(date(2025, 4, 10), date(2025, 4, 10))


def test_503_retry_after_too_long_fails_without_sleeping(api: FakeApi, sleeps: list[float]) -> None:
    api.routes["/api/public-reports" + RT_SPP_PATH] = ok_after([Reply(503, {}, {"Retry-After": "3600"})])
    with poller(api, sleeps) as p, pytest.raises(PriceFeedHTTPError, match="retry after 3600 s") as exc:
        p.fetch_rt_prices(date(2025, 4, 10), date(2025, 4, 10))
    assert exc.value.status == 503 and sleeps == [] and len(api.seen) == 1


def test_500_then_success_backs_off(api: FakeApi, sleeps: list[float]) -> None:
    api.routes["/api/public-reports" + RT_SPP_PATH] = ok_after([Reply(500, {"e": 1}), Reply(502, {"e": 2})])
    with poller(api, sleeps) as p:
        df = p.fetch_rt_prices(date(2025, 4, 10), date(2025, 4, 10))
    assert len(df) == 5 and sleeps == [1.0, 2.0]


def test_persistent_500_raises_with_status_and_attempts(api: FakeApi, sleeps: list[float]) -> None:
    api.routes["/api/public-reports" + RT_SPP_PATH] = lambda q, n: Reply(500, {"e": "down"})
    with poller(api, sleeps, retry=RetryPolicy(max_attempts=3)) as p, pytest.raises(PriceFeedHTTPError) as exc:
        p.fetch_rt_prices(date(2025, 4, 10), date(2025, 4, 10))
    assert (exc.value.status, exc.value.attempts) == (500, 3)
    assert sleeps == [1.0, 2.0] and len(api.seen) == 3


def test_failure_on_a_later_page_returns_nothing(api: FakeApi, sleeps: list[float]) -> None:
    def route(query: dict[str, str], n: int) -> Reply:
        return Reply(500, {}) if query["page"] == "2" else paged_rt(query, n)
    api.routes["/api/public-reports" + RT_SPP_PATH] = route
    with poller(api, sleeps, retry=RetryPolicy(max_attempts=2)) as p, pytest.raises(PriceFeedHTTPError):
        p.fetch_rt_prices(date(2025, 4, 10), date(2025, 4, 10))
    assert [s.query["page"] for s in api.seen] == ["1", "2", "2"]


def test_timeout_when_server_is_slower_than_client(api: FakeApi, sleeps: list[float]) -> None:
    api.routes["/api/public-reports" + RT_SPP_PATH] = lambda q, n: Reply(body=page(RT_ROWS, 1, 1), delay_s=1.0)
    t0 = time.monotonic()
    with poller(api, sleeps, read_timeout_s=0.2, retry=RetryPolicy(max_attempts=2)) as p, \
            pytest.raises(PriceFeedTimeout, match="timed out after 2 attempt"):
        p.fetch_rt_prices(date(2025, 4, 10), date(2025, 4, 10))
    assert time.monotonic() - t0 < 0.9 * 2  # gave up before the server answered
    assert sleeps == [1.0] and len(api.seen) == 2


def test_401_is_not_retried(api: FakeApi, sleeps: list[float]) -> None:
    api.routes["/api/public-reports" + DAM_SPP_PATH] = lambda q, n: Reply(401, {"message": "token expired"})
    with poller(api, sleeps) as p, pytest.raises(PriceFeedAuthError, match="401.*token expired") as exc:
        p.fetch_dam_prices(date(2025, 4, 11), date(2025, 4, 11))
    assert exc.value.status == 401 and len(api.seen) == 1 and sleeps == []


def test_missing_credentials_fail_before_any_request(api: FakeApi, sleeps: list[float]) -> None:
    p = PricePoller(ErcotApiConfig(base_url=api.url, id_token_env="MY_TOKEN"), sleep=sleeps.append,
                    environ={"ERCOT_API_KEY": "k"})
    with p, pytest.raises(PriceFeedConfigError, match="MY_TOKEN"):
        p.fetch_dam_prices(date(2025, 4, 11), date(2025, 4, 11))
    assert api.seen == []


def test_dam_fetch_and_missing_meta(api: FakeApi, sleeps: list[float]) -> None:
    rows = [["2025-04-11", "01:00", "HB_NORTH", 30.04, False], ["2025-04-11", "02:00", "HB_NORTH", 25.08, False]]
    api.routes["/api/public-reports" + DAM_SPP_PATH] = lambda q, n: Reply(body=page(rows, 1, 1, DAM_FIELDS))
    with poller(api, sleeps) as p:
        df = p.fetch_dam_prices(date(2025, 4, 11), date(2025, 4, 11), settlement_point="HB_NORTH")
    assert_price_contract(df)
    assert df["market"].tolist() == ["DA", "DA"] and df["price_usd_mwh"].tolist() == [30.04, 25.08]
    no_meta = page(rows, 1, 1, DAM_FIELDS)
    del no_meta["_meta"]
    api.routes["/api/public-reports" + DAM_SPP_PATH] = lambda q, n: Reply(body=no_meta)
    with poller(api, sleeps) as p, pytest.raises(PriceFeedResponseError, match="_meta.totalPages"):
        p.fetch_dam_prices(date(2025, 4, 11), date(2025, 4, 11))


def test_several_points_are_queried_one_by_one(api: FakeApi, sleeps: list[float]) -> None:
    def route(query: dict[str, str], n: int) -> Reply:
        point = query["settlementPoint"]
        rows = [["2025-04-11", "01:00", point, 30.0 if point == "HB_NORTH" else 47.79, False],
                ["2025-04-11", "01:00", point, 30.0 if point == "HB_NORTH" else 48.0, False]]  # a conflict
        return Reply(body=page(rows, 1, 1, DAM_FIELDS))
    api.routes["/api/public-reports" + DAM_SPP_PATH] = route
    with poller(api, sleeps) as p:
        df = p.fetch_dam_prices(date(2025, 4, 11), date(2025, 4, 11), settlement_point=["LZ_WEST", "HB_NORTH"])
    assert_price_contract(df)
    assert dict(zip(df["settlement_point"], df["price_usd_mwh"])) == {"HB_NORTH": 30.0, "LZ_WEST": 48.0}
    assert [s.query["settlementPoint"] for s in api.seen] == ["LZ_WEST", "HB_NORTH"]
    rep = df.attrs["duplicates"]
    assert rep.identical_rows_dropped == 1 and [c.settlement_point for c in rep.conflicts] == ["LZ_WEST"]


def test_empty_result_is_an_empty_frame(api: FakeApi, sleeps: list[float]) -> None:
    api.routes["/api/public-reports" + DAM_SPP_PATH] = lambda q, n: Reply(body=page([], 1, 0, DAM_FIELDS))
    with poller(api, sleeps) as p:
        df = p.fetch_dam_prices(date(2030, 1, 1), date(2030, 1, 1))
    assert_price_contract(df)
    assert len(df) == 0


def test_invalid_json_and_connection_refused(api: FakeApi, sleeps: list[float]) -> None:
    api.routes["/api/public-reports" + RT_SPP_PATH] = lambda q, n: Reply(body=b"<html>oops")
    with poller(api, sleeps) as p, pytest.raises(PriceFeedResponseError, match="invalid JSON"):
        p.fetch_rt_prices(date(2025, 4, 10), date(2025, 4, 10))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = PricePoller(ErcotApiConfig(base_url=f"http://127.0.0.1:{port}", retry=RetryPolicy(max_attempts=2)),
                       sleep=sleeps.append, environ=ENV)
    with dead, pytest.raises(PriceFeedConnectionError, match="could not connect after 2"):
        dead.fetch_rt_prices(date(2025, 4, 10), date(2025, 4, 10))


# ------------------------------------------------------------------------------ generic endpoint
def test_generic_json_endpoint(api: FakeApi, sleeps: list[float]) -> None:
    items = [{"interval_start": "2025-04-10T00:00:00Z", "interval_end": "2025-04-10T00:30:00Z", "price_usd_mwh": 41},
             {"interval_start": "2025-04-10T00:30:00Z", "interval_end": "2025-04-10T01:00:00Z", "price_usd_mwh": -7.5}]
    api.routes["/prices"] = lambda q, n: Reply(503, {}, {"Retry-After": "2"}) if n == 1 else Reply(body={"prices": items})
    base = api.url.replace("/api/public-reports", "")
    df = fetch_generic_prices(f"{base}/prices", settlement_point="PJM_WEST", market="DA",
                              headers={"X-Api-Key": "g-1"}, sleep=sleeps.append)
    assert_price_contract(df)
    assert df["price_usd_mwh"].tolist() == [41.0, -7.5]
    assert set(df["settlement_point"]) == {"PJM_WEST"} and set(df["market"]) == {"DA"}
    assert sleeps == [2.0] and api.seen[-1].headers["X-Api-Key"] == "g-1"
    api.routes["/prices"] = lambda q, n: Reply(body=[{"interval_start": "2025-04-10T00:00:00", "price_usd_mwh": 1}])
    with pytest.raises(PriceFeedResponseError, match="interval_start .* UTC offset"):
        fetch_generic_prices(f"{base}/prices", sleep=sleeps.append)
