""""Available for curtailment": how many kW the site can shed right now, from live telemetry.

What a grid operator (or the dashboard and ``/metrics``) needs during a DR call is not the plan but
what can actually be cut *now*: every miner that is hashing, whose telemetry is fresh, and whose
driver can sleep it gives its draw above its sleep (idle) power; a miner that can also be powered off
at a PDU outlet gives its idle draw too (and a sleeping one with a PDU gives its idle draw alone).
A miner with stale or no telemetry counts for nothing (when in doubt, do not promise).

API: ``available_for_curtailment_kw(readings, capabilities, idle_kw, now, max_age_s=120.0) -> float``
(kW); ``...`` ``_mw`` is the same divided by 1,000 for the dashboard.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from hashflex.health.reading import MinerReading


class MinerCapabilities(Protocol):
    """What this module needs of ``drivers.base.MinerCapabilities`` (health sits below drivers)."""

    sleep_wake: bool
    power_off: bool

__all__ = ["available_for_curtailment_kw", "available_for_curtailment_mw"]


def available_for_curtailment_kw(readings: Mapping[str, MinerReading],
                                 capabilities: Mapping[str, MinerCapabilities | None],
                                 idle_kw: Mapping[str, float], now: datetime, *, max_age_s: float = 120.0) -> float:
    """kW the site can shed now (see the module docstring); ``idle_kw`` is each miner's sleep draw."""
    total = 0.0
    for miner_id, reading in readings.items():
        cap = capabilities.get(miner_id)
        age = (now - reading.at).total_seconds()
        if cap is None or reading.power_kw is None or age > max_age_s or age < -5.0:
            continue
        idle = idle_kw.get(miner_id, 0.0)
        hashing = bool(reading.hashrate_th_s)
        if hashing and cap.sleep_wake:
            total += max(0.0, reading.power_kw - idle)
        if cap.power_off:
            total += min(idle, reading.power_kw) if hashing and cap.sleep_wake else reading.power_kw
    return total


def available_for_curtailment_mw(*args, **kwargs) -> float:  # noqa: ANN002, ANN003 - same as above
    """:func:`available_for_curtailment_kw` in MW."""
    return available_for_curtailment_kw(*args, **kwargs) / 1000.0
