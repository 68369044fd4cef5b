"""OpenADR VEN faults (issues 19 and 10 item 8), each reproduced against the real VEN, a real test VTN
on 127.0.0.1 and the real control loop on a simulated site. Each test failed before its fix."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hashflex.control.loop import ControlLoop
from hashflex.control.solver import SolveRunner
from hashflex.data import bundled_path
from hashflex.feeds.ercot import read_price_file
from hashflex.openadr.client import OpenADRClient, OpenADRConfig
from hashflex.openadr.mapping import map_event, resolve_intervals
from hashflex.openadr.ven import VEN, VENConfig, WebhookConfig
from hashflex.profile import parse_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from openadr_tls import TestCert, make_cert
from openadr_vtn import TestVTN
from test_openadr import ISSUER, PROFILE_YAML, T0, iso, limit_event

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    rt = read_price_file(bundled_path("ercot/RTM-2020-02.csv"), settlement_point="LZ_WEST", settlement_point_type="LZ")
    da = read_price_file(bundled_path("ercot/DAM-2020-02.csv"), settlement_point="LZ_WEST")
    return pd.concat([rt, da], ignore_index=True)


class Recorder:
    """Collects audit records as the daemon's AuditRecorder would receive them."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict, object]] = []

    def record(self, kind: str, payload: dict, at: object) -> None:
        self.records.append((kind, dict(payload), at))


class Site:
    def __init__(self, prices: pd.DataFrame) -> None:
        data = yaml.safe_load(PROFILE_YAML.read_text())
        data["dr"]["level_import_limit_kw"] = {1: 20_000, 2: 8_000, 3: 3_000}
        self.profile = parse_profile(yaml.safe_dump(data))
        self.fleet = SimulatedFleet(self.profile)
        self.loop = ControlLoop(self.profile, forecaster=ReplayForecaster(self.profile, prices), driver=self.fleet,
                                solver=SolveRunner(inline=True))
        self.now = T0

    def measured_kw(self, start, end) -> float:  # noqa: ANN001
        return 1_000.0


@pytest.fixture
def site(prices: pd.DataFrame) -> Site:
    return Site(prices)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> TestCert:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def vtn(cert: TestCert) -> Iterator[TestVTN]:
    server = TestVTN().start()
    server.callback_verify = str(cert.cert)
    yield server
    server.stop()


def make_ven(vtn: TestVTN, site: Site, recorder: Recorder | None = None, **config) -> VEN:  # noqa: ANN003
    client = OpenADRClient(OpenADRConfig(vtn_url=vtn.url, client_id="ven-client", client_secret="ven-secret",
                                         timeout_s=5.0))
    defaults = dict(ven_name="west-texas-ven", resource_names=("west-texas-site",), issuer=ISSUER,
                    honour_randomize_start=False)
    defaults.update(config)
    ven = VEN(client, VENConfig(**defaults), site.loop, measurements=site.measured_kw, clock=lambda: site.now)
    if recorder is not None:
        ven.recorder = recorder
    return ven


def run_bounded(target, timeout_s: float = 20.0) -> tuple[bool, object]:  # noqa: ANN001
    """Run ``target`` in a daemon thread; (finished, result or exception). A hang is a finding."""
    out: list[object] = []

    def body() -> None:
        try:
            out.append(target())
        except Exception as exc:  # noqa: BLE001
            out.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return (not thread.is_alive(), out[0] if out else None)


def raw_event(program_id: str, event_id: str, **fields) -> dict:  # noqa: ANN003
    base = {"id": event_id, "createdDateTime": "2020-02-10T17:00:00Z", "modificationDateTime": "2020-02-10T17:00:00Z",
            "objectType": "EVENT", **limit_event(program_id, T0, [4_000.0])}
    base.update(fields)
    return base


# --------------------------------------------------------------------------- paging


def test_paging_ends_when_the_vtn_ignores_skip(vtn: TestVTN, site: Site) -> None:
    for k in range(60):  # more than one full page
        vtn.create_program(f"program-{k}")
    vtn.ignore_skip = True
    client = OpenADRClient(OpenADRConfig(vtn_url=vtn.url, client_id="ven-client", client_secret="ven-secret"))
    finished, programs = run_bounded(client.programs)
    assert finished, "paging never ended: the VTN repeats its first page"
    assert isinstance(programs, list) and len(programs) == 50
    assert getattr(programs, "complete", True) is False, "a repeated page marks the listing incomplete"
    vtn.ignore_skip = False
    assert len(client.programs()) == 60 and client.programs().complete
    gets = sum(1 for m, p, _ in vtn.requests if m == "GET" and p == "/programs")
    client.programs()
    assert sum(1 for m, p, _ in vtn.requests if m == "GET" and p == "/programs") - gets == 2, \
        "stops on the short page: no extra empty-page request"


