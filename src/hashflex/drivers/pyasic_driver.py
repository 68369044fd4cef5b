"""A driver for the firmware zoo through pyasic (optional extra ``hashflex[pyasic]``).

pyasic (github.com/UpstreamData/pyasic, Apache-2.0) speaks each firmware's own API: LuxOS,
VNish, stock Antminer (bmminer) and Whatsminer (btminer API v2) here (tested against our simulators in :mod:`hashflex.sim.miners` /
:mod:`hashflex.sim.firmware`),
and the other families pyasic supports with the same calls. What a setpoint becomes:

- ``sleep`` → ``miner.stop_mining()`` (LuxOS ``curtail sleep``, VNish ``POST mining/stop``);
- stock Antminer (no power target): the group's highest-power mode → "normal" power mode, its
  lowest → "low" (pyasic ``MiningModeConfig``); other modes are refused (sleep fallback);
- Whatsminer: ``adjust_power_limit`` to the mode's power (the firmware takes any value in its range);
- a mode → a power target of the mode's ``power_kw`` (the highest tuned preset/profile at or under
  it, as pyasic's ``set_power_limit`` chooses), then ``miner.resume_mining()``. If the power target is
  refused the driver sleeps the miner (the safe default: a miner left at an unknown preset could draw
  more than the plan allows) and reports ``rejected`` "... fell back to sleep".

Capabilities (:meth:`PyasicDriver.capabilities`) come from pyasic's class flags
(``supports_shutdown``, ``supports_presets``, ``supports_power_modes``) and the presets the miner
reports (:meth:`PyasicDriver.discover`), so the dispatcher asks what a miner can do instead of probing.

Known pyasic 0.79 limitations worked around here (reported by this module's tests):
- VNish: ``VNish.set_power_limit`` always returns False — ``MiningModeConfig.preset.from_vnish``
  resolves to the enum's own ``from_vnish`` (enum members inherit class attributes) and the config
  comes back "normal" with no presets. The driver picks the preset from ``web.autotune_presets()``
  and posts it with pyasic's ``web.set_power_limit``, then reads ``web.settings()`` back.
- LuxOS: ``LUXMiner._get_hashrate`` returns None unconditionally (a misplaced ``return None``);
  the driver takes the hashrate from the hashboards' sum.
- pyasic's RPC returns ``{}`` instead of raising when a connection is refused, so the driver
  checks reachability with a TCP connect first (``unreachable`` instead of a misleading ``rejected``).

Ports: pyasic's ``get_miner(ip)`` only probes the standard ports (80, 443, 4028, 4433), so
:class:`PyasicEndpoint` takes the ``family`` and ports explicitly and builds the miner class itself;
with ``family=None`` it uses ``get_miner`` (standard ports only).

Concurrency and deadlines: one asyncio loop on a background thread; every miner of a batch at once
(``max_concurrency`` caps it), each with its own total ``deadline_s``; ``apply`` never raises for a
miner's fault. API: ``PyasicEndpoint(miner_id, group_id, host, family, rpc_port=4028, web_port=80)``;
``PyasicDriver(endpoints, mode_power_kw, *, deadline_s=10.0, tolerance=0.1, sleep_max_kw=0.1,
max_concurrency=200)`` where ``mode_power_kw`` is group id → {mode: kW}; ``discover()``,
``capabilities(miner_id)``, ``apply(batch)``, ``verify(timeout_s=0.0, batch=None)``,
``read(miner_ids=None) -> dict[miner_id, MinerReading]``, ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, TypeVar

from hashflex.drivers.base import SLEEP, MinerCapabilities, Setpoint, SetpointResult, SetpointStatus, utc_now
from hashflex.drivers.pyasic_miners import (  # re-exported: these names stay importable from here
    FAMILIES,
    PyasicEndpoint,
    _MinerFault,
    _PyasicMiners,
    pyasic_available,
    reading_from_miner_data,
    setpoint_confirmed,
)
from hashflex.health.reading import MinerReading

__all__ = ["FAMILIES", "PyasicDriver", "PyasicEndpoint", "pyasic_available", "reading_from_miner_data",
           "setpoint_confirmed"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class PyasicDriver(_PyasicMiners):
    """Setpoints through pyasic; see the module docstring. Thread-safe ``apply``/``verify``."""

    def __init__(self, endpoints: Iterable[PyasicEndpoint], mode_power_kw: Mapping[str, Mapping[str, float]], *,
                 deadline_s: float = 10.0, tolerance: float = 0.1, sleep_max_kw: float = 0.1,
                 max_concurrency: int = 200, connect_timeout_s: float = 1.0) -> None:
        if not pyasic_available():
            raise ImportError("the pyasic driver needs pyasic: pip install 'hashflex[pyasic]'")
        if deadline_s <= 0 or max_concurrency < 1 or connect_timeout_s <= 0:
            raise ValueError("deadline_s and connect_timeout_s must be > 0 and max_concurrency >= 1")
        self.endpoints = {e.miner_id: e for e in endpoints}
        for e in self.endpoints.values():
            if e.group_id not in mode_power_kw:
                raise ValueError(f"mode_power_kw: no modes for group {e.group_id!r} (miner {e.miner_id})")
        self.mode_power_kw = {g: dict(m) for g, m in mode_power_kw.items()}
        self.deadline_s, self.tolerance, self.sleep_max_kw = deadline_s, tolerance, sleep_max_kw
        self.connect_timeout_s = connect_timeout_s
        self._miners: dict[str, Any] = {}
        self._presets_w: dict[str, tuple[int, ...]] = {}
        self._pending: dict[str, Setpoint] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._sem: asyncio.Semaphore | None = None
        self._max_concurrency = max_concurrency
        self._thread = threading.Thread(target=self._loop.run_forever, name="pyasic-driver", daemon=True)
        self._thread.start()
        self._closed = False

    # -- plumbing
    def _run(self, coro: Awaitable[_T], timeout_s: float) -> _T:
        if self._closed:
            raise RuntimeError("driver closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)  # type: ignore[arg-type]

    # -- capabilities
    def discover(self, timeout_s: float | None = None) -> dict[str, MinerCapabilities]:
        """Read every miner's presets (W) once; returns the capabilities of those that answered."""
        async def one(miner_id: str) -> None:
            try:
                await asyncio.wait_for(self._discover_one(miner_id), self.deadline_s)
            except Exception as exc:  # noqa: BLE001 - a miner that does not answer keeps no presets
                log.info("discover %s: %s", miner_id, exc)

        async def all_() -> None:
            await asyncio.gather(*(one(m) for m in self.endpoints))

        self._run(all_(), timeout_s or self.deadline_s + 5)
        return {m: c for m in self.endpoints if (c := self.capabilities(m)) is not None and m in self._presets_w}

    async def _discover_one(self, miner_id: str) -> None:
        miner = await self._miner(miner_id)
        presets = await self._preset_watts(miner, miner_id)
        with self._lock:
            self._presets_w[miner_id] = presets

    async def _preset_watts(self, miner: Any, miner_id: str) -> tuple[int, ...]:
        family = self._family(miner, miner_id)
        if family in ("antminer", "whatsminer"):
            return ()  # stock Antminer: power modes only; Whatsminer: any power limit (no presets)
        if family == "vnish":
            answer = await miner.web.autotune_presets()
            rows = answer.get("presets", []) if isinstance(answer, dict) else answer or []
            return tuple(sorted(int(r["name"]) for r in rows if r.get("status") == "tuned"
                                and str(r.get("name", "")).isdigit()))
        config = await miner.get_config()
        presets = getattr(config.mining_mode, "available_presets", None) or []
        return tuple(sorted(int(p.power) for p in presets if p.power is not None))

    def capabilities(self, miner_id: str) -> MinerCapabilities | None:
        """What the miner can do (from pyasic's class flags and the presets read by :meth:`discover`)."""
        e = self.endpoints.get(miner_id)
        if e is None:
            return None
        miner = self._miners.get(miner_id)
        family = e.family or (self._family(miner, miner_id) if miner is not None else "unknown")
        cls: Any
        if miner is not None:
            cls = type(miner)
        elif family == "luxos":
            from pyasic.miners.backends.luxminer import LUXMiner as cls
        elif family == "vnish":
            from pyasic.miners.backends.vnish import VNish as cls
        elif family == "antminer":
            from pyasic.miners.backends.antminer import AntminerModern as cls
        elif family == "whatsminer":
            from pyasic.miners.backends.btminer import BTMinerV2 as cls
        else:
            cls = object
        with self._lock:
            presets = self._presets_w.get(miner_id, ())
        # Whatsminer takes any power limit (adjust_power_limit); preset firmwares their presets
        target = bool(getattr(cls, "supports_presets", False)) or family == "whatsminer"
        modes = tuple(m for m, kw in self.mode_power_kw[e.group_id].items()
                      if not presets or any(p <= kw * 1000 * (1 + 1e-9) for p in presets))
        notes = "" if presets or not target else "presets not read yet (call discover())"
        if family == "whatsminer":
            notes = "power limit: any value the firmware accepts (adjust_power_limit); verify by power"
        if family == "antminer":
            # stock firmware: "normal" (the group's highest-power mode) and "low" (its lowest), no watts
            modes = tuple(dict.fromkeys(self._stock_modes(e.group_id).values()))
            notes = "stock firmware: normal/low power modes only, no power target; power not reported"
        return MinerCapabilities(miner_id=miner_id, family=family,
                                 sleep_wake=bool(getattr(cls, "supports_shutdown", False)),
                                 power_target=target, verify=True, modes=modes, power_targets_w=presets,
                                 notes=notes)

    # -- setpoints
    def apply(self, batch: list[Setpoint]) -> list[SetpointResult]:
        """One result per setpoint, same order; never raises for a miner's fault."""
        if not batch:
            return []
        if self._closed:
            return [SetpointResult(s.miner_id, SetpointStatus.UNREACHABLE, "driver closed") for s in batch]

        async def all_() -> list[SetpointResult]:
            if self._sem is None:
                self._sem = asyncio.Semaphore(self._max_concurrency)
            # sleeps first: when concurrency binds, curtailment must not wait behind wake-ups
            order = sorted(range(len(batch)), key=lambda i: not batch[i].mode == SLEEP)
            results: list[SetpointResult | None] = [None] * len(batch)

            async def one(i: int) -> None:
                results[i] = await self._apply_one(batch[i])

            await asyncio.gather(*(one(i) for i in order))
            return [r for r in results if r is not None]

        results = self._run(all_(), self.deadline_s + 10)
        with self._lock:
            for setpoint, result in zip(batch, results):
                if result.status in (SetpointStatus.APPLIED, SetpointStatus.UNVERIFIED):
                    self._pending[setpoint.miner_id] = setpoint
        return results

    async def _apply_one(self, setpoint: Setpoint) -> SetpointResult:
        started = time.monotonic()
        if setpoint.miner_id not in self.endpoints:
            return SetpointResult(setpoint.miner_id, SetpointStatus.REJECTED, "unknown miner")
        e = self.endpoints[setpoint.miner_id]
        if setpoint.mode != SLEEP and setpoint.mode not in self.mode_power_kw[e.group_id]:
            return SetpointResult(setpoint.miner_id, SetpointStatus.REJECTED,
                                  f"unknown mode {setpoint.mode!r} for group {e.group_id}")
        if setpoint.expires_at <= utc_now():
            return SetpointResult(setpoint.miner_id, SetpointStatus.REJECTED, "setpoint already expired")
        assert self._sem is not None
        try:
            async with self._sem:
                status, reason = await asyncio.wait_for(self._command(setpoint), self.deadline_s
                                                        - (time.monotonic() - started))
        except asyncio.TimeoutError:
            status, reason = SetpointStatus.TIMEOUT, f"no answer within the {self.deadline_s:g} s deadline"
        except _MinerFault as fault:
            status, reason = fault.status, fault.reason
        except Exception as exc:  # noqa: BLE001 - pyasic raises many kinds; a miner's fault is a result
            status, reason = SetpointStatus.REJECTED, f"{type(exc).__name__}: {exc}"
        return SetpointResult(setpoint.miner_id, status, reason, time.monotonic() - started)

    async def _command(self, setpoint: Setpoint) -> tuple[SetpointStatus, str]:
        await self._reachable(setpoint.miner_id)
        miner = await self._miner(setpoint.miner_id)
        if setpoint.mode == SLEEP:
            if await miner.stop_mining():
                return SetpointStatus.APPLIED, "stop_mining accepted"
            return SetpointStatus.REJECTED, "stop_mining refused"
        group_id = self.endpoints[setpoint.miner_id].group_id
        watts = int(round(self.mode_power_kw[group_id][setpoint.mode] * 1000))
        if self._family(miner, setpoint.miner_id) == "antminer":
            try:
                ok, why = await self._stock_mode(miner, group_id, setpoint.mode)
            except Exception as exc:  # noqa: BLE001
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if ok:
                return SetpointStatus.APPLIED, why
            slept = await self._safe_sleep(miner)
            return SetpointStatus.REJECTED, f"{why}; " + ("fell back to sleep" if slept else
                                                          "sleep fallback ALSO failed")
        try:
            ok, why = await self._set_power(miner, setpoint.miner_id, watts)
        except Exception as exc:  # noqa: BLE001
            ok, why = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            slept = await self._safe_sleep(miner)
            return SetpointStatus.REJECTED, f"power target {watts} W refused ({why}); " + (
                "fell back to sleep" if slept else "sleep fallback ALSO failed")
        if not await miner.resume_mining():
            return SetpointStatus.REJECTED, f"power target {watts} W set but resume_mining refused"
        return SetpointStatus.APPLIED, f"power target {watts} W ({why}), resume_mining accepted"

    def _stock_modes(self, group_id: str) -> dict[str, str]:
        by_power = sorted(self.mode_power_kw[group_id].items(), key=lambda item: item[1])
        return {"normal": by_power[-1][0], "low": by_power[0][0]}

    async def _stock_mode(self, miner: Any, group_id: str, mode: str) -> tuple[bool, str]:
        """Stock Antminer: normal or low power mode (pyasic MiningModeConfig), then it mines."""
        from pyasic.config.mining import MiningModeConfig

        stock = self._stock_modes(group_id)
        if mode == stock["normal"]:
            return bool(await miner.resume_mining()), "normal power mode"
        if mode == stock["low"]:
            config = await miner.get_config()
            config.mining_mode = MiningModeConfig.low()
            await miner.send_config(config)
            return True, "low power mode"
        return False, f"stock firmware has no mode for {mode!r} (normal = {stock['normal']}, low = {stock['low']})"

    async def _safe_sleep(self, miner: Any) -> bool:
        try:
            return bool(await miner.stop_mining())
        except Exception:  # noqa: BLE001
            return False

    async def _set_power(self, miner: Any, miner_id: str, watts: int) -> tuple[bool, str]:
        if self._family(miner, miner_id) != "vnish":
            ok = bool(await miner.set_power_limit(watts))
            return ok, "set_power_limit" if ok else "set_power_limit returned False"
        # pyasic 0.79 VNish.set_power_limit cannot succeed (see the module docstring): choose the
        # highest tuned preset at or under the target and post it with pyasic's web API.
        presets = await self._preset_watts(miner, miner_id)
        with self._lock:
            self._presets_w[miner_id] = presets
        fitting = [p for p in presets if p <= watts]
        if not fitting:
            return False, f"no tuned preset at or under {watts} W (have {list(presets)})"
        await miner.web.set_power_limit(max(fitting))
        settings = await miner.web.settings()
        now = str(settings["miner"]["overclock"]["preset"])
        return now == str(max(fitting)), f"preset {max(fitting)} W (miner reports {now})"

    # -- verification and telemetry
    def read(self, miner_ids: Iterable[str] | None = None, timeout_s: float | None = None) -> dict[str, MinerReading]:
        """Telemetry of the given miners (default all) as :class:`MinerReading`; miners that fail are left out."""
        ids = [m for m in (miner_ids if miner_ids is not None else self.endpoints) if m in self.endpoints]

        async def one(miner_id: str) -> tuple[str, MinerReading | None]:
            try:
                miner = await asyncio.wait_for(self._miner(miner_id), self.deadline_s)
                await asyncio.wait_for(self._reachable(miner_id), self.deadline_s)
                data = await asyncio.wait_for(miner.get_data(include=[
                    "wattage", "hashrate", "hashboards", "fans", "is_mining", "expected_hashrate"]), self.deadline_s)
                return miner_id, reading_from_miner_data(miner_id, data)
            except Exception as exc:  # noqa: BLE001
                log.info("read %s: %s", miner_id, exc)
                return miner_id, None

        async def all_() -> list[tuple[str, MinerReading | None]]:
            return list(await asyncio.gather(*(one(m) for m in ids)))

        return {m: r for m, r in self._run(all_(), timeout_s or self.deadline_s + 10) if r is not None}

    def verify(self, timeout_s: float = 0.0, batch: list[Setpoint] | None = None) -> list[SetpointResult]:
        """Compare each setpoint sent since the last verification (or ``batch``) with the miner's telemetry."""
        with self._lock:
            if batch is None:
                batch, self._pending = list(self._pending.values()), {}
        if not batch:
            return []
        readings = self.read([s.miner_id for s in batch])
        return [self.judge(s, readings.get(s.miner_id)) for s in batch]

    def judge(self, setpoint: Setpoint, reading: MinerReading | None) -> SetpointResult:
        """Does ``reading`` confirm ``setpoint``? Pure; see :func:`setpoint_confirmed`."""
        if reading is None:
            return SetpointResult(setpoint.miner_id, SetpointStatus.TIMEOUT, "no telemetry")
        ok, why = setpoint_confirmed(setpoint.mode, setpoint.power_target_kw, reading,
                                     tolerance=self.tolerance, sleep_max_kw=self.sleep_max_kw)
        return SetpointResult(setpoint.miner_id, SetpointStatus.APPLIED if ok else SetpointStatus.UNVERIFIED, why)

    def close(self) -> None:
        """Stop the driver's I/O thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
