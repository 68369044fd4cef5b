"""OpenADR 3 VEN against a VTN test server (real HTTP on 127.0.0.1) and the real control loop on a
simulated site, plus the pure mapping rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import poll_until
from hashflex.control.loop import ControlLoop
from hashflex.control.solver import SolveRunner
from hashflex.data import bundled_path
from hashflex.feeds.ercot import read_price_file
from hashflex.openadr.client import OpenADRClient, OpenADRConfig, VTNError, VTNUnavailable
from hashflex.openadr.mapping import (
    is_cancelled,
    map_event,
    modification_number,
    parse_datetime,
    parse_duration,
    resolve_intervals,
    targets_match,
)
from hashflex.openadr.ven import VEN, ReportOutbox, VENConfig, WebhookConfig, report_schedule
from hashflex.profile import parse_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from openadr_proxy import ValidatingProxy
from openadr_tls import TestCert, make_cert
from openadr_vtn import TestVTN

UTC = timezone.utc
T0 = datetime(2020, 2, 10, 18, 0, tzinfo=UTC)  # 12:00 CST, the site runs flat out at this price
ISSUER = "utility_oncor"  # in west_texas.yaml dr.issuers
PROFILE_YAML = Path(__file__).resolve().parents[1] / "site_profiles" / "west_texas.yaml"


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    rt = read_price_file(bundled_path("ercot/RTM-2020-02.csv"), settlement_point="LZ_WEST", settlement_point_type="LZ")
    da = read_price_file(bundled_path("ercot/DAM-2020-02.csv"), settlement_point="LZ_WEST")
    return pd.concat([rt, da], ignore_index=True)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> TestCert:
    """The webhook's HTTPS certificate (the spec: the VEN MUST use HTTPS for the callback URL)."""
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def vtn(cert: TestCert) -> Iterator[TestVTN]:
    """The test VTN behind a validating proxy: every request and answer is checked against the
    OpenAPI document, and the VTN answers only declared statuses."""
    server = TestVTN().start()
    server.callback_verify = str(cert.cert)
    proxy = ValidatingProxy(server.direct_url).start()
    server.public_url = proxy.url
    yield server
    proxy.stop()
    server.stop()
    assert proxy.violations == [], "requests or answers out of the OpenADR 3.1.1 spec"
    assert server.undeclared == [], "the test VTN answered a status the spec does not declare"


@pytest.fixture
def profile():  # noqa: ANN201
    data = yaml.safe_load(PROFILE_YAML.read_text())
    data["dr"]["level_import_limit_kw"] = {1: 20_000, 2: 8_000, 3: 3_000}
    return parse_profile(yaml.safe_dump(data))


class Site:
    """The control loop on a simulated fleet, with a movable simulated clock."""

    def __init__(self, profile, prices: pd.DataFrame) -> None:  # noqa: ANN001
        self.profile = profile
        self.fleet = SimulatedFleet(profile)
        self.loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, prices), driver=self.fleet,
                                solver=SolveRunner(inline=True))
        self.now = T0
        self.history: dict[datetime, float] = {}  # load after each tick, as a meter would log it

    def tick(self) -> None:
        self.loop.tick(self.now)
        self.history[self.now] = self.fleet.load_kw()

    def measured_kw(self, start: datetime, end: datetime) -> float:
        """Mean logged load over [start, end) (the meter history a real site would query)."""
        inside = [kw for t, kw in self.history.items() if start <= t < end]
        return sum(inside) / len(inside) if inside else self.fleet.load_kw()

    def advance(self, minutes: float) -> None:
        self.now = self.now + timedelta(minutes=minutes)


@pytest.fixture
def site(profile, prices: pd.DataFrame) -> Site:  # noqa: ANN001
    return Site(profile, prices)


def make_ven(vtn: TestVTN, site: Site, tmp_path: Path | None = None, **config) -> VEN:  # noqa: ANN003
    client = OpenADRClient(OpenADRConfig(vtn_url=vtn.url, client_id="ven-client", client_secret="ven-secret",
                                         timeout_s=config.pop("timeout_s", 5.0)))
    defaults = dict(ven_name="west-texas-ven", resource_names=("west-texas-site",), issuer=ISSUER,
                    honour_randomize_start=False, retry_base_s=30.0,
                    outbox_path=None if tmp_path is None else tmp_path / "outbox.json")
    defaults.update(config)
    return VEN(client, VENConfig(**defaults), site.loop, measurements=site.measured_kw,
               clock=lambda: site.now)


def limit_event(program_id: str, start: datetime, limits_kw: list[float], **extra) -> dict:  # noqa: ANN003
    return {"programID": program_id, "eventName": "capacity",
            "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "IMPORT_CAPACITY_LIMIT",
                                    "units": "KW"}],
            "intervalPeriod": {"start": iso(start), "duration": "PT15M"},
            "intervals": [{"id": k, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [v]}]}
                          for k, v in enumerate(limits_kw)], **extra}


# --------------------------------------------------------------------------- mapping (pure)


