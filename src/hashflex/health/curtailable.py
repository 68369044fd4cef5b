""""Available for curtailment": how many kW the site can shed right now, from live telemetry.

What a grid operator (or the dashboard and ``/metrics``) needs during a DR call is not the plan but
what can actually be cut *now*: every miner that is hashing, whose telemetry is fresh, and whose
driver can sleep it gives its draw above its sleep (idle) power; a miner that can also be powered off
at a PDU outlet gives its idle draw too (and a sleeping one with a PDU gives its idle draw alone).
A miner with stale or no telemetry counts for nothing (when in doubt, do not promise).

The two means answer at different speeds, so they are kept apart: ``sleep`` (a firmware command,
seconds) and ``power_off`` (opening a PDU outlet or breaker: the idle draw too, at the price of a
cold restart; :mod:`hashflex.drivers.pdu`).

API: ``available_for_curtailment(readings, capabilities, idle_kw, now, max_age_s=120.0) ->
CurtailmentAvailable``; ``available_for_curtailment_kw(...) -> float`` (kW) is its total;
``available_for_curtailment_mw(...)`` the same divided by 1,000.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from hashflex.health.reading import MinerReading

__all__ = ["CurtailmentAvailable", "MinerCapabilities", "available_for_curtailment", "available_for_curtailment_kw",
           "available_for_curtailment_mw"]

CLOCK_SKEW_S = 5.0
"""A reading stamped up to this many seconds in the future is still believed (clocks differ)."""


class MinerCapabilities(Protocol):
    """What this module needs of ``drivers.base.MinerCapabilities`` (health sits below drivers).

    Attributes
    ----------
    sleep_wake : bool
        The miner's driver can stop it hashing on command (and wake it).
    power_off : bool
        A PDU outlet or breaker can cut its power completely.
    """

    sleep_wake: bool
    power_off: bool


@dataclass(frozen=True)
class CurtailmentAvailable:
    """kW the site can shed now, by means, and how many miners the figure rests on.

    Attributes
    ----------
    sleep_kw : float
        Draw above idle of fresh, hashing miners whose driver can sleep them (kW).
    power_off_kw : float
        Further draw a PDU outlet can cut: the idle draw of a miner that can also sleep, or the
        whole draw of one that cannot or is already asleep (kW).
    miners_counted : int
        Miners that give more than 0 kW.
    miners_fresh : int
        Miners with a telemetry reading no older than ``max_age_s`` (whatever they can do).
    """

    sleep_kw: float = 0.0
    power_off_kw: float = 0.0
    miners_counted: int = 0
    miners_fresh: int = 0

    @property
    def total_kw(self) -> float:
        """Everything available, ``sleep_kw + power_off_kw`` (kW)."""
        return self.sleep_kw + self.power_off_kw


def available_for_curtailment(readings: Mapping[str, MinerReading],
                              capabilities: Mapping[str, MinerCapabilities | None],
                              idle_kw: Mapping[str, float], now: datetime, *,
                              max_age_s: float = 120.0) -> CurtailmentAvailable:
    """What the site can shed now, by means (see the module docstring for the rules).

    Parameters
    ----------
    readings : Mapping[str, MinerReading]
        The latest telemetry reading per miner id.
    capabilities : Mapping[str, MinerCapabilities or None]
        What each miner's driver can do; a miner missing here (or None) counts for nothing.
    idle_kw : Mapping[str, float]
        Each miner's sleep (idle) draw (kW); a missing miner is taken as 0 kW.
    now : datetime
        The time the figure is for (timezone-aware UTC).
    max_age_s : float, default 120.0
        A reading older than this (seconds) counts for nothing; one more than 5 s in the future
        (clock skew) neither.

    Returns
    -------
    CurtailmentAvailable
        kW by means (sleep, power off) and the miner counts.
    """
    sleep_kw = power_off_kw = 0.0
    counted = fresh = 0
    for miner_id, reading in readings.items():
        age = (now - reading.at).total_seconds()
        if reading.power_kw is None or age > max_age_s or age < -CLOCK_SKEW_S:
            continue
        fresh += 1
        cap = capabilities.get(miner_id)
        if cap is None:
            continue
        idle = idle_kw.get(miner_id, 0.0)
        hashing = bool(reading.hashrate_th_s)
        by_sleep = max(0.0, reading.power_kw - idle) if hashing and cap.sleep_wake else 0.0
        by_power_off = 0.0
        if cap.power_off:
            by_power_off = min(idle, reading.power_kw) if hashing and cap.sleep_wake else reading.power_kw
        sleep_kw += by_sleep
        power_off_kw += by_power_off
        counted += (by_sleep + by_power_off) > 0.0
    return CurtailmentAvailable(sleep_kw, power_off_kw, counted, fresh)


def available_for_curtailment_kw(readings: Mapping[str, MinerReading],
                                 capabilities: Mapping[str, MinerCapabilities | None],
                                 idle_kw: Mapping[str, float], now: datetime, *, max_age_s: float = 120.0) -> float:
    """kW the site can shed now: the total of :func:`available_for_curtailment`.

    Parameters
    ----------
    readings, capabilities, idle_kw, now, max_age_s
        As for :func:`available_for_curtailment`.

    Returns
    -------
    float
        Sleep and power-off together (kW, >= 0).
    """
    return available_for_curtailment(readings, capabilities, idle_kw, now, max_age_s=max_age_s).total_kw


def available_for_curtailment_mw(*args, **kwargs) -> float:  # noqa: ANN002, ANN003 - same as above
    """:func:`available_for_curtailment_kw` in MW.

    Parameters
    ----------
    *args, **kwargs
        As for :func:`available_for_curtailment_kw`.

    Returns
    -------
    float
        The same figure divided by 1,000 (MW).
    """
    return available_for_curtailment_kw(*args, **kwargs) / 1000.0
