"""Append-only, hash-chained audit trail of what the site saw, decided and did; ``verify`` checks it.

Table ``audit_log`` in the SAME SQLite database as :class:`hashflex.store.Store`::

    seq INTEGER PRIMARY KEY, at_utc TEXT, kind TEXT, payload TEXT, prev_hash TEXT, hash TEXT

- ``payload`` is canonical JSON: ``sort_keys``, separators ``(",", ":")``, UTF-8 (no ASCII escaping),
  floats as Python ``repr``, no NaN/Infinity (the helpers below turn inf into ``null``).
- ``at_utc`` is ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
- ``hash = SHA-256(prev_hash + canonical JSON of {"seq", "at", "kind", "payload"})`` as lowercase hex,
  where ``at`` is ``at_utc`` and ``payload`` the decoded payload; the first record's ``prev_hash`` is
  64 zeros (:data:`GENESIS`). Anyone can recompute the chain with ``sqlite3`` + ``hashlib``.

``verify()`` walks the chain and names the first bad record: edited (content or hash column),
deleted (a gap, or a renumbered chain), inserted, or reordered. A chain rewritten from some point on
with correct hashes, or cut at the end, is only caught against a *signed head*: ``sign_head()`` gives
``hf-audit-v1:<seq>:<hash>:<hmac>`` (HMAC-SHA256, key from env ``HASHFLEX_AUDIT_HMAC_KEY``), to be
kept OFF the box (ticket, e-mail, auditor); ``verify_head(signature)`` checks it later, with any
records appended since.

Kinds and payloads (build them with the helpers; the report reads exactly these keys)
-------------------------------------------------------------------------------------
``config``       :func:`config_payload` — on start and on every change: ``reason``, ``profile_hash``,
                 ``profile`` (the full profile as JSON, so reports need nothing but the database).
``measurement``  :func:`measurement_payload` — ONE per control interval, after it ends: the facts
                 every report figure is computed from (means over the interval):
                 ``interval_start`` (ISO Z), ``interval_h``, ``import_kw`` (grid import at the meter),
                 ``renewable_kw`` (on-site renewable generation), ``load_kw`` (site consumption),
                 ``full_load_kw`` (load with every available unit in its top mode, or null),
                 ``hashrate_th_s``, ``noise_dba`` {receptor: LAeq over the interval, energy average of
                 the readings, :func:`laeq_dba`}, ``noise_over_cap_min`` {receptor: minutes of readings
                 above the cap}, ``noise_model_dba`` {receptor: modelled level of the setpoints run},
                 ``noise_cap_dba`` {receptor: cap in force, null = none}, ``intensity_kg_per_mwh``
                 (recorded grid intensity, or null: the report then uses the profile's default
                 factor), ``intensity_source``, ``price_usd_mwh``, ``revenue_usd``,
                 ``energy_cost_usd``, ``dr_baseline_kw`` (optional DR baseline, else null).
``schedule``     :func:`schedule_payload` — each accepted plan: ``status``, ``gap``, ``objective_usd``,
                 ``message``, ``horizon_start``/``horizon_end``, ``intervals``, ``reasons`` {code:
                 intervals}, ``totals`` (profit, revenue, energy cost, import MWh, emissions kg,
                 hashrate PH·h), ``first_row`` (the interval about to run, every schedule column).
``setpoints``    :func:`setpoints_payload` — each batch sent: ``issued_at``, ``expires_at`` (earliest),
                 ``miners``, ``counts`` {"group/mode": units}, ``power_target_kw``, ``source``.
``guard_action`` :func:`guard_action_payload` — ``action``, ``reason``, ``miners`` (count),
                 ``miner_ids`` (first 50), ``event_id`` (DR event that triggered it, or null).
``dr_event``     :func:`dr_event_payload` — every DR message received: ``event`` (the message),
                 ``accepted``, ``reason``, ``limit_kw`` (null = no limit), ``received_at``.
``dr_ack``       :func:`dr_ack_payload` — every acknowledgement sent (the :class:`DRAckMessage`).
``dr_transition`` ``event_id``, ``transition`` (activated, completed, cancelled, modified, deferred),
                 ``status``, ``limit_kw``: the DR lifecycle as the loop saw it.
``input_summary``:func:`input_summary_payload` — per interval: ``accepted`` {kind: n},
                 ``rejected`` {kind: n}, ``rejected_reasons`` {reason: n} (top 20).

Atomic with the state change it describes
-----------------------------------------
``append_in(conn, kind, payload, at)`` writes inside the caller's open transaction (start it with
``BEGIN IMMEDIATE`` so the read of the chain head and the insert hold the write lock together);
the record commits or rolls back with the caller's rows. The :class:`Store` writes through one
writer thread with its own connection, so for rows the store writes use
``append_with_store(store, kind, payload, at, write=fn)``: it runs on the store's writer connection
after every write enqueued before it is committed, and commits ``fn(conn)`` (your extra SQL, may be
None) and the audit record in ONE transaction. It blocks until committed (milliseconds): call it
from the loop thread, never from the MQTT callback thread. Two ways for the loop, per interval::

    payload = schedule_payload(schedule)
    store.put_schedule(payload, created_at=now)                         # enqueued
    append_with_store(store, "schedule", payload, now)                  # (1) committed right after it

    append_with_store(store, "schedule", payload, now, write=lambda c: c.execute(
        "INSERT INTO schedules (created_at_us, payload) VALUES (?, ?)",
        (to_us(now), json.dumps(payload))))                              # (2) one transaction

With (1) a crash between the two loses the audit record, never orders it before the row; (2) is
atomic but writes the store's table by SQL (``store.to_us``). Outside the loop
(CLI, tests) ``AuditLog(path).append(kind, payload, at)`` uses its own connection; SQLite serialises
it with the store's writer (``BEGIN IMMEDIATE`` + busy timeout).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "AuditError", "AuditLog", "AuditRecord", "GENESIS", "HMAC_ENV", "KINDS", "VerifyResult",
    "append_with_store", "canonical_json", "config_payload", "dr_ack_payload", "dr_event_payload",
    "guard_action_payload", "input_summary_payload", "laeq_dba", "measurement_payload", "record_hash",
    "schedule_payload", "setpoints_payload", "noise_interval_summary", "verify_file",
]

GENESIS = "0" * 64
HMAC_ENV = "HASHFLEX_AUDIT_HMAC_KEY"
SIGNATURE_VERSION = "hf-audit-v1"
KINDS = ("input_summary", "dr_event", "dr_ack", "dr_transition", "schedule", "setpoints", "guard_action", "config",
         "measurement", "limits_change", "limits_expired", "restart", "meter_sample",
         "as_award", "as_deploy", "as_performance")  # ancillary services (issue 15)

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
    """Canonical JSON text (sorted keys, no spaces, UTF-8, float repr); NaN/inf are refused."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise AuditError(f"payload not canonical JSON: {exc}") from exc