def test_durations_and_times_follow_the_spec() -> None:
    assert parse_duration("PT15M") == timedelta(minutes=15)
    assert parse_duration("P1DT2H30M") == timedelta(days=1, hours=2, minutes=30)
    assert parse_duration("P1W") == timedelta(days=7)
    assert parse_duration("-PT5M") == timedelta(minutes=-5)
    assert parse_duration("P9999Y") is None  # infinity
    assert parse_duration(None) == timedelta(0)  # spec default PT0S
    with pytest.raises(ValueError):
        parse_duration("15 minutes")
    assert parse_datetime("0001-01-01T00:00:00Z") is None and parse_datetime("0001-01-01") is None
    assert parse_datetime("2023-06-15T09:30:00-05:00") == datetime(2023, 6, 15, 14, 30, tzinfo=UTC)
    assert modification_number("2020-01-01T00:01:40Z") == 100
    assert modification_number("2024-05-01T00:00:00Z") < modification_number("2024-05-01T00:00:01Z")


def test_intervals_resolve_defaults_overrides_now_and_loops() -> None:
    now = T0
    event = {"intervalPeriod": {"start": iso(T0), "duration": "PT1H"},
             "intervals": [{"id": 0, "payloads": []}, {"id": 1, "intervalPeriod": {"duration": "PT2H"}, "payloads": []},
                           {"id": 2, "payloads": []}]}
    got = [(i.interval_id, i.start, i.end) for i in resolve_intervals(event, now)]
    assert got == [("0", T0, T0 + timedelta(hours=1)), ("1", T0 + timedelta(hours=1), T0 + timedelta(hours=3)),
                   ("2", T0 + timedelta(hours=3), T0 + timedelta(hours=4))]
    do_it_now = {"intervalPeriod": {"start": "0001-01-01", "duration": "P9999Y"},
                 "intervals": [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [3]}]}]}
    (only,) = resolve_intervals(do_it_now, now)
    assert only.start == now and only.end is None
    shorter = {**event, "duration": "PT90M"}
    assert [i.end for i in resolve_intervals(shorter, now)] == [T0 + timedelta(hours=1), T0 + timedelta(minutes=90)]
    looped = {"intervalPeriod": {"start": iso(T0), "duration": "PT1H"}, "duration": "P9999Y",
              "intervals": [{"id": 0, "payloads": []}, {"id": 1, "payloads": []}]}
    ids = [i.interval_id for i in resolve_intervals(looped, now, horizon=timedelta(hours=5))]
    assert ids == ["0", "1", "0.1", "1.1", "0.2"]  # unrolled while starts are inside the horizon
    shifted = resolve_intervals(event, now, random_offset=timedelta(minutes=-3))
    assert [i.start for i in shifted][:2] == [T0 - timedelta(minutes=3), T0 + timedelta(minutes=57)]


def test_capacity_limits_become_one_message_per_interval() -> None:
    event = {"id": "event-9", "programID": "p", "modificationDateTime": "2020-02-10T17:00:00Z",
             **limit_event("p", T0, [5000.0, 3000.0, 8000.0])}
    mapped = map_event(event, T0, issuer=ISSUER)
    assert [m.event_id for m in mapped.dr_messages] == ["event-9:0", "event-9:1", "event-9:2"]
    assert [m.import_limit_kw for m in mapped.dr_messages] == [5000.0, 3000.0, 8000.0]
    assert mapped.dr_messages[1].start == T0 + timedelta(minutes=15)
    assert mapped.dr_messages[1].end == T0 + timedelta(minutes=30)
    assert {m.modification_number for m in mapped.dr_messages} == {modification_number("2020-02-10T17:00:00Z")}
    assert all(m.issuer == ISSUER and m.program.value == "utility" for m in mapped.dr_messages)
    in_mw = {**event, "payloadDescriptors": [{"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "MW"}]}
    assert map_event(in_mw, T0, issuer=ISSUER).dr_messages[0].import_limit_kw == 5_000_000.0


def test_simple_price_ghg_export_and_unknown_payloads() -> None:
    event = {"id": "e1", "programID": "p",
             "payloadDescriptors": [{"payloadType": "PRICE", "units": "KWH", "currency": "USD"},
                                    {"payloadType": "EXPORT_CAPACITY_LIMIT", "units": "KW"}],
             "intervalPeriod": {"start": iso(T0), "duration": "PT3H"},
             "intervals": [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [2]},
                                                  {"type": "PRICE", "values": [0.17, 0.03, 0.11]},
                                                  {"type": "GHG", "values": [420.0]},
                                                  {"type": "EXPORT_CAPACITY_LIMIT", "values": [0]},
                                                  {"type": "CHARGE_STATE_SETPOINT", "values": [50]}]}]}
    mapped = map_event(event, T0, issuer=ISSUER)
    (message,) = mapped.dr_messages
    assert message.level == 2 and message.import_limit_kw is None
    assert mapped.prices_usd_mwh == [(T0, T0 + timedelta(hours=1), pytest.approx(170.0)),
                                     (T0 + timedelta(hours=1), T0 + timedelta(hours=2), pytest.approx(30.0)),
                                     (T0 + timedelta(hours=2), T0 + timedelta(hours=3), pytest.approx(110.0))]
    assert mapped.carbon_kg_per_mwh == [(T0, T0 + timedelta(hours=3), 420.0)]  # g/kWh == kg/MWh
    assert mapped.export_limits[0].export_limit_kw == 0.0
    assert mapped.unsupported == ["payload type CHARGE_STATE_SETPOINT"]
    euros = {**event, "payloadDescriptors": [{"payloadType": "PRICE", "units": "KWH", "currency": "EUR"}]}
    assert "PRICE currency 'EUR'" in map_event(euros, T0, issuer=ISSUER).unsupported[0]
    bad_level = {**event, "intervals": [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [7]}]}]}
    assert map_event(bad_level, T0, issuer=ISSUER).dr_messages == []


