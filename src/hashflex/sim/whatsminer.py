"""Simulated MicroBT Whatsminers speaking the btminer API v2 (:class:`WhatsminerFleet`).
SIMULATED. Moved out of :mod:`hashflex.sim.firmware` (which re-exports it).
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
from hashflex.sim.served import _AsyncServers, _CgminerProtocol, _ServedFleet

__all__ = ["WHATSMINER_FW", "WhatsminerFleet"]

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
        """Open every miner's btminer API port; returns ``self``."""
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
        """Miner id → ``(host, port)`` of its btminer API."""
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
