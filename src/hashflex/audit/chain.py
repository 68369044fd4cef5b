"""The chain itself: canonical JSON, record hashes, appending inside a transaction, and walking a
chain to name the first bad record.

Seam: the format (what a record is and how it is hashed and checked), independent of where the
rows are stored; :mod:`.log` opens databases, :mod:`.payloads` builds record contents. Split from
``audit.py`` (issue 11).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = ["AuditError", "AuditRecord", "GENESIS", "HMAC_ENV", "KINDS", "SIGNATURE_VERSION", "VerifyResult",
           "append_in", "canonical_json", "iso_utc", "record_hash", "verify_rows"]

GENESIS = "0" * 64
HMAC_ENV = "HASHFLEX_AUDIT_HMAC_KEY"
SIGNATURE_VERSION = "hf-audit-v1"
KINDS = ("input_summary", "dr_event", "dr_ack", "dr_transition", "schedule", "setpoints", "guard_action", "config",
         "measurement", "limits_change", "limits_expired", "restart", "meter_sample",
         "as_award", "as_deploy", "as_performance", "reserve_hold_short",  # ancillary services (issue 15)
         "openadr_rejected",  # what the OpenADR VEN refuses (openadr.ven._reject)
         "input_rejected", "input_rejected_summary")  # refused inputs, bounded (audit.rejections)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY, at_utc TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_log_kind ON audit_log (kind, seq);
"""
_SELECT = "SELECT seq, at_utc, kind, payload, prev_hash, hash FROM audit_log"


class AuditError(RuntimeError):
    """The audit trail cannot be written or signed (bad kind, payload, missing key, broken chain)."""


# --------------------------------------------------------------------------- canonical form


def canonical_json(value: Any) -> str:
    """Canonical JSON text (sorted keys, no spaces, UTF-8, float repr); NaN/inf are refused.

    Parameters
    ----------
    value : Any
        A JSON-serialisable value (dicts, lists, str, int, float, bool, None).

    Returns
    -------
    str
        ``json.dumps`` with ``sort_keys``, separators ``(",", ":")``, ``ensure_ascii=False``.

    Raises
    ------
    AuditError
        When the value holds NaN or infinity (or is not serialisable as canonical JSON).
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise AuditError(f"payload not canonical JSON: {exc}") from exc


def iso_utc(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ``; naive datetimes are refused.

    Parameters
    ----------
    moment : datetime
        A timezone-aware time.

    Returns
    -------
    str
        The time in UTC with microseconds and a ``Z``.

    Raises
    ------
    AuditError
        For a naive datetime.
    """
    if moment.tzinfo is None:
        raise AuditError(f"naive datetime {moment!r}: a timezone is required")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(prev_hash: str, seq: int, at_utc: str, kind: str, payload: Any) -> str:
    """The hash of one record: SHA-256 of ``prev_hash`` + canonical JSON of {seq, at, kind, payload}.

    Parameters
    ----------
    prev_hash : str
        The previous record's hash (64 lowercase hex digits; :data:`GENESIS` for the first record).
    seq : int
        The record's sequence number (1 for the first).
    at_utc : str
        The record's time as :func:`iso_utc` writes it.
    kind : str
        One of :data:`KINDS`.
    payload : Any
        The decoded payload.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    body = canonical_json({"seq": seq, "at": at_utc, "kind": kind, "payload": payload})
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    """One record of the trail as stored: ``seq``, ``at_utc`` (ISO Z), ``kind``, decoded ``payload``,
    ``prev_hash`` and ``hash`` (see :func:`record_hash`).
    """

    seq: int
    at_utc: str
    kind: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of walking a chain: ``ok``; ``records`` (rows in the table); the first bad record
    (``first_bad_seq``) and the ``problem`` in words; the head (``head_seq``, ``head_hash``). Truthy when ok.
    """

    ok: bool
    records: int  # rows in the table
    first_bad_seq: int | None = None
    problem: str = ""
    head_seq: int | None = None
    head_hash: str | None = None

    def __bool__(self) -> bool:
        return self.ok

    def describe(self) -> str:
        """One line for people: the head when the chain verifies, else the first bad record and why.

        Returns
        -------
        str
            ``audit chain OK: ...`` or ``audit chain FAILED at seq N: ...``.
        """
        if self.ok:
            return f"audit chain OK: {self.records} records, head seq {self.head_seq} hash {self.head_hash}"
        if self.first_bad_seq is None:  # nothing to walk: the file itself is the problem
            return f"audit trail FAILED: {self.problem}"
        return f"audit chain FAILED at seq {self.first_bad_seq}: {self.problem} ({self.records} records)"


# --------------------------------------------------------------------------- the log