def test_cancellation_priority_and_targets() -> None:
    zero = {"id": "e", "programID": "p", "intervalPeriod": {"start": "0001-01-01", "duration": "PT0S"},
            "intervals": [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [1]}]}]}
    assert is_cancelled(zero) and map_event(zero, T0, issuer=ISSUER).cancelled
    low = {"id": "low", **limit_event("p", T0, [1000.0, 1000.0])}
    covered = map_event(low, T0, issuer=ISSUER, higher_priority=[(T0, T0 + timedelta(minutes=15))])
    assert [m.event_id for m in covered.dr_messages] == ["low:1"]
    assert targets_match({"targets": ["site-a"]}, ["site-a", "ven"]) and not targets_match({"targets": ["b"]}, ["a"])
    assert targets_match({"targets": [{"type": "VEN_NAME", "values": ["ven"]}]}, ["ven"])  # 3.0 valuesMap
    assert targets_match({}, ["anyone"])


def test_report_schedule_defaults_and_periodic() -> None:
    event = limit_event("p", T0, [1.0] * 6)
    intervals = resolve_intervals(event, T0)
    ((due, covered),) = report_schedule({"payloadType": "USAGE"}, intervals)
    assert due == T0 + timedelta(minutes=90) and len(covered) == 6
    periodic = report_schedule({"payloadType": "USAGE", "startInterval": 1, "numIntervals": 2, "frequency": 2,
                                "repeat": 3}, intervals)
    assert [[i.interval_id for i in c] for _, c in periodic] == [["0", "1"], ["2", "3"], ["4", "5"]]
    assert [d for d, _ in periodic] == [T0 + timedelta(minutes=30), T0 + timedelta(minutes=60),
                                        T0 + timedelta(minutes=90)]


# --------------------------------------------------------------------------- client and OAuth2


def test_config_from_environment_and_tls_on_by_default() -> None:
    env = {"HASHFLEX_OPENADR_VTN_URL": "https://vtn.example/openadr3", "HASHFLEX_OPENADR_CLIENT_ID": "id",
           "HASHFLEX_OPENADR_CLIENT_SECRET": "s3cret"}
    config = OpenADRConfig.from_env(env)
    assert config.vtn_url == "https://vtn.example/openadr3" and config.client_secret == "s3cret"
    assert config.verify_tls is True and "s3cret" not in repr(config)
    with pytest.raises(ValueError, match="HASHFLEX_OPENADR_VTN_URL"):
        OpenADRConfig.from_env({})


def test_token_is_reused_refreshed_on_revocation_and_bad_secret_is_not_retried(vtn: TestVTN) -> None:
    vtn.create_program("ercot-capacity")
    client = OpenADRClient(OpenADRConfig(vtn_url=vtn.url, client_id="ven-client", client_secret="ven-secret"))
    client.programs()
    client.programs()
    assert vtn.token_requests == 1, "one token for both calls"
    vtn.expire_tokens()  # the VTN revokes the token early
    assert [p["programName"] for p in client.programs()] == ["ercot-capacity"]
    assert vtn.token_requests == 2 and ("GET", "/programs", 401) in vtn.requests
    wrong = OpenADRClient(OpenADRConfig(vtn_url=vtn.url, client_id="ven-client", client_secret="nope"))
    with pytest.raises(VTNError, match="client id and secret") as err:
        wrong.programs()
    assert not isinstance(err.value, VTNUnavailable)


def test_token_refreshes_before_expiry(vtn: TestVTN) -> None:
    clock = [0.0]
    vtn.token_lifetime_s = 100.0
    client = OpenADRClient(OpenADRConfig(vtn_url=vtn.url, client_id="ven-client", client_secret="ven-secret"),
                           clock=lambda: clock[0])
    client.programs()
    clock[0] = 60.0
    client.programs()
    assert vtn.token_requests == 1
    clock[0] = 75.0  # 25 s left of 100: inside the refresh margin
    client.programs()
    assert vtn.token_requests == 2 and not any(status == 401 for _, _, status in vtn.requests)


