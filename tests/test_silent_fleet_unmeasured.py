"""A fleet that sent no telemetry is not "metered" and is reported degraded (issue 15, H9; second
newcomer findings 2 and 7a).

The site has no meter: its load is the telemetry sum. After a restart with the fleet silent (simulator
paused), the ``measurement`` record said ``import_kw 0.0`` with ``source: "metered"``, the report row
``import_kw 0.0``, and /status ``reporting_miners 0, degraded False`` (/healthz 200): a miner that never
reported since the process started was not counted (H7). Now: an interval in which no miner reported
is recorded with import, load, hashrate, revenue and cost null and ``source: "unmeasured"`` (the
report row shows them null, as an interval without a price is null-costed); and once the process has
run longer than the staleness window (600 s), running miners that never reported count as stale.
Finding 7a (a partial first interval after a restart) is guarded: coverage is judged over the part
of the interval the process covered (H7 already did).

Real parts: the site's loop, the real audit recorder into a real store, the report from that trail,
/status and /healthz over real HTTP on 127.0.0.1. Profile ``test_as_hold_metered``'s small hydro site
(10 blocks, 3 running under an RRS award of 297 kW).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from as_support import MIN, NOW, QUARTER, audit_payloads, award, flat_prices
from test_as_hold_metered import hydro_profile_yaml_small
from test_telemetry_coverage import (
    SEC,
    _close,
    _hydro,
    _loop,
    _send,
    _status_and_healthz,
)

from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder, IntervalMeter
from hashflex.control.solver import SolveRunner
from hashflex.plausibility.bounds import STALENESS_S
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store

WINDOW_S = STALENESS_S["telemetry"]


def test_an_interval_without_any_telemetry_is_unmeasured_not_a_metered_zero(tmp_path: Path) -> None:
    """No miner reports in 17:00-17:15: the record says null import/load/hashrate/revenue, source
    ``unmeasured``; the report's row shows them null, not 0.0. Failed before: import_kw 0.0,
    load_kw 0.0, source ``metered``; the report row import_kw 0.0."""
    db = tmp_path / "silent.db"
    store, recorder, loop = _loop(db, 297.0)
    loop.tick(NOW + QUARTER)
    _close(store, recorder)
    (measured,) = audit_payloads(db, "measurement")
    assert measured["source"] == "unmeasured"
    for key in ("import_kw", "load_kw", "hashrate_th_s", "revenue_usd", "energy_cost_usd"):
        assert measured[key] is None, (key, measured[key])
    assert measured["reserve_hold_basis"] == "commanded"  # the hold as before: counted as commanded
    report = build_report(db, "2024-06-03T17:00Z", "2024-06-03T17:15Z")
    (row,) = report["intervals"]
    assert row["import_kw"] is None and row["load_kw"] is None and row["hashrate_th_s"] is None, row
    # Nothing measured, nothing curtailed to explain: no cause is claimed for an unknown load.
    assert row["curtailed_kw"] is None and row["curtailment_cause"] is None, row


def test_an_interval_with_telemetry_is_still_metered(tmp_path: Path) -> None:
    """The guard: every miner reports every 4 minutes: source ``metered``, import = the sum (3 × 100 +
    7 × 1 kW, no renewable)."""
    db = tmp_path / "steady.db"
    store, recorder, loop = _loop(db, 297.0)
    on, off = _hydro(loop)
    for k in range(4):
        for miner_id in on + off:
            _send(loop, miner_id, 100.0 if miner_id in on else 1.0, NOW + SEC + 4 * k * MIN)
    loop.tick(NOW + QUARTER)
    _close(store, recorder)
    (measured,) = audit_payloads(db, "measurement")
    assert measured["source"] == "metered"
    assert measured["import_kw"] == 3 * 100.0 + 7 * 1.0 and measured["load_kw"] == 307.0


def test_a_fleet_silent_since_start_is_stale_once_the_process_is_older_than_the_window(tmp_path: Path) -> None:
    """The process starts at 17:00 (first tick), no miner ever reports. At 17:05 (younger than the
    600 s window) nothing is stale yet: the miners may not have had a chance to report. At 17:11 the
    3 running miners count as stale (never reported), /status is not healthy and /healthz answers 503.
    Failed before: stale_miners 0, degraded False, /healthz 200."""
    db = tmp_path / "never.db"
    store, recorder, loop = _loop(db, 297.0)
    on, _ = _hydro(loop)
    assert len(on) == 3
    young = loop.status(NOW + 5 * MIN)["telemetry"]
    assert young["stale_miners"] == 0 and not young["degraded"]
    at = NOW + 11 * MIN
    assert (at - NOW).total_seconds() > WINDOW_S
    code, status, healthz, causes = _status_and_healthz(loop, at, store, recorder)
    assert code == 200
    telemetry = status["telemetry"]
    assert telemetry["reporting_miners"] == 0
    assert telemetry["stale_miners"] == 3 and telemetry["stale_running_miners"] == 3
    assert telemetry["stale_sample"] == sorted(on)
    assert telemetry["degraded"] is True and status["healthy"] is False
    assert any(c.startswith("telemetry: 3 of 10 miners silent for more than 600 s") for c in status["unhealthy_causes"])
    assert healthz == 503, causes


def test_a_running_miner_that_never_reported_counts_beside_ones_that_went_silent(tmp_path: Path) -> None:
    """At 17:11: one running miner never reported, the rest reported at 17:00:01 and then the asleep
    ones kept reporting; the two other running ones went silent: 3 stale, each counted once."""
    db = tmp_path / "mixed.db"
    store, recorder, loop = _loop(db, 297.0)
    on, off = _hydro(loop)
    for k in range(3):
        for miner_id in on[1:] + off:
            if k == 0 or miner_id in off:
                _send(loop, miner_id, 100.0 if miner_id in on else 1.0, NOW + SEC + 4 * k * MIN)
    status = loop.status(NOW + 11 * MIN + SEC)
    _close(store, recorder)
    telemetry = status["telemetry"]
    assert telemetry["reporting_miners"] == 9
    assert telemetry["stale_sample"] == sorted(on) and telemetry["stale_miners"] == 3


def test_a_partial_first_interval_judges_coverage_over_the_part_the_process_covered(tmp_path: Path) -> None:
    """Finding 7a: the process starts (first tick) at 17:03 in the 17:00 interval. One running block
    reports its 1 kW idle draw once at 17:03:01 and is then silent; the other two report 100 kW every
    4 minutes. Its report covers [17:03, 17:13:01] of the 720 s the process covered (not of the whole
    900 s interval): short 99 × 601/720 kW, basis ``partly metered``, the record over 17:03-17:15. This
    passed before (H7 already judged the covered part); it guards the rule."""
    db = tmp_path / "restart.db"
    start = NOW + 3 * MIN
    profile = parse_profile(hydro_profile_yaml_small(), source="test")
    store = Store(db)
    recorder = AuditRecorder(store)
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, flat_prices(start="2024-06-01T00:00Z")),
                       driver=SimulatedFleet(profile), solver=SolveRunner(inline=True), store=store,
                       recorder=recorder, meter=IntervalMeter())
    assert loop.handle_as_award(award("rrs", "RRS", 297.0), start).status == "accepted"
    loop.tick(start)
    on, _ = _hydro(loop)
    assert len(on) == 3
    _send(loop, on[0], 1.0, start + SEC)
    for k in range(3):
        for miner_id in on[1:]:
            _send(loop, miner_id, 100.0, start + SEC + 4 * k * MIN)
    loop.tick(NOW + QUARTER)
    _close(store, recorder)
    (measured,) = audit_payloads(db, "measurement")
    assert measured["covered_s"] == 720.0 and measured["source"] == "metered"
    (short,) = audit_payloads(db, "reserve_hold_short")
    assert short["reserve_hold_basis"] == "partly metered" and short["reserve_unreported_running_units"] == 1
    assert short["short_kw"] == pytest.approx(99.0 * 601.0 / 720.0)
