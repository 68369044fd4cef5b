"""Hypothesis fuzz of every inbound message model (issue 10: "fuzz every message model").

For each kind: random JSON-ish payloads (any JSON value) and payloads shaped like the model whose
fields get hostile values (huge and non-finite floats, numbers as strings, "NaN", naive and
far-off timestamps, unknown ids, extra and missing keys). Properties: ``parse_message`` and
``check_plausible`` never raise, and whatever both accept satisfies the plausibility bounds, checked
here by an independent restatement of the table (not by calling the code under test).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.messages import INBOUND_MODELS, Rejection, Topics, parse_message
from hashflex.plausibility import PlausibilityContext, check_plausible
from hashflex.profile import load_profile

PROFILE = load_profile("west_texas")
CONTEXT = PlausibilityContext.from_profile(PROFILE)
SITE = PROFILE.site_id
TOPICS = Topics(SITE)
NOW = datetime(2025, 7, 1, 17, 0, tzinfo=timezone.utc)
KEY_FIELD = {"renewable": "source_id", "noise": "receptor_id", "telemetry": "miner_id"}

TIME_FIELDS = {"interval_start", "interval_end", "published_at", "timestamp", "start", "end", "issued_at",
               "valid_until", "window_start", "window_end"}
IDS = ["solar_pv", "ranch_north", "rv_park_east", "air_s21-0001", "hydro_s21xp-0500", "air_s19jpro-2800",
       "ghost-1", "LZ_WEST", "ercot", "ops", "x"]
CHOICES = ["RT", "DA", "marginal", "average", "ERS-10", "ERS-30", "utility", "4CP", "day", "month", "stock",
           "eco", "sleep", 0, 1, 2, 3, True, False, None]

huge_floats = st.sampled_from([1e308, -1e308, 1.7976931348623157e308, 5e-324, -0.0, 0.0, -251.0, -251.0001,
                               20_000.0, 20_000.5, 11_000.0, 11_000.1, 19.99, 140.0, 140.01, 6.3, 6.31])
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e4, max_value=1e5),
    st.integers(min_value=-(2**70), max_value=2**70),
    huge_floats,
    st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "1e308", "55", "", "0x10"]),
)


@st.composite
def aware_times(draw: st.DrawFn) -> str:
    """An aware ISO timestamp around NOW, often near a window edge (120 s skew, 600 s, 1 h, 1 d, 7 d)."""
    offset_s = draw(st.one_of(
        st.floats(min_value=-400 * 86_400, max_value=400 * 86_400),
        st.sampled_from([0, -30, 60, 119, 121, -599, -601, -3_599, -3_601, -3_700, -86_401, -7 * 86_400 + 1,
                         -7 * 86_400 - 1, 7 * 86_400 - 1, 7 * 86_400 + 1, 366 * 86_400 + 1]),
    ))
    at = NOW + timedelta(seconds=offset_s)
    zone = draw(st.sampled_from([timezone.utc, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))]))
    return at.astimezone(zone).isoformat()


hostile_times = st.sampled_from([
    (NOW - timedelta(minutes=1)).replace(tzinfo=None).isoformat(),  # naive: must be rejected
    "1970-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
    "not a time", 1751389200, None, "NaN",
])
typed_numbers = st.one_of(st.floats(min_value=0, max_value=150), st.floats(min_value=0, max_value=150),
                          st.floats(min_value=-300, max_value=25_000), st.floats(min_value=-1e6, max_value=1e6),
                          huge_floats, st.floats(allow_nan=False, allow_infinity=False), st.integers(-10, 100_000))
hostile = st.one_of(numbers, hostile_times, st.sampled_from(IDS), st.sampled_from(CHOICES), st.text(max_size=8),
                    st.lists(st.integers(), max_size=2))

VALID = {
    "settlement_point": st.sampled_from(["LZ_WEST", "HB_NORTH"]),
    # interval_end is often a settlement interval after a fixed start, so prices get accepted
    "interval_start": st.sampled_from([NOW.isoformat(), (NOW + timedelta(hours=30)).isoformat()]) | aware_times(),
    "interval_end": st.sampled_from([(NOW + timedelta(minutes=15)).isoformat(),
                                     (NOW + timedelta(hours=31)).isoformat()]) | aware_times(), "market": st.sampled_from(["RT", "DA"]),
    "source_id": st.sampled_from(["solar_pv", "solar_pv", "wind_x"]),
    "receptor_id": st.sampled_from(["ranch_north", "rv_park_east", "nowhere"]),
    "miner_id": st.sampled_from(["air_s21-0001", "hydro_s21xp-0500", "air_s19jpro-2800", "ghost-1",
                                 "air_s21-9999"]),
    "kind": st.sampled_from(["marginal", "average"]), "source": st.sampled_from(["luxor", "ercot-fuel-mix"]),
    "mode": st.sampled_from(["stock", "eco"]), "errors": st.lists(st.text(max_size=5), max_size=2),
    "meter_class": st.sampled_from([1, 2]), "event_id": st.sampled_from(["ev1", "ev2"]),
    "modification_number": st.integers(0, 10), "program": st.sampled_from(["ERS-10", "utility", "4CP"]),
    "level": st.sampled_from([1, 2, 3]), "issuer": st.sampled_from(["ercot", "ops"]),
    "reason": st.sampled_from(["maintenance"]), "cancelled": st.booleans(),
    "forecast": st.lists(st.fixed_dictionaries({"interval_start": aware_times(), "power_kw": typed_numbers}),
                         max_size=3),
    "noise_caps": st.lists(st.fixed_dictionaries({"receptor_id": st.sampled_from(["ranch_north"]),
                                                  "cap_dba": typed_numbers, "window_start": aware_times(),
                                                  "window_end": aware_times()}), min_size=1, max_size=2),
    "price_usd_mwh": st.one_of(st.floats(min_value=-260, max_value=21_000), huge_floats),
    "laeq_dba": st.one_of(st.floats(min_value=0, max_value=200), huge_floats),
    "carbon_budget": st.fixed_dictionaries({"budget_kg": typed_numbers, "period": st.sampled_from(["day", "month"])}),
}


def valid_for(name: str) -> st.SearchStrategy[Any]:
    if name in VALID:
        return VALID[name]
    return aware_times() if name in TIME_FIELDS else typed_numbers


@st.composite
def shaped_payloads(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A payload shaped like the model: each field well typed (values anywhere in range, often at
    the bounds), now and then one hostile value, an optional field dropped or an unknown key added."""
    model = INBOUND_MODELS[kind]
    payload = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if not info.is_required() and draw(st.booleans()):
            continue  # optional fields come and go (DR/limits need one request; conflicts are rejected)
        if draw(st.integers(0, 2 * len(model.model_fields))) == 0:
            if draw(st.booleans()):
                continue  # a required field missing
            payload[key] = draw(hostile)
        else:
            payload[key] = draw(valid_for(key))
    if draw(st.integers(0, 19)) == 0:
        payload[draw(st.text(min_size=1, max_size=6))] = draw(numbers)  # an unknown key
    return payload


