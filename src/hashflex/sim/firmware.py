"""Simulated miners running other firmware families, on real loopback sockets.

:class:`VnishFleet` — VNish (AnthillOS) on Antminers. Modelled on VNish's documented web API (``/api/v1``,
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
(method, path) received (``received_at``: with the ``time.monotonic()`` it was read); ``set_web_down(miner_id, True)`` answers 503 to every web request.
"""

from __future__ import annotations

import abc
import asyncio
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
from hashflex.sim.miner_model import MinerState, ScaledClock, _Fleet

__all__ = ["ANTMINER_REALM", "AntminerStockFleet", "VNISH_VERSION", "VnishFleet", "WhatsminerFleet"]

VNISH_VERSION = "1.2.6-sim"
_MAX_REQUEST_BYTES = 1_000_000


def preset_name(power_kw: float) -> str:
    """VNish names a preset by its power in watts."""
    return str(round(power_kw * 1000))


class _AsyncServers:
    """An asyncio loop on a background thread that owns the servers of one simulated fleet."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.servers: list[asyncio.AbstractServer] = []

    def start(self, opener: Callable[[], Any]) -> None:
        ready = threading.Event()
        errors: list[BaseException] = []
        self.loop = asyncio.new_event_loop()

        def run() -> None:
            assert self.loop is not None
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(opener())
            except BaseException as exc:  # noqa: BLE001 - reported to the caller of start()
                errors.append(exc)
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name=self.name, daemon=True)
        self.thread.start()
        if not ready.wait(30):
            raise RuntimeError(f"{self.name} did not start")
        if errors:
            self.stop()
            raise errors[0]

    async def listen(self, factory: Callable[[], asyncio.Protocol], host: str, port: int) -> int:
        server = await asyncio.get_running_loop().create_server(factory, host, port, reuse_address=True)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self.loop is None:
            return

        async def close() -> None:
            for server in self.servers:
                server.close()
            await asyncio.sleep(0.02)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(10)
        self.loop.close()
        self.loop = None


class _CgminerProtocol(asyncio.Protocol):
    """One cgminer-API connection: read one JSON request, answer with a NUL-terminated JSON, close."""

    def __init__(self, handler: Callable[[str, str], dict[str, Any]],
                 raw_handler: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.handler, self.raw_handler = handler, raw_handler
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _MAX_REQUEST_BYTES:
            self._reply({"STATUS": [{"STATUS": "E", "Code": 23, "Msg": "Request too large"}]})
            return
        try:
            request = json.loads(self.buf.decode("utf-8").strip("\0 \r\n"))
        except (ValueError, UnicodeDecodeError):
            return  # not complete yet
        if isinstance(request, dict) and "enc" in request and self.raw_handler is not None:
            self._reply(self.raw_handler(request))  # an encrypted (privileged) request
            return
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            self._reply({"STATUS": [{"STATUS": "E", "Code": 23, "Msg": "Invalid JSON"}]})
            return
        command = request["command"]
        parameter = str(request.get("parameter", ""))
        if "+" in command:
            body: dict[str, Any] = {c: [self.handler(c, parameter)] for c in dict.fromkeys(command.split("+"))}
            body["id"] = 1
            self._reply(body)
        else:
            self._reply(self.handler(command, parameter))

    def _reply(self, body: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(body).encode() + b"\0")
        self.transport.close()


class _HttpProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 server connection: one request with Content-Length, answer, close."""

    def __init__(self, handler: Callable[[str, str, dict[str, str], bytes], tuple[int, Any, dict[str, str]]]) -> None:
        self.handler = handler
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _MAX_REQUEST_BYTES:
            self._send(413, {"error": "request too large"}, {})
            return
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            self._send(400, {"error": "bad request line"}, {})
            return
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0") or 0)
        if len(rest) < length:
            return
        status, body, extra = self.handler(method, target.split("?", 1)[0], headers, rest[:length])
        self._send(status, body, extra)

    def _send(self, status: int, body: Any, extra: dict[str, str]) -> None:
        assert self.transport is not None
        if isinstance(body, str):
            payload, ctype = body.encode(), "text/html; charset=utf-8"
        else:
            payload, ctype = json.dumps(body).encode(), "application/json"
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Too Large",
                  503: "Service Unavailable"}.get(status, "Error")
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}", f"Content-Length: {len(payload)}",
                "Connection: close"] + [f"{k}: {v}" for k, v in extra.items()]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        self.transport.close()


