"""The metered reserve-hold cap counts each miner, not the site's telemetry sum (issue 15, H1b).

H1 capped the commanded sheddable load by the interval's summed telemetry less *every* unit's idle
draw. The sum is too low whenever some miners do not report (patchy telemetry; asleep miners that
stop reporting; units powered off at a PDU), while the idle of all of them was still subtracted:
the site was charged a clawback for reserve it held. Now, per miner: one that reported counts what
it drew above its group's idle (max(0, mean reported − idle)); a running one that did not report
counts as commanded (mode power − idle); one asleep, powered off or unavailable that did not report
counts 0 and subtracts nothing. Per group the hold is min(commanded, that sum), labelled
``metered`` (every running miner reported), ``partly metered`` (with the count that did not) or
``commanded`` (none did).

Every trail is written by a real ``ControlLoop`` (inline HiGHS, a ``SimulatedFleet``, the daemon's
``IntervalMeter`` fed by ``on_message`` telemetry, the real audit recorder into a real store) on the
SYNTHETIC small hydro site of ``test_as_hold_metered``: 10 blocks of 100 kW, 1 kW each asleep (a block
sheds 99 kW), RRS qualified 0.5 MW, energy at $200/MWh (only an award keeps a block running), awards
at $20/MW-h. The PDU test adds a SYNTHETIC ``air`` group of 20 units (50 kW, 5 kW asleep, 100 kW idle
in all) that may be powered off at the PDU: at $200/MWh the plan powers all 20 off.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from as_support import MIN, NOW, QUARTER, audit_payloads, award, flat_prices, running
from test_as_hold_metered import hydro_profile_yaml_small

from hashflex.control.ancillary import reserve_clawback_usd
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder, IntervalMeter
from hashflex.control.solver import SolveRunner
from hashflex.drivers.pdu import POWERED_OFF
from hashflex.messages import TelemetryMessage
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store

PRICE = 20.0  # $/MW-h, the awards' price (as_support.award)
BLOCK_SHED_KW = 100.0 - 1.0  # a running block's mode power less its idle draw

_AIR_GROUP = """  - id: air
    model: S19
    units: 20
    cooling: air
    idle_power_kw: 5
    pdu_power_off: true
    modes: [{name: stock, power_kw: 50, hashrate_th_s: 100, sound_power_dba: 80}]
