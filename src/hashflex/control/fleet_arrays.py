"""The fleet as columns (issue 18): one :class:`GroupArrays` per group (numpy, sorted by miner id) and
:class:`FleetArrays`, the whole fleet so, which dispatch (`control.dispatch.plan_dispatch_arrays`),
the count guard and the simulated site work on; `time_us`, the exact integer form of a time those
columns hold. :class:`~hashflex.control.fleet.FleetState` keeps its miners in these columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from hashflex.drivers.base import Setpoint
from hashflex.messages import SLEEP
from hashflex.profile import MinerGroup

if TYPE_CHECKING:
    from hashflex.control.fleet import FleetState

__all__ = ["NO_TIME_US", "FleetArrays", "GroupArrays", "time_us", "transitions"]

# ---------------------------------------------------------------------- counts on the hot path
# Issue 18: a 100,000-miner site cannot afford a Python object per miner per tick. `GroupArrays`
# holds one group's miners as numpy columns (sorted by miner id, the order dispatch writes them);
# `FleetArrays` is the whole fleet as such groups. `control.dispatch.plan_dispatch_arrays` works on
# these; the driver edge is `ArrayDispatch.to_batch` (a columnar `drivers.batch.SetpointBatch`: miners
# appear one by one only in drivers that need them, `ArrayDispatch.to_setpoints`).

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


def transitions(group_id: str, old: np.ndarray, new: Any, n_modes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A group's new mode column checked against the old one, and who starts and who stops.

    Parameters
    ----------
    group_id : str
        For the error message.
    old : np.ndarray
        [N] mode index per miner now (negative: asleep or powered off).
    new : array-like
        [N] mode index per miner to apply, -1 asleep.
    n_modes : int
        The group's number of modes.

    Returns
    -------
    tuple
        (new as int16, [N] bool started: not running before and running now, [N] bool stopped).

    Raises
    ------
    ValueError
        An array of the wrong length, or a mode index outside -1 .. n_modes - 1.
    """
    new = np.asarray(new, dtype=np.int16)
    if new.shape != old.shape:
        raise ValueError(f"group {group_id}: {new.shape[0]} modes for {old.shape[0]} miners")
    if new.size and (new.min() < -1 or new.max() >= n_modes):
        raise ValueError(f"group {group_id}: mode index outside -1..{n_modes - 1}")
    return new, (old < 0) & (new >= 0), (old >= 0) & (new < 0)


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
        """The group's mode names, by mode index."""
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
        """A copy of a `FleetState`'s columns (issue 18: the fleet is already arrays, so this is a
        memory copy, not a pass over miners). Powered-off units (-2 in the fleet) are asleep (-1)
        here: dispatch may start them like any sleeping unit. ``miner_id`` is the fleet's own array,
        shared, not copied: ids never change, and a driver can recognise the same column from one
        batch to the next (the simulated fleet then skips matching ids)."""
        out = {}
        for group_id in fleet.groups:
            cols = fleet.columns(group_id)
            out[group_id] = GroupArrays(
                group=cols.group, miner_id=cols.miner_id, mode=np.maximum(cols.mode, -1).astype(np.int16),
                healthy=cols.healthy.copy(), available=cols.available.copy(),
                last_start_us=cols.last_start_us.copy(), last_stop_us=cols.last_stop_us.copy(),
                run_hours=cols.run_hours.copy())
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
            new, started, stopped = transitions(group_id, arrays.mode, new, len(arrays.group.modes))
            arrays.last_start_us[started] = now_us
            arrays.last_stop_us[stopped] = now_us
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
