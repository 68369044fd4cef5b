"""What the dashboard keeps between builds: the event log, when each feed was last heard, the noise history.

:class:`EventLog` taps the loop's audit recorder (every curtailment and restore with its trigger, DR
and limits decisions) and the ingest's rejections, and keeps the last ``maxlen`` entries in memory.
:class:`FeedAges` sees every inbound message (and hands telemetry to
:class:`~hashflex.web.curtailment.LatestTelemetry`). :class:`NoiseHistory` keeps each receptor's
measured and modelled levels and cap for the last 24 h (site time, so a simulated clock works).
Moved out of :mod:`hashflex.web.view`, which re-exports them.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from hashflex.web.curtailment import LatestTelemetry

SLEEP = "sleep"  # the fleet's sleeping mode (control.fleet.SLEEP; web sits below control)

__all__ = ["EventLog", "FeedAges", "LogEntry", "NoiseHistory"]


@dataclass(frozen=True)
class LogEntry:
    """One line of the event log.

    Attributes
    ----------
    at : datetime
    kind : str
        ``curtail``, ``restore``, ``dr``, ``limits``, ``rejected`` or ``expired``.
    trigger : str
        What caused it (``fast path``, ``re-plan``, ``DR <id>``, ``noise exceedance``, ``manager <issuer>``, ...).
    detail : str
    """
    at: datetime
    kind: str  # curtail | restore | dr | limits | rejected | expired
    trigger: str  # fast path | re-plan | DR <id> | noise exceedance | manager | <message kind>
    detail: str

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON-ready ``{"at", "kind", "trigger", "detail"}`` (``at`` ISO 8601)."""
        return {"at": self.at.isoformat(), "kind": self.kind, "trigger": self.trigger, "detail": self.detail}