def iso_utc(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ``; naive datetimes are refused."""
    if moment.tzinfo is None:
        raise AuditError(f"naive datetime {moment!r}: a timezone is required")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(prev_hash: str, seq: int, at_utc: str, kind: str, payload: Any) -> str:
    body = canonical_json({"seq": seq, "at": at_utc, "kind": kind, "payload": payload})
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at_utc: str
    kind: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int  # rows in the table
    first_bad_seq: int | None = None
    problem: str = ""
    head_seq: int | None = None
    head_hash: str | None = None

    def __bool__(self) -> bool:
        return self.ok

    def describe(self) -> str:
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
    """Append one record inside the caller's open transaction (see module docstring)."""
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


class AuditLog:
    """The audit trail in one SQLite database (a path, or an open connection)."""

    def __init__(self, db: str | Path | sqlite3.Connection, *, readonly: bool = False) -> None:
        """``readonly`` opens a path with SQLite ``mode=ro`` (reports, ``audit verify``): nothing is
        created, and a database without the table reads as an empty trail."""
        self._lock = threading.Lock()
        self.readonly = readonly
        if readonly and not isinstance(db, sqlite3.Connection):
            if not Path(db).exists():
                raise FileNotFoundError(f"{db}: no such database")
            self.conn = sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True,
                                        check_same_thread=False, timeout=30.0)
            return
        if isinstance(db, sqlite3.Connection):
            self.conn = db
            if readonly:
                return
        else:
            self.conn = sqlite3.connect(Path(db), isolation_level=None, check_same_thread=False, timeout=30.0)
            self.conn.execute("PRAGMA busy_timeout=30000")
            self.conn.execute("PRAGMA journal_mode=WAL")
        with self._lock:
            _ensure_schema(self.conn)
            if self.conn.in_transaction and self.conn.isolation_level is not None:
                self.conn.commit()

    append_in = staticmethod(append_in)  # AuditLog.append_in(conn, kind, payload, at), same as the function

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def append(self, kind: str, payload: Mapping[str, Any], at: datetime) -> AuditRecord:
        """Append one record in its own transaction; returns it with its hash."""
        with self._lock:
            if self.readonly:
                raise AuditError("audit log opened read-only")
            if self.conn.in_transaction:
                raise AuditError("connection already in a transaction: use append_in(conn, ...)")
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                record = append_in(self.conn, kind, payload, at)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            return record

    # ------------------------------------------------------------------ reads

    def _has_table(self) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'").fetchone() is not None

    def records(self, kind: str | None = None, *, kinds: Iterable[str] | None = None) -> list[AuditRecord]:
        """Records in seq order, optionally of one ``kind`` or of several ``kinds``."""
        if not self._has_table():
            return []
        wanted = [kind] if kind is not None else list(kinds or [])
        sql, params = _SELECT, tuple(wanted)
        if wanted:
            sql += f" WHERE kind IN ({', '.join('?' * len(wanted))})"
        return [AuditRecord(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5])
                for r in self.conn.execute(sql + " ORDER BY seq", params).fetchall()]

    def head(self) -> tuple[int, str] | None:
        if not self._has_table():
            return None
        row = self.conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else None

    # ------------------------------------------------------------------ verification

    def verify(self) -> VerifyResult:
        """Walk the chain; the first record edited, deleted, inserted or reordered fails it."""
        if not self._has_table():
            return verify_rows([])
        # Fast path: stream the chain in constant memory; only a failure loads it whole to diagnose.
        prev, expected, head = GENESIS, 1, None
        for row in self.conn.execute(_SELECT + " ORDER BY seq"):
            seq, _, _, text, prev_hash, stored = row
            if seq != expected or prev_hash != prev or _recompute(row) != stored or not _is_canonical(text):
                return verify_rows(self.conn.execute(_SELECT + " ORDER BY seq").fetchall())
            prev, expected, head = stored, expected + 1, row
        return VerifyResult(True, expected - 1, None, "", head[0] if head else None, head[5] if head else None)

    def sign_head(self, key: bytes | None = None) -> str:
        """``hf-audit-v1:<seq>:<hash>:<hmac>`` for the current head (the chain must verify first)."""
        result = self.verify()
        if not result.ok:
            raise AuditError(f"refusing to sign a broken chain: {result.describe()}")
        if result.head_seq is None:
            raise AuditError("audit trail is empty: nothing to sign")
        message = f"{SIGNATURE_VERSION}:{result.head_seq}:{result.head_hash}"
        return f"{message}:{_mac(_key(key), message)}"

    def verify_head(self, signature: str, key: bytes | None = None) -> VerifyResult:
        """Check a signature from :meth:`sign_head`: authentic, the chain verifies, and the signed
        record is still there with the signed hash (records appended since are fine)."""
        parts = signature.strip().split(":")
        if len(parts) != 4 or parts[0] != SIGNATURE_VERSION or not parts[1].isdigit():
            return VerifyResult(False, 0, None, f"not a {SIGNATURE_VERSION} signature")
        message = ":".join(parts[:3])
        signed_seq, signed_hash = int(parts[1]), parts[2]
        if not hmac.compare_digest(_mac(_key(key), message), parts[3]):
            return VerifyResult(False, 0, signed_seq, "signature does not match (wrong key or altered text)")
        result = self.verify()
        if not result.ok:
            return result
        row = (self.conn.execute("SELECT hash FROM audit_log WHERE seq = ?", (signed_seq,)).fetchone()
               if self._has_table() else None)
        if row is None:
            return VerifyResult(False, result.records, signed_seq,
                                f"signed head seq {signed_seq} is gone: chain ends at {result.head_seq} (truncated)",
                                result.head_seq, result.head_hash)
        if row[0] != signed_hash:
            return VerifyResult(False, result.records, signed_seq,
                                f"record {signed_seq} hash differs from the signed one: chain rewritten",
                                result.head_seq, result.head_hash)
        return result


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
    """Verify ``(seq, at_utc, kind, payload, prev_hash, hash)`` rows in seq order."""
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


