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
``FleetState.to_dict() / from_dict(data, profile)``, ``FleetState.restored(data, profile)`` (a saved
state restored onto a changed profile, group by group and miner by miner), ``FleetState.to_compact(version)`` (the commitment
state the loop saves: per group, binary columns, format 3 or 4 (ids by the naming rule, not listed);
``from_dict`` reads both and both older forms),
``apply_setpoints(setpoints, now)``,
``accrue_run_hours(hours)``, ``set_health(miner_id, healthy)``, ``set_available(miner_id, available)``,
``as_setpoints(now, expiry_s)`` (the modes in force, as a batch the guard can cut).
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from hashflex.profile import MinerGroup, SiteProfile

from hashflex.drivers.base import Setpoint  # the one setpoint type, made here, taken by every driver
from hashflex.drivers.pdu import POWERED_OFF
from hashflex.messages import SLEEP  # noqa: E402 - the one definition, re-exported here

# The columns live in their own module; re-exported here, where callers import them from.
from hashflex.control.fleet_arrays import NO_TIME_US, FleetArrays, GroupArrays, time_us, transitions  # noqa: E402

__all__ = ["NAMING_RULE", "NO_TIME_US", "SLEEP", "FleetArrays", "FleetState", "GroupArrays", "Miner", "MinerView",
           "Setpoint", "time_us"]


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


class MinerView:
    """One miner of a :class:`FleetState`, read from and written to the fleet's columns (issue 18:
    the fleet is arrays; a view is made only where code asks for one miner). Same fields as
    :class:`Miner` (assigning ``mode``, ``last_start``, ... writes the fleet); equal to a ``Miner``
    or a view with the same field values."""

    __slots__ = ("_fleet", "_i", "miner_id", "group_id")

    def __init__(self, fleet: FleetState, group_id: str, i: int, miner_id: str) -> None:
        self._fleet, self.group_id, self._i, self.miner_id = fleet, group_id, i, miner_id

    @property
    def mode(self) -> str:
        """``sleep``, ``off`` (powered off at the PDU) or a mode name of the group."""
        return self._fleet._mode_name(self.group_id, int(self._fleet._cols[self.group_id].mode[self._i]))

    @mode.setter
    def mode(self, value: str) -> None:
        self._fleet._cols[self.group_id].mode[self._i] = self._fleet._mode_index(self.group_id, value, self.miner_id)

    @property
    def healthy(self) -> bool:
        """Not degraded."""
        return bool(self._fleet._cols[self.group_id].healthy[self._i])

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self._fleet._cols[self.group_id].healthy[self._i] = value

    @property
    def available(self) -> bool:
        """Reachable and not in maintenance."""
        return bool(self._fleet._cols[self.group_id].available[self._i])

    @available.setter
    def available(self, value: bool) -> None:
        self._fleet._cols[self.group_id].available[self._i] = value

    @property
    def last_start(self) -> datetime | None:
        """Last time a running mode was sent after sleep (None: never)."""
        return self._fleet._stamps[self.group_id][0][self._i]

    @last_start.setter
    def last_start(self, value: datetime | None) -> None:
        self._fleet._set_stamp(self.group_id, 0, self._i, value)

    @property
    def last_stop(self) -> datetime | None:
        """Last time sleep (or off) was sent to a running miner (None: never)."""
        return self._fleet._stamps[self.group_id][1][self._i]

    @last_stop.setter
    def last_stop(self, value: datetime | None) -> None:
        self._fleet._set_stamp(self.group_id, 1, self._i, value)

    @property
    def run_hours(self) -> float:
        """Hours run (h)."""
        return float(self._fleet._cols[self.group_id].run_hours[self._i])

    @run_hours.setter
    def run_hours(self, value: float) -> None:
        self._fleet._cols[self.group_id].run_hours[self._i] = value

    @property
    def running(self) -> bool:
        """True unless asleep or powered off at the PDU."""
        return int(self._fleet._cols[self.group_id].mode[self._i]) >= 0

    def _fields(self) -> tuple:
        return (self.miner_id, self.group_id, self.mode, self.healthy, self.available, self.last_start,
                self.last_stop, self.run_hours)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (MinerView, Miner)):
            return self._fields() == _miner_fields(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment] - mutable, as Miner

    def __repr__(self) -> str:
        return "MinerView(" + ", ".join(f"{k}={v!r}" for k, v in zip(_FIELDS, self._fields())) + ")"


_FIELDS = ("miner_id", "group_id", "mode", "healthy", "available", "last_start", "last_stop", "run_hours")


def _miner_fields(miner: Miner | MinerView) -> tuple:
    return tuple(getattr(miner, name) for name in _FIELDS)


class _Miners(Mapping):
    """``FleetState.miners``: miner id -> `MinerView`, in the order the fleet was built."""

    def __init__(self, fleet: FleetState) -> None:
        self._fleet = fleet

    def __getitem__(self, miner_id: str) -> MinerView:
        group_id, i = self._fleet._where[miner_id]
        return MinerView(self._fleet, group_id, i, miner_id)

    def __iter__(self):
        return iter(self._fleet._order)

    def __len__(self) -> int:
        return len(self._fleet._order)

    def __contains__(self, miner_id: object) -> bool:
        return miner_id in self._fleet._where


