"""Refused inputs in the audit trail, bounded (issue 15, QSE/auditor review finding 1).

An auditor must see in the tamper-evident trail that a message was received and refused, with the
reason naming the field and a digest of the raw payload; a flood of bad input must not grow the
trail without bound. The rule (:class:`RejectionAudit`):

- per input kind (``as_award``, ``as_deploy``, ``dr``, ``noise``, ... and ``unknown``) and per UTC
  minute of receipt, the first :data:`REJECTION_AUDIT_FULL_PER_MINUTE` refusals are recorded in full
  (``input_rejected``, :func:`input_rejected_payload`);
- the rest of that minute are counted per kind and reason class, and the SHA-256 of each of their
  payloads goes into one running digest (``unrecorded_sha256`` = SHA-256 over the concatenated
  lowercase hex SHA-256 digests of those payloads, in arrival order), written once the minute is over as one
  ``input_rejected_summary`` record (:func:`input_rejected_summary_payload`) — only for minutes in
  which something was not recorded in full.

So at most ``REJECTION_AUDIT_FULL_PER_MINUTE`` x (number of kinds, about 15) + 1 records a minute,
whatever the flood; nothing refused is missing from the trail (each is either a record or a count),
and an operator holding a raw capture of the minute can recompute ``unrecorded_sha256``.

Pure: the class decides and builds payloads and hands them to a ``sink(kind, payload, at)``
(:meth:`hashflex.control.records.AuditRecorder.record` in the daemon, which never blocks); the
caller supplies the receipt time. Thread-safe (the MQTT ingest calls it from two network threads).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["REJECTION_AUDIT_FULL_PER_MINUTE", "RejectionAudit", "input_rejected_payload",
           "input_rejected_summary_payload", "payload_sha256", "rejection_field"]

REJECTION_AUDIT_FULL_PER_MINUTE = 10
"""Refusals recorded in full per input kind and UTC minute; the rest of the minute are counted."""

_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]{0,60}):")

Sink = Callable[[str, Mapping[str, Any], datetime], None]


def payload_sha256(payload: bytes | str) -> str:
    """SHA-256 of a raw payload as received, lowercase hex (a ``str`` is hashed as its UTF-8 bytes).

    Parameters
    ----------
    payload : bytes or str
        The payload exactly as it arrived.

    Returns
    -------
    str
        64 hex digits.
    """
    return hashlib.sha256(payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)).hexdigest()


def rejection_field(rule: str, reason: str, kind: str | None = None) -> str | None:
    """The field a refusal names: from the reason class (``out_of_bounds:power_kw`` → ``power_kw``) or,
    for schema refusals, the reason's leading ``[<kind>: ]<field>:`` (``"as_deploy: deployed_kw: ..."``;
    the first field when several are named).

    Parameters
    ----------
    rule : str
        The reason class (:attr:`hashflex.messages.Rejection.rule`, or ``refused:<field>``).
    reason : str
        The human reason.
    kind : str, optional
        The input kind, stripped from the reason's start.

    Returns
    -------
    str or None
        The field, or None when neither names one (e.g. malformed JSON).
    """
    head, _, tail = rule.partition(":")
    if tail and head in ("out_of_bounds", "stale", "future", "unknown_id", "refused"):
        return tail
    text = reason.strip()
    for prefix in ((f"{kind}: ", f"{kind} ") if kind else ()):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    match = _FIELD.match(text)
    return match.group(1) if match else None


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def input_rejected_payload(*, topic: str, kind: str | None, stage: str, rule: str, reason: str,
                           payload: bytes | str, received_at: datetime, preview: str | None = None) -> dict[str, Any]:
    """One refused input, in full (audit kind ``input_rejected``).

    Parameters
    ----------
    topic : str
        Where it arrived (the MQTT topic).
    kind : str or None
        The input kind (``as_deploy``, ...; None when the topic is unknown: recorded as ``unknown``).
    stage : str
        Who refused it: ``ingest`` (schema or plausibility, before the loop saw it) or ``site`` (the
        control loop: its plausibility check or the limits book).
    rule : str
        The reason class (bounded set: ``schema:<type>``, ``out_of_bounds:<field>``, ``refused:<field>``, ...).
    reason : str
        The reason, naming the field (truncated to 500 characters).
    payload : bytes or str
        The raw payload as received (only its digest, size and a preview are kept).
    received_at : datetime
        When it arrived, timezone-aware.
    preview : str, optional
        The payload's preview (default: its first 200 characters, decoded leniently).

    Returns
    -------
    dict
        ``topic``, ``kind``, ``stage``, ``rule``, ``field`` (or null), ``reason``, ``payload_sha256``,
        ``payload_bytes``, ``payload_preview``, ``received_at`` (ISO Z), ``minute`` (ISO Z).
    """
    raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    if preview is None:
        text = raw[:800].decode("utf-8", errors="replace")
        preview = text[:200] + ("…" if len(text) > 200 or len(raw) > 800 else "")
    return {"topic": topic, "kind": kind or "unknown", "stage": stage, "rule": rule,
            "field": rejection_field(rule, reason, kind), "reason": reason[:500], "payload_sha256": payload_sha256(raw),
            "payload_bytes": len(raw), "payload_preview": preview, "received_at": _iso(received_at),
            "minute": _iso(_minute(received_at))}


def input_rejected_summary_payload(minute: datetime, recorded: Mapping[str, int],
                                   unrecorded: Mapping[str, Mapping[str, int]], unrecorded_sha256: str,
                                   limit: int) -> dict[str, Any]:
    """The refusals of one minute that were not recorded in full (audit kind ``input_rejected_summary``).

    Parameters
    ----------
    minute : datetime
        The UTC minute (its start).
    recorded : Mapping[str, int]
        Kind → refusals recorded in full in that minute.
    unrecorded : Mapping[str, Mapping[str, int]]
        Kind → reason class → refusals counted only.
    unrecorded_sha256 : str
        The running digest of the counted-only payloads (see the module docstring).
    limit : int
        The per-kind, per-minute limit in force.

    Returns
    -------
    dict
        ``minute`` (ISO Z), ``full_per_minute``, ``recorded_in_full`` {kind: n}, ``not_recorded_in_full``
        {kind: {rule: n}}, ``not_recorded_total``, ``unrecorded_sha256``.
    """
    return {"minute": _iso(minute), "full_per_minute": limit, "recorded_in_full": dict(sorted(recorded.items())),
            "not_recorded_in_full": {k: dict(sorted(v.items())) for k, v in sorted(unrecorded.items())},
            "not_recorded_total": sum(sum(v.values()) for v in unrecorded.values()),
            "unrecorded_sha256": unrecorded_sha256}


def _minute(at: datetime) -> datetime:
    at = at.astimezone(timezone.utc)
    return at.replace(second=0, microsecond=0)


def _minute_key(at: datetime) -> int:
    """Minutes since the epoch (UTC): a cheap key for the per-minute bound (``astimezone`` costs ~3 µs)."""
    return int(at.timestamp() // 60)


class RejectionAudit:
    """Decides which refusals are recorded in full and writes the per-minute summaries (module docstring).

    Parameters
    ----------
    sink : callable
        ``sink(kind, payload, at)``: appends one audit record (must not block for long).
    full_per_minute : int, default :data:`REJECTION_AUDIT_FULL_PER_MINUTE`
        Refusals recorded in full per kind and minute (>= 0).

    Raises
    ------
    ValueError
        ``full_per_minute`` < 0.
    """

    def __init__(self, sink: Sink, full_per_minute: int = REJECTION_AUDIT_FULL_PER_MINUTE) -> None:
        if full_per_minute < 0:
            raise ValueError(f"full_per_minute {full_per_minute}: must be >= 0")
        self._sink = sink
        self.full_per_minute = full_per_minute
        self._lock = threading.Lock()
        self._minute: datetime | None = None
        self._minute_no: int | None = None  # _minute_key of _minute
        self._recorded: dict[str, int] = {}
        self._unrecorded: dict[str, dict[str, int]] = {}
        self._digest = hashlib.sha256()  # over the hex digests of the payloads counted only
        self._last_at: datetime | None = None  # the open minute's latest refusal: its summary's time

    def refused(self, *, topic: str, kind: str | None, stage: str, rule: str, reason: str, payload: bytes | str,
                received_at: datetime, preview: str | None = None) -> bool:
        """One refused input: recorded in full, or counted for its minute's summary.

        Parameters are those of :func:`input_rejected_payload`.

        Returns
        -------
        bool
            True when recorded in full.
        """
        kind = kind or "unknown"
        minute_no = _minute_key(received_at)
        out: list[tuple[str, dict[str, Any], datetime]] = []
        with self._lock:
            if self._minute_no is not None and minute_no > self._minute_no:
                out.extend(self._close())
            if self._minute_no is None or minute_no > self._minute_no:
                self._minute, self._minute_no = _minute(received_at), minute_no
            # a refusal stamped before the open minute (a clock step back) counts in the open minute
            self._last_at = received_at if self._last_at is None else max(self._last_at, received_at)
            full = self._recorded.get(kind, 0) < self.full_per_minute
            if full:
                self._recorded[kind] = self._recorded.get(kind, 0) + 1
                out.append(("input_rejected", input_rejected_payload(
                    topic=topic, kind=kind, stage=stage, rule=rule, reason=reason, payload=payload,
                    received_at=received_at, preview=preview), received_at))
            else:
                by_rule = self._unrecorded.setdefault(kind, {})
                by_rule[rule] = by_rule.get(rule, 0) + 1
                self._digest.update(payload_sha256(payload).encode("ascii"))
        for record in out:  # outside the lock: the sink may take its own
            self._sink(*record)
        return full

    def flush(self, now: datetime | None = None) -> bool:
        """Write the open minute's summary if that minute is over at ``now`` (None: now or not: on stop).

        Parameters
        ----------
        now : datetime, optional
            The time; None writes the open minute's summary whatever the time (shutdown).

        Returns
        -------
        bool
            True when a summary was written.
        """
        with self._lock:
            if self._minute_no is None or (now is not None and _minute_key(now) <= self._minute_no):
                return False
            out = self._close()
            self._minute, self._minute_no = None, None
        for record in out:
            self._sink(*record)
        return bool(out)

    def pending_until(self) -> datetime | None:
        """When the open minute ends if it has refusals counted only (a summary is due then), else None."""
        with self._lock:
            if self._minute is None or not self._unrecorded:
                return None
            return self._minute + timedelta(minutes=1)

    def _close(self) -> list[tuple[str, dict[str, Any], datetime]]:
        """The open minute's summary (when something was counted only) and a fresh minute. Call with the lock."""
        out = []
        if self._unrecorded and self._minute is not None:
            at = self._last_at or self._minute
            out.append(("input_rejected_summary", input_rejected_summary_payload(
                self._minute, self._recorded, self._unrecorded, self._digest.hexdigest(), self.full_per_minute), at))
        self._recorded, self._unrecorded, self._digest, self._last_at = {}, {}, hashlib.sha256(), None
        return out
