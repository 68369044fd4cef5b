"""The reserve obligation and the reserve held, time-weighted over the interval (issue 15, H6).

A QSE/auditor newcomer found (their findings 1 and 3): the report subtracted from the award, for the
whole interval, the MW of every deployment in force at any moment of it (800 + 400 + 100 + 500 kW of
deployments that ran one after another, one for 9 s), so the obligation went negative and a
clawback the loop recorded vanished; and the loop's hold check took the commanded fleet at the
interval's END (684.6 kW held while the metered mean was 819.9 kW because more units ran before
16:05) against the full award although RRS deployments covered parts of the interval. One rule now
(``control.ancillary``): obligation = time-weighted mean of (award in force − deployed MW in force)+,
held = the commanded sheddable load time-weighted over the interval (capped by the metered figure),
allocated by ``reserve_hold_shortfalls``; the loop, the report and the backtest use it.

Sites: the SYNTHETIC small hydro site of ``test_as_hold_metered`` (10 blocks of 100 kW, 1 kW asleep:
a running block sheds 99 kW; RRS qualified 0.5 MW; energy at $200/MWh, so only an award keeps a
block running; awards at $20/MW-h), real loop, real HiGHS, real store and audit recorder.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from as_support import (
    MIN,
    NOW,
    QUARTER,
    SEC,
    audit_payloads,
    award,
    deploy,
    flat_prices,
)
from test_as_hold_metered import hydro_profile_yaml_small

from hashflex.control.ancillary import (
    SheddableMean,
    mean_obligations_kw,
    reserve_clawback_usd,
    revision_windows,
)
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder, IntervalMeter
from hashflex.control.solver import SolveRunner
from hashflex.messages import LimitsChangeMessage, TelemetryMessage
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store

END = NOW + QUARTER
BLOCK_SHED_KW = 100.0 - 1.0  # a running block's mode power less its idle draw
PRICE = 20.0  # $/MW-h (as_support.award)


# ---------------------------------------------------------------- the pure rule, by hand


def test_a_deployment_covering_half_an_interval_lowers_its_obligation_by_half_its_mw() -> None:
    """RRS 1,000 kW all interval; 400 kW deployed from 17:07:30 on: 1,000 − 400 / 2 = 800 kW. The
    rule before (the book's, the backtest's on a grid) took the whole 400 kW off: 600 kW."""
    awards = [("RRS", NOW - timedelta(hours=1), NOW + timedelta(hours=3), 1000.0)]
    half = [("RRS", NOW + timedelta(minutes=7.5), NOW + timedelta(hours=1), 400.0)]
    assert mean_obligations_kw(awards, half, NOW, END) == {"RRS": pytest.approx(800.0)}
    # a deployment of another product, or outside the interval, changes nothing
    other = [("ECRS", NOW, END, 400.0), ("RRS", NOW - timedelta(hours=1), NOW, 400.0)]
    assert mean_obligations_kw(awards, other, NOW, END) == {"RRS": pytest.approx(1000.0)}


def test_consecutive_deployments_and_an_award_change_are_weighted_by_time() -> None:
    """Finding 1's shape, by hand, over 17:00–17:15 (900 s): award 1,000 kW until 17:10, withdrawn (0)
    17:10–17:12, re-awarded 1,000 kW from 17:12; deployments one after another: 800 kW 17:00–17:03,
    400 kW 17:03–17:05, 100 kW 17:05–17:06, 500 kW for 9 s at 17:10:00 (inside the withdrawal).
    (1000−800)·180 + (1000−400)·120 + (1000−100)·60 + 1000·240 + 0·120 + 1000·180 = 582,000 kW·s
    / 900 s = 646.67 kW. Adding the MW up (1,800 kW) gave max(1000 − 1800, 0) = 0."""
    awards = [("RRS", NOW - timedelta(hours=1), NOW + 10 * MIN, 1000.0), ("RRS", NOW + 10 * MIN, NOW + 12 * MIN, 0.0),
              ("RRS", NOW + 12 * MIN, NOW + timedelta(hours=3), 1000.0)]
    deployments = [("RRS", NOW, NOW + 3 * MIN, 800.0), ("RRS", NOW + 3 * MIN, NOW + 5 * MIN, 400.0),
                   ("RRS", NOW + 5 * MIN, NOW + 6 * MIN, 100.0), ("RRS", NOW + 10 * MIN, NOW + 10 * MIN + 9 * SEC, 500.0)]
    assert mean_obligations_kw(awards, deployments, NOW, END) == {"RRS": pytest.approx(582_000.0 / 900.0)}
    with pytest.raises(ValueError):
        mean_obligations_kw(awards, deployments, END, NOW)


def test_each_revision_is_held_from_when_it_was_received_until_the_next() -> None:
    """Revision 0 over its window 16:00–20:00; revision 1 (received 17:05) from then; a withdrawal
    (received 17:10) from then: three pieces, no overlap."""
    w = (NOW - timedelta(hours=1), NOW + timedelta(hours=3))
    got = revision_windows([(None, *w), (NOW + 5 * MIN, *w), (NOW + 10 * MIN, *w)])
    assert got == [(0, w[0], NOW + 5 * MIN), (1, NOW + 5 * MIN, NOW + 10 * MIN), (2, NOW + 10 * MIN, w[1])]


def test_units_stopped_mid_interval_hold_their_time_weighted_mean() -> None:
    """4 blocks (396 kW) from 17:00, 1 block (99 kW) from 17:05: (396·5 + 99·10) / 15 = 198 kW; the
    next interval starts with the one block (99 kW). At the end the fleet held 99 kW only."""
    acc = SheddableMean()
    acc.sample(NOW, {"hydro": 396.0})
    acc.sample(NOW + 5 * MIN, {"hydro": 99.0})
    assert acc.mean(NOW, END) == {"hydro": pytest.approx(198.0)}
    assert acc.mean(END, END + QUARTER) == {"hydro": pytest.approx(99.0)}
    assert acc.mean(NOW - QUARTER, NOW) == {"hydro": pytest.approx(396.0)}  # before the first sample: as first sampled
    acc.sample(NOW + 6 * MIN, {"hydro": 99.0})  # no change: not kept
    assert acc.mean(NOW + 2 * MIN, NOW + 8 * MIN) == {"hydro": pytest.approx((396.0 * 3 + 99.0 * 3) / 6)}
    assert SheddableMean().mean(NOW, END) is None  # never sampled: the caller uses the fleet now


# ---------------------------------------------------------------- the loop (real parts)


def _loop(db: Path, reserve_kw: float, managers: bool = False):
    """A loop with the daemon's meter on a real store and recorder, RRS ``reserve_kw`` awarded
    16:00–20:00, ticked at 17:00 (its first tick: the meter covers 17:00–17:15 in full)."""
    text = hydro_profile_yaml_small()
    if managers:
        text = text.replace("timezone: America/Chicago}", "timezone: America/Chicago, managers: [site-manager]}")
    profile = parse_profile(text, source="test")
    store = Store(db)
    recorder = AuditRecorder(store)
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, flat_prices(start="2024-06-01T00:00Z")),
                       driver=SimulatedFleet(profile), solver=SolveRunner(inline=True), store=store,
                       recorder=recorder, meter=IntervalMeter())
    assert loop.handle_as_award(award("rrs", "RRS", reserve_kw), NOW).status == "accepted"
    loop.tick(NOW)
    return store, recorder, loop


def _close(store: Store, recorder: AuditRecorder) -> None:
    recorder.flush()
    recorder.close()
    store.close()


def _telemetry(loop: ControlLoop, at: datetime, power_kw: dict[str, float]) -> None:
    for miner_id, kw in power_kw.items():
        miner = loop.fleet.miners[miner_id]
        loop.on_message(TelemetryMessage(miner_id=miner_id, power_kw=kw, hashrate_th_s=0.0,
                                         mode=miner.mode if miner.running else "sleep", temperature_c=40.0,
                                         timestamp=at), at)


def _hydro_running(loop: ControlLoop) -> list[str]:
    return sorted(m.miner_id for m in loop.fleet.in_group("hydro") if m.running)


def test_units_stopped_mid_interval_the_loop_holds_the_time_weighted_mean(tmp_path: Path) -> None:
    """Finding 3. RRS 330 kW: 4 blocks run from 17:00 (396 kW sheddable). At 17:05 the site manager's
    import limit of 210 kW cuts the fast path to 2 blocks (2 × 100 + 8 × 1 = 208 kW). The miners report
    at 17:01, 17:06 and 17:11 what they draw (the two stopped: 100, 1, 1 kW: a mean of 34 kW, 33 above
    idle). Held over the interval: (396 · 5 + 198 · 10) / 15 = 264 kW as commanded, 264 kW metered:
    66 kW short, $0.33. Failed before: the fleet at the end, 198 kW, held: 132 kW short, $0.66."""
    db = tmp_path / "stopped.db"
    store, recorder, loop = _loop(db, 330.0, managers=True)
    on = _hydro_running(loop)
    assert len(on) == 4, "the plan runs four blocks for 330 kW (else the test shows nothing)"
    off = sorted(set(loop.fleet.miners) - set(on))
    _telemetry(loop, NOW + MIN, {**{m: 100.0 for m in on}, **{m: 1.0 for m in off}})
    cut_at = NOW + 5 * MIN
    loop.on_message(LimitsChangeMessage(issuer="site-manager", reason="test", issued_at=cut_at, import_limit_kw=210.0,
                                        valid_until=cut_at + timedelta(hours=1)), cut_at)
    still = _hydro_running(loop)
    assert len(still) == 2, f"the cut leaves two blocks running, not {len(still)}"
    for at in (NOW + 6 * MIN, NOW + 11 * MIN):
        _telemetry(loop, at, {m: (100.0 if m in still else 1.0) for m in loop.fleet.miners})
    loop.tick(END)  # closes 17:00–17:15
    _close(store, recorder)
    (measured,) = audit_payloads(db, "measurement")
    assert measured["reserve_sheddable_commanded_kw"] == {"hydro": pytest.approx(264.0)}
    assert measured["reserve_sheddable_commanded_basis"] == "time-weighted"
    assert measured["reserve_sheddable_kw"] == {"hydro": pytest.approx(264.0)}
    (short,) = audit_payloads(db, "reserve_hold_short")
    assert short["obligation_kw"] == pytest.approx(330.0)
    assert short["held_kw"] == pytest.approx(264.0)
    assert short["short_kw"] == pytest.approx(66.0)
    assert short["clawback_usd"] == pytest.approx(reserve_clawback_usd(66.0, PRICE, 0.25))
    assert short["obligation_basis"] == "time-weighted"
    economics = build_report(db, "2024-06-03T17:00Z", "2024-06-03T17:15Z")["economics"]
    assert economics["reserve_clawback_usd"] == pytest.approx(round(short["clawback_usd"], 2))


def test_a_deployment_covering_half_the_interval_halves_its_mw_off_the_loop_obligation(tmp_path: Path) -> None:
    """RRS 330 kW; 100 kW of RRS deployed at 17:07:30, not recalled: the loop's obligation for
    17:00–17:15 is 330 − 100 / 2 = 280 kW. With nothing held (a hold check given 0 kW sheddable) the
    loop records 280 kW short. Failed before: 330 − 100 = 230 kW (the whole deployment off)."""
    db = tmp_path / "half.db"
    store, recorder, loop = _loop(db, 330.0)
    at = NOW + timedelta(minutes=7.5)
    assert loop.handle_as_deploy(deploy("d-half", at, 100.0), at).status == "accepted"
    short = loop.record_reserve_hold(NOW, 0.25, hold={"reserve_sheddable_kw": {"hydro": 0.0}})
    _close(store, recorder)
    assert short == {"RRS": pytest.approx(280.0)}
    (record,) = audit_payloads(db, "reserve_hold_short")
    assert record["obligation_kw"] == pytest.approx(280.0)


# ---------------------------------------------------------------- the report equals the loop's record


def test_consecutive_deployments_and_an_award_change_the_report_equals_the_loop_record(tmp_path: Path) -> None:
    """Finding 1 on the small hydro site. RRS 330 kW (16:00–20:00) held from 17:00; one after another
    d-1 100 kW 17:01–17:03, d-2 50 kW 17:04–17:06, d-3 100 kW for 9 s from 17:07; the award withdrawn
    (revision 1, 0 kW) at 17:08 and re-awarded (revision 2, 330 kW) at 17:10. The obligation by hand,
    kW × s: 330·60 + 230·120 + 330·60 + 280·120 + 330·60 + 230·9 + 330·51 + 0·120 + 330·300 =
    238,500 / 900 s = 265 kW. The interval's load is metered at 60 kW (50 kW above the 10 units' idle;
    the fast path cut every block by 17:07): held H ≤ 50 kW, so short = 265 − H (interval means, ``mean_hold_shortfalls``). The report charges the
    loop's record. Failed before: the loop took 330 kW (the award at its latest revision, no deployment
    lasting to the interval's end), the report 330 − 250 = 80 kW less H for the award's pieces."""
    db = tmp_path / "consecutive.db"
    store, recorder, loop = _loop(db, 330.0)
    steps = [("d-1", 1, 3, 100.0), ("d-2", 4, 6, 50.0)]
    for deployment_id, on, off, kw in steps:
        at = NOW + on * MIN
        assert loop.handle_as_deploy(deploy(deployment_id, at, kw), at).status == "accepted"
        at = NOW + off * MIN
        assert loop.handle_as_deploy(deploy(deployment_id, at, recalled=True), at).status == "accepted"
    at = NOW + 7 * MIN
    assert loop.handle_as_deploy(deploy("d-3", at, 100.0), at).status == "accepted"
    assert loop.handle_as_deploy(deploy("d-3", at + 9 * SEC, recalled=True), at + 9 * SEC).status == "accepted"
    assert loop.handle_as_award(award("rrs", "RRS", 0.0, revision=1), NOW + 8 * MIN).status == "accepted"
    assert loop.handle_as_award(award("rrs", "RRS", 330.0, revision=2), NOW + 10 * MIN).status == "accepted"
    loop.record_measurement(NOW, 0.25, load_kw=60.0, renewable_kw=0.0, hashrate_th_s=0.0, noise={},
                            price_usd_mwh=200.0)
    _close(store, recorder)
    (record,) = audit_payloads(db, "reserve_hold_short")
    held_kw = sum(record["reserve_sheddable_kw"].values())
    assert held_kw <= 50.0 + 1e-9
    pieces = [(330.0, 60), (230.0, 120), (330.0, 60), (280.0, 120), (330.0, 60), (230.0, 9), (330.0, 51),
              (0.0, 120), (330.0, 300)]
    assert sum(s for _, s in pieces) == 900
    assert record["obligation_kw"] == pytest.approx(238_500.0 / 900.0)
    short_kw = max(238_500.0 / 900.0 - held_kw, 0.0)
    assert record["short_kw"] == pytest.approx(short_kw)
    assert record["clawback_usd"] == pytest.approx(reserve_clawback_usd(short_kw, PRICE, 0.25))
    economics = build_report(db, "2024-06-03T17:00Z", "2024-06-03T17:15Z")["economics"]
    assert economics["reserve_clawback_usd"] == pytest.approx(record["clawback_usd"], abs=0.006)  # the report's cents
