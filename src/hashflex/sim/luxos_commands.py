"""The LuxOS API commands of the simulated LuxOS fleet (:class:`~hashflex.sim.luxos.SimulatedMinerFleet`).

Modelled on LuxOS's documented API (cgminer-style JSON, one active session per miner, privileged
commands take the session id as the first parameter, a session lapses after ``session_timeout_s`` of
inactivity): ``version``, ``session``, ``logon``, ``logoff``, ``curtail``, ``profileset``, ``atm``,
``atmset``, ``profiles``, ``config``, ``pools``, ``groups``, ``fans``, ``tempctrl``, ``temps``, ``devs``,
``summary``, ``stats``, ``power``, ``ledset``. Each ``_cmd_<name>(miner_id, parameter)`` answers one
command as a JSON-ready dict. SIMULATED. Moved out of :mod:`hashflex.sim.miners`.
"""

from __future__ import annotations

import secrets
import threading
from datetime import datetime, timedelta
from typing import Any

from hashflex.sim.hardware import MinerHardware
from hashflex.sim.miner_model import Clock, MinerState, SimMiner

__all__ = ["ATM_PROFILESET_REFUSED", "SIM_LUXMINER_VERSION"]

SIM_LUXMINER_VERSION = "2024.11.1-sim"
# What the simulated LuxOS answers to ``profileset`` while ATM is on. Modelled, not copied: LuxOS's
# docs say ATM changes profiles itself and is turned off with ``atmset <sid>,enabled=false``; the exact
# wording of a real miner's refusal was not found in its public docs (check on your firmware version).
ATM_PROFILESET_REFUSED = "Cannot set profile while ATM is enabled; disable ATM first"


