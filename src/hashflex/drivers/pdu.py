"""A "powered off" state reached through a switched PDU or breaker over Modbus TCP.

A sleeping miner still draws standby power (control board, PSU, fans at idle): on a 100 MW site of
~30,000 miners at ~20 W each that is ~0.6 MW, at scarcity prices ($5,000–9,000/MWh in Winter Storm Uri)
thousands of dollars an hour. Opening the outlet (or breaker) gives zero draw at the price of a cold
restart (firmware boot, longer than a wake from sleep) and a relay/PSU cycle, so cycles are counted and
budgeted. It is also the remote disconnect new large loads in Texas must have.

Modes: ``off`` (:data:`POWERED_OFF`) opens the miner's outlet; any other mode (``sleep`` included)
closes it (power on) if it is open — the miner then cold-boots, ``restart_minutes`` in
:class:`PoweredOffModel`. Safety: opening an outlet is always allowed (it is the safe side); closing
one is refused when the outlet's cycle budget for the last 24 h is spent or when it has been off for
less than ``min_off_s`` (a PSU must discharge), so a flapping plan cannot wear the relays.

:class:`PduDriver` follows the :class:`~hashflex.drivers.base.MinerDriver` protocol (``apply``,
``close``) plus ``power_off(ids)``, ``power_on(ids)``, ``is_on(ids)``, ``outlet_power_kw(ids)`` and
``capabilities(id)`` (``power_off=True``). Coil ``n`` = outlet ``n`` (1 closed), holding register
``power_register_base + n`` = the outlet's draw in W: the map of the simulated PDU in tests; real PDUs
differ (set ``coil`` per outlet and the base). Every write is read back (``applied`` only when the coil
reads the new state). :class:`PoweredOffDriver` puts a firmware driver and a PDU driver together: ``off``
= firmware sleep first (a clean stop), then open the outlet; any other mode = close the outlet if open,
then the firmware setpoint (``unverified`` while the miner cold-boots).

Pure helpers for the optimizer and the fast path: :func:`standby_cost_usd` and :func:`worth_powering_off`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hashflex.drivers.base import (SLEEP, MinerCapabilities, MinerDriver, Setpoint, SetpointResult, SetpointStatus)

__all__ = ["POWERED_OFF", "PduDriver", "PduOutlet", "PoweredOffDriver", "PoweredOffModel", "standby_cost_usd",
           "worth_powering_off"]

POWERED_OFF = "off"
"""The mode name of the powered-off state: outlet open, zero draw."""


@dataclass(frozen=True)
class PoweredOffModel:
    """What "powered off" costs and gives, per miner group (for the optimizer).

    Parameters
    ----------
    draw_kw : float, default 0.0
        Draw of a miner with its outlet open, kW (nothing).
    restart_minutes : float, default 10.0
        Cold boot: firmware start, then the normal boot to hashing, min.
    max_cycles_per_day : int, default 4
        Power-on cycles allowed per outlet in any 24 h (relay/PSU wear budget).
    min_off_s : float, default 30.0
        Shortest time off before an outlet may close again, s (a PSU must discharge).
    """

    draw_kw: float = 0.0  # an open outlet draws nothing
    restart_minutes: float = 10.0  # cold boot: firmware start, then the normal boot to hashing
    max_cycles_per_day: int = 4
    min_off_s: float = 30.0


@dataclass(frozen=True)
class PduOutlet:
    """Which PDU outlet feeds which miner.

    Parameters
    ----------
    miner_id : str
        The miner.
    host : str
        The PDU's Modbus TCP host.
    port : int
        The PDU's Modbus TCP port.
    outlet : int
        The outlet: coil ``outlet`` switches it, holding register ``power_register_base + outlet``
        holds its draw in W (the simulated PDU's map; real PDUs differ).
    device_id : int, default 1
        The Modbus unit identifier of the PDU.
    """

    miner_id: str
    host: str
    port: int
    outlet: int
    device_id: int = 1


def standby_cost_usd(idle_kw: float, units: int, price_usd_mwh: float, hours: float) -> float:
    """What ``units`` sleeping miners at ``idle_kw`` each cost over ``hours`` at ``price_usd_mwh``.

    Parameters
    ----------
    idle_kw : float
        Standby draw of one sleeping miner, kW.
    units : int
        Miners asleep.
    price_usd_mwh : float
        Energy price, $/MWh.
    hours : float
        Duration, h.

    Returns
    -------
    float
        ``idle_kw · units · hours · price_usd_mwh / 1000``, $.
    """
    return idle_kw * units * hours * price_usd_mwh / 1000.0


def worth_powering_off(idle_kw: float, price_usd_mwh: float, expected_off_hours: float, model: PoweredOffModel,
                       cycles_last_24h: int, *, cycle_cost_usd: float = 0.5) -> bool:
    """True when opening the outlet saves more than a cycle costs and the miner stays off longer than its
    cold restart, with cycle budget left. ``cycle_cost_usd``: wear of a relay/PSU cycle (site's estimate).

    Parameters
    ----------
    idle_kw : float
        Standby draw of the sleeping miner, kW.
    price_usd_mwh : float
        Expected energy price while off, $/MWh (a negative price saves nothing).
    expected_off_hours : float
        How long it would stay off, h.
    model : PoweredOffModel
        Draw when off, cold restart time and the cycle budget.
    cycles_last_24h : int
        Power-on cycles of its outlet in the last 24 h.
    cycle_cost_usd : float, default 0.5
        Wear cost of one relay/PSU cycle, $.

    Returns
    -------
    bool
        False when the cycle budget is spent or the off time is not longer than the cold restart;
        else whether ``(idle_kw − draw_kw) · expected_off_hours · max(price, 0) / 1000`` exceeds
        ``cycle_cost_usd``.
    """
    if cycles_last_24h >= model.max_cycles_per_day or expected_off_hours * 60 <= model.restart_minutes:
        return False
    saved = (idle_kw - model.draw_kw) * expected_off_hours * max(price_usd_mwh, 0.0) / 1000.0
    return saved > cycle_cost_usd


class PduDriver:
    """Outlets over Modbus TCP (see the module docstring); thread-safe.

    Coils are read with Modbus function 0x01 (Read Coils) and written with 0x05 (Write Single Coil),
    outlet draws read with 0x03 (Read Holding Registers): MODBUS Application Protocol Specification
    V1.1b3 §6.1, §6.5, §6.3. One TCP connection per PDU, opened on first use and dropped on an error.

    Parameters
    ----------
    outlets : iterable of PduOutlet
        The outlets, one per miner.
    model : PoweredOffModel, optional
        Cycle budget and minimum off time enforced on power-on (default ``PoweredOffModel()``).
    timeout_s : float, default 1.0
        Modbus TCP timeout per request, s (no retries).
    power_register_base : int, default 100
        Holding register of outlet ``n``'s draw (W) is ``power_register_base + n``.
    monotonic : callable, default ``time.monotonic``
        Clock for the cycle window and minimum off time, s.
    """

    def __init__(self, outlets: Iterable[PduOutlet], *, model: PoweredOffModel = PoweredOffModel(),
                 timeout_s: float = 1.0, power_register_base: int = 100,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.outlets = {o.miner_id: o for o in outlets}
        self.model, self.timeout_s, self.power_register_base = model, timeout_s, power_register_base
        self.monotonic = monotonic
        self._clients: dict[tuple[str, int], object] = {}
        self._cycles: dict[str, deque[float]] = {m: deque() for m in self.outlets}
        self._opened_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def _client(self, outlet: PduOutlet):  # noqa: ANN202 - pymodbus ModbusTcpClient
        from pymodbus.client import ModbusTcpClient

        key = (outlet.host, outlet.port)
        client = self._clients.get(key)
        if client is None:
            client = ModbusTcpClient(outlet.host, port=outlet.port, timeout=self.timeout_s, retries=0,
                                     reconnect_delay=0)
            self._clients[key] = client
        if not client.connected and not client.connect():  # type: ignore[attr-defined]
            raise ConnectionError(f"PDU {outlet.host}:{outlet.port}: cannot connect")
        return client

    def capabilities(self, miner_id: str) -> MinerCapabilities | None:
        """What the PDU can do with one miner: power it off and on, and read its outlet back.

        Parameters
        ----------
        miner_id : str
            The miner.

        Returns
        -------
        MinerCapabilities or None
            ``power_off=True``, ``verify=True``, no sleep/wake or power target, the cold restart and
            cycle budget in ``notes``; None for a miner without an outlet.
        """
        if miner_id not in self.outlets:
            return None
        return MinerCapabilities(miner_id, "pdu", sleep_wake=False, power_target=False, verify=True,
                                 power_off=True, notes=f"cold restart {self.model.restart_minutes:g} min, "
                                                       f"{self.model.max_cycles_per_day} cycles/day")

    def cycles_last_24h(self, miner_id: str) -> int:
        """Power-on cycles of the miner's outlet in the last 24 h (counted by this driver).

        Parameters
        ----------
        miner_id : str
            A miner with an outlet.

        Returns
        -------
        int
            Cycles within the last 86,400 s of the ``monotonic`` clock.

        Raises
        ------
        KeyError
            If the miner has no outlet.
        """
        with self._lock:
            return self._count(miner_id)

    def _count(self, miner_id: str) -> int:
        window = self._cycles[miner_id]
        while window and self.monotonic() - window[0] > 86400:
            window.popleft()
        return len(window)

    def _switch(self, miner_id: str, on: bool) -> SetpointResult:
        from pymodbus.exceptions import ModbusException

        started = self.monotonic()
        outlet = self.outlets.get(miner_id)
        if outlet is None:
            return SetpointResult(miner_id, SetpointStatus.REJECTED, "no PDU outlet for this miner")
        try:
            with self._lock:
                client = self._client(outlet)
                state = client.read_coils(outlet.outlet, count=1, device_id=outlet.device_id)
                if state.isError():
                    return SetpointResult(miner_id, SetpointStatus.REJECTED, f"PDU read of outlet {outlet.outlet} "
                                          f"failed: exception {getattr(state, 'exception_code', '?')}")
                if bool(state.bits[0]) == on:
                    return SetpointResult(miner_id, SetpointStatus.APPLIED, f"outlet {outlet.outlet} already "
                                          + ("on" if on else "off"), self.monotonic() - started)
                if on:
                    refusal = self._refuse_power_on(miner_id)
                    if refusal:
                        return SetpointResult(miner_id, SetpointStatus.REJECTED, refusal)
                answer = client.write_coil(outlet.outlet, on, device_id=outlet.device_id)
                if answer.isError():
                    return SetpointResult(miner_id, SetpointStatus.REJECTED, f"PDU refused outlet {outlet.outlet}: "
                                          f"exception {getattr(answer, 'exception_code', '?')}")
                check = client.read_coils(outlet.outlet, count=1, device_id=outlet.device_id)
                if check.isError() or bool(check.bits[0]) != on:
                    return SetpointResult(miner_id, SetpointStatus.UNVERIFIED,
                                          f"outlet {outlet.outlet} does not read back " + ("on" if on else "off"))
                if on:
                    self._cycles[miner_id].append(self.monotonic())
                    self._opened_at.pop(miner_id, None)
                else:
                    self._opened_at[miner_id] = self.monotonic()
        except (ModbusException, OSError) as exc:
            self._drop(outlet)
            status = SetpointStatus.TIMEOUT if "No response" in str(exc) else SetpointStatus.UNREACHABLE
            return SetpointResult(miner_id, status, f"PDU {outlet.host}:{outlet.port}: {exc}")
        return SetpointResult(miner_id, SetpointStatus.APPLIED, f"outlet {outlet.outlet} "
                              + ("closed (power on, cold boot)" if on else "opened (powered off)"),
                              self.monotonic() - started)

    def _refuse_power_on(self, miner_id: str) -> str:
        if self._count(miner_id) >= self.model.max_cycles_per_day:
            return (f"power-on refused: {self.model.max_cycles_per_day} cycles in the last 24 h already "
                    "(relay/PSU wear budget)")
        opened = self._opened_at.get(miner_id)
        if opened is not None and self.monotonic() - opened < self.model.min_off_s:
            return f"power-on refused: off for {self.monotonic() - opened:.0f} s, min_off_s {self.model.min_off_s:g}"
        return ""

    def _drop(self, outlet: PduOutlet) -> None:
        with self._lock:
            client = self._clients.pop((outlet.host, outlet.port), None)
        if client is not None:
            client.close()  # type: ignore[attr-defined]

    def power_off(self, miner_ids: Iterable[str]) -> list[SetpointResult]:
        """Open each miner's outlet (always allowed: it is the safe side), read back.

        Parameters
        ----------
        miner_ids : iterable of str
            The miners.

        Returns
        -------
        list of SetpointResult
            One per miner, in order: ``applied`` when the coil reads open, ``unverified`` when it does
            not read back, ``rejected`` for a miner without an outlet or a Modbus exception response,
            ``timeout`` / ``unreachable`` for transport errors (results, not exceptions).
        """
        return [self._switch(m, False) for m in miner_ids]

    def power_on(self, miner_ids: Iterable[str]) -> list[SetpointResult]:
        """Close each miner's outlet (the miner cold-boots), read back.

        Refused (``rejected``) when the outlet's cycle budget for the last 24 h is spent or it has
        been off for less than ``min_off_s``.

        Parameters
        ----------
        miner_ids : iterable of str
            The miners.

        Returns
        -------
        list of SetpointResult
            One per miner, in order, as :meth:`power_off`.
        """
        return [self._switch(m, True) for m in miner_ids]

    def is_on(self, miner_ids: Iterable[str]) -> dict[str, bool | None]:
        """Each outlet's state (None when the PDU does not answer).

        Parameters
        ----------
        miner_ids : iterable of str
            Miners with an outlet.

        Returns
        -------
        dict of str to bool or None
            Miner id → True (closed, powered), False (open), None (no answer or an error response).

        Raises
        ------
        KeyError
            If a miner has no outlet.
        """
        out: dict[str, bool | None] = {}
        for miner_id in miner_ids:
            outlet = self.outlets[miner_id]
            try:
                with self._lock:
                    answer = self._client(outlet).read_coils(outlet.outlet, count=1, device_id=outlet.device_id)
                out[miner_id] = None if answer.isError() else bool(answer.bits[0])
            except Exception:  # noqa: BLE001
                self._drop(outlet)
                out[miner_id] = None
        return out

    def outlet_power_kw(self, miner_ids: Iterable[str]) -> dict[str, float | None]:
        """Each outlet's measured draw.

        Parameters
        ----------
        miner_ids : iterable of str
            Miners with an outlet.

        Returns
        -------
        dict of str to float or None
            Miner id → draw, kW (the register's W / 1000); None when the PDU does not answer.

        Raises
        ------
        KeyError
            If a miner has no outlet.
        """
        out: dict[str, float | None] = {}
        for miner_id in miner_ids:
            outlet = self.outlets[miner_id]
            try:
                with self._lock:
                    answer = self._client(outlet).read_holding_registers(
                        self.power_register_base + outlet.outlet, count=1, device_id=outlet.device_id)
                out[miner_id] = None if answer.isError() else answer.registers[0] / 1000.0
            except Exception:  # noqa: BLE001
                self._drop(outlet)
                out[miner_id] = None
        return out

    def apply(self, batch: list[Setpoint]) -> list[SetpointResult]:
        """``off`` opens the outlet; any other mode closes it if open. One result per setpoint.

        Parameters
        ----------
        batch : list of Setpoint
            The setpoints; mode ``off`` (:data:`POWERED_OFF`) powers off, any other powers on.

        Returns
        -------
        list of SetpointResult
            One per setpoint, in order (see :meth:`power_off`, :meth:`power_on`).
        """
        return [self._switch(s.miner_id, s.mode != POWERED_OFF) for s in batch]

    def close(self) -> None:
        """Close every Modbus TCP connection (a later call opens them again)."""
        with self._lock:
            for client in self._clients.values():
                client.close()  # type: ignore[attr-defined]
            self._clients.clear()


class PoweredOffDriver:
    """A firmware driver and a PDU driver as one :class:`MinerDriver` (see the module docstring).

    Parameters
    ----------
    miners : MinerDriver
        The firmware driver (sleep first, then the setpoints of powered miners).
    pdu : PduDriver
        The outlets.
    setpoint_factory : callable
        ``setpoint_factory(setpoint, mode)`` returns a copy of ``setpoint`` with another mode.
    """

    def __init__(self, miners: MinerDriver, pdu: PduDriver, setpoint_factory: Callable[[Setpoint, str],
                                                                                       Setpoint]) -> None:
        """``setpoint_factory(setpoint, mode)`` returns a copy of ``setpoint`` with another mode (the
        loop's setpoint type differs from :class:`~hashflex.drivers.base.Setpoint`)."""
        self.miners, self.pdu, self.setpoint_factory = miners, pdu, setpoint_factory

    def apply(self, batch: list[Setpoint]) -> list[SetpointResult]:
        """``off``: firmware sleep, then open the outlet; other modes: close the outlet if open, else
        the firmware setpoint.

        Parameters
        ----------
        batch : list of Setpoint
            The setpoints, any mode of the miner's group, ``sleep`` or ``off``.

        Returns
        -------
        list of SetpointResult
            One per setpoint, in order. ``off``: the PDU's result, the firmware sleep's status in the
            reason. A miner powered on from off: ``unverified`` while it cold-boots (or the PDU's
            failure). Others: the firmware driver's result.
        """
        results: dict[int, SetpointResult] = {}
        offs = [i for i, s in enumerate(batch) if s.mode == POWERED_OFF]
        ons = [i for i, s in enumerate(batch) if s.mode != POWERED_OFF]
        if offs:
            # a clean stop first; the outlet opens whatever the firmware said (off is the safe side)
            stopped = self.miners.apply([self.setpoint_factory(batch[i], SLEEP) for i in offs])
            for i, soft, hard in zip(offs, stopped, self.pdu.apply([batch[i] for i in offs])):
                reason = f"{hard.reason}; firmware sleep first: {soft.status.value}"
                results[i] = SetpointResult(batch[i].miner_id, hard.status, reason, hard.latency_s)
        if ons:
            pdu_ids = [i for i in ons if batch[i].miner_id in self.pdu.outlets]
            was_off = {batch[i].miner_id for i in pdu_ids if self.pdu.is_on([batch[i].miner_id]).get(
                batch[i].miner_id) is False}
            powered = {batch[i].miner_id: r for i, r in zip(pdu_ids, self.pdu.apply([batch[i] for i in pdu_ids]))}
            firmware = [i for i in ons if batch[i].miner_id not in was_off]
            for i, r in zip(firmware, self.miners.apply([batch[i] for i in firmware])):
                results[i] = r
            for i in ons:
                miner_id = batch[i].miner_id
                if miner_id in was_off:
                    p = powered[miner_id]
                    status = SetpointStatus.UNVERIFIED if p.ok else p.status
                    results[i] = SetpointResult(miner_id, status, f"{p.reason}; cold boot "
                                                f"{self.pdu.model.restart_minutes:g} min before {batch[i].mode}")
        return [results[i] for i in range(len(batch))]

    def capabilities(self, miner_id: str) -> MinerCapabilities | None:
        """The firmware's capabilities with ``power_off`` from the PDU (the dashboard's and ``/metrics``'
        available-for-curtailment counts a miner with an outlet as able to be powered off).

        Parameters
        ----------
        miner_id : str
            The miner.

        Returns
        -------
        MinerCapabilities or None
            The firmware driver's declaration (sleep/wake assumed when it declares none) with
            ``power_off`` set when the miner has an outlet; None for a miner neither knows.
        """
        declare = getattr(self.miners, "capabilities", None)
        firmware = declare(miner_id) if declare is not None else None
        outlet = self.pdu.capabilities(miner_id)
        if firmware is None and outlet is None:
            return None
        if firmware is None:
            firmware = MinerCapabilities(miner_id, "firmware", sleep_wake=True, power_target=False, verify=False)
        if outlet is None:
            return firmware
        notes = "; ".join(n for n in (firmware.notes, outlet.notes) if n)
        return dataclasses.replace(firmware, power_off=True, notes=notes)

    def close(self) -> None:
        """Close the firmware driver and the PDU driver."""
        self.miners.close()
        self.pdu.close()
