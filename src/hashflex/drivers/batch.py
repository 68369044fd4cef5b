"""A columnar setpoint batch through the driver interface (issue 18: a 100,000-miner tick without an
object per miner).

The loop decides modes per group as numpy columns; :class:`SetpointBatch` carries them to the driver
as they are: per group a :class:`GroupBatch` (miner ids, mode index per miner, the mode's power
target), and one ``issued_at``/``expires_at`` for the whole batch (every setpoint still expires). A
driver that can, takes it whole (``apply_batch(batch) -> BatchResult``): the MQTT driver publishes
a group's rows straight from the columns, the simulated fleet writes them as arrays. Any other
driver gets the same setpoints one by one through :func:`send_batch`, which expands the batch to
:class:`~hashflex.drivers.base.Setpoint` objects and calls its ``apply`` (LuxOS, pyasic, PDU talk to
one miner per socket anyway).

:class:`BatchResult` answers per group: an outcome code per miner into a short table of outcomes
(status, reason, latency), so "all applied" is one table row and a zero column, and the loop finds
the miners that failed with one vector test; per-miner :class:`~hashflex.drivers.base.SetpointResult`
objects are made only for those (or when someone iterates the result, which stays a sequence of
``SetpointResult`` in batch order, equal to what ``apply`` returns).

Both are read-only sequences (``SetpointBatch`` of ``Setpoint``, ``BatchResult`` of
``SetpointResult``), made per miner only when iterated, so code written for lists keeps working.

API: ``GroupBatch(group_id, miner_id, mode, mode_names, power_kw, sorted_ids=False)``;
``SetpointBatch(groups, issued_at, expires_at)`` with ``setpoints()``, ``counts()``, ``audit_summary(source)``;
``BatchResult(batch, outcomes, codes)`` with ``all_applied(batch, reason)``, ``from_results(batch,
results)``, ``tally()``, ``rows(statuses)``, ``status_of(miner_ids)``; ``BatchDriver`` (the protocol);
``send_batch(driver, batch) -> BatchResult``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hashflex.audit.chain import iso_utc
from hashflex.drivers.base import SLEEP, MinerDriver, Setpoint, SetpointResult, SetpointStatus
from hashflex.drivers.pdu import POWERED_OFF

__all__ = ["BatchDriver", "BatchResult", "GroupBatch", "SetpointBatch", "send_batch"]

_STATUSES = tuple(SetpointStatus)


@dataclass(frozen=True, eq=False)
class GroupBatch:
    """One group's setpoints as columns.

    Parameters
    ----------
    group_id : str
        The profile group of every row.
    miner_id : np.ndarray
        [N] object (str): the miners, each at most once.
    mode : np.ndarray
        [N] int16: index into ``mode_names`` per miner; -1 sleep; -2 powered off at the PDU.
    mode_names : tuple of str
        The group's mode names, by index.
    power_kw : np.ndarray
        [len(mode_names) + 2] float, kW: the power target by mode index + 2 (0: off, 1: sleep, i.e.
        the group's idle draw, 2..: the modes), >= 0.
    sorted_ids : bool, default False
        True when ``miner_id`` is in ascending order (lookups then search instead of building an
        index).

    Raises
    ------
    ValueError
        Columns of unequal length, a mode index outside -2 .. len(mode_names) - 1, or a power table of
        the wrong length or with a negative or non-finite entry.
    """

    group_id: str
    miner_id: np.ndarray
    mode: np.ndarray
    mode_names: tuple[str, ...]
    power_kw: np.ndarray
    sorted_ids: bool = False

    def __post_init__(self) -> None:
        if len(self.miner_id) != len(self.mode):
            raise ValueError(f"group {self.group_id}: {len(self.mode)} modes for {len(self.miner_id)} miners")
        if len(self.power_kw) != len(self.mode_names) + 2:
            raise ValueError(f"group {self.group_id}: power_kw has {len(self.power_kw)} entries for "
                             f"{len(self.mode_names)} modes (+ off, sleep)")
        if not np.all(np.isfinite(self.power_kw)) or (self.power_kw < 0).any():
            raise ValueError(f"group {self.group_id}: power_kw must be finite and >= 0")
        if len(self.mode) and (int(self.mode.min()) < -2 or int(self.mode.max()) >= len(self.mode_names)):
            raise ValueError(f"group {self.group_id}: mode index outside -2..{len(self.mode_names) - 1}")

    def __len__(self) -> int:
        """Rows (miners) in the group."""
        return len(self.miner_id)

    @property
    def names(self) -> list[str]:
        """Mode name by mode index + 2: ``[off, sleep, *mode_names]``."""
        return [POWERED_OFF, SLEEP, *self.mode_names]

    def position(self, miner_ids: Sequence[str]) -> dict[str, int]:
        """Row of each of ``miner_ids`` that this group holds (others left out).

        Parameters
        ----------
        miner_ids : sequence of str
            The miners to find.

        Returns
        -------
        dict of str to int
            Miner id → its row.
        """
        if not len(miner_ids) or not len(self.miner_id):
            return {}
        if self.sorted_ids:
            wanted = np.array(list(miner_ids), dtype=object)
            at = np.searchsorted(self.miner_id, wanted)
            hit = at < len(self.miner_id)
            hit[hit] = self.miner_id[at[hit]] == wanted[hit]
            return {m: int(i) for m, i, h in zip(wanted.tolist(), at.tolist(), hit.tolist()) if h}
        index = self.__dict__.get("_index")
        if index is None:
            index = {m: i for i, m in enumerate(self.miner_id.tolist())}
            object.__setattr__(self, "_index", index)
        return {m: index[m] for m in miner_ids if m in index}


class SetpointBatch(Sequence[Setpoint]):
    """A full batch as columns per group with one ``issued_at``/``expires_at``; a read-only sequence
    of :class:`~hashflex.drivers.base.Setpoint` in group order, then row order (made on first use).

    Parameters
    ----------
    groups : iterable of GroupBatch
        The groups, in the order the setpoints are listed.
    issued_at, expires_at : datetime
        Timezone-aware; ``expires_at`` after ``issued_at`` (a setpoint always expires).

    Raises
    ------
    ValueError
        Naive times or ``expires_at <= issued_at``.
    """

    def __init__(self, groups: Iterable[GroupBatch], issued_at: datetime, expires_at: datetime) -> None:
        if issued_at.tzinfo is None or expires_at.tzinfo is None:
            raise ValueError("SetpointBatch: issued_at and expires_at must be timezone-aware")
        if expires_at <= issued_at:
            raise ValueError("SetpointBatch: expires_at must be after issued_at")
        self.groups: tuple[GroupBatch, ...] = tuple(groups)
        self.issued_at = issued_at
        self.expires_at = expires_at
        self._setpoints: list[Setpoint] | None = None
        self._len = sum(len(g) for g in self.groups)

    def __len__(self) -> int:
        """Setpoints (miners) in the batch."""
        return self._len

    def setpoints(self) -> list[Setpoint]:
        """The batch as ``Setpoint`` objects (group order, then row order); made once, then cached.

        Returns
        -------
        list of Setpoint
            Equal, field for field, to ``Setpoint(miner, mode, power, issued_at, expires_at, group_id)``.
        """
        if self._setpoints is None:
            out: list[Setpoint] = []
            for group in self.groups:
                out += self.group_setpoints(group)
            self._setpoints = out
        return self._setpoints

    def group_setpoints(self, group: GroupBatch, rows: Sequence[int] | np.ndarray | None = None) -> list[Setpoint]:
        """One group's rows (all, or ``rows``) as ``Setpoint`` objects.

        Parameters
        ----------
        group : GroupBatch
            A group of this batch.
        rows : sequence of int, optional
            Its rows to make, in this order (default: all).

        Returns
        -------
        list of Setpoint
            One per row.
        """
        if not len(group):
            return []
        names = group.names
        power = group.power_kw.tolist()
        ids = group.miner_id if rows is None else group.miner_id[np.asarray(rows, dtype=np.int64)]
        modes = group.mode if rows is None else group.mode[np.asarray(rows, dtype=np.int64)]
        index = (modes.astype(np.int64) + 2).tolist()
        if not index:
            return []
        return Setpoint.many(ids.tolist(), [names[k] for k in index], [power[k] for k in index],
                             self.issued_at, self.expires_at, group.group_id)

    def __getitem__(self, item: Any) -> Any:
        """A setpoint (or a list of them for a slice), as in :meth:`setpoints`."""
        return self.setpoints()[item]

    def __iter__(self) -> Iterator[Setpoint]:
        """The setpoints in order (:meth:`setpoints`)."""
        return iter(self.setpoints())

    def __eq__(self, other: object) -> bool:
        """Equal to another batch or sequence with the same setpoints in the same order."""
        if isinstance(other, (SetpointBatch, list, tuple)):
            return len(self) == len(other) and self.setpoints() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"SetpointBatch({len(self)} setpoints in {len(self.groups)} groups, issued {self.issued_at.isoformat()}, "
                f"expires {self.expires_at.isoformat()})")

    def counts(self) -> dict[tuple[str, str], int]:
        """Miners per (group id, mode name), sleep and off included (modes with none left out)."""
        out: dict[tuple[str, str], int] = {}
        for group in self.groups:
            tally = np.bincount(group.mode.astype(np.int64) + 2, minlength=len(group.mode_names) + 2)
            for name, n in zip(group.names, tally.tolist()):
                if n:
                    out[group.group_id, name] = out.get((group.group_id, name), 0) + n
        return out

    def power_target_kw(self) -> float:
        """The sum of every setpoint's power target, kW (summed in batch order, as Python's ``sum``)."""
        total = 0.0
        for group in self.groups:
            values = group.power_kw[group.mode.astype(np.int64) + 2]
            if len(values):
                # np.add.accumulate adds in order (no pairwise summation, unlike np.sum), so the
                # result equals Python's += to the bit and the audit hash does not change; ~9x
                # faster than the per-miner loop on a 17,000-miner batch (issue 18, H4)
                total = float(np.add.accumulate(np.concatenate(([total], values)))[-1])
        return total

    def audit_summary(self, source: str = "schedule") -> dict[str, Any]:
        """The audit summary ``audit.setpoints_payload`` makes of the same setpoints, in counts
        (issue 18: per group, not per miner).

        Parameters
        ----------
        source : str
            What made the batch (``schedule``, a guard action, ...).

        Returns
        -------
        dict
            ``source``, ``miners``, ``counts`` {"group/mode": units}, ``power_target_kw`` (kW),
            ``issued_at``, ``expires_at`` (ISO UTC; null for an empty batch).
        """
        counts = {f"{g}/{m}": n for (g, m), n in self.counts().items()}
        empty = len(self) == 0
        return {"source": source, "miners": len(self), "counts": dict(sorted(counts.items())),
                "power_target_kw": float(self.power_target_kw()),
                "issued_at": None if empty else _iso_utc(self.issued_at),
                "expires_at": None if empty else _iso_utc(self.expires_at)}


def _iso_utc(moment: datetime) -> str:
    return iso_utc(moment)  # the audit's own form, so the summary equals audit.setpoints_payload's


class BatchResult(Sequence[SetpointResult]):
    """The driver's answer to a :class:`SetpointBatch`: per group, an outcome code per row into one
    table of outcomes; a read-only sequence of :class:`~hashflex.drivers.base.SetpointResult` in
    the batch's order (made on first use).

    Parameters
    ----------
    batch : SetpointBatch
        The batch answered.
    outcomes : sequence of (SetpointStatus, str, float)
        The distinct outcomes: status, reason (never empty), latency (s).
    codes : sequence of np.ndarray
        Per group of ``batch`` (same order), [N] int: the row's index into ``outcomes``.

    Raises
    ------
    ValueError
        A code column per group missing or of the wrong length, a code outside ``outcomes``, or an
        empty reason.
    """

    def __init__(self, batch: SetpointBatch, outcomes: Sequence[tuple[SetpointStatus, str, float]],
                 codes: Sequence[np.ndarray]) -> None:
        if len(codes) != len(batch.groups):
            raise ValueError(f"BatchResult: {len(codes)} code columns for {len(batch.groups)} groups")
        self.batch = batch
        self.outcomes = [(SetpointStatus(s), str(r), float(t)) for s, r, t in outcomes]
        if any(not r for _, r, _ in self.outcomes):
            raise ValueError("BatchResult: an outcome without a reason")
        self.codes = [np.asarray(c, dtype=np.int64) for c in codes]
        for group, column in zip(batch.groups, self.codes):
            if column.shape != (len(group),):
                raise ValueError(f"BatchResult: group {group.group_id}: {column.shape} codes for {len(group)} miners")
            if column.size and (column.min() < 0 or column.max() >= len(self.outcomes)):
                raise ValueError(f"BatchResult: group {group.group_id}: outcome code outside 0..{len(self.outcomes) - 1}")
        self._results: list[SetpointResult] | None = None

    @classmethod
    def all_applied(cls, batch: SetpointBatch, reason: str, latency_s: float = 0.0) -> BatchResult:
        """Every setpoint of ``batch`` applied with one ``reason`` (a driver that takes the batch whole).

        Parameters
        ----------
        batch : SetpointBatch
            The batch.
        reason : str
            What confirmed it.
        latency_s : float
            Seconds from sending to the answer.

        Returns
        -------
        BatchResult
        """
        return cls(batch, [(SetpointStatus.APPLIED, reason, latency_s)],
                   [np.zeros(len(g), dtype=np.int64) for g in batch.groups])

    @classmethod
    def from_results(cls, batch: SetpointBatch, results: Sequence[SetpointResult]) -> BatchResult:
        """The columnar form of per-miner results given in ``batch.setpoints()`` order.

        Parameters
        ----------
        batch : SetpointBatch
            The batch.
        results : sequence of SetpointResult
            One per setpoint, same order (what ``MinerDriver.apply(batch.setpoints())`` returns).

        Returns
        -------
        BatchResult
            Iterating it gives results equal to ``results``.

        Raises
        ------
        ValueError
            A different number of results than setpoints, or a result for another miner than its
            setpoint's.
        """
        if len(results) != len(batch):
            raise ValueError(f"BatchResult: {len(results)} results for {len(batch)} setpoints")
        table: dict[tuple[SetpointStatus, str, float], int] = {}
        codes = []
        position = 0
        for group in batch.groups:
            ids = group.miner_id.tolist()
            column = np.empty(len(ids), dtype=np.int64)
            for k, miner_id in enumerate(ids):
                r = results[position + k]
                if r.miner_id != miner_id:
                    raise ValueError(f"BatchResult: result {position + k} is for {r.miner_id!r}, not {miner_id!r}")
                key = (r.status, r.reason, r.latency_s)
                code = table.get(key)
                if code is None:
                    code = table[key] = len(table)
                column[k] = code
            codes.append(column)
            position += len(ids)
        out = cls(batch, list(table), codes)
        out._results = list(results)
        return out

    def __len__(self) -> int:
        """Results (one per setpoint of the batch)."""
        return len(self.batch)

    def results(self) -> list[SetpointResult]:
        """One ``SetpointResult`` per setpoint, batch order (made once, then cached; the objects of one
        outcome share the status, reason and latency)."""
        if self._results is None:
            out: list[SetpointResult] = []
            for group, column in zip(self.batch.groups, self.codes):
                out += self._make(group.miner_id.tolist(), column.tolist())
            self._results = out
        return self._results

    def _make(self, miner_ids: list[str], codes: list[int]) -> list[SetpointResult]:
        new = object.__new__
        outcomes = self.outcomes
        out = []
        for miner_id, code in zip(miner_ids, codes):
            status, reason, latency = outcomes[code]
            r = new(SetpointResult)
            # Frozen: set once, here, as the generated __init__ would (as Setpoint.many does).
            r.__dict__.update(miner_id=miner_id, status=status, reason=reason, latency_s=latency)
            out.append(r)
        return out

    def __getitem__(self, item: Any) -> Any:
        """A result (or a list of them for a slice), as in :meth:`results`."""
        return self.results()[item]

    def __iter__(self) -> Iterator[SetpointResult]:
        """The results in batch order (:meth:`results`)."""
        return iter(self.results())

    def __repr__(self) -> str:
        return f"BatchResult({self.tally()})"

    def _status_mask(self, statuses: Iterable[SetpointStatus]) -> np.ndarray:
        wanted = set(statuses)
        return np.array([s in wanted for s, _, _ in self.outcomes], dtype=bool)

    def tally(self) -> dict[str, int]:
        """Setpoints per status value (``applied``, ``rejected``, ...), statuses with none left out."""
        per_outcome = np.zeros(len(self.outcomes), dtype=np.int64)
        for column in self.codes:
            if column.size:
                per_outcome += np.bincount(column, minlength=len(self.outcomes))
        out: dict[str, int] = {}
        for (status, _, _), n in zip(self.outcomes, per_outcome.tolist()):
            if n:
                out[status.value] = out.get(status.value, 0) + n
        return out

    def rows(self, statuses: Iterable[SetpointStatus]) -> list[tuple[Setpoint, SetpointResult]]:
        """The setpoints whose result has one of ``statuses``, with their results, batch order (per
        miner only for those rows: the few that failed).

        Parameters
        ----------
        statuses : iterable of SetpointStatus
            The statuses wanted.

        Returns
        -------
        list of (Setpoint, SetpointResult)
        """
        mask = self._status_mask(statuses)
        out: list[tuple[Setpoint, SetpointResult]] = []
        if not mask.any():
            return out
        for group, column in zip(self.batch.groups, self.codes):
            rows = np.flatnonzero(mask[column])
            if rows.size:
                setpoints = self.batch.group_setpoints(group, rows)
                results = self._make(group.miner_id[rows].tolist(), column[rows].tolist())
                out += list(zip(setpoints, results))
        return out

    def status_of(self, miner_ids: Iterable[str]) -> dict[str, SetpointStatus]:
        """The status of each of ``miner_ids`` in this batch (miners not in it left out; a miner in
        two groups: the later one's, as results recorded in order leave it).

        Parameters
        ----------
        miner_ids : iterable of str
            The miners.

        Returns
        -------
        dict of str to SetpointStatus
        """
        wanted = list(miner_ids)
        out: dict[str, SetpointStatus] = {}
        if not wanted:
            return out
        for group, column in zip(self.batch.groups, self.codes):
            for miner_id, row in group.position(wanted).items():
                out[miner_id] = self.outcomes[int(column[row])][0]
        return out


@runtime_checkable
class BatchDriver(Protocol):
    """A driver that takes a :class:`SetpointBatch` whole (the MQTT driver, the simulated fleet)."""

    def apply_batch(self, batch: SetpointBatch) -> BatchResult:
        """Send every setpoint of ``batch``; never raises for a miner's or the transport's fault.

        Parameters
        ----------
        batch : SetpointBatch
            The setpoints, per group as columns.

        Returns
        -------
        BatchResult
            One outcome per setpoint, as ``apply(batch.setpoints())`` would give them.
        """
        ...


def send_batch(driver: MinerDriver | BatchDriver, batch: SetpointBatch) -> BatchResult:
    """``driver.apply_batch(batch)`` where the driver has it, else its ``apply`` on the setpoints one by
    one (the default for drivers that talk to one miner per socket), answered in columns.

    Parameters
    ----------
    driver : MinerDriver or BatchDriver
        The driver.
    batch : SetpointBatch
        The batch.

    Returns
    -------
    BatchResult
        One outcome per setpoint of ``batch``.

    Raises
    ------
    ValueError
        A per-miner driver answered with a different number of results, or out of order.
    """
    apply_batch = getattr(driver, "apply_batch", None)
    if apply_batch is not None:
        return apply_batch(batch)
    return BatchResult.from_results(batch, driver.apply(batch.setpoints()))
