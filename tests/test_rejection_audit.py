"""The bounded audit of refused inputs (hashflex.audit.rejections, issue 15 auditor finding 1): the
first N per kind and minute in full, the rest counted in one summary per minute whose digest an
auditor can recompute from a raw capture; written into a real hash-chained trail that verifies."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hashflex.audit import AuditLog
from hashflex.audit.rejections import RejectionAudit, input_rejected_payload, rejection_field

T0 = datetime(2026, 7, 14, 20, 0, 5, tzinfo=timezone.utc)


def test_a_flood_is_bounded_per_kind_and_minute_and_nothing_is_lost(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "trail.db") as log:
        audit = RejectionAudit(lambda kind, payload, at: log.append(kind, payload, at), full_per_minute=3)
        payloads = [b'{"deployment_id": "x%d", ' % i for i in range(50)]
        for i, payload in enumerate(payloads):
            audit.refused(topic="hashflex/s/in/as/deploy", kind="as_deploy", stage="ingest", rule="schema:json_invalid",
                          reason="as_deploy: payload: Invalid JSON", payload=payload,
                          received_at=T0 + timedelta(milliseconds=i))
        audit.refused(topic="hashflex/s/in/dr", kind="dr", stage="site", rule="refused:issuer",
                      reason="issuer: 'mallory' is not in dr.issuers", payload=b"{}", received_at=T0)
        assert audit.pending_until() == T0.replace(second=0) + timedelta(minutes=1)
        assert not audit.flush(T0 + timedelta(seconds=30))  # the minute is not over: nothing yet
        assert audit.flush(T0 + timedelta(minutes=1))
        full, summaries = log.records("input_rejected"), log.records("input_rejected_summary")
        assert log.verify().ok
    assert [r.payload["kind"] for r in full] == ["as_deploy"] * 3 + ["dr"]
    assert [r.payload["payload_sha256"] for r in full[:3]] == [hashlib.sha256(p).hexdigest() for p in payloads[:3]]
    (summary,) = summaries
    assert summary.payload["not_recorded_in_full"] == {"as_deploy": {"schema:json_invalid": 47}}
    assert summary.payload["recorded_in_full"] == {"as_deploy": 3, "dr": 1}
    # an auditor with the raw capture recomputes it
    digest = hashlib.sha256("".join(hashlib.sha256(p).hexdigest() for p in payloads[3:]).encode()).hexdigest()
    assert summary.payload["unrecorded_sha256"] == digest
    assert full[-1].payload["field"] == "issuer" and full[-1].payload["stage"] == "site"


def test_a_new_minute_closes_the_last_and_records_in_full_again() -> None:
    out: list[tuple[str, dict]] = []
    audit = RejectionAudit(lambda kind, payload, at: out.append((kind, dict(payload))), full_per_minute=1)
    for minute in range(3):
        for i in range(4):
            audit.refused(topic="t", kind="noise", stage="ingest", rule="out_of_bounds:laeq_dba",
                          reason="noise laeq_dba: -20 is below 0", payload=b"p%d%d" % (minute, i),
                          received_at=T0 + timedelta(minutes=minute, seconds=i))
    audit.flush(None)  # on stop: the minute in progress
    kinds = [k for k, _ in out]
    assert kinds == ["input_rejected", "input_rejected_summary"] * 3
    assert [p["not_recorded_total"] for k, p in out if k == "input_rejected_summary"] == [3, 3, 3]
    assert out[0][1]["field"] == "laeq_dba"


def test_no_summary_for_a_minute_recorded_in_full_and_a_bad_limit_is_refused() -> None:
    out: list[str] = []
    audit = RejectionAudit(lambda kind, payload, at: out.append(kind), full_per_minute=5)
    audit.refused(topic="t", kind=None, stage="ingest", rule="topic", reason="topic: unknown kind 'x'",
                  payload="é", received_at=T0)
    assert audit.pending_until() is None and not audit.flush(None) and out == ["input_rejected"]
    with pytest.raises(ValueError, match="full_per_minute"):
        RejectionAudit(lambda *a: None, full_per_minute=-1)


@pytest.mark.parametrize(("rule", "reason", "kind", "field"), [
    ("schema:json_invalid", "as_award: payload: Invalid JSON", "as_award", "payload"),
    ("schema:extra_forbidden", "as_deploy: prio: Extra inputs; as_deploy: deployed_kw: finite", "as_deploy", "prio"),
    ("future:issued_at", "as_deploy issued_at: 2 days ahead", "as_deploy", "issued_at"),
    ("refused:deployed_kw", "deployed_kw: 0 kW sheds nothing", "as_deploy", "deployed_kw"),
    ("topic", "topic: unknown kind 'x'", None, "topic"),
    ("oversize", "payload of 300000 bytes is over the limit", None, None),
])
def test_the_field_a_refusal_names(rule: str, reason: str, kind: str | None, field: str | None) -> None:
    assert rejection_field(rule, reason, kind) == field


def test_the_record_keeps_a_digest_and_a_bounded_preview_not_the_payload() -> None:
    raw = b"A" * 100_000
    record = input_rejected_payload(topic="t", kind="price", stage="ingest", rule="oversize", reason="too big",
                                    payload=raw, received_at=T0)
    assert record["payload_sha256"] == hashlib.sha256(raw).hexdigest() and record["payload_bytes"] == 100_000
    assert len(record["payload_preview"]) <= 201 and record["minute"] == "2026-07-14T20:00:00Z"
