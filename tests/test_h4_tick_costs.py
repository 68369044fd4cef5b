"""Per-tick costs of the 5-minute backtest cut without changing any answer (issue 18, H4).

Each cheaper path is checked against the code it replaced (kept here as the reference, copied
from commit d987bd2) on random inputs: the noise caps per interval from a cached week of
interval caps and a cached block of local minutes, the monthly carbon budgets without strftime,
and the limits book's import limits and noise overrides without converting every stamp when
nothing in the book touches the horizon. The whole run is compared by
``optimization/benchmarks/backtest_identity.py`` (profit, counts, audit trail hashes).
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.optimize import build
from hashflex.profile import load_profile

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ noise caps


def _week_gather_reference(windows, minutes: int) -> np.ndarray:
    """Per start minute k: the minimum of the week's caps at k .. k+minutes-1 (mod a week)."""
    week = build._week_of_caps(windows)
    k = np.arange(7 * 1440)
    return week[(k[:, None] + np.arange(minutes)[None, :]) % (7 * 1440)].min(axis=1)


times = st.sampled_from(["00:00", "05:30", "06:00", "07:10", "21:00", "21:10", "22:00", "23:59"])


@SETTINGS
@given(windows=st.lists(st.tuples(times, times, st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat",
                                                                            "sun"]), max_size=3),
                                  st.floats(30, 60, allow_nan=False)), min_size=0, max_size=3),
       minutes=st.sampled_from([1, 5, 7, 15, 60]))
def test_week_of_interval_caps_is_the_gathered_minimum(windows, minutes) -> None:
    """Random windows (over midnight too, any days, none): the cached table equals the gather."""
    key = tuple((a, b, tuple(days), cap) for a, b, days, cap in windows)
    try:
        want = _week_gather_reference(key, minutes)
    except ValueError:  # a window the profile rejects (start == end): not a cap anybody can set
        return
    got = build._week_of_interval_caps(key, minutes)
    np.testing.assert_array_equal(got, want)
    assert not got.flags.writeable  # shared between ticks: nobody may change it


@SETTINGS
@given(around=st.sampled_from(["2024-03-10T07:00Z", "2024-11-03T06:00Z", "2020-02-10T06:00Z", "2025-12-31T20:00Z"]),
       shift_minutes=st.integers(-20000, 20000), periods=st.sampled_from([1, 2, 48, 288]),
       offset=st.sampled_from([0, 4, 14, 59]), tz=st.sampled_from(["America/Chicago", "UTC", "Asia/Kolkata"]),
       unit=st.sampled_from(["ns", "us", "s"]))
def test_local_wall_minutes_are_pandas_conversion(around, shift_minutes, periods, offset, tz, unit) -> None:
    """Any horizon (back and forth, so the cached block is rebuilt and reused), any unit: exactly
    pandas' conversion of each stamp plus ``offset`` minutes."""
    index = pd.date_range(pd.Timestamp(around) + pd.Timedelta(minutes=shift_minutes), periods=periods,
                          freq="5min").as_unit(unit)
    got = build.local_wall_minutes(index, tz, offset)
    moved = index + pd.Timedelta(minutes=offset)
    want = moved.tz_convert(tz).tz_localize(None).to_numpy().astype("datetime64[m]").astype(np.int64)
    np.testing.assert_array_equal(got, want)


def test_local_wall_minutes_refuse_what_they_cannot_read() -> None:
    """Off the minute or NaT: None (the caller converts with pandas), never a wrong minute."""
    off = pd.date_range("2024-01-01T00:00:30Z", periods=3, freq="5min")
    assert build.local_wall_minutes(off, "America/Chicago") is None
    nat = pd.DatetimeIndex([pd.Timestamp("2024-01-01T00:00Z"), pd.NaT])
    assert build.local_wall_minutes(nat, "America/Chicago") is None
    assert build.local_wall_minutes(pd.DatetimeIndex([], tz="UTC"), "America/Chicago") is None


# ------------------------------------------------------------------ monthly carbon budgets


def monthly_reference(profile, interval_start, emitted_this_month_kg=0.0, override_kg=None):
    """monthly_carbon_budgets as it was (strftime per stamp)."""
    budget_kg = build._tightest(profile.carbon.monthly_budget_kg, override_kg)
    if budget_kg is None:
        return ()
    months = interval_start.tz_convert(profile.tz).strftime("%Y-%m")
    out = []
    for i, month in enumerate(pd.unique(months)):
        used = emitted_this_month_kg if i == 0 else 0.0
        out.append((f"monthly {month}", np.asarray(months == month), max(budget_kg - used, 0.0)))
    return tuple(out)


