"""How setpoints reach miners: one small protocol for every driver, and a health registry.

A driver takes a batch of :class:`Setpoint` and returns one :class:`SetpointResult` per setpoint, in
the same order, never raising for a miner's fault: the result carries a :class:`SetpointStatus` and a
human-readable ``reason`` (what the miner or the broker said, or which timeout ran out).

Statuses
--------
- ``applied``: the transport confirmed it (MQTT: the broker's PUBACK; LuxOS: ``STATUS`` ``S`` for every
  command) or a verification read-back matched.
- ``unverified``: the command went through but the miner's own report (telemetry, ``power``) does not
  (yet) confirm it: still booting, no telemetry, or it disagrees; the reason says which.
- ``rejected``: refused (an error ``STATUS`` with its ``Msg``, an unknown miner or mode, an expired setpoint).
- ``timeout``: no answer within the per-call deadline after all retries.
- ``unreachable``: the miner cannot be reached (its own endpoint refuses or does not route; MQTT:
  the broker has no subscriber for this one miner's topic while others have one).
- ``not_sent``: a *transport* fault between the controller and the miners, which says nothing about
  the miner: the broker is down or refuses our connection, the connection broke before the PUBACK,
  no PUBACK came in time, the broker has no subscriber at all just after it restarted, or the
  telemetry connection was lost so a setpoint cannot be verified. The setpoint must NOT be taken
  as applied (the miner keeps its last setpoint and falls back to sleep when it expires, which is
  the safe side); it is not counted against the miner either.

:class:`MinerRegistry` turns results into availability: a miner that fails ``max_failures`` setpoints
in a row (rejected / timeout / unreachable), or whose verification fails ``max_mismatches`` times in a
row, is marked unavailable with the reason and the time, so the optimizer can leave it out
(:meth:`MinerRegistry.availability_by_group`). A later confirmed verification (or :meth:`restore`)
makes it available again. ``not_sent`` results are ignored: a miner's availability comes from its
telemetry and the driver's answers about it, never from the broker being down (issue 10: a 30 s
outage used to mark the whole fleet unavailable, and the next plan slept the site).

The loop sends its batches as columns (issue 18: :mod:`hashflex.drivers.batch`, a ``SetpointBatch`` per
tick and a ``BatchResult`` back, per group, no object per miner); a driver that can takes them whole
(``apply_batch``: the MQTT driver, the simulated fleet), every other one gets the same setpoints one
by one through ``apply`` (``drivers.batch.send_batch``). The registry keeps an entry only for miners
with a failure, a mismatch or a mark, so a batch in which every miner is applied costs nothing here.

API: ``Setpoint(miner_id, mode, power_target_kw, issued_at, expires_at)`` (``mode`` is a mode name or
``"sleep"``), ``SetpointResult(miner_id, status, reason, latency_s)`` with ``ok``; ``MinerDriver``
(``apply(batch) -> list[SetpointResult]``, ``close()``); ``MinerRegistry(groups_by_miner, *,
max_failures=3, max_mismatches=1, clock=utc_now)`` with ``record(results, verification=False)``,
``record_batch(batch_result)``,
``is_available(miner_id)``, ``unavailable() -> dict[str, Unavailability]``, ``restore(miner_id)``,
``availability_by_group() -> dict[str, GroupAvailability]``.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from hashflex.frames import utc_now
from hashflex.messages import SLEEP, SetpointMessage

__all__ = [
    "SLEEP",
    "CapableDriver",
    "Clock",
    "GroupAvailability",
    "MinerCapabilities",
    "MinerDriver",
    "MinerRegistry",
    "Setpoint",
    "SetpointResult",
    "SetpointStatus",
    "Unavailability",
    "utc_now",
]

Clock = Callable[[], datetime]


class SetpointStatus(str, enum.Enum):
    """The outcome of one setpoint (the module docstring says when each is given).

    Attributes
    ----------
    APPLIED : str
        ``applied``: the transport confirmed it (MQTT: the broker's PUBACK, MQTT v5 §3.4; LuxOS:
        ``STATUS`` ``S``) or a verification read-back matched.
    REJECTED : str
        ``rejected``: refused (an error ``STATUS``, an unknown miner or mode, an expired setpoint).
    TIMEOUT : str
        ``timeout``: no answer within the per-call deadline after all retries.
    UNREACHABLE : str
        ``unreachable``: the miner cannot be reached.
    UNVERIFIED : str
        ``unverified``: sent, but the miner's own report does not (yet) confirm it.
    NOT_SENT : str
        ``not_sent``: a transport fault (broker down, no PUBACK, ...): not the miner's doing, not
        counted against it, and never to be taken as applied.
    """

    APPLIED = "applied"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    UNVERIFIED = "unverified"
    NOT_SENT = "not_sent"  # transport fault (broker down, no PUBACK, ...): not the miner's doing


_FAILURES = frozenset({SetpointStatus.REJECTED, SetpointStatus.TIMEOUT, SetpointStatus.UNREACHABLE})


@dataclass(frozen=True)
class Setpoint:
    """What one miner should do until ``expires_at`` (then it falls back to sleep).

    The one setpoint type of the project: the dispatcher and the guard make it, every driver takes
    it, and ``to_message`` gives its wire form (``messages.SetpointMessage``, the same fields less
    ``group_id``).

    Parameters
    ----------
    miner_id : str
        The miner, as named by ``SiteProfile.miner_ids``.
    mode : str
        A mode name of the miner's group, or ``messages.SLEEP``.
    power_target_kw : float
        The mode's planned power draw, kW (>= 0).
    issued_at, expires_at : datetime
        Timezone-aware; after ``expires_at`` the miner falls back to sleep (brief: a setpoint
        always expires).
    group_id : str, optional
        The profile group the miner belongs to ("" when a driver-level caller does not know it).

    Raises
    ------
    ValueError
        Naive timestamps, ``expires_at <= issued_at`` or a negative power target.
    """

    miner_id: str
    mode: str
    power_target_kw: float
    issued_at: datetime
    expires_at: datetime
    group_id: str = ""

    def __post_init__(self) -> None:
        if self.issued_at.tzinfo is None or self.expires_at.tzinfo is None:
            raise ValueError(f"setpoint for {self.miner_id}: timestamps must be timezone-aware")
        if self.expires_at <= self.issued_at:
            raise ValueError(f"setpoint for {self.miner_id}: expires_at must be after issued_at")
        if self.power_target_kw < 0:
            raise ValueError(f"setpoint for {self.miner_id}: power_target_kw must be >= 0")

    @property
    def is_sleep(self) -> bool:
        """True when the mode is ``messages.SLEEP``."""
        return self.mode == SLEEP

    def to_message(self) -> SetpointMessage:
        """The wire form (``out/setpoint/<miner>``): the same fields less ``group_id``.

        Returns
        -------
        SetpointMessage
            The message, validated by its schema.
        """
        return SetpointMessage(
            miner_id=self.miner_id,
            mode=self.mode,
            power_target_kw=self.power_target_kw,
            issued_at=self.issued_at,
            expires_at=self.expires_at,
        )

    @classmethod
    def from_message(cls, message: SetpointMessage) -> Setpoint:
        """The setpoint a wire message carries (``group_id`` empty: the message does not name it).

        Parameters
        ----------
        message : SetpointMessage
            The message.

        Returns
        -------
        Setpoint
            The setpoint.

        Raises
        ------
        ValueError
            As :class:`Setpoint` (naive times, ``expires_at <= issued_at``, negative power).
        """
        return cls(message.miner_id, message.mode, message.power_target_kw, message.issued_at,
                   message.expires_at)

    @classmethod
    def many(cls, miner_ids: Sequence[str], modes: Sequence[str], power_target_kw: Sequence[float],
             issued_at: datetime, expires_at: datetime, group_id: str = "") -> list[Setpoint]:
        """One setpoint per miner of a group that share their times (a dispatched batch), checked
        once for the batch instead of once per miner (issue 18: 100,000 setpoints per tick).

        Parameters
        ----------
        miner_ids, modes, power_target_kw : sequences of equal length
            Per miner: id, mode name, planned power (kW, >= 0).
        issued_at, expires_at : datetime
            Timezone-aware, ``expires_at`` after ``issued_at``; shared by the batch.
        group_id : str
            The group of every miner in the batch.

        Returns
        -------
        list[Setpoint]
            Equal, field for field, to ``Setpoint(...)`` made one by one.

        Raises
        ------
        ValueError
            As :class:`Setpoint` (naive times, ``expires_at <= issued_at``, a negative power), or
            sequences of unequal length.
        """
        if not (len(miner_ids) == len(modes) == len(power_target_kw)):
            raise ValueError("Setpoint.many: miner_ids, modes and power_target_kw differ in length")
        if not miner_ids:
            return []
        cls(miner_ids[0], modes[0], min(power_target_kw), issued_at, expires_at, group_id)  # the checks, once
        new = object.__new__
        out = []
        for miner_id, mode, power in zip(miner_ids, modes, power_target_kw):
            sp = new(cls)
            # Frozen: the fields are set once, here, as the generated __init__ would set them.
            sp.__dict__.update(miner_id=miner_id, mode=mode, power_target_kw=power, issued_at=issued_at,
                               expires_at=expires_at, group_id=group_id)
            out.append(sp)
        return out


@dataclass(frozen=True)
class SetpointResult:
    """The outcome for one setpoint; ``reason`` is never empty.

    Parameters
    ----------
    miner_id : str
        The miner the setpoint was for.
    status : SetpointStatus
        What happened.
    reason : str
        What the miner or the broker said, or which timeout ran out.
    latency_s : float, default 0.0
        Time from sending to the answer, s.
    """

    miner_id: str
    status: SetpointStatus
    reason: str
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True only for ``applied``: the transport or the miner confirmed the setpoint."""
        return self.status is SetpointStatus.APPLIED


