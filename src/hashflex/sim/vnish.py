"""Simulated VNish (AnthillOS) miners on real loopback sockets: :class:`VnishFleet`.

VNish (AnthillOS) on Antminers. Modelled on VNish's documented web API (``/api/v1``,
the Swagger document the firmware serves) and on what pyasic's VNish backend reads; no vendor code:

- web (HTTP, port 80 on a real miner): ``GET /`` (the AnthillOS web UI page), ``POST /api/v1/unlock``
  ``{"pw": ...}`` → ``{"token": ...}`` (401 for a wrong password); with ``Authorization: <token>``
  (``Bearer <token>`` for ``system/*``): ``GET info``, ``summary``, ``perf-summary``, ``settings``,
  ``autotune/presets``, ``status``; ``POST mining/stop`` | ``mining/start`` | ``mining/pause`` |
  ``mining/resume`` (sleep / wake), ``POST settings`` with ``{"miner": {"overclock": {"preset": "<W>"}}}``
  (power target = a tuned preset named by its watts). A request without a valid token gets 401.
- cgminer API (TCP 4028 on a real miner, BMMiner-style): ``version``, ``summary``, ``stats`` (chain
  rates ``chain_rate<i>`` GH/s, chips ``chain_acn<i>``, temperatures ``temp<i>``/``temp2_<i>``, fans
  ``fan<i>``, ``total_rateideal``), ``pools``, ``devs``; one request per connection, NUL-terminated.

Mode ↔ preset: each of the group's modes is a preset named by its watts (``"3000"`` for 3.0 kW);
presets are reported tuned. Telemetry comes from :class:`~hashflex.sim.hardware.MinerHardware`, so
a fault injected there shows through this firmware as through LuxOS.

API: ``VnishFleet(miners, *, clock=None, host="127.0.0.1", addresses=None, password="admin",
lease_s=None)`` (a context manager); ``endpoints()`` → web ``(host, port)`` per miner,
``rpc_endpoints()`` → cgminer API ``(host, port)``; ``hardware[miner_id]``; ``requests[miner_id]``
(method, path) received (``received_at``: with the ``time.monotonic()`` it was read);
``set_web_down(miner_id, True)`` answers 503 to every web request. SIMULATED. Moved out of
:mod:`hashflex.sim.firmware` (which re-exports it).
"""

from __future__ import annotations

import collections
import json
import secrets
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Callable

from hashflex.profile import MinerGroup
from hashflex.sim.hardware import MinerHardware
from hashflex.sim.miner_model import MinerState, ScaledClock
from hashflex.sim.served import _AsyncServers, _CgminerProtocol, _HttpProtocol, _ServedFleet

__all__ = ["VNISH_VERSION", "VnishFleet", "preset_name"]

VNISH_VERSION = "1.2.6-sim"


def preset_name(power_kw: float) -> str:
    """VNish names a preset by its power in watts."""
    return str(round(power_kw * 1000))



