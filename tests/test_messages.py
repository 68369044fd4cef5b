"""Wire schema: each model accepts what it should, rejects what it should, and parse_message never raises."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hashflex.messages import (
    CarbonIntensityMessage,
    DRAckMessage,
    DREventMessage,
    DRProgram,
    HashpriceMessage,
    LimitsChangeMessage,
    NoiseMessage,
    PriceMessage,
    Rejection,
    RenewableMessage,
    SetpointMessage,
    StatusMessage,
    TelemetryMessage,
    Topics,
    parse_message,
)

T0 = "2025-07-01T12:00:00Z"
TOPICS = Topics("west")

VALID: dict[str, tuple[str, dict]] = {
    "price": (TOPICS.price, {"settlement_point": "HB_WEST", "market": "RT", "interval_start": T0,
                             "interval_end": "2025-07-01T12:15:00Z", "price_usd_mwh": -25.5}),
    "renewable": (TOPICS.renewable("pv1"), {"source_id": "pv1", "power_kw": 1200.0, "timestamp": T0,
                                            "forecast": [{"interval_start": T0, "power_kw": 1100}]}),
    "noise": (TOPICS.noise("r1"), {"receptor_id": "r1", "laeq_dba": 42.5, "averaging_s": 60,
                                   "timestamp": T0, "meter_class": 1}),
    "carbon": (TOPICS.carbon, {"intensity_kg_per_mwh": 410.0, "kind": "marginal", "timestamp": T0,
                               "source": "watttime"}),
    "hashprice": (TOPICS.hashprice, {"hashprice_usd_per_ph_day": 52.1, "timestamp": T0, "source": "luxor"}),
    "telemetry": (TOPICS.telemetry("m-001"), {"miner_id": "m-001", "power_kw": 3.4, "hashrate_th_s": 200,
                                              "mode": "stock", "temperature_c": 65, "errors": [],
                                              "timestamp": T0}),
    "dr": (TOPICS.dr, {"event_id": "ev1", "modification_number": 0, "program": "ERS-10", "start": T0,
                       "import_limit_kw": 500, "issuer": "ercot"}),
    "limits": (TOPICS.limits, {"issuer": "ops", "reason": "night", "issued_at": T0,
                               "noise_caps": [{"receptor_id": "r1", "cap_dba": 40, "window_start": T0,
                                               "window_end": "2025-07-01T20:00:00Z"}],
                               "carbon_budget": {"budget_kg": 1000, "period": "day"}}),
}


def parse(kind: str, /, **changes: object) -> object:
    topic, payload = VALID[kind]
    body = {**payload, **changes}
    body = {k: v for k, v in body.items() if v is not ...}
    return parse_message(topic, json.dumps(body).encode())


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_payload_of_each_kind_parses_to_its_model(kind: str) -> None:
    message = parse(kind)
    assert not isinstance(message, Rejection), message
    assert message.kind == kind
    assert message.observed_at == datetime(2025, 7, 1, 12, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("kind", "changes", "reason"),
    [
        ("noise", {"laeq_dba": "loud"}, "noise: laeq_dba: Input should be a valid number"),
        ("noise", {"laeq_dba": "42"}, "noise: laeq_dba: Input should be a valid number"),  # strict
        ("noise", {"averaging_s": 0}, "noise: averaging_s: Input should be greater than 0"),
        ("noise", {"meter_class": 3}, "noise: meter_class:"),
        ("noise", {"timestamp": "2025-07-01T12:00:00"}, "noise: timestamp: Input should have timezone info"),
        ("noise", {"colour": "red"}, "noise: colour: Extra inputs are not permitted"),
        ("noise", {"receptor_id": ...}, "noise: receptor_id: Field required"),
        ("renewable", {"power_kw": -1}, "renewable: power_kw: Input should be greater than or equal to 0"),
        ("renewable", {"forecast": [{"interval_start": T0, "power_kw": -5}]}, "renewable: forecast.0.power_kw:"),
        ("carbon", {"kind": "median"}, "carbon: kind:"),
        ("hashprice", {"hashprice_usd_per_ph_day": -1}, "hashprice: hashprice_usd_per_ph_day:"),
        ("price", {"market": "ID"}, "price: market:"),
        ("price", {"interval_end": T0}, "price: interval_end: must be after interval_start"),
        ("telemetry", {"errors": "none"}, "telemetry: errors: Input should be a valid"),
        ("dr", {"level": 2}, "dr: import_limit_kw, level: conflict"),
        ("dr", {"import_limit_kw": ...}, "dr: import_limit_kw, shed_kw, level: one is required"),
        ("dr", {"import_limit_kw": ..., "shed_kw": 100}, "dr: baseline_kw: required with shed_kw"),
        ("dr", {"program": "ERS-5"}, "dr: program:"),
        ("dr", {"modification_number": -1}, "dr: modification_number:"),
        ("dr", {"cancelled": 1}, "dr: cancelled: Input should be a valid boolean"),
        ("dr", {"end": T0}, "dr: end: must be after start"),
        ("limits", {"noise_caps": ..., "carbon_budget": ...}, "limits: noise_caps, carbon_budget, import_limit_kw"),
    ],
)
def test_invalid_payload_is_rejected_with_the_field_named(kind: str, changes: dict, reason: str) -> None:
    result = parse(kind, **changes)
    assert isinstance(result, Rejection), result
    assert result.reason.startswith(reason), result.reason
    assert result.kind == kind


def test_dr_forms_shed_with_baseline_level_and_bare_cancellation_are_valid() -> None:
    shed = parse("dr", import_limit_kw=..., shed_kw=200, baseline_kw=800)
    level = parse("dr", import_limit_kw=..., level=0)
    cancel = parse("dr", import_limit_kw=..., modification_number=1, cancelled=True, end="2025-07-01T13:00:00Z")
    assert isinstance(shed, DREventMessage) and shed.shed_kw == 200
    assert isinstance(level, DREventMessage) and level.level == 0
    assert isinstance(cancel, DREventMessage) and cancel.cancelled and cancel.program is DRProgram.ERS_10


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPICS.noise("r1"), b"{not json", "noise: payload: Invalid JSON"),
        (TOPICS.noise("r1"), b"[1, 2]", "noise: Input should be an object"),
        (TOPICS.noise("r1"), b"", "noise: payload: Invalid JSON"),
        (TOPICS.noise("r1"), b"\xff\xfe", "noise: payload: Invalid JSON"),
        ("hashflex/west/in/weather", b"{}", "topic: unknown kind 'weather'"),
        ("hashflex/west/out/status", b"{}", "topic: not an inbound hashflex topic"),
        ("other/west/in/price", b"{}", "topic: not an inbound hashflex topic"),
        ("hashflex/west/in/noise", b"{}", "topic: expected in/noise/<receptor_id>"),
        ("hashflex/west/in/price/extra", b"{}", "topic: expected in/price"),
    ],
)
def test_bad_json_and_unknown_topics_are_rejections_not_exceptions(topic: str, payload: bytes, reason: str) -> None:
    result = parse_message(topic, payload)
    assert isinstance(result, Rejection)
    assert result.reason.startswith(reason), result.reason


def test_topic_key_must_match_payload_key_and_site_is_checked() -> None:
    _, body = VALID["noise"]
    raw = json.dumps(body).encode()
    mismatch = parse_message(TOPICS.noise("r2"), raw)
    assert isinstance(mismatch, Rejection)
    assert mismatch.reason == "noise: receptor_id: topic says 'r2' but payload says 'r1'"
    other_site = parse_message(Topics("east").noise("r1"), raw, site="west")
    assert isinstance(other_site, Rejection) and "site 'east'" in other_site.reason
    assert isinstance(parse_message(Topics("east").noise("r1"), raw), NoiseMessage)


def test_rejection_payload_is_truncated() -> None:
    result = parse_message(TOPICS.price, b"x" * 100_000)
    assert isinstance(result, Rejection)
    assert len(result.payload) <= 201 and result.payload.endswith("…")


def test_timestamps_are_normalised_to_utc() -> None:
    message = parse("noise", timestamp="2025-07-01T07:00:00-05:00")
    assert isinstance(message, NoiseMessage)
    assert message.timestamp == datetime(2025, 7, 1, 12, tzinfo=timezone.utc)
    assert message.timestamp.utcoffset() == timedelta(0)


def test_price_accepts_huge_negative_and_positive_but_not_infinite() -> None:
    assert parse("price", price_usd_mwh=-1e12).price_usd_mwh == -1e12
    assert parse("price", price_usd_mwh=5e15).price_usd_mwh == 5e15
    result = parse_message(TOPICS.price, json.dumps(VALID["price"][1]).replace("-25.5", "1e999").encode())
    assert isinstance(result, Rejection) and "price: price_usd_mwh: Input should be a finite number" in result.reason


def test_identity_of_dr_and_price_includes_the_revision() -> None:
    a, b = parse("dr"), parse("dr", modification_number=1)
    assert a.identity != b.identity and a.key == b.key == "ev1"
    p1, p2 = parse("price"), parse("price", published_at="2025-07-01T12:20:00Z")
    assert p1.identity != p2.identity and p1.key == "HB_WEST/RT"


def test_carbon_kind_field_round_trips_through_json() -> None:
    message = parse("carbon")
    assert isinstance(message, CarbonIntensityMessage) and message.intensity_kind == "marginal"
    assert json.loads(message.model_dump_json())["kind"] == "marginal"
    assert CarbonIntensityMessage.model_validate_json(message.model_dump_json()) == message


def test_outbound_models() -> None:
    now = datetime(2025, 7, 1, 12, tzinfo=timezone.utc)
    setpoint = SetpointMessage(miner_id="m1", mode="sleep", power_target_kw=0.05, issued_at=now,
                               expires_at=now + timedelta(minutes=5))
    assert SetpointMessage.model_validate_json(setpoint.model_dump_json()) == setpoint
    with pytest.raises(ValidationError, match="expires_at"):
        SetpointMessage(miner_id="m1", mode="eco", power_target_kw=2, issued_at=now, expires_at=now)
    with pytest.raises(ValidationError, match="reason"):
        DRAckMessage(event_id="e", modification_number=0, status="rejected", acked_at=now)
    assert DRAckMessage(event_id="e", modification_number=0, status="accepted", acked_at=now).reason is None
    assert StatusMessage(site="west", timestamp=now, fields={"mode": "degraded", "n": 3}).fields["n"] == 3
    with pytest.raises(ValidationError, match="timezone"):
        StatusMessage(site="west", timestamp=datetime(2025, 1, 1))


def test_topics_helper_builds_every_topic_and_round_trips_inbound() -> None:
    t = Topics("west")
    assert [t.price, t.carbon, t.hashprice, t.dr, t.limits] == [
        "hashflex/west/in/price", "hashflex/west/in/carbon", "hashflex/west/in/hashprice",
        "hashflex/west/in/dr", "hashflex/west/in/limits"]
    assert t.renewable("pv1") == "hashflex/west/in/renewable/pv1"
    assert t.telemetry("m1") == "hashflex/west/in/telemetry/m1"
    assert [t.setpoint("m1"), t.schedule, t.status, t.dr_ack] == [
        "hashflex/west/out/setpoint/m1", "hashflex/west/out/schedule", "hashflex/west/out/status",
        "hashflex/west/out/dr/ack"]
    assert t.inbound_filter == "hashflex/west/in/#"
    for kind, (topic, _) in VALID.items():
        message = parse(kind)
        assert t.topic_for(message) == topic
    with pytest.raises(ValueError):
        Topics("a/b")


# --------------------------------------------------------------------------- property-based

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(VALID)), data=st.data())
def test_parse_message_never_raises_on_mutated_payloads(kind: str, data: st.DataObject) -> None:
    topic, body = VALID[kind]
    mutated = dict(body)
    field = data.draw(st.sampled_from(sorted(body) + ["unexpected"]))
    mutated[field] = data.draw(_json_values)
    result = parse_message(topic, json.dumps(mutated).encode())
    if isinstance(result, Rejection):
        assert result.reason.startswith(f"{kind}: ")
    else:
        assert result.kind == kind and field != "unexpected"


@settings(max_examples=300, deadline=None)
@given(topic=st.text(max_size=60), payload=st.binary(max_size=200))
def test_parse_message_never_raises_on_arbitrary_bytes(topic: str, payload: bytes) -> None:
    assert isinstance(parse_message(topic, payload), Rejection)


@settings(max_examples=200, deadline=None)
@given(
    laeq_dba=st.floats(min_value=0, max_value=200),
    averaging_s=st.floats(min_value=0.001, max_value=86_400),
    offset_min=st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_valid_noise_round_trips_and_is_utc(laeq_dba: float, averaging_s: float, offset_min: int) -> None:
    tz = timezone(timedelta(minutes=offset_min))
    stamp = datetime(2025, 3, 9, 2, 30, tzinfo=tz)
    raw = json.dumps({"receptor_id": "r1", "laeq_dba": laeq_dba, "averaging_s": averaging_s,
                      "timestamp": stamp.isoformat(), "meter_class": 2}).encode()
    message = parse_message(TOPICS.noise("r1"), raw)
    assert isinstance(message, NoiseMessage)
    assert message.laeq_dba == laeq_dba and message.timestamp == stamp
    assert message.timestamp.tzinfo == timezone.utc


def test_python_construction_is_lax_but_still_refuses_naive_time() -> None:
    assert HashpriceMessage(hashprice_usd_per_ph_day="50", timestamp=T0, source="x").hashprice_usd_per_ph_day == 50
    with pytest.raises(ValidationError, match="timezone"):
        RenewableMessage(source_id="pv", power_kw=1, timestamp=datetime(2025, 1, 1))
    with pytest.raises(ValidationError, match="valid_until"):
        LimitsChangeMessage(issuer="ops", reason="x", issued_at=T0, import_limit_kw=1, valid_until=T0)
    with pytest.raises(ValidationError):
        TelemetryMessage(miner_id="bad id", power_kw=1, hashrate_th_s=1, mode="eco", temperature_c=20, timestamp=T0)
    with pytest.raises(ValidationError):
        PriceMessage(settlement_point="HB", market="RT", interval_start=T0, interval_end=T0, price_usd_mwh=1)


def test_rejection_rule_is_a_bounded_label_never_taken_from_the_payload() -> None:
    """The rule is the metrics label: pydantic's error type, never an attacker's key or value."""
    topics = Topics("west")
    cases = {
        "hashflex/west/in/nope": "topic",
        "hashflex/other/in/price": "topic",
    }
    for topic, rule in cases.items():
        result = parse_message(topic, b"{}", site="west")
        assert isinstance(result, Rejection) and result.rule == rule
    extra = parse_message(topics.hashprice, json.dumps({"hashprice_usd_per_ph_day": 1.0, "source": "x",
                                                        "timestamp": "2025-07-01T00:00:00Z",
                                                        "attacker_key_123": 1}), site="west")
    assert isinstance(extra, Rejection) and extra.rule == "schema:extra_forbidden"
    assert "attacker_key_123" in extra.reason and "attacker_key_123" not in extra.rule
    bad_json = parse_message(topics.hashprice, b"{not json", site="west")
    assert isinstance(bad_json, Rejection) and bad_json.rule == "schema:json_invalid"
    mismatch = parse_message(topics.noise("r1"), json.dumps({"receptor_id": "r2", "laeq_dba": 40, "averaging_s": 60,
                                                             "timestamp": "2025-07-01T00:00:00Z",
                                                             "meter_class": 1}), site="west")
    assert isinstance(mismatch, Rejection) and mismatch.rule == "key_mismatch"