def test_vtn_errors_are_classified(vtn: TestVTN) -> None:
    client = OpenADRClient(OpenADRConfig(vtn_url=vtn.url, client_id="ven-client", client_secret="ven-secret",
                                         timeout_s=0.3))
    vtn.fail_next(1, 500, "/programs")
    with pytest.raises(VTNUnavailable, match="500"):
        client.programs()
    vtn.delay_s = 0.6
    with pytest.raises(VTNUnavailable, match="Timeout"):
        client.programs()
    vtn.delay_s = 0.0
    with pytest.raises(VTNError, match="404") as err:
        client.event("event-404")
    assert not isinstance(err.value, VTNUnavailable)


# --------------------------------------------------------------------------- enrolment


def test_enrolment_creates_or_finds_the_ven_and_lists_its_programs(vtn: TestVTN, site: Site) -> None:
    open_program = vtn.create_program("ercot-capacity")
    targeted = vtn.create_program("oncor-west-pilot", targets=["oncor-west"])
    vtn.create_program("someone-elses", targets=["panhandle"])
    ven = make_ven(vtn, site)
    enrolment = ven.enrol()
    assert list(enrolment.programs) == [open_program["id"]], "targeted programs stay hidden until granted"
    (ven_object,) = vtn.vens.values()
    assert ven_object["venName"] == "west-texas-ven" and ven_object["clientID"] == "ven-client"
    assert [r["resourceName"] for r in vtn.resources.values()] == ["west-texas-site"]
    vtn.grant("west-texas-ven", ["oncor-west"])  # the utility enrols the site in the pilot
    again = make_ven(vtn, site).enrol()
    assert sorted(again.programs) == sorted([open_program["id"], targeted["id"]])
    assert len(vtn.vens) == 1 and len(vtn.resources) == 1, "the second start found its objects"
    only = make_ven(vtn, site, program_names=("oncor-west-pilot",)).enrol()
    assert list(only.programs) == [targeted["id"]]


def test_a_vtn_that_refuses_ven_creation_says_what_to_do(vtn: TestVTN, site: Site) -> None:
    vtn.vens_may_create = False
    with pytest.raises(VTNError, match="ask the utility to provision it"):
        make_ven(vtn, site).enrol()


# --------------------------------------------------------------------------- events through the loop


def test_capacity_event_cuts_load_in_its_first_interval_then_modified_then_cancelled(
        vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site)
    ven.enrol()
    site.tick()
    assert site.fleet.load_kw() > 25_000, "the site mines flat out before the event"
    start = T0 + timedelta(minutes=15)
    event = vtn.create_event(limit_event(program["id"], start, [5_000.0, 3_000.0, 5_000.0, 8_000.0]))
    site.advance(5)
    assert ven.poll(site.now) == 4
    assert all(a.status == "accepted" for a in ven.acks)
    assert site.loop.dr_book.limit_at(start)[0] == 5_000.0
    site.advance(10)  # the event's first interval starts
    site.tick()
    assert site.fleet.load_kw() <= 5_000.0 + 1e-6, "load cut within the first interval"
    # Modification: the utility tightens interval 1 and extends interval 3.
    intervals = json.loads(json.dumps(event["intervals"]))
    intervals[1]["payloads"][0]["values"] = [2_000.0]
    vtn.update_event(event["id"], intervals=intervals)
    vtn.expire_tokens()  # and revokes the VEN's token meanwhile
    tokens = vtn.token_requests
    site.advance(5)
    assert ven.poll(site.now) == 1, "only the changed interval is re-sent"
    assert vtn.token_requests == tokens + 1
    assert site.loop.dr_book.message(f"{event['id']}:1").import_limit_kw == 2_000.0
    site.advance(10)
    site.tick()
    assert site.fleet.load_kw() <= 2_000.0 + 1e-6
    # Cancellation: the utility deletes the event; the remaining intervals are lifted.
    vtn.delete_event(event["id"])
    site.advance(1)
    assert ven.poll(site.now) == 3  # intervals 1 (in force), 2 and 3 (pending)
    assert site.loop.dr_book.limit_at(site.now)[0] == float("inf")
    assert site.loop.dr_book.status(f"{event['id']}:2") == "cancelled"
    site.advance(14)
    site.tick()
    assert site.fleet.load_kw() > 20_000, "the site resumes mining after the cancellation"
    assert site.loop.counters["dr_rejected"] == 0


def test_zero_duration_update_cancels_and_ended_intervals_are_not_resent(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site)
    ven.enrol()
    event = vtn.create_event(limit_event(program["id"], T0, [4_000.0, 4_000.0]))
    assert ven.poll(site.now) == 2
    vtn.update_event(event["id"], intervalPeriod={"start": "0001-01-01T00:00:00Z", "duration": "PT0S"})
    site.advance(1)
    assert ven.poll(site.now) == 2
    assert site.loop.dr_book.limit_at(site.now)[0] == float("inf")
    late = vtn.create_event(limit_event(program["id"], T0 - timedelta(hours=1), [1_000.0, 1_000.0]))
    assert ven.poll(site.now) == 0, "intervals already over are not sent"
    assert late["id"] in ven._events


