"""Simulated Antminers on Bitmain's stock firmware (:class:`AntminerStockFleet`): the CGI web API
behind HTTP Digest authentication and the bmminer API, built on the VNish simulator's servers.
SIMULATED. Moved out of :mod:`hashflex.sim.firmware` (which re-exports it).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from hashflex.profile import MinerGroup
from hashflex.sim.miner_model import MinerState
from hashflex.sim.vnish import VNISH_VERSION, VnishFleet

__all__ = ["ANTMINER_REALM", "AntminerStockFleet"]

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

