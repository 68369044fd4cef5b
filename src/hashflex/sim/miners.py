"""Simulated miners that speak the real protocols on real loopback sockets.

Two front ends share one miner model (:class:`SimMiner`):

- :class:`SimulatedMinerFleet`: every miner listens on its own TCP port on 127.0.0.1 and answers the
  cgminer-style JSON API subset of LuxOS that :mod:`hashflex.drivers.luxos` uses (one request per
  connection, JSON response terminated by a NUL byte): ``version``, ``logon``, ``logoff``, ``session``,
  ``curtail`` (``<sid>,sleep`` / ``<sid>,wakeup``), ``profileset`` (``<sid>,<profile>``), ``profiles``,
  ``summary``, ``stats``, ``power``. Modelled on LuxOS's documented API: one active session per miner,
  privileged commands take the session id as the first parameter, a session lapses after
  ``session_timeout_s`` of inactivity. All servers run in one asyncio loop on a background thread.
- :class:`MqttSimulatedMiners`: one MQTT v5 connection multiplexes many miners; each miner follows
  ``hashflex/<site>/out/setpoint/<miner>`` and publishes a ``TelemetryMessage`` on
  ``in/telemetry/<miner>`` every ``telemetry_interval_s`` (real seconds) and right after a setpoint.

Miner model: states ``sleeping`` → (``boot_minutes``) → ``hashing`` in a mode of its
:class:`~hashflex.profile.MinerGroup`; power and hashrate come from the group's modes (``idle_power_kw``
when sleeping or booting; telemetry reports mode ``booting`` meanwhile). Going to sleep and changing
mode while hashing take effect at once. Safe default: when the deadline of the setpoint being followed
passes without renewal the miner goes to sleep (``fallbacks`` counts it). The MQTT miner takes the
deadline from the payload's ``expires_at`` (and the broker drops undelivered messages via the v5
Message Expiry Interval); the LuxOS API carries no deadline, so the TCP fleet models a site watchdog:
every ``profileset`` / ``curtail wakeup`` renews a lease of ``lease_s`` simulated seconds.

Time: every simulated time comes from a clock (``() -> datetime``); :class:`ScaledClock` runs
``scale`` times faster than real time so a 5-minute boot takes 0.5 s at ``scale=600``. Give the same
clock to the driver so setpoint deadlines are in simulated time.

Fault injection (for tests), per simulated LuxOS miner: ``set_fault(miner_id, kind, ...)`` with kind
``"hang"`` (reads the request, never answers, holds the connection until the peer gives up; alias
``set_silent``), ``"drip"`` (answers one byte every ``drip_interval_s``), ``"close_mid_reply"`` (writes half
the answer, then closes) or None; ``set_status_reply`` (a command answers a given ``STATUS`` letter — ``W``,
``E``, ``?`` — or none at all, with a message, and does nothing; ``set_error`` is the ``E`` case);
``set_session_id`` (the next ``logon`` hands out this id, e.g. a hostile ``"x,sleep"``); ``set_atm``
(Advanced Thermal Management on: ``profileset`` is refused until ``atmset <sid>,enabled=false``);
``set_follows(False)`` (answers success but does not change state), ``expire_sessions``, ``take_offline``
(the port stops listening). What the peer saw is recorded: ``commands`` / ``received_at`` (each request
with the ``time.monotonic()`` it was read), ``hung_open`` / ``hung_open_max`` (connections held by hung or
dripping miners right now / at most) and ``hung_closed_at`` (when each held connection ended).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from hashflex.feeds.mqtt import mqtt_client
from hashflex.messages import SetpointMessage, TelemetryMessage, Topics
from hashflex.profile import MinerGroup, SiteProfile
from hashflex.sim.hardware import MinerHardware

__all__ = [
    "ATM_PROFILESET_REFUSED",
    "MinerSnapshot",
    "MinerState",
    "MqttSimulatedMiners",
    "ScaledClock",
    "SimMiner",
    "SimulatedMinerFleet",
    "miners_from_profile",
]

from hashflex.messages import SLEEP  # noqa: E402 - the one definition
# LuxOS commands that take a session id first; they cannot be part of a multi-command.
_PRIVILEGED = frozenset({"logoff", "curtail", "profileset", "atmset", "ledset", "tempctrlset", "fanset",
                         "rebootdevice", "resetminer", "updaterun"})
SIM_LUXMINER_VERSION = "2024.11.1-sim"
BOOTING = "booting"
# What the simulated LuxOS answers to ``profileset`` while ATM is on. Modelled, not copied: LuxOS's
# docs say ATM changes profiles itself and is turned off with ``atmset <sid>,enabled=false``; the exact
# wording of a real miner's refusal was not found in its public docs (check on your firmware version).
ATM_PROFILESET_REFUSED = "Cannot set profile while ATM is enabled; disable ATM first"
Clock = Callable[[], datetime]


class ScaledClock:
    """Simulated UTC time: ``start + scale × (real time elapsed)``. Thread-safe, monotonic."""

    def __init__(self, scale: float = 1.0, start: datetime | None = None) -> None:
        if scale <= 0:
            raise ValueError("scale must be > 0")
        self.scale = scale
        self.start = start or datetime.now(timezone.utc)
        self._t0 = time.monotonic()

    def __call__(self) -> datetime:
        return self.now()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._t0) * self.scale)

    def real_seconds(self, sim_seconds: float) -> float:
        return sim_seconds / self.scale


class MinerState(str, enum.Enum):
    SLEEPING = "sleeping"
    BOOTING = "booting"
    HASHING = "hashing"


@dataclass(frozen=True)
class MinerSnapshot:
    miner_id: str
    group_id: str
    state: MinerState
    mode: str  # the mode it runs or will run after booting; "sleep" when sleeping
    power_kw: float
    hashrate_th_s: float
    expires_at: datetime | None
    fallbacks: int

    @property
    def reported_mode(self) -> str:
        """The mode as telemetry reports it: ``sleep``, ``booting`` or the mode name."""
        return BOOTING if self.state is MinerState.BOOTING else self.mode


class SimMiner:
    """One miner's state machine, advanced lazily from the clock; thread-safe."""

    def __init__(self, miner_id: str, group: MinerGroup, clock: Clock, mode: str | None = None) -> None:
        self.miner_id, self.group, self.clock = miner_id, group, clock
        names = [m.name for m in group.modes]
        self.mode = mode or ("stock" if "stock" in names else names[0])  # the profile last selected
        self.state = MinerState.SLEEPING
        self.boot_done: datetime | None = None
        self.expires_at: datetime | None = None
        self.fallbacks = 0
        self.follows = True
        self._lock = threading.Lock()

    def _advance(self, now: datetime) -> None:
        if self.state is not MinerState.SLEEPING and self.expires_at is not None and now >= self.expires_at:
            self.state, self.boot_done, self.expires_at = MinerState.SLEEPING, None, None
            self.fallbacks += 1
        if self.state is MinerState.BOOTING and self.boot_done is not None and now >= self.boot_done:
            self.state = MinerState.HASHING

    def command_mode(self, mode: str, expires_at: datetime | None) -> None:
        """Run ``mode`` until ``expires_at``; boots first when sleeping. Raises KeyError for an unknown mode."""
        if mode not in {m.name for m in self.group.modes}:
            _raise_unknown(mode)
        with self._lock:
            now = self.clock()
            self._advance(now)
            if not self.follows:
                return
            self.mode, self.expires_at = mode, expires_at
            if self.state is MinerState.SLEEPING:
                self.state = MinerState.BOOTING
                self.boot_done = now + timedelta(minutes=self.group.boot_minutes)
                self._advance(now)

    def select_profile(self, mode: str) -> None:
        """Change the mode without waking (LuxOS ``profileset`` on a sleeping miner)."""
        if mode not in {m.name for m in self.group.modes}:
            _raise_unknown(mode)
        with self._lock:
            self._advance(self.clock())
            if self.follows:
                self.mode = mode

    def command_sleep(self) -> None:
        with self._lock:
            self._advance(self.clock())
            if self.follows:
                self.state, self.boot_done, self.expires_at = MinerState.SLEEPING, None, None

    def renew(self, expires_at: datetime | None) -> None:
        with self._lock:
            self._advance(self.clock())
            if self.follows and self.state is not MinerState.SLEEPING:
                self.expires_at = expires_at

    def snapshot(self) -> MinerSnapshot:
        with self._lock:
            self._advance(self.clock())
            if self.state is MinerState.HASHING:
                mode = self.group.mode(self.mode)
                power, hashrate = mode.power_kw, mode.hashrate_th_s
            else:
                power, hashrate = self.group.idle_power_kw, 0.0
            shown = SLEEP if self.state is MinerState.SLEEPING else self.mode
            return MinerSnapshot(self.miner_id, self.group.id, self.state, shown, power, hashrate,
                                 self.expires_at, self.fallbacks)


