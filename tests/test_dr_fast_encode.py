"""Issue 18, DR at 100,000 miners: a group's setpoint messages encoded from mode codes
(``group_messages_from_codes``: the (mode, power) table and the id column checked once, rows spliced)
give exactly the bytes, chunks, refusals and per-miner fallbacks of the row-by-row pydantic builder
(``group_messages_from_columns``), valid input or not; and the driver's shared pending records still
verify against telemetry miner by miner."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.drivers import setpoint_messages as sm
from hashflex.drivers.base import Setpoint
from hashflex.drivers.setpoint_messages import group_messages, group_messages_from_codes, group_messages_from_columns

ISSUED = datetime(2026, 7, 1, 18, 0, 0, 123456, tzinfo=timezone.utc)

_ID_CHARS = "abcXYZ019_.:-"
valid_ids = st.text(alphabet=_ID_CHARS, min_size=0, max_size=20).map(lambda s: "m" + s)
# ids the schema refuses: empty, a space, a slash, a newline inside, a quote, too long, not ASCII
bad_ids = st.sampled_from(["", "a b", "a/b", "a\nb", "a\n", 'a"b', "x" * 129, "é", "-lead", "#", "a\\b"])
mode_names = st.sampled_from(["off", "sleep", "eco", "stock", "turbo.2", "m:1"])
bad_mode_names = st.sampled_from(["", "bad mode", "a/b", "ü"])
good_powers = st.one_of(st.sampled_from([0.0, 1e-5, 0.1 + 0.2, 2.9000000000000004, 3.5, 100.0, 0, 3, 1e-300]),
                        st.floats(0.0, 100.0, allow_nan=False))
bad_powers = st.sampled_from([-0.1, 100.0001, math.inf, math.nan, -math.inf])


def _both(group_id, issued, expires, ids, codes, names, power, max_rows, now=ISSUED, offset=7):
    """Encode the same rows both ways; every output of each."""
    outs = []
    for columns in (True, False):
        rejected: dict[int, str] = {}
        per_miner: list[int] = []
        if columns:
            messages = group_messages_from_columns("site1", group_id, issued, expires, list(ids),
                                                   [names[k] for k in codes], [power[k] for k in codes], offset,
                                                   now, max_rows, rejected, per_miner)
        else:
            messages = group_messages_from_codes("site1", group_id, issued, expires, list(ids), np.array(codes),
                                                 names, power, offset, now, max_rows, rejected, per_miner)
        outs.append(([(m.topic, m.payload, m.expiry_s, m.indexes, m.group) for m in messages], rejected, per_miner))
    return outs


@st.composite
def groups(draw, bad: bool = False):
    names = draw(st.lists(mode_names, min_size=1, max_size=4))
    power = draw(st.lists(good_powers, min_size=len(names), max_size=len(names)))
    ids = draw(st.lists(valid_ids, min_size=1, max_size=60, unique=True))
    if bad:  # a few faults of every kind the schema refuses
        kind = draw(st.sampled_from(["id", "duplicate", "mode", "power", "not-str"]))
        k = draw(st.integers(0, len(ids) - 1))
        if kind == "id":
            ids[k] = draw(bad_ids)
        elif kind == "duplicate":
            ids[k] = ids[draw(st.integers(0, len(ids) - 1))]
        elif kind == "mode":
            names[draw(st.integers(0, len(names) - 1))] = draw(bad_mode_names)
        elif kind == "power":
            power[draw(st.integers(0, len(power) - 1))] = draw(bad_powers)
        else:
            ids[k] = 12345
    codes = draw(st.lists(st.integers(0, len(names) - 1), min_size=len(ids), max_size=len(ids)))
    offset_h = draw(st.integers(-6, 6))
    issued = ISSUED.astimezone(timezone(timedelta(hours=offset_h)))
    expires = issued + timedelta(seconds=draw(st.floats(0.5, 7200)))
    return ids, codes, names, power, draw(st.integers(1, 25)), issued, expires


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=groups())
def test_codes_give_the_same_bytes_as_the_row_by_row_builder(case) -> None:
    ids, codes, names, power, max_rows, issued, expires = case
    sm._CHECKED_IDS.clear()
    want, got = _both("air", issued, expires, ids, codes, names, power, max_rows)
    assert got == want
    assert want[0], "valid rows must be sent"
    assert "air" in sm._CHECKED_IDS  # the fast path ran (not the row-by-row fallback)
    # and again, with the id column now cached
    again = _both("air", issued, expires, ids, codes, names, power, max_rows)[1]
    assert again == want


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=groups(bad=True), cached_first=st.booleans())
def test_codes_refuse_what_the_row_by_row_builder_refuses(case, cached_first) -> None:
    """A bad id, a miner listed twice, a bad mode name or power: the same refusals (reasons naming the
    field), the same chunks of what goes, whether or not a valid column of the group was cached."""
    ids, codes, names, power, max_rows, issued, expires = case
    sm._CHECKED_IDS.clear()
    if cached_first:
        clean = [f"m{i}" for i in range(len(ids))]
        _both("air", issued, expires, clean, [0] * len(ids), ["eco"], [1.0], max_rows)
    want, got = _both("air", issued, expires, ids, codes, names, power, max_rows)
    assert got == want


def test_a_refused_row_is_named_and_the_rest_of_the_group_goes() -> None:
    sm._CHECKED_IDS.clear()
    ids = ["air-1", "air 2", "air-3"]
    want, got = _both("air", ISSUED, ISSUED + timedelta(minutes=15), ids, [0, 0, 1], ["eco", "stock"], [2.9, 3.5], 10)
    assert got == want
    messages, rejected, per_miner = got
    assert list(rejected) == [7 + 1] and rejected[8].startswith("invalid setpoint: miner_id")
    assert [m[3] for m in messages] == [[7, 9]] and per_miner == []


def test_a_cached_column_does_not_hide_a_changed_bad_id() -> None:
    sm._CHECKED_IDS.clear()
    ids = [f"air-{i}" for i in range(50)]
    _both("air", ISSUED, ISSUED + timedelta(minutes=5), ids, [0] * 50, ["eco"], [2.9], 10)
    assert "air" in sm._CHECKED_IDS
    ids[17] = "air/17"
    want, got = _both("air", ISSUED, ISSUED + timedelta(minutes=5), ids, [0] * 50, ["eco"], [2.9], 10)
    assert got == want and list(got[1]) == [7 + 17]


def test_header_faults_and_bad_group_ids_match() -> None:
    sm._CHECKED_IDS.clear()
    ids = ["a-1", "a-2"]
    # expires before issued: every row refused, naming expires_at (as the row-by-row builder sends per miner)
    want, got = _both("air", ISSUED, ISSUED - timedelta(seconds=1), ids, [0, 0], ["eco"], [2.9], 10)
    assert got == want
    # a group id that is not a topic level: the rows go per miner
    want, got = _both("a/b", ISSUED, ISSUED + timedelta(minutes=1), ids, [0, 0], ["eco"], [2.9], 10)
    assert got == want and got[2] == [7, 8]


def test_codes_out_of_the_table_raise() -> None:
    with pytest.raises(IndexError, match="mode code outside 0..1"):
        group_messages_from_codes("s", "g", ISSUED, ISSUED + timedelta(minutes=1), ["a", "b"], np.array([0, 2]),
                                  ["eco", "stock"], [1.0, 2.0], 0, ISSUED, 10, {}, [])
    with pytest.raises(IndexError):
        group_messages_from_codes("s", "g", ISSUED, ISSUED + timedelta(minutes=1), ["a", "b"], np.array([-1, 0]),
                                  ["eco", "stock"], [1.0, 2.0], 0, ISSUED, 10, {}, [])
    with pytest.raises(ValueError, match="mode codes for 2 miners"):
        group_messages_from_codes("s", "g", ISSUED, ISSUED + timedelta(minutes=1), ["a", "b"], np.array([0]),
                                  ["eco", "stock"], [1.0, 2.0], 0, ISSUED, 10, {}, [])


def test_id_cache_is_bounded() -> None:
    sm._CHECKED_IDS.clear()
    for k in range(sm._CHECKED_IDS_MAX + 5):
        assert sm._checked_row_heads(f"g{k}", ["a"]) == ['{"miner_id":"a"']
    assert len(sm._CHECKED_IDS) <= sm._CHECKED_IDS_MAX


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.one_of(groups(), groups(bad=True)))
def test_setpoint_objects_encode_as_the_row_by_row_builder(case) -> None:
    """`group_messages` (the driver's ``apply`` of ``Setpoint`` objects) goes through the codes too:
    same messages, refusals and fallbacks as the row-by-row builder of the same rows."""
    ids, codes, names, power, max_rows, issued, expires = case
    if any(p < 0 or p != p for p in power) or any(type(m) is not str for m in ids):
        return  # a Setpoint refuses a negative or NaN power itself; ids are str
    sm._CHECKED_IDS.clear()
    batch = [Setpoint(m, names[c], power[c], issued, expires, group_id="air") for m, c in zip(ids, codes)]
    positions = list(range(len(batch)))
    rejected: dict[int, str] = {}
    per_miner: list[int] = []
    got = group_messages("site1", batch, positions, ISSUED, max_rows, rejected, per_miner)
    want = _both("air", issued, expires, ids, codes, names, power, max_rows, offset=0)[0]
    assert ([(m.topic, m.payload, m.expiry_s, m.indexes, m.group) for m in got], rejected, per_miner) == want