@runtime_checkable
class MinerDriver(Protocol):
    """How setpoints reach miners: every driver implements this (CONTRIBUTING, "A new miner driver")."""

    def apply(self, batch: list[Setpoint]) -> list[SetpointResult]:
        """Send every setpoint; one result per setpoint, same order; never raises for a miner's fault.

        Parameters
        ----------
        batch : list of Setpoint
            The setpoints to send (the loop sends full-fleet batches).

        Returns
        -------
        list of SetpointResult
            One per setpoint, in the order of ``batch``; ``not_sent`` for a transport fault.
        """
        ...

    def close(self) -> None:
        """Release connections and threads; the driver is not used afterwards."""
        ...


@dataclass(frozen=True)
class MinerCapabilities:
    """What one miner can be asked to do, declared by its driver so the dispatcher does not probe.

    Parameters
    ----------
    miner_id : str
        The miner.
    family : str
        The firmware family (``luxos``, ``vnish``, ``mqtt``, ``pdu``, ...).
    sleep_wake : bool
        It can stop hashing (the safe default) and resume on command.
    power_target : bool
        It accepts a power target.
    verify : bool
        The driver can read back power and hashrate to confirm a setpoint.
    modes : tuple of str, default ()
        The profile's mode names this miner can run (a mode whose power has no matching target is
        left out).
    power_targets_w : tuple of int, default ()
        The discrete power targets it can hold (presets/profiles), W, ascending; empty when any value
        in ``power_range_w`` is accepted.
    power_range_w : tuple of (int, int), optional
        The (lowest, highest) power target accepted, W.
    power_off : bool, default False
        A PDU outlet or breaker can cut it completely (zero draw, cold restart).
    notes : str, default ""
        Why something is missing (e.g. a pyasic limitation), for the operator.
    """

    miner_id: str
    family: str
    sleep_wake: bool
    power_target: bool
    verify: bool
    modes: tuple[str, ...] = ()
    power_targets_w: tuple[int, ...] = ()
    power_range_w: tuple[int, int] | None = None
    power_off: bool = False
    notes: str = ""


