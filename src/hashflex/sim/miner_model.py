"""The simulated miner model shared by every simulator front end (LuxOS, MQTT, the other firmwares).

Miner model: states ``sleeping`` → (``boot_minutes``) → ``hashing`` in a mode of its
:class:`~hashflex.profile.MinerGroup`; power and hashrate come from the group's modes (``idle_power_kw``
when sleeping or booting; telemetry reports mode ``booting`` meanwhile). Going to sleep and changing
mode while hashing take effect at once. Safe default: when the deadline of the setpoint being followed
passes without renewal the miner goes to sleep (``fallbacks`` counts it).

Time: every simulated time comes from a clock (``() -> datetime``); :class:`ScaledClock` runs
``scale`` times faster than real time so a 5-minute boot takes 0.5 s at ``scale=600``. Give the same
clock to the driver so setpoint deadlines are in simulated time.

Everything here is SIMULATED. Moved out of :mod:`hashflex.sim.miners` (which re-exports it).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from hashflex.messages import SLEEP
from hashflex.profile import MinerGroup, SiteProfile

__all__ = ["BOOTING", "Clock", "MinerSnapshot", "MinerState", "ScaledClock", "SimMiner", "miners_from_profile"]

BOOTING = "booting"
Clock = Callable[[], datetime]


class ScaledClock:
    """Simulated UTC time: ``start + scale × (real time elapsed)``. Thread-safe, monotonic."""

    def __init__(self, scale: float = 1.0, start: datetime | None = None) -> None:
        if scale <= 0:
            raise ValueError("scale must be > 0")
        self.scale = scale
        self.start = start or datetime.now(timezone.utc)
        self._t0 = time.monotonic()

    def __call__(self) -> datetime:
        """The simulated time now (the clock is a ``() -> datetime``)."""
        return self.now()

    def now(self) -> datetime:
        """The simulated UTC time: ``start + scale × real seconds elapsed``."""
        return self.start + timedelta(seconds=(time.monotonic() - self._t0) * self.scale)

    def real_seconds(self, sim_seconds: float) -> float:
        """Real seconds that ``sim_seconds`` simulated seconds take.

        Parameters
        ----------
        sim_seconds : float
            Simulated seconds.

        Returns
        -------
        float
            ``sim_seconds / scale``.
        """
        return sim_seconds / self.scale


class MinerState(str, enum.Enum):
    """A simulated miner's state: sleeping, booting (for the group's ``boot_minutes``) or hashing."""
    SLEEPING = "sleeping"
    BOOTING = "booting"
    HASHING = "hashing"


@dataclass(frozen=True)
class MinerSnapshot:
    """One simulated miner at one moment.

    Parameters
    ----------
    miner_id, group_id : str
        The miner and its profile group.
    state : MinerState
        Sleeping, booting or hashing.
    mode : str
        The mode it runs or will run after booting; ``"sleep"`` when sleeping.
    power_kw : float
        Its draw, kW (the group's ``idle_power_kw`` unless hashing).
    hashrate_th_s : float
        TH/s (0 unless hashing).
    expires_at : datetime or None
        The deadline of the setpoint it follows; at it, it falls back to sleep.
    fallbacks : int
        How many times a deadline passed without renewal.
    """
    miner_id: str
    group_id: str
    state: MinerState
    mode: str  # the mode it runs or will run after booting; "sleep" when sleeping
    power_kw: float
    hashrate_th_s: float
    expires_at: datetime | None
    fallbacks: int

    @property
    def reported_mode(self) -> str:
        """The mode as telemetry reports it: ``sleep``, ``booting`` or the mode name."""
        return BOOTING if self.state is MinerState.BOOTING else self.mode


class SimMiner:
    """One miner's state machine, advanced lazily from the clock; thread-safe."""

    def __init__(self, miner_id: str, group: MinerGroup, clock: Clock, mode: str | None = None) -> None:
        self.miner_id, self.group, self.clock = miner_id, group, clock
        names = [m.name for m in group.modes]
        self.mode = mode or ("stock" if "stock" in names else names[0])  # the profile last selected
        self.state = MinerState.SLEEPING
        self.boot_done: datetime | None = None
        self.expires_at: datetime | None = None
        self.fallbacks = 0
        self.follows = True
        self._lock = threading.Lock()

    def _advance(self, now: datetime) -> None:
        if self.state is not MinerState.SLEEPING and self.expires_at is not None and now >= self.expires_at:
            self.state, self.boot_done, self.expires_at = MinerState.SLEEPING, None, None
            self.fallbacks += 1
        if self.state is MinerState.BOOTING and self.boot_done is not None and now >= self.boot_done:
            self.state = MinerState.HASHING

    def command_mode(self, mode: str, expires_at: datetime | None) -> None:
        """Run ``mode`` until ``expires_at``; boots first when sleeping. Raises KeyError for an unknown mode."""
        if mode not in {m.name for m in self.group.modes}:
            _raise_unknown(mode)
        with self._lock:
            now = self.clock()
            self._advance(now)
            if not self.follows:
                return
            self.mode, self.expires_at = mode, expires_at
            if self.state is MinerState.SLEEPING:
                self.state = MinerState.BOOTING
                self.boot_done = now + timedelta(minutes=self.group.boot_minutes)
                self._advance(now)

    def select_profile(self, mode: str) -> None:
        """Change the mode without waking (LuxOS ``profileset`` on a sleeping miner)."""
        if mode not in {m.name for m in self.group.modes}:
            _raise_unknown(mode)
        with self._lock:
            self._advance(self.clock())
            if self.follows:
                self.mode = mode

    def command_sleep(self) -> None:
        """Stop hashing now (the safe default); the setpoint deadline is dropped."""
        with self._lock:
            self._advance(self.clock())
            if self.follows:
                self.state, self.boot_done, self.expires_at = MinerState.SLEEPING, None, None

    def renew(self, expires_at: datetime | None) -> None:
        """Move the deadline of the running setpoint to ``expires_at`` (no effect while sleeping)."""
        with self._lock:
            self._advance(self.clock())
            if self.follows and self.state is not MinerState.SLEEPING:
                self.expires_at = expires_at

    def snapshot(self) -> MinerSnapshot:
        """The miner now (advanced to the clock's time: boot finished, deadline passed)."""
        with self._lock:
            self._advance(self.clock())
            if self.state is MinerState.HASHING:
                mode = self.group.mode(self.mode)
                power, hashrate = mode.power_kw, mode.hashrate_th_s
            else:
                power, hashrate = self.group.idle_power_kw, 0.0
            shown = SLEEP if self.state is MinerState.SLEEPING else self.mode
            return MinerSnapshot(self.miner_id, self.group.id, self.state, shown, power, hashrate,
                                 self.expires_at, self.fallbacks)


def _raise_unknown(mode: str) -> None:
    raise KeyError(f"unknown mode {mode!r}")


def miners_from_profile(profile: SiteProfile, units_per_group: int | None = None) -> dict[str, MinerGroup]:
    """The profile's miners under the ids the controller addresses them by (``FleetState``:
    ``<group>-<n>``, n from 1, zero-padded to the group size); ``units_per_group`` caps the count."""
    from hashflex.control.fleet import FleetState

    fleet = FleetState.from_profile(profile)
    out: dict[str, MinerGroup] = {}
    for group in profile.miner_groups:
        ids = [m.miner_id for m in fleet.in_group(group.id)]
        out.update({miner_id: group for miner_id in ids[:units_per_group]})
    return out


class _Fleet:
    """What both front ends share: the miners and fleet-wide queries."""

    def __init__(self, miners: Mapping[str, MinerGroup], clock: Clock) -> None:
        if not miners:
            raise ValueError("no miners")
        self.clock = clock
        self.miners = {mid: SimMiner(mid, group, clock) for mid, group in miners.items()}

    def miner(self, miner_id: str) -> SimMiner:
        return self.miners[miner_id]

    def states(self) -> dict[str, MinerSnapshot]:
        return {mid: m.snapshot() for mid, m in self.miners.items()}

    def total_power_kw(self) -> float:
        return sum(m.snapshot().power_kw for m in self.miners.values())

    def set_follows(self, miner_id: str, follows: bool) -> None:
        self.miners[miner_id].follows = follows
