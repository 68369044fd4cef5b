"""OpenADR 3 as a source of ancillary-service awards and deployments (issue 15): the QSE's programs
on the test VTN (real HTTP on 127.0.0.1, behind the validating proxy), the real control loop and
limits book on a simulated fleet, a real SQLite store for the restart. The mapping is documented in
``hashflex.openadr.ancillary``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from hashflex.control.daemon import load_control_state
from hashflex.control.loop import ControlLoop
from hashflex.control.solver import SolveRunner
from hashflex.openadr.ancillary import map_as_event, program_product
from hashflex.openadr.config import VENConfig
from hashflex.openadr.mapping import modification_number
from hashflex.openadr.ven import VEN
from hashflex.profile import parse_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store
from openadr_vtn import TestVTN
from test_openadr import PROFILE_YAML, T0, Site, cert, iso, make_ven, prices, profile, site, vtn  # noqa: F401

QSE = "qse_ercot"  # profile.ancillary.issuer
ANCILLARY = {"issuer": QSE,
             "groups": {"hydro_s21xp": {"response_s": 5, "under_frequency_relay": True},
                        "air_s21": {"response_s": 60}},
             "products": {"RRS": {"group_mw": {"hydro_s21xp": 10}},
                          "ECRS": {"group_mw": {"hydro_s21xp": 5, "air_s21": 5}}}}
AS_PROGRAMS = ("qse-ecrs", "qse-rrs")


def program_type(product: str) -> dict:
    """A 3.1.1 program attribute naming the AS product (DEF: PROGRAM_TYPE)."""
    return {"attributes": [{"type": "PROGRAM_TYPE", "values": [f"ERCOT_AS_{product}"]}]}


@pytest.fixture
def bare_vtn() -> Iterator[TestVTN]:
    """The test VTN without the validating proxy: it serves spec-invalid events (fault injection)."""
    server = TestVTN().start()
    yield server
    server.stop()


@pytest.fixture
def as_profile():  # noqa: ANN201
    data = yaml.safe_load(PROFILE_YAML.read_text())
    data["ancillary"] = ANCILLARY
    return parse_profile(yaml.safe_dump(data))


@pytest.fixture
def as_site(as_profile, prices) -> Site:  # noqa: ANN001, F811
    return Site(as_profile, prices)


def award_event(program_id: str, start, megawatts: list[float], units: str | None = "MW", **extra) -> dict:  # noqa: ANN001, ANN003
    descriptors = [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "AS_AWARD",
                    **({"units": units} if units else {})},
                   {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "AS_AWARD_PRICE", "currency": "USD",
                    "units": "MW"}]
    return {"programID": program_id, "eventName": "dam-award", "payloadDescriptors": descriptors,
            "intervalPeriod": {"start": iso(start), "duration": "PT1H"},
            "intervals": [{"id": k, "payloads": [{"type": "AS_AWARD", "values": [mw]},
                                                 {"type": "AS_AWARD_PRICE", "values": [12.5]}]}
                          for k, mw in enumerate(megawatts)], **extra}


def deploy_event(program_id: str, start, megawatts: float, duration: str = "PT0S", **extra) -> dict:  # noqa: ANN001, ANN003
    return {"programID": program_id, "eventName": "ecrs-deployment",
            "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                                    "payloadType": "DISPATCH_SETPOINT_RELATIVE", "units": "MW"}],
            "intervalPeriod": {"start": iso(start), "duration": duration},
            "intervals": [{"id": 0, "payloads": [{"type": "DISPATCH_SETPOINT_RELATIVE", "values": [megawatts]}]}],
            **extra}


def as_ven(vtn: TestVTN, site: Site, **config) -> VEN:  # noqa: F811, ANN003
    return make_ven(vtn, site, as_program_names=AS_PROGRAMS, **config)


# --------------------------------------------------------------------------- mapping (pure)


def test_program_type_names_the_product_in_both_spec_versions() -> None:
    assert program_product({"programName": "p", **program_type("RRS")}) == "RRS"  # 3.1.1 attribute
    assert program_product({"programName": "p", "programType": "ERCOT_AS_NSPIN"}) == "NSPIN"  # 3.0.1 field
    with pytest.raises(ValueError, match="programType"):
        program_product({"programName": "p"})
    with pytest.raises(ValueError, match="programType"):
        program_product({"programName": "p", "programType": "PRICING_TARIFF"})


def test_award_intervals_become_awards_in_kw_with_revision_and_price() -> None:
    program = {"id": "prog-1", "programName": "qse-ecrs", **program_type("ECRS")}
    event = {"id": "ev-7", "modificationDateTime": "2020-02-10T17:00:00Z",
             **award_event("prog-1", T0, [4.0, 2.5])}
    mapped = map_as_event(event, T0, program=program, issuer=QSE)
    assert mapped.rejected is None and mapped.rejected_intervals == []
    assert [(a.award_id, a.product, a.reserve_kw, a.price_usd_mw_h) for a in mapped.awards] == [
        ("ev-7:0", "ECRS", 4000.0, 12.5), ("ev-7:1", "ECRS", 2500.0, 12.5)]
    assert mapped.awards[1].start == T0 + timedelta(hours=1) and mapped.awards[1].end == T0 + timedelta(hours=2)
    assert {a.revision for a in mapped.awards} == {modification_number("2020-02-10T17:00:00Z")}
    assert {a.issuer for a in mapped.awards} == {QSE}
    # An award needs an end: PT0S (until further notice) is refused for that interval alone.
    open_ended = {**event, "intervalPeriod": {"start": iso(T0), "duration": "PT0S"}}
    refused = map_as_event(open_ended, T0, program=program, issuer=QSE)
    assert refused.awards == [] and "finite interval" in refused.rejected_intervals[0]


# --------------------------------------------------------------------------- through the VTN and the loop


def test_award_via_openadr_is_in_the_limits_book_and_survives_a_restart(vtn: TestVTN, as_profile, prices,  # noqa: ANN001, F811
                                                                         tmp_path: Path) -> None:
    program = vtn.create_program("qse-ecrs", **program_type("ECRS"))
    event = vtn.create_event(award_event(program["id"], T0 + timedelta(hours=1), [4.0, 3.0]))
    store = Store(tmp_path / "site.db")
    loop = ControlLoop(as_profile, forecaster=ReplayForecaster(as_profile, prices), driver=SimulatedFleet(as_profile),
                       store=store, solver=SolveRunner(inline=True))
    box = Site(as_profile, prices)
    box.loop = loop
    ven = as_ven(vtn, box)
    ven.tick(T0)
    base = event["id"]
    assert [a.status for a in ven.as_acks] == ["accepted", "accepted"], [a.reason for a in ven.as_acks]
    held = loop.book.as_awards[f"{base}:0"]
    assert (held["product"], held["reserve_kw"], held["issuer"]) == ("ECRS", 4000.0, QSE)
    assert loop.book.as_awards[f"{base}:1"]["reserve_kw"] == 3000.0
    store.close()

    # Restart: a new store handle, the book as last committed, a new VEN that reads the same event.
    store = Store(tmp_path / "site.db")
    book, _ = load_control_state(store, as_profile)
    assert book.as_awards[f"{base}:0"] == held and book.as_awards[f"{base}:1"]["reserve_kw"] == 3000.0
    loop = ControlLoop(as_profile, forecaster=ReplayForecaster(as_profile, prices), driver=SimulatedFleet(as_profile),
                       store=store, book=book, solver=SolveRunner(inline=True))
    box.loop = loop
    again = as_ven(vtn, box)
    again.tick(T0 + timedelta(minutes=1))
    assert again.counters["as_awards"] == 0, "an award the book already holds is not sent again"
    # The QSE withdraws the award (deletes the event): both intervals go to 0 kW with a higher revision.
    vtn.delete_event(base)
    again.tick(T0 + timedelta(minutes=2))
    assert [loop.book.as_awards[f"{base}:{k}"]["reserve_kw"] for k in (0, 1)] == [0.0, 0.0]
    assert loop.book.as_awards[f"{base}:0"]["revision"] > held["revision"]
    store.close()


def test_deployment_cuts_import_at_once_from_its_start_and_is_recalled_and_reported(vtn: TestVTN,  # noqa: F811
                                                                                   as_site: Site) -> None:
    program = vtn.create_program("qse-ecrs", **program_type("ECRS"))
    as_site.tick()
    before_kw = as_site.fleet.load_kw()
    assert before_kw > 20_000, "the site runs flat out at T0"
    start = T0 + timedelta(minutes=5)
    event = vtn.create_event(deploy_event(program["id"], start, 5.0, duration="PT15M", reportDescriptors=[
        {"payloadType": "DEMAND", "readingType": "MEAN", "units": "KW"}]))
    ven = as_ven(vtn, as_site)
    ven.tick(as_site.now)
    assert ven.counters["as_deployments"] == 0 and as_site.loop.book.as_deployments == {}, "not before its start"
    as_site.advance(5)
    ven.tick(as_site.now)  # the deployment's start has come: sent, committed, cut by the fast path
    deployment_id = f"{event['id']}:0"
    (ack,) = ven.as_acks
    assert ack.status == "accepted" and ack.kind == "as_deploy", ack.reason
    limit_kw = ack.import_limit_kw
    assert limit_kw == pytest.approx(before_kw - 5_000.0, rel=0.02)
    assert as_site.fleet.load_kw() <= limit_kw + 1e-6, "cut at once, before any tick"
    assert as_site.loop.book.import_limits_at(as_site.now) == {f"AS:ECRS:{deployment_id}": pytest.approx(limit_kw)}
    assert as_site.loop.as_performance[deployment_id]["shortfall_kw"] == pytest.approx(0.0)
    as_site.tick()
    as_site.advance(15)
    ven.tick(as_site.now)  # the interval ended: recalled; its DEMAND report is due and delivered
    assert ven.counters["as_recalls"] == 1 and ven.as_acks[-1].status == "accepted"
    assert as_site.loop.book.import_limits_at(as_site.now) == {}
    (report,) = vtn.reports_for(event["id"])
    (reading,) = report["resources"][0]["intervals"]
    assert reading["payloads"][0]["type"] == "DEMAND" and reading["payloads"][0]["values"][0] <= limit_kw + 1e-6


def test_deleting_an_open_ended_deployment_recalls_it(vtn: TestVTN, as_site: Site) -> None:  # noqa: F811
    program = vtn.create_program("qse-rrs", **program_type("RRS"))
    as_site.tick()
    event = vtn.create_event(deploy_event(program["id"], T0, 2.0))  # PT0S: until recalled
    ven = as_ven(vtn, as_site)
    ven.tick(as_site.now)
    assert list(as_site.loop.book.import_limits_at(as_site.now)) == [f"AS:RRS:{event['id']}:0"]
    as_site.advance(2)
    vtn.delete_event(event["id"])
    as_site.advance(1)
    ven.tick(as_site.now)
    assert ven.counters["as_recalls"] == 1 and as_site.loop.book.import_limits_at(as_site.now) == {}


def test_an_event_of_a_non_as_program_is_never_an_award(vtn: TestVTN, as_site: Site) -> None:  # noqa: F811
    """The DR program (and a program that names an AS product but is not configured as the QSE's)
    carries AS_AWARD and DISPATCH_SETPOINT_RELATIVE payloads: ignored and counted, nothing in the book."""
    dr_program = vtn.create_program("ercot-capacity")
    lookalike = vtn.create_program("someone-else", **program_type("RRS"))
    vtn.create_event(award_event(dr_program["id"], T0 + timedelta(hours=1), [4.0]))
    vtn.create_event(award_event(lookalike["id"], T0 + timedelta(hours=1), [4.0]))
    vtn.create_event(deploy_event(lookalike["id"], T0, 5.0))
    as_site.tick()
    load_kw = as_site.fleet.load_kw()
    ven = as_ven(vtn, as_site)
    ven.tick(as_site.now)
    assert as_site.loop.book.as_awards == {} and as_site.loop.book.as_deployments == {}
    assert ven.as_acks == [] and ven.counters["unsupported_payloads"] >= 3
    assert as_site.fleet.load_kw() == load_kw and as_site.loop.book.import_limits_at(as_site.now) == {}


def test_malformed_as_events_are_refused_with_a_reason_and_counted(bare_vtn: TestVTN, as_site: Site) -> None:
    program = bare_vtn.create_program("qse-ecrs", **program_type("ECRS"))
    nameless = bare_vtn.create_program("qse-rrs")  # an AS program that names no product
    no_units = bare_vtn.create_event(award_event(program["id"], T0 + timedelta(hours=1), [4.0], units=None))
    no_product = bare_vtn.create_event(award_event(nameless["id"], T0 + timedelta(hours=1), [4.0]))
    negative = bare_vtn.create_event(award_event(program["id"], T0 + timedelta(hours=1), [-1.0, 2.0]))
    too_big = bare_vtn.create_event(award_event(program["id"], T0 + timedelta(hours=3), [11.0]))
    bare_vtn.put_raw_event({"id": "bad-targets", "programID": program["id"], "targets": "west-texas-ven",
                       **{k: v for k, v in award_event(program["id"], T0, [1.0]).items() if k != "programID"}})
    ven = as_ven(bare_vtn, as_site)
    ven.tick(as_site.now)
    reasons = {r["id"]: r["reason"] for r in ven.status()["rejections"]}
    assert "units" in reasons[no_units["id"]] and "programType" in reasons[no_product["id"]]
    assert reasons["bad-targets"].startswith("invalid event: targets")
    assert "interval 0" in reasons[negative["id"]] and "non-negative" in reasons[negative["id"]]
    assert "reserve_kw" in reasons[f"{too_big['id']}:0"], "the site refuses more than the 10 MW qualified"
    assert ven.counters["events_rejected"] == 3 and ven.counters["intervals_rejected"] == 1
    assert ven.counters["as_refused"] == 1
    # Only the readable interval of the partly bad event is an award.
    assert list(as_site.loop.book.as_awards) == [f"{negative['id']}:1"]


def test_as_programs_need_the_profile_ancillary_section(vtn: TestVTN, site: Site) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="no ancillary section"):
        as_ven(vtn, site)
    assert VENConfig.from_env({"HASHFLEX_OPENADR_VEN_NAME": "v", "HASHFLEX_OPENADR_AS_PROGRAMS": "a, b"}
                              ).as_program_names == ("a", "b")


def test_the_profile_names_the_qse_programs(vtn: TestVTN, prices) -> None:  # noqa: F811, ANN001
    data = yaml.safe_load(PROFILE_YAML.read_text())
    data["ancillary"] = {**ANCILLARY, "openadr_programs": list(AS_PROGRAMS)}
    site = Site(parse_profile(yaml.safe_dump(data)), prices)
    # No VEN setting needed: the profile decides; a VEN configured with other programs refuses to start.
    assert make_ven(vtn, site).as_program_names == frozenset(AS_PROGRAMS)
    with pytest.raises(ValueError, match="differ from the profile's ancillary.openadr_programs"):
        make_ven(vtn, site, as_program_names=("someone-else",))