@runtime_checkable
class CapableDriver(Protocol):
    """A driver that declares its miners' capabilities (``None`` for a miner it does not drive)."""

    def capabilities(self, miner_id: str) -> MinerCapabilities | None:
        """What the driver can do with one miner.

        Parameters
        ----------
        miner_id : str
            The miner.

        Returns
        -------
        MinerCapabilities or None
            Its capabilities, or None for a miner this driver does not drive.
        """
        ...


@dataclass(frozen=True)
class Unavailability:
    """Why and since when a miner is left out of the plan.

    Parameters
    ----------
    miner_id : str
        The miner.
    reason : str
        The failures that marked it unavailable (count and the last answer).
    since : datetime
        When it was marked, timezone-aware (the registry's clock).
    """

    miner_id: str
    reason: str
    since: datetime


@dataclass(frozen=True)
class GroupAvailability:
    """How many of a group's miners the optimizer may plan.

    Parameters
    ----------
    group_id : str
        The profile group.
    total : int
        Miners in the group.
    available : int
        Miners not marked unavailable (``total`` − ``len(unavailable)``).
    unavailable : dict of str to Unavailability
        Miner id → why it is out.
    """

    group_id: str
    total: int
    available: int
    unavailable: dict[str, Unavailability] = field(default_factory=dict)


