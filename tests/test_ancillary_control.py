"""AS awards and deployments through the limits book and the control loop (issue 15).

A tiny site: 10 hydro blocks of 1 MW (idle 10 kW each) that earn $66.67/h each, energy at
$200/MWh (above breakeven, so energy alone runs nothing). Inline solver, in-process fleet."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from as_support import award as as_award
from as_support import flat_prices, hydro_profile_yaml
from as_support import make_loop as as_loop
from as_support import running as units_running

from hashflex.control.limits import LimitsBook
from hashflex.control.loop import ControlLoop
from hashflex.control.solver import SolveRunner
from hashflex.messages import ASAwardMessage, ASDeployMessage, parse_message
from hashflex.profile import parse_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet

PROFILE = hydro_profile_yaml("As Loop", expected_deployments_per_month=None)
NOW = pd.Timestamp("2024-06-03T12:00-05:00").to_pydatetime()


def prices(level: float = 200.0) -> pd.DataFrame:
    """SYNTHETIC flat prices at ``level`` $/MWh, RT and DA."""
    return flat_prices(level)


def make_loop() -> tuple[ControlLoop, SimulatedFleet]:
    loop = as_loop(parse_profile(PROFILE, source="test"), prices())
    return loop, loop.driver


def award(kw: float = 4950.0, issuer: str = "qse-test", revision: int = 0) -> ASAwardMessage:
    return as_award("dam-0603-rrs", "RRS", kw, revision=revision, start=NOW - timedelta(hours=1),
                    end=NOW + timedelta(hours=3), price_usd_mw_h=150.0, issuer=issuer)


running = units_running


def test_award_is_acked_and_the_plan_keeps_exactly_the_awarded_units_running() -> None:
    loop, fleet = make_loop()
    ack = loop.handle_as_award(award(), NOW)
    assert ack.status == "accepted", ack.reason
    report = loop.tick(NOW)
    first = report.schedule.frame.iloc[0]
    # A block sheds 990 kW (1,000 kW less its 10 kW idle draw): 4,950 kW is exactly 5 blocks.
    assert first["units_hydro_run"] == 5 and first["reserve_RRS_kw"] == pytest.approx(4950.0)
    assert first["reason"] == "reserve RRS 4.95 MW"
    assert running(fleet) == 5


def test_award_from_another_issuer_or_above_qualification_is_refused_by_field() -> None:
    loop, _ = make_loop()
    assert "issuer" in loop.handle_as_award(award(issuer="mallory"), NOW).reason
    refused = loop.handle_as_award(award(kw=5001.0), NOW)
    assert refused.status == "rejected" and refused.reason.startswith("reserve_kw")
    assert loop.book.as_awards == {}
    report = loop.tick(NOW)
    assert running(loop.driver) == 0 and "reserve_RRS_kw" not in report.schedule.frame


def test_rrs_deployment_cuts_at_once_and_its_shortfall_is_reported() -> None:
    """5 blocks run for the 4,950 kW award (5,050 kW with the 5 sleeping blocks' idle). RRS deploys
    5,000 kW: limit 50 kW. The fast path sleeps every block at once (well inside 10 minutes), but
    10 idle blocks still draw 100 kW: 50 kW short, reported, never hidden."""
    loop, fleet = make_loop()
    loop.handle_as_award(award(), NOW)
    loop.tick(NOW)
    at = NOW + timedelta(minutes=3)
    ack = loop.handle_as_deploy(ASDeployMessage(deployment_id="d-1", product="RRS", issued_at=at,
                                                deployed_kw=5000.0, issuer="qse-test"), at)
    assert ack.status == "accepted" and ack.import_limit_kw == pytest.approx(50.0)
    assert ack.deadline == at + timedelta(minutes=10)
    assert running(fleet) == 0
    performance = loop.as_performance["d-1"]
    assert performance["delivered_kw"] == pytest.approx(4950.0)
    assert performance["shortfall_kw"] == pytest.approx(50.0)
    assert performance["commanded_within_deadline"] is True
    assert loop.book.import_limits_at(at) == {"AS:RRS:d-1": pytest.approx(50.0)}
    status = loop.status(at)
    assert status["as_performance"][0]["shortfall_kw"] == pytest.approx(50.0)
    assert status["limits"]["import_limit_source"] == "AS:RRS:d-1"
    # The next plan holds the deployment and no longer asks the shed load to run for the award.
    report = loop.tick(at + timedelta(minutes=1))
    first = report.schedule.frame.iloc[0]
    assert first["import_limit_source"] == "AS:RRS:d-1" and first["units_hydro_run"] == 0
    assert first["reserve_RRS_obligation_kw"] == pytest.approx(0.0)


def test_ecrs_deployment_measured_response_within_the_deadline() -> None:
    loop, fleet = make_loop()
    loop.handle_as_award(award(), NOW)
    loop.tick(NOW)
    at = NOW + timedelta(minutes=3)
    loop.handle_as_deploy(ASDeployMessage(deployment_id="e-1", product="ECRS", issued_at=at, deployed_kw=3000.0,
                                          issuer="qse-test"), at)
    # Limit 5,050 − 3,000 = 2,050 kW; each block put to sleep sheds 990 kW: 2 running (2,080 kW) is
    # still over, so 1 runs (1,090 kW).
    assert running(fleet) == 1
    performance = loop.as_performance["e-1"]
    assert performance["limit_kw"] == pytest.approx(2050.0)
    assert performance["shortfall_kw"] == pytest.approx(0.0)
    loop.measure_as_deployments(2040.0, at + timedelta(seconds=4))
    assert performance["measured_response_s"] == pytest.approx(4.0)
    assert performance["measured_within_deadline"] is True


def test_redelivery_gets_the_same_ack_and_a_restart_keeps_the_deployment() -> None:
    loop, _ = make_loop()
    loop.tick(NOW)
    message = ASDeployMessage(deployment_id="d-2", product="RRS", issued_at=NOW, deployed_kw=1000.0, issuer="qse-test")
    first = loop.handle_as_deploy(message, NOW)
    again = loop.handle_as_deploy(message, NOW + timedelta(seconds=1))
    assert again == first and loop.counters["as_duplicates"] == 1
    restored = LimitsBook.from_dict(loop.book.to_dict(), loop.profile)
    assert restored.import_limits_at(NOW + timedelta(minutes=30)) == loop.book.import_limits_at(NOW + timedelta(minutes=30))
    # A deployment holds until recalled (past RRS's 30 min sustained duration, flagged as_overrun), at most
    # ancillary.max_hold_h (default 8 h) from its instruction; a recall ends it earlier.
    assert restored.import_limits_at(NOW + timedelta(hours=2)) == loop.book.import_limits_at(NOW + timedelta(hours=2)) != {}
    assert restored.import_limits_at(NOW + timedelta(hours=8)) == {}


def test_as_topics_parse() -> None:
    payload = ('{"deployment_id":"d-3","product":"NSPIN","issued_at":"2024-06-03T17:00:00Z",'
               '"deployed_kw":1000,"issuer":"qse-test"}')
    message = parse_message("hashflex/as_loop/in/as/deploy", payload)
    assert isinstance(message, ASDeployMessage) and message.product == "NSPIN"
    assert np.isclose(message.deployed_kw, 1000.0)


def test_awards_deployments_and_their_performance_reach_the_audit_trail(tmp_path) -> None:
    """Every AS message and its ack, and a deployment's performance, are in the tamper-evident
    trail (the recorder drops kinds the audit does not know, so this fails without them)."""
    from hashflex.audit import AuditLog
    from hashflex.control.records import AuditRecorder
    from hashflex.store import Store

    profile = parse_profile(PROFILE, source="test")
    with Store(tmp_path / "s.db") as store:
        recorder = AuditRecorder(store)
        loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, prices()), driver=SimulatedFleet(profile),
                           solver=SolveRunner(inline=True), store=store, recorder=recorder)
        loop.handle_as_award(award(), NOW)
        loop.tick(NOW)
        loop.handle_as_deploy(ASDeployMessage(deployment_id="d-9", product="RRS", issued_at=NOW, deployed_kw=2000.0,
                                              issuer="qse-test"), NOW)
        recorder.flush()
        recorder.close()
        assert recorder.failures == 0
    with AuditLog(tmp_path / "s.db", readonly=True) as log:
        kinds = [r.kind for r in log.records()]
        (performance,) = log.records("as_performance")
    assert "as_award" in kinds and "as_deploy" in kinds
    assert performance.payload["deployment_id"] == "d-9" and performance.payload["obligation_kw"] == 2000.0
