"""The dashboard's "available for curtailment" figure, from the miners' latest telemetry.

The web layer sees every inbound message the ingest accepts (the daemon wires
:meth:`hashflex.web.history.FeedAges.seen` to it); :class:`LatestTelemetry` keeps each miner's latest
reading from them, and :func:`curtailment_section` turns those readings, the loop's fleet (which
group, hence which idle draw) and the loop's driver (what each miner can be asked to do) into the
``now.curtailment`` part of the dashboard document with
:func:`hashflex.health.curtailable.available_for_curtailment`. ``/metrics`` exports the same numbers
as ``hashflex_available_for_curtailment_kw{means}``.

A driver that declares no capabilities (the MQTT and LuxOS drivers, the simulated fleet) is taken
to sleep its miners on command (every setpoint carries a mode, and ``sleep`` is the one every miner
on these protocols must obey) and to have no PDU; a capable driver's ``None`` for a miner counts
that miner for nothing. A miner without fresh telemetry counts for nothing either. The fleet
model's figure (what the commanded modes would shed, no telemetry needed) is given beside it as
``modelled_kw``, labelled so: it is what the plan thinks, not what was measured.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hashflex.health.curtailable import MinerCapabilities, available_for_curtailment
from hashflex.health.reading import MinerReading, reading_from_telemetry
from hashflex.profile import SiteProfile

__all__ = ["DEFAULT_MAX_AGE_S", "SLEEP_ON_COMMAND", "LatestTelemetry", "curtailment_section", "driver_capabilities"]

DEFAULT_MAX_AGE_S = 120.0
"""A reading older than this (seconds) is not believed (the health module's default)."""


@dataclass(frozen=True)
class _Declared:
    sleep_wake: bool
    power_off: bool


SLEEP_ON_COMMAND: MinerCapabilities = _Declared(sleep_wake=True, power_off=False)
"""What a miner of a driver that declares nothing is taken to do: sleep on command, no PDU."""


class LatestTelemetry:
    """The latest telemetry reading of each miner, as the ingest accepted it (thread-safe)."""

    def __init__(self) -> None:
        self._readings: dict[str, MinerReading] = {}
        self._lock = threading.Lock()

    def add(self, message: Any) -> None:
        """Keep a ``TelemetryMessage`` (:mod:`hashflex.messages`) as its miner's reading.

        Parameters
        ----------
        message : TelemetryMessage
            Any message with ``kind == "telemetry"``; other kinds are ignored. A reading older than
            the one kept (an out-of-order redelivery) is ignored too.
        """
        if getattr(message, "kind", None) != "telemetry":
            return
        reading = reading_from_telemetry(message)
        with self._lock:
            kept = self._readings.get(reading.miner_id)
            if kept is None or kept.at <= reading.at:
                self._readings[reading.miner_id] = reading

    def snapshot(self) -> dict[str, MinerReading]:
        """A copy of the readings kept.

        Returns
        -------
        dict[str, MinerReading]
            miner id -> its latest reading.
        """
        with self._lock:
            return dict(self._readings)

    def __len__(self) -> int:
        with self._lock:
            return len(self._readings)


def driver_capabilities(driver: Any, miner_ids: list[str]) -> dict[str, MinerCapabilities | None]:
    """What each miner can be asked to do, from ``driver.capabilities(miner_id)`` where declared.

    Parameters
    ----------
    driver : MinerDriver
        The loop's driver; with a ``capabilities`` method (``drivers.base.CapableDriver``) its
        answers are used as they are, else every miner gets :data:`SLEEP_ON_COMMAND`.
    miner_ids : list[str]
        The miners asked about.

    Returns
    -------
    dict[str, MinerCapabilities or None]
        miner id -> capabilities (None: the driver does not drive that miner).
    """
    declared = getattr(driver, "capabilities", None)
    if not callable(declared):
        return dict.fromkeys(miner_ids, SLEEP_ON_COMMAND)
    out: dict[str, MinerCapabilities | None] = {}
    for miner_id in miner_ids:
        try:
            out[miner_id] = declared(miner_id)
        except Exception:  # noqa: BLE001 - a driver's fault must not break the page: that miner counts 0
            out[miner_id] = None
    return out


def curtailment_section(loop: Any, telemetry: Mapping[str, MinerReading] | None, now: datetime,
                        counts: Mapping[tuple[str, str], int], *,
                        max_age_s: float = DEFAULT_MAX_AGE_S) -> dict[str, Any]:
    """The dashboard's ``now.curtailment``: kW the site can shed now, by means, and on what basis.

    Parameters
    ----------
    loop : ControlLoop
        Read for ``profile`` (idle draw per group), ``fleet.miners`` (each miner's group) and
        ``driver`` (capabilities).
    telemetry : Mapping[str, MinerReading] or None
        The latest reading per miner (:meth:`LatestTelemetry.snapshot`); None or empty: no telemetry.
    now : datetime
        The site clock (timezone-aware).
    counts : Mapping[tuple[str, str], int]
        Running units per (group id, mode name) in the loop's fleet, for the fleet-model figure.
    max_age_s : float, default 120.0
        Readings older than this (seconds) count for nothing.

    Returns
    -------
    dict
        ``available_kw`` (sleep plus power off, kW), ``sleep_kw``, ``power_off_kw``,
        ``miners_counted``, ``miners_reporting`` (fresh readings), ``max_age_s``, ``basis``
        (``"miner telemetry"`` or ``"no fresh miner telemetry"``) and ``modelled_kw`` (the fleet
        model's draw above idle of the running units, kW; not measured).
    """
    profile: SiteProfile = loop.profile
    groups = {g.id: g for g in profile.miner_groups}
    readings = dict(telemetry or {})
    miners = loop.fleet.miners
    idle_kw: dict[str, float] = {}
    for miner_id in readings:
        miner = miners.get(miner_id)
        group = groups.get(miner.group_id) if miner is not None else None
        idle_kw[miner_id] = group.idle_power_kw if group is not None else 0.0
    readings = {m: r for m, r in readings.items() if m in miners}  # a miner the fleet does not know: not ours
    caps = driver_capabilities(loop.driver, list(readings))
    available = available_for_curtailment(readings, caps, idle_kw, now, max_age_s=max_age_s)
    modelled = 0.0
    for (group_id, mode_name), n in counts.items():
        group = groups.get(group_id)
        mode = next((m for m in group.modes if m.name == mode_name), None) if group is not None else None
        if mode is not None:
            modelled += n * max(mode.power_kw - group.idle_power_kw, 0.0)
    return {"available_kw": round(available.total_kw, 3), "sleep_kw": round(available.sleep_kw, 3),
            "power_off_kw": round(available.power_off_kw, 3), "miners_counted": available.miners_counted,
            "miners_reporting": available.miners_fresh, "max_age_s": max_age_s,
            "basis": "miner telemetry" if available.miners_fresh else "no fresh miner telemetry",
            "modelled_kw": round(modelled, 3)}