class _ServedFleet(_Fleet, abc.ABC):
    """A simulated fleet served on loopback by ``self._servers`` (an :class:`_AsyncServers`):
    ``start()`` opens the sockets (each family its own), ``stop()`` and the context manager close them."""

    _servers: _AsyncServers

    @abc.abstractmethod
    def start(self) -> Any:
        """Open this family's listening sockets and return self."""

    def stop(self) -> None:
        self._servers.stop()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


# --------------------------------------------------------------------------- stock Antminer (bmminer)

ANTMINER_REALM = "antMiner Configuration"


def _digest_ok(header: str, method: str, user: str, password: str, nonces: set[str]) -> bool:
    """RFC 7616/2617 Digest check (MD5, qop=auth), as the stock Antminer web server asks for."""
    import hashlib
    import re

    if not header.startswith("Digest "):
        return False
    fields = {k: a or b for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', header[7:])}
    if fields.get("username") != user or fields.get("realm") != ANTMINER_REALM or fields.get("nonce") not in nonces:
        return False
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731,S324 - the protocol's own hash
    ha1 = md5(f"{user}:{ANTMINER_REALM}:{password}")
    ha2 = md5(f"{method}:{fields.get('uri', '')}")
    if fields.get("qop") == "auth":
        expected = md5(f"{ha1}:{fields['nonce']}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:auth:{ha2}")
    else:
        expected = md5(f"{ha1}:{fields['nonce']}:{ha2}")
    return secrets.compare_digest(expected, fields.get("response", ""))


class AntminerStockFleet(VnishFleet):
    """Simulated Antminers on Bitmain's stock firmware: CGI web API behind HTTP Digest auth, bmminer API.

    Modelled on what the stock web UI and pyasic's AntminerModern use (no vendor code):
    ``/cgi-bin/get_system_info.cgi`` (``minertype``, ``hostname``, ``macaddr``), ``get_miner_conf.cgi``
    (pools, fan control, ``bitmain-work-mode``: "0" normal, "1" sleep, "3" low power),
    ``set_miner_conf.cgi`` (POST JSON with ``miner-mode`` 0/1/3), ``summary.cgi``, ``stats.cgi`` (per chain
    ``rate_real`` GH/s, ``asic_num``, ``temp_pcb``/``temp_chip`` lists), ``get_blink_status.cgi``. Every
    request needs Digest auth (realm "antMiner Configuration", user root / ``password``); without it the
    server answers 401 with the challenge. Stock firmware has no power target: normal = the group's
    highest-power mode, low = its lowest; it does not report power draw on the web API (the PSU's
    reading is not exposed), like most stock models. Unknown paths answer a plain-text 404.
    """

    def __init__(self, miners: Mapping[str, MinerGroup], *, password: str = "root", **kwargs: Any) -> None:
        super().__init__(miners, password=password, **kwargs)
        self._nonces: set[str] = set()
        self._servers.name = "sim-antminer"

    def _normal_mode(self, group: MinerGroup) -> str:
        return max(group.modes, key=lambda m: m.power_kw).name

    def _low_mode(self, group: MinerGroup) -> str:
        return min(group.modes, key=lambda m: m.power_kw).name

    def _work_mode(self, miner_id: str) -> str:
        miner = self.miners[miner_id]
        snap = miner.snapshot()
        if snap.state is MinerState.SLEEPING:
            return "1"
        return "3" if miner.mode == self._low_mode(miner.group) and len(miner.group.modes) > 1 else "0"

    def _web_request(self, miner_id: str, method: str, path: str, headers: dict[str, str],
                     body: bytes) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests[miner_id].append((method, path))
            self.received_at[miner_id].append((time.monotonic(), method, path))
            if miner_id in self._web_down:
                return 503, "service unavailable", {}
            nonces = set(self._nonces)
        if not _digest_ok(headers.get("authorization", ""), method, "root", self.password, nonces):
            nonce = secrets.token_hex(16)
            with self._lock:
                self._nonces.add(nonce)
            return 401, "<html><body>401 Unauthorized</body></html>", {
                "WWW-Authenticate": f'Digest realm="{ANTMINER_REALM}", nonce="{nonce}", qop="auth"'}
        if path in ("/", "/index.html"):
            return 200, "<html><head><title>Antminer</title></head><body>Antminer (simulated)</body></html>", {}
        if not (path.startswith("/cgi-bin/") and path.endswith(".cgi")):
            return 404, "404 Not Found", {}
        command = path[len("/cgi-bin/"):-len(".cgi")]
        miner = self.miners[miner_id]
        index = list(self.miners).index(miner_id)
        if command == "get_system_info":
            return 200, {"minertype": miner.group.model, "hostname": miner_id, "nettype": "DHCP",
                         "macaddr": f"02:00:02:{index >> 16 & 255:02X}:{index >> 8 & 255:02X}:{index & 255:02X}",
                         "system_filesystem_version": "Thu Nov 14 2024 (simulated)"}, {}
        if command == "get_miner_conf":
            return 200, {"pools": [{"url": "stratum+tcp://pool.invalid:3333", "user": f"hashflex.{miner_id}",
                                    "pass": "x"}], "api-listen": True, "api-network": True,
                         "bitmain-fan-ctrl": False, "bitmain-fan-pwm": "100", "freq-level": "100",
                         "bitmain-work-mode": self._work_mode(miner_id)}, {}
        if command == "set_miner_conf" and method == "POST":
            try:
                conf = json.loads(body) if body else {}
                mode = int(conf.get("miner-mode", -1)) if isinstance(conf, dict) else -1
            except (ValueError, TypeError):
                return 200, {"stats": "error", "code": "M001", "msg": "miner-mode: not a number"}, {}
            if mode == 1:
                miner.command_sleep()
            elif mode in (0, 3):
                target = self._normal_mode(miner.group) if mode == 0 else self._low_mode(miner.group)
                if miner.snapshot().state is MinerState.SLEEPING:
                    miner.command_mode(target, self._lease())
                else:
                    miner.select_profile(target)
                    miner.renew(self._lease())
            elif "miner-mode" in conf:
                return 200, {"stats": "error", "code": "M001", "msg": f"miner-mode {mode}: use 0, 1 or 3"}, {}
            return 200, {"stats": "success", "code": "M000", "msg": "OK!"}, {}
        snap, hw = self._reading(miner_id)
        if command == "summary":
            ok = "s" if all(hw.board_alive) else "e"
            return 200, {"STATUS": {"STATUS": "S"}, "SUMMARY": [{"rate_5s": hw.hashrate_th_s * 1000, "status": [
                {"type": "rate", "status": "s", "code": 0, "msg": ""},
                {"type": "network", "status": "s", "code": 0, "msg": ""},
                {"type": "fans", "status": "s" if min(hw.fan_rpm, default=0) > 0 or snap.state is not
                 MinerState.HASHING else "e", "code": 0, "msg": ""},
                {"type": "temp", "status": ok, "code": 0 if ok == "s" else 2, "msg": "" if ok == "s" else
                 "chain lost"}]}]}, {}
        if command == "stats":
            chains = [{"index": i, "rate_real": hw.board_hashrate_ghs[i], "asic_num": hw.chips_per_board if a else 0,
                       "temp_pcb": [int(hw.board_temp_c[i])] * 4, "temp_chip": [int(hw.chip_temp_c[i])] * 4,
                       "sn": f"SIM{index:05d}{i}"} for i, a in enumerate(hw.board_alive)]
            return 200, {"STATUS": {"STATUS": "S"}, "STATS": [{"elapsed": int((self.clock() - self.started_at)
                                                                              .total_seconds()),
                                                               "rate_5s": hw.hashrate_th_s * 1000, "rate_unit": "GH",
                                                               "chain": chains, "fan": list(hw.fan_rpm)}]}, {}
        if command == "get_blink_status":
            return 200, {"blink": False}, {}
        return 404, "404 Not Found", {}

    def _rpc_request(self, miner_id: str, command: str, parameter: str) -> dict[str, Any]:
        answer = super()._rpc_request(miner_id, command, parameter)
        # stock bmminer: no "Vnish" anywhere; version Type is the model (pyasic reads it)
        text = json.dumps(answer).replace(f"Vnish {VNISH_VERSION}", "uart_trans.1.3").replace(
            '"Type": "Vnish"', json.dumps({"Type": self.miners[miner_id].group.model})[1:-1])
        return json.loads(text)


# --------------------------------------------------------------------------- Whatsminer (btminer API v2)

WHATSMINER_FW = "20230911.15.REL"


class WhatsminerFleet(_ServedFleet):
    """Simulated MicroBT Whatsminers speaking the btminer API v2 on one TCP port each (4028 on a real miner).

    Modelled on MicroBT's published "WhatsMiner API V2" and on what pyasic's BTMiner backend sends (no
    vendor code). Read commands are cgminer-style JSON: ``summary`` (``MHS 1m``, ``Power``, ``Power
    Limit``, ``Fan Speed In/Out``, ``Env Temp``, chip temperatures), ``devs`` (per board ``Slot``, ``MHS
    1m``, ``Effective Chips``, ``Temperature``, ``Chip Temp Avg``, ``PCB SN``), ``devdetails`` (``Model``,
    driver ``bitmicro``), ``pools``, ``status`` (``mineroff``), ``get_version`` (``api_ver``, ``fw_ver``),
    ``get_miner_info``, ``get_psu``, ``get_error_code``. Writes are privileged: ``get_token`` hands out
    ``time``, ``salt`` and ``newsalt``; the client derives ``host_passwd_md5`` = md5-crypt(admin password,
    salt) and the ``sign`` = md5-crypt(host_passwd_md5 + time, newsalt), and sends ``{"enc": 1, "data":
    base64(AES-256-ECB(key = sha256(host_passwd_md5), json))}`` with ``token`` = sign; the answer comes back
    encrypted the same way. Commands: ``power_off`` (sleep), ``power_on`` (wake), ``adjust_power_limit``
    (``power_limit`` W: the highest mode at or under it; below the lowest mode → error). A token is valid
    30 minutes; a wrong password, sign or key → ``STATUS`` E. Needs ``passlib`` and ``cryptography``
    (installed with ``hashflex[pyasic]``).

    API: ``WhatsminerFleet(miners, *, clock=None, host="127.0.0.1", addresses=None, password="admin")``,
    ``endpoints()``, ``hardware``, ``requests`` / ``received_at`` ((monotonic, command) pairs).
    """

    def __init__(self, miners: Mapping[str, MinerGroup], *, clock: Callable[[], datetime] | None = None,
                 host: str = "127.0.0.1", addresses: Mapping[str, str] | None = None, password: str = "admin",
                 lease_s: float | None = None, hardware: Mapping[str, MinerHardware] | None = None) -> None:
        super().__init__(miners, clock or ScaledClock())
        self.host, self.password, self.lease_s = host, password, lease_s
        self.addresses = dict(addresses or {})
        for mid, address in self.addresses.items():
            if not address.startswith("127."):
                raise ValueError(f"addresses[{mid}]: {address!r} is not a loopback address (127.0.0.0/8)")
        self.hardware = {mid: (hardware or {}).get(mid) or MinerHardware(fans=2) for mid in self.miners}
        self.requests: dict[str, collections.deque[tuple[str, str]]] = {
            mid: collections.deque(maxlen=1000) for mid in self.miners}
        self.received_at: dict[str, collections.deque[tuple[float, str]]] = {
            mid: collections.deque(maxlen=1000) for mid in self.miners}
        self._salt = {mid: secrets.token_hex(4) for mid in self.miners}  # fixed per miner, as on the device
        self._signs: dict[str, dict[str, float]] = {mid: {} for mid in self.miners}  # sign -> issued (monotonic)
        self._power_limit_w = {mid: max(round(m.power_kw * 1000) for m in g.modes) for mid, g in miners.items()}
        self._rpc: dict[str, tuple[str, int]] = {}
        self._servers = _AsyncServers("sim-whatsminer")
        self.started_at = self.clock()
        self._lock = threading.Lock()

    def start(self) -> WhatsminerFleet:
        async def open_all() -> None:
            for mid in self.miners:
                host = self.addresses.get(mid, self.host)
                port = await self._servers.listen(lambda m=mid: _CgminerProtocol(
                    lambda c, p, m=m: self._read(m, c, p), lambda r, m=m: self._privileged(m, r)),
                    host, 4028 if mid in self.addresses else 0)
                self._rpc[mid] = (host, port)

        self._servers.start(open_all)
        return self


    def endpoints(self) -> dict[str, tuple[str, int]]:
        return dict(self._rpc)

    def model_code(self, miner_id: str) -> str:
        """The model as btminer reports it (``devdetails`` Model): the group's model without "Whatsminer "."""
        return self.miners[miner_id].group.model.replace("Whatsminer", "").strip().replace(" ", "")

    # -- crypto (md5-crypt as in the API document; AES-256-ECB, NUL padded)
    def _host_passwd_md5(self, miner_id: str) -> str:
        from passlib.handlers.md5_crypt import md5_crypt

        return md5_crypt.using(salt=self._salt[miner_id]).hash(self.password).split("$")[3]

    def _aes(self, miner_id: str):  # noqa: ANN202 - cryptography Cipher
        import hashlib

        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        key = hashlib.sha256(self._host_passwd_md5(miner_id).encode()).digest()
        return Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305 - the protocol's own scheme

    def _encrypt(self, miner_id: str, body: dict[str, Any]) -> dict[str, Any]:
        import base64

        text = json.dumps(body)
        text += "\0" * (-len(text) % 16)
        enc = self._aes(miner_id).encryptor()
        return {"enc": base64.b64encode(enc.update(text.encode()) + enc.finalize()).decode()}

    # -- protocol
    def _msg(self, status: str, code: int, msg: Any) -> dict[str, Any]:
        return {"STATUS": status, "When": int(self.clock().timestamp()), "Code": code, "Msg": msg,
                "Description": ""}

    def _privileged(self, miner_id: str, request: dict[str, Any]) -> dict[str, Any]:
        import base64

        try:
            dec = self._aes(miner_id).decryptor()
            raw = dec.update(base64.b64decode(str(request.get("data", "")))) + dec.finalize()
            command = json.loads(raw.rstrip(b"\0").decode())
            assert isinstance(command, dict)
        except Exception:  # noqa: BLE001 - a wrong key or garbage: the device answers in clear
            return self._msg("E", 23, "invalid JSON message or wrong key")
        cmd = str(command.get("cmd", ""))
        with self._lock:
            self.requests[miner_id].append(("privileged", cmd))
            self.received_at[miner_id].append((time.monotonic(), cmd))
            now = time.monotonic()
            valid = {s for s, t in self._signs[miner_id].items() if now - t < 1800}
        if command.get("token") not in valid:
            return self._encrypt(miner_id, self._msg("E", 135, "check token err"))
        miner = self.miners[miner_id]
        if cmd == "power_off":
            miner.command_sleep()
        elif cmd == "power_on":
            if miner.snapshot().state is MinerState.SLEEPING:
                miner.command_mode(miner.mode, self._lease())
            else:
                miner.renew(self._lease())
        elif cmd == "adjust_power_limit":
            try:
                limit = int(str(command.get("power_limit", "")))
            except ValueError:
                return self._encrypt(miner_id, self._msg("E", 14, "power_limit: not a number"))
            fitting = [m for m in miner.group.modes if m.power_kw * 1000 <= limit]
            if not fitting:
                lowest = min(round(m.power_kw * 1000) for m in miner.group.modes)
                return self._encrypt(miner_id, self._msg("E", 14, f"power_limit {limit} W below the minimum "
                                                                  f"{lowest} W"))
            miner.select_profile(max(fitting, key=lambda m: m.power_kw).name)
            miner.renew(self._lease())
            with self._lock:
                self._power_limit_w[miner_id] = limit
        else:
            return self._encrypt(miner_id, self._msg("E", 14, "invalid cmd"))
        return self._encrypt(miner_id, self._msg("S", 131, "API command OK"))

    def _lease(self) -> datetime | None:
        return None if self.lease_s is None else self.clock() + timedelta(seconds=self.lease_s)

    def _read(self, miner_id: str, command: str, parameter: str) -> dict[str, Any]:
        with self._lock:
            self.requests[miner_id].append(("read", command))
            self.received_at[miner_id].append((time.monotonic(), command))
        snap = self.miners[miner_id].snapshot()
        hw = self.hardware[miner_id].reading(snap.power_kw, snap.hashrate_th_s, snap.state is MinerState.HASHING,
                                             self.clock())
        when = int(self.clock().timestamp())

        def rows(name: str, msg: str, body: list[dict[str, Any]]) -> dict[str, Any]:
            return {"STATUS": [{"STATUS": "S", "When": when, "Code": 11, "Msg": msg, "Description": "btminer"}],
                    name: body, "id": 1}

        if command == "get_token":
            sign_time = f"{int(time.time()) % 10000:04d}"
            newsalt = secrets.token_hex(4)
            from passlib.handlers.md5_crypt import md5_crypt

            sign = md5_crypt.using(salt=newsalt).hash(self._host_passwd_md5(miner_id) + sign_time).split("$")[3]
            with self._lock:
                self._signs[miner_id][sign] = time.monotonic()
            return self._msg("S", 134, {"time": sign_time, "salt": self._salt[miner_id], "newsalt": newsalt})
        if command == "summary":
            mhs = hw.hashrate_th_s * 1e6
            chip = max(hw.chip_temp_c, default=0.0)
            return rows("SUMMARY", "Summary", [{
                "Elapsed": int((self.clock() - self.started_at).total_seconds()), "MHS av": mhs, "MHS 5s": mhs,
                "MHS 1m": mhs, "MHS 15m": mhs, "HS RT": mhs, "Temperature": max(hw.board_temp_c, default=0.0),
                "Fan Speed In": hw.fan_rpm[0] if hw.fan_rpm else 0,
                "Fan Speed Out": hw.fan_rpm[-1] if hw.fan_rpm else 0, "Power": round(hw.power_w),
                "Power Limit": self._power_limit_w[miner_id], "Env Temp": self.hardware[miner_id].ambient_c,
                "Chip Temp Min": chip, "Chip Temp Max": chip, "Chip Temp Avg": chip,
                "Factory GHS": round(max(m.hashrate_th_s for m in self.miners[miner_id].group.modes) * 1000),
                "Power Mode": "Normal", "Uptime": int((self.clock() - self.started_at).total_seconds()),
                "Hardware Errors": hw.hw_errors}])
        if command == "devs":
            return rows("DEVS", "6 ASC(s)", [{
                "ASC": i, "Slot": i, "Enabled": "Y", "Status": "Alive" if a else "Dead",
                "Temperature": hw.board_temp_c[i], "Chip Temp Avg": hw.chip_temp_c[i],
                "MHS 1m": hw.board_hashrate_ghs[i] * 1000.0, "MHS av": hw.board_hashrate_ghs[i] * 1000.0,
                "Effective Chips": hw.chips_per_board if a else 0, "PCB SN": f"WSIM{i}{miner_id[-4:]}"}
                for i, a in enumerate(hw.board_alive) if a])
        if command == "devdetails":
            return rows("DEVDETAILS", "Device Details", [{"DEVDETAILS": i, "Name": "SM", "ID": i,
                                                          "Driver": "bitmicro", "Model": self.model_code(miner_id)}
                                                         for i in range(len(hw.board_alive))])
        if command == "version":
            return rows("VERSION", "BTMiner versions", [{"BTMiner": WHATSMINER_FW, "API": "2.0.5"}])
        if command == "pools":
            return rows("POOLS", "1 Pool(s)", [{"POOL": 0, "URL": "stratum+tcp://pool.invalid:3333",
                                               "Status": "Alive", "User": f"hashflex.{miner_id}",
                                               "Stratum Active": snap.state is MinerState.HASHING}])
        if command == "status":
            off = "false" if snap.state is not MinerState.SLEEPING else "true"
            return self._msg("S", 131, {"mineroff": off, "mineroff_reason": "", "FirmwareVersion": WHATSMINER_FW})
        if command == "get_version":
            return self._msg("S", 131, {"api_ver": "2.0.5", "fw_ver": WHATSMINER_FW, "platform": "H6OS",
                                        "chip": "K210"})
        if command == "get_miner_info":
            index = list(self.miners).index(miner_id)
            return self._msg("S", 131, {"ip": self._rpc.get(miner_id, (self.host, 0))[0], "proto": "dhcp",
                                        "hostname": miner_id, "minersn": f"WSIM{index:06d}", "ledstat": "auto",
                                        "mac": f"02:00:03:{index >> 16 & 255:02X}:{index >> 8 & 255:02X}:"
                                               f"{index & 255:02X}"})
        if command == "get_psu":
            return self._msg("S", 131, {"name": "P221B", "fan_speed": hw.fan_rpm[0] if hw.fan_rpm else 0,
                                        "pin": str(round(hw.power_w)), "vin": "22000"})
        if command == "get_error_code":
            return self._msg("S", 131, {"error_code": [] if all(hw.board_alive) else
                                        [{"541": "slot0 hashboard lost"}]})
        return {"STATUS": [{"STATUS": "E", "When": when, "Code": 14, "Msg": "invalid cmd"}], "id": 1}
