"""Issue 10 item 6, "implausible values are believed": each reported case reproduced through
``MqttIngest.handle`` (no broker) and through the guard's public API, plus one run through a real
Mosquitto broker showing the rejection is counted (also in /metrics) and nothing is stored.

Site: the bundled ``west_texas`` profile (solar_pv 10 MW nameplate, receptors ranch_north and
rv_park_east, 7,200 miners ``<group>-<nnnn>``, interconnection 30 MW).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import json_server

from hashflex.control.fleet import FleetState
from hashflex.control.guard import Guard, Measurements
from hashflex.control.http import StatusServer
from hashflex.feeds.mqtt import MqttIngest
from hashflex.messages import Rejection, RenewableMessage, Topics
from hashflex.plausibility import PlausibilityContext, check_plausible
from hashflex.profile import load_profile
from hashflex.store import Store

PROFILE = load_profile("west_texas")
SITE = PROFILE.site_id
TOPICS = Topics(SITE)
NOW = datetime(2025, 7, 1, 17, 0, tzinfo=timezone.utc)
YEAR_AHEAD = NOW + timedelta(days=365)
MINER = "air_s21-0001"


def iso(at: datetime) -> str:
    return at.isoformat()


def payload(data: dict) -> bytes:
    return json.dumps(data).encode()


# The five cases of the issue, as (topic, payload, expected rule).
CASES = {
    "renewable 1e308 kW a year ahead": (
        TOPICS.renewable("solar_pv"), {"source_id": "solar_pv", "power_kw": 1e308, "timestamp": iso(YEAR_AHEAD)},
        "out_of_bounds:power_kw"),
    "price -1e308": (
        TOPICS.price, {"settlement_point": "LZ_WEST", "market": "RT", "interval_start": iso(NOW),
                       "interval_end": iso(NOW + timedelta(minutes=15)), "price_usd_mwh": -1e308},
        "out_of_bounds:price_usd_mwh"),
    "hashprice 1e308": (
        TOPICS.hashprice, {"hashprice_usd_per_ph_day": 1e308, "timestamp": iso(NOW), "source": "luxor"},
        "out_of_bounds:hashprice_usd_per_ph_day"),
    "noise dated 1970": (
        TOPICS.noise("ranch_north"), {"receptor_id": "ranch_north", "laeq_dba": 70.0, "averaging_s": 60,
                                      "timestamp": "1970-01-01T00:00:00Z", "meter_class": 1},
        "stale:timestamp"),
    "telemetry dated 2999": (
        TOPICS.telemetry(MINER), {"miner_id": MINER, "power_kw": 3.5, "hashrate_th_s": 200, "mode": "stock",
                                  "temperature_c": 60, "timestamp": "2999-01-01T00:00:00Z"},
        "future:timestamp"),
    "telemetry from an unknown miner": (
        TOPICS.telemetry("ghost-1"), {"miner_id": "ghost-1", "power_kw": 3.5, "hashrate_th_s": 200, "mode": "stock",
                                      "temperature_c": 60, "timestamp": iso(NOW)},
        "unknown_id:miner_id"),
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "plausibility.db") as s:
        yield s


def make_ingest(store: Store | None, **kwargs) -> MqttIngest:  # noqa: ANN003
    return MqttIngest(store, SITE, plausibility=PROFILE, clock=lambda: NOW, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_issue_case_is_rejected_before_store_and_callbacks(case: str, store: Store) -> None:
    topic, data, rule = CASES[case]
    ingest = make_ingest(store)
    seen: list[object] = []
    ingest.add_callback(seen.append)
    rejected: list[Rejection] = []
    ingest.add_rejection_callback(rejected.append)

    result = ingest.handle(topic, payload(data))

    assert isinstance(result, Rejection), f"{case}: accepted {result!r}"
    assert result.rule == rule
    field = rule.split(":", 1)[1]
    assert field.split(".")[0] in result.reason  # names the field ...
    assert seen == [] and rejected == [result]  # ... and nothing acted on it
    kind = result.kind
    assert ingest.stats()[kind]["rejected"] == 1 and ingest.stats()[kind]["accepted"] == 0
    assert ingest.rejection_stats() == {kind: {rule: 1}}
    store.flush()
    assert store.count("observations") == 0
    reasons = store.rejections()["reason"].tolist()
    assert len(reasons) == 1 and result.reason == reasons[0]


def test_reasons_name_the_bound() -> None:
    ingest = make_ingest(None)
    price = ingest.handle(*CASES["price -1e308"][:1], payload(CASES["price -1e308"][1]))
    assert isinstance(price, Rejection) and "[-251, 20000]" in price.reason
    renewable = ingest.handle(TOPICS.renewable("solar_pv"),
                              payload({"source_id": "solar_pv", "power_kw": 11_001, "timestamp": iso(NOW)}))
    assert isinstance(renewable, Rejection) and "[0, 11000]" in renewable.reason  # nameplate 10 MW + 10 %
    noise = ingest.handle(*CASES["noise dated 1970"][:1], payload(CASES["noise dated 1970"][1]))
    assert isinstance(noise, Rejection) and "3660 s staleness window" in noise.reason  # 1 h + averaging 60 s


def test_values_inside_the_bounds_pass_untouched() -> None:
    """The bounds reject; they never clip. Edge values of real markets are accepted as sent."""
    ingest = make_ingest(None)
    for price in (-251.0, 5_000.0, 9_000.0, 19_999.0):
        result = ingest.handle(TOPICS.price, payload({
            "settlement_point": "LZ_WEST", "market": "RT", "interval_start": iso(NOW + timedelta(minutes=price % 7)),
            "interval_end": iso(NOW + timedelta(minutes=15 + price % 7)), "price_usd_mwh": price}))
        assert not isinstance(result, Rejection) and result.price_usd_mwh == price
    reading = ingest.handle(TOPICS.renewable("solar_pv"),
                            payload({"source_id": "solar_pv", "power_kw": 10_500.0,
                                     "timestamp": iso(NOW + timedelta(seconds=60))}))  # within the 120 s skew
    assert isinstance(reading, RenewableMessage) and reading.power_kw == 10_500.0
    dr_old_start = ingest.handle(TOPICS.dr, payload({
        "event_id": "ev-long", "modification_number": 0, "program": "utility", "start": "2020-01-01T00:00:00Z",
        "import_limit_kw": 1_000, "issuer": "oncor"}))
    assert not isinstance(dr_old_start, Rejection)  # an event in force binds however old its start


def test_ingest_without_profile_keeps_old_behaviour() -> None:
    ingest = MqttIngest(None, SITE, clock=lambda: NOW)
    topic, data, _ = CASES["renewable 1e308 kW a year ahead"]
    assert isinstance(ingest.handle(topic, payload(data)), RenewableMessage)


def test_check_plausible_is_pure_and_reusable() -> None:
    context = PlausibilityContext.from_profile(PROFILE)
    assert len(context.miner_group) == len(FleetState.from_profile(PROFILE)) == 7200
    message = RenewableMessage(source_id="solar_pv", power_kw=2_000, timestamp=NOW)
    assert check_plausible(message, NOW, context) is None
    stale = check_plausible(message, NOW + timedelta(hours=2), context)
    assert stale is not None and stale.rule == "stale:timestamp" and stale.topic == TOPICS.renewable("solar_pv")


# --------------------------------------------------------------------------- the guard


def running_batch(now: datetime) -> list:
    fleet = FleetState.from_profile(PROFILE)
    for miner in fleet.miners.values():
        miner.mode = PROFILE.group(miner.group_id).modes[-1].name  # everything at its top mode
    return fleet.as_setpoints(now, 60)


def test_guard_fast_path_not_switched_off_by_a_1e308_reading_a_year_ahead() -> None:
    """The issue's case through the guard's public API, called as the loop calls it (no ``now``)."""
    guard = Guard(PROFILE)
    batch = running_batch(NOW)
    hostile = Measurements(at=YEAR_AHEAD, renewable_kw=1e308)
    cut = guard.emergency_dr_cut(batch, 1_000.0, hostile)
    assert cut.changed, "a 1e308 kW reading dated a year ahead switched off the DR fast path"
    assert guard.net_import_kw(cut.batch) <= 1_000.0 + 1e-6  # as if no renewable: the worst case
    with_now = guard.emergency_dr_cut(batch, 1_000.0, hostile, now=NOW)
    assert guard.net_import_kw(with_now.batch) <= 1_000.0 + 1e-6


def test_guard_caps_a_fresh_reading_at_nameplate() -> None:
    guard = Guard(PROFILE)
    batch = running_batch(NOW)
    huge = Measurements(at=NOW, renewable_kw=1e308)
    cut = guard.emergency_dr_cut(batch, 1_000.0, huge, now=NOW)
    # Credited with at most the 10 MW nameplate: the batch keeps ≤ limit + nameplate.
    assert guard.net_import_kw(cut.batch) <= 1_000.0 + 10_000.0 + 1e-6
    assert "capped at the 10000 kW nameplate" in cut.actions[-1].reason


def test_import_over_limit_cut_distrusts_a_future_or_stale_meter() -> None:
    guard = Guard(PROFILE)
    batch = running_batch(NOW)
    limit = 20_000.0
    # A meter reading dated a year ahead saying "all is well" must not stop the modelled cut.
    future = guard.import_over_limit_cut(0.0, limit, batch, measured_at=YEAR_AHEAD, now=NOW)
    assert future.changed and guard.net_import_kw(future.batch) <= limit + 1e-6
    stale = guard.import_over_limit_cut(float("nan"), limit, batch, measured_at=NOW, now=NOW)
    assert stale.changed and guard.net_import_kw(stale.batch) <= limit + 1e-6
    fresh = guard.import_over_limit_cut(limit + 100.0, limit, batch, measured_at=NOW, now=NOW)
    removed = guard.net_import_kw(batch) - guard.net_import_kw(fresh.batch)
    assert 100.0 <= removed < 200.0  # a fresh meter is trusted: only the measured excess goes


# --------------------------------------------------------------------------- a real broker


def test_rejection_through_mosquitto_is_counted_in_metrics_and_not_stored(mosquitto, store: Store,
                                                                          wait_for) -> None:  # noqa: ANN001
    now = datetime.now(timezone.utc)
    ingest = MqttIngest(store, SITE, mosquitto.host, mosquitto.port, client_id="plausibility-ingest",
                        session_expiry_s=0, plausibility=PROFILE)
    ingest.start()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plausibility-pub", protocol=mqtt.MQTTv5)
    server = StatusServer(lambda _now: {"healthy": True, "input_rejections": ingest.rejection_stats()},
                          lambda: now, port=0)
    server.start()
    try:
        assert ingest.wait_connected(10)
        publisher.connect(mosquitto.host, mosquitto.port)
        publisher.loop_start()
        hostile = {"source_id": "solar_pv", "power_kw": 1e308, "timestamp": iso(now + timedelta(days=365))}
        good = {"source_id": "solar_pv", "power_kw": 4_200.0, "timestamp": iso(now)}
        for data in (hostile, good):
            publisher.publish(TOPICS.renewable("solar_pv"), json.dumps(data), qos=1).wait_for_publish(5)
        wait_for(lambda: ingest.totals()["accepted"] + ingest.totals()["rejected"] == 2, message="both handled")
        assert ingest.rejection_stats() == {"renewable": {"out_of_bounds:power_kw": 1}}
        store.flush()
        latest = store.latest("renewable", "solar_pv")
        assert store.count("observations") == 1 and latest is not None and latest.power_kw == 4_200.0
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
        assert 'hashflex_input_rejections_total{kind="renewable",reason="out_of_bounds:power_kw"} 1.0' in body
    finally:
        server.stop()
        publisher.disconnect()
        publisher.loop_stop()
        ingest.stop()


# --------------------------------------------------------------------------- HTTP price feed


@pytest.fixture
def mixed_price_server() -> Iterator[str]:
    """A generic JSON price endpoint on 127.0.0.1 serving four good rows and three implausible ones."""

    def row(hour: int, price: float) -> dict:
        start = NOW + timedelta(hours=hour)
        return {"interval_start": iso(start), "interval_end": iso(start + timedelta(hours=1)),
                "price_usd_mwh": price, "market": "DA", "settlement_point": "LZ_WEST"}

    rows = [row(0, 21.0), row(1, -1e308), row(2, -251.0), row(3, 1e308), row(4, 9_000.0), row(5, 30.0),
            row(24 * 30, 25.0)]  # a month ahead: beyond the 7-day price horizon
    with json_server(rows) as url:
        yield url


def test_price_feed_drops_implausible_rows_and_keeps_the_good_ones(mixed_price_server: str, store: Store) -> None:
    from hashflex.feeds.poll import price_feed_from_env

    feed = price_feed_from_env(PROFILE, store, {"HASHFLEX_PRICE_URL": mixed_price_server})
    assert feed is not None
    feed.clock = lambda: NOW
    assert feed.poll_once() == 4
    store.flush()
    stored = store.prices(settlement_point="LZ_WEST")["price_usd_mwh"].tolist()
    assert stored == [21.0, -251.0, 9_000.0, 30.0]  # untouched, in order; the bad rows poisoned nothing
    stats = feed.stats()
    assert stats["rejected_rows"] == 3 and stats["last_error"] is None
    assert stats["rejections"] == {"price": {"out_of_bounds:price_usd_mwh": 2, "future:interval_start": 1}}
    server = StatusServer(lambda _now: {"healthy": True, "price_feed": feed.stats()}, lambda: NOW, port=0)
    server.start()
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    assert 'hashflex_input_rejections_total{kind="price",reason="out_of_bounds:price_usd_mwh"} 2.0' in body