@SETTINGS
@given(start_hours=st.integers(0, 24 * 800), periods=st.sampled_from([1, 12, 288, 3000]),
       minutes=st.sampled_from([5, 15, 60]), emitted=st.floats(0, 5e7), override=st.none() | st.floats(0, 1e8),
       name=st.sampled_from(["panhandle_120mw", "west_texas"]))
def test_monthly_budgets_are_the_strftime_ones(start_hours, periods, minutes, emitted, override, name) -> None:
    """Horizons across month ends (local midnight vs UTC), DST changes and years."""
    profile = load_profile(name)
    if profile.carbon.monthly_budget_kg is None and override is None:
        override = 1e6
    index = pd.date_range(pd.Timestamp("2023-12-25T00:00Z") + pd.Timedelta(hours=start_hours), periods=periods,
                          freq=f"{minutes}min")
    got = build.monthly_carbon_budgets(profile, index, emitted, override)
    want = monthly_reference(profile, index, emitted, override)
    assert [b.name for b in got] == [w[0] for w in want]
    for budget, (_, mask, remaining) in zip(got, want):
        np.testing.assert_array_equal(budget.mask, mask)
        assert budget.remaining_kg == remaining


def test_a_horizon_over_a_month_end_has_two_monthly_budgets() -> None:
    """Local months: 2020-02-29 23:00 CST is already 2020-03-01 UTC, still February locally."""
    profile = load_profile("panhandle_120mw")
    index = pd.date_range(pd.Timestamp("2020-02-29T22:00", tz=profile.tz), periods=48, freq="5min")
    budgets = build.monthly_carbon_budgets(profile, index, 100.0, 1e6)
    assert [b.name for b in budgets] == ["monthly 2020-02", "monthly 2020-03"]
    assert budgets[0].mask.sum() == 24 and budgets[1].mask.sum() == 24
    assert budgets[0].remaining_kg == 1e6 - 100.0 and budgets[1].remaining_kg == 1e6


# ------------------------------------------------------------------ the limits book


def _book():
    from hashflex.control.limits import LimitsBook

    return LimitsBook(load_profile("panhandle_120mw"))


def import_limits_reference(book, interval_start, interval):
    """import_limits_over as it was: every stamp converted, every event, limit and hold tried."""
    from hashflex.control.limits_values import limits_source

    starts = [pd.Timestamp(t).to_pydatetime() for t in interval_start]
    limits = np.full(len(starts), math.inf)
    labels = [""] * len(starts)
    for event_id, event in book.dr._events.items():
        for k, start in enumerate(starts):
            if event.limit_kw < limits[k] and event.in_force(start, start + interval):
                limits[k], labels[k] = event.limit_kw, f"DR:{event_id}"
    candidates = [(h.import_limit_kw, limits_source(i), h) for (i, p), h in book.manager.items()
                  if p == "import" and h.import_limit_kw is not None]
    candidates += [(h.limit_kw, f"hold:{h.key}", h) for h in book.holds.values()]
    for value, label, item in candidates:
        for k, start in enumerate(starts):
            if value < limits[k] and item.in_force(start, start + interval):
                limits[k], labels[k] = value, label
    return limits, labels


@SETTINGS
@given(events=st.lists(st.tuples(st.integers(-600, 2000), st.none() | st.integers(1, 600), st.integers(0, 5000),
                                 st.booleans()), max_size=4),
       holds=st.lists(st.tuples(st.integers(-600, 2000), st.none() | st.integers(1, 600), st.integers(0, 5000)),
                      max_size=3),
       horizon_shift=st.integers(-120, 120), periods=st.sampled_from([1, 2, 288]))