def _raise_unknown(mode: str) -> None:
    raise KeyError(f"unknown mode {mode!r}")


def miners_from_profile(profile: SiteProfile, units_per_group: int | None = None) -> dict[str, MinerGroup]:
    """The profile's miners under the ids the controller addresses them by (``FleetState``:
    ``<group>-<n>``, n from 1, zero-padded to the group size); ``units_per_group`` caps the count."""
    from hashflex.control.fleet import FleetState

    fleet = FleetState.from_profile(profile)
    out: dict[str, MinerGroup] = {}
    for group in profile.miner_groups:
        ids = [m.miner_id for m in fleet.in_group(group.id)]
        out.update({miner_id: group for miner_id in ids[:units_per_group]})
    return out


class _Fleet:
    """What both front ends share: the miners and fleet-wide queries."""

    def __init__(self, miners: Mapping[str, MinerGroup], clock: Clock) -> None:
        if not miners:
            raise ValueError("no miners")
        self.clock = clock
        self.miners = {mid: SimMiner(mid, group, clock) for mid, group in miners.items()}

    def miner(self, miner_id: str) -> SimMiner:
        return self.miners[miner_id]

    def states(self) -> dict[str, MinerSnapshot]:
        return {mid: m.snapshot() for mid, m in self.miners.items()}

    def total_power_kw(self) -> float:
        return sum(m.snapshot().power_kw for m in self.miners.values())

    def set_follows(self, miner_id: str, follows: bool) -> None:
        self.miners[miner_id].follows = follows


