"""Issue 15 leftover (task H3): an OpenADR event with a key given twice is refused, as MQTT commands are.

MQTT commands with a duplicated JSON key are refused naming the key (``messages.parse.duplicate_key``,
H1 finding 4); the OpenADR path read VTN answers and webhook notifications with ``json.loads`` (the last
value wins) and acted on one of two values. Here a real test VTN on 127.0.0.1 serves (poll) and POSTs
(webhook, HTTPS) events whose JSON repeats ``payloads`` or ``intervalPeriod``: each is refused with a
reason naming the key's path, counted (``events_rejected``, on /metrics as ``openadr_events_rejected``),
and written to the hash-chained audit trail (``openadr_rejected``); the other events of the listing go on.
Before the fix the duplicated events were accepted (the poll test found the second value's limit in force).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from hashflex.audit import AuditLog
from hashflex.control.daemon import with_openadr_counters
from hashflex.control.http import StatusMetrics
from hashflex.control.records import AuditRecorder
from hashflex.messages.parse import duplicate_key_reason, parse_message
from hashflex.openadr.ven import WebhookConfig
from hashflex.store import Store
from openadr_tls import TestCert, make_cert
from openadr_vtn import TestVTN
from test_openadr import T0, Site, iso, limit_event, make_ven, prices, profile  # noqa: F401 - fixtures


class SecondKey(str):
    """A dict key with the text of another: ``json.dumps`` writes both, so the VTN serves the key twice."""

    def __hash__(self) -> int:
        return hash(("second", str(self)))

    def __eq__(self, other: object) -> bool:
        return self is other


def with_second(obj: dict, key: str, value: object) -> dict:
    """``obj`` with ``key`` given a second time, right after the first, with ``value``."""
    out: dict = {}
    for k, v in obj.items():
        out[k] = v
        if k == key:
            out[SecondKey(key)] = value
    assert key in obj
    return out


def test_the_helper_serves_a_key_twice() -> None:
    import json

    text = json.dumps(with_second({"a": 1, "b": 2}, "a", 3))
    assert text == '{"a": 1, "a": 3, "b": 2}'


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> TestCert:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def vtn(cert: TestCert) -> Iterator[TestVTN]:
    server = TestVTN().start()  # direct (the validating proxy re-encodes JSON: one value per key)
    server.callback_verify = str(cert.cert)
    yield server
    server.stop()
    assert server.undeclared == []


@pytest.fixture
def site(profile, prices: pd.DataFrame) -> Site:  # noqa: ANN001, F811
    return Site(profile, prices)


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[tuple[AuditRecorder, Path]]:
    path = tmp_path / "hashflex.db"
    store = Store(str(path))
    recorder = AuditRecorder(store)
    yield recorder, path
    recorder.close()
    store.close()


def audited(recorder: AuditRecorder, path: Path) -> dict[str, str]:
    recorder.flush()
    with AuditLog(path) as log:
        assert log.verify().ok
        return {r.payload["id"]: r.payload["reason"] for r in log.records("openadr_rejected")}


def metrics_text(ven) -> str:  # noqa: ANN001
    return StatusMetrics().render(with_openadr_counters({"healthy": True, "counters": {}}, ven.status())).decode()


def test_a_polled_event_with_a_repeated_key_is_refused_naming_it(vtn: TestVTN, site: Site, trail) -> None:  # noqa: ANN001
    recorder, path = trail
    program = vtn.create_program("ercot-capacity")
    pid = program["id"]
    ven = make_ven(vtn, site)
    ven.recorder = recorder
    meta = {"createdDateTime": iso(T0), "modificationDateTime": iso(T0), "objectType": "EVENT"}
    twice_payloads = {"id": "twice-payloads", **meta, **limit_event(pid, T0, [9_000.0])}
    twice_payloads["intervals"] = [with_second(twice_payloads["intervals"][0], "payloads",
                                               [{"type": "IMPORT_CAPACITY_LIMIT", "values": [1_000.0]}])]
    vtn.put_raw_event(twice_payloads)
    twice_period = with_second({"id": "twice-period", **meta, **limit_event(pid, T0, [2_000.0])}, "intervalPeriod",
                               {"start": iso(T0), "duration": "PT4H"})
    vtn.put_raw_event(twice_period)
    vtn.create_event(limit_event(pid, T0, [6_000.0]))  # a good event in the same listing

    ven.poll(site.now)

    book = site.loop.dr_book
    in_force = {book.message(i).event_id for i in book.active_ids(site.now)}  # "<OpenADR id>:<interval>"
    assert not any(e.startswith("twice-") for e in in_force), in_force
    assert len(in_force) == 1, f"the good event of the listing is in force: {in_force}"
    assert book.limit_at(site.now)[0] == 6_000.0, "neither value of a repeated key is acted on"
    reasons = {r["id"]: r["reason"] for r in ven.status()["rejections"]}
    assert reasons == {
        "twice-payloads": f"invalid event: {duplicate_key_reason('intervals.0.payloads')}",
        "twice-period": f"invalid event: {duplicate_key_reason('intervalPeriod')}"}
    assert ven.counters["events_rejected"] == 2
    assert 'hashflex_events_total{counter="openadr_events_rejected"} 2.0' in metrics_text(ven)
    assert audited(recorder, path) == reasons, "each refusal is in the hash-chained trail"

    # One rule for both paths: the MQTT ingest refuses a DR command with a repeated key in the same words.
    raw = b'{"event_id": "e", "event_id": "f"}'
    rejection = parse_message("hashflex/s/in/dr", raw)
    assert rejection.reason == f"dr: {duplicate_key_reason('event_id')}"


def test_a_webhook_event_with_a_repeated_key_is_refused_naming_it(vtn: TestVTN, site: Site, cert: TestCert,  # noqa: ANN001
                                                                   trail) -> None:
    recorder, path = trail
    program = vtn.create_program("ercot-capacity")
    ven = make_ven(vtn, site, webhook=WebhookConfig(ssl_context=cert.server_context()))
    ven.recorder = recorder
    ven.enrol()
    ven.start_webhook()
    assert ven.subscribe() and ven.push_active
    try:
        event = limit_event(program["id"], T0, [2_000.0])
        event["intervals"] = [with_second(event["intervals"][0], "payloads",
                                          [{"type": "IMPORT_CAPACITY_LIMIT", "values": [9_000.0]}])]
        created = vtn.create_event(event)  # notified to the webhook before it returns
        assert ven.counters["notifications"] == 1, "the VTN's notification reached the webhook"
        assert site.loop.dr_book.event_ids() == [], "nothing of the event is in force"
        reason = f"invalid event: {duplicate_key_reason('intervals.0.payloads')}"
        assert [(r["id"], r["reason"]) for r in ven.status()["rejections"]] == [(created["id"], reason)]
        assert 'hashflex_events_total{counter="openadr_events_rejected"} 1.0' in metrics_text(ven)
        assert audited(recorder, path) == {created["id"]: reason}

        # A repeated key of the notification itself: refused as a notification (400 to the VTN), audited.
        good = limit_event(program["id"], T0, [4_000.0])
        vtn.notifications.clear()
        with vtn._lock:  # noqa: SLF001 - the stand-in's own store, as its create_event writes it
            vtn.events["direct"] = {"id": "direct", **good}
        vtn._notify = _notify_twice(vtn)  # noqa: SLF001
        vtn._notify("EVENT", "CREATE", {"id": "direct", **good})  # noqa: SLF001
        assert [status for _, status in vtn.notifications] == [400]
        assert site.loop.dr_book.event_ids() == []
        assert ven.counters["objects_rejected"] == 1
        assert audited(recorder, path)["?"] == duplicate_key_reason("operation")
    finally:
        ven.stop()


def _notify_twice(vtn: TestVTN):  # noqa: ANN202
    """The VTN's notification with ``operation`` given twice (CREATE, then DELETE)."""
    import json

    import requests

    def notify(object_type: str, operation: str, obj: dict) -> None:
        for sub in list(vtn.subscriptions.values()):
            for op in sub["objectOperations"]:
                body = with_second({"objectType": object_type, "operation": operation, "object": obj}, "operation",
                                   "DELETE")
                status = requests.post(op["callbackUrl"], data=json.dumps(body), timeout=10,
                                       headers={"Content-Type": "application/json",
                                                "Authorization": f"Bearer {op['bearerToken']}"},
                                       verify=vtn.callback_verify).status_code
                vtn.notifications.append((op["callbackUrl"], status))
    return notify