@dataclass
class _Health:
    failures: int = 0
    mismatches: int = 0
    last: SetpointResult | None = None
    down: Unavailability | None = None


class MinerRegistry:
    """Tracks each miner's recent results and decides availability; thread-safe.

    Parameters
    ----------
    groups_by_miner : Mapping of str to str
        Miner id → group id: the miners tracked (results for other miners are ignored).
    max_failures : int, default 3
        Consecutive failed setpoints (rejected / timeout / unreachable) that mark a miner unavailable.
    max_mismatches : int, default 1
        Consecutive failed verifications (``unverified``) that mark it unavailable.
    clock : callable, default ``utc_now``
        Returns the time stamped on an :class:`Unavailability`, timezone-aware.

    Raises
    ------
    ValueError
        If ``max_failures`` or ``max_mismatches`` is below 1.
    """

    def __init__(self, groups_by_miner: Mapping[str, str], *, max_failures: int = 3,
                 max_mismatches: int = 1, clock: Clock = utc_now) -> None:
        if max_failures < 1 or max_mismatches < 1:
            raise ValueError("max_failures and max_mismatches must be >= 1")
        self._groups = dict(groups_by_miner)
        self._max_failures = max_failures
        self._max_mismatches = max_mismatches
        self._clock = clock
        # Sparse (issue 18): only miners with a failure, a mismatch or marked down have an entry; every
        # other tracked miner is in the default state, so 100,000 applied setpoints cost nothing here.
        self._health: dict[str, _Health] = {}
        self._lock = threading.Lock()

    def record(self, results: Iterable[SetpointResult], *, verification: bool = False) -> None:
        """Count results from ``apply`` (``verification=False``) or from a driver's verification.

        Command results: a failure (rejected / timeout / unreachable) counts towards ``max_failures``;
        applied resets it; unverified leaves it alone. Verification results: unverified counts towards
        ``max_mismatches``; applied resets both counters and makes the miner available again.
        ``not_sent`` (a transport fault) changes nothing, in either kind.

        Parameters
        ----------
        results : iterable of SetpointResult
            The results; those for miners the registry does not track are ignored.
        verification : bool, default False
            True for a driver's verification read-back, False for the results of ``apply``.
        """
        with self._lock:
            for result in results:
                self._record_one(result, verification)

    def _record_one(self, result: SetpointResult, verification: bool) -> None:
        miner_id = result.miner_id
        if miner_id not in self._groups:
            return  # not a miner this registry tracks
        if result.status is SetpointStatus.NOT_SENT:
            return  # the broker's fault, not the miner's: neither counted nor shown as its last answer
        health = self._health.get(miner_id)
        if health is None:
            if result.status is SetpointStatus.APPLIED or (
                    result.status is SetpointStatus.UNVERIFIED and not verification):
                return  # a miner in the default state stays in it: nothing to store
            health = self._health[miner_id] = _Health()
        health.last = result
        if verification:
            self._record_verification(health, result)
        else:
            self._record_command(health, result)
        if not health.failures and not health.mismatches and health.down is None:
            del self._health[miner_id]  # back to the default state

    def record_batch(self, result: Any) -> None:
        """:meth:`record` for a driver's answer to a whole batch (``drivers.batch.BatchResult``), in
        counts: per miner only for the results that are not ``applied`` and for the few miners this
        registry holds a failure for (an ``applied`` resets their count). Same outcome as
        ``record(list(result))`` for a batch that names each miner once.

        Parameters
        ----------
        result : drivers.batch.BatchResult
            The answer (``rows(statuses)`` and ``status_of(miner_ids)``).
        """
        others = [s for s in SetpointStatus if s is not SetpointStatus.APPLIED and s is not SetpointStatus.NOT_SENT]
        with self._lock:
            failing = [m for m, h in self._health.items() if h.failures]
            applied = [m for m, status in result.status_of(failing).items() if status is SetpointStatus.APPLIED]
            for _, r in result.rows(others):
                self._record_one(r, False)
            for miner_id in applied:  # applied resets the failure count; unverified leaves it alone
                health = self._health.get(miner_id)
                if health is not None:
                    health.failures = 0
                    if not health.mismatches and health.down is None:
                        del self._health[miner_id]

    def _record_command(self, health: _Health, result: SetpointResult) -> None:
        if result.status in _FAILURES:
            health.failures += 1
            if health.failures >= self._max_failures and health.down is None:
                reason = (f"{health.failures} consecutive setpoints failed; last {result.status.value}: "
                          f"{result.reason}")
                health.down = Unavailability(result.miner_id, reason, self._clock())
        elif result.status is SetpointStatus.APPLIED:
            health.failures = 0

    def _record_verification(self, health: _Health, result: SetpointResult) -> None:
        if result.status is SetpointStatus.APPLIED:
            health.failures = health.mismatches = 0
            health.down = None
            return
        if result.status in _FAILURES:
            self._record_command(health, result)
            return
        health.mismatches += 1
        if health.mismatches >= self._max_mismatches and health.down is None:
            reason = f"does not follow setpoints ({health.mismatches} failed verification): {result.reason}"
            health.down = Unavailability(result.miner_id, reason, self._clock())

    def is_available(self, miner_id: str) -> bool:
        """Whether the optimizer may plan this miner.

        Parameters
        ----------
        miner_id : str
            The miner.

        Returns
        -------
        bool
            True for a tracked miner not marked unavailable; False for one marked, or not tracked.
        """
        with self._lock:
            health = self._health.get(miner_id)
            return miner_id in self._groups and (health is None or health.down is None)

    def unavailable(self) -> dict[str, Unavailability]:
        """Miner id → why it is unavailable, for every miner marked so."""
        with self._lock:
            return {m: h.down for m, h in self._health.items() if h.down is not None}

    def restore(self, miner_id: str) -> None:
        """Operator override: make a miner available again and clear its counters.

        Parameters
        ----------
        miner_id : str
            The miner (an untracked one is ignored).
        """
        with self._lock:
            self._health.pop(miner_id, None)  # the default state: available, no counts

    def availability_by_group(self) -> dict[str, GroupAvailability]:
        """Group id → its miners' availability, groups sorted by id (what the optimizer plans with)."""
        with self._lock:
            by_group: dict[str, list[str]] = {}
            for miner, group in self._groups.items():
                by_group.setdefault(group, []).append(miner)
            out = {}
            for group, miners in sorted(by_group.items()):
                down = {m: self._health[m].down for m in miners if m in self._health and self._health[m].down is not None}
                out[group] = GroupAvailability(group, len(miners), len(miners) - len(down), down)  # type: ignore[arg-type]
            return out