# --------------------------------------------------------------------------- LuxOS over TCP


@dataclass
class _LuxState:
    """Per-miner API state of the TCP front end."""

    session_id: str | None = None
    session_used: datetime | None = None
    fault: str | None = None  # None | "hang" | "drip" | "close_mid_reply"
    drip_interval_s: float = 0.05
    replies: dict[str, tuple[str | None, str]] | None = None  # command -> (STATUS letter or None, Msg)
    next_session_id: str | None = None
    atm_enabled: bool = False
    server: asyncio.AbstractServer | None = None
    port: int = 0
    host: str = ""
    red_led: str = "off"

    @property
    def silent(self) -> bool:
        return self.fault == "hang"


class SimulatedMinerFleet(_Fleet):
    """Miners answering a LuxOS-style API, one TCP port each on 127.0.0.1; see the module docstring.

    ``profile_names`` maps group id → {mode: LuxOS profile name}; by default a mode's profile has the
    mode's name. ``lease_s`` (simulated seconds, None = no watchdog) is the safe-default deadline.
    ``response_delay_s`` (real seconds) delays every answer, to make concurrency measurable.
    """

    def __init__(self, miners: Mapping[str, MinerGroup], *, clock: Clock | None = None,
                 lease_s: float | None = None, session_timeout_s: float = 900.0,
                 profile_names: Mapping[str, Mapping[str, str]] | None = None,
                 response_delay_s: float = 0.0, host: str = "127.0.0.1",
                 addresses: Mapping[str, tuple[str, int]] | None = None,
                 hardware: Mapping[str, MinerHardware] | None = None) -> None:
        super().__init__(miners, clock or ScaledClock())
        self.host, self.lease_s, self.session_timeout_s = host, lease_s, session_timeout_s
        # miner id -> (host, port) to listen on; default host:<any free port>. A loopback address per
        # miner with the standard port 4028 lets tools that assume it (pyasic's get_miner) find them.
        self.addresses = dict(addresses or {})
        for mid, (addr_host, _port) in self.addresses.items():
            if not addr_host.startswith("127."):
                raise ValueError(f"addresses[{mid}]: {addr_host!r} is not a loopback address (127.0.0.0/8)")
        # the hashboards, fans and temperatures behind each miner (inject hardware faults here)
        self.hardware = {mid: (hardware or {}).get(mid) or MinerHardware() for mid in self.miners}
        self.started_at = self.clock()
        self.response_delay_s = response_delay_s  # real seconds before each answer (network + firmware)
        self._profiles: dict[str, dict[str, str]] = {}  # group → profile → mode
        for group in {g.id: g for g in miners.values()}.values():
            names = dict((profile_names or {}).get(group.id, {}))
            self._profiles[group.id] = {names.get(m.name, m.name): m.name for m in group.modes}
        self.api = {mid: _LuxState() for mid in self.miners}
        # the last commands each miner received (command, parameter), newest last
        self.commands: dict[str, collections.deque[tuple[str, str]]] = {
            mid: collections.deque(maxlen=1000) for mid in self.miners}
        # the same, with the time.monotonic() each request was read (for latency measurements)
        self.received_at: dict[str, collections.deque[tuple[float, str, str]]] = {
            mid: collections.deque(maxlen=1000) for mid in self.miners}
        self.hung_open = 0  # connections held open by hung / dripping miners right now
        self.hung_open_max = 0
        self.hung_closed_at: list[float] = []  # time.monotonic() when each held connection ended
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._lock = threading.Lock()

    # -- lifecycle
    def start(self) -> SimulatedMinerFleet:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._open_all())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="sim-luxos", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("simulated fleet did not start")
        return self

    async def _open_all(self) -> None:
        self._stopping = asyncio.Event()
        for mid in self.miners:
            host, port = self.addresses.get(mid, (self.host, 0))
            await self._open(mid, port, host)

    async def _open(self, miner_id: str, port: int = 0, host: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _LuxosApiProtocol(self, miner_id), host or self.host, port,
                                          reuse_address=True)
        self.api[miner_id].host = host or self.host
        self.api[miner_id].server = server
        self.api[miner_id].port = server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is None:
            return

        async def close_all() -> None:
            assert self._stopping is not None
            self._stopping.set()
            for state in self.api.values():
                if state.server is not None:
                    state.server.close()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> SimulatedMinerFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def endpoints(self) -> dict[str, tuple[str, int]]:
        return {mid: (state.host or self.host, state.port) for mid, state in self.api.items()}

    # -- faults
    def set_fault(self, miner_id: str, kind: str | None, *, drip_interval_s: float = 0.05) -> None:
        """Transport fault of one miner: ``"hang"``, ``"drip"``, ``"close_mid_reply"`` or None (healthy).

        Raises ValueError for another ``kind``."""
        if kind not in (None, "hang", "drip", "close_mid_reply"):
            raise ValueError(f"fault kind must be hang, drip, close_mid_reply or None, not {kind!r}")
        if drip_interval_s <= 0:
            raise ValueError("drip_interval_s must be > 0")
        state = self.api[miner_id]
        state.fault, state.drip_interval_s = kind, drip_interval_s

    def set_silent(self, miner_id: str, silent: bool = True) -> None:
        """Accept the connection and read the request but never answer (``set_fault(.., "hang")``)."""
        self.set_fault(miner_id, "hang" if silent else None)

    def set_status_reply(self, miner_id: str, command: str, status: str | None, message: str | None) -> None:
        """Make ``command`` answer ``STATUS`` ``status`` (a letter, or None for a row without one) with
        ``message``, without acting on it; ``message`` None clears it."""
        with self._lock:
            replies = dict(self.api[miner_id].replies or {})
            if message is None:
                replies.pop(command, None)
            else:
                replies[command] = (status, message)
            self.api[miner_id].replies = replies

    def set_error(self, miner_id: str, command: str, message: str | None) -> None:
        """Make ``command`` answer STATUS E with ``message`` (None clears it)."""
        self.set_status_reply(miner_id, command, "E", message)

    def set_session_id(self, miner_id: str, session_id: str | None) -> None:
        """The next ``logon`` hands out ``session_id`` verbatim (None: a random one)."""
        with self._lock:
            self.api[miner_id].next_session_id = session_id

    def set_atm(self, miner_id: str, enabled: bool) -> None:
        """Turn the miner's Advanced Thermal Management on or off (as ``atmset`` would)."""
        with self._lock:
            self.api[miner_id].atm_enabled = enabled

    def atm_enabled(self, miner_id: str) -> bool:
        with self._lock:
            return self.api[miner_id].atm_enabled

    def expire_sessions(self, miner_id: str | None = None) -> None:
        with self._lock:
            for mid in [miner_id] if miner_id else list(self.api):
                self.api[mid].session_id = None

    def take_offline(self, miner_id: str) -> None:
        """Stop listening on the miner's port (connections are refused)."""
        assert self._loop is not None
        server = self.api[miner_id].server

        async def close() -> None:
            if server is not None:
                server.close()
                await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    # -- protocol
    # A protocol object per connection, not a stream task: 1,000 simulated miners must answer a batch
    # faster than the driver under test sends it, on the same small machine.
    def _answer(self, conn: _LuxosApiProtocol, request: bytes) -> None:
        fault = self.api[conn.miner_id].fault
        if fault == "hang":
            self._record_request(conn.miner_id, request)
            asyncio.ensure_future(self._hold(conn.closed, conn))
            return
        if fault == "drip" or self.response_delay_s:
            asyncio.ensure_future(self._answer_later(conn, request, fault))
            return
        self._reply(conn, request, fault)

    async def _answer_later(self, conn: _LuxosApiProtocol, request: bytes, fault: str | None) -> None:
        if self.response_delay_s:
            await asyncio.sleep(self.response_delay_s)
        if fault == "drip":
            payload = json.dumps(self._dispatch(conn.miner_id, request)).encode() + b"\0"
            await self._hold(self._drip(conn, payload, self.api[conn.miner_id].drip_interval_s), conn)
            return
        self._reply(conn, request, fault)

    def _reply(self, conn: _LuxosApiProtocol, request: bytes, fault: str | None) -> None:
        payload = json.dumps(self._dispatch(conn.miner_id, request)).encode() + b"\0"
        if conn.transport is None or conn.transport.is_closing():
            return
        conn.transport.write(payload[: max(1, len(payload) // 2)] if fault == "close_mid_reply" else payload)
        conn.transport.close()

    async def _hold(self, work: Any, conn: _LuxosApiProtocol) -> None:
        """Run ``work`` (a hung or dripping answer) until it ends, the peer closes or the fleet stops;
        count the held connection so tests can see how many a driver kept open at once."""
        assert self._stopping is not None
        with self._lock:
            self.hung_open += 1
            self.hung_open_max = max(self.hung_open_max, self.hung_open)
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stop, conn.closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, stop):
                pending.cancel()
            if conn.transport is not None:
                conn.transport.close()
            with self._lock:
                self.hung_open -= 1
                self.hung_closed_at.append(time.monotonic())

    @staticmethod
    async def _drip(conn: _LuxosApiProtocol, payload: bytes, interval_s: float) -> None:
        for i in range(len(payload)):
            if conn.transport is None or conn.transport.is_closing():
                return
            conn.transport.write(payload[i:i + 1])
            await asyncio.sleep(interval_s)

    def _record_request(self, miner_id: str, raw: bytes) -> tuple[str, str] | None:
        try:
            request = json.loads(raw.decode("utf-8").strip("\0 \r\n"))
            command = str(request["command"])
            parameter = str(request.get("parameter", ""))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        with self._lock:
            self.commands[miner_id].append((command, parameter))
            self.received_at[miner_id].append((time.monotonic(), command, parameter))
        return command, parameter

    def _dispatch(self, miner_id: str, raw: bytes) -> dict[str, Any]:
        parsed = self._record_request(miner_id, raw)
        if parsed is None:
            return self._status("E", 23, "Invalid JSON")
        command, parameter = parsed
        if "+" in command:
            # cgminer/LuxOS multi-command: "a+b" answers {"a": [answer a], "b": [answer b], "id": 1};
            # only read-only commands may be joined (LuxOS: privileged commands need a session param).
            parts = command.split("+")
            if any(p in _PRIVILEGED for p in parts) or not all(parts):
                return self._status("E", 45, f"Invalid multi-command {command!r}: privileged or empty part")
            body: dict[str, Any] = {p: [self._single(miner_id, p, parameter)] for p in dict.fromkeys(parts)}
            body["id"] = 1
            return body
        return self._single(miner_id, command, parameter)

    def _single(self, miner_id: str, command: str, parameter: str) -> dict[str, Any]:
        with self._lock:
            injected = (self.api[miner_id].replies or {}).get(command)
        if injected is not None:
            status, message = injected
            if status is None:  # a hostile or broken peer: a STATUS row without a STATUS letter
                return {"STATUS": [{"When": int(self.clock().timestamp()), "Code": 0, "Msg": message}], "id": 1}
            return self._status(status, 45, message)
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            return self._status("E", 14, "Invalid command")
        return handler(miner_id, parameter)

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


def _request_complete(buf: bytes) -> bool:
    """A request ends at a NUL or newline, or when it is a complete JSON document."""
    if b"\0" in buf or b"\n" in buf:
        return True
    try:
        json.loads(buf)
        return True
    except ValueError:
        return False


class _LuxosApiProtocol(asyncio.Protocol):
    """One API connection to a simulated LuxOS miner: read one request, answer, close."""

    def __init__(self, fleet: SimulatedMinerFleet, miner_id: str) -> None:
        self.fleet, self.miner_id = fleet, miner_id
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = b""
        self._answered = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._timer = asyncio.get_running_loop().call_later(10.0, transport.close)  # no request in 10 s

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # one request per connection; a hung miner ignores the rest
        self._buf += data
        if _request_complete(self._buf):
            self._start_answer()

    def eof_received(self) -> bool:
        if not self._answered and self._buf:
            self._start_answer()
        return True  # keep our side open: the answer (or the hang) decides when to close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    def _start_answer(self) -> None:
        self._answered = True
        if self._timer is not None:
            self._timer.cancel()
        self.fleet._answer(self, self._buf)


# --------------------------------------------------------------------------- MQTT


class MqttSimulatedMiners(_Fleet):
    """Miners following ``out/setpoint/<miner>`` and publishing ``in/telemetry/<miner>``."""

    _ids = itertools.count()

    def __init__(self, site: str, host: str, port: int, miners: Mapping[str, MinerGroup], *,
                 clock: Clock | None = None, telemetry_interval_s: float = 0.5,
                 client_id: str | None = None, username: str | None = None, password: str | None = None,
                 tls_ca_file: str | None = None) -> None:
        super().__init__(miners, clock or ScaledClock())
        self.topics = Topics(site)
        self.host, self.port, self.telemetry_interval_s = host, port, telemetry_interval_s
        # the last setpoints each miner received, with the Message Expiry Interval it arrived with
        self.received: dict[str, collections.deque[tuple[SetpointMessage, int | None]]] = {
            m: collections.deque(maxlen=1000) for m in self.miners}
        self.rejected: collections.deque[str] = collections.deque(maxlen=1000)
        self._client = mqtt_client(client_id or f"hashflex-sim-{site}-{next(self._ids)}", username=username,
                                   password=password, tls_ca_file=tls_ca_file)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> MqttSimulatedMiners:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        self._ticker = threading.Thread(target=self._tick_loop, name="sim-mqtt-telemetry", daemon=True)
        self._ticker.start()
        return self

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """True once connected and subscribed."""
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttSimulatedMiners:
        self.start()
        if not self.wait_ready():
            raise RuntimeError("simulated miners could not connect to the broker")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            return
        result, _mid = client.subscribe(self.topics.setpoint("+"), qos=1)
        if result == mqtt.MQTT_ERR_SUCCESS:
            self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        miner_id = message.topic.rsplit("/", 1)[-1]
        miner = self.miners.get(miner_id)
        if miner is None:
            return
        try:
            setpoint = SetpointMessage.model_validate_json(message.payload)
        except ValidationError as exc:
            self.rejected.append(f"{message.topic}: {exc.error_count()} validation error(s)")
            return
        expiry = getattr(message.properties, "MessageExpiryInterval", None) if message.properties else None
        self.received[miner_id].append((setpoint, expiry))
        if setpoint.miner_id != miner_id or setpoint.expires_at <= self.clock():
            self.rejected.append(f"{message.topic}: wrong miner or already expired")
            return
        try:
            if setpoint.mode == SLEEP:
                miner.command_sleep()
            else:
                miner.command_mode(setpoint.mode, setpoint.expires_at)
        except KeyError as exc:
            self.rejected.append(f"{message.topic}: {exc}")
        self._publish_telemetry(miner)

    def _publish_telemetry(self, miner: SimMiner) -> None:
        snap = miner.snapshot()
        telemetry = TelemetryMessage(miner_id=snap.miner_id, power_kw=snap.power_kw,
                                     hashrate_th_s=snap.hashrate_th_s, mode=snap.reported_mode,
                                     temperature_c=60.0 if snap.state is MinerState.HASHING else 30.0,
                                     timestamp=self.clock(), simulated=True)
        self._client.publish(self.topics.telemetry(snap.miner_id), telemetry.model_dump_json(), qos=0)

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.telemetry_interval_s):
            if not self._connected.is_set():
                continue
            for miner in self.miners.values():
                self._publish_telemetry(miner)
