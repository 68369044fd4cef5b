"""The trail in a database: :class:`AuditLog` (append, read, verify, sign the head),
:func:`verify_file` for auditors, and :func:`append_with_store` on the store's writer connection.

Seam: SQLite connections, locking and transactions around the chain format of :mod:`.chain`.
Split from ``audit.py`` (issue 11).
"""

from __future__ import annotations

import hmac
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from hashflex.audit.chain import (
    _SELECT,
    GENESIS,
    SIGNATURE_VERSION,
    AuditError,
    AuditRecord,
    VerifyResult,
    _ensure_schema,
    _is_canonical,
    _key,
    _mac,
    _recompute,
    append_in,
    verify_rows,
)

__all__ = ["AuditLog", "append_with_store", "verify_file"]


class AuditLog:
    """The audit trail in one SQLite database (a path, or an open connection).

    Parameters
    ----------
    db : str, Path or sqlite3.Connection
        The store's database file (the table is created when missing unless ``readonly``), or an open
        connection (used as is).
    readonly : bool
        Open a path with SQLite ``mode=ro``: nothing is created or written.

    Raises
    ------
    FileNotFoundError
        ``readonly`` with a path that does not exist.
    """

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
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def append(self, kind: str, payload: Mapping[str, Any], at: datetime) -> AuditRecord:
        """Append one record in its own transaction; returns it with its hash.

        Parameters
        ----------
        kind : str
            One of :data:`~hashflex.audit.KINDS`.
        payload : Mapping[str, Any]
            The record's content (build it with the payload helpers).
        at : datetime
            The record's time (``at_utc``), timezone-aware: when the writer wrote it, by its clock (the
            control loop's: simulated time in a simulation), never earlier than the record before it;
            a time the record is *about* (an interval's start, a reading's time) goes in the payload.

        Returns
        -------
        AuditRecord
            The record written.

        Raises
        ------
        AuditError
            On a read-only log, a connection already in a transaction (use :func:`append_in`), or a bad
            kind, payload or time.
        """
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
        """Records in seq order, optionally of one ``kind`` or of several ``kinds``.

        Parameters
        ----------
        kind : str, optional
            Only records of this kind.
        kinds : iterable of str, optional
            Only records of these kinds (ignored when ``kind`` is given).

        Returns
        -------
        list of AuditRecord
            In chain order; empty when the database has no ``audit_log`` table.
        """
        if not self._has_table():
            return []
        wanted = [kind] if kind is not None else list(kinds or [])
        sql, params = _SELECT, tuple(wanted)
        if wanted:
            sql += f" WHERE kind IN ({', '.join('?' * len(wanted))})"
        return [AuditRecord(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5])
                for r in self.conn.execute(sql + " ORDER BY seq", params).fetchall()]

    def head(self) -> tuple[int, str] | None:
        """The last record's ``(seq, hash)``, or None for an empty trail.

        Returns
        -------
        tuple of (int, str) or None
        """
        if not self._has_table():
            return None
        row = self.conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else None

    # ------------------------------------------------------------------ verification

    def verify(self) -> VerifyResult:
        """Walk the chain; the first record edited, deleted, inserted or reordered fails it.

        Returns
        -------
        VerifyResult
            Streams the chain in constant memory; only a failure loads it whole to name the problem.
        """
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
        """``hf-audit-v1:<seq>:<hash>:<hmac>`` for the current head (the chain must verify first).

        Parameters
        ----------
        key : bytes, optional
            The HMAC-SHA256 key; default the environment variable ``HASHFLEX_AUDIT_HMAC_KEY``.

        Returns
        -------
        str
            The signed head, to be kept off the box.

        Raises
        ------
        AuditError
            When the chain does not verify, the trail is empty, or no key is given or set.
        """
        result = self.verify()
        if not result.ok:
            raise AuditError(f"refusing to sign a broken chain: {result.describe()}")
        if result.head_seq is None:
            raise AuditError("audit trail is empty: nothing to sign")
        message = f"{SIGNATURE_VERSION}:{result.head_seq}:{result.head_hash}"
        return f"{message}:{_mac(_key(key), message)}"

    def verify_head(self, signature: str, key: bytes | None = None) -> VerifyResult:
        """Check a signature from :meth:`sign_head`: authentic, the chain verifies, and the signed
        record is still there with the signed hash (records appended since are fine).

        Parameters
        ----------
        signature : str
            ``hf-audit-v1:<seq>:<hash>:<hmac>``.
        key : bytes, optional
            The HMAC key; default ``HASHFLEX_AUDIT_HMAC_KEY``.

        Returns
        -------
        VerifyResult
            Failed when the signature is malformed or does not match, the chain is broken, or the signed
            record was removed (truncated) or rewritten.

        Raises
        ------
        AuditError
            When no key is given or set.
        """
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

    Parameters
    ----------
    path : str or Path
        The database file.
    signature : str, optional
        A signed head to check as well.
    key : bytes, optional
        The HMAC key for ``signature``; default ``HASHFLEX_AUDIT_HMAC_KEY``.

    Returns
    -------
    VerifyResult

    Raises
    ------
    AuditError
        A signature is given and no key is available.
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

    Parameters
    ----------
    store : hashflex.store.Store
        The store whose database holds the trail.
    kind : str
        One of :data:`~hashflex.audit.KINDS`.
    payload : Mapping[str, Any]
        The record's content.
    at : datetime
        The record's time (``at_utc``), timezone-aware: when it is written, by the writer's clock,
        never earlier than the record before it (the control loop keeps that: ``LoopStatusMixin._record``,
        the time it was given then in the payload's ``event_at``); event times go in the payload.
    write : callable, optional
        ``write(conn)`` runs first in the same transaction (extra SQL); both commit or neither.
    timeout_s : float
        Seconds to wait for the writer thread.

    Returns
    -------
    AuditRecord
        The record, once committed (blocks for milliseconds: never call from the MQTT thread).

    Raises
    ------
    AuditError
        For a bad kind, payload or time (the transaction is rolled back).
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

