"""The repair queue and its persisted log (SQLite): what failed, what was done, what was swapped.

Modular, repairable machines make board-level repair the norm, so the log records parts: a ticket
opens from a :class:`~hashflex.health.detectors.Finding` (one open ticket per miner and kind — a
finding seen again does not open another), moves ``open`` → ``in_progress`` → ``done`` (or
``replaced``: the unit left the fleet), and closing it records the ``action`` and ``parts_swapped``
(e.g. ``{"hashboard": "SN123 -> SN456"}``). The file survives restarts; every change is one
transaction (a crash leaves the previous state). The queue is ordered critical first, then oldest.

API: ``RepairLog(path)``; ``open_ticket(finding) -> Ticket`` (returns the existing open one if any);
``start(ticket_id, technician)``; ``close(ticket_id, action, parts_swapped=None, notes="",
outcome="done")``; ``queue() -> list[Ticket]``; ``history(miner_id=None) -> list[Ticket]``;
``failures_by_kind() -> dict[str, int]``. ValueError names a wrong field (unknown ticket, bad outcome,
closing a closed ticket).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hashflex.health.detectors import Finding

__all__ = ["RepairLog", "Ticket"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repair_tickets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    miner_id TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL, detail TEXT NOT NULL,
    status TEXT NOT NULL, opened_at TEXT NOT NULL, started_at TEXT, technician TEXT,
    closed_at TEXT, action TEXT, parts_swapped TEXT, notes TEXT
);
CREATE INDEX IF NOT EXISTS repair_open ON repair_tickets(miner_id, kind, status);
"""
_OPEN = ("open", "in_progress")


@dataclass(frozen=True)
class Ticket:
    """One repair ticket as stored.

    Attributes
    ----------
    id : int
    miner_id, kind, severity, detail : str
        From the finding that opened it.
    status : str
        ``open``, ``in_progress``, ``done`` or ``replaced``.
    opened_at, closed_at : datetime
        UTC; ``closed_at`` None while open.
    technician, action, notes : str or None
        Who works on it; what was done.
    parts_swapped : dict[str, str] or None
        Part -> ``"old SN -> new SN"``.
    """
    id: int
    miner_id: str
    kind: str
    severity: str
    detail: str
    status: str
    opened_at: datetime
    technician: str | None = None
    closed_at: datetime | None = None
    action: str | None = None
    parts_swapped: dict[str, str] | None = None
    notes: str | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