class FleetState:
    """Every miner of the site, with the profile's group definitions, kept as columns per group
    (issue 18: `GroupArrays`, sorted by miner id), so counts, starts and stops, run hours and the
    arrays dispatch works on cost vector operations, not an object per miner.

    ``miners`` maps id -> `MinerView` (reads and writes the columns) in the order given. Modes are
    indices into the group's modes; -1 asleep, -2 powered off at the PDU (issue 17)."""

    def __init__(self, miners: Iterable[Miner], groups: Iterable[MinerGroup]) -> None:
        self.groups: dict[str, MinerGroup] = {g.id: g for g in groups}
        # Looked up for every miner on every tick: a table, not a search through the modes.
        self._power_kw = {(g.id, m.name): m.power_kw for g in self.groups.values() for m in g.modes}
        self._power_kw.update({(g.id, SLEEP): g.idle_power_kw for g in self.groups.values()})
        # Powered off at the PDU (issue 17): no draw; only groups whose profile allows it.
        self._power_kw.update({(g.id, POWERED_OFF): 0.0 for g in self.groups.values()
                               if getattr(g, "pdu_power_off", False)})
        self._index = {g.id: {m.name: k for k, m in enumerate(g.modes)} for g in self.groups.values()}
        self._names = {g.id: [m.name for m in g.modes] for g in self.groups.values()}
        by_group: dict[str, list[Miner]] = {g: [] for g in self.groups}
        self._order: list[str] = []
        seen: set[str] = set()
        for miner in miners:
            if miner.miner_id in seen:
                raise ValueError(f"miner {miner.miner_id!r}: duplicate id")
            group = self.groups.get(miner.group_id)
            if group is None:
                raise ValueError(f"miner {miner.miner_id!r}: unknown group {miner.group_id!r}")
            if miner.mode != SLEEP and miner.mode not in self._index[group.id] and not (
                    miner.mode == POWERED_OFF and (group.id, POWERED_OFF) in self._power_kw):
                raise ValueError(f"miner {miner.miner_id!r}: group {group.id!r} has no mode {miner.mode!r}")
            seen.add(miner.miner_id)
            self._order.append(miner.miner_id)
            by_group[group.id].append(miner)
        self._cols: dict[str, GroupArrays] = {}
        self._stamps: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # (last_start, last_stop) as given
        self._where: dict[str, tuple[str, int]] = {}
        self._group_order: dict[str, list[str]] = {}
        for group_id, group in self.groups.items():
            self._group_order[group_id] = [m.miner_id for m in by_group[group_id]]
            ordered = sorted(by_group[group_id], key=lambda m: m.miner_id)
            starts = np.empty(len(ordered), dtype=object)
            stops = np.empty(len(ordered), dtype=object)
            starts[:] = [m.last_start for m in ordered]
            stops[:] = [m.last_stop for m in ordered]
            self._stamps[group_id] = (starts, stops)
            self._cols[group_id] = GroupArrays(
                group=group,
                miner_id=np.array([m.miner_id for m in ordered], dtype=object),
                mode=np.array([self._mode_index(group_id, m.mode, m.miner_id) for m in ordered], dtype=np.int16),
                healthy=np.array([m.healthy for m in ordered], dtype=bool),
                available=np.array([m.available for m in ordered], dtype=bool),
                last_start_us=_us_column(starts),
                last_stop_us=_us_column(stops),
                run_hours=np.array([m.run_hours for m in ordered], dtype=float),
            )
            self._where.update({m.miner_id: (group_id, i) for i, m in enumerate(ordered)})
        self.miners: Mapping[str, MinerView] = _Miners(self)
        # `to_compact`'s texts: each group's ids (fixed in a fleet), each time by its integer form
        self._id_texts: dict[str, str | list[str]] = {}
        self._id_by_rule: dict[str, bool] = {}  # a group's ids are the naming rule's (format 4 names the rule)
        self._stamp_texts: dict[int, str] = {}
        self._packed_texts: dict[tuple[str, str], tuple[np.ndarray, str]] = {}  # `_packed`'s last texts

    @classmethod
    def from_profile(cls, profile: SiteProfile) -> FleetState:
        """``group.units`` miners per group, ids ``<group>-<n>`` (n from 1, zero-padded), all asleep."""
        return cls([Miner(miner_id, group_id) for miner_id, group_id in profile.miner_ids().items()],
                   profile.miner_groups)

    def __len__(self) -> int:
        return len(self._order)

    # ------------------------------------------------------------------ modes as indices

    def _mode_index(self, group_id: str, mode: str, miner_id: str = "?") -> int:
        if mode == SLEEP:
            return -1
        if mode == POWERED_OFF and (group_id, POWERED_OFF) in self._power_kw:
            return -2
        try:
            return self._index[group_id][mode]
        except KeyError:
            raise ValueError(f"miner {miner_id!r}: group {group_id!r} has no mode {mode!r}") from None

    def _mode_name(self, group_id: str, k: int) -> str:
        return SLEEP if k == -1 else POWERED_OFF if k == -2 else self._names[group_id][k]

    def _set_stamp(self, group_id: str, which: int, i: int, value: datetime | None) -> None:
        self._stamps[group_id][which][i] = value
        column = self._cols[group_id].last_start_us if which == 0 else self._cols[group_id].last_stop_us
        column[i] = time_us(value)

    # ------------------------------------------------------------------ reads

    def in_group(self, group_id: str) -> list[MinerView]:
        """The miners of ``group_id``, in the order given (an unknown group has none)."""
        return [self.miners[m] for m in self._group_order.get(group_id, ())]

    def group_size(self, group_id: str) -> int:
        """Miners of ``group_id`` in the fleet (0 for an unknown group)."""
        cols = self._cols.get(group_id)
        return 0 if cols is None else len(cols.miner_id)

    def columns(self, group_id: str) -> GroupArrays:
        """The group's columns as they are (read-only use; `FleetArrays.from_fleet` copies them)."""
        return self._cols[group_id]

    def counts(self) -> dict[tuple[str, str], int]:
        """Units per (group, mode) now, running modes only."""
        out: dict[tuple[str, str], int] = {}
        for group_id, cols in self._cols.items():
            running = cols.mode[cols.mode >= 0]
            if running.size:
                tally = np.bincount(running.astype(np.int64), minlength=len(self._names[group_id]))
                out.update({(group_id, self._names[group_id][k]): int(n) for k, n in enumerate(tally.tolist()) if n})
        return out

    def units_running(self) -> int:
        """Miners in a running mode now."""
        return int(sum((cols.mode >= 0).sum() for cols in self._cols.values()))

    def powered_off(self, group_id: str) -> int:
        """Units of ``group_id`` powered off at the PDU now."""
        cols = self._cols.get(group_id)
        return 0 if cols is None else int((cols.mode == -2).sum())

    def power_kw(self, group_id: str, mode: str) -> float:
        """Power of one unit of ``group_id`` in ``mode`` (kW; ``sleep``: the idle draw)."""
        return self._power_kw[group_id, mode]

    # ------------------------------------------------------------------ updates

    def set_health(self, miner_id: str, healthy: bool) -> None:
        """Mark ``miner_id`` healthy or not (unhealthy units run only when healthy ones run out)."""
        group_id, i = self._where[miner_id]
        self._cols[group_id].healthy[i] = healthy

    def set_available(self, miner_id: str, available: bool) -> None:
        """Mark ``miner_id`` available or not (unavailable units never get a running mode)."""
        group_id, i = self._where[miner_id]
        self._cols[group_id].available[i] = available

    def apply_setpoints(self, setpoints: Iterable[Setpoint],
                        now: datetime) -> dict[str, tuple[str, datetime | None, datetime | None]]:
        """Record that ``setpoints`` were sent at ``now``: modes change, starts and stops are stamped.

        Returns
        -------
        dict
            miner id -> its (mode, last_start, last_stop) before, for the miners whose mode changed
            (what a failed setpoint reverts to: `revert`).

        Raises
        ------
        KeyError
            An unknown miner.
        ValueError
            A mode its group does not have.
        """
        now_us = time_us(now)
        before = {}
        for sp in setpoints:
            group_id, i = self._where[sp.miner_id]
            cols = self._cols[group_id]
            new = self._mode_index(group_id, sp.mode, sp.miner_id)
            old = int(cols.mode[i])
            if old == new:
                continue
            starts, stops = self._stamps[group_id]
            before[sp.miner_id] = (self._mode_name(group_id, old), starts[i], stops[i])
            if old < 0 <= new:
                starts[i] = now
                cols.last_start_us[i] = now_us
            elif new < 0 <= old:
                stops[i] = now
                cols.last_stop_us[i] = now_us
            cols.mode[i] = new
        return before

    def apply_modes(self, modes: Mapping[str, np.ndarray],
                    now: datetime) -> dict[str, tuple[str, datetime | None, datetime | None]]:
        """`apply_setpoints` for whole groups at once (issue 18: vector work, per miner only where
        a miner changes): ``modes`` maps group id -> [N] mode index per miner in id order (-1 asleep,
        as `FleetArrays` and `ArrayDispatch.modes` hold them). Returns the same as `apply_setpoints`.

        Raises
        ------
        KeyError
            An unknown group.
        ValueError
            An array of the wrong length, or a mode index outside the group's modes.
        """
        now_us = time_us(now)
        before = ModeChanges(self._where)
        for group_id, new in modes.items():
            cols = self._cols[group_id]
            new, started, stopped = transitions(group_id, cols.mode, new, len(self._names[group_id]))
            changed = np.flatnonzero(new != cols.mode)
            if not changed.size:
                continue
            starts, stops = self._stamps[group_id]
            # kept as columns, made per miner only when asked (issue 18: at 100,000 miners a dict
            # entry per changed miner was 0.45 s of a DR cut; a revert asks for the few that failed)
            before._add(group_id, changed, cols.miner_id, cols.mode[changed].copy(),
                        [POWERED_OFF, SLEEP, *self._names[group_id]], starts[changed], stops[changed])
            starts[started] = now
            cols.last_start_us[started] = now_us
            stops[stopped] = now
            cols.last_stop_us[stopped] = now_us
            cols.mode[:] = new
        return before

    def revert(self, miner_id: str, before: tuple[str, datetime | None, datetime | None]) -> None:
        """Put ``miner_id`` back to ``before`` (mode, last_start, last_stop), as `apply_setpoints` returned it."""
        group_id, i = self._where[miner_id]
        mode, start, stop = before
        self._cols[group_id].mode[i] = self._mode_index(group_id, mode, miner_id)
        self._set_stamp(group_id, 0, i, start)
        self._set_stamp(group_id, 1, i, stop)

    def set_available_where(self, unavailable: set[str]) -> int:
        """Every miner available unless its id is in ``unavailable``; returns how many changed."""
        changed = 0
        for cols in self._cols.values():
            want = ~np.isin(cols.miner_id, list(unavailable)) if unavailable else np.ones(len(cols.miner_id), bool)
            changed += int((want != cols.available).sum())
            cols.available[:] = want
        return changed

    def usable_counts(self, excluded: set[str] = frozenset()) -> dict[str, int]:
        """Available miners per group, leaving out the ids in ``excluded`` (e.g. health stops)."""
        out = {}
        for group_id, cols in self._cols.items():
            usable = cols.available
            if excluded:
                usable = usable & ~np.isin(cols.miner_id, list(excluded))
            out[group_id] = int(usable.sum())
        return out

    def accrue_run_hours(self, hours: float) -> None:
        """Add ``hours`` of run time to every running miner (call once per tick with the elapsed time)."""
        for cols in self._cols.values():
            cols.run_hours[cols.mode >= 0] += hours

    def as_setpoints(self, now: datetime, expiry_s: float) -> list[Setpoint]:
        """The modes in force as a batch (issued now), e.g. for the guard's fast path."""
        expires = now + timedelta(seconds=expiry_s)
        out = []
        for miner_id in self._order:
            group_id, i = self._where[miner_id]
            mode = self._mode_name(group_id, int(self._cols[group_id].mode[i]))
            out.append(Setpoint(miner_id, mode, self._power_kw[group_id, mode], now, expires, group_id=group_id))
        return out

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

        columns: dict[str, list] = {k: [] for k in _FIELDS}
        for group_id, cols in self._cols.items():
            n = len(cols.miner_id)
            columns["miner_id"] += cols.miner_id.tolist()
            columns["group_id"] += [group_id] * n
            names = [POWERED_OFF, SLEEP] + self._names[group_id]  # mode index k at k + 2
            columns["mode"] += [names[k + 2] for k in cols.mode.tolist()]
            columns["healthy"] += cols.healthy.tolist()
            columns["available"] += cols.available.tolist()
            columns["last_start"] += [stamp(t) for t in self._stamps[group_id][0].tolist()]
            columns["last_stop"] += [stamp(t) for t in self._stamps[group_id][1].tolist()]
            columns["run_hours"] += cols.run_hours.tolist()
        return {"format": 2, "columns": columns}

    def to_compact(self, version: int = 3) -> dict[str, Any]:
        """The commitment state in its compact form (format 3 or 4), what the loop saves when a mode changes.

        Issue 18: at 100,000 miners the columns of `to_dict` (a str or a bool per miner per field) took
        about 175 ms to build and 110 ms to write as JSON, on the fast path of every batch that changes
        a mode. Here each group is a few strings: the ids joined by newlines (a list only when an id
        holds a newline), and each column as little-endian binary, zlib-compressed, base64
        (``mode``: int8/int16 index into ``mode_names``, which lists ``off``, ``sleep``, then the
        group's modes; ``healthy``/``available``: bits; ``last_start``/``last_stop``: int32 index into
        ``stamps``, the group's distinct start/stop times as ISO strings, -1 for never;
        ``run_hours``: float64, h, base64 without compression). Each distinct instant is saved once, as the ISO text `to_dict`
        writes for a miner that has it, so a fleet restores equal, field for field (times as instants:
        one instant held with two UTC offsets restores with one of them; the loop stamps in UTC).

        Format 4 (issue 18) is format 3 except ``miner_ids`` of a group whose ids are the profile's naming
        rule (`SiteProfile.miner_ids`: ``<group>-<n>``, n = 1..N zero-padded to the digits of N, the ids
        every fleet made by `from_profile` has): ``{"naming_rule": "<group>-<n>", "units": N}``, from
        which the ids are made again on load. Format 3 wrote ~11 bytes per miner of id text on every
        save (1.1 MB at 100,000 miners, escaped again by ``json.dumps`` and written again to SQLite
        each time), though ids never change in a fleet. Any other group keeps its ids inline as in
        format 3. Nothing else differs; `from_dict` reads both.

        Parameters
        ----------
        version : int
            3 (default) or 4.

        Returns
        -------
        dict
            JSON-ready: ``{"format": 3|4, "groups": [{"group_id", "miner_ids", "mode_names", "mode",
            "healthy", "available", "stamps", "last_start", "last_stop", "run_hours"}, ...]}``.

        Raises
        ------
        ValueError
            ``version`` not 3 or 4.
        """
        if version not in (3, 4) or isinstance(version, bool):
            raise ValueError(f"to_compact: version {version!r}: must be 3 or 4")
        out = []
        # ids never change in a fleet and most times recur from save to save: their text is kept
        texts = self._stamp_texts
        if len(texts) > 65_536:
            texts.clear()
        id_texts = self._id_texts
        for group_id, cols in self._cols.items():
            n = len(cols.miner_id)
            id_text = id_texts.get(group_id)
            if id_text is None:
                ids = cols.miner_id.tolist()
                joined = "\n".join(ids)
                id_text = id_texts[group_id] = (joined if joined.count("\n") == max(0, n - 1) and (n != 1 or ids[0])
                                                else ids)
                self._id_by_rule[group_id] = ids == _rule_ids(group_id, n)
            if version == 4 and self._id_by_rule[group_id]:
                id_text = {"naming_rule": NAMING_RULE, "units": n}
            stamps: list[str] = []
            starts, stops = self._stamps[group_id]
            # distinct times by their exact integer form (a hash table, not a sort: a few distinct
            # values among 2N), each saved as the text of one miner that has it (any: same instant);
            # a time seen in an earlier save keeps its text, so only a new one is looked for
            both = np.concatenate([cols.last_start_us, cols.last_stop_us])
            inverse, values = pd.factorize(both)
            index = np.full(len(values), -1, dtype=np.int32)
            listed = values.tolist()
            new = [k for k, value in enumerate(listed) if value != NO_TIME_US and value not in texts]
            if new:  # a time not seen before (a batch's own, once per save): the text of a miner holding it
                if len(new) <= 8:  # a search from the front per time (stops at the first) ...
                    holders = {k: int(np.argmax(inverse == k)) for k in new}
                else:  # ... or one pass for all (the first save of a restored fleet)
                    first = np.empty(len(values), dtype=np.int64)
                    first[inverse[::-1]] = np.arange(len(both) - 1, -1, -1)
                    holders = {k: int(first[k]) for k in new}
                for k, at in holders.items():
                    texts[listed[k]] = (starts[at] if at < n else stops[at - n]).isoformat()
            for k, value in enumerate(listed):
                if value != NO_TIME_US:
                    index[k] = len(stamps)
                    stamps.append(texts[value])
            column = index[inverse]
            out.append({
                "group_id": group_id,
                "miner_ids": id_text,
                "mode_names": [POWERED_OFF, SLEEP, *self._names[group_id]],
                "mode": self._packed(group_id, "mode", cols.mode.astype("<i2")),
                "healthy": self._packed(group_id, "healthy", np.packbits(cols.healthy)),
                "available": self._packed(group_id, "available", np.packbits(cols.available)),
                "stamps": stamps,
                "last_start": self._packed(group_id, "last_start", column[:n].astype("<i4")),
                "last_stop": self._packed(group_id, "last_stop", column[n:].astype("<i4")),
                "run_hours": self._packed(group_id, "run_hours", cols.run_hours.astype("<f8"), compress=False),
            })
        return {"format": version, "groups": out}

    def _packed(self, group_id: str, field: str, column: np.ndarray, compress: bool = True) -> str:
        """`_pack` of one group's column for `to_compact`, the text of the last save reused while the
        column is unchanged (issue 18: a batch that starts units leaves their stops, health and
        availability as they were; comparing is ~50x cheaper than compressing again)."""
        last = self._packed_texts.get((group_id, field))
        if last is not None and np.array_equal(last[0], column):
            return last[1]
        text = _pack(column, compress)
        self._packed_texts[group_id, field] = (column, text)  # the caller's copy (astype/packbits made it)
        return text

    @classmethod
    def _from_compact(cls, data: Mapping[str, Any], groups: Iterable[MinerGroup]) -> FleetState:
        """The fleet `to_compact` saved, checked against ``groups`` (see `from_dict`)."""
        fleet = cls([], groups)
        seen = 0
        order: list[str] = []
        for saved in data["groups"]:
            group_id = saved["group_id"]
            group = fleet.groups.get(group_id)
            ids_field = saved["miner_ids"]
            by_rule = isinstance(ids_field, Mapping)
            if by_rule:
                ids = _saved_rule_ids(group_id, ids_field, data.get("format"))
            elif isinstance(ids_field, list):
                ids = ids_field
            elif isinstance(ids_field, str):
                ids = ids_field.split("\n") if ids_field else []
            else:
                raise ValueError(f"saved fleet: group {group_id!r}: miner_ids: expected the ids' text, a list or "
                                 f"the naming rule, got {type(ids_field).__name__}")
            n = len(ids)
            if group is None:
                if n:
                    raise ValueError(f"miner {ids[0]!r}: unknown group {group_id!r}")
                continue
            if fleet._group_order[group_id]:
                raise ValueError(f"saved fleet: group {group_id!r} listed twice")
            names = list(saved["mode_names"])
            saved_mode = _unpack(saved["mode"], "<i2", n, "mode").astype(np.int64)
            if n and (saved_mode.min() < -2 or saved_mode.max() >= len(names) - 2):
                raise ValueError(f"saved fleet: group {group_id!r}: mode index outside its mode_names")
            # the saved names mapped to this profile's (a mode reordered keeps its miners; one gone fails)
            mapping = np.empty(len(names), dtype=np.int16)
            used = np.zeros(len(names), dtype=bool)
            used[saved_mode + 2] = True
            for k, name in enumerate(names):
                try:
                    mapping[k] = fleet._mode_index(group_id, name)
                except ValueError:
                    if not used[k]:
                        mapping[k] = -1
                        continue
                    at = ids[int(np.flatnonzero(saved_mode + 2 == k)[0])]
                    raise ValueError(f"miner {at!r}: group {group_id!r} has no mode {name!r}") from None
            mode = mapping[saved_mode + 2]
            healthy = np.unpackbits(_unpack(saved["healthy"], "u1", (n + 7) // 8, "healthy"), count=n).astype(bool)
            available = np.unpackbits(_unpack(saved["available"], "u1", (n + 7) // 8, "available"),
                                      count=n).astype(bool)
            table = [datetime.fromisoformat(text) for text in saved["stamps"]]
            objects = np.empty(len(table) + 1, dtype=object)
            objects[:len(table)] = table
            objects[len(table)] = None  # index -1: never
            table_us = np.array([time_us(t) for t in table] + [int(NO_TIME_US)], dtype=np.int64)
            stamp_cols = []
            for key in ("last_start", "last_stop"):
                index = _unpack(saved[key], "<i4", n, key).astype(np.int64)
                if n and (index.min() < -1 or index.max() >= len(table)):
                    raise ValueError(f"saved fleet: group {group_id!r}: {key} outside its stamps")
                stamp_cols.append((objects[index], table_us[index]))
            run_hours = _unpack(saved["run_hours"], "<f8", n, "run_hours", compressed=False).astype(float)
            id_array = np.empty(n, dtype=object)
            id_array[:] = ids
            sort = np.argsort(id_array, kind="stable") if n and not by_rule and not all(
                a < b for a, b in zip(ids, ids[1:])) else np.arange(n)  # the rule's ids are in order
            fleet._group_order[group_id] = ids
            fleet._stamps[group_id] = (stamp_cols[0][0][sort], stamp_cols[1][0][sort])
            fleet._cols[group_id] = GroupArrays(
                group=group, miner_id=id_array[sort], mode=mode[sort], healthy=healthy[sort],
                available=available[sort], last_start_us=stamp_cols[0][1][sort], last_stop_us=stamp_cols[1][1][sort],
                run_hours=run_hours[sort])
            fleet._where.update({m: (group_id, i) for i, m in enumerate(id_array[sort].tolist())})
            seen += n
            order += ids
        if len(fleet._where) != seen:
            counted: set[str] = set()
            duplicate = next(m for m in order if m in counted or counted.add(m))
            raise ValueError(f"miner {duplicate!r}: duplicate id")
        fleet._order = order
        return fleet

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], profile: SiteProfile) -> FleetState:
        """The fleet saved by `to_compact` or `to_dict` (any of its forms: format 4 or 3, the
        format-2 columns, the older ``{"miners": [row, ...]}``), checked against ``profile``'s groups.

        Raises
        ------
        ValueError
            As the constructor (duplicate id, unknown group or mode), columns of unequal length, a
            format-3/4 column that does not decode to its group's length (naming the field), or a
            format-4 ``miner_ids`` naming an unknown rule or a unit count that is not an integer
            from 0 to 10,000,000.
        KeyError
            A field missing from the saved state.
        """
        if data.get("format") in (3, 4):
            return cls._from_compact(data, profile.miner_groups)
        return cls(cls._saved_miners(data), profile.miner_groups)

    @staticmethod
    def _saved_miners(data: Mapping[str, Any]) -> list[Miner]:
        """The miners of a format-2 (``columns``) or format-1 (``miners`` rows) state, unchecked
        against any profile; ValueError for columns of unequal length, KeyError/TypeError for a
        missing or unknown field."""
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
        return miners
    @classmethod
    def restored(cls, data: Mapping[str, Any], profile: SiteProfile) -> tuple[FleetState, dict[str, dict[str, int]]]:
        """The profile's fleet with the saved commitment state of every miner it still has (issue 18,
        task H10: a profile change no longer throws the whole state away).

        The result is `from_profile` (every miner asleep, no history), then, for each saved group
        that is still in the profile, every miner of it that the profile still has gets its saved
        mode, health, availability, last start and stop and run hours. Modes are matched by name; a
        mode added is fine; a saved mode renamed or removed puts its units in the group's
        lowest-power mode with their times kept (still running, so min on/off holds and the restart
        does not sleep a group the plan then starts again; if the removed mode drew less than every
        remaining one, its units now draw more, and the restart batch is cut to the limits in force
        like any other). Ids ``<group>-<n>`` are matched by
        (group, n), so a zero-padding change of the naming rule (9,999 -> 10,000 units renames
        ``air-0001`` to ``air-00001``) keeps the mapping; other ids match exactly (two saved ids with
        the same n are matched by neither, an ambiguity no mapping can settle). Not restored, so
        asleep with no history, never assumed running: miners new to the profile, miners of a group
        not saved, and (formats 2 and 1, which name no modes, so a gone mode cannot be told from a
        damaged column) every miner of a group holding a mode it lacks.

        Parameters
        ----------
        data : mapping
            The saved state, any form `from_dict` reads, restored group by group (formats 2 and 1
            save no mode names: their group counts as changed when a miner holds a mode it lacks).
        profile : SiteProfile
            The profile now in force.

        Returns
        -------
        fleet : FleetState
            The profile's miners, in `from_profile`'s order.
        not_restored : dict of str to dict of str to int
            Per group id, counts of what was not restored (only nonzero entries; empty when all was):
            ``new`` (profile miners with no saved state), ``mapped: ...`` (miners of a group that lost
            a saved mode: restored, the gone mode's units in the lowest-power mode), ``modes_changed``
            (formats 2 and 1 only: a group whose miners hold a mode it lacks, asleep), ``dropped`` (saved miners the profile no longer has, in groups
            kept), ``group_gone`` (saved miners of a group the profile no longer has).

        Raises
        ------
        ValueError, KeyError
            As `from_dict` for a damaged saved group (a column that does not decode, a missing field,
            a group listed twice): the caller decides (the daemon then starts every miner asleep).
        """
        fleet = cls.from_profile(profile)
        groups = {g.id: g for g in profile.miner_groups}
        report: dict[str, dict[str, int]] = {}

        def note(group_id: str, what: str, n: int) -> None:
            if n:
                report.setdefault(group_id, {})[what] = report.get(group_id, {}).get(what, 0) + n

        loaded: dict[str, FleetState] = {}
        if data.get("format") in (3, 4):
            for saved in data["groups"]:
                group_id = saved["group_id"]
                if group_id in loaded:
                    raise ValueError(f"saved fleet: group {group_id!r} listed twice")
                group = groups.get(group_id)
                if group is None:
                    ids_field = saved["miner_ids"]
                    n = (ids_field.get("units", 0) if isinstance(ids_field, Mapping) else
                         len(ids_field) if isinstance(ids_field, list) else
                         len(ids_field.split("\n")) if ids_field else 0)
                    note(group_id, "group_gone", int(n))
                    continue
                names = {m.name for m in group.modes}
                gone = [name for name in saved["mode_names"] if name not in names and name not in (SLEEP, POWERED_OFF)]
                if gone:  # a mode renamed or removed (a mode added keeps the group as it was)
                    # Its miners keep running, in the group's lowest-power mode, with their start and
                    # stop times: sleeping the group at the restart and letting the plan start it
                    # again broke its min on/off times (newcomer: 90,001 miners, 315 MW down and up
                    # 0.6 s apart).
                    lowest = min(group.modes, key=lambda m: m.power_kw).name
                    saved = {**saved, "mode_names": [lowest if name in gone else name for name in saved["mode_names"]]}
                    note(group_id, f"mapped: saved mode {', '.join(sorted(gone))} gone, its units in {lowest}, "
                                   "times kept", fleet.group_size(group_id))
                loaded[group_id] = cls._from_compact({"format": data.get("format"), "groups": [saved]}, [group])
        else:  # formats 2 and 1 name no modes: a group whose miners hold a mode the profile lacks changed
            by_group: dict[str, list[Miner]] = {}
            seen: set[str] = set()
            for miner in cls._saved_miners(data):
                if miner.miner_id in seen:
                    raise ValueError(f"miner {miner.miner_id!r}: duplicate id")
                seen.add(miner.miner_id)
                by_group.setdefault(miner.group_id, []).append(miner)
            for group_id, miners in by_group.items():
                group = groups.get(group_id)
                if group is None:
                    note(group_id, "group_gone", len(miners))
                    continue
                try:
                    loaded[group_id] = cls(miners, [group])
                except ValueError as exc:
                    if "has no mode" not in str(exc):
                        raise
                    note(group_id, "modes_changed", fleet.group_size(group_id))
                    loaded[group_id] = None  # type: ignore[assignment] - seen, not restored
        for group_id, group in groups.items():
            if group_id not in loaded:
                note(group_id, "new", fleet.group_size(group_id))
                continue
            old = loaded[group_id]
            if old is None:
                continue
            src, dst = old._cols[group_id], fleet._cols[group_id]
            if len(src.miner_id) == len(dst.miner_id) and np.array_equal(src.miner_id, dst.miner_id):
                old_rows = new_rows = np.arange(len(dst.miner_id))
            else:
                keyed: dict[Any, int] = {}
                for i, miner_id in enumerate(src.miner_id.tolist()):
                    key = _restore_key(group_id, miner_id)
                    keyed[key] = -1 if key in keyed else i  # ambiguous: matched by neither
                pairs = [(j, keyed.get(_restore_key(group_id, m), -1)) for j, m in enumerate(dst.miner_id.tolist())]
                pairs = [(j, i) for j, i in pairs if i >= 0]
                new_rows = np.array([j for j, _ in pairs], dtype=np.int64)
                old_rows = np.array([i for _, i in pairs], dtype=np.int64)
            for name in ("mode", "healthy", "available", "last_start_us", "last_stop_us", "run_hours"):
                getattr(dst, name)[new_rows] = getattr(src, name)[old_rows]
            for which in (0, 1):
                fleet._stamps[group_id][which][new_rows] = old._stamps[group_id][which][old_rows]
            note(group_id, "new", len(dst.miner_id) - len(new_rows))
            note(group_id, "dropped", len(src.miner_id) - len(old_rows))
        return fleet, report


class ModeChanges(Mapping):
    """What `FleetState.apply_modes` changed: miner id -> its (mode, last_start, last_stop) before,
    for the miners whose mode changed (a read-only mapping equal to the dict `apply_setpoints`
    returns, same order), kept as columns per group and made per miner only when looked up.

    Parameters
    ----------
    where : mapping of str to (str, int)
        The fleet's miner id -> (group id, row) (ids never move in a fleet).
    """

    def __init__(self, where: Mapping[str, tuple[str, int]]) -> None:
        self._where = where
        # group id -> (changed rows ascending, the group's id column (all rows: ids are read only when
        # iterated), old mode index, mode names by index + 2, old last_start, old last_stop)
        self._groups: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]] = {}
        self._len = 0

    def _add(self, group_id: str, rows: np.ndarray, ids: np.ndarray, old_mode: np.ndarray, names: list[str],
             starts: np.ndarray, stops: np.ndarray) -> None:
        self._groups[group_id] = (rows, ids, old_mode, names, starts, stops)
        self._len += len(rows)

    def _find(self, miner_id: object) -> tuple[tuple, int] | None:
        located = self._where.get(miner_id) if isinstance(miner_id, str) else None
        if located is None or located[0] not in self._groups:
            return None
        cols = self._groups[located[0]]
        k = int(np.searchsorted(cols[0], located[1]))
        return (cols, k) if k < len(cols[0]) and cols[0][k] == located[1] else None

    def __getitem__(self, miner_id: str) -> tuple[str, datetime | None, datetime | None]:
        """(mode, last_start, last_stop) of ``miner_id`` before; KeyError when its mode did not change."""
        found = self._find(miner_id)
        if found is None:
            raise KeyError(miner_id)
        (_, _, old, names, starts, stops), k = found
        return names[int(old[k]) + 2], starts[k], stops[k]

    def __contains__(self, miner_id: object) -> bool:
        """Whether ``miner_id``'s mode changed."""
        return self._find(miner_id) is not None

    def __iter__(self):
        """The changed miners, group by group in row (id) order."""
        for cols in self._groups.values():
            yield from cols[1][cols[0]].tolist()

    def __len__(self) -> int:
        """Miners whose mode changed."""
        return self._len

    def __repr__(self) -> str:
        return f"ModeChanges({self._len} miners in {len(self._groups)} groups)"


