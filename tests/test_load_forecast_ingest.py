"""ERCOT's system load forecast into the daemon's store (issue 14): the bundled dev2 file, ERCOT's
NP3-565-CD rows (MIS CSV and public-API pages over a real HTTP server on 127.0.0.1), MQTT
``in/load_forecast`` over a real Mosquitto; plausibility (reject with the field named, counted); the
store keeps every posting with its publication time and reads back one vintage per hour as known at a
time, the frame the learned price model takes.

The NP3-565-CD rows and MQTT payloads here are SYNTHETIC (crafted values in the report's shape; no
captured posting is bundled). The dev2 file is real ERCOT data."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import paho.mqtt.client as mqtt
import pytest

from hashflex.control.http import StatusMetrics
from hashflex.feeds.http import ErcotApiConfig, RetryPolicy
from hashflex.feeds.load_forecast import (
    LOAD_FORECAST_PATH,
    LoadForecastFileError,
    check_load_forecast,
    load_forecast_feed_from_env,
    parse_bundled_load_forecast,
    parse_ercot_load_forecast,
    store_load_forecast_history,
)
from hashflex.feeds.mqtt import MqttIngest
from hashflex.messages import Topics
from hashflex.profile import load_profile
from hashflex.store import Store

UTC = timezone.utc
DEV2 = Path(__file__).resolve().parents[1] / "optimization/data/ercot_dev2"  # real ERCOT rows, PROVENANCE.md
SITE = "west"
TOPICS = Topics(SITE)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "lf.db") as s:
        yield s


def utc(text: str) -> datetime:
    return pd.Timestamp(text, tz="UTC").to_pydatetime()


# ------------------------------------------------------------------------------------------ parsing
def test_the_bundled_dev2_file_with_its_assumed_publication_time() -> None:
    frame = parse_bundled_load_forecast(DEV2 / "system_load_forecast_da_hourly.csv")
    # the 2024 rows (2,903 hours) and the 2025 development rows, to 2025-11-30 (PROVENANCE.md)
    assert len(frame) == 8754 and frame.attrs["published_at_assumed"]
    assert (frame["interval_start"] < pd.Timestamp("2024-06-02", tz="UTC")).sum() == 2903
    first = frame.iloc[0]
    # 2024-02-01 06:00 UTC is 00:00 CST on Feb 1: made the day before, ASSUMED published 13:00 CST Jan 31.
    assert first["interval_start"] == pd.Timestamp("2024-02-01 06:00", tz="UTC")
    assert first["published_at"] == pd.Timestamp("2024-01-31 19:00", tz="UTC")
    assert first["load_forecast_mw"] == pytest.approx(39277.845, abs=1e-3)
    # after the spring change (CDT): 2024-04-02 05:00 UTC = 00:00 CDT, published 13:00 CDT = 18:00 UTC Apr 1
    row = frame[frame["interval_start"] == pd.Timestamp("2024-04-02 05:00", tz="UTC")].iloc[0]
    assert row["published_at"] == pd.Timestamp("2024-04-01 18:00", tz="UTC")
    kept, dropped, _, _ = check_load_forecast(frame, datetime(2026, 1, 1, tzinfo=UTC))
    assert dropped == {} and len(kept) == len(frame)  # every real row is plausible under the default bounds


NP3_565 = """DeliveryDate,HourEnding,Coast,East,FarWest,North,NorthCentral,SouthCentral,Southern,West,SystemTotal,Model,InUseFlag,DSTFlag
04/11/2025,01:00,10000,1500,6000,1000,12000,7000,3500,1500,42500,A3,N,N
04/11/2025,01:00,10100,1500,6000,1000,12000,7000,3500,1500,42600,E,Y,N
04/11/2025,02:00,9800,1500,6000,1000,11800,6900,3400,1500,41900,A3,N,N
04/11/2025,02:00,9900,1500,6000,1000,11800,6900,3400,1500,42000,E,Y,N
"""  # SYNTHETIC values in the NP3-565-CD shape


def test_ercot_np3_565_rows_keep_the_in_use_model_system_total(tmp_path: Path) -> None:
    path = tmp_path / "lf.csv"
    path.write_text(NP3_565)
    posted = utc("2025-04-10 14:30")
    frame = parse_ercot_load_forecast(path, posted_at=posted)
    assert frame["load_forecast_mw"].tolist() == [42600.0, 42000.0]  # model E, InUseFlag Y
    # HE01 on 04/11 (CDT) = 00:00 local = 05:00 UTC
    assert frame["interval_start"].tolist() == [pd.Timestamp("2025-04-11 05:00", tz="UTC"),
                                                pd.Timestamp("2025-04-11 06:00", tz="UTC")]
    assert (frame["published_at"] == pd.Timestamp(posted)).all()
    with pytest.raises(LoadForecastFileError, match="publication time is required"):
        parse_ercot_load_forecast(path)
    bad = tmp_path / "bad.csv"
    bad.write_text(NP3_565.replace("42600", "4x600"))
    with pytest.raises(LoadForecastFileError, match="row 1: SystemTotal '4x600'"):
        parse_ercot_load_forecast(bad, posted_at=posted)


# ------------------------------------------------------------------------------------------ the store
def _posting(published: str, start: str, hours: int, mw: float) -> pd.DataFrame:
    starts = pd.date_range(pd.Timestamp(start, tz="UTC"), periods=hours, freq="h")
    return pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(hours=1),
                         "load_forecast_mw": mw, "published_at": pd.Timestamp(published, tz="UTC")})


def test_every_posting_is_kept_and_the_reader_picks_the_day_ahead_vintage(store: Store) -> None:
    # Hour of interest: 2025-04-11 17:00 UTC (12:00 CDT Apr 11); its day-ahead cutoff is 13:00 CDT Apr 10 = 18:00 UTC.
    hour = pd.Timestamp("2025-04-11 17:00", tz="UTC")
    store.put_load_forecast(_posting("2025-04-10 12:00", "2025-04-11 00:00", 48, 50_000.0), source="t")  # before cutoff
    store.put_load_forecast(_posting("2025-04-10 17:30", "2025-04-11 00:00", 48, 51_000.0), source="t")  # newest before
    store.put_load_forecast(_posting("2025-04-10 19:30", "2025-04-11 00:00", 48, 52_000.0), source="t")  # after cutoff
    store.put_load_forecast(_posting("2025-04-10 17:30", "2025-04-11 00:00", 48, 99_000.0), source="t")  # repeat: no-op
    store.flush()
    assert store.count("load_forecasts") == 3 * 48
    window = dict(start=hour.to_pydatetime(), end=(hour + pd.Timedelta(hours=1)).to_pydatetime())
    day_ahead = store.load_forecast(**window)
    assert day_ahead["load_forecast_mw"].tolist() == [51_000.0]
    assert day_ahead["published_at"].tolist() == [pd.Timestamp("2025-04-10 17:30", tz="UTC")]
    assert store.load_forecast(**window, vintage="latest")["load_forecast_mw"].tolist() == [52_000.0]
    # before its cutoff the hour's day-ahead vintage is not settled: absent (as in the model's training)
    assert store.load_forecast(**window, as_of=utc("2025-04-10 17:59")).empty
    at_cutoff = store.load_forecast(**window, as_of=utc("2025-04-10 18:00"))
    assert at_cutoff["load_forecast_mw"].tolist() == [51_000.0]
    # as known at 17:00 UTC Apr 10 only the 12:00 posting existed: nothing published later is shown
    assert store.load_forecast(**window, as_of=utc("2025-04-10 17:00"), vintage="latest")[
        "load_forecast_mw"].tolist() == [50_000.0]
    # a posting more than two days before the cutoff is no day-ahead forecast (a stalled feed): absent
    stale_hour = pd.Timestamp("2025-04-14 17:00", tz="UTC")
    store.put_load_forecast(_posting("2025-04-10 12:00", "2025-04-14 17:00", 1, 50_000.0), source="t")
    store.flush()
    assert store.load_forecast(stale_hour.to_pydatetime(), (stale_hour + pd.Timedelta(hours=1)).to_pydatetime()).empty
    with pytest.raises(ValueError, match="vintage"):
        store.load_forecast(vintage="newest")


def test_the_history_reader_feeds_the_learned_price_model(store: Store) -> None:
    pytest.importorskip("sklearn")
    from hashflex.price_model import LearnedPriceForecaster

    store.put_load_forecast(_posting("2025-04-10 17:30", "2025-04-11 05:00", 24, 48_000.0), source="t")
    store.put_load_forecast(_posting("2025-04-11 17:30", "2025-04-12 05:00", 24, 55_000.0), source="t")
    store.flush()
    history = store_load_forecast_history(store)
    now = pd.Timestamp("2025-04-11 12:00", tz="UTC")
    frame = history(now, pd.Timedelta(days=2))
    assert list(frame.columns) == ["interval_start", "interval_end", "load_forecast_mw", "published_at"]
    assert len(frame) == 24 and (frame["load_forecast_mw"] == 48_000.0).all()  # Apr 12's posting is not out yet
    assert len(history(now + pd.Timedelta(days=1), pd.Timedelta(days=2))) == 48
    starts = pd.date_range("2025-04-09", "2025-04-13", freq="15min", tz="UTC", inclusive="left")
    prices = pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=15),
                           "settlement_point": "HB_WEST", "market": "RT", "price_usd_mwh": 30.0})
    model = LearnedPriceForecaster(prices, "HB_WEST", "America/Chicago", load_forecast=frame)
    slot = (pd.Timestamp("2025-04-11 06:00", tz="UTC").value - model.origin_ns) // (15 * 60 * 10**9)
    assert model.load.value[slot] == 48_000.0
    assert model.load.published[slot] == pd.Timestamp("2025-04-10 17:30", tz="UTC").value


# ------------------------------------------------------------------------------------------ HTTP poll
def _api_page(rows: list[list[object]], page: int, pages: int) -> dict[str, object]:
    names = ["postedDatetime", "deliveryDate", "hourEnding", "coast", "east", "farWest", "north", "northCentral",
             "southCentral", "southern", "west", "systemTotal", "model", "inUseFlag", "DSTFlag"]
    return {"_meta": {"totalRecords": 4, "pageSize": 2, "totalPages": pages, "currentPage": page},
            "report": {"reportEMIL": "NP3-565-CD"}, "fields": [{"name": n} for n in names], "data": rows}


class _Api:
    """A real HTTP server on 127.0.0.1 answering the NP3-565-CD path in the public API's paged shape."""

    def __init__(self, pages: list[dict[str, object]]) -> None:
        self.queries: list[dict[str, list[str]]] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query)
                api.queries.append({"path": [url.path], **query})
                body = json.dumps(pages[int(query["page"][0]) - 1]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/api/public-reports"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_ercot_api_poll_stores_plausible_rows_and_counts_the_rest(store: Store) -> None:
    # SYNTHETIC rows: posted 2025-04-10 09:30 CDT (14:30 UTC); one system total is implausible (900,000 MW).
    zones = [10_000, 1_500, 6_000, 1_000, 12_000, 7_000, 3_500, 1_500]
    rows = [["2025-04-10T09:30:00", "2025-04-11", "01:00", *zones, 42_600.0, "E", True, False],
            ["2025-04-10T09:30:00", "2025-04-11", "01:00", *zones, 42_500.0, "A3", False, False],
            ["2025-04-10T09:30:00", "2025-04-11", "02:00", *zones, 900_000.0, "E", True, False],
            ["2025-04-10T09:30:00", "2025-04-11", "03:00", *zones, 41_000.0, "E", True, False]]
    api = _Api([_api_page(rows[:2], 1, 2), _api_page(rows[2:], 2, 2)])
    now = datetime(2025, 4, 10, 15, 0, tzinfo=UTC)
    try:
        feed = load_forecast_feed_from_env(
            store, {"ERCOT_API_KEY": "k", "ERCOT_ID_TOKEN": "t"}, clock=lambda: now,
            api_config=ErcotApiConfig(base_url=api.base_url, retry=RetryPolicy(max_attempts=1)))
        assert feed is not None
        assert feed.poll_once() == 2
    finally:
        api.close()
    store.flush()
    assert api.queries[0]["path"] == ["/api/public-reports" + LOAD_FORECAST_PATH]
    assert api.queries[0]["postedDatetimeFrom"] == ["2025-04-08T10:00:00"]  # two days back, Central time
    stats = feed.stats()
    assert stats["rows"] == 2 and stats["rejected_rows"] == 1
    assert stats["rejections"] == {"load_forecast": {"out_of_bounds:load_forecast_mw": 1}}
    assert stats["last_published_at"] == "2025-04-10T14:30:00+00:00"
    stored = store.load_forecast(vintage="latest")
    assert stored["load_forecast_mw"].tolist() == [42_600.0, 41_000.0]
    assert (stored["published_at"] == pd.Timestamp("2025-04-10 14:30", tz="UTC")).all()
    # /metrics counts the feed's refusals among the input rejections
    text = StatusMetrics().render({"healthy": True, "load_forecast_feed": stats}).decode()
    assert 'hashflex_input_rejections_total{kind="load_forecast",reason="out_of_bounds:load_forecast_mw"} 1.0' in text


def test_no_feed_is_configured_without_its_environment(store: Store) -> None:
    assert load_forecast_feed_from_env(store, {}) is None


# ------------------------------------------------------------------------------------------ MQTT
def _message(points: list[tuple[str, float]], published: str = "2025-04-10T14:30:00Z") -> dict[str, object]:
    return {"region": "ERCOT", "published_at": published, "source": "relay (SYNTHETIC)",
            "points": [{"interval_start": s, "load_forecast_mw": mw} for s, mw in points]}


@pytest.fixture
def ingest(mosquitto, store: Store, request: pytest.FixtureRequest) -> Iterator[MqttIngest]:
    clock = lambda: datetime(2025, 4, 10, 15, 0, tzinfo=UTC)  # noqa: E731
    ing = MqttIngest(store, SITE, mosquitto.host, mosquitto.port, client_id=f"lf-{request.node.name}"[:60],
                     session_expiry_s=0, clock=clock, plausibility=load_profile("west_texas"))
    ing.start()
    assert ing.wait_connected(10)
    yield ing
    ing.stop()


def test_mqtt_load_forecast_is_stored_and_implausible_ones_are_refused_naming_the_field(
        ingest: MqttIngest, mosquitto, store: Store, wait_for: Callable[..., None]) -> None:
    refused = []
    ingest.add_rejection_callback(refused.append)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lf-publisher", protocol=mqtt.MQTTv5)
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()
    topic = f"hashflex/{SITE}/in/load_forecast"
    try:
        good = _message([("2025-04-11T05:00:00Z", 42_600.0), ("2025-04-11T06:00:00Z", 42_000.0)])
        implausible = _message([("2025-04-11T05:00:00Z", 42_600.0), ("2025-04-11T06:00:00Z", 250_000.0)],
                               published="2025-04-10T13:30:00Z")
        future = _message([("2025-04-11T05:00:00Z", 42_600.0)], published="2025-04-10T18:00:00Z")
        unordered = _message([("2025-04-11T06:00:00Z", 42_600.0), ("2025-04-11T05:00:00Z", 42_000.0)])
        for payload in (good, implausible, future, unordered):
            publisher.publish(topic, json.dumps(payload), qos=1).wait_for_publish(timeout=5)
        wait_for(lambda: ingest.stats().get("load_forecast", {}).get("rejected", 0) == 3
                 and ingest.stats()["load_forecast"]["accepted"] == 1, message="one accepted, three refused")
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    store.flush()
    stored = store.load_forecast(vintage="latest")
    assert stored["load_forecast_mw"].tolist() == [42_600.0, 42_000.0]
    reasons = [r.reason for r in refused]
    assert reasons[0].startswith("load_forecast: points.1.load_forecast_mw: load_forecast_mw 250,000 MW outside")
    assert reasons[1].startswith("load_forecast: published_at: published_at 2025-04-10T18:00:00+00:00 is after now")
    assert reasons[2].startswith("load_forecast: points.1.interval_start: not after points.0.interval_start")
    assert ingest.rejection_stats()["load_forecast"] == {"out_of_bounds:load_forecast_mw": 1,
                                                         "future:published_at": 1, "schema:value_error": 1}
    assert ingest.handle(topic, json.dumps(good).encode()) is None  # the same posting again: a duplicate
    assert ingest.stats()["load_forecast"]["duplicate"] == 1


def test_the_check_names_each_reason_class() -> None:
    now = datetime(2025, 4, 10, 15, tzinfo=UTC)
    frame = pd.concat([_posting("2025-04-10 14:00", "2025-04-11 00:00", 2, 40_000.0),
                       _posting("2025-04-10 14:00", "2025-04-25 00:00", 1, 40_000.0),  # 14 days ahead
                       _posting("2025-04-10 14:00", "2025-04-11 05:00", 1, 5_000.0)], ignore_index=True)
    kept, dropped, reasons, bad = check_load_forecast(frame, now)
    assert len(kept) == 2 and bad == [2, 3]
    assert dropped == {"out_of_bounds:load_forecast_mw": 1, "out_of_bounds:interval_start": 1}
    assert "5,000 MW outside [10,000, 150,000] MW" in reasons[0]
    assert "more than 9 days after published_at" in reasons[1]
    # a clock a minute ahead of ours is tolerated; a posting from further ahead is not believed
    ahead = _posting("2025-04-10 15:01", "2025-04-11 00:00", 1, 40_000.0)
    assert check_load_forecast(ahead, now)[1] == {}
    assert check_load_forecast(ahead, now - timedelta(minutes=10))[1] == {"future:published_at": 1}