class RepairLog:
    """A persisted repair queue (see the module docstring); thread-safe.

    Parameters
    ----------
    path : str or Path
        The SQLite file (created if missing; WAL journal).
    clock : callable, optional
        ``() -> datetime`` (aware UTC), for the ticket times.
    """

    def __init__(self, path: str | Path, clock=_now) -> None:  # noqa: ANN001 - () -> datetime
        self.path, self.clock = str(path), clock
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def _row(self, row: tuple) -> Ticket:  # type: ignore[type-arg]
        (tid, miner, kind, severity, detail, status, opened, _started, tech, closed, action, parts, notes) = row
        return Ticket(tid, miner, kind, severity, detail, status, datetime.fromisoformat(opened), tech,
                      datetime.fromisoformat(closed) if closed else None, action,
                      json.loads(parts) if parts else None, notes)

    def _get(self, ticket_id: int) -> Ticket:
        row = self._db.execute("SELECT * FROM repair_tickets WHERE id = ?", (ticket_id,)).fetchone()
        if row is None:
            raise ValueError(f"ticket_id: no repair ticket {ticket_id}")
        return self._row(row)

    def open_ticket(self, finding: Finding) -> Ticket:
        """Open a ticket for a finding, or return the miner's open one of that kind.

        A critical finding escalates an open warning ticket (never the other way).

        Parameters
        ----------
        finding : Finding

        Returns
        -------
        Ticket
        """
        with self._lock:
            row = self._db.execute("SELECT * FROM repair_tickets WHERE miner_id = ? AND kind = ? AND status IN (?, ?)",
                                   (finding.miner_id, finding.kind, *_OPEN)).fetchone()
            if row is not None:
                if finding.severity == "critical":  # escalate, never downgrade
                    self._db.execute("UPDATE repair_tickets SET severity = 'critical', detail = ? WHERE id = ?",
                                     (finding.detail, row[0]))
                return self._get(row[0])
            cur = self._db.execute(
                "INSERT INTO repair_tickets (miner_id, kind, severity, detail, status, opened_at) "
                "VALUES (?, ?, ?, ?, 'open', ?)",
                (finding.miner_id, finding.kind, finding.severity, finding.detail, self.clock().isoformat()))
            return self._get(int(cur.lastrowid))  # type: ignore[arg-type]

    def start(self, ticket_id: int, technician: str) -> Ticket:
        """A technician starts on an open ticket.

        Parameters
        ----------
        ticket_id : int
        technician : str

        Returns
        -------
        Ticket
            Now ``in_progress``.

        Raises
        ------
        ValueError
            ``ticket_id``: no such ticket, or it is not open.
        """
        with self._lock:
            ticket = self._get(ticket_id)
            if ticket.status != "open":
                raise ValueError(f"ticket_id: ticket {ticket_id} is {ticket.status}, not open")
            self._db.execute("UPDATE repair_tickets SET status = 'in_progress', started_at = ?, technician = ? "
                             "WHERE id = ?", (self.clock().isoformat(), technician, ticket_id))
            return self._get(ticket_id)

    def close(self, ticket_id: int, action: str, parts_swapped: dict[str, str] | None = None, notes: str = "",
              outcome: str = "done") -> Ticket:
        """Close a ticket with what was done.

        Parameters
        ----------
        ticket_id : int
        action : str
            What was done (required).
        parts_swapped : dict[str, str], optional
            Part -> ``"old SN -> new SN"``.
        notes : str, default ""
        outcome : str, default "done"
            ``done`` (repaired) or ``replaced`` (the unit left the fleet).

        Returns
        -------
        Ticket

        Raises
        ------
        ValueError
            ``outcome`` not done/replaced, an empty ``action``, or ``ticket_id`` unknown or already closed.
        """
        if outcome not in ("done", "replaced"):
            raise ValueError(f"outcome: must be done or replaced, not {outcome!r}")
        if not action.strip():
            raise ValueError("action: say what was done")
        with self._lock:
            ticket = self._get(ticket_id)
            if ticket.status not in _OPEN:
                raise ValueError(f"ticket_id: ticket {ticket_id} is already {ticket.status}")
            self._db.execute("UPDATE repair_tickets SET status = ?, closed_at = ?, action = ?, parts_swapped = ?, "
                             "notes = ? WHERE id = ?", (outcome, self.clock().isoformat(), action,
                                                         json.dumps(parts_swapped or {}), notes, ticket_id))
            return self._get(ticket_id)

    def queue(self) -> list[Ticket]:
        """Open and in-progress tickets, critical first, then oldest.

        Returns
        -------
        list[Ticket]
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM repair_tickets WHERE status IN (?, ?) "
                "ORDER BY severity = 'critical' DESC, opened_at, id", _OPEN).fetchall()
        return [self._row(r) for r in rows]

    def history(self, miner_id: str | None = None) -> list[Ticket]:
        """Every ticket, of one miner or of all, in the order opened.

        Parameters
        ----------
        miner_id : str, optional

        Returns
        -------
        list[Ticket]
        """
        with self._lock:
            if miner_id is None:
                rows = self._db.execute("SELECT * FROM repair_tickets ORDER BY id").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM repair_tickets WHERE miner_id = ? ORDER BY id",
                                        (miner_id,)).fetchall()
        return [self._row(r) for r in rows]

    def failures_by_kind(self) -> dict[str, int]:
        """How many tickets were ever opened per finding kind.

        Returns
        -------
        dict[str, int]
            kind -> count.
        """
        with self._lock:
            rows = self._db.execute("SELECT kind, COUNT(*) FROM repair_tickets GROUP BY kind").fetchall()
        return {k: int(n) for k, n in rows}

    def close_db(self) -> None:
        """Close the SQLite connection (the log is unusable after)."""
        with self._lock:
            self._db.close()