def test_simple_level_3_takes_the_emergency_fast_path_before_any_tick(vtn: TestVTN, site: Site,
                                                                      cert: TestCert) -> None:
    program = vtn.create_program("ercot-emergency")
    ven = make_ven(vtn, site, webhook=WebhookConfig(ssl_context=cert.server_context()))
    ven.enrol()
    ven.start_webhook()
    assert ven.subscribe() and ven.push_active
    site.tick()
    assert site.fleet.load_kw() > 25_000
    ticks = site.loop.counters["ticks"]
    site.advance(3)
    vtn.create_event({"programID": program["id"], "eventName": "EEA3", "priority": 0,
                      "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "SIMPLE"}],
                      "intervalPeriod": {"start": "0001-01-01T00:00:00Z", "duration": "P9999Y"},
                      "intervals": [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [3]}]}]})
    # The webhook delivered it synchronously: no poll, no tick.
    assert ven.counters["polls"] == 0 and site.loop.counters["ticks"] == ticks
    level3 = site.profile.dr.level_import_limit_kw[3]
    assert site.fleet.load_kw() <= level3 + 1e-6
    assert site.loop.counters["fast_path_actions"] >= 1
    (message_id,) = site.loop.dr_book.active_ids(site.now)
    assert site.loop.dr_book.message(message_id).end is None, "open-ended until cancelled"
    ven.stop()


def test_webhook_checks_its_bearer_token_and_polling_is_the_fallback(vtn: TestVTN, site: Site,
                                                                     cert: TestCert) -> None:
    import requests

    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site, webhook=WebhookConfig(bearer_token="hook-secret", ssl_context=cert.server_context()))
    ven.enrol()
    url = ven.start_webhook()
    ven.subscribe()
    (sub,) = vtn.subscriptions.values()
    assert sub["objectOperations"][0]["bearerToken"] == "hook-secret" and sub["programID"] == program["id"]
    forged = {"objectType": "EVENT", "operation": "CREATE",
              "object": {"id": "forged", **limit_event(program["id"], T0, [0.0])}}
    assert url.startswith("https://127.0.0.1:")
    assert requests.post(url, json=forged, headers={"Authorization": "Bearer guess"}, timeout=5,
                         verify=str(cert.cert)).status_code == 401
    assert requests.post(url, json=forged, timeout=5, verify=str(cert.cert)).status_code == 401
    assert ven.counters["notifications_refused"] == 2 and site.loop.dr_book.event_ids() == []
    ven.subscribe()  # a restart re-subscribes without leaving the old subscription behind
    assert len(vtn.subscriptions) == 1
    ven.stop()
    # A VTN without webhooks: subscription refused, the VEN polls.
    vtn.subscriptions_supported = False
    polling = make_ven(vtn, site, webhook=WebhookConfig(ssl_context=cert.server_context()), poll_interval_s=120.0)
    polling.tick(site.now)
    assert not polling.push_active and polling.counters["polls"] == 1
    vtn.create_event(limit_event(program["id"], T0 + timedelta(minutes=15), [6_000.0]))
    site.advance(1)
    polling.tick(site.now)
    assert polling.counters["polls"] == 1, "not yet due"
    site.advance(1)
    polling.tick(site.now)
    assert polling.counters["polls"] == 2 and len(site.loop.dr_book.event_ids()) == 1
    polling.stop()


def test_background_thread_polls_on_the_wall_clock(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    wall = make_ven(vtn, site, poll_interval_s=0.0)
    wall.clock = lambda: datetime.now(UTC)
    now = datetime.now(UTC)
    vtn.create_event(limit_event(program["id"], now + timedelta(minutes=5), [7_000.0]))
    wall.start(tick_s=0.05)
    try:
        poll_until(lambda: len(site.loop.dr_book.event_ids()) == 1, timeout_s=5, message="event via the thread")
    finally:
        wall.stop()


def test_unknown_payloads_are_counted_not_fatal(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site)
    ven.enrol()
    prices: list = []
    ven.on_prices = lambda event_id, signal: prices.append((event_id, signal))
    event = vtn.create_event({"programID": program["id"], "intervalPeriod": {"start": iso(T0), "duration": "PT1H"},
                              "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "PRICE",
                                                      "units": "KWH", "currency": "USD"}],
                              "intervals": [{"id": 0, "payloads": [{"type": "PRICE", "values": [0.05]},
                                                                   {"type": "X_PRIVATE_THING", "values": ["?"]}]}]})
    assert ven.poll(site.now) == 0
    assert ven.counters["unsupported_payloads"] == 1 and "X_PRIVATE_THING" in ven.unsupported[0]
    assert prices == [(event["id"], [(T0, T0 + timedelta(hours=1), pytest.approx(50.0))])]


# --------------------------------------------------------------------------- reports and outages


