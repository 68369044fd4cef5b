"""The site meter over Modbus TCP: the measured grid import, and how much more to cut when it is over.

A revenue or check meter at the point of interconnection measures what the site really imports; the
controller's model of the load (setpoints × rated power) misses auxiliaries, cooling, a miner that
ignores its setpoint, a drifting PSU. When a fresh meter reading is over the limit in force the guard
must cut *more*, by the difference (:func:`meter_cut_kw`); when the reading is stale or missing the
guard keeps to its model (the meter cannot *raise* what the model allows: the meter only ever adds cuts).

Register map (:class:`MeterRegisterMap`, from the site profile's ``site_meter`` section via
:meth:`MeterConfig.from_mapping`): the address of total active power, the Modbus table (``holding``
registers, function 3, or ``input`` registers, function 4), the data type (``float32``, ``int32``,
``uint32``, ``int16``, ``uint16``), word order, a ``scale_to_kw`` factor (0.001 for a meter that reports
W) and ``import_sign`` (+1 if import is positive, -1 for meters that count export positive). Meters differ
(check your meter's manual for its map); nothing here assumes one vendor.

Errors: :class:`MeterError` names what failed (connection, timeout, Modbus exception code, a value
outside ``[min_kw, max_kw]``); :class:`MeterPoller` keeps the last good reading and its age and never
raises into the loop.

API: ``MeterRegisterMap(address, table="holding", data_type="float32", word_order="big", scale_to_kw=1.0,
import_sign=1, device_id=1)``; ``MeterConfig(host, port=502, registers, poll_s=1.0, max_age_s=5.0, timeout_s=1.0,
min_kw=-1e6, max_kw=1e6)``; ``ModbusMeter(config).read() -> MeterReading``; ``MeterPoller(meter, clock)``
with ``start()``, ``latest() -> MeterReading | None``, ``stop()``; ``meter_cut_kw(metered_kw, limit_kw,
age_s, max_age_s, margin_kw=0.0) -> float``; ``unmodelled_load_kw(metered_kw, modelled_kw, age_s,
max_age_s) -> float``; ``select_cuts(running, cut_kw) -> list[str]``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hashflex.drivers.base import utc_now

__all__ = ["MeterConfig", "MeterError", "MeterPoller", "MeterReading", "MeterRegisterMap", "ModbusMeter",
           "meter_cut_kw", "select_cuts", "unmodelled_load_kw"]

log = logging.getLogger(__name__)

_TYPES = {"float32": 2, "int32": 2, "uint32": 2, "int16": 1, "uint16": 1}


class MeterError(Exception):
    """A meter read that gave no usable value; the message says why."""


@dataclass(frozen=True)
class MeterRegisterMap:
    """Where and how the meter keeps total active power (see the module docstring).

    Parameters
    ----------
    address : int
        The first register of total active power, 0..65535 (the protocol address, 0-based).
    table : str, default "holding"
        ``holding`` (function 0x03, Read Holding Registers) or ``input`` (function 0x04, Read Input
        Registers): MODBUS Application Protocol Specification V1.1b3 §6.3, §6.4.
    data_type : str, default "float32"
        ``float32``, ``int32``, ``uint32`` (two registers) or ``int16``, ``uint16`` (one).
    word_order : str, default "big"
        ``big`` (high word first) or ``little``, for two-register types.
    scale_to_kw : float, default 1.0
        Multiplier from the register value to kW (0.001 for a meter that reports W); > 0.
    import_sign : int, default 1
        +1 if the meter counts import positive, -1 if it counts export positive.
    device_id : int, default 1
        The Modbus unit identifier, 0..247.

    Raises
    ------
    ValueError
        If a field is out of range; the message names it (``site_meter.registers.<field>``).
    """

    address: int
    table: str = "holding"
    data_type: str = "float32"
    word_order: str = "big"
    scale_to_kw: float = 1.0
    import_sign: int = 1
    device_id: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 65535:
            raise ValueError(f"site_meter.registers.address: must be 0..65535, got {self.address}")
        if self.table not in ("holding", "input"):
            raise ValueError(f"site_meter.registers.table: must be holding or input, got {self.table!r}")
        if self.data_type not in _TYPES:
            raise ValueError(f"site_meter.registers.data_type: must be one of {sorted(_TYPES)}, got {self.data_type!r}")
        if self.word_order not in ("big", "little"):
            raise ValueError(f"site_meter.registers.word_order: must be big or little, got {self.word_order!r}")
        if not (math.isfinite(self.scale_to_kw) and self.scale_to_kw > 0):
            raise ValueError(f"site_meter.registers.scale_to_kw: must be a positive number, got {self.scale_to_kw}")
        if self.import_sign not in (1, -1):
            raise ValueError(f"site_meter.registers.import_sign: must be 1 or -1, got {self.import_sign}")
        if not 0 <= self.device_id <= 247:
            raise ValueError(f"site_meter.registers.device_id: must be 0..247, got {self.device_id}")

    @property
    def count(self) -> int:
        """Registers to read for ``data_type``: 2 for 32-bit types, 1 for 16-bit ones."""
        return _TYPES[self.data_type]


@dataclass(frozen=True)
class MeterConfig:
    """Where the meter is and how fresh a reading must be to be the guard's truth.

    Parameters
    ----------
    host : str
        The meter's (or its gateway's) Modbus TCP host.
    registers : MeterRegisterMap
        Where and how it keeps total active power.
    port : int, default 502
        Modbus TCP port, 1..65535 (502: the registered Modbus port).
    poll_s : float, default 1.0
        Polling period, s (> 0).
    max_age_s : float, default 5.0
        Oldest reading the guard acts on, s (> 0); older ones are stale.
    timeout_s : float, default 1.0
        Timeout of one read, s (> 0).
    min_kw, max_kw : float, default -1e6, 1e6
        Plausible import range, kW; a value outside it is an error, not a reading.

    Raises
    ------
    ValueError
        If a field is out of range; the message names it (``site_meter.<field>``).
    """

    host: str
    registers: MeterRegisterMap
    port: int = 502
    poll_s: float = 1.0
    max_age_s: float = 5.0
    timeout_s: float = 1.0
    min_kw: float = -1e6
    max_kw: float = 1e6

    def __post_init__(self) -> None:
        for name in ("poll_s", "max_age_s", "timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"site_meter.{name}: must be a positive number of seconds, got {value}")
        if not 0 < self.port < 65536:
            raise ValueError(f"site_meter.port: must be 1..65535, got {self.port}")
        if not self.min_kw < self.max_kw:
            raise ValueError("site_meter.min_kw must be below site_meter.max_kw")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> MeterConfig:
        """From a profile's ``site_meter`` section; ValueError names the field that is wrong.

        Parameters
        ----------
        data : Mapping
            ``host`` and ``registers`` (a mapping with at least ``address``) required; ``port``,
            ``poll_s``, ``max_age_s``, ``timeout_s``, ``min_kw``, ``max_kw`` optional.

        Returns
        -------
        MeterConfig
            The checked configuration.

        Raises
        ------
        ValueError
            If ``data`` is not a mapping, a field is unknown, missing or out of range.
        """
        if not isinstance(data, Mapping):
            raise ValueError("site_meter: expected a mapping")
        known = {"host", "port", "registers", "poll_s", "max_age_s", "timeout_s", "min_kw", "max_kw"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"site_meter: unknown field(s) {unknown}")
        if "host" not in data or "registers" not in data:
            raise ValueError("site_meter: host and registers are required")
        regs = data["registers"]
        if not isinstance(regs, Mapping) or "address" not in regs:
            raise ValueError("site_meter.registers: a mapping with at least address")
        reg_known = {"address", "table", "data_type", "word_order", "scale_to_kw", "import_sign", "device_id"}
        if set(regs) - reg_known:
            raise ValueError(f"site_meter.registers: unknown field(s) {sorted(set(regs) - reg_known)}")
        try:
            registers = MeterRegisterMap(**{k: regs[k] for k in regs})
            return cls(host=str(data["host"]), registers=registers,
                       **{k: data[k] for k in ("port", "poll_s", "max_age_s", "timeout_s", "min_kw", "max_kw")
                          if k in data})
        except TypeError as exc:
            raise ValueError(f"site_meter: {exc}") from None


@dataclass(frozen=True)
class MeterReading:
    """The site's import (kW, positive = from the grid) read at ``at``.

    Parameters
    ----------
    import_kw : float
        The measured import, kW (positive from the grid, negative exporting).
    at : datetime
        When it was read, timezone-aware.
    """

    import_kw: float
    at: datetime

    def age_s(self, now: datetime) -> float:
        """How old the reading is at ``now``.

        Parameters
        ----------
        now : datetime
            The time, timezone-aware.

        Returns
        -------
        float
            ``now − at`` in s, never negative.
        """
        return max(0.0, (now - self.at).total_seconds())


class ModbusMeter:
    """One Modbus TCP meter; ``read()`` opens (or re-uses) a connection and raises :class:`MeterError`.

    Parameters
    ----------
    config : MeterConfig
        Where the meter is and its register map.
    clock : callable, default ``utc_now``
        Returns the time stamped on a reading, timezone-aware.
    """

    def __init__(self, config: MeterConfig, clock: Callable[[], datetime] = utc_now) -> None:
        from pymodbus.client import ModbusTcpClient

        self.config, self.clock = config, clock
        self._client = ModbusTcpClient(config.host, port=config.port, timeout=config.timeout_s, retries=0,
                                       reconnect_delay=0)
        self._lock = threading.Lock()

    def read(self) -> MeterReading:
        """Read total active power once.

        Returns
        -------
        MeterReading
            The import, kW: the registers decoded as ``data_type`` × ``scale_to_kw`` × ``import_sign``,
            stamped with the clock.

        Raises
        ------
        MeterError
            The connection failed or timed out, the meter answered a Modbus exception response
            (MODBUS Application Protocol Specification V1.1b3 §7; the code is named), or the value is
            not finite or outside ``[min_kw, max_kw]``.
        """
        from pymodbus.client import ModbusTcpClient
        from pymodbus.exceptions import ModbusException

        regs = self.config.registers
        with self._lock:
            try:
                if not self._client.connected and not self._client.connect():
                    raise MeterError(f"meter {self.config.host}:{self.config.port}: cannot connect")
                call = (self._client.read_holding_registers if regs.table == "holding"
                        else self._client.read_input_registers)
                answer = call(regs.address, count=regs.count, device_id=regs.device_id)
            except ModbusException as exc:
                self._client.close()
                raise MeterError(f"meter {self.config.host}:{self.config.port}: {exc}") from None
            except OSError as exc:
                self._client.close()
                raise MeterError(f"meter {self.config.host}:{self.config.port}: {exc}") from None
        if answer.isError():
            raise MeterError(f"meter {self.config.host}:{self.config.port}: Modbus exception "
                             f"{getattr(answer, 'exception_code', '?')} reading {regs.table} register {regs.address}")
        dtype = getattr(ModbusTcpClient.DATATYPE, regs.data_type.upper())
        raw = ModbusTcpClient.convert_from_registers(answer.registers, dtype, word_order=regs.word_order)
        value = float(raw) * regs.scale_to_kw * regs.import_sign  # type: ignore[arg-type]
        if not math.isfinite(value) or not self.config.min_kw <= value <= self.config.max_kw:
            raise MeterError(f"meter {self.config.host}:{self.config.port}: implausible import {value!r} kW "
                             f"(allowed {self.config.min_kw:g}..{self.config.max_kw:g})")
        return MeterReading(value, self.clock())

    def close(self) -> None:
        """Close the TCP connection (a later :meth:`read` opens it again)."""
        with self._lock:
            self._client.close()


class MeterPoller:
    """Reads the meter every ``poll_s`` on a thread; ``latest()`` is the last good reading (or None).

    ``errors`` counts failed reads and ``last_error`` says why; a failing meter never raises here.

    Parameters
    ----------
    meter : ModbusMeter
        The meter; its ``config.poll_s`` and ``config.max_age_s`` apply.
    clock : callable, default ``utc_now``
        The time used to age readings, timezone-aware.
    on_reading : callable, optional
        Called with every good reading, on the polling thread (the daemon passes it to the loop).
    """

    def __init__(self, meter: ModbusMeter, clock: Callable[[], datetime] = utc_now,
                 on_reading: Callable[[MeterReading], None] | None = None) -> None:
        self.meter, self.clock, self.on_reading = meter, clock, on_reading
        self.errors = 0
        self.last_error = ""
        self._latest: MeterReading | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def poll_once(self) -> MeterReading | None:
        """Read once: keep a good reading (and pass it to ``on_reading``), count and log a failure.

        Returns
        -------
        MeterReading or None
            The reading, or None when the read failed (``errors`` and ``last_error`` updated).
        """
        try:
            reading = self.meter.read()
        except MeterError as exc:
            with self._lock:
                self.errors += 1
                self.last_error = str(exc)
            log.warning("%s", exc)
            return None
        with self._lock:
            self._latest = reading
        if self.on_reading is not None:
            self.on_reading(reading)
        return reading

    def latest(self) -> MeterReading | None:
        """The last good reading, however old, or None before the first."""
        with self._lock:
            return self._latest

    def fresh_import_kw(self, max_age_s: float | None = None) -> float | None:
        """The last reading if younger than ``max_age_s`` (default the config's), else None.

        Parameters
        ----------
        max_age_s : float, optional
            Oldest reading accepted, s (default: ``config.max_age_s``).

        Returns
        -------
        float or None
            The import, kW, or None when there is no reading or it is stale.
        """
        reading = self.latest()
        limit = self.meter.config.max_age_s if max_age_s is None else max_age_s
        if reading is None or reading.age_s(self.clock()) > limit:
            return None
        return reading.import_kw

    def start(self) -> MeterPoller:
        """Start polling every ``config.poll_s`` on a daemon thread (``site-meter``).

        Returns
        -------
        MeterPoller
            This poller.
        """
        def run() -> None:
            while not self._stop.is_set():
                started = time.monotonic()
                self.poll_once()
                self._stop.wait(max(0.0, self.meter.config.poll_s - (time.monotonic() - started)))

        self._thread = threading.Thread(target=run, name="site-meter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (waits up to 5 s for the thread) and close the meter's connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.meter.close()


def meter_cut_kw(metered_kw: float | None, limit_kw: float, age_s: float | None, max_age_s: float,
                 margin_kw: float = 0.0) -> float:
    """How many kW more the guard must cut because the meter says so (>= 0).

    A reading older than ``max_age_s`` (or missing, or not finite, or with a negative age) gives
    0.0 — the guard then keeps to its model, it does not trust a stale meter in either direction.

    Parameters
    ----------
    metered_kw : float or None
        The site's measured import, kW.
    limit_kw : float
        The import limit in force, kW.
    age_s : float or None
        The reading's age, s.
    max_age_s : float
        Oldest reading acted on, s.
    margin_kw : float, default 0.0
        Keep this far under the limit, kW (meter accuracy, ramp while cutting); negative reads as 0.

    Returns
    -------
    float
        max(0, metered_kw − (limit_kw − margin_kw)), kW; 0.0 for a stale or missing reading.
    """
    if metered_kw is None or age_s is None or not math.isfinite(metered_kw) or age_s > max_age_s or age_s < 0:
        return 0.0
    return max(0.0, metered_kw - (limit_kw - max(0.0, margin_kw)))


def unmodelled_load_kw(metered_kw: float | None, modelled_kw: float, age_s: float | None, max_age_s: float) -> float:
    """The load the model misses (>= 0): a fresh meter reading minus the modelled import *of the same
    moment* (the setpoints in force when it was read, idle units, auxiliaries, minus renewables).

    Added to the guard's ``Measurements.auxiliary_kw`` it makes every later batch check (the plan's and
    the fast path's) count what the meter sees, so the guard cuts more until the *metered* import fits;
    never negative — a meter reading under the model does not let the guard allow more than the model.
    Stale, missing or non-finite readings give 0.0.

    Parameters
    ----------
    metered_kw : float or None
        The site's measured import, kW.
    modelled_kw : float
        The modelled import at the moment of the reading, kW.
    age_s : float or None
        The reading's age, s.
    max_age_s : float
        Oldest reading used, s.

    Returns
    -------
    float
        max(0, metered_kw − modelled_kw), kW; 0.0 for a stale, missing or non-finite reading.
    """
    if metered_kw is None or age_s is None or not math.isfinite(metered_kw) or not 0 <= age_s <= max_age_s:
        return 0.0
    return max(0.0, metered_kw - modelled_kw)


def select_cuts(running: Mapping[str, tuple[float, float]], cut_kw: float) -> list[str]:
    """Which running miners to sleep to shed ``cut_kw``: ``running`` is miner id → (power kW, J/TH).

    Least efficient (highest J/TH) first, then the largest, then by id; stops once the sum of their
    power reaches ``cut_kw``. Returns all of them when the fleet cannot shed that much (the meter
    still reads over the limit: the rest is not ours to cut).

    Parameters
    ----------
    running : Mapping of str to (float, float)
        Miner id → (power, kW; efficiency, J/TH) of the miners running.
    cut_kw : float
        The load to shed, kW (from :func:`meter_cut_kw`).

    Returns
    -------
    list of str
        The miners to sleep, in the order chosen; empty when ``cut_kw <= 0``.
    """
    if cut_kw <= 0:
        return []
    order = sorted(running.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))
    chosen, shed = [], 0.0
    for miner_id, (power_kw, _j_th) in order:
        if shed >= cut_kw:
            break
        chosen.append(miner_id)
        shed += power_kw
    return chosen