_SQLITE_MAGIC = b"SQLite format 3\x00"


def verify_file(path: str | Path, signature: str | None = None, key: bytes | None = None) -> VerifyResult:
    """Verify the trail in the database file at ``path`` for an auditor (``hashflex audit verify``).

    Fails closed: unlike :meth:`AuditLog.verify` (where a new database is a valid empty chain), a
    file with nothing to check is a failure, because "OK" must mean "evidence was checked". A
    missing file, an empty file, a file that is not SQLite, a database without the ``audit_log``
    table or with no records, and an unreadable database each give ``ok=False`` with a one-line
    ``problem`` naming the path. With ``signature`` the signed head is checked too
    (:meth:`AuditLog.verify_head`). Never raises for a bad file; :class:`AuditError` only for a
    missing HMAC key when a signature is given.
    """
    path = Path(path)

    def failed(problem: str) -> VerifyResult:
        return VerifyResult(False, 0, None, f"{path}: {problem}")

    try:
        with path.open("rb") as stream:
            magic = stream.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return failed("no such file")
    except IsADirectoryError:
        return failed("is a directory, not an audit database")
    except OSError as exc:
        return failed(f"cannot read: {exc.strerror or exc}")
    if not magic:
        return failed("empty file, no audit trail to verify")
    if magic != _SQLITE_MAGIC:
        return failed("not an SQLite database (no audit trail to verify)")
    try:
        with AuditLog(path, readonly=True) as log:
            if not log._has_table():
                return failed("no audit trail in this database (no audit_log table)")
            result = log.verify_head(signature, key) if signature else log.verify()
    except sqlite3.DatabaseError as exc:  # corrupt pages, locked beyond the timeout, ...
        return failed(f"unreadable database: {exc}")
    if result.ok and result.records == 0:
        return failed("audit trail has no records, nothing to verify")
    return result