json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def topic_for(kind: str, payload: Any) -> str:
    if kind not in KEY_FIELD:
        return f"hashflex/{SITE}/in/{kind}"
    key = payload.get(KEY_FIELD[kind]) if isinstance(payload, dict) else None
    return f"hashflex/{SITE}/in/{kind}/{key if isinstance(key, str) and key and '/' not in key else 'k'}"


def encode(payload: Any) -> bytes:
    return json.dumps(payload, allow_nan=True, default=str).encode()


# --------------------------------------------------------------------------- the independent oracle


def age_s(at: datetime) -> float:
    return (NOW - at).total_seconds()


def assert_within_bounds(message: Any) -> None:
    """The plausibility table restated, for messages that were accepted."""
    for value in _floats(message.model_dump()):
        assert math.isfinite(value)
    kind = message.kind
    scale = max(PROFILE.grid.import_limit_kw, PROFILE.full_load_kw) * 10
    if kind == "price":
        assert -251.0 <= message.price_usd_mwh <= 20_000.0
        assert (message.interval_end - message.interval_start).total_seconds() <= 86_400
        assert age_s(message.interval_start) >= -7 * 86_400 and age_s(message.interval_end) <= 7 * 86_400
        assert message.published_at is None or age_s(message.published_at) >= -120
    elif kind == "renewable":
        capacity = {r.id: r.capacity_kw for r in PROFILE.renewables}[message.source_id]
        assert 0 <= message.power_kw <= capacity * 1.1
        assert all(0 <= p.power_kw <= capacity * 1.1 for p in message.forecast or ())
        assert -120 <= age_s(message.timestamp) <= 3_600
    elif kind == "noise":
        assert message.receptor_id in {r.id for r in PROFILE.receptors}
        assert 20 <= message.laeq_dba <= 140
        assert -120 <= age_s(message.timestamp) <= 3_600 + message.averaging_s
    elif kind == "carbon":
        assert 0 <= message.intensity_kg_per_mwh <= 2_000 and -120 <= age_s(message.timestamp) <= 86_400
    elif kind == "hashprice":
        assert 0 <= message.hashprice_usd_per_ph_day <= 10_000 and -120 <= age_s(message.timestamp) <= 7 * 86_400
    elif kind == "telemetry":
        group = PROFILE.group(message.miner_id.rsplit("-", 1)[0])
        assert message.miner_id in CONTEXT.miner_group
        assert 0 <= message.power_kw <= 1.5 * max(m.power_kw for m in group.modes)
        assert 0 <= message.hashrate_th_s <= 1.5 * max(m.hashrate_th_s for m in group.modes)
        assert -120 <= age_s(message.timestamp) <= 600
    elif kind == "dr":
        for value in (message.import_limit_kw, message.shed_kw, message.baseline_kw):
            assert value is None or 0 <= value <= scale
        assert age_s(message.start) >= -366 * 86_400
    elif kind == "limits":
        assert message.import_limit_kw is None or 0 <= message.import_limit_kw <= scale
        assert all(cap.cap_dba <= 140 for cap in message.noise_caps or ())
        assert age_s(message.issued_at) >= -120
    elif kind == "as_award":
        assert 0 <= message.reserve_kw <= scale and age_s(message.start) >= -366 * 86_400
    elif kind == "as_deploy":
        assert 0 <= message.deployed_kw <= scale and age_s(message.issued_at) >= -120
    elif kind == "load_forecast":  # ERCOT's system load forecast (plausibility.load_forecast)
        assert age_s(message.published_at) >= -300
        for point in message.points:
            assert 10_000.0 <= point.load_forecast_mw <= 150_000.0
            assert (point.interval_start - message.published_at).total_seconds() <= 9 * 86_400
    else:  # pragma: no cover - a new model needs its bounds here
        pytest.fail(f"no oracle for kind {kind!r}")


