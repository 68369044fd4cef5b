"""Simulated LuxOS miners on real loopback TCP sockets (:class:`SimulatedMinerFleet`).

Every miner listens on its own TCP port on 127.0.0.1 and answers the cgminer-style JSON API subset of
LuxOS that :mod:`hashflex.drivers.luxos` and pyasic use (one request per connection, JSON response
terminated by a NUL byte; the commands are in :mod:`hashflex.sim.luxos_commands`). All servers run in
one asyncio loop on a background thread. The LuxOS API carries no deadline, so the fleet models a site
watchdog: every ``profileset`` / ``curtail wakeup`` renews a lease of ``lease_s`` simulated seconds.

Fault injection (for tests), per miner: ``set_fault(miner_id, kind, ...)`` with kind ``"hang"`` (reads
the request, never answers, holds the connection until the peer gives up; alias ``set_silent``),
``"drip"`` (answers one byte every ``drip_interval_s``), ``"close_mid_reply"`` (writes half the answer,
then closes) or None; ``set_status_reply`` (a command answers a given ``STATUS`` letter — ``W``, ``E``,
``?`` — or none at all, with a message, and does nothing; ``set_error`` is the ``E`` case);
``set_session_id`` (the next ``logon`` hands out this id, e.g. a hostile ``"x,sleep"``); ``set_atm``
(Advanced Thermal Management on: ``profileset`` is refused until ``atmset <sid>,enabled=false``);
``set_follows(False)`` (answers success but does not change state), ``expire_sessions``,
``take_offline`` (the port stops listening). What the peer saw is recorded: ``commands`` /
``received_at`` (each request with the ``time.monotonic()`` it was read), ``hung_open`` /
``hung_open_max`` (connections held by hung or dripping miners right now / at most) and
``hung_closed_at`` (when each held connection ended). SIMULATED. Moved out of :mod:`hashflex.sim.miners`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hashflex.profile import MinerGroup
from hashflex.sim.hardware import MinerHardware
from hashflex.sim.luxos_commands import ATM_PROFILESET_REFUSED, SIM_LUXMINER_VERSION, _LuxosCommands
from hashflex.sim.miner_model import Clock, ScaledClock, _Fleet

__all__ = ["ATM_PROFILESET_REFUSED", "SIM_LUXMINER_VERSION", "SimulatedMinerFleet"]

# LuxOS commands that take a session id first; they cannot be part of a multi-command.
_PRIVILEGED = frozenset({"logoff", "curtail", "profileset", "atmset", "ledset", "tempctrlset", "fanset",
                         "rebootdevice", "resetminer", "updaterun"})


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




class SimulatedMinerFleet(_LuxosCommands, _Fleet):
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
        """Open every miner's port on the fleet's asyncio thread; returns ``self``. Raises RuntimeError after 30 s."""
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
        """Close every port, stop the asyncio thread (idempotent)."""
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
        """Where each miner listens.

        Returns
        -------
        dict of str to (str, int)
            Miner id → ``(host, port)`` of its LuxOS API.
        """
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
        """Whether the miner's Advanced Thermal Management is on."""
        with self._lock:
            return self.api[miner_id].atm_enabled

    def expire_sessions(self, miner_id: str | None = None) -> None:
        """End the API session of ``miner_id`` (None: of every miner), as a lapsed session would."""
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