def test_reports_arrive_with_measured_readings_through_vtn_outages(vtn: TestVTN, site: Site, tmp_path: Path) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site, tmp_path, timeout_s=0.3)
    ven.enrol()
    site.tick()
    start = T0 + timedelta(minutes=15)
    event = vtn.create_event(limit_event(
        program["id"], start, [5_000.0, 5_000.0],
        reportDescriptors=[{"payloadType": "USAGE", "readingType": "DIRECT_READ", "units": "KWH"},
                           {"payloadType": "DEMAND", "readingType": "MEAN", "units": "KW", "frequency": 1,
                            "numIntervals": 1, "startInterval": 0, "repeat": -1}]))
    ven.poll(site.now)
    measured: list[float] = []
    vtn.fail_next(1_000, 500, "/reports")  # the VTN cannot take reports during the whole event
    site.advance(15)
    for k in range(2):  # the event's two intervals
        site.tick()
        measured.append(site.fleet.load_kw())
        site.advance(15 - 1e-3)
        ven.tick(site.now)
        assert len(ven.outbox) == k, "nothing is due before the interval ends"
        site.advance(1e-3)
        ven.tick(site.now)
    assert len(ven.outbox) == 3, "two DEMAND reports and the USAGE report are queued"
    assert vtn.reports_for(event["id"]) == []
    queued = json.loads((tmp_path / "outbox.json").read_text())
    assert len(queued["pending"]) == 3, "persisted while the VTN is down"
    # The VTN recovers but answers too slowly once; nothing is lost, nothing doubled, order kept.
    vtn.recover()
    assert ven.outbox.failures == 2
    site.advance(0.5)
    ven.tick(site.now)
    assert len(ven.outbox) == 3, "backing off: no retry before the backoff delay (60 s after 2 failures)"
    vtn.delay_s = 0.6
    site.advance(0.5)
    ven.tick(site.now)
    vtn.delay_s = 0.0
    assert len(ven.outbox) == 3 and ven.outbox.failures == 3
    site.advance(2)
    ven.tick(site.now)
    assert len(ven.outbox) == 0 and ven.outbox.delivered == 3
    reports = vtn.reports_for(event["id"])
    assert len(reports) == 3, "the report the VTN stored while the VEN timed out is not sent twice"
    assert [r["payloadDescriptors"][0]["payloadType"] for r in reports] == ["DEMAND", "USAGE", "DEMAND"]
    usage = next(r for r in reports if r["payloadDescriptors"][0]["payloadType"] == "USAGE")
    assert usage["clientName"] == "west-texas-ven" and usage["clientID"] == "ven-client"
    (resource,) = usage["resources"]
    assert resource["resourceName"] == "west-texas-site"
    assert [i["id"] for i in resource["intervals"]] == [0, 1]
    assert [i["payloads"][0]["values"][0] for i in resource["intervals"]] == pytest.approx(
        [kw * 0.25 for kw in measured])  # kWh over 15 minutes
    assert all(kw <= 5_000.0 + 1e-6 for kw in measured)
    demand = sorted((r for r in reports if r["payloadDescriptors"][0]["payloadType"] == "DEMAND"),
                    key=lambda r: r["resources"][0]["intervals"][0]["id"])
    assert [r["resources"][0]["intervals"][0]["payloads"][0]["values"][0] for r in demand] == pytest.approx(measured)
    compliance = site.loop.dr_book.compliance(f"{event['id']}:0")
    assert compliance.intervals == 1 and compliance.compliant_pct == 100.0


def test_outbox_survives_a_restart_and_keeps_rejected_reports(vtn: TestVTN, tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    outbox = ReportOutbox(path, retry_base_s=1.0)
    outbox.add("e/0/0", {"eventID": "missing", "clientName": "v", "resources": []}, T0)
    outbox.add("e/0/0", {"eventID": "missing", "clientName": "v", "resources": []}, T0)  # same key: once
    assert len(outbox) == 1
    restarted = ReportOutbox(path, retry_base_s=1.0)
    assert len(restarted) == 1 and "e/0/0" in restarted.generated
    client = OpenADRClient(OpenADRConfig(vtn_url=vtn.url, client_id="ven-client", client_secret="ven-secret"))
    vtn.fail_next(1, 0, "/reports")  # connection dropped
    assert restarted.flush(client, T0) == 0 and restarted.retry_at == T0 + timedelta(seconds=1)
    assert restarted.flush(client, T0 + timedelta(seconds=1)) == 0  # 400: unknown event
    assert len(restarted) == 0 and len(restarted.rejected) == 1
    assert "eventID missing" in restarted.rejected[0]["last_error"]
    assert json.loads(path.read_text())["rejected"][0]["key"] == "e/0/0"


def test_a_failed_poll_leaves_accepted_events_in_force(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site)
    ven.enrol()
    vtn.create_event(limit_event(program["id"], T0, [4_000.0]))
    ven.poll(site.now)
    vtn.fail_next(2, 500, "/events")
    with pytest.raises(VTNUnavailable):
        ven.poll(site.now)
    ven.tick(site.now + timedelta(minutes=1))  # tick logs the failure and carries on
    assert ven.counters["poll_failures"] == 2
    assert site.loop.dr_book.limit_at(site.now)[0] == 4_000.0
    site.advance(2)
    ven.poll(site.now)
    assert site.loop.dr_book.limit_at(site.now)[0] == 4_000.0 and site.loop.counters["dr_rejected"] == 0


def test_unknown_issuer_program_is_refused_by_the_site(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site, issuer=None)  # issuer falls back to the VTN's program id
    ven.enrol()
    vtn.create_event(limit_event(program["id"], T0, [0.0]))
    ven.poll(site.now)
    assert ven.acks[0].status == "rejected" and program["id"] in ven.acks[0].reason
    assert site.loop.dr_book.limit_at(site.now)[0] == float("inf")
    assert site.loop.counters["dr_rejected"] == 1, "refused by the same DR path as MQTT events"


def test_a_higher_priority_event_overrides_and_its_removal_restores(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site)
    ven.enrol()
    low = vtn.create_event(limit_event(program["id"], T0, [4_000.0, 4_000.0], priority=5))
    ven.poll(site.now)
    assert site.loop.dr_book.limit_at(site.now)[0] == 4_000.0
    normal = vtn.create_event({"programID": program["id"], "priority": 0,
                               "intervalPeriod": {"start": iso(T0), "duration": "PT30M"},
                               "intervals": [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [0]}]}]})
    ven.poll(site.now)
    assert site.loop.dr_book.limit_at(site.now)[0] == float("inf"), "priority 0 'normal operation' wins"
    assert site.loop.dr_book.status(f"{low['id']}:0") == "cancelled"
    vtn.delete_event(normal["id"])
    site.advance(1)
    ven.poll(site.now)
    assert site.loop.dr_book.limit_at(site.now)[0] == 4_000.0, "the lower-priority limit is back"
    assert site.loop.dr_book.message(f"{low['id']}:1.r1").import_limit_kw == 4_000.0
    assert site.loop.counters["dr_rejected"] == 0