class VnishFleet(_ServedFleet):
    """Simulated VNish miners: a web API and a cgminer API per miner; see the module docstring."""

    def __init__(self, miners: Mapping[str, MinerGroup], *, clock: Callable[[], datetime] | None = None,
                 host: str = "127.0.0.1", addresses: Mapping[str, str] | None = None, password: str = "admin",
                 lease_s: float | None = None, hardware: Mapping[str, MinerHardware] | None = None) -> None:
        super().__init__(miners, clock or ScaledClock())
        self.host, self.password, self.lease_s = host, password, lease_s
        self.addresses = dict(addresses or {})  # miner id -> loopback address with the standard ports
        for mid, address in self.addresses.items():
            if not address.startswith("127."):
                raise ValueError(f"addresses[{mid}]: {address!r} is not a loopback address (127.0.0.0/8)")
        self.hardware = {mid: (hardware or {}).get(mid) or MinerHardware() for mid in self.miners}
        self.requests: dict[str, collections.deque[tuple[str, str]]] = {
            mid: collections.deque(maxlen=1000) for mid in self.miners}
        # the same with the time.monotonic() each request was read (latency benchmarks)
        self.received_at: dict[str, collections.deque[tuple[float, str, str]]] = {
            mid: collections.deque(maxlen=1000) for mid in self.miners}
        self._tokens: dict[str, set[str]] = {mid: set() for mid in self.miners}
        self._web_down: set[str] = set()
        self._stopped: set[str] = set()  # "mining/stop": the miner process is stopped (sleep)
        self._web: dict[str, tuple[str, int]] = {}
        self._rpc: dict[str, tuple[str, int]] = {}
        self._servers = _AsyncServers("sim-vnish")
        self.started_at = self.clock()
        self._lock = threading.Lock()

    # -- lifecycle
    def start(self) -> VnishFleet:
        """Open every miner's web and cgminer API ports; returns ``self``."""
        async def open_all() -> None:
            for mid in self.miners:
                host = self.addresses.get(mid, self.host)
                std = mid in self.addresses
                web_port = await self._servers.listen(lambda m=mid: _HttpProtocol(
                    lambda *a, m=m: self._web_request(m, *a)), host, 80 if std else 0)
                rpc_port = await self._servers.listen(lambda m=mid: _CgminerProtocol(
                    lambda c, p, m=m: self._rpc_request(m, c, p)), host, 4028 if std else 0)
                self._web[mid], self._rpc[mid] = (host, web_port), (host, rpc_port)

        self._servers.start(open_all)
        return self


    def endpoints(self) -> dict[str, tuple[str, int]]:
        """The web API of each miner."""
        return dict(self._web)

    def rpc_endpoints(self) -> dict[str, tuple[str, int]]:
        """The cgminer API of each miner."""
        return dict(self._rpc)

    def set_web_down(self, miner_id: str, down: bool = True) -> None:
        """Make the miner's web API answer 503 to every request (``down=False`` restores it)."""
        with self._lock:
            (self._web_down.add if down else self._web_down.discard)(miner_id)

    # -- model
    def _reading(self, miner_id: str):  # noqa: ANN202 - (MinerSnapshot, HardwareReading)
        snap = self.miners[miner_id].snapshot()
        return snap, self.hardware[miner_id].reading(snap.power_kw, snap.hashrate_th_s,
                                                     snap.state is MinerState.HASHING, self.clock())

    def _presets(self, group: MinerGroup) -> list[dict[str, Any]]:
        return [{"name": preset_name(m.power_kw), "pretty": f"{preset_name(m.power_kw)} watt ~ "
                 f"{m.hashrate_th_s:g} TH", "status": "tuned", "modded_psu_required": False}
                for m in sorted(group.modes, key=lambda m: m.power_kw)]

    def _lease(self) -> datetime | None:
        return None if self.lease_s is None else self.clock() + timedelta(seconds=self.lease_s)

    # -- web API
    def _web_request(self, miner_id: str, method: str, path: str, headers: dict[str, str],
                     body: bytes) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests[miner_id].append((method, path))
            self.received_at[miner_id].append((time.monotonic(), method, path))
            if miner_id in self._web_down:
                return 503, {"error": "service unavailable"}, {}
        if path in ("/", "/index.html"):
            return 200, "<!doctype html><html><head><title>AnthillOS</title></head><body>AnthillOS " \
                        f"{VNISH_VERSION} (simulated)</body></html>", {}
        if not path.startswith("/api/v1/"):
            return 404, {"error": f"no such path {path}"}, {}
        command = path[len("/api/v1/"):]
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return 400, {"error": "body is not JSON"}, {}
        if command == "unlock":
            if method != "POST" or not isinstance(payload, dict) or payload.get("pw") != self.password:
                return 401, {"error": "wrong password"}, {}
            token = secrets.token_hex(16)
            with self._lock:
                self._tokens[miner_id].add(token)
            return 200, {"token": token}, {}
        token = headers.get("authorization", "")
        token = token[len("Bearer "):] if token.startswith("Bearer ") else token
        with self._lock:
            if token not in self._tokens[miner_id]:
                return 401, {"error": "unauthorized"}, {}
        handler = getattr(self, f"_web_{method.lower()}_{command.replace('/', '_').replace('-', '_')}", None)
        if handler is None:
            return 404, {"error": f"unknown command {method} {command}"}, {}
        return handler(miner_id, payload)

    def _web_get_info(self, miner_id: str, payload: Any) -> tuple[int, Any, dict[str, str]]:
        index = list(self.miners).index(miner_id)
        return 200, {"miner": self.miners[miner_id].group.model, "fw_version": VNISH_VERSION,
                     "system": {"network_status": {"mac": f"02:00:01:{index >> 16 & 255:02X}:{index >> 8 & 255:02X}:"
                                                          f"{index & 255:02X}", "hostname": miner_id}}}, {}

    def _web_get_summary(self, miner_id: str, payload: Any) -> tuple[int, Any, dict[str, str]]:
        snap, hw = self._reading(miner_id)
        state = {MinerState.SLEEPING: "stopped", MinerState.BOOTING: "starting",
                 MinerState.HASHING: "mining"}[snap.state]
        chains = [{"id": i, "hashrate_rt": hw.board_hashrate_ghs[i], "chip_temp": {"max": hw.chip_temp_c[i]},
                   "pcb_temp": {"max": hw.board_temp_c[i]},
                   "status": {"state": ("mining" if snap.state is MinerState.HASHING else "stopped") if alive
                              else "failure", "description": "" if alive else "chain lost: no chips found"}}
                  for i, alive in enumerate(hw.board_alive)]
        _, info, _ = self._web_get_info(miner_id, payload)
        return 200, {"miner": {"miner_type": f"{self.miners[miner_id].group.model} (Vnish {VNISH_VERSION})",
                               "power_usage": round(hw.power_w), "miner_status": {"miner_state": state},
                               "hr_realtime": hw.hashrate_th_s, "hw_errors": hw.hw_errors,
                               "cooling": {"fans": [{"id": i, "rpm": r} for i, r in enumerate(hw.fan_rpm)]},
                               "chains": chains}, "system": info["system"]}, {}

    def _web_get_settings(self, miner_id: str, payload: Any) -> tuple[int, Any, dict[str, str]]:
        miner = self.miners[miner_id]
        return 200, {"miner": {"overclock": {"preset": preset_name(miner.group.mode(miner.mode).power_kw),
                                             "globals": {"volt": 1300, "freq": 500}, "chains": []},
                               "cooling": {"mode": {"name": "auto", "param": 75}, "fan_min_count": 4,
                                           "fan_min_duty": 10},
                               "pools": [{"url": "pool.invalid:3333", "user": f"hashflex.{miner_id}", "pass": "x"}]},
                     "misc": {"restart_temp": 100}}, {}

    def _web_get_autotune_presets(self, miner_id: str, payload: Any) -> tuple[int, Any, dict[str, str]]:
        return 200, self._presets(self.miners[miner_id].group), {}

    def _web_get_perf_summary(self, miner_id: str, payload: Any) -> tuple[int, Any, dict[str, str]]:
        miner = self.miners[miner_id]
        current = preset_name(miner.group.mode(miner.mode).power_kw)
        preset = next(p for p in self._presets(miner.group) if p["name"] == current)
        return 200, {"current_preset": preset}, {}

    def _web_get_status(self, miner_id: str, payload: Any) -> tuple[int, Any, dict[str, str]]:
        snap = self.miners[miner_id].snapshot()
        return 200, {"miner_state": "mining" if snap.state is MinerState.HASHING else "stopped"}, {}

    def _web_post_settings(self, miner_id: str, payload: Any) -> tuple[int, Any, dict[str, str]]:
        preset = (((payload or {}).get("miner") or {}).get("overclock") or {}).get("preset")
        miner = self.miners[miner_id]
        by_name = {preset_name(m.power_kw): m.name for m in miner.group.modes}
        if preset is not None:
            if str(preset) not in by_name:
                return 400, {"error": f"miner.overclock.preset: no tuned preset {preset!r}; have "
                                      f"{sorted(by_name)}"}, {}
            miner.select_profile(by_name[str(preset)])
            miner.renew(self._lease())
        # VNish answers this even when nothing changed (pyasic re-reads settings to check)
        return 200, {"restart_required": False, "reboot_required": False}, {}

    def _web_post_mining_stop(self, miner_id: str, payload: Any) -> tuple[int, Any, dict[str, str]]:
        self.miners[miner_id].command_sleep()
        return 200, {"success": True}, {}

    _web_post_mining_pause = _web_post_mining_stop

    def _web_post_mining_start(self, miner_id: str, payload: Any) -> tuple[int, Any, dict[str, str]]:
        miner = self.miners[miner_id]
        if miner.snapshot().state is MinerState.SLEEPING:
            miner.command_mode(miner.mode, self._lease())
        else:
            miner.renew(self._lease())
        return 200, {"success": True}, {}

    _web_post_mining_resume = _web_post_mining_start

    # -- cgminer API
    def _rpc_request(self, miner_id: str, command: str, parameter: str) -> dict[str, Any]:
        with self._lock:
            self.requests[miner_id].append(("RPC", command))
        when = int(self.clock().timestamp())

        def status(letter: str, code: int, msg: str, **sections: Any) -> dict[str, Any]:
            return {"STATUS": [{"STATUS": letter, "When": when, "Code": code, "Msg": msg,
                                "Description": f"bmminer {VNISH_VERSION}"}], **sections, "id": 1}

        snap, hw = self._reading(miner_id)
        group = self.miners[miner_id].group
        elapsed = int((self.clock() - self.started_at).total_seconds())
        if command == "version":
            return status("S", 22, "BMMiner versions", VERSION=[{"BMMiner": "2.0.0", "API": "3.1",
                                                                 "Miner": f"Vnish {VNISH_VERSION}",
                                                                 "CompileTime": "2024-11-11", "Type": "Vnish"}])
        if command == "summary":
            ghs = hw.hashrate_th_s * 1000.0
            return status("S", 11, "Summary", SUMMARY=[{"Elapsed": elapsed, "GHS 5s": ghs, "GHS av": ghs,
                                                        "Hardware Errors": hw.hw_errors}])
        if command == "stats":
            ideal = max((m.hashrate_th_s for m in group.modes if m.name == snap.mode), default=0.0) * 1000.0
            chains: dict[str, Any] = {"STATS": 0, "ID": "BC50", "Elapsed": elapsed, "total_rateideal": ideal,
                                      "rate_unit": "GH", "miner_count": hw.board_alive.count(True),
                                      "fan_num": len(hw.fan_rpm), "Hardware Errors": hw.hw_errors}
            for i, alive in enumerate(hw.board_alive, start=1):
                chains[f"chain_rate{i}"] = round(hw.board_hashrate_ghs[i - 1], 2)
                chains[f"chain_acn{i}"] = hw.chips_per_board if alive else 0
                chains[f"chain_acs{i}"] = "o" * hw.chips_per_board if alive else ""
                chains[f"temp{i}"] = hw.chip_temp_c[i - 1]  # pyasic reads temp<i> as the chip temperature
                chains[f"temp2_{i}"] = hw.board_temp_c[i - 1]
            for i, rpm in enumerate(hw.fan_rpm, start=1):
                chains[f"fan{i}"] = rpm
            head = {"BMMiner": "2.0.0", "Miner": f"Vnish {VNISH_VERSION}", "Type": group.model}
            return status("S", 70, "Stats", STATS=[head, chains])
        if command == "pools":
            return status("S", 7, "1 Pool(s)", POOLS=[{"POOL": 0, "URL": "stratum+tcp://pool.invalid:3333",
                                                       "Status": "Alive", "User": f"hashflex.{miner_id}",
                                                       "Accepted": 0, "Rejected": 0,
                                                       "Stratum Active": snap.state is MinerState.HASHING}])
        if command == "devs":
            return status("S", 9, "ASC(s)", DEVS=[{"ASC": i, "Status": "Alive" if a else "Dead",
                                                   "MHS 5s": hw.board_hashrate_ghs[i] * 1000.0}
                                                  for i, a in enumerate(hw.board_alive)])
        return status("E", 14, "Invalid command")

