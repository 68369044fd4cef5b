"""LuxOS driver: setpoints over the cgminer-style JSON API on TCP port 4028.

Modelled on LuxOS's documented API (LuxOS extends cgminer's API): a request is one JSON object
``{"command": "...", "parameter": "..."}`` on a fresh TCP connection; the answer is one JSON object
terminated by a NUL byte, with a ``STATUS`` list (``[{"STATUS": "S"|"I"|"W"|"E"|"F", "Code": n,
"Msg": "..."}]``) and a section named after the command. Commands used here:

- ``session`` (the active session id, empty if none), ``logon`` (creates one, ``SESSION[0].SessionID``),
  ``logoff`` (``<sid>``) — LuxOS allows one session per miner; privileged commands take it first.
- ``curtail`` with ``<sid>,sleep`` / ``<sid>,wakeup``: stop hashing (the safe default) / resume.
- ``profileset`` with ``<sid>,<profile>``: select a power profile; modes map to profiles per group.
- ``power`` (``POWER[0].Watts``) and ``summary`` (``SUMMARY[0]["GHS 5s"]``) for verification.

What the driver does for a setpoint: ``sleep`` → ``curtail sleep``; a mode → ``profileset`` with the
group's profile for that mode, then ``curtail wakeup`` (sent every time; it also renews a site watchdog
lease, and the simulator answers ``S`` on an awake miner — check this against your LuxOS version).
Sessions are cached per miner; without one the driver first asks ``session`` (re-using an active
session, as pyasic does) and otherwise calls ``logon``. A privileged command that answers ``E`` with a
message mentioning the session (expired / invalid) drops the cache, logs on again and retries once.

Failures become results, never exceptions: an ``E``/``F`` status → ``rejected`` with the miner's
``Msg``; no answer within ``timeout_s`` per call after ``attempts`` tries (exponential back-off with
jitter) → ``timeout``; connection refused or no route → ``unreachable``. Miners are handled
concurrently in a bounded thread pool (``max_workers``), one setpoint per miner at a time.

Verification (:meth:`LuxosDriver.verify`) reads ``power`` and ``summary``: a mode is confirmed when
the miner hashes and draws ``power_target_kw`` within tolerance; sleep when it does not hash and draws
at most ``sleep_max_kw``. A booting miner reads as ``unverified``: verify after the group's boot time.

API: ``LuxosEndpoint(miner_id, group_id, host, port=4028)``; ``LuxosDriver(endpoints, profiles, *,
max_workers=32, timeout_s=2.0, attempts=3, backoff_s=0.1, backoff_max_s=2.0, tolerance=0.1,
tolerance_kw=0.05, sleep_max_kw=0.1, clock=utc_now)`` where ``profiles`` is group id → {mode: profile};
``apply(batch)``, ``verify(batch)``, ``call(miner_id, command, parameter="") -> dict``, ``close()``.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hashflex.drivers.base import SLEEP, Clock, SetpointResult, SetpointStatus, utc_now
from hashflex.drivers.base import SetpointLike as _SetpointLike

__all__ = ["LuxosCallError", "LuxosDriver", "LuxosEndpoint", "DEFAULT_PORT"]

DEFAULT_PORT = 4028
_MAX_RESPONSE_BYTES = 4_000_000
_ERROR_STATES = {"E", "F"}




@dataclass(frozen=True)
class LuxosEndpoint:
    miner_id: str
    group_id: str
    host: str
    port: int = DEFAULT_PORT

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class LuxosCallError(Exception):
    """A call that did not succeed; ``status`` says how (rejected, timeout, unreachable)."""

    def __init__(self, status: SetpointStatus, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class LuxosDriver:
    """Concurrent LuxOS API client for many miners; see the module docstring."""

    def __init__(self, endpoints: Iterable[LuxosEndpoint], profiles: Mapping[str, Mapping[str, str]], *,
                 max_workers: int = 32, timeout_s: float = 2.0, attempts: int = 3, backoff_s: float = 0.1,
                 backoff_max_s: float = 2.0, tolerance: float = 0.1, tolerance_kw: float = 0.05,
                 sleep_max_kw: float = 0.1, clock: Clock = utc_now) -> None:
        if attempts < 1 or max_workers < 1 or timeout_s <= 0:
            raise ValueError("attempts and max_workers must be >= 1 and timeout_s > 0")
        self.endpoints = {ep.miner_id: ep for ep in endpoints}
        self.profiles = {g: dict(m) for g, m in profiles.items()}
        self.timeout_s, self.attempts = timeout_s, attempts
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.tolerance, self.tolerance_kw, self.sleep_max_kw = tolerance, tolerance_kw, sleep_max_kw
        self.clock = clock
        self._sessions: dict[str, str] = {}
        self._locks = {mid: threading.Lock() for mid in self.endpoints}
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="luxos")
        self.logons = 0  # how many logon calls succeeded (observability; tests use it)

    # ------------------------------------------------------------------ public
    def apply(self, batch: list[_SetpointLike]) -> list[SetpointResult]:
        """Send each setpoint to its miner, concurrently; one result per setpoint, same order."""
        return list(self._pool.map(self._apply_one, batch))

    def verify(self, batch: list[_SetpointLike]) -> list[SetpointResult]:
        """Read back ``power`` and ``summary``: applied when the miner does what the setpoint says."""
        return list(self._pool.map(self._verify_one, batch))

    def call(self, miner_id: str, command: str, parameter: str = "") -> dict[str, Any]:
        """One API call with retries; raises :class:`LuxosCallError` (any STATUS is returned as is)."""
        return self._call(self.endpoints[miner_id], command, parameter)

    def close(self) -> None:
        """Log off cached sessions (best effort, one attempt each) and stop the pool."""
        def logoff(item: tuple[str, str]) -> None:
            miner_id, sid = item
            try:
                self._once(self.endpoints[miner_id], "logoff", sid)
            except LuxosCallError:
                pass

        list(self._pool.map(logoff, list(self._sessions.items())))
        self._sessions.clear()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ setpoints
    def _apply_one(self, setpoint: _SetpointLike) -> SetpointResult:
        start = time.monotonic()
        miner_id = setpoint.miner_id

        def result(status: SetpointStatus, reason: str) -> SetpointResult:
            return SetpointResult(miner_id, status, reason, time.monotonic() - start)

        endpoint = self.endpoints.get(miner_id)
        if endpoint is None:
            return result(SetpointStatus.REJECTED, f"unknown miner {miner_id!r} (no LuxOS endpoint)")
        if setpoint.expires_at <= self.clock():
            return result(SetpointStatus.REJECTED, f"setpoint expired at {setpoint.expires_at.isoformat()}; not sent")
        steps: list[tuple[str, str]]
        if setpoint.mode == SLEEP:
            steps = [("curtail", "sleep")]
        else:
            profile = self.profiles.get(endpoint.group_id, {}).get(setpoint.mode)
            if profile is None:
                known = sorted(self.profiles.get(endpoint.group_id, {}))
                return result(SetpointStatus.REJECTED, f"group {endpoint.group_id!r} has no LuxOS profile for "
                                                       f"mode {setpoint.mode!r} (configured: {known})")
            steps = [("profileset", profile), ("curtail", "wakeup")]
        said = []
        with self._locks[miner_id]:
            for command, argument in steps:
                try:
                    response = self._privileged(endpoint, command, argument)
                except LuxosCallError as exc:
                    done = f" after {'; '.join(said)}" if said else ""
                    return result(exc.status, f"{command} {argument}: {exc.reason}{done}")
                said.append(f"{command} {argument}: {_message(response)}")
        return result(SetpointStatus.APPLIED, "; ".join(said))

    def _verify_one(self, setpoint: _SetpointLike) -> SetpointResult:
        start = time.monotonic()
        endpoint = self.endpoints.get(setpoint.miner_id)
        if endpoint is None:
            return SetpointResult(setpoint.miner_id, SetpointStatus.REJECTED, "unknown miner", 0.0)
        try:
            power = self._call(endpoint, "power")
            summary = self._call(endpoint, "summary")
            _require_success(power, "power")
            _require_success(summary, "summary")
            watts = float(power["POWER"][0]["Watts"])
            row = summary["SUMMARY"][0]
            ghs = float(row["GHS 5s"]) if "GHS 5s" in row else float(row.get("MHS 5s", 0.0)) / 1000.0
        except LuxosCallError as exc:
            return SetpointResult(setpoint.miner_id, exc.status, f"verify: {exc.reason}",
                                  time.monotonic() - start)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return SetpointResult(setpoint.miner_id, SetpointStatus.UNVERIFIED,
                                  f"verify: unexpected response shape ({type(exc).__name__}: {exc})",
                                  time.monotonic() - start)
        status, reason = self._judge(setpoint, watts / 1000.0, ghs / 1000.0)
        return SetpointResult(setpoint.miner_id, status, reason, time.monotonic() - start)

    def _judge(self, setpoint: _SetpointLike, power_kw: float, th_s: float) -> tuple[SetpointStatus, str]:
        seen = f"power {power_kw:.3f} kW, hashrate {th_s:.1f} TH/s"
        if setpoint.mode == SLEEP:
            if th_s == 0 and power_kw <= self.sleep_max_kw:
                return SetpointStatus.APPLIED, f"{seen}: asleep as asked"
            return SetpointStatus.UNVERIFIED, f"{seen}; expected sleep (no hashrate, <= {self.sleep_max_kw} kW)"
        band = max(self.tolerance_kw, self.tolerance * setpoint.power_target_kw)
        if th_s > 0 and abs(power_kw - setpoint.power_target_kw) <= band:
            return SetpointStatus.APPLIED, f"{seen}: matches {setpoint.mode}"
        hint = " (not hashing: asleep or still booting)" if th_s == 0 else ""
        return SetpointStatus.UNVERIFIED, (f"{seen}; expected {setpoint.mode} at {setpoint.power_target_kw:.3f} "
                                           f"± {band:.3f} kW{hint}")

    # ------------------------------------------------------------------ sessions
    def _session(self, endpoint: LuxosEndpoint) -> str:
        cached = self._sessions.get(endpoint.miner_id)
        if cached:
            return cached
        active = self._call(endpoint, "session")
        sid = _session_id(active) if _succeeded(active) else ""
        if not sid:
            response = self._call(endpoint, "logon")
            if not _succeeded(response):
                raise LuxosCallError(SetpointStatus.REJECTED, f"logon refused: {_message(response)}")
            sid = _session_id(response)
            if not sid:
                raise LuxosCallError(SetpointStatus.REJECTED, "logon answered without a SessionID")
            self.logons += 1
        self._sessions[endpoint.miner_id] = sid
        return sid

    def _privileged(self, endpoint: LuxosEndpoint, command: str, argument: str) -> dict[str, Any]:
        """A session command; re-logs on once when the miner says the session is not valid."""
        for attempt in range(2):
            sid = self._session(endpoint)
            response = self._call(endpoint, command, f"{sid},{argument}")
            if _succeeded(response):
                return response
            message = _message(response)
            if attempt == 0 and "session" in message.lower():
                self._sessions.pop(endpoint.miner_id, None)
                continue
            raise LuxosCallError(SetpointStatus.REJECTED, f"miner said {message!r}")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ transport
    def _call(self, endpoint: LuxosEndpoint, command: str, parameter: str = "") -> dict[str, Any]:
        last: LuxosCallError | None = None
        for attempt in range(self.attempts):
            if attempt:
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * random.uniform(0.5, 1.0))
            try:
                return self._once(endpoint, command, parameter)
            except LuxosCallError as exc:
                last = exc
        assert last is not None
        tries = f" ({self.attempts} attempts)" if self.attempts > 1 else ""
        raise LuxosCallError(last.status, f"{last.reason}{tries}")

    def _once(self, endpoint: LuxosEndpoint, command: str, parameter: str) -> dict[str, Any]:
        request: dict[str, str] = {"command": command}
        if parameter:
            request["parameter"] = parameter
        deadline = time.monotonic() + self.timeout_s
        what = f"{endpoint.address} {command}"
        try:
            with socket.create_connection((endpoint.host, endpoint.port), timeout=self.timeout_s) as sock:
                sock.sendall(json.dumps(request).encode() + b"\n")
                buf = bytearray()
                while b"\0" not in buf:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise socket.timeout
                    sock.settimeout(remaining)
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > _MAX_RESPONSE_BYTES:
                        raise LuxosCallError(SetpointStatus.REJECTED, f"{what}: response over {_MAX_RESPONSE_BYTES} bytes")
        except socket.timeout:
            raise LuxosCallError(SetpointStatus.TIMEOUT, f"{what}: no answer within {self.timeout_s} s") from None
        except ConnectionRefusedError:
            raise LuxosCallError(SetpointStatus.UNREACHABLE, f"{what}: connection refused") from None
        except OSError as exc:
            raise LuxosCallError(SetpointStatus.UNREACHABLE, f"{what}: {exc.strerror or exc}") from None
        text = bytes(buf).split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
        if not text:
            raise LuxosCallError(SetpointStatus.UNREACHABLE, f"{what}: connection closed without an answer")
        try:
            response = json.loads(text)
        except ValueError:
            raise LuxosCallError(SetpointStatus.REJECTED, f"{what}: answer is not JSON: {text[:80]!r}") from None
        if not isinstance(response, dict) or not isinstance(response.get("STATUS"), list):
            raise LuxosCallError(SetpointStatus.REJECTED, f"{what}: answer has no STATUS list")
        return response


def _status_row(response: dict[str, Any]) -> dict[str, Any]:
    rows = response.get("STATUS") or [{}]
    return rows[0] if isinstance(rows[0], dict) else {}


def _succeeded(response: dict[str, Any]) -> bool:
    return _status_row(response).get("STATUS") not in _ERROR_STATES | {None}


def _message(response: dict[str, Any]) -> str:
    row = _status_row(response)
    return str(row.get("Msg") or row.get("STATUS") or "no message")


def _require_success(response: dict[str, Any], command: str) -> None:
    if not _succeeded(response):
        raise LuxosCallError(SetpointStatus.REJECTED, f"{command}: miner said {_message(response)!r}")


def _session_id(response: dict[str, Any]) -> str:
    try:
        return str(response["SESSION"][0]["SessionID"] or "")
    except (KeyError, IndexError, TypeError):
        return ""