NAMING_RULE = "<group>-<n>"
"""Format 4's name for `SiteProfile.miner_ids`'s rule: ``<group>-<n>``, n from 1 to N zero-padded to len(str(N))."""
MAX_RULE_UNITS = 10_000_000  # a damaged count is refused before ids are made for it


def _rule_ids(group_id: str, units: int) -> list[str]:
    """The ids `SiteProfile.miner_ids` gives a group of ``units`` miners, in order (equal width: sorted)."""
    width, prefix = len(str(units)), f"{group_id}-"
    return [prefix + str(i).zfill(width) for i in range(1, units + 1)]  # `miner_ids`'s f"{i:0{width}d}", 3x faster


def _restore_key(group_id: str, miner_id: str) -> Any:
    """`FleetState.restored`'s match key: (group, n) for an id ``<group>-<digits>`` (any zero
    padding), else the id itself."""
    prefix = f"{group_id}-"
    if miner_id.startswith(prefix):
        tail = miner_id[len(prefix):]
        if tail.isdigit() and tail.isascii():
            return (group_id, int(tail))
    return miner_id


def _saved_rule_ids(group_id: str, field: Mapping[str, Any], version: Any) -> list[str]:
    """A format-4 group's ids from its ``{"naming_rule", "units"}``; ValueError naming the field."""
    where = f"saved fleet: group {group_id!r}: miner_ids"
    if version != 4:
        raise ValueError(f"{where}: the naming rule is format 4's, the state says format {version!r}")
    if set(field) != {"naming_rule", "units"} or field["naming_rule"] != NAMING_RULE:
        raise ValueError(f"{where}: expected {{'naming_rule': {NAMING_RULE!r}, 'units': N}}, got {dict(field)!r}")
    units = field["units"]
    if isinstance(units, bool) or not isinstance(units, int) or not 0 <= units <= MAX_RULE_UNITS:
        raise ValueError(f"{where}: units {units!r}: must be an integer from 0 to {MAX_RULE_UNITS:,}")
    return _rule_ids(group_id, units)