class EventLog:
    """The dashboard's event log: curtailments and restores with their trigger, DR and limits
    decisions, rejected messages with their reason (newest last, ``maxlen`` kept).

    Wraps the loop's recorder (``record(kind, payload, at)``; forwards everything to ``inner`` and
    never raises into the loop) and takes ingest rejections through :meth:`on_rejection`.

    Parameters
    ----------
    inner : recorder, optional
        The recorder it stands in front of (``control.records.AuditRecorder``); None: none.
    maxlen : int, default 500
        Entries kept.
    """

    def __init__(self, inner: Any = None, maxlen: int = 500) -> None:
        self.inner = inner
        self.entries: deque[LogEntry] = deque(maxlen=maxlen)
        self.dr_acked_at: dict[str, str] = {}
        self.loop: Any = None  # set by attach(): the trigger of a re-plan comes from its last report
        self._running: int | None = None
        self._lock = threading.Lock()
        self.version = 0

    @classmethod
    def attach(cls, loop: Any, maxlen: int = 500) -> EventLog:
        """Put a log in front of ``loop.recorder`` (idempotent).

        Parameters
        ----------
        loop : ControlLoop
            Its ``recorder`` is replaced by the log, which forwards to it.
        maxlen : int, default 500

        Returns
        -------
        EventLog
            The new log, or the one already attached.
        """
        if isinstance(loop.recorder, EventLog):
            return loop.recorder
        log = cls(loop.recorder, maxlen)
        log.loop = loop
        log._running = sum(1 for m in loop.fleet.miners.values() if m.running)
        loop.recorder = log
        return log

    # the recorder protocol -------------------------------------------------------------
    def record(self, kind: str, payload: dict[str, Any], at: datetime) -> None:
        """The recorder protocol: forward to ``inner``, then log what the dashboard shows.

        Parameters
        ----------
        kind : str
            Audit record kind (``guard_action``, ``tick``, ``dr_ack``, ...).
        payload : dict[str, Any]
        at : datetime
        """
        if self.inner is not None:
            self.inner.record(kind, payload, at)
        try:
            self._observe(kind, payload, at)
        except Exception:  # noqa: BLE001 - the log is a view; it must never stop control
            pass

    def flush(self) -> None:
        """Flush ``inner`` (the recorder protocol)."""
        if self.inner is not None and hasattr(self.inner, "flush"):
            self.inner.flush()

    def close(self) -> None:
        """Close ``inner`` (the recorder protocol)."""
        if self.inner is not None and hasattr(self.inner, "close"):
            self.inner.close()

    def __getattr__(self, name: str) -> Any:  # anything else the recorder offers
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    # ---------------------------------------------------------------------------------
    def add(self, at: datetime, kind: str, trigger: str, detail: str) -> None:
        """Append an entry (``detail`` cut to 400 characters).

        Parameters
        ----------
        at : datetime
        kind : str
        trigger : str
        detail : str
        """
        with self._lock:
            self.entries.append(LogEntry(at, kind, trigger, detail[:400]))
            self.version += 1

    def on_rejection(self, rejection: Any, at: datetime) -> None:
        """Log an inbound message refused by the ingest, with its kind and reason.

        Parameters
        ----------
        rejection : Rejection
            ``messages.Rejection``.
        at : datetime
        """
        self.add(at, "rejected", str(getattr(rejection, "kind", None) or "message"),
                 f"{getattr(rejection, 'topic', '')}: {getattr(rejection, 'reason', '')}")

    def recent(self, n: int = 200) -> list[dict[str, Any]]:
        """The newest entries, oldest first.

        Parameters
        ----------
        n : int, default 200

        Returns
        -------
        list[dict[str, Any]]
            :meth:`LogEntry.to_json` of each.
        """
        with self._lock:
            return [e.to_json() for e in list(self.entries)[-n:]]

    def _observe(self, kind: str, payload: dict[str, Any], at: datetime) -> None:
        if kind == "guard_action":
            action = str(payload.get("action", ""))
            if action.startswith("refused") or not payload.get("miners"):
                return
            event_id = payload.get("event_id")
            trigger = (f"DR {event_id}" if event_id else "noise exceedance" if "noise" in action
                       else "fast path")
            self.add(at, "curtail", trigger, str(payload.get("reason", action)))
            self._running = None  # recount at the next schedule batch
        elif kind == "setpoints":
            running = sum(n for label, n in (payload.get("counts") or {}).items() if not label.endswith("/" + SLEEP))
            before, self._running = self._running, running
            if payload.get("source") != "schedule" or before is None or running == before:
                return
            report = getattr(self.loop, "last_report", None)
            trigger = getattr(report, "trigger", None) or "re-plan"
            reason = ""
            if report is not None and report.schedule is not None:
                reason = str(report.schedule.frame["reason_detail"].iloc[0])
            word = "restore" if running > before else "curtail"
            self.add(at, word, "re-plan" if trigger == "interval" else f"re-plan ({trigger})",
                     f"{before} -> {running} units running" + (f"; {reason}" if reason else ""))
        elif kind == "dr_event":
            accepted = payload.get("accepted")
            event_id = payload.get("event_id") or "?"
            reason = str(payload.get("reason", ""))
            self.add(at, "dr" if accepted else "rejected", f"DR {event_id}",
                     ("accepted: " if accepted else "rejected: ") + reason.removeprefix("accepted: "))
        elif kind == "dr_ack":
            if payload.get("status") == "accepted" and payload.get("event_id"):
                self.dr_acked_at[str(payload["event_id"])] = str(payload.get("acked_at") or at.isoformat())
        elif kind == "dr_transition":
            self.add(at, "dr", f"DR {payload.get('event_id')}",
                     f"{payload.get('transition')} (limit {payload.get('limit_kw')} kW)")
        elif kind == "limits_change":
            ack = payload.get("ack") or {}
            if payload.get("duplicate"):
                return
            if "change" not in payload:  # refused by validation before the book saw it
                self.add(at, "rejected", "limits", str(payload.get("reason", "")))
                return
            issuer = ack.get("issuer") or (payload.get("change") or {}).get("issuer", "?")
            self.add(at, "limits" if ack.get("status") == "accepted" else "rejected", f"manager {issuer}",
                     str(ack.get("reason", "")))
        elif kind == "limits_expired":
            self.add(at, "expired", f"manager {payload.get('issuer')}", f"{payload.get('part')} limit expired")


