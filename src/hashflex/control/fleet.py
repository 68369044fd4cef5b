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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from hashflex.profile import MinerGroup, SiteProfile

from hashflex.drivers.base import Setpoint  # the one setpoint type, made here, taken by every driver
from hashflex.drivers.pdu import POWERED_OFF
from hashflex.messages import SLEEP  # noqa: E402 - the one definition, re-exported here

__all__ = ["SLEEP", "Miner", "FleetState", "Setpoint"]


@dataclass
class Miner:
    """One physical miner: id, group, mode in force (``sleep`` or a mode of its group), health,
    availability, last start and stop (aware datetimes or None) and run hours (h).
    """
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
        """True unless asleep or powered off at the PDU."""
        return self.mode not in (SLEEP, POWERED_OFF)


class FleetState:
    """Every miner of the site, by id, with the profile's group definitions."""

    def __init__(self, miners: Iterable[Miner], groups: Iterable[MinerGroup]) -> None:
        self.groups: dict[str, MinerGroup] = {g.id: g for g in groups}
        # Looked up for every miner on every tick: a table, not a search through the modes.
        self._power_kw = {(g.id, m.name): m.power_kw for g in self.groups.values() for m in g.modes}
        self._power_kw.update({(g.id, SLEEP): g.idle_power_kw for g in self.groups.values()})
        # Powered off at the PDU (issue 17): no draw; only groups whose profile allows it.
        self._power_kw.update({(g.id, POWERED_OFF): 0.0 for g in self.groups.values()
                               if getattr(g, "pdu_power_off", False)})
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
        # Miners are fixed at construction: each group's list once, not a scan of the fleet per group.
        self._by_group: dict[str, list[Miner]] = {g: [] for g in self.groups}
        for miner in self.miners.values():
            self._by_group[miner.group_id].append(miner)

    @classmethod
    def from_profile(cls, profile: SiteProfile) -> FleetState:
        """``group.units`` miners per group, ids ``<group>-<n>`` (n from 1, zero-padded), all asleep."""
        return cls([Miner(miner_id, group_id) for miner_id, group_id in profile.miner_ids().items()],
                   profile.miner_groups)

    def __len__(self) -> int:
        return len(self.miners)

    def in_group(self, group_id: str) -> list[Miner]:
        """The miners of ``group_id``, in insertion order (an unknown group has none)."""
        return list(self._by_group.get(group_id, ()))

    def counts(self) -> dict[tuple[str, str], int]:
        """Units per (group, mode) now, running modes only."""
        out: dict[tuple[str, str], int] = {}
        for miner in self.miners.values():
            if miner.running:
                out[miner.group_id, miner.mode] = out.get((miner.group_id, miner.mode), 0) + 1
        return out

    def power_kw(self, group_id: str, mode: str) -> float:
        """Power of one unit of ``group_id`` in ``mode`` (kW; ``sleep``: the idle draw)."""
        return self._power_kw[group_id, mode]

    # ------------------------------------------------------------------ updates

    def set_health(self, miner_id: str, healthy: bool) -> None:
        """Mark ``miner_id`` healthy or not (unhealthy units run only when healthy ones run out)."""
        self.miners[miner_id].healthy = healthy

    def set_available(self, miner_id: str, available: bool) -> None:
        """Mark ``miner_id`` available or not (unavailable units never get a running mode)."""
        self.miners[miner_id].available = available

    def apply_setpoints(self, setpoints: Iterable[Setpoint], now: datetime) -> None:
        """Record that ``setpoints`` were sent at ``now``: modes change, starts and stops are stamped."""
        for sp in setpoints:
            miner = self.miners[sp.miner_id]
            stopping = sp.mode in (SLEEP, POWERED_OFF)
            if not miner.running and not stopping:
                miner.last_start = now
            elif miner.running and stopping:
                miner.last_stop = now
            miner.mode = sp.mode

    def accrue_run_hours(self, hours: float) -> None:
        """Add ``hours`` of run time to every running miner (call once per tick with the elapsed time)."""
        for miner in self.miners.values():
            if miner.running:
                miner.run_hours += hours

    def as_setpoints(self, now: datetime, expiry_s: float) -> list[Setpoint]:
        """The modes in force as a batch (issued now), e.g. for the guard's fast path."""
        expires = now + timedelta(seconds=expiry_s)
        return [Setpoint(m.miner_id, m.mode, self.power_kw(m.group_id, m.mode), now, expires, group_id=m.group_id)
                for m in self.miners.values()]

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``Store.set_meta``): one column per field (issue 18: saved after every batch, so
        no object per miner), timestamps as ISO strings. `from_dict` also reads the older
        ``{"miners": [row, ...]}`` form."""
        iso: dict[datetime, str] = {}  # a batch stamps thousands of miners with one datetime

        def stamp(moment: datetime | None) -> str | None:
            if moment is None:
                return None
            text = iso.get(moment)
            if text is None:
                text = iso[moment] = moment.isoformat()
            return text

        miners = list(self.miners.values())
        return {"format": 2, "columns": {
            "miner_id": [m.miner_id for m in miners],
            "group_id": [m.group_id for m in miners],
            "mode": [m.mode for m in miners],
            "healthy": [m.healthy for m in miners],
            "available": [m.available for m in miners],
            "last_start": [stamp(m.last_start) for m in miners],
            "last_stop": [stamp(m.last_stop) for m in miners],
            "run_hours": [m.run_hours for m in miners],
        }}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], profile: SiteProfile) -> FleetState:
        """The fleet saved by `to_dict` (either form), checked against ``profile``'s groups.

        Raises
        ------
        ValueError
            As the constructor (duplicate id, unknown group or mode), or columns of unequal length.
        KeyError
            A field missing from the saved state.
        """
        if "columns" in data:
            columns = data["columns"]
            n = len(columns["miner_id"])
            if any(len(values) != n for values in columns.values()):
                raise ValueError("saved fleet: columns of unequal length")
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        else:
            rows = data["miners"]
        parsed: dict[str, datetime] = {}
        miners = []
        for row in rows:
            values = dict(row)
            for key in ("last_start", "last_stop"):
                text = values.get(key)
                if text:
                    if text not in parsed:
                        parsed[text] = datetime.fromisoformat(text)
                    values[key] = parsed[text]
                else:
                    values[key] = None
            miners.append(Miner(**values))
        return cls(miners, profile.miner_groups)


# ---------------------------------------------------------------------- counts on the hot path
# Issue 18: a 100,000-miner site cannot afford a Python object per miner per tick. `GroupArrays`
# holds one group's miners as numpy columns (sorted by miner id, the order dispatch writes them);
# `FleetArrays` is the whole fleet as such groups. `control.dispatch.plan_dispatch_arrays` works on
# these; `to_setpoints` is the driver edge, where individual miners appear again.

_EPOCH = datetime(1970, 1, 1, tzinfo=None)
NO_TIME_US = np.iinfo(np.int64).min  # "never" (a miner never started / stopped)


def time_us(moment: datetime | None) -> int:
    """``moment`` as integer microseconds since the epoch (exact, so window edges compare as
    timedelta does); naive and aware datetimes alike (aware ones in UTC); None → `NO_TIME_US`."""
    if moment is None:
        return int(NO_TIME_US)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class GroupArrays:
    """One group's miners as columns, sorted by ``miner_id``. ``mode``: index into the group's
    modes, -1 asleep; ``last_start_us``/``last_stop_us``: `time_us` (`NO_TIME_US` for never)."""

    group: MinerGroup
    miner_id: np.ndarray  # [N] object (str)
    mode: np.ndarray  # [N] int16
    healthy: np.ndarray  # [N] bool
    available: np.ndarray  # [N] bool
    last_start_us: np.ndarray  # [N] int64
    last_stop_us: np.ndarray  # [N] int64
    run_hours: np.ndarray  # [N] float64

    @property
    def mode_names(self) -> list[str]:
        return [m.name for m in self.group.modes]

    def power_kw(self) -> np.ndarray:
        """[modes + 1] kW by mode index + 1 (index 0: asleep, the idle draw)."""
        return np.array([self.group.idle_power_kw] + [m.power_kw for m in self.group.modes], dtype=float)


@dataclass
class FleetArrays:
    """The fleet as `GroupArrays`, in the profile's group order (``FleetState.groups``)."""

    groups: dict[str, GroupArrays]

    @classmethod
    def from_fleet(cls, fleet: FleetState) -> FleetArrays:
        """Columns from a per-miner `FleetState` (O(miners) once; the hot path then stays in arrays)."""
        out = {}
        stamps: dict[datetime | None, int] = {}  # a batch stamps thousands of miners with one datetime

        def us(moment: datetime | None) -> int:
            value = stamps.get(moment)
            if value is None:
                value = stamps[moment] = time_us(moment)
            return value

        for group_id, group in fleet.groups.items():
            miners = sorted(fleet.in_group(group_id), key=lambda m: m.miner_id)
            index = {m.name: i for i, m in enumerate(group.modes)}
            out[group_id] = GroupArrays(
                group=group,
                miner_id=np.array([m.miner_id for m in miners], dtype=object),
                mode=np.array([index.get(m.mode, -1) for m in miners], dtype=np.int16),
                healthy=np.array([m.healthy for m in miners], dtype=bool),
                available=np.array([m.available for m in miners], dtype=bool),
                last_start_us=np.array([us(m.last_start) for m in miners], dtype=np.int64),
                last_stop_us=np.array([us(m.last_stop) for m in miners], dtype=np.int64),
                run_hours=np.array([m.run_hours for m in miners], dtype=float),
            )
        return cls(out)

    def __len__(self) -> int:
        """Miners in the fleet."""
        return sum(len(g.miner_id) for g in self.groups.values())

    # ------------------------------------------------------------------ updates (the loop's state)
    # The loop can keep `FleetArrays` as its fleet state: these mirror `FleetState`'s updates, in
    # arrays (tests/test_vectorised_fleet.py checks them against FleetState on random batches).

    def locate(self, miner_id: str) -> tuple[str, int]:
        """(group id, position) of ``miner_id``. Raises KeyError naming an unknown miner."""
        index = self.__dict__.get("_index")
        if index is None:
            index = {m: (g, i) for g, arrays in self.groups.items() for i, m in enumerate(arrays.miner_id.tolist())}
            self.__dict__["_index"] = index
        try:
            return index[miner_id]
        except KeyError:
            raise KeyError(f"unknown miner {miner_id!r}") from None

    def apply_modes(self, modes: Mapping[str, np.ndarray], now: datetime) -> None:
        """Record that every miner of the groups in ``modes`` was sent its mode at ``now``
        (`FleetState.apply_setpoints` for a full batch): starts and stops stamped, modes set.

        Parameters
        ----------
        modes : group id -> [N] mode index per miner (-1 asleep), id order (`ArrayDispatch.modes`)
        now : when they were sent

        Raises
        ------
        ValueError
            An array of the wrong length, or a mode index outside the group's modes.
        """
        now_us = time_us(now)
        for group_id, new in modes.items():
            arrays = self.groups[group_id]
            new = np.asarray(new, dtype=np.int16)
            if new.shape != arrays.mode.shape:
                raise ValueError(f"group {group_id}: {new.shape[0]} modes for {arrays.mode.shape[0]} miners")
            if new.size and (new.min() < -1 or new.max() >= len(arrays.group.modes)):
                raise ValueError(f"group {group_id}: mode index outside -1..{len(arrays.group.modes) - 1}")
            was = arrays.mode >= 0
            now_running = new >= 0
            arrays.last_start_us[~was & now_running] = now_us
            arrays.last_stop_us[was & ~now_running] = now_us
            arrays.mode = new.copy()

    def apply_setpoints(self, setpoints: Iterable[Setpoint], now: datetime) -> None:
        """`FleetState.apply_setpoints` on the arrays: only the miners named change (e.g. the
        applied ones of a sender result). Raises KeyError for an unknown miner, ValueError for a
        mode its group does not have."""
        changes: dict[str, tuple[list[int], list[int]]] = {}
        for sp in setpoints:
            group_id, i = self.locate(sp.miner_id)
            names = self.groups[group_id].mode_names
            if sp.mode != SLEEP and sp.mode not in names:
                raise ValueError(f"miner {sp.miner_id!r}: group {group_id!r} has no mode {sp.mode!r}")
            where, what = changes.setdefault(group_id, ([], []))
            where.append(i)
            what.append(-1 if sp.mode == SLEEP else names.index(sp.mode))
        for group_id, (where, what) in changes.items():
            new = self.groups[group_id].mode.copy()
            new[np.array(where, dtype=np.int64)] = np.array(what, dtype=np.int16)
            self.apply_modes({group_id: new}, now)

    def accrue_run_hours(self, hours: float) -> None:
        """Add ``hours`` (h) of run time to every running miner (once per tick, elapsed time)."""
        for arrays in self.groups.values():
            arrays.run_hours[arrays.mode >= 0] += hours

    def set_health(self, miner_id: str, healthy: bool) -> None:
        """Mark ``miner_id`` healthy or not (unhealthy units run only when healthy ones run out)."""
        group_id, i = self.locate(miner_id)
        self.groups[group_id].healthy[i] = healthy

    def set_available(self, miner_id: str, available: bool) -> None:
        """Mark ``miner_id`` available or not (unavailable units never get a running mode)."""
        group_id, i = self.locate(miner_id)
        self.groups[group_id].available[i] = available

    def counts(self) -> dict[tuple[str, str], int]:
        """Units per (group, mode) now, running modes only (`FleetState.counts`)."""
        out: dict[tuple[str, str], int] = {}
        for group_id, arrays in self.groups.items():
            tally = np.bincount(arrays.mode[arrays.mode >= 0].astype(np.int64), minlength=len(arrays.group.modes))
            for name, n in zip(arrays.mode_names, tally.tolist()):
                if n:
                    out[group_id, name] = n
        return out
