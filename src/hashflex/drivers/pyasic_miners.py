"""Finding and building pyasic miner objects for :class:`~hashflex.drivers.pyasic_driver.PyasicDriver`
(endpoints, families, the model class as ``get_miner`` would pick it, reachability), and the pure
telemetry helpers (:func:`setpoint_confirmed`, :func:`reading_from_miner_data`; no pyasic needed).
Moved out of :mod:`hashflex.drivers.pyasic_driver` along its seams; that module re-exports the names.

API: ``FAMILIES``, ``pyasic_available() -> bool``, ``PyasicEndpoint(miner_id, group_id, host, family,
rpc_port=4028, web_port=80)``, ``setpoint_confirmed(mode, power_target_kw, reading, *, tolerance=0.1,
sleep_max_kw=0.1) -> (bool, str)``, ``reading_from_miner_data(miner_id, data) -> MinerReading``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from hashflex.drivers.base import SLEEP, SetpointStatus, utc_now
from hashflex.health.reading import MinerReading

__all__ = ["FAMILIES", "PyasicEndpoint", "pyasic_available", "reading_from_miner_data", "setpoint_confirmed"]

log = logging.getLogger("hashflex.drivers.pyasic_driver")  # the driver's logger, as before the split

FAMILIES = ("luxos", "vnish", "antminer", "whatsminer")
"""Families built from an explicit endpoint (any port). Others: ``family=None`` and ``get_miner``."""


def pyasic_available() -> bool:
    """Whether the optional pyasic package is installed.

    Returns
    -------
    bool
        True when ``import pyasic`` works (``pip install 'hashflex[pyasic]'``).
    """
    try:
        import pyasic  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class PyasicEndpoint:
    """Where one miner listens. ``family``: ``luxos`` | ``vnish`` | None (detect with get_miner)."""

    miner_id: str
    group_id: str
    host: str
    family: str | None
    rpc_port: int = 4028
    web_port: int = 80

    def __post_init__(self) -> None:
        if self.family is not None and self.family not in FAMILIES:
            raise ValueError(f"endpoint {self.miner_id}: family must be one of {FAMILIES} or None, "
                             f"not {self.family!r}")


class _MinerFault(Exception):
    def __init__(self, status: SetpointStatus, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _PyasicMiners:
    """Building and caching the pyasic miner objects; the driver provides the state below."""

    endpoints: dict[str, PyasicEndpoint]
    connect_timeout_s: float
    _miners: dict[str, Any]

    async def _miner(self, miner_id: str) -> Any:
        miner = self._miners.get(miner_id)
        if miner is not None:
            return miner
        e = self.endpoints[miner_id]
        if e.family in FAMILIES:
            miner = await self._model_class(e)
        else:
            import pyasic

            miner = await pyasic.get_miner(e.host)
            if miner is None:
                raise _MinerFault(SetpointStatus.UNREACHABLE, f"pyasic found no miner at {e.host}")
        if getattr(miner, "rpc", None) is not None:
            miner.rpc.port = e.rpc_port
        if getattr(miner, "web", None) is not None:
            miner.web.port = e.web_port
        self._miners[miner_id] = miner
        return miner

    async def _model_class(self, e: PyasicEndpoint) -> Any:
        """The pyasic class of the miner's model (it knows the boards, chips and fans to expect), as
        ``get_miner`` would choose it, from the model the miner reports on its own API port."""
        from pyasic.miners.backends.antminer import AntminerModern
        from pyasic.miners.backends.luxminer import LUXMiner
        from pyasic.miners.backends.vnish import VNish
        from pyasic.miners.factory import MINER_CLASSES, MinerTypes

        if e.family == "whatsminer":
            return await self._whatsminer_class(e)
        generic, kind = {"luxos": (LUXMiner, MinerTypes.LUX_OS), "vnish": (VNish, MinerTypes.VNISH),
                         "antminer": (AntminerModern, MinerTypes.ANTMINER)}[e.family or ""]
        probe = generic(e.host)
        probe.rpc.port = e.rpc_port
        model = None
        try:
            # the model as pyasic's get_miner reads it: LuxOS/stock "version" Type, VNish "stats" Type
            answer = await (probe.rpc.stats() if e.family == "vnish" else probe.rpc.version())
            model = answer["STATS" if e.family == "vnish" else "VERSION"][0]["Type"].split(" (")[0]
        except Exception as exc:  # noqa: BLE001 - the generic class still drives it
            log.info("%s: model not read (%s); using the generic %s class", e.miner_id, exc, generic.__name__)
        cls = MINER_CLASSES[kind].get(str(model).upper(), generic) if model else generic
        return cls(e.host)

    async def _whatsminer_class(self, e: PyasicEndpoint) -> Any:
        """Whatsminer: the model from ``devdetails`` and the firmware version from ``get_version`` (pyasic
        picks its API v2 or v3 class from the version), as ``get_miner`` does."""
        from pyasic.miners.factory import MINER_CLASSES, MinerTypes
        from pyasic.rpc.btminer import BTMinerRPCAPI

        rpc = BTMinerRPCAPI(e.host, port=e.rpc_port)
        model = version = None
        try:
            details = await rpc.send_command("devdetails")
            code = details["DEVDETAILS"][0]["Model"].replace("_", "")
            model = code[:-1] + "0"  # pyasic's model key: the last digit of the variant is 0
            version = (await rpc.send_command("get_version"))["Msg"]["fw_ver"]
        except Exception as exc:  # noqa: BLE001 - the generic class still drives it
            log.info("%s: model/version not read (%s); using the generic Whatsminer class", e.miner_id, exc)
        classes = MINER_CLASSES[MinerTypes.WHATSMINER]
        return classes.get(str(model).upper(), classes[None])(e.host, version)

    def _family(self, miner: Any, miner_id: str) -> str:
        family = self.endpoints[miner_id].family
        if family:
            return family
        name = type(miner).__name__.lower()
        if "lux" in name:
            return "luxos"
        if "vnish" in name:
            return "vnish"
        if "btminer" in name or "whatsminer" in name:
            return "whatsminer"
        from pyasic.miners.backends.antminer import AntminerModern

        return "antminer" if isinstance(miner, AntminerModern) else name

    async def _reachable(self, miner_id: str) -> None:
        e = self.endpoints[miner_id]
        port = e.web_port if e.family in ("vnish", "antminer") else e.rpc_port
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(e.host, port), self.connect_timeout_s)
        except asyncio.TimeoutError:
            raise _MinerFault(SetpointStatus.TIMEOUT, f"no TCP connection to {e.host}:{port} in "
                                                      f"{self.connect_timeout_s:g} s") from None
        except OSError as exc:
            raise _MinerFault(SetpointStatus.UNREACHABLE, f"{e.host}:{port}: {exc.strerror or exc}") from None
        writer.close()


def setpoint_confirmed(mode: str, power_target_kw: float, reading: MinerReading, *, tolerance: float = 0.1,
                       sleep_max_kw: float = 0.1) -> tuple[bool, str]:
    """Whether telemetry confirms a setpoint (pure). Sleep: not hashing and at most ``sleep_max_kw``.
    A mode: hashing and drawing at most ``power_target_kw × (1 + tolerance)`` (a preset under the
    target is the driver's choice) and at least half of it (a miner at a fraction is not following).
    Returns (confirmed, reason)."""
    power, hashrate = reading.power_kw, reading.hashrate_th_s
    if power is None:
        # firmware that does not report power (stock Antminer): hashing or not is all we can confirm
        if hashrate is None:
            return False, "no power or hashrate reading"
        if mode == SLEEP:
            return (hashrate == 0.0, "asleep (no power reading)" if hashrate == 0.0
                    else f"told to sleep but hashes {hashrate:.1f} TH/s")
        return (hashrate > 0.0, f"{mode}: {hashrate:.1f} TH/s (power not reported)" if hashrate > 0.0
                else f"told {mode} but not hashing")
    if mode == SLEEP:
        if (hashrate or 0.0) > 0.0 or power > sleep_max_kw:
            return False, f"told to sleep but hashes {hashrate or 0:.1f} TH/s at {power:.3f} kW"
        return True, f"asleep at {power:.3f} kW"
    if not hashrate:
        return False, f"told {mode} ({power_target_kw:.3f} kW) but not hashing ({power:.3f} kW)"
    if power > power_target_kw * (1 + tolerance):
        return False, f"draws {power:.3f} kW over its {power_target_kw:.3f} kW target"
    if power < power_target_kw * 0.5:
        return False, f"draws {power:.3f} kW, under half its {power_target_kw:.3f} kW target"
    return True, f"{mode}: {power:.3f} kW, {hashrate:.1f} TH/s"


def reading_from_miner_data(miner_id: str, data: Any) -> MinerReading:
    """pyasic ``MinerData`` → :class:`MinerReading` (hashrate from the boards when pyasic's is missing)."""
    boards = list(getattr(data, "hashboards", []) or [])
    board_th = [float(b.hashrate) for b in boards if b.hashrate is not None]
    hashrate = None
    if data.hashrate is not None and float(data.hashrate) > 0:
        hashrate = float(data.hashrate)
    elif board_th:
        hashrate = sum(board_th)  # pyasic 0.79 LuxOS: _get_hashrate always returns None
    return MinerReading(
        miner_id=miner_id, at=utc_now(),
        power_kw=None if data.wattage is None else data.wattage / 1000.0,
        hashrate_th_s=hashrate,
        chip_temp_c=tuple(b.chip_temp for b in boards), board_temp_c=tuple(b.temp for b in boards),
        fan_rpm=tuple(f.speed for f in (data.fans or [])),
        hashboards=sum(1 for b in boards if not b.missing and (b.chips or 0) > 0) if boards else None,
        expected_hashboards=getattr(data, "expected_hashboards", None) or (len(boards) or None))
