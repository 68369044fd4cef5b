"""The reserve-hold check counts only load the site drew (issue 15, H1: newcomer finding, medium).

``ControlLoop.record_reserve_hold`` checked the awards against the *commanded* fleet at the
interval's end, so units still booting (commanded, not drawing) counted as holding reserve: an
interval whose mean metered import was 2,032 kW against 2,300 kW of reserve awarded had no
``reserve_hold_short`` record and no clawback. A Load Resource holds reserve only with load it
actually draws (ERCOT checks its telemetered consumption against its award, Nodal Protocols
§6.4.9.1.3, §8.1.1.3): the running units now hold at most the interval's measured mean load less
the load that could not be shed (every unit's idle draw), scaled pro rata over the groups; without a
fresh measurement the commanded figure stays, labelled ``reserve_hold_basis: "commanded"``.

Every trail is written by a real ``ControlLoop`` (inline HiGHS, a ``SimulatedFleet``, the real audit
recorder into a real store) on the SYNTHETIC hydro site of ``as_support``: 10 blocks of 1 MW, 10 kW
each asleep (a block sheds 990 kW; 100 kW of idle draw in all), energy at $200/MWh (only an award
keeps a block running), awards at $20/MW-h.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from as_support import (
    MIN,
    NOW,
    QUARTER,
    audit_payloads,
    award,
    flat_prices,
    hydro_profile,
    make_loop,
    running,
)

from hashflex.audit import AuditLog
from hashflex.control.ancillary import reserve_clawback_usd
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder, IntervalMeter
from hashflex.control.solver import SolveRunner
from hashflex.messages import TelemetryMessage
from hashflex.profile import parse_profile
from hashflex.report import REPORT_KINDS, build_report, report_from_records
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store

IDLE_KW = 10 * 10.0  # every block's idle draw, asleep or running: not sheddable
PRICE = 20.0  # $/MW-h, the awards' price (as_support.award)


def _awarded(db: Path, reserve_kw: float = 2300.0):
    """A loop on a real store and recorder with RRS ``reserve_kw`` awarded 16:00–20:00 and ticked at 17:00."""
    store = Store(db)
    recorder = AuditRecorder(store)
    loop = make_loop(hydro_profile("AS Hold Metered"), flat_prices(start="2024-06-01T00:00Z"), store, recorder)
    assert loop.handle_as_award(award("rrs", "RRS", reserve_kw), NOW).status == "accepted"
    loop.tick(NOW)
    return store, recorder, loop


def _measure(loop: ControlLoop, load_kw: float, **kwargs) -> None:
    loop.record_measurement(NOW, 0.25, load_kw=load_kw, renewable_kw=0.0, hashrate_th_s=0.0, noise={},
                            price_usd_mwh=200.0, **kwargs)


def _close(store: Store, recorder: AuditRecorder) -> None:
    recorder.flush()
    recorder.close()
    store.close()


def test_units_commanded_but_not_drawing_do_not_hold_the_award(tmp_path: Path) -> None:
    """RRS 2,300 kW: the plan runs 3 blocks (2,970 kW sheddable as commanded), but the interval's mean
    metered load is 2,032 kW (blocks still booting): 2,032 − 100 idle = 1,932 kW held, 368 kW short,
    clawed back 0.368 MW × $20 × 0.25 h = $1.84. Failed before: no ``reserve_hold_short`` record (the
    commanded 2,970 kW counted as held) and ``reserve_hold_short_kw`` was {RRS: 0}."""
    db = tmp_path / "booting.db"
    store, recorder, loop = _awarded(db)
    commanded = loop.reserve_sheddable_kw()["hydro"]
    assert commanded >= 2300.0, "the commanded fleet could hold the award (else the test shows nothing)"
    _measure(loop, 2032.0)
    _close(store, recorder)
    assert loop.reserve_hold_short_kw[pd.Timestamp(NOW)]["RRS"] == pytest.approx(368.0)
    (short,) = audit_payloads(db, "reserve_hold_short")
    assert short["short_kw"] == pytest.approx(368.0) and short["held_kw"] == pytest.approx(1932.0)
    assert short["clawback_usd"] == pytest.approx(reserve_clawback_usd(368.0, PRICE, 0.25)) == pytest.approx(1.84)
    assert short["reserve_hold_basis"] == "metered"
    assert short["reserve_sheddable_kw"] == {"hydro": pytest.approx(1932.0)}
    assert short["reserve_sheddable_commanded_kw"] == {"hydro": pytest.approx(commanded)}
    assert short["reserve_sheddable_metered_kw"] == pytest.approx(1932.0)
    (measured,) = audit_payloads(db, "measurement")
    assert measured["reserve_sheddable_kw"] == {"hydro": pytest.approx(1932.0)}
    assert measured["reserve_sheddable_commanded_kw"] == {"hydro": pytest.approx(commanded)}
    assert measured["reserve_hold_basis"] == "metered"


def test_a_metered_load_at_or_above_the_commanded_one_changes_nothing(tmp_path: Path) -> None:
    """The same award and fleet, metered at the commanded 3 × 1,000 + 7 × 10 = 3,070 kW (and at
    3,500 kW, more than modelled): the figure used is the commanded one, the award is held, no record."""
    for load_kw in (3070.0, 3500.0):
        db = tmp_path / f"held_{load_kw:.0f}.db"
        store, recorder, loop = _awarded(db)
        commanded = loop.reserve_sheddable_kw()
        assert running(loop) == 3
        _measure(loop, load_kw)
        _close(store, recorder)
        assert audit_payloads(db, "reserve_hold_short") == []
        assert loop.reserve_hold_short_kw[pd.Timestamp(NOW)] == {"RRS": pytest.approx(0.0)}
        (measured,) = audit_payloads(db, "measurement")
        assert measured["reserve_sheddable_kw"] == {"hydro": pytest.approx(commanded["hydro"])}
        assert measured["reserve_hold_basis"] == "metered"


def test_without_a_fresh_measurement_the_commanded_figure_is_used_and_labelled(tmp_path: Path) -> None:
    """No measurement of the load (``load_metered=False``; the daemon's meter got no telemetry): the
    commanded 2,970 kW holds the 2,300 kW award, and the measurement says the hold was checked against
    the commanded fleet (``reserve_sheddable_metered_kw`` null)."""
    db = tmp_path / "commanded.db"
    store, recorder, loop = _awarded(db)
    commanded = loop.reserve_sheddable_kw()
    _measure(loop, 0.0, load_metered=False)
    _close(store, recorder)
    assert audit_payloads(db, "reserve_hold_short") == []
    (measured,) = audit_payloads(db, "measurement")
    assert measured["reserve_hold_basis"] == "commanded"
    assert measured["reserve_sheddable_kw"] == {"hydro": pytest.approx(commanded["hydro"])}
    assert measured["reserve_sheddable_metered_kw"] is None
    notes = build_report(db, "2024-06-03T17:00Z", "2024-06-03T17:15Z")["economics"]["notes"]
    assert any(n.startswith("1 interval(s) with an award whose reserve hold the loop checked against the commanded")
               for n in notes), notes


def test_the_daemons_meter_without_telemetry_checks_the_commanded_fleet_with_telemetry_the_drawn_load(
        tmp_path: Path) -> None:
    """The daemon path (``IntervalMeter`` closed at the interval boundary by the next tick), on a
    site of 10 blocks of 100 kW (1 kW asleep; telemetry reports at most 100 kW a miner), RRS 230 kW
    awarded: 3 blocks run (297 kW sheddable). 17:00–17:15 no telemetry arrives: commanded basis, held.
    17:15–17:30 the three running blocks report 64.4 kW each (booting) and the seven asleep 1 kW:
    200.2 − 10 = 190.2 kW held, 39.8 kW short (metered basis). Failed before: no record."""
    profile = parse_profile(hydro_profile_yaml_small(), source="test")
    db = tmp_path / "daemon.db"
    store = Store(db)
    recorder = AuditRecorder(store)
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, flat_prices(start="2024-06-01T00:00Z")),
                       driver=SimulatedFleet(profile), solver=SolveRunner(inline=True), store=store,
                       recorder=recorder, meter=IntervalMeter())
    assert loop.handle_as_award(award("rrs", "RRS", 230.0), NOW).status == "accepted"
    loop.tick(NOW)
    assert running(loop) == 3
    loop.tick(NOW + QUARTER)  # closes 17:00–17:15: no telemetry
    modes = {m.miner_id: m.mode for m in loop.fleet.in_group("hydro")}
    for k in range(3):  # three reports a miner over the interval
        at = NOW + QUARTER + (1 + 4 * k) * MIN
        for miner_id, mode in modes.items():
            runs = mode == "run"
            loop.on_message(TelemetryMessage(miner_id=miner_id, power_kw=64.4 if runs else 1.0,
                                             hashrate_th_s=0.0, mode=mode if runs else "sleep",
                                             temperature_c=40.0, timestamp=at), at)
    loop.tick(NOW + 2 * QUARTER)  # closes 17:15–17:30
    _close(store, recorder)
    first, second = audit_payloads(db, "measurement")
    assert first["reserve_hold_basis"] == "commanded" and second["reserve_hold_basis"] == "metered"
    assert second["reserve_sheddable_metered_kw"] == pytest.approx(190.2)
    (short,) = audit_payloads(db, "reserve_hold_short")
    assert short["interval_start"].startswith("2024-06-03T17:15")
    assert short["short_kw"] == pytest.approx(39.8)
    assert short["reserve_hold_basis"] == "metered"


def hydro_profile_yaml_small() -> str:
    """The as_support hydro site scaled to 100 kW blocks (1 kW asleep; hashrate to scale), RRS qualified 0.5 MW."""
    from as_support import hydro_profile_yaml

    return (hydro_profile_yaml("AS Hold Small", products=("RRS",), qualified_mw={"RRS": 0.5})
            .replace("idle_power_kw: 10", "idle_power_kw: 1")
            .replace("power_kw: 1000, hashrate_th_s: 33333.333", "power_kw: 100, hashrate_th_s: 3333.3333"))


def test_the_report_charges_what_the_loop_recorded_and_applies_the_rule_to_older_trails(tmp_path: Path) -> None:
    """The report on the booting trail claws back the loop's $1.84. An award withdrawn at 17:05, the
    interval metered at 500 kW: the loop holds each revision while it was in force (H6): obligation
    2,300 kW × 5/15 = 766.67 kW, held the metered 400 kW (500 − 100 idle), not the commanded 2,970 kW,
    so it records 366.67 kW short, $20 × 0.25 h: $1.83, and the report charges its record; the same
    trail as an older one (no hold-short record, the new fields stripped: ``reserve_sheddable_kw`` as
    commanded) reports the same by the same rule from ``load_kw``. (Before H6 the loop, seeing the
    award withdrawn, wrote no record, and the report charged (A − H) per piece: 2,032 kW metered,
    (2,300 − 1,932) × $20 × 5/60 h; now the interval's means, the newcomer's rule, net to 0 there.)"""
    db = tmp_path / "booting.db"
    store, recorder, loop = _awarded(db)
    _measure(loop, 2032.0)
    _close(store, recorder)
    economics = build_report(db, "2024-06-03T17:00Z", "2024-06-03T17:15Z")["economics"]
    assert economics["reserve_clawback_usd"] == pytest.approx(1.84)
    assert not any("commanded fleet" in n for n in economics["notes"])

    db = tmp_path / "withdrawn.db"
    store, recorder, loop = _awarded(db)
    withdrawal = award("rrs", "RRS", 0.0, revision=1)
    assert loop.handle_as_award(withdrawal, NOW + 5 * MIN).status == "accepted"
    assert running(loop) == 3, "the blocks still run when the interval is measured"
    _measure(loop, 500.0)
    _close(store, recorder)
    # The loop now holds each award revision while it was in force (H6): 2,300 kW for 17:00–17:05,
    # 0 after, time-weighted: it records the 368 kW short over a third of the interval itself.
    (short,) = audit_payloads(db, "reserve_hold_short")
    assert short["obligation_kw"] == pytest.approx(2300.0 / 3)
    assert short["short_kw"] == pytest.approx(2300.0 / 3 - 400.0)
    expected = (2300.0 / 3 - 400.0) / 1000.0 * PRICE * 0.25
    assert short["clawback_usd"] == pytest.approx(expected)
    economics = build_report(db, "2024-06-03T17:00Z", "2024-06-03T17:15Z")["economics"]
    assert economics["reserve_clawback_usd"] == pytest.approx(round(expected, 2))  # the report's cents
    assert economics["reserve_estimated_hold_intervals"] == 0
    with AuditLog(db, readonly=True) as log:
        records = list(log.records(kinds=REPORT_KINDS))
    older = []
    for record in records:
        if record.kind == "reserve_hold_short":
            continue  # a loop before H6 wrote none here (it saw the award withdrawn)
        if record.kind == "measurement":
            payload = {k: v for k, v in record.payload.items()
                       if k not in ("reserve_hold_basis", "reserve_sheddable_commanded_kw",
                                    "reserve_sheddable_metered_kw", "reserve_sheddable_commanded_basis")}
            payload["reserve_sheddable_kw"] = record.payload["reserve_sheddable_commanded_kw"]
            record = dataclasses.replace(record, payload=payload)
        older.append(record)
    audit = {"ok": True, "records": len(older), "head_seq": older[-1].seq, "head_hash": older[-1].hash,
             "first_bad_seq": None, "problem": None, "signed_head": None}
    old = report_from_records(older, pd.Timestamp("2024-06-03T17:00Z"), pd.Timestamp("2024-06-03T17:15Z"),
                              audit=audit)["economics"]
    assert old["reserve_clawback_usd"] == pytest.approx(round(expected, 2))
    assert old["reserve_estimated_hold_intervals"] == 0

