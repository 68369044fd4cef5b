"""Setpoint confirmation from telemetry: re-send once, then mark the miner when it keeps drifting.

The loop knows what each miner was told; telemetry (MQTT ``in/telemetry``, pyasic reads, LuxOS
``power``) says what it does. :class:`SetpointConfirmer` compares the two with
:func:`~hashflex.drivers.pyasic_miners.setpoint_confirmed` (pure; no pyasic needed) and says, per miner,
what to do: ``ok`` (confirmed), ``wait`` (still inside its boot / settle grace), ``resend`` (first
drifts: send the same setpoint again — a lost message, a reboot, a firmware that reverted), ``mark``
(``mark_after`` drifts in a row: the miner does not follow; the caller records it with
:class:`~hashflex.drivers.base.MinerRegistry` as an unverified verification so it leaves the plan, and the
health book raises ``not_following``). Telemetry older than ``max_age_s`` is ``stale`` (neither counted
nor confirmed: when in doubt the guard treats the miner at its worst case).

API: ``SetpointConfirmer(mark_after=3, settle_s=60.0, max_age_s=120.0, tolerance=0.1, sleep_max_kw=0.1)``,
``check(setpoint, reading, sent_at, now, boot_s=0.0) -> Confirmation``, ``forget(miner_id)``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from hashflex.drivers.base import SLEEP, Setpoint
from hashflex.health.reading import MinerReading

__all__ = ["Confirmation", "SetpointConfirmer"]


@dataclass(frozen=True)
class Confirmation:
    """``action``: ok | wait | stale | resend | mark; ``drifts``: consecutive drifts so far."""

    miner_id: str
    action: str
    reason: str
    drifts: int = 0


class SetpointConfirmer:
    """Per-miner drift counting (thread-safe); see the module docstring."""

    def __init__(self, *, mark_after: int = 3, settle_s: float = 60.0, max_age_s: float = 120.0,
                 tolerance: float = 0.1, sleep_max_kw: float = 0.1) -> None:
        if mark_after < 1 or settle_s < 0 or max_age_s <= 0:
            raise ValueError("mark_after must be >= 1, settle_s >= 0 and max_age_s > 0")
        self.mark_after, self.settle_s, self.max_age_s = mark_after, settle_s, max_age_s
        self.tolerance, self.sleep_max_kw = tolerance, sleep_max_kw
        self._drifts: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, setpoint: Setpoint, reading: MinerReading | None, sent_at: datetime, now: datetime,
              boot_s: float = 0.0) -> Confirmation:
        """What to do about ``setpoint`` (sent at ``sent_at``) given the latest ``reading``.
        ``boot_s``: the miner's boot time when the setpoint wakes it (added to the settle grace)."""
        from hashflex.drivers.pyasic_miners import setpoint_confirmed

        miner_id = setpoint.miner_id
        if reading is None or (now - reading.at).total_seconds() > self.max_age_s:
            return Confirmation(miner_id, "stale", "no fresh telemetry", self._drifts.get(miner_id, 0))
        grace = self.settle_s + (boot_s if setpoint.mode != SLEEP else 0.0)
        ok, why = setpoint_confirmed(setpoint.mode, setpoint.power_target_kw, reading, tolerance=self.tolerance,
                                     sleep_max_kw=self.sleep_max_kw)
        with self._lock:
            if ok:
                self._drifts[miner_id] = 0
                return Confirmation(miner_id, "ok", why)
            if reading.at < sent_at or (now - sent_at).total_seconds() < grace:
                return Confirmation(miner_id, "wait", f"{why} (within {grace:g} s of sending)",
                                    self._drifts.get(miner_id, 0))
            drifts = self._drifts.get(miner_id, 0) + 1
            self._drifts[miner_id] = drifts
        action = "mark" if drifts >= self.mark_after else "resend"
        return Confirmation(miner_id, action, f"{why} ({drifts} in a row)", drifts)

    def forget(self, miner_id: str) -> None:
        """A new setpoint for this miner, or an operator restore: start counting again."""
        with self._lock:
            self._drifts.pop(miner_id, None)