def test_enrolment_retries_with_backoff_and_programs_are_refreshed(vtn: TestVTN, site: Site) -> None:
    vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site, reenrol_interval_s=600.0)
    vtn.fail_next(2, 500, "/vens")
    ven.tick(site.now)
    assert ven.enrolment is None
    tries = sum(1 for _, path, _ in vtn.requests if path == "/vens")
    site.advance(0.25)
    ven.tick(site.now)
    assert sum(1 for _, path, _ in vtn.requests if path == "/vens") == tries, "waits out the backoff (30 s)"
    site.advance(0.5)
    ven.tick(site.now)  # second failure: next try in 60 s
    site.advance(1)
    ven.tick(site.now)
    assert ven.enrolment is not None and len(ven.enrolment.programs) == 1 and ven.counters["polls"] == 1
    vtn.create_program("ercot-second-program")
    site.advance(10)
    ven.tick(site.now)
    assert len(ven.enrolment.programs) == 2, "a new program is picked up at re-enrolment"


def test_listings_follow_pages_and_retargeted_events_are_lifted(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site)
    ven.enrol()
    for k in range(61):  # more than one page of 50
        vtn.create_event(limit_event(program["id"], T0 - timedelta(hours=2), [1_000.0], eventName=f"old-{k}"))
    vtn.grant("west-texas-ven", ["west-texas-site"])
    ven.enrol()
    mine = vtn.create_event(limit_event(program["id"], T0, [6_000.0], targets=["west-texas-site"]))
    vtn.create_event(limit_event(program["id"], T0, [1.0], targets=["panhandle"]))  # not this site's
    assert ven.poll(site.now) == 1
    assert len(ven._events) == 62 and site.loop.dr_book.limit_at(site.now)[0] == 6_000.0
    # The utility moves the event to another site: the VTN stops showing it to this VEN.
    vtn.update_event(mine["id"], targets=["panhandle"])
    ven.poll(site.now)
    assert site.loop.dr_book.limit_at(site.now)[0] == float("inf")


def test_tls_is_verified_by_default(tmp_path: Path) -> None:
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.fail("openssl binary not found: cannot make a test certificate (the test command installs it)")
    cert, key = tmp_path / "vtn.pem", tmp_path / "vtn.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = TestVTN(ssl_context=context).start()
    try:
        server.create_program("ercot-capacity")
        env = {"HASHFLEX_OPENADR_VTN_URL": server.url, "HASHFLEX_OPENADR_CLIENT_ID": "ven-client",
               "HASHFLEX_OPENADR_CLIENT_SECRET": "ven-secret"}
        with pytest.raises(VTNError, match="TLS verification failed") as err:
            OpenADRClient(OpenADRConfig.from_env(env)).programs()
        assert not isinstance(err.value, VTNUnavailable)
        trusted = OpenADRClient(OpenADRConfig.from_env({**env, "HASHFLEX_OPENADR_CA_BUNDLE": str(cert)}))
        assert [p["programName"] for p in trusted.programs()] == ["ercot-capacity"]
        # The webhook over HTTPS too (the spec requires it): the VTN trusts the same test CA.
        server.callback_verify = str(cert)
        site = type("NoLoop", (), {"handle_dr": lambda self, m, now: None})()
        ven = VEN(trusted, VENConfig(ven_name="wt", webhook=WebhookConfig(ssl_context=context)), site)
        ven.enrol()
        assert ven.start_webhook().startswith("https://127.0.0.1:")
        assert ven.subscribe(), "the VTN's echo challenge passed over HTTPS"
        ven.stop()
    finally:
        server.stop()