class _LuxosCommands:
    """The command handlers; the fleet class provides the state below."""

    api: dict[str, Any]
    miners: dict[str, SimMiner]
    hardware: dict[str, MinerHardware]
    clock: Clock
    started_at: datetime
    lease_s: float | None
    session_timeout_s: float
    _profiles: dict[str, dict[str, str]]
    _lock: threading.Lock

    def _status(self, status: str, code: int, msg: str, **sections: Any) -> dict[str, Any]:
        when = int(self.clock().timestamp())
        body: dict[str, Any] = {"STATUS": [{"STATUS": status, "When": when, "Code": code, "Msg": msg,
                                            "Description": "LUXminer simulator"}]}
        body.update(sections)
        body["id"] = 1
        return body

    def _live_session(self, miner_id: str) -> str | None:
        state = self.api[miner_id]
        now = self.clock()
        if state.session_id and state.session_used is not None and \
                (now - state.session_used).total_seconds() > self.session_timeout_s:
            state.session_id = None
        return state.session_id

    def _check_session(self, miner_id: str, parameter: str) -> tuple[dict[str, Any] | None, list[str]]:
        # A real miner splits on every comma too: a session id with a comma in it shifts the fields.
        parts = [p.strip() for p in parameter.split(",")]
        with self._lock:
            live = self._live_session(miner_id)
            if not parts[0] or live is None or parts[0] != live:
                return self._status("E", 45, "Invalid session id"), parts
            self.api[miner_id].session_used = self.clock()
        return None, parts

    def _cmd_version(self, miner_id: str, parameter: str) -> dict[str, Any]:
        # LuxOS's version row (docs "version"): the API and firmware versions and the model ("Type"),
        # which pyasic's get_miner reads to pick the model class.
        row = {"API": "3.7", "CompileTime": "Mon Nov 11 00:00:00 UTC 2024", "LUXminer": SIM_LUXMINER_VERSION,
               "Miner": SIM_LUXMINER_VERSION, "Type": self.miners[miner_id].group.model}
        return self._status("S", 22, "LUXminer versions", VERSION=[row])

    def _cmd_session(self, miner_id: str, parameter: str) -> dict[str, Any]:
        with self._lock:
            sid = self._live_session(miner_id) or ""
        return self._status("S", 300, "Session", SESSION=[{"SessionID": sid}])

    def _cmd_logon(self, miner_id: str, parameter: str) -> dict[str, Any]:
        with self._lock:
            if self._live_session(miner_id):
                return self._status("E", 310, "Another session is active")
            state = self.api[miner_id]
            sid = state.next_session_id if state.next_session_id is not None else secrets.token_hex(4)
            state.next_session_id = None
            state.session_id, state.session_used = sid, self.clock()
        return self._status("S", 307, "Session created", SESSION=[{"SessionID": sid}])

    def _cmd_logoff(self, miner_id: str, parameter: str) -> dict[str, Any]:
        error, _ = self._check_session(miner_id, parameter)
        if error:
            return error
        self.api[miner_id].session_id = None
        return self._status("S", 308, "Session closed")

    def _cmd_curtail(self, miner_id: str, parameter: str) -> dict[str, Any]:
        error, parts = self._check_session(miner_id, parameter)
        if error:
            return error
        action = parts[1] if len(parts) > 1 else ""
        miner = self.miners[miner_id]
        if action == "sleep":
            miner.command_sleep()
        elif action == "wakeup":
            if miner.snapshot().state is MinerState.SLEEPING:
                miner.command_mode(miner.mode, self._lease_deadline())
            else:
                miner.renew(self._lease_deadline())
        else:
            return self._status("E", 45, f"Invalid curtail action {action!r}; use sleep or wakeup")
        return self._status("S", 330, f"Curtail {action}", CURTAIL=[{"Action": action}])

    def _cmd_profileset(self, miner_id: str, parameter: str) -> dict[str, Any]:
        error, parts = self._check_session(miner_id, parameter)
        if error:
            return error
        miner = self.miners[miner_id]
        profile = parts[1] if len(parts) > 1 else ""
        mode = self._profiles[miner.group.id].get(profile)
        if mode is None:
            return self._status("E", 45, f"Profile {profile!r} not found")
        with self._lock:
            atm_on = self.api[miner_id].atm_enabled
        if atm_on:
            # LuxOS: ATM owns the profile while it is on; turn it off (atmset) to set one by hand.
            return self._status("E", 45, ATM_PROFILESET_REFUSED)
        miner.select_profile(mode)
        miner.renew(self._lease_deadline())
        return self._status("S", 320, "Profile set", PROFILE=[{"Profile": profile}])

    def _cmd_atm(self, miner_id: str, parameter: str) -> dict[str, Any]:
        with self._lock:
            enabled = self.api[miner_id].atm_enabled
        return self._status("S", 339, "ATM configuration values", ATM=[{"Enabled": enabled}])

    def _cmd_atmset(self, miner_id: str, parameter: str) -> dict[str, Any]:
        error, parts = self._check_session(miner_id, parameter)
        if error:
            return error
        settings = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if any("=" not in p for p in parts[1:]) or "enabled" not in settings:
            return self._status("E", 45, f"Invalid ATM parameters {','.join(parts[1:])!r}")
        if settings["enabled"] not in ("true", "false"):
            return self._status("E", 45, f"Invalid value for enabled: {settings['enabled']!r}")
        with self._lock:
            self.api[miner_id].atm_enabled = settings["enabled"] == "true"
        return self._status("S", 340, "ATM configuration updated")

    def _hw(self, miner_id: str):  # noqa: ANN202 - HardwareReading
        snap = self.miners[miner_id].snapshot()
        return snap, self.hardware[miner_id].reading(snap.power_kw, snap.hashrate_th_s,
                                                     snap.state is MinerState.HASHING, self.clock())

    def _profile_of(self, miner_id: str) -> str:
        miner = self.miners[miner_id]
        by_mode = {mode: profile for profile, mode in self._profiles[miner.group.id].items()}
        return by_mode[miner.mode]

    def _cmd_profiles(self, miner_id: str, parameter: str) -> dict[str, Any]:
        # Full rows as LuxOS documents them ("profiles"): pyasic reads every one of these keys.
        group = self.miners[miner_id].group
        by_mode = {mode: profile for profile, mode in self._profiles[group.id].items()}
        rows = []
        for step, m in enumerate(sorted(group.modes, key=lambda m: m.power_kw)):
            rows.append({"Profile Name": by_mode[m.name], "Watts": round(m.power_kw * 1000),
                         "Hashrate": m.hashrate_th_s, "IsTuned": True, "IsDynamic": False,
                         "Frequency": 300 + 25 * step, "Voltage": round(12.0 + 0.3 * step, 2),
                         "Step": str(step - len(group.modes) + 1)})
        return self._status("S", 323, "Profiles", PROFILES=rows)

    def _cmd_config(self, miner_id: str, parameter: str) -> dict[str, Any]:
        index = list(self.miners).index(miner_id)
        with self._lock:
            red_led = self.api[miner_id].red_led
        row = {"ASC Count": 0, "PGA Count": 0, "Pool Count": 1, "Strategy": "Failover", "Log Interval": 5,
               "Profile": self._profile_of(miner_id), "MACAddr": f"02:00:00:{index >> 16 & 255:02x}:"
               f"{index >> 8 & 255:02x}:{index & 255:02x}", "Hostname": miner_id, "IsAtmEnabled":
               self.atm_enabled(miner_id), "IsTuning": False, "RedLed": red_led, "GreenLed": "on",
               "SystemStatus": "Ready", "CurtailMode": "None", "Model": self.miners[miner_id].group.model}
        return self._status("S", 33, "Config", CONFIG=[row])

    def _cmd_pools(self, miner_id: str, parameter: str) -> dict[str, Any]:
        snap = self.miners[miner_id].snapshot()
        row = {"POOL": 0, "URL": "stratum+tcp://pool.invalid:3333", "Status": "Alive", "Priority": 0,
               "Quota": 1, "User": f"hashflex.{miner_id}", "Accepted": 0, "Rejected": 0, "Get Failures": 0,
               "Remote Failures": 0, "Stratum Active": snap.state is MinerState.HASHING, "GROUP": 0}
        return self._status("S", 7, "1 Pool(s)", POOLS=[row])

    def _cmd_groups(self, miner_id: str, parameter: str) -> dict[str, Any]:
        return self._status("S", 0, "Groups", GROUPS=[{"GROUP": 0, "Name": "Default", "Quota": 1,
                                                      "Pools": [{"POOL": 0}]}])

    def _cmd_fans(self, miner_id: str, parameter: str) -> dict[str, Any]:
        _, hw = self._hw(miner_id)
        rows = [{"ID": i, "RPM": rpm, "Speed": round(rpm / 60)} for i, rpm in enumerate(hw.fan_rpm)]
        return self._status("S", 202, f"{len(rows)} Fan(s)", FANS=rows,
                            FANCTRL=[{"Mode": "Auto", "MinFans": 1, "Speed": -1, "PowerOffSpeed": 100}])

    def _cmd_tempctrl(self, miner_id: str, parameter: str) -> dict[str, Any]:
        return self._status("S", 201, "Temp Control", TEMPCTRL=[{"Mode": "Auto", "Target": 75, "Hot": 90,
                                                                "Dangerous": 100}])

    def _cmd_temps(self, miner_id: str, parameter: str) -> dict[str, Any]:
        _, hw = self._hw(miner_id)
        rows = [{"ID": i, "Board": t, "Chip": c} for i, (t, c) in enumerate(zip(hw.board_temp_c, hw.chip_temp_c))]
        return self._status("S", 201, f"{len(rows)} Temp(s)", TEMPS=rows)

    def _cmd_devs(self, miner_id: str, parameter: str) -> dict[str, Any]:
        _, hw = self._hw(miner_id)
        rows = [{"ASC": i, "Name": "BTM_SOC", "ID": i, "Enabled": "Y",
                 "Status": "Alive" if alive else "Dead", "Temperature": hw.chip_temp_c[i],
                 "MHS 5s": hw.board_hashrate_ghs[i] * 1000.0} for i, alive in enumerate(hw.board_alive)]
        return self._status("S", 9, f"{len(rows)} ASC(s)", DEVS=rows)

    def _cmd_summary(self, miner_id: str, parameter: str) -> dict[str, Any]:
        snap, hw = self._hw(miner_id)
        ghs = hw.hashrate_th_s * 1000.0
        elapsed = int((self.clock() - self.started_at).total_seconds())
        return self._status("S", 11, "Summary", SUMMARY=[{"Elapsed": elapsed, "GHS 5s": ghs, "GHS av": ghs,
                                                          "Hardware Errors": hw.hw_errors,
                                                          "Accepted": 0, "Rejected": 0}])

    def _cmd_stats(self, miner_id: str, parameter: str) -> dict[str, Any]:
        # cgminer/LuxOS "stats": row 0 is the miner (model, version), row 1 the chains: per-chain rate,
        # chip count and temperatures as dash-joined sensor lists, the ideal rate, fans.
        snap, hw = self._hw(miner_id)
        group = self.miners[miner_id].group
        ideal_ghs = max((m.hashrate_th_s for m in group.modes if m.name == snap.mode),
                        default=0.0) * 1000.0
        elapsed = int((self.clock() - self.started_at).total_seconds())
        chains: dict[str, Any] = {"STATS": 0, "ID": "BC50", "Elapsed": elapsed, "Mode": snap.mode,
                                  "State": snap.state.value, "total_rateideal": ideal_ghs, "rate_unit": "GH",
                                  "GHS 5s": hw.hashrate_th_s * 1000.0, "miner_count": hw.board_alive.count(True),
                                  "fan_num": len(hw.fan_rpm), "Hardware Errors": hw.hw_errors}
        for i, alive in enumerate(hw.board_alive, start=1):
            chip, board = int(hw.chip_temp_c[i - 1]), int(hw.board_temp_c[i - 1])
            chains[f"chain_rate{i}"] = round(hw.board_hashrate_ghs[i - 1], 2)
            chains[f"chain_acn{i}"] = hw.chips_per_board if alive else 0
            # four sensors per chain, dash-joined; a lost chain reads all zeros
            chains[f"temp_chip{i}"] = f"{chip}-{chip - 2}-{chip - 1}-{chip}" if alive else "0-0-0-0"
            chains[f"temp_pcb{i}"] = f"{board}-{board}-{board - 1}-{board}" if alive else "0-0-0-0"
        for i, rpm in enumerate(hw.fan_rpm, start=1):
            chains[f"fan{i}"] = rpm
        head = {"STATS": 0, "ID": "", "Elapsed": elapsed, "Type": group.model, "Miner": SIM_LUXMINER_VERSION}
        return self._status("S", 70, "Stats", STATS=[head, chains])

    def _cmd_power(self, miner_id: str, parameter: str) -> dict[str, Any]:
        _, hw = self._hw(miner_id)
        return self._status("S", 340, "Power", POWER=[{"Watts": round(hw.power_w, 1), "PSU": True}])

    def _cmd_ledset(self, miner_id: str, parameter: str) -> dict[str, Any]:
        error, parts = self._check_session(miner_id, parameter)
        if error:
            return error
        if len(parts) != 3 or parts[1] not in ("red", "green") or parts[2] not in ("on", "off", "blink"):
            return self._status("E", 45, f"Invalid LED parameters {','.join(parts[1:])!r}")
        if parts[1] == "red":
            with self._lock:
                self.api[miner_id].red_led = parts[2]
        return self._status("S", 336, "LED set")

    def _lease_deadline(self) -> datetime | None:
        return None if self.lease_s is None else self.clock() + timedelta(seconds=self.lease_s)
