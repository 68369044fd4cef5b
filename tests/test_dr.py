"""DR lifecycle: acceptance rules, modification/cancel, limits over time, restart, compliance."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from hashflex.control.dr import DRBook
from hashflex.messages import DREventMessage
from hashflex.profile import SiteProfile

T0 = datetime(2025, 7, 1, 20, 0, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)


def tiny_profile(levels: dict[int, float] | None = None) -> SiteProfile:
    return SiteProfile.model_validate({
        "site": {"name": "tiny", "settlement_point": "LZ_WEST"},
        "grid": {"import_limit_kw": 100},
        "dr": {"issuers": ["utility", "qse"], "level_import_limit_kw": levels if levels is not None else {1: 30, 2: 8}},
        "miner_groups": [{"id": "old", "model": "S19", "units": 5,
                          "modes": [{"name": "stock", "power_kw": 3, "hashrate_th_s": 100, "sound_power_dba": 84}]}],
        "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
        "economics": {"hashprice_usd_per_ph_day": 50},
    })


PROFILE = tiny_profile()


def event(event_id: str = "ev1", mod: int = 0, start: datetime = T0, end: datetime | None = T0 + 60 * MIN,
          issuer: str = "utility", **request: object) -> DREventMessage:
    if not request:
        request = {"import_limit_kw": 20.0}
    return DREventMessage(event_id=event_id, modification_number=mod, program="utility", start=start, end=end,
                          issuer=issuer, **request)


def test_new_event_accepted_and_ack() -> None:
    book = DRBook()
    decision = book.apply(event(), T0 - 10 * MIN, PROFILE)
    assert decision.accepted and decision.limit_kw == 20.0
    ack = decision.to_ack(T0 - 10 * MIN)
    assert ack.status == "accepted" and ack.event_id == "ev1" and ack.modification_number == 0
    assert book.status("ev1") == "pending"


@pytest.mark.parametrize("message, words", [
    (event(issuer="stranger"), "unknown issuer"),
    (event(level=3), "level 3 has no import limit"),
    (event(end=T0 - 5 * MIN, start=T0 - 60 * MIN), "already ended"),
    (event(cancelled=True), "cancellation of an unknown event"),
])
def test_rejections_of_new_events(message: DREventMessage, words: str) -> None:
    decision = DRBook().apply(message, T0, PROFILE)
    assert not decision.accepted
    assert words in decision.reason
    ack = decision.to_ack(T0)
    assert ack.status == "rejected" and ack.reason == decision.reason


def test_end_before_start_rejected_even_if_schema_was_bypassed() -> None:
    bad = DREventMessage.model_construct(**{**event().model_dump(), "end": T0 - MIN})
    decision = DRBook().apply(bad, T0 - 10 * MIN, PROFILE)
    assert not decision.accepted and "not after start" in decision.reason


def test_empty_issuer_list_accepts_nobody() -> None:
    decision = DRBook().apply(event(), T0, PROFILE.model_copy(update={"dr": PROFILE.dr.model_copy(update={"issuers": []})}))
    assert not decision.accepted and "unknown issuer" in decision.reason


def test_stale_duplicate_and_issuer_change_rejected() -> None:
    book = DRBook()
    assert book.apply(event(mod=2), T0 - 10 * MIN, PROFILE).accepted
    dup = book.apply(event(mod=2), T0 - 10 * MIN, PROFILE)
    stale = book.apply(event(mod=1, import_limit_kw=5.0), T0 - 10 * MIN, PROFILE)
    other = book.apply(event(mod=3, issuer="qse"), T0 - 10 * MIN, PROFILE)
    assert "duplicate" in dup.reason and "stale" in stale.reason and "differs" in other.reason
    assert book.limit_kw_at(T0) == 20.0  # none of them changed anything


def test_modification_supersedes_and_cancel_lifts_limit() -> None:
    book = DRBook()
    book.apply(event(), T0 - 10 * MIN, PROFILE)
    assert [t.kind for t in book.transitions(T0)] == ["activated"]
    modified = book.apply(event(mod=1, import_limit_kw=12.0, end=T0 + 90 * MIN), T0 + 5 * MIN, PROFILE)
    assert modified.accepted and book.limit_kw_at(T0 + 70 * MIN) == 12.0
    changes = book.transitions(T0 + 5 * MIN)
    assert [(t.kind, t.status, t.limit_kw) for t in changes] == [("modified", "active", 12.0)]
    cancel = book.apply(event(mod=2, cancelled=True, import_limit_kw=None), T0 + 10 * MIN, PROFILE)
    assert cancel.accepted
    assert [(t.kind, t.status) for t in book.transitions(T0 + 10 * MIN)] == [("cancelled", "cancelled")]
    assert book.limit_kw_at(T0 + 11 * MIN) == math.inf
    late = book.apply(event(mod=3, import_limit_kw=1.0), T0 + 12 * MIN, PROFILE)
    assert not late.accepted and "cancelled" in late.reason


def test_modifying_an_ended_event_rejected() -> None:
    book = DRBook()
    book.apply(event(), T0 - 10 * MIN, PROFILE)
    decision = book.apply(event(mod=1, import_limit_kw=1.0, end=T0 + 3 * 60 * MIN), T0 + 61 * MIN, PROFILE)
    assert not decision.accepted and "ended" in decision.reason


def test_lifecycle_pending_active_completed() -> None:
    book = DRBook()
    book.apply(event(), T0 - 10 * MIN, PROFILE)
    assert book.transitions(T0 - 5 * MIN) == []
    assert [(t.kind, t.status) for t in book.transitions(T0)] == [("activated", "active")]
    assert book.transitions(T0 + 30 * MIN) == []  # reported once
    assert [(t.kind, t.status) for t in book.transitions(T0 + 60 * MIN)] == [("completed", "completed")]
    assert book.limit_kw_at(T0 + 60 * MIN) == math.inf  # end is exclusive


def test_open_ended_event_stays_until_cancelled() -> None:
    book = DRBook()
    book.apply(event(end=None), T0, PROFILE)
    book.transitions(T0)
    far = T0 + timedelta(days=30)
    assert book.limit_kw_at(far) == 20.0 and book.transitions(far) == []
    book.apply(event(mod=1, end=None, cancelled=True, import_limit_kw=None), far, PROFILE)
    assert book.limit_kw_at(far) == math.inf


def test_shed_relative_to_baseline_and_level_mapping_and_minimum() -> None:
    book = DRBook()
    shed = book.apply(event("shed", shed_kw=15.0, baseline_kw=40.0), T0, PROFILE)
    assert shed.limit_kw == 25.0
    level = book.apply(event("lvl", start=T0 + 30 * MIN, level=2), T0, PROFILE)
    assert level.limit_kw == 8.0
    zero = book.apply(event("normal", level=0), T0, PROFILE)
    assert zero.accepted and zero.limit_kw == math.inf
    assert book.limit_at(T0 + 10 * MIN) == (25.0, "DR:shed")
    assert book.limit_at(T0 + 40 * MIN) == (8.0, "DR:lvl")
    assert book.limit_at(T0 - MIN) == (math.inf, "")


def test_limits_over_binds_whole_interval_an_event_touches() -> None:
    book = DRBook()
    book.apply(event(start=T0 + 20 * MIN, end=T0 + 35 * MIN, import_limit_kw=10.0), T0, PROFILE)
    starts = pd.date_range(T0, periods=4, freq="15min")
    limits, labels = book.limits_over(starts)
    assert limits.tolist() == [math.inf, 10.0, 10.0, math.inf]
    assert labels == ["", "DR:ev1", "DR:ev1", ""]


def test_restart_round_trip_through_dict_resumes_active_event() -> None:
    book = DRBook()
    book.apply(event("a", end=None), T0 - 10 * MIN, PROFILE)
    book.apply(event("b", start=T0 + 60 * MIN, level=1, end=T0 + 120 * MIN), T0 - 10 * MIN, PROFILE)
    book.transitions(T0)
    book.record("a", T0, 19.0)
    restored = DRBook.from_dict(json.loads(json.dumps(book.to_dict(), allow_nan=False)))
    assert restored.status("a") == "active" and restored.status("b") == "pending"
    assert restored.transitions(T0 + MIN) == []  # nothing changed across the restart
    for t in (T0, T0 + 61 * MIN, T0 + 200 * MIN):
        assert restored.limit_at(t) == book.limit_at(t)
    assert restored.records("a") == book.records("a")
    assert restored.apply(event("a", mod=0, end=None), T0, PROFILE).accepted is False  # duplicate still known


def test_compliance_figures() -> None:
    book = DRBook()
    book.apply(event(shed_kw=15.0, baseline_kw=40.0), T0, PROFILE)  # limit 25
    for k, measured in enumerate([24.0, 25.5, 26.0, 20.0]):
        book.record("ev1", T0 + 15 * k * MIN, measured)
    result = book.compliance("ev1", tolerance_kw=0.5)
    assert result.intervals == 4 and result.compliant_intervals == 3 and result.compliant_pct == 75.0
    assert result.requested_reduction_kw == 15.0
    assert result.delivered_reduction_kw == pytest.approx((16 + 14.5 + 14 + 20) / 4)
    assert result.delivered_pct == pytest.approx(100 * 16.125 / 15)
    assert result.worst_excess_kw == 1.0
    strict = book.compliance("ev1")
    assert strict.compliant_intervals == 2


def test_compliance_with_explicit_baseline_and_rerecord() -> None:
    book = DRBook()
    book.apply(event(import_limit_kw=10.0), T0, PROFILE)
    book.record("ev1", T0, 12.0, baseline_kw=30.0)
    book.record("ev1", T0, 9.0, baseline_kw=30.0)  # a corrected reading replaces the interval
    result = book.compliance("ev1")
    assert result.intervals == 1 and result.compliant_pct == 100.0
    assert result.requested_reduction_kw == 20.0 and result.delivered_reduction_kw == 21.0
    empty = DRBook()
    empty.apply(event(), T0, PROFILE)
    assert math.isnan(empty.compliance("ev1").compliant_pct)


def test_modification_ending_an_active_event_early_completes_it() -> None:
    book = DRBook()
    book.apply(event(end=None), T0 - 10 * MIN, PROFILE)
    book.transitions(T0)
    assert book.apply(event(mod=1, end=T0 + 20 * MIN), T0 + 25 * MIN, PROFILE).accepted
    assert [(t.kind, t.status) for t in book.transitions(T0 + 25 * MIN)] == [("modified", "active"),
                                                                             ("completed", "completed")]
    assert book.limit_kw_at(T0 + 25 * MIN) == math.inf and book.limit_kw_at(T0 + 10 * MIN) == 20.0


def test_limits_over_needs_aware_times() -> None:
    with pytest.raises(ValueError, match="tz-aware"):
        DRBook().limits_over(pd.date_range("2025-07-01", periods=2, freq="15min"))
