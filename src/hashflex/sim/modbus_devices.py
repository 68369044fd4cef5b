"""Simulated facility devices on real Modbus TCP servers (pymodbus) on loopback: a site meter and a PDU.

:class:`SimulatedMeter` — a power meter whose total active power register answers, at each read, the
value of a callable (e.g. a simulated fleet's total draw plus auxiliaries), encoded per a
:class:`~hashflex.drivers.modbus_meter.MeterRegisterMap` (so a test can check a float32, a little-endian
int32 in W, an export-positive meter...). ``set_fault("exception")`` answers Modbus exception 4
(device failure); ``set_fault("silent")`` never answers (the client's timeout runs out).

:class:`SimulatedPdu` — a switched PDU / breaker panel: coil ``n`` is outlet ``n`` (1 = closed, power
on); holding registers ``100 + n`` report the outlet's draw in W (0 when open). ``cycles[n]`` counts
open→close cycles. The outlet map and what each outlet feeds are the test's choice. SYNTHETIC register
layout (PDUs differ; the driver's map is configurable).

Both run on one asyncio loop in a background thread; ``start()``/``stop()`` or a ``with`` block;
``host``/``port`` tell where they listen.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from hashflex.drivers.modbus_meter import MeterRegisterMap

__all__ = ["SimulatedMeter", "SimulatedPdu"]

PDU_POWER_BASE = 100  # holding register of outlet n's draw (W) is PDU_POWER_BASE + n


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _ModbusServer(abc.ABC):
    """A pymodbus TCP server with one SimDevice on a background asyncio loop; subclasses say which
    device (:meth:`_device`)."""

    def __init__(self, host: str, port: int | None) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self.fault: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None

    @abc.abstractmethod
    def _device(self) -> Any:
        """The pymodbus simulated device this server answers for."""

    def start(self) -> Any:
        from pymodbus.server import ModbusTcpServer

        ready = threading.Event()
        errors: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._server = ModbusTcpServer(self._device(), address=(self.host, self.port))
            try:
                await self._server.listen()
            except BaseException as exc:  # noqa: BLE001 - re-raised in start()
                errors.append(exc)
            finally:
                ready.set()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"sim-modbus-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("simulated Modbus device did not start")
        if errors:
            self.stop()
            raise RuntimeError(f"simulated Modbus device could not listen on {self.host}:{self.port}: {errors[0]}")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._server is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _faulted(self) -> Any:
        from pymodbus.constants import ExcCodes

        if self.fault == "silent":
            await asyncio.sleep(3600)  # never answer; the client times out
        if self.fault == "exception":
            return ExcCodes.DEVICE_FAILURE
        return None


class SimulatedMeter(_ModbusServer):
    """A site meter answering ``import_kw()`` through ``registers`` (see the module docstring)."""

    def __init__(self, import_kw: Callable[[], float], registers: MeterRegisterMap, *, host: str = "127.0.0.1",
                 port: int | None = None) -> None:
        super().__init__(host, port)
        self.import_kw, self.registers = import_kw, registers
        self.reads = 0

    def encode(self, kw: float) -> list[int]:
        """The holding registers that carry ``kw`` in this meter's register map.

        Parameters
        ----------
        kw : float
            Site import, kW.

        Returns
        -------
        list of int
            16-bit register values (scale, sign, data type and word order of ``registers``).
        """
        from pymodbus.client import ModbusTcpClient

        regs = self.registers
        raw = kw * regs.import_sign / regs.scale_to_kw
        value: float | int = raw if regs.data_type == "float32" else int(round(raw))
        dtype = getattr(ModbusTcpClient.DATATYPE, regs.data_type.upper())
        return ModbusTcpClient.convert_to_registers(value, dtype, word_order=regs.word_order)

    def _device(self) -> Any:
        from pymodbus.simulator import DataType, SimData, SimDevice

        start = max(0, self.registers.address - 4)
        block = SimData(start, count=self.registers.count + 8, values=0, datatype=DataType.REGISTERS)
        return SimDevice(self.registers.device_id, simdata=[block], action=functools.partial(self._action))

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: Any) -> Any:
        fault = await self._faulted()
        if fault is not None:
            return fault
        self.reads += 1
        words = self.encode(self.import_kw())
        offset = self.registers.address - start_address
        for i, word in enumerate(words):
            current_registers[offset + i] = word
        return None


class SimulatedPdu(_ModbusServer):
    """A switched PDU: coil n = outlet n; register 100 + n = its draw in W (see the module docstring)."""

    def __init__(self, outlets: Mapping[int, str], power_kw_of: Callable[[str], float], *, host: str = "127.0.0.1",
                 port: int | None = None, device_id: int = 1) -> None:
        super().__init__(host, port)
        if not outlets or min(outlets) < 0 or max(outlets) >= PDU_POWER_BASE:
            raise ValueError(f"outlets: numbers must be 0..{PDU_POWER_BASE - 1}")
        self.outlets = dict(outlets)
        self.power_kw_of = power_kw_of
        self.device_id = device_id
        self.closed = {n: True for n in self.outlets}  # power on at start
        self.cycles = {n: 0 for n in self.outlets}
        self.writes: list[tuple[int, bool]] = []
        self._lock = threading.Lock()

    def is_on(self, miner_id: str) -> bool:
        """Whether the outlet that feeds ``miner_id`` is closed (powered)."""
        with self._lock:
            return next(self.closed[n] for n, m in self.outlets.items() if m == miner_id)

    def _device(self) -> Any:
        from pymodbus.simulator import DataType, SimData, SimDevice

        # distinct blocks (coils, discrete inputs, holding, input): coil n and register n don't overlap
        coils = [SimData(0, count=PDU_POWER_BASE, values=False, datatype=DataType.BITS)]
        discrete = [SimData(0, count=1, values=False, datatype=DataType.BITS)]
        holding = [SimData(0, count=PDU_POWER_BASE * 2, values=0, datatype=DataType.REGISTERS)]
        inputs = [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)]
        return SimDevice(self.device_id, simdata=(coils, discrete, holding, inputs),
                         action=functools.partial(self._action))

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[Any], set_values: Any) -> Any:
        fault = await self._faulted()
        if fault is not None:
            return fault
        with self._lock:
            if function_code in (5, 15) and set_values is not None:  # write coil(s)
                for i, value in enumerate(set_values):
                    n = address + i
                    if n not in self.outlets:
                        from pymodbus.constants import ExcCodes

                        return ExcCodes.ILLEGAL_ADDRESS
                    on = bool(value)
                    if on and not self.closed[n]:
                        self.cycles[n] += 1
                    self.closed[n] = on
                    self.writes.append((n, on))
            if function_code == 1:  # read coils: packed 16 per register, coil n = bit n % 16 of word n // 16
                for i in range(count):
                    n = address + i
                    word, bit = divmod(n - start_address, 16)
                    if self.closed.get(n, False):
                        current_registers[word] |= 1 << bit
                    else:
                        current_registers[word] &= ~(1 << bit) & 0xFFFF
            if function_code == 3:  # read holding: outlet power
                for i in range(count):
                    n = address + i - PDU_POWER_BASE
                    watts = 0
                    if n in self.outlets and self.closed[n]:
                        watts = int(round(self.power_kw_of(self.outlets[n]) * 1000))
                    current_registers[address - start_address + i] = max(0, min(65535, watts))
        return None
