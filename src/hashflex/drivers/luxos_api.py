"""The LuxOS API wire layer of :class:`~hashflex.drivers.luxos.LuxosDriver`: endpoints, the
``parameter`` rule, one call with retries and back-off on a bare non-blocking socket, sessions, and
reading ``STATUS`` rows. The protocol and the rules are described in :mod:`hashflex.drivers.luxos`
(moved out of it along the seam between the wire and the setpoint logic; that module re-exports the
public names).

API: ``DEFAULT_PORT``, ``SUCCESS_STATES``, ``LuxosEndpoint(miner_id, group_id, host, port=4028)``,
``LuxosCallError(status, reason)``, ``parameter(*fields) -> str``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import resource
import socket
from dataclasses import dataclass
from typing import Any

from hashflex.drivers.base import Clock, SetpointStatus

__all__ = ["DEFAULT_PORT", "SUCCESS_STATES", "LuxosCallError", "LuxosEndpoint", "parameter"]

log = logging.getLogger("hashflex.drivers.luxos")  # the driver's logger, as before the split

DEFAULT_PORT = 4028
SUCCESS_STATES = frozenset({"S", "I"})
"""cgminer STATUS letters that mean the command was done: Success and Informational."""
_MAX_RESPONSE_BYTES = 4_000_000
_SAFE_FIELD = re.compile(r"[A-Za-z0-9_.+=-]{1,64}")
_FD_RESERVE = 256  # descriptors left for everything else in the process (broker, store, logs)


@dataclass(frozen=True)
class LuxosEndpoint:
    """Where one miner's LuxOS API listens; ``group_id`` selects its profile names."""

    miner_id: str
    group_id: str
    host: str
    port: int = DEFAULT_PORT

    @property
    def address(self) -> str:
        """``host:port``, as the driver's reasons name the miner's API."""
        return f"{self.host}:{self.port}"