def test_an_incomplete_listing_cancels_nothing(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site)
    ven.enrol()
    for k in range(55):
        vtn.create_event(limit_event(program["id"], T0, [9_000.0 + k]))
    ven.poll(site.now)
    assert len(ven._events) == 55
    vtn.ignore_skip = True
    finished, _ = run_bounded(lambda: ven.poll(site.now))
    assert finished
    assert len(ven._events) == 55, "events beyond the repeated page are not taken as deleted"
    assert ven.status()["counters"]["listings_incomplete"] == 1


# --------------------------------------------------------------------------- one bad event


def test_one_bad_event_never_stops_the_others(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    recorder = Recorder()
    ven = make_ven(vtn, site, recorder)
    pid = program["id"]
    long_id = "e" * 127  # objectID allows 128
    vtn.put_raw_event(raw_event(pid, "huge", intervalPeriod={"start": iso(T0), "duration": "P8000Y"}))
    vtn.put_raw_event(raw_event(pid, "leap", intervalPeriod={"start": "2020-02-10T17:59:60Z", "duration": "PT1H"}))
    vtn.put_raw_event(raw_event(pid, long_id))
    vtn.put_raw_event(raw_event(pid, "stringtargets", targets="west-texas-ven"))
    vtn.put_raw_event(raw_event(pid, "badintervals", intervals="not a list"))
    vtn.put_raw_event(raw_event(pid, "naive", intervalPeriod={"start": "2020-02-10T18:00:00", "duration": "PT1H"}))
    vtn.create_event(limit_event(pid, T0, [6_000.0]))
    finished, error = run_bounded(lambda: ven.tick(site.now))
    assert finished and error is None, f"tick died: {error!r}"
    book = site.loop.dr_book
    active = {book.message(i).event_id: book.message(i) for i in book.active_ids(site.now)}
    assert len(active) == 4, f"the good, huge, leap and long-id events are in force: {sorted(active)}"
    assert book.message("huge:0").end is None, "P8000Y maps as open-ended"
    assert book.message("leap:0").start == T0, "23:59:60 is the next minute's first instant"
    (long_message,) = [m for m in active.values() if m.event_id.startswith("eeee")]
    assert len(long_message.event_id) <= 128
    status = ven.status()
    reasons = {r["id"]: r["reason"] for r in status["rejections"]}
    assert set(reasons) == {"stringtargets", "badintervals", "naive"}
    assert "targets" in reasons["stringtargets"] and "intervals" in reasons["badintervals"]
    assert "offset" in reasons["naive"]
    assert status["counters"]["events_rejected"] == 3
    assert {p["id"] for kind, p, _ in recorder.records if kind == "openadr_rejected"} == set(reasons)
    assert site.loop.dr_book.limit_at(site.now)[0] == 4_000.0


def test_a_string_target_grants_nothing(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site)
    ven.enrol()
    event = raw_event(program["id"], "chars", targets=" -lnu")  # iterated, it granted ' ', '-', 'l', 'n', 'u'
    ven.process_event(event, site.now)
    assert site.loop.dr_book.event_ids() == []
    assert ven.counters["events_rejected"] == 1


def test_an_accepted_event_that_turns_invalid_stays_in_force(vtn: TestVTN, site: Site) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site)
    ven.enrol()
    good = raw_event(program["id"], "ev1")
    ven.process_event(good, site.now)
    assert site.loop.dr_book.limit_at(site.now)[0] == 4_000.0
    ven.process_event({**good, "intervals": [{"id": "zero", "payloads": []}]}, site.now)
    assert site.loop.dr_book.limit_at(site.now)[0] == 4_000.0, "an unreadable update lifts nothing"


# --------------------------------------------------------------------------- durations (spec and User Guide)