def _floats(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return []


def run(kind: str, topic: str, raw: bytes) -> None:
    parsed = parse_message(topic, raw, site=SITE)  # must not raise
    if isinstance(parsed, Rejection):
        assert parsed.reason and parsed.rule != "unspecified"
        return
    verdict = check_plausible(parsed, NOW, CONTEXT, topic)  # must not raise
    if verdict is None:
        assert_within_bounds(parsed)
    else:
        assert verdict.kind == kind and verdict.rule.split(":")[0] in {"out_of_bounds", "unknown_id", "stale",
                                                                        "future"}
        assert verdict.rule.split(":", 1)[1].split(".")[0] in verdict.reason  # names the field


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", sorted(INBOUND_MODELS))
@FUZZ
@given(data=st.data())
def test_shaped_payloads_never_raise_and_accepted_ones_are_in_bounds(kind: str, data: st.DataObject) -> None:
    payload = data.draw(shaped_payloads(kind))
    run(kind, topic_for(kind, payload), encode(payload))


@pytest.mark.parametrize("kind", sorted(INBOUND_MODELS))
@settings(max_examples=40, deadline=None)
@given(payload=json_values)
def test_any_json_value_never_raises(kind: str, payload: Any) -> None:
    run(kind, topic_for(kind, payload), encode(payload))


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=64), kind=st.sampled_from(sorted(INBOUND_MODELS)))
def test_arbitrary_bytes_never_raise(raw: bytes, kind: str) -> None:
    run(kind, topic_for(kind, None), raw)


def test_the_fuzz_reaches_acceptance() -> None:
    """The properties above are vacuous if nothing is ever accepted: a plausible example per kind."""
    at = NOW.isoformat()
    examples = {
        "price": {"settlement_point": "LZ_WEST", "market": "RT", "interval_start": at,
                  "interval_end": (NOW + timedelta(minutes=15)).isoformat(), "price_usd_mwh": 30.0},
        "renewable": {"source_id": "solar_pv", "power_kw": 5_000.0, "timestamp": at},
        "noise": {"receptor_id": "ranch_north", "laeq_dba": 41.0, "averaging_s": 60, "timestamp": at,
                  "meter_class": 1},
        "carbon": {"intensity_kg_per_mwh": 400.0, "kind": "marginal", "timestamp": at, "source": "x"},
        "hashprice": {"hashprice_usd_per_ph_day": 50.0, "timestamp": at, "source": "x"},
        "telemetry": {"miner_id": "air_s21-0001", "power_kw": 3.5, "hashrate_th_s": 200.0, "mode": "stock",
                      "temperature_c": 60.0, "timestamp": at},
        "dr": {"event_id": "e", "modification_number": 0, "program": "utility", "start": at,
               "import_limit_kw": 1_000.0, "issuer": "x"},
        "limits": {"issuer": "ops", "reason": "r", "issued_at": at, "import_limit_kw": 900.0},
        "as_award": {"award_id": "a", "product": "RRS", "start": at, "end": (NOW + timedelta(hours=1)).isoformat(),
                     "reserve_kw": 5_000.0, "issuer": "qse"},
        "as_deploy": {"deployment_id": "d", "product": "ECRS", "issued_at": at, "deployed_kw": 5_000.0,
                      "issuer": "qse"},
        "load_forecast": {"published_at": at, "source": "NP3-565-CD",
                          "points": [{"interval_start": (NOW + timedelta(hours=k)).isoformat(),
                                      "load_forecast_mw": 52_000.0 + 500.0 * k} for k in range(3)]},
    }
    assert set(examples) == set(INBOUND_MODELS)
    for kind, payload in examples.items():
        topic = topic_for(kind, payload)
        parsed = parse_message(topic, encode(payload), site=SITE)
        assert not isinstance(parsed, Rejection), parsed
        assert check_plausible(parsed, NOW, CONTEXT, topic) is None
        assert_within_bounds(parsed)
