"""LuxOS driver: setpoints over the cgminer-style JSON API on TCP port 4028.

Modelled on LuxOS's documented API (LuxOS extends cgminer's API; docs.luxor.tech "LUXminer commands"):
a request is one JSON object ``{"command": "...", "parameter": "..."}`` on a fresh TCP connection; the
answer is one JSON object terminated by a NUL byte, with a ``STATUS`` list (``[{"STATUS": "S"|"I"|"W"|
"E"|"F", "Code": n, "Msg": "..."}]``) and a section named after the command. Commands used here:

- ``session`` (the active session id, empty if none), ``logon`` (creates one, ``SESSION[0].SessionID``),
  ``logoff`` (``<sid>``) — LuxOS allows one session per miner; privileged commands take it first.
- ``curtail`` with ``<sid>,sleep`` / ``<sid>,wakeup``: stop hashing (the safe default) / resume.
- ``profileset`` with ``<sid>,<profile>``: select a power profile; modes map to profiles per group.
- ``atmset`` with ``<sid>,enabled=false`` / ``<sid>,enabled=true``: Advanced Thermal Management (ATM)
  picks profiles itself while on, and LuxOS refuses a manual ``profileset`` then.
- ``power`` (``POWER[0].Watts``) and ``summary`` (``SUMMARY[0]["GHS 5s"]``) for verification.

What the driver does for a setpoint: ``sleep`` → ``curtail sleep``; a mode → ``profileset`` with the
group's profile for that mode, then ``curtail wakeup`` (sent every time; it also renews a site watchdog
lease, and the simulator answers ``S`` on an awake miner — check this against your LuxOS version).
If ``profileset`` is refused because ATM is on (the miner's ``Msg`` mentions ATM), the driver turns ATM
off, sets the profile and turns ATM back on, as LuxOS documents. If the miner refuses the profile change
(ATM or anything else) the driver falls back to ``curtail sleep``, the safe default, and reports the
setpoint ``rejected`` with both reasons ("... fell back to curtail sleep"): a miner left in an unknown
profile could draw more than the plan allows.

Sessions are cached per miner. LuxOS documents that a session lapses after a minute unused, so a
cached session idle for ``session_idle_s`` (default 50 s, driver clock) is not tried: the driver calls
``logon`` (one round trip instead of a failed command first); if ``logon`` is refused because a session
is active, it asks ``session`` and re-uses that one (as pyasic does). A privileged command that answers
an error mentioning the session (expired / invalid) drops the cache, logs on again and retries once.

Parameters: LuxOS/cgminer split the parameter on ``,`` (cgminer documents ``\\,`` / ``\\\\`` escapes only
for ``addpool``'s fields; LuxOS documents none). So every field the driver sends — session ids from the
miner, profile names from the configuration — must match ``[A-Za-z0-9_.+=-]{1,64}``: a profile name
that does not is refused when the driver is built (``ValueError`` naming ``profiles[group][mode]``), a
session id that does not is never sent (the setpoint is ``rejected``: "unusable session id").

Failures become results, never exceptions. Only ``STATUS`` ``S`` (success) and ``I`` (info) count as
success; ``W``, ``E``, ``F``, ``?`` or a missing status → ``rejected`` with the miner's ``Msg``. No answer
within ``timeout_s`` per call after ``attempts`` tries (exponential back-off with jitter) → ``timeout``;
connection refused, no route, or a peer that closes mid-reply → ``unreachable``.

Concurrency and deadlines: all I/O runs on one asyncio event loop in a background thread (non-blocking
sockets), every miner of a batch at once, one setpoint per miner at a time. Each miner has its own total
deadline, ``deadline_s`` from the start of the batch, covering every call, retry and back-off of its
setpoint: a hung, dripping or half-closing miner costs only its own deadline and never delays another
miner, so ``apply`` returns within about ``deadline_s`` however many miners hang. ``max_connections``
(default: one per miner, lowered to fit the process's open-file limit) caps simultaneous connections;
when it binds, sleep setpoints go first and the wait counts against each miner's deadline.

Verification (:meth:`LuxosDriver.verify`) reads ``power`` and ``summary`` for the setpoints sent since
the last verification (the loop calls ``verify(timeout_s)``), or for an explicit ``batch``: a mode is
confirmed (``applied``) when the miner hashes and draws ``power_target_kw`` within tolerance; sleep when
it does not hash and draws at most ``sleep_max_kw``. A booting miner reads as ``unverified``. An
``applied`` verification is what makes :class:`~hashflex.drivers.base.MinerRegistry` restore a miner
marked unavailable, so a miner that answers again comes back.

The wire layer (endpoints, the parameter rule, calls, sessions, ``STATUS`` rows) is in
:mod:`hashflex.drivers.luxos_api`; this module keeps the setpoint logic and re-exports its public names.

API: ``LuxosEndpoint(miner_id, group_id, host, port=4028)``; ``LuxosDriver(endpoints, profiles, *,
timeout_s=2.0, deadline_s=5.0, attempts=3, backoff_s=0.1, backoff_max_s=2.0, max_connections=None,
tolerance=0.1, tolerance_kw=0.05, sleep_max_kw=0.1, session_idle_s=50.0, clock=utc_now)`` where ``profiles`` is group id →
{mode: profile}; ``apply(batch)``, ``verify(timeout_s=0.0, batch=None)``, ``call(miner_id, command,
*values) -> dict``, ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, TypeVar

from hashflex.drivers.base import SLEEP, Clock, Setpoint, SetpointResult, SetpointStatus, utc_now
from hashflex.drivers.luxos_api import (  # re-exported: the public names stay importable from here
    DEFAULT_PORT,
    SUCCESS_STATES,
    LuxosCallError,
    LuxosEndpoint,
    _connection_budget,
    _LuxosApi,
    _message,
    _require_success,
    parameter,
)

__all__ = ["LuxosCallError", "LuxosDriver", "LuxosEndpoint", "DEFAULT_PORT", "SUCCESS_STATES", "parameter"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class LuxosDriver(_LuxosApi):
    """Concurrent LuxOS API client for many miners; see the module docstring."""

    def __init__(self, endpoints: Iterable[LuxosEndpoint], profiles: Mapping[str, Mapping[str, str]], *,
                 timeout_s: float = 2.0, deadline_s: float = 5.0, attempts: int = 3, backoff_s: float = 0.1,
                 backoff_max_s: float = 2.0, max_connections: int | None = None, tolerance: float = 0.1,
                 tolerance_kw: float = 0.05, sleep_max_kw: float = 0.1, session_idle_s: float = 50.0,
                 clock: Clock = utc_now) -> None:
        if attempts < 1 or timeout_s <= 0 or deadline_s <= 0 or session_idle_s < 0:
            raise ValueError("attempts must be >= 1, timeout_s and deadline_s > 0, session_idle_s >= 0")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be >= 1 (or None: one per miner)")
        self.endpoints = {ep.miner_id: ep for ep in endpoints}
        self.profiles = {g: dict(m) for g, m in profiles.items()}
        for group, modes in self.profiles.items():
            for mode, name in modes.items():
                try:
                    parameter(name)
                except ValueError as exc:
                    raise ValueError(f"profiles[{group!r}][{mode!r}]: {exc}") from None
        self.timeout_s, self.deadline_s, self.attempts = timeout_s, deadline_s, attempts
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.tolerance, self.tolerance_kw, self.sleep_max_kw = tolerance, tolerance_kw, sleep_max_kw
        self.clock = clock
        self.session_idle_s = session_idle_s
        self.max_connections = _connection_budget(len(self.endpoints), max_connections)
        self.logons = 0  # how many logon calls succeeded (observability; tests use it)
        # Touched only on the I/O thread:
        self._sessions: dict[str, str] = {}
        self._session_used: dict[str, Any] = {}  # miner -> clock() when its cached session was last used
        self._pending: dict[str, Setpoint] = {}  # last setpoint sent per miner, until verified
        self._locks = {mid: asyncio.Lock() for mid in self.endpoints}
        self._connections = asyncio.Semaphore(self.max_connections)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="luxos-io", daemon=True)
        self._thread.start()
        self._closed = False

    # ------------------------------------------------------------------ public
    def apply(self, batch: list[Setpoint]) -> list[SetpointResult]:
        """Send each setpoint to its miner, all miners at once; one result per setpoint, same order.

        Returns within about ``deadline_s`` (each miner's own deadline) however many miners hang."""
        if not batch:
            return []
        fallback = [SetpointResult(sp.miner_id, SetpointStatus.TIMEOUT, "driver I/O thread did not finish "
                                   f"within {self.deadline_s} s (overloaded?)", self.deadline_s) for sp in batch]
        return self._run(self._apply_all(batch), fallback)

    def verify(self, timeout_s: float = 0.0, batch: list[Setpoint] | None = None) -> list[SetpointResult]:
        """Read back ``power`` and ``summary``: ``applied`` when the miner does what the setpoint says.

        Without ``batch``: every setpoint sent since the last verification (the latest per miner, expired
        ones dropped), as ``ControlLoop.verify_setpoints`` calls it. ``timeout_s`` > 0 re-reads miners not
        yet confirmed (e.g. booting) until then; 0 reads once. Each read has the per-miner deadline."""
        if timeout_s < 0:
            raise ValueError("timeout_s must be >= 0")
        explicit = None if batch is None else list(batch)
        fallback = [SetpointResult(sp.miner_id, SetpointStatus.TIMEOUT, "verify: driver I/O thread did not "
                                   "finish", timeout_s) for sp in explicit or []]
        return self._run(self._verify_all(explicit, timeout_s), fallback, extra_s=timeout_s)

    def call(self, miner_id: str, command: str, *values: str) -> dict[str, Any]:
        """One API call with retries and the per-miner deadline; ``values`` are checked and joined by
        :func:`parameter`. Raises :class:`LuxosCallError` (any STATUS is returned as is), KeyError for an
        unknown miner, ValueError for an unsafe value."""
        endpoint = self.endpoints[miner_id]
        param = parameter(*values) if values else ""

        async def bounded() -> dict[str, Any]:
            try:
                return await asyncio.wait_for(self._call(endpoint, command, param), self.deadline_s)
            except asyncio.TimeoutError:
                raise LuxosCallError(SetpointStatus.TIMEOUT, f"{endpoint.address} {command}: per-miner "
                                                             f"deadline {self.deadline_s} s passed") from None

        future = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        return future.result(self.deadline_s + 10.0)

    def close(self) -> None:
        """Log off cached sessions (best effort, one attempt each, within the deadline) and stop the
        I/O thread. Idempotent."""
        if self._closed:
            return
        self._closed = True

        async def logoff_all() -> None:
            async def logoff(miner_id: str, sid: str) -> None:
                try:
                    await self._once(self.endpoints[miner_id], "logoff", parameter(sid))
                except (LuxosCallError, ValueError):
                    pass

            sessions, self._sessions = dict(self._sessions), {}
            if sessions:
                await asyncio.wait([asyncio.ensure_future(logoff(m, s)) for m, s in sessions.items()],
                                   timeout=self.timeout_s)
            # Whatever is still running (log offs to hung miners, an abandoned batch) ends here.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(logoff_all(), self._loop).result(self.timeout_s + 5.0)
        except Exception:  # closing must not fail: log off is a courtesy to other API users
            log.warning("LuxOS driver: log off on close did not finish", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # ------------------------------------------------------------------ plumbing
    def _run(self, coro: Awaitable[list[SetpointResult]], fallback: list[SetpointResult],
             extra_s: float = 0.0) -> list[SetpointResult]:
        """Run ``coro`` on the I/O thread; if it overruns its deadlines badly, answer ``fallback``."""
        if self._closed:
            coro.close()  # type: ignore[attr-defined]
            return [SetpointResult(r.miner_id, SetpointStatus.UNREACHABLE, "LuxOS driver is closed", 0.0)
                    for r in fallback]
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            return future.result(self.deadline_s + extra_s + 10.0)
        except TimeoutError:
            future.cancel()
            log.error("LuxOS driver: batch overran its deadline by 10 s; reporting timeouts")
            return fallback

    async def _bounded(self, miner_id: str, started: float, work: Awaitable[_T], what: str,
                       progress: list[str]) -> _T | SetpointResult:
        """``work`` within the miner's deadline (``deadline_s`` after ``started``), else a timeout result."""
        remaining = started + self.deadline_s - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return await work
        except TimeoutError:
            doing = f" (during {progress[-1]})" if progress else ""
            return SetpointResult(miner_id, SetpointStatus.TIMEOUT,
                                  f"{what}: per-miner deadline {self.deadline_s} s passed{doing}",
                                  time.monotonic() - started)

    # ------------------------------------------------------------------ setpoints
    async def _apply_all(self, batch: list[Setpoint]) -> list[SetpointResult]:
        started = time.monotonic()
        # Sleep first: when connections are capped, the safe commands are the ones that must not wait.
        order = sorted(range(len(batch)), key=lambda i: batch[i].mode != SLEEP)
        tasks: dict[int, asyncio.Future[SetpointResult]] = {}
        for i in order:
            tasks[i] = asyncio.ensure_future(self._apply_bounded(batch[i], started))
        return list(await asyncio.gather(*(tasks[i] for i in range(len(batch)))))

    async def _apply_bounded(self, setpoint: Setpoint, started: float) -> SetpointResult:
        progress: list[str] = []
        what = "curtail sleep" if setpoint.mode == SLEEP else f"mode {setpoint.mode}"
        result = await self._bounded(setpoint.miner_id, started, self._apply_one(setpoint, started, progress),
                                     what, progress)
        assert isinstance(result, SetpointResult)
        return result

    async def _apply_one(self, setpoint: Setpoint, started: float, progress: list[str]) -> SetpointResult:
        miner_id = setpoint.miner_id

        def result(status: SetpointStatus, reason: str) -> SetpointResult:
            return SetpointResult(miner_id, status, reason, time.monotonic() - started)

        endpoint = self.endpoints.get(miner_id)
        if endpoint is None:
            return result(SetpointStatus.REJECTED, f"unknown miner {miner_id!r} (no LuxOS endpoint)")
        if setpoint.expires_at <= self.clock():
            return result(SetpointStatus.REJECTED, f"setpoint expired at {setpoint.expires_at.isoformat()}; not sent")
        profile = None
        if setpoint.mode != SLEEP:
            profile = self.profiles.get(endpoint.group_id, {}).get(setpoint.mode)
            if profile is None:
                known = sorted(self.profiles.get(endpoint.group_id, {}))
                return result(SetpointStatus.REJECTED, f"group {endpoint.group_id!r} has no LuxOS profile for "
                                                       f"mode {setpoint.mode!r} (configured: {known})")
        self._pending[miner_id] = setpoint  # sent (or tried): verify reads it back
        async with self._locks[miner_id]:
            if profile is None:
                return await self._sleep(endpoint, result, progress)
            return await self._run_mode(endpoint, profile, result, progress)

    async def _sleep(self, endpoint: LuxosEndpoint, result: Any, progress: list[str]) -> SetpointResult:
        try:
            response = await self._privileged(endpoint, progress, "curtail", "sleep")
        except LuxosCallError as exc:
            return result(exc.status, f"curtail sleep: {exc.reason}")
        return result(SetpointStatus.APPLIED, f"curtail sleep: {_message(response)}")

    async def _run_mode(self, endpoint: LuxosEndpoint, profile: str, result: Any,
                        progress: list[str]) -> SetpointResult:
        said: list[str] = []
        try:
            response = await self._privileged(endpoint, progress, "profileset", profile)
            said.append(f"profileset {profile}: {_message(response)}")
        except LuxosCallError as exc:
            if exc.status is not SetpointStatus.REJECTED:
                return result(exc.status, f"profileset {profile}: {exc.reason}")
            if "atm" in exc.reason.lower():
                refused = await self._profileset_around_atm(endpoint, profile, progress, said)
            else:
                refused = f"profileset {profile}: {exc.reason}"
            if refused:
                return await self._fall_back_to_sleep(endpoint, refused, result, progress)
        try:
            response = await self._privileged(endpoint, progress, "curtail", "wakeup")
        except LuxosCallError as exc:
            return result(exc.status, f"curtail wakeup: {exc.reason} after {'; '.join(said)}")
        said.append(f"curtail wakeup: {_message(response)}")
        return result(SetpointStatus.APPLIED, "; ".join(said))

    async def _profileset_around_atm(self, endpoint: LuxosEndpoint, profile: str, progress: list[str],
                                     said: list[str]) -> str | None:
        """ATM off, ``profileset``, ATM on (LuxOS's documented way); None on success, else what failed."""
        atm_off = False
        try:
            await self._privileged(endpoint, progress, "atmset", "enabled=false")
            atm_off = True
            response = await self._privileged(endpoint, progress, "profileset", profile)
            await self._privileged(endpoint, progress, "atmset", "enabled=true")
            atm_off = False
        except LuxosCallError as exc:
            if atm_off:  # leave ATM as we found it (it guards the miner's temperatures); best effort
                try:
                    await self._privileged(endpoint, progress, "atmset", "enabled=true")
                except LuxosCallError as again:
                    return (f"profileset {profile} with ATM on: {exc.reason}; turning ATM back on failed "
                            f"too: {again.reason}")
            return f"profileset {profile} with ATM on: {exc.reason}"
        said.append(f"profileset {profile}: {_message(response)} (ATM turned off and back on around it)")
        return None

    async def _fall_back_to_sleep(self, endpoint: LuxosEndpoint, refused: str, result: Any,
                                  progress: list[str]) -> SetpointResult:
        try:
            await self._privileged(endpoint, progress, "curtail", "sleep")
        except LuxosCallError as exc:
            return result(SetpointStatus.REJECTED, f"{refused}; curtail sleep fallback failed too: {exc.reason}")
        return result(SetpointStatus.REJECTED, f"{refused}; fell back to curtail sleep")

    # ------------------------------------------------------------------ verification
    async def _verify_all(self, batch: list[Setpoint] | None, timeout_s: float) -> list[SetpointResult]:
        if batch is None:
            now = self.clock()
            batch = [sp for sp in self._pending.values() if sp.expires_at > now]
            self._pending = {}
        started = time.monotonic()
        results = list(await asyncio.gather(*(self._verify_bounded(sp) for sp in batch)))
        while timeout_s > 0:
            again = [i for i, r in enumerate(results) if r.status is SetpointStatus.UNVERIFIED]
            remaining = started + timeout_s - time.monotonic()
            if not again or remaining <= 0:
                break
            await asyncio.sleep(min(0.5, remaining))
            for i, r in zip(again, await asyncio.gather(*(self._verify_bounded(batch[i]) for i in again))):
                results[i] = r
        return results

    async def _verify_bounded(self, setpoint: Setpoint) -> SetpointResult:
        started, progress = time.monotonic(), ["power"]
        result = await self._bounded(setpoint.miner_id, started, self._verify_one(setpoint, started, progress),
                                     "verify", progress)
        assert isinstance(result, SetpointResult)
        return result

    async def _verify_one(self, setpoint: Setpoint, started: float, progress: list[str]) -> SetpointResult:
        endpoint = self.endpoints.get(setpoint.miner_id)
        if endpoint is None:
            return SetpointResult(setpoint.miner_id, SetpointStatus.REJECTED, "unknown miner", 0.0)
        try:
            power = await self._call(endpoint, "power")
            progress.append("summary")
            summary = await self._call(endpoint, "summary")
            _require_success(power, "power")
            _require_success(summary, "summary")
            watts = float(power["POWER"][0]["Watts"])
            row = summary["SUMMARY"][0]
            ghs = float(row["GHS 5s"]) if "GHS 5s" in row else float(row.get("MHS 5s", 0.0)) / 1000.0
        except LuxosCallError as exc:
            return SetpointResult(setpoint.miner_id, exc.status, f"verify: {exc.reason}",
                                  time.monotonic() - started)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return SetpointResult(setpoint.miner_id, SetpointStatus.UNVERIFIED,
                                  f"verify: unexpected response shape ({type(exc).__name__}: {exc})",
                                  time.monotonic() - started)
        status, reason = self._judge(setpoint, watts / 1000.0, ghs / 1000.0)
        return SetpointResult(setpoint.miner_id, status, reason, time.monotonic() - started)

    def _judge(self, setpoint: Setpoint, power_kw: float, th_s: float) -> tuple[SetpointStatus, str]:
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
