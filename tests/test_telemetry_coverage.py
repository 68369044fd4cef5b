"""A miner silent for most of an interval is not "metered" for it; silent miners show in /status (issue 15, H7).

Newcomer finding (nc1, finding 2): the simulated miners were paused (SIGSTOP) right after one report at
the start of an interval; the reserve-hold record still said basis ``metered`` with
``reserve_unreported_running_units`` 0 (one second of telemetry stood for 15 minutes), and ``/status``
stayed ``healthy: true`` with no sign of 570 of 720 miners silent, though the telemetry staleness
window is 600 s.

The rule now: a miner's reports cover the interval from its first report less the allowance to its
last report plus the allowance (``IntervalMeter.report_allowance_s``, the telemetry staleness window,
600 s), clipped to the interval; the uncovered part counts as unreported (as commanded if running, 0
if not), and a miner with more than ``control.ancillary.UNCOVERED_MATERIAL_FRACTION`` (1/15, 60 s of 15 min) uncovered counts in
``reserve_unreported_running_units`` (basis ``partly metered``). ``/status`` counts the miners whose
last telemetry is older than the window (``telemetry``), and ``healthy`` is False when they are
more than a tenth of the fleet.

Loop tests: a real ``ControlLoop`` with inline HiGHS, a ``SimulatedFleet``, the daemon's
``IntervalMeter`` fed by ``on_message``, the real audit recorder into a real store, /status and
/healthz over real HTTP from a ``StatusServer`` on 127.0.0.1; the SYNTHETIC small hydro site of
``test_as_hold_metered`` (10 blocks of 100 kW, 1 kW asleep; a running block sheds 99 kW).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from as_support import MIN, NOW, QUARTER, audit_payloads, award, flat_prices
from test_as_hold_metered import hydro_profile_yaml_small

from hashflex.control.ancillary import (
    UNCOVERED_MATERIAL_FRACTION,
    metered_group_sheddable_kw,
)
from hashflex.control.http import StatusServer
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder, IntervalMeter
from hashflex.control.solver import SolveRunner
from hashflex.messages import TelemetryMessage
from hashflex.plausibility.bounds import STALENESS_S
from hashflex.profile import parse_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store

BLOCK_SHED_KW = 100.0 - 1.0
SEC = timedelta(seconds=1)
START, END = pd.Timestamp(NOW), pd.Timestamp(NOW + QUARTER)


# ------------------------------------------------------------------------------------------------ meter


def test_the_meter_says_how_much_of_the_interval_each_miners_reports_cover() -> None:
    """m1 reports once, 1 s into the interval, then goes silent: covered [17:00, 17:10:01], 601 of
    900 s. m2 reports every 5 minutes from 17:02 (17:02-17:12): covered in full. m3 first reports at
    17:12 (a miner that came back): covered from 17:02. Failed before: ``summary`` took no interval
    and said nothing of coverage (m1 counted for the whole interval)."""
    meter = IntervalMeter()
    assert meter.report_allowance_s == STALENESS_S["telemetry"] == 600.0
    meter.telemetry("m1", 100.0, 1.0, at=NOW + SEC)
    for k in range(3):
        meter.telemetry("m2", 50.0, 1.0, at=NOW + (2 + 5 * k) * MIN)
    meter.telemetry("m3", 20.0, 1.0, at=NOW + 12 * MIN)
    summary = meter.summary({}, start=START, end=END)
    covered = summary["miner_covered_fraction"]
    assert covered["m1"] == pytest.approx(601.0 / 900.0)
    assert covered["m2"] == pytest.approx(1.0)
    assert covered["m3"] == pytest.approx(780.0 / 900.0)
    assert summary["telemetry_uncovered_miners"] == 2  # m1 (299 s) and m3 (120 s) beyond 1/15 (60 s)
    assert summary["miner_power_kw"] == {"m1": 100.0, "m2": 50.0, "m3": 20.0}  # the means are unchanged
    assert summary["load_kw"] == pytest.approx(170.0)


def test_without_an_interval_or_report_times_the_meter_claims_no_gap() -> None:
    """Untimed reports (a direct caller) and ``summary`` without an interval: every reporter counts as
    covering the interval (the rule before H7), so nothing is invented."""
    meter = IntervalMeter()
    meter.telemetry("m1", 3.0, 1.0)
    assert meter.summary({})["miner_covered_fraction"] == {"m1": 1.0}
    assert meter.summary({}, start=START, end=END)["miner_covered_fraction"] == {"m1": 1.0}
    meter.telemetry("m2", 3.0, 1.0, at=NOW)
    assert meter.summary({})["miner_covered_fraction"]["m2"] == 1.0


def test_a_group_counts_the_uncovered_part_of_a_miner_as_commanded() -> None:
    """Three running miners (mode 0: 99 kW above idle), one asleep. Covered fractions 1, 2/3, 0.5, and
    the asleep one 0.5. Miner 1 reported 1 kW (its idle: 0 above idle) for its covered two thirds:
    2/3 × 0 + 1/3 × 99 = 33 kW; miner 2 reported 100 kW for half: 99 kW; the asleep one 0 either way.
    Unreported (more than 1/15 uncovered): miners 1 and 2 (running), not the asleep one. Failed before: no
    ``covered`` argument."""
    mode = np.array([0, 0, 0, -1])
    available = np.ones(4, dtype=bool)
    reported = np.array([100.0, 1.0, 100.0, 1.0])
    covered = np.array([1.0, 2.0 / 3.0, 0.5, 0.5])
    kw, unreported = metered_group_sheddable_kw(mode, available, reported, [99.0], 1.0, covered=covered)
    assert kw == pytest.approx(99.0 + 33.0 + 99.0)
    assert unreported == 2
    kw_all, unreported_all = metered_group_sheddable_kw(mode, available, reported, [99.0], 1.0)
    assert kw_all == pytest.approx(99.0 + 0.0 + 99.0) and unreported_all == 0  # covered in full: as before


# ------------------------------------------------------------------------------------------------ the loop


def _loop(db: Path, reserve_kw: float):
    profile = parse_profile(hydro_profile_yaml_small(), source="test")
    store = Store(db)
    recorder = AuditRecorder(store)
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, flat_prices(start="2024-06-01T00:00Z")),
                       driver=SimulatedFleet(profile), solver=SolveRunner(inline=True), store=store,
                       recorder=recorder, meter=IntervalMeter())
    assert loop.handle_as_award(award("rrs", "RRS", reserve_kw), NOW).status == "accepted"
    loop.tick(NOW)
    return store, recorder, loop


def _send(loop: ControlLoop, miner_id: str, kw: float, at: datetime) -> None:
    miner = loop.fleet.miners[miner_id]
    loop.on_message(TelemetryMessage(miner_id=miner_id, power_kw=kw, hashrate_th_s=0.0,
                                     mode=miner.mode if miner.running else "sleep", temperature_c=40.0,
                                     timestamp=at), at)


def _close(store: Store, recorder: AuditRecorder) -> None:
    recorder.flush()
    recorder.close()
    store.close()


def _hydro(loop: ControlLoop) -> tuple[list[str], list[str]]:
    miners = sorted(loop.fleet.in_group("hydro"), key=lambda m: m.miner_id)
    return [m.miner_id for m in miners if m.running], [m.miner_id for m in miners if not m.running]


def test_miners_silent_after_one_report_are_partly_metered_not_metered(tmp_path: Path) -> None:
    """The newcomer's case: RRS 297 kW, 3 blocks run. Every miner reports at 17:00:01; then two
    running ones and the asleep ones keep reporting every 4 minutes, the third running one is silent
    for the rest of the interval (paused). Its 100 kW holds for 601 s, then it counts as commanded:
    held 297 kW either way, but the record says ``partly metered`` with 1 unit unreported. Failed
    before: basis ``metered``, ``reserve_unreported_running_units`` 0."""
    db = tmp_path / "paused.db"
    store, recorder, loop = _loop(db, 297.0)
    on, off = _hydro(loop)
    assert len(on) == 3
    for k in range(4):
        at = NOW + SEC + 4 * k * MIN
        for miner_id in on + off:
            if k == 0 or miner_id != on[2]:
                _send(loop, miner_id, 100.0 if miner_id in on else 1.0, at)
    loop.tick(NOW + QUARTER)
    _close(store, recorder)
    (measured,) = audit_payloads(db, "measurement")
    assert measured["reserve_hold_basis"] == "partly metered"
    assert measured["reserve_unreported_running_units"] == 1
    assert measured["reserve_sheddable_metered_group_kw"] == {"hydro": pytest.approx(3 * BLOCK_SHED_KW)}
    assert audit_payloads(db, "reserve_hold_short") == []


def test_a_miner_that_reported_idle_then_went_silent_is_short_only_for_the_covered_part(tmp_path: Path) -> None:
    """RRS 297 kW, 3 blocks run. One running block reports its 1 kW idle draw once at 17:00:01 and is
    then silent; the other two report 100 kW every 4 minutes. It held nothing for the 601 s its report
    covers and, unreported, counts as commanded for the other 299 s: held 198 + 99 × 299/900 kW,
    short 99 × 601/900 = 66.1 kW, basis ``partly metered``. Failed before: short 99 kW for the whole
    interval, basis ``metered``."""
    db = tmp_path / "idle_then_silent.db"
    store, recorder, loop = _loop(db, 297.0)
    on, _ = _hydro(loop)
    assert len(on) == 3
    _send(loop, on[0], 1.0, NOW + SEC)
    for k in range(4):
        for miner_id in on[1:]:
            _send(loop, miner_id, 100.0, NOW + SEC + 4 * k * MIN)
    loop.tick(NOW + QUARTER)
    _close(store, recorder)
    (short,) = audit_payloads(db, "reserve_hold_short")
    assert short["short_kw"] == pytest.approx(BLOCK_SHED_KW * 601.0 / 900.0)
    assert short["reserve_sheddable_kw"] == {"hydro": pytest.approx(2 * BLOCK_SHED_KW + BLOCK_SHED_KW * 299.0 / 900.0)}
    assert short["reserve_hold_basis"] == "partly metered" and short["reserve_unreported_running_units"] == 1


def test_a_steady_reporter_is_still_metered(tmp_path: Path) -> None:
    """Every miner reports every 4 minutes from 17:01 (last at 17:13): covered in full, basis
    ``metered``, nothing unreported (the 60 s materiality, the 600 s allowance)."""
    db = tmp_path / "steady.db"
    store, recorder, loop = _loop(db, 297.0)
    on, off = _hydro(loop)
    for k in range(4):
        for miner_id in on + off:
            _send(loop, miner_id, 100.0 if miner_id in on else 1.0, NOW + (1 + 4 * k) * MIN)
    loop.tick(NOW + QUARTER)
    _close(store, recorder)
    (measured,) = audit_payloads(db, "measurement")
    assert measured["reserve_hold_basis"] == "metered" and measured["reserve_unreported_running_units"] == 0
    assert UNCOVERED_MATERIAL_FRACTION * 900.0 == pytest.approx(60.0)


# ------------------------------------------------------------------------------------------------ /status


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read().decode() or "null")
    except urllib.error.HTTPError as error:  # /healthz answers 503 with the causes
        body = error.read().decode()
        return error.code, (json.loads(body) if body.startswith(("{", "[")) else {"text": body})


def _status_and_healthz(loop: ControlLoop, at: datetime, store: Store,
                        recorder: AuditRecorder) -> tuple[int, dict, int, dict]:
    """GET /status and /healthz over real HTTP on 127.0.0.1 with the clock at ``at``, then close the
    store: (status code, status, healthz code, healthz body)."""
    server = StatusServer(loop.status, lambda: at, host="127.0.0.1", port=0)
    server.start()
    try:
        code, status = _get(f"{server.url}status")
        healthz, causes = _get(f"{server.url}healthz")
    finally:
        server.stop()
        _close(store, recorder)
    return code, status, healthz, causes


def test_status_counts_miners_whose_telemetry_is_stale_and_says_degraded(tmp_path: Path) -> None:
    """All 10 miners report at 17:00:01; from then on 7 are silent, 3 keep reporting every 4 minutes.
    At 17:12 (11 minutes on, past the 600 s window) /status over real HTTP counts 7 stale miners
    (2 of them running, as commanded) and is not healthy: more than a tenth of the fleet silent;
    /healthz answers 503 naming the cause. The silent miners are not planned unavailable (they may
    still run). Failed before: ``healthy: true``, ``miners_unavailable {}``, no count."""
    db = tmp_path / "status.db"
    store, recorder, loop = _loop(db, 297.0)
    on, off = _hydro(loop)
    talking = set(on[:1] + off[:2])
    for k in range(4):
        for miner_id in on + off:
            if k == 0 or miner_id in talking:
                _send(loop, miner_id, 100.0 if miner_id in on else 1.0, NOW + SEC + 4 * k * MIN)
    at = NOW + 12 * MIN
    fresh = loop.status(NOW + 5 * MIN)
    assert fresh["telemetry"]["stale_miners"] == 0 and fresh["healthy"], fresh["unhealthy_causes"]
    code, status, healthz, causes = _status_and_healthz(loop, at, store, recorder)
    assert code == 200
    telemetry = status["telemetry"]
    assert telemetry["max_age_s"] == STALENESS_S["telemetry"]
    assert telemetry["stale_miners"] == 7
    assert telemetry["stale_running_miners"] == 2
    assert telemetry["stale_sample"] == sorted(set(on + off) - talking)
    assert status["healthy"] is False
    assert any(c.startswith("telemetry: 7 of 10 miners silent for more than 600 s") for c in status["unhealthy_causes"])
    assert healthz == 503, causes
    assert status["miners_unavailable"] == {}, "silence alone does not plan a miner unavailable"
    assert all(loop.fleet.miners[m].available for m in on + off)


def test_one_stale_miner_is_counted_but_not_a_degraded_site(tmp_path: Path) -> None:
    """One of 10 silent (a tenth, not more): counted in /status, ``healthy`` stays True."""
    db = tmp_path / "one.db"
    store, recorder, loop = _loop(db, 297.0)
    on, off = _hydro(loop)
    for k in range(4):
        for miner_id in on + off:
            if k == 0 or miner_id != off[0]:
                _send(loop, miner_id, 100.0 if miner_id in on else 1.0, NOW + SEC + 4 * k * MIN)
    status = loop.status(NOW + 12 * MIN)
    _close(store, recorder)
    assert status["telemetry"]["stale_miners"] == 1 and status["telemetry"]["stale_running_miners"] == 0
    assert status["telemetry"]["stale_sample"] == [off[0]]
    assert status["healthy"], status["unhealthy_causes"]
