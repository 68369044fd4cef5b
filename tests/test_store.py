"""Store: WAL, idempotent upserts, supersession, range queries with canonical columns, prune, threads."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.frames import check_price_frame
from hashflex.messages import (
    CarbonIntensityMessage,
    DREventMessage,
    HashpriceMessage,
    LimitsChangeMessage,
    NoiseMessage,
    PriceMessage,
    Rejection,
    RenewableMessage,
    SetpointMessage,
    TelemetryMessage,
)
from hashflex.store import Store

T0 = datetime(2025, 7, 1, 12, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "hashflex.db") as s:
        yield s


def noise(minute: int, laeq_dba: float = 40.0, receptor_id: str = "r1") -> NoiseMessage:
    return NoiseMessage(receptor_id=receptor_id, laeq_dba=laeq_dba, averaging_s=60, timestamp=T0 + minute * MIN,
                        meter_class=1)


def price(minute: int, price_usd_mwh: float, published_min: int | None = None) -> PriceMessage:
    start = T0 + minute * MIN
    published = T0 + published_min * MIN if published_min is not None else None
    return PriceMessage(settlement_point="HB_WEST", market="RT", interval_start=start,
                        interval_end=start + 15 * MIN, price_usd_mwh=price_usd_mwh, published_at=published)


def dr(modification_number: int, import_limit_kw: float = 500.0, cancelled: bool = False) -> DREventMessage:
    return DREventMessage(event_id="ev1", modification_number=modification_number, program="ERS-10", start=T0,
                          end=T0 + 60 * MIN, import_limit_kw=import_limit_kw, issuer="ercot", cancelled=cancelled)


def assert_utc(series: pd.Series) -> None:
    assert isinstance(series.dtype, pd.DatetimeTZDtype) and str(series.dt.tz) == "UTC", series.dtype


def test_database_is_in_wal_mode_and_readable_by_another_connection(store: Store) -> None:
    store.put(noise(0))
    store.flush()
    other = sqlite3.connect(store.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("SELECT count(*) FROM observations").fetchone()[0] == 1
    finally:
        other.close()


def test_same_observation_twice_is_one_row_and_first_value_wins(store: Store) -> None:
    store.put(noise(0, 40.0))
    store.put(noise(0, 40.0))
    store.put(noise(0, 55.0))
    store.flush()
    frame = store.observations("noise")
    assert len(frame) == 1 and frame["laeq_dba"].tolist() == [40.0]


def test_observations_range_is_half_open_sorted_with_canonical_columns(store: Store) -> None:
    for minute in (5, 1, 3, 0, 4, 2):  # out of order on purpose
        store.put(noise(minute, 40.0 + minute))
    store.put(noise(2, 30.0, receptor_id="r2"))
    store.flush()
    frame = store.observations("noise", T0 + MIN, T0 + 4 * MIN, key="r1")
    assert list(frame.columns) == ["timestamp", "key", "receptor_id", "laeq_dba", "averaging_s", "meter_class",
                                   "simulated", "received_at"]
    assert frame["timestamp"].tolist() == [T0 + m * MIN for m in (1, 2, 3)]
    assert frame["laeq_dba"].tolist() == [41.0, 42.0, 43.0]
    assert_utc(frame["timestamp"])
    assert_utc(frame["received_at"])
    assert len(store.observations("noise", T0 + 2 * MIN, T0 + 3 * MIN)) == 2  # both receptors


def test_every_observation_kind_round_trips(store: Store) -> None:
    messages = [
        RenewableMessage(source_id="pv1", power_kw=900, timestamp=T0,
                         forecast=[{"interval_start": T0 + 15 * MIN, "power_kw": 800}]),
        CarbonIntensityMessage(intensity_kg_per_mwh=410, kind="average", timestamp=T0, source="grid"),
        HashpriceMessage(hashprice_usd_per_ph_day=48.5, timestamp=T0, source="luxor"),
        TelemetryMessage(miner_id="m1", power_kw=3.3, hashrate_th_s=190, mode="eco", temperature_c=60,
                         errors=["fan"], timestamp=T0),
        LimitsChangeMessage(issuer="ops", reason="event", issued_at=T0, import_limit_kw=700,
                            valid_until=T0 + 60 * MIN),
    ]
    store.put_many(messages)
    store.flush()
    for message in messages:
        frame = store.observations(message.kind)
        assert len(frame) == 1, message.kind
        assert frame["timestamp"].iloc[0] == T0
        assert frame["key"].iloc[0] == message.key
        assert store.latest(message.kind, message.key) == message
    assert store.observations("telemetry")["errors"].iloc[0] == ["fan"]
    assert store.observations("carbon")["kind"].iloc[0] == "average"
    limits = store.observations("limits")
    assert limits["valid_until"].iloc[0] == T0 + 60 * MIN
    assert_utc(limits["valid_until"])


def test_latest_is_by_timestamp_not_by_arrival(store: Store) -> None:
    store.put(noise(10, 50.0))
    store.put(noise(3, 45.0))  # arrives later, is older
    store.flush()
    latest = store.latest("noise", "r1")
    assert latest is not None and latest.laeq_dba == 50.0
    assert store.latest("noise", "nobody") is None


def test_price_upsert_later_publication_supersedes_and_as_of_hides_the_future(store: Store) -> None:
    store.put(price(0, 30.0, published_min=-5))
    store.put(price(0, 30.0, published_min=-5))  # duplicate
    store.put(price(15, 35.0, published_min=-5))
    store.flush()
    assert store.count("prices") == 2
    store.put(price(0, 31.5, published_min=20))  # correction
    store.put(price(0, 99.0, published_min=-10))  # older revision arrives late: ignored
    store.flush()
    frame = store.prices(with_published_at=True)
    assert list(frame.columns) == ["interval_start", "interval_end", "settlement_point", "market",
                                   "price_usd_mwh", "published_at"]
    for column in ("interval_start", "interval_end", "published_at"):
        assert_utc(frame[column])
    assert frame["price_usd_mwh"].tolist() == [31.5, 35.0]
    assert frame["interval_start"].is_monotonic_increasing
    as_of = store.prices(as_of=T0)
    assert as_of["interval_start"].tolist() == [T0 + 15 * MIN]
    assert len(store.prices(T0, T0 + 15 * MIN, settlement_point="HB_WEST", market="RT")) == 1
    assert store.prices(market="DA").empty


def test_price_without_published_at_uses_receipt_time_and_a_repeat_does_not_move_it(store: Store) -> None:
    store.put(price(0, 20.0), received_at=T0 - 2 * MIN)
    store.put(price(0, 20.0), received_at=T0 + 2 * MIN)
    store.flush()
    assert store.prices(with_published_at=True)["published_at"].tolist() == [T0 - 2 * MIN]


def test_dr_higher_modification_supersedes_lower_is_ignored(store: Store) -> None:
    store.put(dr(0, 500))
    store.flush()
    event, status = store.dr_event("ev1")
    assert status == "pending" and event.import_limit_kw == 500
    store.put(dr(2, 300))
    store.put(dr(1, 400))  # stale modification arrives late
    store.put(dr(2, 300))  # repeat
    store.flush()
    event, status = store.dr_event("ev1")
    assert (event.modification_number, event.import_limit_kw, status) == (2, 300, "modified")
    frame = store.dr_events()
    assert len(frame) == 1
    assert frame[["event_id", "modification_number", "status"]].iloc[0].tolist() == ["ev1", 2, "modified"]
    assert_utc(frame["start"])
    assert len(store.dr_events(active_at=T0 + 30 * MIN)) == 1
    assert store.dr_events(active_at=T0 + 60 * MIN).empty  # end is exclusive
    store.put(dr(3, cancelled=True))
    store.flush()
    assert store.dr_event("ev1")[1] == "cancelled"
    assert store.dr_events(active_at=T0 + 30 * MIN).empty
    assert store.dr_events(include_cancelled=False).empty


def test_dr_status_set_by_the_loop(store: Store) -> None:
    store.put(dr(0))
    store.set_dr_status("ev1", "active")
    store.flush()
    assert store.dr_event("ev1")[1] == "active"
    with pytest.raises(ValueError):
        store.set_dr_status("ev1", "exploded")


def test_rejections_are_aggregated_with_count_and_first_last_seen(store: Store) -> None:
    bad = Rejection("hashflex/s/in/noise/r1", "noise: laeq_dba: Input should be a valid number", '{"laeq_dba": "x"}')
    store.put_rejection(bad, received_at=T0)
    store.put_rejection(bad, received_at=T0 + MIN)
    store.put_rejection(Rejection("hashflex/s/in/x", "topic: unknown kind 'x'", "{}"), received_at=T0)
    store.flush()
    frame = store.rejections()
    row = frame[frame["topic"] == bad.topic].iloc[0]
    assert (row["count"], row["first_seen"], row["last_seen"]) == (2, T0, T0 + MIN)
    assert row["reason"] == bad.reason and len(frame) == 2


def test_schedules_setpoints_and_meta(store: Store) -> None:
    store.put_schedule({"intervals": [1, 2]}, created_at=T0)
    store.put_schedule({"intervals": [3]}, created_at=T0 + 5 * MIN)
    sp = SetpointMessage(miner_id="m1", mode="eco", power_target_kw=2.5, issued_at=T0, expires_at=T0 + 5 * MIN)
    store.put_setpoint(sp)
    store.put_setpoint(sp)
    store.set_meta("schema", {"version": 1})
    store.set_meta("schema", {"version": 2})
    store.flush()
    assert store.latest_schedule() == {"intervals": [3]}
    assert store.latest_schedule(as_of=T0 + MIN) == {"intervals": [1, 2]}
    assert store.schedules(T0, T0 + MIN)["schedule"].tolist() == [{"intervals": [1, 2]}]
    frame = store.setpoints(miner_id="m1")
    assert len(frame) == 1 and frame["power_target_kw"].iloc[0] == 2.5
    assert_utc(frame["expires_at"])
    assert store.get_meta("schema") == {"version": 2}
    assert store.get_meta("missing", "dflt") == "dflt"


def test_prune_deletes_only_what_is_older(store: Store) -> None:
    store.put(noise(0))
    store.put(noise(30))
    store.put(price(0, 10.0, published_min=-5))  # ends at +15 min
    store.put(price(30, 10.0, published_min=-5))
    store.put(dr(0))  # ends at +60 min
    store.put_schedule({"n": 1}, created_at=T0)
    store.put_schedule({"n": 2}, created_at=T0 + MIN)
    store.put_rejection(Rejection("t", "r", "p"), received_at=T0)
    deleted = store.prune(T0 + 20 * MIN)
    assert deleted == {"observations": 1, "prices": 1, "rejections": 1, "dr_events": 0, "schedules": 1,
                       "setpoints": 0, "load_forecasts": 0}
    assert store.observations("noise")["timestamp"].tolist() == [T0 + 30 * MIN]
    assert store.latest_schedule() == {"n": 2}
    deleted = store.prune(T0 + 24 * 60 * MIN)
    assert deleted["dr_events"] == 1 and deleted["schedules"] == 0  # the newest schedule is kept
    assert store.count("observations") == 0


def test_empty_queries_keep_canonical_columns_and_dtypes(store: Store) -> None:
    frame = store.observations("renewable")
    assert frame.empty and list(frame.columns)[:2] == ["timestamp", "key"]
    assert_utc(frame["timestamp"])
    prices = store.prices()
    assert prices.empty and list(prices.columns)[0] == "interval_start"
    assert_utc(prices["interval_start"])
    with pytest.raises(ValueError):
        store.observations("price")  # prices have their own table


def test_writes_from_threads_with_concurrent_reads(store: Store) -> None:
    errors: list[BaseException] = []

    def writer(receptor: str) -> None:
        for minute in range(500):
            store.put(noise(minute, receptor_id=receptor))

    def reader() -> None:
        try:
            for _ in range(50):
                store.observations("noise")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"r{i}",)) for i in range(4)]
    threads.append(threading.Thread(target=reader))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    store.flush()
    assert not errors
    assert store.count("observations") == 2000
    assert store.writer_stats()["errors"] == 0


def test_data_survives_reopen_and_close_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    first = Store(path)
    first.put(noise(0))
    first.close()  # commits pending writes
    first.close()
    with pytest.raises(RuntimeError):
        first.flush()
    with pytest.raises(RuntimeError):
        first.put(noise(1))
    with Store(path) as second:
        assert second.count("observations") == 1


def test_naive_times_are_refused_by_the_store_api(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.prices(datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        store.put(noise(0), received_at=datetime(2025, 1, 1))


def test_writer_survives_a_row_it_cannot_store(store: Store) -> None:
    store._queue.put(("obs", ("noise", "r1", 2**70, 1.0, "{}", 0)))  # int too large for SQLite
    store.put(noise(1))
    store.flush()
    assert store.writer_stats()["errors"] == 1
    assert store.observations("noise")["timestamp"].tolist() == [T0 + MIN]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals=st.lists(st.tuples(st.sampled_from(["r1", "r2"]), st.integers(0, 20), st.floats(20, 90)),
                         max_size=60))
def test_any_arrival_order_stores_each_identity_once_with_its_first_value(
    tmp_path_factory: pytest.TempPathFactory, arrivals: list[tuple[str, int, float]]
) -> None:
    expected: dict[tuple[str, datetime], float] = {}
    for receptor, minute, level in arrivals:
        expected.setdefault((receptor, T0 + minute * MIN), level)
    with Store(tmp_path_factory.mktemp("prop") / "p.db", linger_s=0) as store:
        for receptor, minute, level in arrivals:
            store.put(noise(minute, level, receptor_id=receptor))
        store.flush()
        frame = store.observations("noise")
    got = {(k, t): v for k, t, v in zip(frame["key"], frame["timestamp"], frame["laeq_dba"])}
    assert got == expected
    assert list(frame["timestamp"]) == sorted(frame["timestamp"])


def test_canonical_price_frame_round_trips_and_passes_the_contract(store: Store) -> None:
    starts = pd.date_range(T0, periods=4, freq="15min", unit="us")
    frame = pd.DataFrame({
        "interval_start": starts,
        "interval_end": starts + pd.Timedelta(minutes=15),
        "settlement_point": ["HB_WEST"] * 4,
        "market": ["RT"] * 4,
        "price_usd_mwh": [-20.0, 0.0, 35.5, 9000.0],
    })
    check_price_frame(frame)
    assert store.put_price_frame(frame, published_at=T0) == 4
    assert store.put_price_frame(frame, published_at=T0) == 4  # idempotent
    store.flush()
    stored = store.prices()
    check_price_frame(stored)
    pd.testing.assert_frame_equal(stored, frame, check_dtype=False)
    assert stored["interval_start"].dtype == frame["interval_start"].dtype
    assert store.count("prices") == 4
    check_price_frame(store.prices(T0 + 60 * MIN))  # empty result is canonical too
    with pytest.raises(ValueError):
        store.put_price_frame(frame.drop(columns="market"))


def test_after_commit_runs_once_preceding_writes_are_visible_to_other_connections(store: Store) -> None:
    seen: list[int] = []

    def check() -> None:
        other = sqlite3.connect(store.path)
        try:
            seen.append(other.execute("SELECT count(*) FROM observations").fetchone()[0])
        finally:
            other.close()

    store.put(noise(0))
    store.put(noise(1))
    store.after_commit(check)
    store.after_commit(lambda: 1 / 0)  # logged, does not stop the writer
    store.put(noise(2))
    store.flush()
    assert seen and seen[0] >= 2
    assert store.count("observations") == 3