def _pack(array: np.ndarray, compress: bool = True) -> str:
    """A column as base64 text of its bytes, zlib-compressed (level 1: fast; modes and time indexes
    repeat a lot) unless ``compress`` is False (run hours: floats that barely compress, ~95 %, and
    took most of the compression time)."""
    raw = np.ascontiguousarray(array).tobytes()
    return base64.b64encode(zlib.compress(raw, 1) if compress else raw).decode("ascii")


def _unpack(text: str, dtype: str, n: int, field: str, compressed: bool = True) -> np.ndarray:
    """`_pack`'s column back, [n] of ``dtype``; ValueError naming ``field`` when it does not decode to n."""
    try:
        raw = base64.b64decode(text, validate=True)
        if compressed:
            raw = zlib.decompress(raw)
    except (ValueError, TypeError, zlib.error) as exc:
        raise ValueError(f"saved fleet: {field}: not a packed column ({exc})") from None
    column = np.frombuffer(raw, dtype=dtype)
    if len(column) != n:
        raise ValueError(f"saved fleet: {field}: {len(column)} values for {n} miners")
    return column


def _us_column(stamps: np.ndarray) -> np.ndarray:
    """`time_us` of each datetime (None: `NO_TIME_US`), once per distinct value."""
    memo: dict[datetime | None, int] = {}
    out = np.empty(len(stamps), dtype=np.int64)
    for i, moment in enumerate(stamps.tolist()):
        value = memo.get(moment)
        if value is None:
            value = memo[moment] = time_us(moment)
        out[i] = value
    return out