def append_with_store(store: Any, kind: str, payload: Mapping[str, Any], at: datetime, *,
                      write: Callable[[sqlite3.Connection], Any] | None = None,
                      timeout_s: float = 30.0) -> AuditRecord:
    """Append on the store's writer connection, after all writes enqueued before it, in one
    transaction with ``write(conn)`` (optional). See the module docstring.

    Uses ``Store.run_in_writer(action, timeout_s)`` if the store has it, else the store's internal
    ``_call`` (the hook ``Store.prune`` uses): the store offers no public one yet.
    """
    def action(conn: sqlite3.Connection) -> AuditRecord:
        _ensure_schema(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if write is not None:
                write(conn)
            record = append_in(conn, kind, payload, at)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return record

    runner = getattr(store, "run_in_writer", None) or store._call  # noqa: SLF001
    return runner(action, timeout_s)


# --------------------------------------------------------------------------- payload helpers


def _num(value: float | None) -> float | None:
    """JSON-safe number: None and non-finite values become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _nums(values: Mapping[str, float | None] | None) -> dict[str, float | None]:
    return {str(k): _num(v) for k, v in (values or {}).items()}


def laeq_dba(levels_dba: Iterable[float], durations_s: Iterable[float] | None = None) -> float:
    """Energy-average level: 10·log10(Σ t_i·10^(L_i/10) / Σ t_i) (equal weights without durations)."""
    levels = [float(x) for x in levels_dba]
    weights = [1.0] * len(levels) if durations_s is None else [float(t) for t in durations_s]
    if not levels or sum(weights) <= 0:
        return math.nan
    energy = sum(w * 10.0 ** (level / 10.0) for level, w in zip(levels, weights, strict=True))
    return 10.0 * math.log10(energy / sum(weights))


def noise_interval_summary(readings: Iterable[tuple[float, float]], cap_dba: float | None) -> tuple[float, float]:
    """(LAeq, minutes over cap) of ``(laeq_dba, averaging_s)`` readings inside one interval."""
    readings = list(readings)
    level = laeq_dba([r[0] for r in readings], [r[1] for r in readings])
    over = 0.0 if cap_dba is None else sum(r[1] for r in readings if r[0] > cap_dba) / 60.0
    return level, over


def measurement_payload(
    interval_start: datetime,
    interval_h: float,
    import_kw: float,
    renewable_kw: float,
    load_kw: float,
    hashrate_th_s: float,
    noise_dba: Mapping[str, float | None],
    intensity_kg_per_mwh: float | None,
    price_usd_mwh: float | None,
    revenue_usd: float,
    energy_cost_usd: float,
    *,
    noise_model_dba: Mapping[str, float | None] | None = None,
    noise_cap_dba: Mapping[str, float | None] | None = None,
    noise_over_cap_min: Mapping[str, float] | None = None,
    full_load_kw: float | None = None,
    intensity_source: str | None = None,
    dr_baseline_kw: float | None = None,
    hashprice_usd_per_ph_day: float | None = None,
) -> dict[str, Any]:
    """The ``measurement`` payload: means over ``[interval_start, +interval_h)`` (see module docstring);
    ``hashprice_usd_per_ph_day``: the hashprice the revenue was valued at."""
    if interval_h <= 0:
        raise AuditError("interval_h must be > 0")
    return {
        "interval_start": iso_utc(interval_start),
        "interval_h": float(interval_h),
        "import_kw": _num(import_kw),
        "renewable_kw": _num(renewable_kw),
        "load_kw": _num(load_kw),
        "full_load_kw": _num(full_load_kw),
        "hashrate_th_s": _num(hashrate_th_s),
        "noise_dba": _nums(noise_dba),
        "noise_model_dba": _nums(noise_model_dba),
        "noise_cap_dba": _nums(noise_cap_dba),
        "noise_over_cap_min": _nums(noise_over_cap_min),
        "intensity_kg_per_mwh": _num(intensity_kg_per_mwh),
        "intensity_source": intensity_source,
        "price_usd_mwh": _num(price_usd_mwh),
        "revenue_usd": _num(revenue_usd),
        "energy_cost_usd": _num(energy_cost_usd),
        "dr_baseline_kw": _num(dr_baseline_kw),
        "hashprice_usd_per_ph_day": _num(hashprice_usd_per_ph_day),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return _num(value)
    if hasattr(value, "isoformat") and getattr(value, "tzinfo", None) is not None:
        return iso_utc(value)
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def schedule_payload(schedule: Any) -> dict[str, Any]:
    """The ``schedule`` payload of an :class:`hashflex.optimize.schedule.Schedule`."""
    frame, info = schedule.frame, schedule.info
    first = frame.iloc[0]
    dt_h = frame["duration_h"].to_numpy() if "duration_h" in frame else None
    totals = {"profit_usd": float(frame["profit_usd"].sum()), "revenue_usd": float(frame["revenue_usd"].sum()),
              "energy_cost_usd": float(frame["energy_cost_usd"].sum()),
              "emissions_kg": float(frame["emissions_kg"].sum())}
    if dt_h is not None:
        totals["grid_import_mwh"] = float((frame["grid_import_kw"].to_numpy() * dt_h).sum() / 1000.0)
        totals["hashrate_ph_h"] = float((frame["hashrate_th_s"].to_numpy() * dt_h).sum() / 1000.0)
    reasons = frame["reason"].fillna("").value_counts() if "reason" in frame else {}
    return {
        "status": getattr(info.status, "value", str(info.status)),
        "gap": _num(info.gap),
        "objective_usd": _num(info.objective_usd),
        "message": info.message,
        "horizon_start": iso_utc(frame.index[0].to_pydatetime()),
        "horizon_end": iso_utc(frame["interval_end"].iloc[-1].to_pydatetime()) if "interval_end" in frame else None,
        "intervals": int(len(frame)),
        "reasons": {str(k) or "full_load": int(v) for k, v in dict(reasons).items()},
        "totals": {k: _num(v) for k, v in totals.items()},
        "first_row": {"interval_start": iso_utc(frame.index[0].to_pydatetime()),
                      **{str(k): _jsonable(v) for k, v in first.items()}},
    }


def setpoints_payload(batch: Iterable[Any], *, source: str = "schedule") -> dict[str, Any]:
    """Batch summary of ``Setpoint``s: units per ``group/mode``, total target, earliest expiry."""
    batch = list(batch)
    counts: dict[str, int] = {}
    for sp in batch:
        label = f"{getattr(sp, 'group_id', '?')}/{sp.mode}"
        counts[label] = counts.get(label, 0) + 1
    return {
        "source": source,
        "miners": len(batch),
        "counts": dict(sorted(counts.items())),
        "power_target_kw": float(sum(sp.power_target_kw for sp in batch)),
        "issued_at": iso_utc(min(sp.issued_at for sp in batch)) if batch else None,
        "expires_at": iso_utc(min(sp.expires_at for sp in batch)) if batch else None,
    }


def guard_action_payload(action: str, reason: str, miners: Iterable[str] = (), *,
                         event_id: str | None = None) -> dict[str, Any]:
    """One guard action (``GuardAction.kind``/``reason``/``miners``), with the DR event behind it."""
    miners = list(miners)
    return {"action": action, "reason": reason, "miners": len(miners), "miner_ids": miners[:50],
            "event_id": event_id}


def config_payload(profile: Any, reason: str = "start") -> dict[str, Any]:
    """Profile hash and the full profile (``reason``: ``start`` or ``change``)."""
    from hashflex.profile import profile_hash

    return {"reason": reason, "profile_hash": profile_hash(profile),
            "profile": json.loads(profile.model_dump_json())}


def dr_event_payload(message: Any, accepted: bool, reason: str, limit_kw: float | None,
                     received_at: datetime) -> dict[str, Any]:
    """A DR message and the site's decision (``DRDecision`` fields)."""
    return {"event": json.loads(message.model_dump_json()), "accepted": bool(accepted), "reason": reason,
            "limit_kw": _num(limit_kw), "received_at": iso_utc(received_at)}


def dr_ack_payload(ack: Any) -> dict[str, Any]:
    return json.loads(ack.model_dump_json())


def input_summary_payload(interval_start: datetime, interval_h: float, accepted: Mapping[str, int],
                          rejected: Mapping[str, int], rejected_reasons: Mapping[str, int] | None = None
                          ) -> dict[str, Any]:
    top = sorted((rejected_reasons or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    return {"interval_start": iso_utc(interval_start), "interval_h": float(interval_h),
            "accepted": {str(k): int(v) for k, v in accepted.items()},
            "rejected": {str(k): int(v) for k, v in rejected.items()},
            "rejected_reasons": {str(k): int(v) for k, v in top}}