def test_import_limits_over_are_the_per_stamp_rule(events, holds, horizon_shift, periods) -> None:
    """DR events (some cancelled), manager import limits before, inside, after and around the
    horizon: the same limits and labels as trying every stamp."""
    from hashflex.control.dr import PENDING, _Event
    from hashflex.control.limits_values import ManagerLimit
    from hashflex.messages import DREventMessage

    book = _book()
    t0 = pd.Timestamp("2020-02-10T06:00Z")
    for n, (start_min, length_min, limit_kw, cancel) in enumerate(events):
        start = (t0 + pd.Timedelta(minutes=start_min)).to_pydatetime()
        end = None if length_min is None else start + timedelta(minutes=length_min)
        msg = DREventMessage(event_id=f"e{n}", modification_number=0, program="ERS-10", issuer="test", start=start,
                             end=end, import_limit_kw=float(limit_kw), cancelled=cancel)
        book.dr._events[f"e{n}"] = _Event(msg, PENDING, float(limit_kw))  # as DRBook.apply keeps it
    for n, (start_min, length_min, limit_kw) in enumerate(holds):
        issued = (t0 + pd.Timedelta(minutes=start_min)).to_pydatetime()
        book.manager[(f"mgr{n}", "import")] = ManagerLimit(
            issuer=f"mgr{n}", part="import", change_id=f"c{n}", issued_at=issued,
            valid_until=None if length_min is None else issued + timedelta(minutes=length_min),
            import_limit_kw=float(limit_kw))
    index = pd.date_range(t0 + pd.Timedelta(minutes=5 * horizon_shift), periods=periods, freq="5min")
    got = book.import_limits_over(index, timedelta(minutes=5))
    want = import_limits_reference(book, index, timedelta(minutes=5))
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]
    # the DR book alone, by index and by list of datetimes, default interval too
    for interval in (timedelta(minutes=5), None):
        by_index = book.dr.limits_over(index, interval)
        by_list = book.dr.limits_over([t.to_pydatetime() for t in index], interval)
        np.testing.assert_array_equal(by_index[0], by_list[0])
        assert by_index[1] == by_list[1]


@pytest.mark.parametrize("periods", [1, 288])
@pytest.mark.parametrize("edge_min", [-7, -5, -3, 0, 2, 5])
def test_a_window_at_the_horizon_edges_binds_as_per_stamp(periods, edge_min) -> None:
    """A DR event and a manager's limit starting inside the last interval (after its start) or
    ending inside the first: the whole interval binds (strictest in interval), as per stamp."""
    from hashflex.control.dr import PENDING, _Event
    from hashflex.control.limits_values import ManagerLimit
    from hashflex.messages import DREventMessage

    index = pd.date_range("2020-02-10T06:00Z", periods=periods, freq="5min")
    last = index[-1].to_pydatetime()
    for kind in ("dr", "manager", "dr-end", "manager-end"):
        book = _book()
        if kind.startswith("dr"):
            start = (last + timedelta(minutes=edge_min)) if kind == "dr" else index[0].to_pydatetime() - timedelta(hours=1)
            end = None if kind == "dr" else index[0].to_pydatetime() + timedelta(minutes=edge_min)
            if end is not None and end <= start:
                continue
            msg = DREventMessage(event_id="edge", modification_number=0, program="ERS-10", issuer="test", start=start,
                                 end=end, import_limit_kw=1000.0)
            book.dr._events["edge"] = _Event(msg, PENDING, 1000.0)
        else:
            issued = (last + timedelta(minutes=edge_min)) if kind == "manager" else index[0].to_pydatetime() - timedelta(hours=1)
            until = None if kind == "manager" else index[0].to_pydatetime() + timedelta(minutes=edge_min)
            if until is not None and until <= issued:
                continue
            book.manager[("m", "import")] = ManagerLimit(issuer="m", part="import", change_id="c", issued_at=issued,
                                                         valid_until=until, import_limit_kw=1000.0)
        got = book.import_limits_over(index, timedelta(minutes=5))
        want = import_limits_reference(book, index, timedelta(minutes=5))
        np.testing.assert_array_equal(got[0], want[0], err_msg=kind)
        assert got[1] == want[1], kind
        if kind == "dr" and 0 <= edge_min < 5:  # it starts inside the last interval: that interval binds
            assert got[0][-1] == 1000.0


def test_naive_stamps_are_refused_by_either_path() -> None:
    book = _book()
    naive = pd.date_range("2020-02-10T06:00", periods=3, freq="5min")
    with pytest.raises(ValueError, match="tz-aware"):
        book.dr.limits_over(naive, timedelta(minutes=5))
    with pytest.raises(ValueError, match="tz-aware"):
        book.import_limits_over(naive, timedelta(minutes=5))


def test_an_empty_book_binds_nothing_and_overrides_no_cap() -> None:
    book = _book()
    index = pd.date_range("2020-02-10T06:00Z", periods=288, freq="5min")
    limits, labels = book.import_limits_over(index, timedelta(minutes=5))
    assert np.isinf(limits).all() and labels == [""] * 288
    assert book.noise_caps_over(index, timedelta(minutes=5)) == {}


# ------------------------------------------------------------------ the paced audit recorder


def _trail(db) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT seq, at_utc, kind, payload, prev_hash, hash FROM audit_log ORDER BY seq").fetchall()