carbon:"""


def _site(with_air: bool = False) -> str:
    text = hydro_profile_yaml_small()
    return text.replace("carbon:", _AIR_GROUP, 1) if with_air else text


def _loop(db: Path, reserve_kw: float, with_air: bool = False, meter: bool = True):
    """A loop with the daemon's meter on a real store and recorder, RRS ``reserve_kw`` awarded
    16:00–20:00, ticked at 17:00 (its first tick: the meter covers 17:00–17:15 in full)."""
    profile = parse_profile(_site(with_air), source="test")
    store = Store(db)
    recorder = AuditRecorder(store)
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, flat_prices(start="2024-06-01T00:00Z")),
                       driver=SimulatedFleet(profile), solver=SolveRunner(inline=True), store=store,
                       recorder=recorder, meter=IntervalMeter() if meter else None)
    assert loop.handle_as_award(award("rrs", "RRS", reserve_kw), NOW).status == "accepted"
    loop.tick(NOW)
    return store, recorder, loop


def _report(loop: ControlLoop, power_kw: dict[str, float]) -> None:
    """Three reports a miner over 17:00–17:15 (its mode as the fleet has it, ``sleep`` when not running)."""
    for k in range(3):
        at = NOW + (1 + 4 * k) * MIN
        for miner_id, kw in power_kw.items():
            mode = loop.fleet.miners[miner_id].mode
            loop.on_message(TelemetryMessage(miner_id=miner_id, power_kw=kw, hashrate_th_s=0.0,
                                             mode=mode if loop.fleet.miners[miner_id].running else "sleep",
                                             temperature_c=40.0, timestamp=at), at)


def _close(store: Store, recorder: AuditRecorder) -> None:
    recorder.flush()
    recorder.close()
    store.close()


def _hydro(loop: ControlLoop) -> tuple[list[str], list[str]]:
    """(running, asleep) hydro miner ids, by id."""
    miners = sorted(loop.fleet.in_group("hydro"), key=lambda m: m.miner_id)
    return [m.miner_id for m in miners if m.running], [m.miner_id for m in miners if not m.running]


def test_patchy_telemetry_half_the_running_miners_silent_is_no_shortfall(tmp_path: Path) -> None:
    """RRS 330 kW: 4 blocks run (396 kW commanded). Two report their mode (100 kW), two send nothing in
    the interval, the six asleep report 1 kW. Per miner: 2 × 99 reported + 2 × 99 as commanded = 396 kW:
    held, no record, basis ``partly metered`` with 2 running units unreported. Failed before: the sum
    (2 × 100 + 6 × 1 = 206 kW) less every unit's 10 kW idle held 196 kW, 134 kW short, $0.67 clawed back,
    basis ``metered``."""
    db = tmp_path / "patchy.db"
    store, recorder, loop = _loop(db, 330.0)
    on, off = _hydro(loop)
    assert len(on) == 4, "the plan runs four blocks for 330 kW (else the test shows nothing)"
    _report(loop, {**{m: 100.0 for m in on[:2]}, **{m: 1.0 for m in off}})
    loop.tick(NOW + QUARTER)  # closes 17:00–17:15
    _close(store, recorder)
    assert audit_payloads(db, "reserve_hold_short") == []
    assert loop.reserve_hold_short_kw[pd.Timestamp(NOW)] == {"RRS": pytest.approx(0.0)}
    (measured,) = audit_payloads(db, "measurement")
    assert measured["reserve_hold_basis"] == "partly metered"
    assert measured["reserve_unreported_running_units"] == 2
    assert measured["reserve_sheddable_kw"] == {"hydro": pytest.approx(4 * BLOCK_SHED_KW)}
    assert measured["reserve_sheddable_metered_group_kw"] == {"hydro": pytest.approx(4 * BLOCK_SHED_KW)}
    assert measured["load_kw"] == pytest.approx(206.0), "the summed telemetry is still the load measured"
    economics = build_report(db, "2024-06-03T17:00Z", "2024-06-03T17:15Z")["economics"]
    assert economics["reserve_clawback_usd"] == pytest.approx(0.0)
    assert any(n.startswith("1 interval(s) with an award whose reserve hold the loop checked partly metered: "
                            "2 running unit-interval(s)") for n in economics["notes"]), economics["notes"]
    assert not any("commanded fleet, not the load" in n for n in economics["notes"])


def test_a_reporting_miner_drawing_only_idle_while_commanded_to_run_is_short_by_its_mode_less_idle(
        tmp_path: Path) -> None:
    """RRS 297 kW, exactly what 3 running blocks shed (3 × 99). One running block reports only its
    1 kW idle draw all interval, the other two their 100 kW; the seven asleep stop reporting (common:
    asleep miners go quiet). Short by that block's mode less idle: 99 kW, $0.495. Failed before: the
    sum 201 kW less all ten units' idle 10 kW held 191 kW, 106 kW short ($0.53)."""
    db = tmp_path / "idle.db"
    store, recorder, loop = _loop(db, 297.0)
    on, _ = _hydro(loop)
    assert len(on) == 3
    _report(loop, {on[0]: 1.0, on[1]: 100.0, on[2]: 100.0})
    loop.tick(NOW + QUARTER)
    _close(store, recorder)
    (short,) = audit_payloads(db, "reserve_hold_short")
    assert short["short_kw"] == pytest.approx(BLOCK_SHED_KW)
    assert short["held_kw"] == pytest.approx(2 * BLOCK_SHED_KW)
    assert short["clawback_usd"] == pytest.approx(reserve_clawback_usd(BLOCK_SHED_KW, PRICE, 0.25))
    assert short["reserve_hold_basis"] == "metered" and short["reserve_unreported_running_units"] == 0
    assert short["reserve_sheddable_commanded_kw"] == {"hydro": pytest.approx(3 * BLOCK_SHED_KW)}
    assert short["reserve_sheddable_kw"] == {"hydro": pytest.approx(2 * BLOCK_SHED_KW)}
    economics = build_report(db, "2024-06-03T17:00Z", "2024-06-03T17:15Z")["economics"]
    assert economics["reserve_clawback_usd"] == pytest.approx(round(short["clawback_usd"], 2))  # the report's cents


def test_a_group_powered_off_at_the_pdu_that_reports_nothing_is_no_false_short(tmp_path: Path) -> None:
    """The hydro site plus 20 ``air`` units the plan powers off at the PDU (100 kW of idle draw they
    do not draw). RRS 230 kW: 3 hydro blocks run and report 100 kW, the seven asleep 1 kW, the air
    units nothing. Held (297 kW), basis ``metered``. Failed before: 307 kW less every unit's idle
    (10 + 100 kW) held 197 kW, 33 kW short."""
    db = tmp_path / "pdu.db"
    store, recorder, loop = _loop(db, 230.0, with_air=True)
    on, off = _hydro(loop)
    assert len(on) == 3
    assert loop.fleet.powered_off("air") == 20, "the plan powers the air units off (else the test shows nothing)"
    _report(loop, {**{m: 100.0 for m in on}, **{m: 1.0 for m in off}})
    loop.tick(NOW + QUARTER)
    _close(store, recorder)
    assert audit_payloads(db, "reserve_hold_short") == []
    (measured,) = audit_payloads(db, "measurement")
    assert measured["reserve_hold_basis"] == "metered"
    assert measured["reserve_sheddable_kw"] == {"hydro": pytest.approx(3 * BLOCK_SHED_KW), "air": 0.0}
    assert measured["reserve_sheddable_metered_kw"] == pytest.approx(3 * BLOCK_SHED_KW)