def test_randomize_start_is_drawn_once_per_event(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site, honour_randomize_start=True, seed=7)
    ven.enrol()
    body = limit_event(program["id"], T0 + timedelta(hours=1), [5_000.0, 5_000.0])
    body["intervalPeriod"]["randomizeStart"] = "PT5M"
    event = vtn.create_event(body)
    ven.poll(site.now)
    first = site.loop.dr_book.message(f"{event['id']}:0")
    offset = first.start - (T0 + timedelta(hours=1))
    assert timedelta(0) < abs(offset) <= timedelta(minutes=5)
    assert site.loop.dr_book.message(f"{event['id']}:1").start == first.start + timedelta(minutes=15)
    intervals = json.loads(json.dumps(event["intervals"]))
    intervals[0]["payloads"][0]["values"] = [4_000.0]
    vtn.update_event(event["id"], intervals=intervals)
    ven.poll(site.now)
    modified = site.loop.dr_book.message(f"{event['id']}:0")
    assert modified.import_limit_kw == 4_000.0 and modified.start == first.start, "the offset does not move"


def test_ven_config_from_environment_and_issuer_must_be_authorised(vtn: TestVTN, site: Site) -> None:
    config = VENConfig.from_env({"HASHFLEX_OPENADR_VEN_NAME": "wt", "HASHFLEX_OPENADR_RESOURCES": "site-a, site-b",
                                 "HASHFLEX_OPENADR_ISSUER": ISSUER, "HASHFLEX_OPENADR_POLL_S": "15",
                                 "HASHFLEX_OPENADR_WEBHOOK_PORT": "8443",
                                 "HASHFLEX_OPENADR_WEBHOOK_URL": "https://site.example/openadr/callback"})
    assert config.resource_names == ("site-a", "site-b") and config.poll_interval_s == 15.0
    assert config.webhook is not None and config.webhook.port == 8443 and len(config.webhook.bearer_token) >= 32
    with pytest.raises(ValueError, match="VEN_NAME"):
        VENConfig.from_env({})
    with pytest.raises(ValueError, match="dr.issuers"):
        make_ven(vtn, site, issuer="mallory")


def test_a_restarted_ven_adopts_what_the_book_holds_and_cancels_what_was_deleted_meanwhile(
        vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    first = make_ven(vtn, site)
    first.enrol()
    kept = vtn.create_event({"programID": program["id"],
                             "intervalPeriod": {"start": "0001-01-01T00:00:00Z", "duration": "P9999Y"},
                             "intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [9_000.0]}]}]})
    gone = vtn.create_event(limit_event(program["id"], T0, [4_000.0, 4_000.0]))
    first.poll(site.now)
    assert site.loop.dr_book.limit_at(site.now)[0] == 4_000.0
    vtn.delete_event(gone["id"])  # while the VEN is down
    site.advance(5)
    restarted = make_ven(vtn, site)  # same site, same DR book (restored from the store in the daemon)
    restarted.enrol()
    restarted.poll(site.now)
    assert site.loop.dr_book.status(f"{gone['id']}:0") == "cancelled"
    assert site.loop.dr_book.status(f"{gone['id']}:1") == "cancelled"
    assert site.loop.dr_book.limit_at(site.now)[0] == 9_000.0
    vtn.delete_event(kept["id"])
    restarted.poll(site.now)
    assert site.loop.dr_book.limit_at(site.now)[0] == float("inf"), "the adopted open-ended event can be lifted"
    assert site.loop.counters["dr_rejected"] == 0


def test_openadr_3_0_vtn(site: Site) -> None:
    """3.0.1: valuesMap targets filtered by the VEN, resources under /vens/{id}, reports carry programID."""
    server = TestVTN(version="3.0").start()
    try:
        program = server.create_program("ercot-capacity")
        client = OpenADRClient(OpenADRConfig(vtn_url=server.url, client_id="ven-client", client_secret="ven-secret",
                                             api_version="3.0"))
        ven = VEN(client, VENConfig(ven_name="west-texas-ven", resource_names=("west-texas-site",), issuer=ISSUER),
                  site.loop, measurements=site.measured_kw, clock=lambda: site.now)
        ven.enrol()
        assert [r["resourceName"] for r in server.resources.values()] == ["west-texas-site"]
        ours = server.create_event(limit_event(
            program["id"], T0, [5_000.0], targets=[{"type": "RESOURCE_NAME", "values": ["west-texas-site"]}],
            reportDescriptors=[{"payloadType": "DEMAND"}]))
        server.create_event(limit_event(program["id"], T0, [1.0], targets=[{"type": "VEN_NAME", "values": ["other"]}]))
        assert ven.poll(site.now) == 1
        assert site.loop.dr_book.limit_at(site.now)[0] == 5_000.0
        site.tick()
        site.advance(15)
        ven.tick(site.now)
        (report,) = server.reports_for(ours["id"])
        assert report["programID"] == program["id"]
        assert report["resources"][0]["intervals"][0]["payloads"][0]["values"][0] <= 5_000.0 + 1e-6
    finally:
        server.stop()