def test_a_paced_recorder_appends_the_same_trail_only_when_released(tmp_path) -> None:
    """Held until release (nothing in the database before), then the same rows, payloads and
    hashes as a recorder appending at once; flush and close release what is still held."""
    from hashflex.control.records import AuditRecorder
    from hashflex.store import Store

    t0 = pd.Timestamp("2020-02-10T06:00Z").to_pydatetime()
    entries = [("measurement", {"interval": k, "load_kw": 100.0 + k}, t0 + timedelta(minutes=5 * k)) for k in range(7)]
    for paced in (False, True):
        with Store(tmp_path / f"{paced}.db") as store:
            recorder = AuditRecorder(store, paced=paced)
            for kind, payload, at in entries[:3]:
                recorder.record(kind, payload, at)
            if paced:
                import time

                time.sleep(0.3)  # the thread would have appended by now if it had them
                assert not (tmp_path / f"{paced}.db").exists() or not _has_audit(tmp_path / f"{paced}.db")
                recorder.release()
            for kind, payload, at in entries[3:]:
                recorder.record(kind, payload, at)
            recorder.flush()  # releases the last four
            recorder.close()
    assert len(_trail(tmp_path / "True.db")) == len(entries)
    assert _trail(tmp_path / "True.db") == _trail(tmp_path / "False.db")


def _has_audit(db) -> bool:
    import sqlite3

    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return "audit_log" in tables and conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0] > 0


# ------------------------------------------------------------------ the import limit per interval


def combined_reference(interconnection_kw, cp, external, external_sources):
    """The per-interval loop of problem_from_profile before (copied)."""
    T = len(external)
    limit = np.full(T, interconnection_kw)
    source = ["import limit"] * T
    for t in range(T):
        if cp[t] < limit[t]:
            limit[t], source[t] = cp[t], "4CP window"
        if external[t] < limit[t]:
            limit[t], source[t] = external[t], external_sources[t]
    return limit, source


limit_values = st.sampled_from([0.0, 500.0, 1000.0, 1e5, 125000.0, 2e5, math.inf, math.nan])


@SETTINGS
@given(cp=st.lists(limit_values, min_size=1, max_size=30), data=st.data(),
       interconnection=st.sampled_from([125000.0, 1000.0, 0.0]))
def test_combined_import_limits_are_the_loops(cp, data, interconnection) -> None:
    """Ties, NaN, inf and every order of the three limits: the same kW and labels."""
    from hashflex.optimize.problem import LIMIT_SOURCE_INTERCONNECTION

    assert LIMIT_SOURCE_INTERCONNECTION == "import limit"
    T = len(cp)
    external = data.draw(st.lists(limit_values, min_size=T, max_size=T))
    labels = data.draw(st.lists(st.sampled_from(["DR:e1", "limits:ops", "hold:x", "AS:ECRS:d"]), min_size=T,
                                max_size=T))
    got = build.combined_import_limits(interconnection, np.array(cp), np.array(external), labels)
    want = combined_reference(interconnection, np.array(cp), np.array(external), labels)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]


# ------------------------------------------------------------------ the prefetch helper's side work


def test_the_prefetch_helper_runs_its_side_work_and_survives_its_failure() -> None:
    """``first`` runs on the helper before the forecast (after the grace); one that raises is
    logged and the prefetched forecast is still the forecast of the call."""
    import threading

    from hashflex.backtest.closed_loop import SnapshotForecaster
    from hashflex.backtest.runner import build_actuals, load_prices
    from hashflex.data import bundled_path

    profile = load_profile("west_texas")
    prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv")])
    begin = pd.Timestamp("2020-02-10", tz=profile.tz)
    actuals = build_actuals(profile, prices, begin, begin + pd.Timedelta(hours=6))
    fresh, helper = SnapshotForecaster(profile, actuals), SnapshotForecaster(profile, actuals)
    t = actuals.index[3]
    seen: list[str] = []
    try:
        helper.prefetch(t.to_pydatetime(), t, 96, delay_s=0.01, first=lambda: seen.append(threading.current_thread().name))
        got = helper(t.to_pydatetime(), t, 96)
        assert helper.prefetch_hits == 1 and len(seen) == 1 and seen[0] != threading.current_thread().name

        def fails() -> None:
            raise RuntimeError("side work failed (test)")

        helper.prefetch(t.to_pydatetime(), t, 96, first=fails)
        again = helper(t.to_pydatetime(), t, 96)
        assert helper.prefetch_hits == 2
        want = fresh(t.to_pydatetime(), t, 96)
        for forecast in (got, again):
            np.testing.assert_array_equal(forecast.price_usd_mwh, want.price_usd_mwh)
        helper.prefetch("not a time", t, 96, first=lambda: seen.append("no prefetch"))  # still run, at once
        assert seen[-1] == "no prefetch"
    finally:
        helper.close()