def test_a_modelled_load_on_a_pdu_site_subtracts_no_idle_for_units_powered_off(tmp_path: Path) -> None:
    """The backtest's and simulation's path (no telemetry: ``record_measurement`` with the modelled
    load): 4 hydro blocks run for RRS 330 kW, the air units are off at the PDU; the modelled load is
    4 × 100 + 6 × 1 = 406 kW. Less the idle of the units not powered off (10 kW): 396 kW, held. Failed
    before: less every unit's idle (110 kW) 296 kW, 34 kW short."""
    db = tmp_path / "modelled.db"
    store, recorder, loop = _loop(db, 330.0, with_air=True, meter=False)
    assert running(loop) == 4 and loop.fleet.powered_off("air") == 20
    loop.record_measurement(NOW, 0.25, load_kw=406.0, renewable_kw=0.0, hashrate_th_s=0.0, noise={},
                            price_usd_mwh=200.0)
    _close(store, recorder)
    assert audit_payloads(db, "reserve_hold_short") == []
    (measured,) = audit_payloads(db, "measurement")
    assert measured["reserve_hold_basis"] == "metered"
    assert measured["reserve_sheddable_metered_kw"] == pytest.approx(4 * BLOCK_SHED_KW)
    assert measured["reserve_unreported_running_units"] is None  # no per-miner figures on this path


def test_a_group_drawing_above_its_command_does_not_cover_another_groups_shortfall(tmp_path: Path) -> None:
    """Per group, not pro rata: the 20 air units (not qualified for RRS) are commanded off at the PDU
    but draw 20 × 10 kW (SYNTHETIC: a relay stuck closed). RRS 297 kW, 3 hydro blocks run; one reports
    1 kW, two 100 kW: hydro holds 198 kW whatever the air group draws, 99 kW short; the air group's
    metered 200 kW above its command is recorded, not lent to hydro."""
    db = tmp_path / "per_group.db"
    store, recorder, loop = _loop(db, 297.0, with_air=True)
    on, _ = _hydro(loop)
    assert len(on) == 3 and all(m.mode == POWERED_OFF for m in loop.fleet.in_group("air"))
    _report(loop, {on[0]: 1.0, on[1]: 100.0, on[2]: 100.0,
                   **{m.miner_id: 15.0 for m in loop.fleet.in_group("air")}})
    loop.tick(NOW + QUARTER)
    _close(store, recorder)
    (short,) = audit_payloads(db, "reserve_hold_short")
    assert short["short_kw"] == pytest.approx(BLOCK_SHED_KW)
    assert short["reserve_sheddable_metered_group_kw"] == {"hydro": pytest.approx(2 * BLOCK_SHED_KW),
                                                           "air": pytest.approx(200.0)}
    assert short["reserve_sheddable_kw"] == {"hydro": pytest.approx(2 * BLOCK_SHED_KW), "air": 0.0}


def test_no_running_miner_reporting_is_the_commanded_basis_and_an_award_withdrawn_is_charged_from_it(
        tmp_path: Path) -> None:
    """Only the asleep blocks report (1 kW): none of the 3 running did, so the hold is the commanded
    297 kW, labelled ``commanded`` with 3 unreported. RRS 230 kW withdrawn at 17:05: the report
    charges nothing (the loop's figure held the award) and counts the interval as checked against the
    commanded fleet."""
    db = tmp_path / "running_silent.db"
    store, recorder, loop = _loop(db, 230.0)
    on, off = _hydro(loop)
    assert loop.handle_as_award(award("rrs", "RRS", 0.0, revision=1), NOW + 5 * MIN).status == "accepted"
    assert len(on) == 3 and running(loop) == 3
    _report(loop, {m: 1.0 for m in off})
    loop.tick(NOW + QUARTER)
    _close(store, recorder)
    (measured,) = audit_payloads(db, "measurement")
    assert measured["reserve_hold_basis"] == "commanded"
    assert measured["reserve_unreported_running_units"] == 3
    assert measured["reserve_sheddable_kw"] == {"hydro": pytest.approx(3 * BLOCK_SHED_KW)}
    economics = build_report(db, "2024-06-03T17:00Z", "2024-06-03T17:15Z")["economics"]
    assert economics["reserve_clawback_usd"] == pytest.approx(0.0)
    assert economics["reserve_estimated_hold_intervals"] == 0
    assert any(n.startswith("1 interval(s) with an award whose reserve hold the loop checked against the commanded")
               for n in economics["notes"]), economics["notes"]


def test_the_meter_gives_each_reporting_miners_mean() -> None:
    """``IntervalMeter.summary`` names who reported and each one's mean power (what the loop counts per
    miner); the summed load is unchanged."""
    meter = IntervalMeter()
    for power_kw in (5.0, 5.0, 5.0, 0.1):
        meter.telemetry("m1", power_kw, 0.0)
    meter.telemetry("m2", 3.0, 0.0)
    summary = meter.summary({})
    assert summary["miner_power_kw"] == {"m1": pytest.approx(15.1 / 4), "m2": pytest.approx(3.0)}
    assert summary["load_kw"] == pytest.approx(15.1 / 4 + 3.0)
    meter.reset()
    assert meter.summary({})["miner_power_kw"] == {}