class FeedAges:
    """When each input feed (message kind and key, e.g. ``noise/porch``) was last heard, by site time.

    Every message the ingest accepts passes :meth:`seen`, so this is also where the miners' latest
    telemetry is kept for the "available for curtailment" figure (``telemetry``).

    Parameters
    ----------
    telemetry : LatestTelemetry, optional
        Given every telemetry message seen (:class:`hashflex.web.curtailment.LatestTelemetry`).
    """

    def __init__(self, telemetry: LatestTelemetry | None = None) -> None:
        self.last: dict[str, datetime] = {}
        self.telemetry = telemetry

    def seen(self, message: Any, at: datetime) -> None:
        """Note that ``message`` arrived at ``at``.

        Parameters
        ----------
        message : inbound message (:mod:`hashflex.messages`)
            Its ``kind`` and ``receptor_id`` or ``source_id`` name the feed (telemetry: one feed for
            the fleet).
        at : datetime
            Site time of arrival (timezone-aware).
        """
        kind = getattr(message, "kind", type(message).__name__)
        key = getattr(message, "receptor_id", None) or getattr(message, "source_id", None)
        if kind == "telemetry":
            key = None  # one feed for the fleet, not one per miner
            if self.telemetry is not None:
                self.telemetry.add(message)
        self.last[f"{kind}/{key}" if key else str(kind)] = at

    def ages_s(self, now: datetime) -> dict[str, float]:
        """Seconds since each feed was last heard.

        Parameters
        ----------
        now : datetime
            Site time (timezone-aware).

        Returns
        -------
        dict[str, float]
            feed name -> age (s, >= 0), sorted by name.
        """
        return {k: max((now - t).total_seconds(), 0.0) for k, t in sorted(self.last.items())}


class NoiseHistory:
    """Per receptor, (time, measured dB(A), modelled dB(A), cap dB(A)) for the last ``window``.

    Parameters
    ----------
    window : timedelta, default 24 h
        How far back points are kept (site time).
    min_step : timedelta, default 30 s
        A point closer than this to the previous one replaces it.
    """

    def __init__(self, window: timedelta = timedelta(hours=24), min_step: timedelta = timedelta(seconds=30)) -> None:
        self.window, self.min_step = window, min_step
        self.points: dict[str, deque[tuple[float, float | None, float | None, float | None]]] = {}

    def add(self, at: datetime, levels: list[dict[str, Any]]) -> None:
        """Add the receptor levels at ``at``.

        Parameters
        ----------
        at : datetime
        levels : list[dict[str, Any]]
            Rows with ``receptor_id``, ``measured_dba``, ``modelled_dba``, ``cap_dba`` (dB(A) or None).
        """
        t = pd.Timestamp(at).timestamp()
        for row in levels:
            series = self.points.setdefault(row["receptor_id"], deque())
            if series and t - series[-1][0] < self.min_step.total_seconds():
                series[-1] = (series[-1][0], row["measured_dba"], row["modelled_dba"], row["cap_dba"])
            else:
                series.append((t, row["measured_dba"], row["modelled_dba"], row["cap_dba"]))
            while series and series[0][0] < t - self.window.total_seconds():
                series.popleft()

    def to_json(self) -> dict[str, list[list[float | None]]]:
        """The history for the page.

        Returns
        -------
        dict[str, list[list[float or None]]]
            receptor id -> ``[unix time s, measured, modelled, cap]`` rows, oldest first.
        """
        return {rid: [list(p) for p in series] for rid, series in self.points.items()}