def test_explicit_pt0s_on_a_capacity_limit_means_until_further_notice() -> None:
    event = raw_event("p", "pt0s", intervalPeriod={"start": iso(T0), "duration": "PT0S"})
    mapped = map_event(event, T0, issuer=ISSUER)
    assert not mapped.cancelled
    (message,) = mapped.dr_messages
    assert message.start == T0 and message.end is None and message.import_limit_kw == 4_000.0
    absent = raw_event("p", "absent", intervalPeriod={"start": iso(T0)})
    assert map_event(absent, T0, issuer=ISSUER).dr_messages[0].end is None, "absent == PT0S"


def test_cancellation_needs_the_beginning_of_time_and_pt0s() -> None:
    cancelled = raw_event("p", "c", intervalPeriod={"start": "0001-01-01T00:00:00Z", "duration": "PT0S"})
    assert map_event(cancelled, T0, issuer=ISSUER).cancelled
    past = raw_event("p", "past", intervalPeriod={"start": "0001-01-01T00:00:00Z", "duration": "PT1H"})
    mapped = map_event(past, T0, issuer=ISSUER)
    assert not mapped.cancelled and mapped.dr_messages == [], "0001-01-01 + PT1H ended in year 1: not 'now'"
    now_event = raw_event("p", "now", intervalPeriod={"start": "0001-01-01T00:00:00Z", "duration": "P9999Y"})
    (message,) = map_event(now_event, T0, issuer=ISSUER).dr_messages
    assert message.start == T0 and message.end is None