class LuxosCallError(Exception):
    """A call that did not succeed; ``status`` says how (rejected, timeout, unreachable)."""

    def __init__(self, status: SetpointStatus, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def parameter(*fields: str) -> str:
    """The ``parameter`` string of a LuxOS command: ``fields`` joined by commas.

    Raises ValueError when a field could change the command's meaning (a ``,``, ``|``, ``\\``, space,
    control character, anything outside ``[A-Za-z0-9_.+=-]``, empty or over 64 characters)."""
    for field in fields:
        if not _SAFE_FIELD.fullmatch(field):
            raise ValueError(f"{field!r} is not a safe LuxOS parameter field (allowed: [A-Za-z0-9_.+=-], "
                             f"1-64 characters)")
    return ",".join(fields)


class _LuxosApi:
    """Sessions and calls; the driver provides the state below (touched only on its I/O thread)."""

    timeout_s: float
    attempts: int
    backoff_s: float
    backoff_max_s: float
    session_idle_s: float
    clock: Clock
    logons: int
    _sessions: dict[str, str]
    _session_used: dict[str, Any]
    _connections: asyncio.Semaphore

    # ------------------------------------------------------------------ sessions
    async def _session(self, endpoint: LuxosEndpoint, progress: list[str]) -> str:
        cached = self._sessions.get(endpoint.miner_id)
        used = self._session_used.get(endpoint.miner_id)
        now = self.clock()
        if cached and used is not None and (now - used).total_seconds() < self.session_idle_s:
            self._session_used[endpoint.miner_id] = now
            return cached
        progress.append("logon")
        response = await self._call(endpoint, "logon")
        if _succeeded(response):
            sid = _session_id(response)
            if not sid:
                raise LuxosCallError(SetpointStatus.REJECTED, "logon answered without a session id")
            self.logons += 1
        else:
            # One session per miner: another actor (or our own lapsed cache) holds it; reuse it, as pyasic does.
            progress.append("session")
            active = await self._call(endpoint, "session")
            sid = _session_id(active) if _succeeded(active) else ""
            if not sid:
                raise LuxosCallError(SetpointStatus.REJECTED, f"logon refused: {_describe(response)}")
        if not _SAFE_FIELD.fullmatch(sid):
            # Never sent: commas etc. would shift the fields of the command (e.g. "x,sleep").
            raise LuxosCallError(SetpointStatus.REJECTED, f"miner handed out an unusable session id {sid!r} "
                                                          f"(allowed: [A-Za-z0-9_.+=-], 1-64 characters)")
        self._sessions[endpoint.miner_id] = sid
        self._session_used[endpoint.miner_id] = now
        return sid

    async def _privileged(self, endpoint: LuxosEndpoint, progress: list[str], command: str,
                          *values: str) -> dict[str, Any]:
        """A session command; re-logs on once when the miner says the session is not valid."""
        for attempt in range(2):
            sid = await self._session(endpoint, progress)
            progress.append(f"{command} {','.join(values)}")
            response = await self._call(endpoint, command, parameter(sid, *values))
            if _succeeded(response):
                return response
            message = _message(response)
            if attempt == 0 and "session" in message.lower():
                self._sessions.pop(endpoint.miner_id, None)
                continue
            raise LuxosCallError(SetpointStatus.REJECTED, f"miner said {_describe(response)}")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ transport
    async def _call(self, endpoint: LuxosEndpoint, command: str, param: str = "") -> dict[str, Any]:
        last: LuxosCallError | None = None
        for attempt in range(self.attempts):
            if attempt:
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                return await self._once(endpoint, command, param)
            except LuxosCallError as exc:
                last = exc
        assert last is not None
        tries = f" ({self.attempts} attempts)" if self.attempts > 1 else ""
        raise LuxosCallError(last.status, f"{last.reason}{tries}")

    async def _once(self, endpoint: LuxosEndpoint, command: str, param: str) -> dict[str, Any]:
        request: dict[str, str] = {"command": command}
        if param:
            request["parameter"] = param
        what = f"{endpoint.address} {command}"
        loop = asyncio.get_running_loop()
        buf = bytearray()
        async with self._connections:
            # Bare non-blocking sockets on the loop: a fraction of the CPU of asyncio streams per
            # connection, which is what bounds a 1,000-miner batch on a small controller.
            sock = socket.socket(socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await loop.sock_connect(sock, (endpoint.host, endpoint.port))
                    await loop.sock_sendall(sock, json.dumps(request).encode() + b"\n")
                    while b"\0" not in buf:
                        chunk = await loop.sock_recv(sock, 65536)
                        if not chunk:
                            break
                        buf += chunk
                        if len(buf) > _MAX_RESPONSE_BYTES:
                            raise LuxosCallError(SetpointStatus.REJECTED,
                                                 f"{what}: response over {_MAX_RESPONSE_BYTES} bytes")
            except TimeoutError:
                got = f" ({len(buf)} bytes of an answer so far)" if buf else ""
                raise LuxosCallError(SetpointStatus.TIMEOUT, f"{what}: no answer within {self.timeout_s} s{got}") from None
            except ConnectionRefusedError:
                raise LuxosCallError(SetpointStatus.UNREACHABLE, f"{what}: connection refused") from None
            except OSError as exc:
                raise LuxosCallError(SetpointStatus.UNREACHABLE, f"{what}: {exc.strerror or exc}") from None
            finally:
                sock.close()  # also on cancellation: no lingering sockets to hostile peers
        return _parse(bytes(buf), what)



def _parse(raw: bytes, what: str) -> dict[str, Any]:
    """One answer: NUL-terminated JSON with a STATUS list. Raises LuxosCallError."""
    complete = b"\0" in raw
    text = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
    if not text:
        raise LuxosCallError(SetpointStatus.UNREACHABLE, f"{what}: connection closed without an answer")
    try:
        response = json.loads(text)
    except ValueError:
        if not complete:
            raise LuxosCallError(SetpointStatus.UNREACHABLE,
                                 f"{what}: connection closed mid-reply after {len(raw)} bytes") from None
        raise LuxosCallError(SetpointStatus.REJECTED, f"{what}: answer is not JSON: {text[:80]!r}") from None
    if not isinstance(response, dict) or not isinstance(response.get("STATUS"), list):
        raise LuxosCallError(SetpointStatus.REJECTED, f"{what}: answer has no STATUS list")
    return response


def _connection_budget(miners: int, requested: int | None) -> int:
    """Simultaneous connections: ``requested``, or one per miner, within the open-file limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fits = max(1, soft - _FD_RESERVE) if soft != resource.RLIM_INFINITY else max(1, miners)
    wanted = requested if requested is not None else max(1, miners)
    if wanted > fits:
        log.warning("LuxOS driver: %d simultaneous connections wanted but the open-file limit is %d; using %d "
                    "(raise `ulimit -n` so hung miners cannot make others wait)", wanted, soft, fits)
        return fits
    return wanted


def _status_row(response: dict[str, Any]) -> dict[str, Any]:
    rows = response.get("STATUS") or [{}]
    return rows[0] if isinstance(rows[0], dict) else {}


def _succeeded(response: dict[str, Any]) -> bool:
    """Only S (success) and I (info) mean done; W, E, F, ? or no status do not."""
    return _status_row(response).get("STATUS") in SUCCESS_STATES


def _message(response: dict[str, Any]) -> str:
    row = _status_row(response)
    return str(row.get("Msg") or row.get("STATUS") or "no message")


def _describe(response: dict[str, Any]) -> str:
    """``STATUS <letter>: '<Msg>'`` for reasons."""
    letter = _status_row(response).get("STATUS")
    return f"STATUS {letter if letter is not None else 'missing'}: {_message(response)!r}"


def _require_success(response: dict[str, Any], command: str) -> None:
    if not _succeeded(response):
        raise LuxosCallError(SetpointStatus.REJECTED, f"{command}: miner said {_describe(response)}")


def _session_id(response: dict[str, Any]) -> str:
    try:
        return str(response["SESSION"][0]["SessionID"] or "")
    except (KeyError, IndexError, TypeError):
        return ""
