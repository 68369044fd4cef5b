"""Fleet state: what every physical miner is doing, and whether it can be used. Pure, no clock.

The optimizer decides *how many* units of a group run in each mode; dispatch (``control.dispatch``)
decides *which* units, from this state. One :class:`Miner` per physical unit: id, group, current
mode (``"sleep"`` or a mode name of its group), healthy / available, last start and stop time, run
hours. Time is always passed in.

- ``available``: reachable and not in maintenance. Unavailable units are never given a running mode.
- ``healthy``: available but degraded (errors, hot, low hashrate); used only when healthy units run out.

Public API
----------
``Miner``, ``FleetState(miners, groups)``, ``FleetState.from_profile(profile)``,
``FleetState.to_dict() / from_dict(data, profile)``, ``apply_setpoints(setpoints, now)``,
``accrue_run_hours(hours)``, ``set_health(miner_id, healthy)``, ``set_available(miner_id, available)``,
``as_setpoints(now, expiry_s)`` (the modes in force, as a batch the guard can cut).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hashflex.profile import MinerGroup, SiteProfile

from hashflex.messages import SLEEP  # noqa: E402 - the one definition, re-exported here

__all__ = ["SLEEP", "Miner", "FleetState", "MinerSetpoint"]


@dataclass(frozen=True)
class MinerSetpoint:
    """What one miner should do until ``expires_at`` (then it falls back to its safe default, sleep).

    Field names match ``messages.SetpointMessage`` plus ``group_id``, so conversion is 1:1.
    """

    miner_id: str
    group_id: str
    mode: str  # "sleep" or a mode name of the group
    power_target_kw: float
    issued_at: datetime
    expires_at: datetime


@dataclass
class Miner:
    miner_id: str
    group_id: str
    mode: str = SLEEP
    healthy: bool = True
    available: bool = True
    last_start: datetime | None = None
    last_stop: datetime | None = None
    run_hours: float = 0.0

    @property
    def running(self) -> bool:
        return self.mode != SLEEP


class FleetState:
    """Every miner of the site, by id, with the profile's group definitions."""

    def __init__(self, miners: Iterable[Miner], groups: Iterable[MinerGroup]) -> None:
        self.groups: dict[str, MinerGroup] = {g.id: g for g in groups}
        # Looked up for every miner on every tick: a table, not a search through the modes.
        self._power_kw = {(g.id, m.name): m.power_kw for g in self.groups.values() for m in g.modes}
        self._power_kw.update({(g.id, SLEEP): g.idle_power_kw for g in self.groups.values()})
        self.miners: dict[str, Miner] = {}
        for miner in miners:
            if miner.miner_id in self.miners:
                raise ValueError(f"miner {miner.miner_id!r}: duplicate id")
            group = self.groups.get(miner.group_id)
            if group is None:
                raise ValueError(f"miner {miner.miner_id!r}: unknown group {miner.group_id!r}")
            if miner.mode != SLEEP and miner.mode not in {m.name for m in group.modes}:
                raise ValueError(f"miner {miner.miner_id!r}: group {group.id!r} has no mode {miner.mode!r}")
            self.miners[miner.miner_id] = miner

    @classmethod
    def from_profile(cls, profile: SiteProfile) -> FleetState:
        """``group.units`` miners per group, ids ``<group>-<n>`` (n from 1, zero-padded), all asleep."""
        return cls([Miner(miner_id, group_id) for miner_id, group_id in profile.miner_ids().items()],
                   profile.miner_groups)

    def __len__(self) -> int:
        return len(self.miners)

    def in_group(self, group_id: str) -> list[Miner]:
        return [m for m in self.miners.values() if m.group_id == group_id]

    def counts(self) -> dict[tuple[str, str], int]:
        """Units per (group, mode) now, running modes only."""
        out: dict[tuple[str, str], int] = {}
        for miner in self.miners.values():
            if miner.running:
                out[miner.group_id, miner.mode] = out.get((miner.group_id, miner.mode), 0) + 1
        return out

    def power_kw(self, group_id: str, mode: str) -> float:
        return self._power_kw[group_id, mode]

    # ------------------------------------------------------------------ updates

    def set_health(self, miner_id: str, healthy: bool) -> None:
        self.miners[miner_id].healthy = healthy

    def set_available(self, miner_id: str, available: bool) -> None:
        self.miners[miner_id].available = available

    def apply_setpoints(self, setpoints: Iterable[MinerSetpoint], now: datetime) -> None:
        """Record that ``setpoints`` were sent at ``now``: modes change, starts and stops are stamped."""
        for sp in setpoints:
            miner = self.miners[sp.miner_id]
            if not miner.running and sp.mode != SLEEP:
                miner.last_start = now
            elif miner.running and sp.mode == SLEEP:
                miner.last_stop = now
            miner.mode = sp.mode

    def accrue_run_hours(self, hours: float) -> None:
        """Add ``hours`` of run time to every running miner (call once per tick with the elapsed time)."""
        for miner in self.miners.values():
            if miner.running:
                miner.run_hours += hours

    def as_setpoints(self, now: datetime, expiry_s: float) -> list[MinerSetpoint]:
        """The modes in force as a batch (issued now), e.g. for the guard's fast path."""
        expires = now + timedelta(seconds=expiry_s)
        return [MinerSetpoint(m.miner_id, m.group_id, m.mode, self.power_kw(m.group_id, m.mode), now, expires)
                for m in self.miners.values()]

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``Store.set_meta``): timestamps as ISO strings."""
        rows = []
        for miner in self.miners.values():
            row = dataclasses.asdict(miner)
            for key in ("last_start", "last_stop"):
                row[key] = row[key].isoformat() if row[key] is not None else None
            rows.append(row)
        return {"miners": rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], profile: SiteProfile) -> FleetState:
        miners = []
        for row in data["miners"]:
            values = dict(row)
            for key in ("last_start", "last_stop"):
                values[key] = datetime.fromisoformat(values[key]) if values.get(key) else None
            miners.append(Miner(**values))
        return cls(miners, profile.miner_groups)
