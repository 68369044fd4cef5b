"""Where a trail's data came from, which profile was in force, and the site's local time.

Pure functions over decoded audit records (:class:`hashflex.audit.AuditRecord`-like objects with
``seq``, ``at_utc``, ``kind``, ``payload``).

Simulated or synthetic data
---------------------------
A trail is SIMULATED when any of these holds (the first that applies is reported as ``basis``):

1. *explicit*: a ``config`` record carries ``simulated: true`` or ``run_mode`` ``"simulate"`` /
   ``"backtest"``, or a ``measurement`` carries ``simulated: true`` or a ``source`` starting with
   ``sim``/``synthetic`` (the marker the loop is asked to write; see the lead's note);
2. *clock*: a record is stamped more than :data:`CLOCK_BACKWARDS_S` before a record with a lower
   sequence number. A live daemon appends in wall-clock order; ``hashflex run --simulate`` and
   ``hashflex backtest`` stamp the ``config`` record with the wall clock and everything after it
   with the simulated clock (years earlier), so their trails always show this;
3. *reason*: a ``config`` record whose ``reason`` names a simulation or backtest.

Independently of that, a DR event whose id starts with ``demo-`` is the SYNTHETIC demonstration
event of ``run --simulate`` and is labelled so on its own.

Profile in force
----------------
The ``config`` record in force for a record is the last ``config`` record *before it in the chain*
(lower ``seq``), not the last one by time stamp: on simulated and backtest trails the ``config``
record carries the wall clock while everything else carries simulated time, and ordering by time
would leave the period without a profile. A record before any ``config`` record takes the first one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

__all__ = ["CLOCK_BACKWARDS_S", "Provenance", "config_for_seq", "local_label", "provenance", "synthetic_event"]

CLOCK_BACKWARDS_S = 6 * 3600.0  # a live trail steps back at most an interval (measurements carry their start)
_SIM_WORDS = ("simulat", "backtest", "synthetic")


@dataclass(frozen=True)
class Provenance:
    """``simulated``: the trail holds simulated data; ``basis``: ``explicit``, ``clock`` or ``reason``
    (None when live); ``detail``: one sentence naming the evidence."""

    simulated: bool
    basis: str | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        """``{"simulated", "basis", "detail"}`` for the report.

        Returns
        -------
        dict
        """
        return {"simulated": self.simulated, "basis": self.basis, "detail": self.detail}


def _stamp(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


def provenance(records: Iterable[Any]) -> Provenance:
    """Decide whether the trail holds simulated data (see the module docstring).

    Parameters
    ----------
    records : iterable of AuditRecord
        Decoded records (any order; sorted by ``seq`` here).

    Returns
    -------
    Provenance
    """
    records = sorted(records, key=lambda r: r.seq)
    for rec in records:
        p = rec.payload
        if rec.kind == "config" and (p.get("simulated") is True or p.get("run_mode") in ("simulate", "backtest")):
            return Provenance(True, "explicit", f"config record {rec.seq} is marked simulated "
                                                f"(run_mode {p.get('run_mode') or 'simulate'})")
        if rec.kind == "measurement":
            source = str(p.get("source") or "")
            if p.get("simulated") is True or source.lower().startswith(("sim", "synthetic")):
                return Provenance(True, "explicit", f"measurement record {rec.seq} is marked simulated")
    latest: tuple[int, pd.Timestamp] | None = None
    for rec in records:
        at = _stamp(rec.at_utc)
        if latest is not None and (latest[1] - at).total_seconds() > CLOCK_BACKWARDS_S:
            return Provenance(True, "clock", f"record {rec.seq} is stamped {at:%Y-%m-%d %H:%M} UTC, before record "
                                             f"{latest[0]} ({latest[1]:%Y-%m-%d %H:%M} UTC): the trail runs on a "
                                             f"simulated clock (run --simulate or backtest)")
        if latest is None or at > latest[1]:
            latest = (rec.seq, at)
    for rec in records:
        reason = str(rec.payload.get("reason") or "").lower() if rec.kind == "config" else ""
        if any(word in reason for word in _SIM_WORDS):
            return Provenance(True, "reason", f"config record {rec.seq} reason: {rec.payload.get('reason')}")
    return Provenance(False, None, "no simulation marker, and the trail's clock only moves forward")


def synthetic_event(event_id: str | None) -> bool:
    """The demonstration DR event of ``run --simulate`` (``demo-*``) is synthetic whatever the trail.

    Parameters
    ----------
    event_id : str or None
        The DR event id.

    Returns
    -------
    bool
    """
    return bool(event_id) and str(event_id).startswith("demo-")


def config_for_seq(configs: Sequence[Mapping[str, Any]], seq: int) -> Mapping[str, Any] | None:
    """The config in force for the record ``seq``: the last config record chained before it, else
    the first config record (a trail whose first records precede its config).

    Parameters
    ----------
    configs : sequence of Mapping
        Decoded ``config`` records (``seq``, ``profile``, ...), in chain order.
    seq : int
        The record's sequence number.

    Returns
    -------
    Mapping or None
        None when the trail has no config record.
    """
    if not configs:
        return None
    before = [c for c in configs if c["seq"] < seq]
    return before[-1] if before else configs[0]


def local_label(moment: Any, tz: str, *, seconds: bool = False) -> str:
    """``2020-02-01 14:00 CST (UTC−06:00)``: the site's local time with its zone and offset.

    Parameters
    ----------
    moment : Any
        A time (naive values are taken as UTC).
    tz : str
        The site's time zone.
    seconds : bool
        Show seconds.

    Returns
    -------
    str
    """
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
    local = stamp.tz_convert(ZoneInfo(tz))
    offset = local.strftime("%z")
    sign = "−" if offset.startswith("-") else "+"
    text = local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{text} {local.tzname()} (UTC{sign}{offset[1:3]}:{offset[3:5]})"