def _ensure_schema(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA.strip().split(";"):
        if statement.strip():
            conn.execute(statement)


def append_in(conn: sqlite3.Connection, kind: str, payload: Mapping[str, Any], at: datetime) -> AuditRecord:
    """Append one record inside the caller's open transaction (see module docstring).

    Parameters
    ----------
    conn : sqlite3.Connection
        A connection with an open transaction (``BEGIN IMMEDIATE``) on a database holding ``audit_log``.
    kind : str
        One of :data:`KINDS`.
    payload : Mapping[str, Any]
        The record's content, canonical-JSON serialisable (no NaN/inf).
    at : datetime
        The record's time, timezone-aware.

    Returns
    -------
    AuditRecord
        The record written, with its sequence number and hash.

    Raises
    ------
    AuditError
        Without an open transaction, for an unknown kind, a payload that is not canonical JSON, or a
        naive time.
    """
    if not conn.in_transaction:
        raise AuditError("append_in needs an open transaction (BEGIN IMMEDIATE); use AuditLog.append")
    if kind not in KINDS:
        raise AuditError(f"kind {kind!r}: expected one of {KINDS}")
    text = canonical_json(dict(payload))
    decoded = json.loads(text)
    at_utc = iso_utc(at)
    row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
    digest = record_hash(prev, seq, at_utc, kind, decoded)
    conn.execute("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?)", (seq, at_utc, kind, text, prev, digest))
    return AuditRecord(seq, at_utc, kind, decoded, prev, digest)



def _key(key: bytes | None) -> bytes:
    if key is not None:
        return key
    value = os.environ.get(HMAC_ENV)
    if not value:
        raise AuditError(f"no HMAC key: set {HMAC_ENV}")
    return value.encode("utf-8")


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def _recompute(row: tuple[Any, ...], seq: int | None = None) -> str | None:
    try:
        return record_hash(row[4], row[0] if seq is None else seq, row[1], row[2], json.loads(row[3]))
    except (ValueError, AuditError):
        return None


def _is_canonical(text: str) -> bool:
    try:
        return canonical_json(json.loads(text)) == text
    except (ValueError, AuditError):
        return False


def verify_rows(rows: list[tuple[Any, ...]]) -> VerifyResult:
    """Verify ``(seq, at_utc, kind, payload, prev_hash, hash)`` rows in seq order.

    Parameters
    ----------
    rows : list of tuple
        Every row of ``audit_log``, ordered by ``seq``.

    Returns
    -------
    VerifyResult
        ok, or the first record edited, deleted, inserted or reordered, named with the problem.
    """
    n = len(rows)
    prev, expected = GENESIS, 1

    def bad(seq: int, problem: str) -> VerifyResult:
        return VerifyResult(False, n, seq, problem)

    for i, row in enumerate(rows):
        seq, _, kind, text, prev_hash, stored = row
        if seq != expected:
            if seq < expected:
                return bad(seq, f"record {seq} inserted before the start of the chain")
            return bad(expected, f"record {expected} missing (deleted); the chain resumes at {seq}")
        if i >= 2 and prev_hash != prev and prev_hash == rows[i - 2][5]:
            return bad(seq - 1, f"record {seq - 1} inserted: record {seq} chains to record {seq - 2}")
        digest = _recompute(row)
        if digest != stored or prev_hash != prev:
            later = {r[5] for r in rows[i + 1:]}  # only on failure: O(n) once
        if digest != stored:
            nxt = rows[i + 1] if i + 1 < n else None
            if nxt is not None and nxt[4] == prev and prev_hash == prev:
                return bad(seq, f"record {seq} inserted: record {seq + 1} chains to record {seq - 1}")
            if digest is not None and nxt is not None and nxt[4] == digest:
                return bad(seq, f"record {seq} hash column edited (its content still matches the next link)")
            moved = next((s for s in range(max(1, seq - 100), seq + 101)
                          if s != seq and _recompute(row, s) == stored), None)
            if moved is not None:
                if prev_hash in later or moved < seq:
                    return bad(seq, f"record {seq} reordered: its content was hashed as seq {moved}")
                return bad(seq, f"record {seq} was seq {moved}: {moved - seq} record(s) before it deleted "
                                f"and the rest renumbered")
            return bad(seq, f"record {seq} edited: its {kind!r} content no longer matches its hash")
        if prev_hash != prev:
            if prev_hash in later:
                return bad(seq, f"record {seq} reordered: it links to a later record")
            return bad(seq, f"record {seq} does not link to record {seq - 1} (hash column of {seq - 1} edited, "
                            f"or records deleted before it)")
        if not _is_canonical(text):
            return bad(seq, f"record {seq} payload text edited (not in canonical form)")
        prev, expected = stored, expected + 1
    head = rows[-1] if rows else None
    return VerifyResult(True, n, None, "", head[0] if head else None, head[5] if head else None)