def test_interval_level_randomize_start_applies_to_that_interval_and_later() -> None:
    event = raw_event("p", "r", intervals=[
        {"id": 0, "intervalPeriod": {"start": iso(T0), "duration": "PT15M"},
         "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [1.0]}]},
        {"id": 1, "intervalPeriod": {"start": iso(T0 + timedelta(hours=1)), "duration": "PT15M",
                                     "randomizeStart": "PT10M"},
         "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [1.0]}]},
        {"id": 2, "intervalPeriod": {"start": iso(T0 + timedelta(hours=2)), "duration": "PT15M"},
         "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [1.0]}]}])
    event["intervalPeriod"] = {"start": iso(T0), "duration": "PT15M", "randomizeStart": "PT5M"}
    starts = [i.start for i in resolve_intervals(event, T0, random_offset=timedelta(minutes=2),
                                                 interval_offsets={1: timedelta(minutes=-7)})]
    assert starts == [T0 + timedelta(minutes=2), T0 + timedelta(minutes=53), T0 + timedelta(minutes=113)]


# --------------------------------------------------------------------------- webhook (issue 10 item 8)


def _raw_exchange(port: int, head: bytes, *, tls: TestCert | None = None, timeout_s: float = 5.0) -> bytes:
    """Send ``head`` (request line + headers, no body) and read what the server answers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    if tls is not None:
        import ssl
        context = ssl.create_default_context(cafile=str(tls.cert))
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    try:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data
    except TimeoutError:
        return b"(no answer: the server is still reading the body)"
    finally:
        sock.close()


def _started_webhook(vtn: TestVTN, site: Site, cert: TestCert | None = None, **hook) -> tuple[VEN, int]:  # noqa: ANN003
    config = WebhookConfig(bearer_token="hook-secret", **({"ssl_context": cert.server_context()} if cert else {}),
                           **hook)
    ven = make_ven(vtn, site, webhook=config)
    ven.enrol()
    url = ven.start_webhook()
    return ven, int(url.rsplit(":", 1)[1].split("/")[0])


def test_an_unauthenticated_200_mb_post_is_answered_401_before_its_body(vtn: TestVTN, site: Site) -> None:
    ven, port = _started_webhook(vtn, site)
    head = (b"POST /openadr/callback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 209715200\r\n\r\n")
    answer = _raw_exchange(port, head)
    ven.stop()
    assert answer.startswith(b"HTTP/1.0 401") or answer.startswith(b"HTTP/1.1 401"), answer[:80]


@pytest.mark.parametrize(("length_header", "status"), [(b"Content-Length: -1\r\n", b"400"),
                                                       (b"Content-Length: 12abc\r\n", b"400"),
                                                       (b"", b"411"),
                                                       (b"Transfer-Encoding: chunked\r\n", b"411"),
                                                       (b"Content-Length: 209715200\r\n", b"413")])
def test_bad_lengths_are_refused_without_reading(vtn: TestVTN, site: Site, length_header: bytes,
                                                 status: bytes) -> None:
    ven, port = _started_webhook(vtn, site)
    head = (b"POST /openadr/callback HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer hook-secret\r\n"
            + length_header + b"\r\n")
    answer = _raw_exchange(port, head)
    ven.stop()
    assert answer[9:12] == status, answer[:80]


def test_webhook_from_env_is_loopback_and_can_serve_tls(cert: TestCert, vtn: TestVTN, site: Site) -> None:
    env = {"HASHFLEX_OPENADR_VEN_NAME": "wt", "HASHFLEX_OPENADR_WEBHOOK_PORT": "0"}
    plain = VENConfig.from_env(env)
    assert plain.webhook is not None and plain.webhook.host == "127.0.0.1" and plain.webhook.ssl_context is None
    with pytest.raises(ValueError, match="loopback"):
        VENConfig.from_env({**env, "HASHFLEX_OPENADR_WEBHOOK_HOST": "0.0.0.0"})
    tls = VENConfig.from_env({**env, "HASHFLEX_OPENADR_WEBHOOK_HOST": "127.0.0.1",
                              "HASHFLEX_OPENADR_WEBHOOK_CERT": str(cert.cert),
                              "HASHFLEX_OPENADR_WEBHOOK_KEY": str(cert.key)})
    assert tls.webhook is not None and tls.webhook.ssl_context is not None
    with pytest.raises(ValueError, match="https"):
        VENConfig.from_env({**env, "HASHFLEX_OPENADR_WEBHOOK_URL": "http://site.example/cb"})
    ven = VEN(OpenADRClient(OpenADRConfig(vtn_url=vtn.url, client_id="ven-client", client_secret="ven-secret")),
              VENConfig(ven_name="wt", webhook=tls.webhook), site.loop)
    ven.enrol()
    url = ven.start_webhook()
    assert url.startswith("https://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    answer = _raw_exchange(port, b"GET /openadr/callback?echo=abc HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", tls=cert)
    assert answer[9:12] == b"200"
    assert ven.subscribe(), "the strict VTN accepts the HTTPS callback and its echo"
    ven.stop()


def test_the_ven_never_subscribes_an_http_callback(vtn: TestVTN, site: Site) -> None:
    vtn.create_program("ercot-capacity")
    vtn.allow_http_callbacks = True  # even a lax VTN does not get an http:// callback
    ven = make_ven(vtn, site, webhook=WebhookConfig())
    ven.enrol()
    assert ven.start_webhook().startswith("http://127.0.0.1:")
    assert not ven.subscribe() and vtn.subscriptions == {}
    ven.stop()
    vtn.allow_http_callbacks = False


# --------------------------------------------------------------------------- reports


def test_reports_honour_units_aggregation_and_never_repeat_interval_ids(vtn: TestVTN, site: Site,
                                                                        tmp_path: Path) -> None:
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site)
    ven.enrol()
    body = limit_event(program["id"], T0, [5_000.0, 5_000.0], duration="PT1H",
                       reportDescriptors=[{"payloadType": "USAGE", "units": "WH", "aggregate": True},
                                          {"payloadType": "DEMAND", "units": "MW"}])
    event = vtn.create_event(body)
    ven.poll(site.now)
    site.now = T0 + timedelta(hours=1)
    ven.tick(site.now)
    reports = vtn.reports_for(event["id"])
    assert len(reports) == 2
    usage = next(r for r in reports if r["payloadDescriptors"][0]["payloadType"] == "USAGE")
    demand = next(r for r in reports if r["payloadDescriptors"][0]["payloadType"] == "DEMAND")
    assert usage["payloadDescriptors"][0]["units"] == "WH" and demand["payloadDescriptors"][0]["units"] == "MW"
    (resource,) = usage["resources"]
    assert resource["resourceName"] == "AGGREGATED_REPORT"
    ids = [i["id"] for i in resource["intervals"]]
    assert len(ids) == 4 and len(set(ids)) == 4, f"looped intervals repeat ids: {ids}"
    assert resource["intervals"][0]["payloads"][0]["values"] == [pytest.approx(250_000.0)]  # 1 MW x 15 min in Wh
    assert demand["resources"][0]["intervals"][0]["payloads"][0]["values"] == [pytest.approx(1.0)]  # MW
    assert json.dumps(reports)  # the VTN stored what it was sent
