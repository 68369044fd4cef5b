"""The daemon's web site (Starlette, served by uvicorn on the ``/healthz`` port).

Routes:

========================  ======================================================================
``GET /``                 the dashboard page (static HTML + vendored uPlot; no build step)
``GET /events``           server-sent events: one ``data:`` line with the dashboard document
                          (:func:`hashflex.web.view.dashboard_state`) whenever it changes
``GET /api/state``        the same document once (JSON)
``GET /api/limits``       the limits in force (the ``limits`` part of ``/status``)
``POST /api/limits``      a manager's limits change (JSON, ``Authorization: Bearer <token>``):
                          becomes an ``in/limits`` message handled by the loop; answers the
                          ``out/limits/ack`` document (200 accepted, 409 refused by the book,
                          401/403 no or bad token, 422 invalid field, named)
``GET /healthz``          200 ``ok`` / 503 (with ``unhealthy_causes`` as JSON when named)
``GET /status``           the loop's status JSON
``GET /metrics``          Prometheus text (:class:`hashflex.control.http.StatusMetrics`)
========================  ======================================================================

Reads are open when the server is bound to loopback and need a manager token otherwise (header,
or ``?token=`` for the event stream, which browsers cannot give headers). Writes always need one.

One publisher thread builds the document (every ``period_s``, default 5 s, and on
:meth:`Dashboard.notify`, at most once per ``min_gap_s``, default 0.25 s, so a burst of messages is
one rebuild; miner telemetry does not notify) and serialises it once; every SSE client sends that
same byte string, so the cost does not grow with the number of browsers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hashflex.openadr.config import is_loopback  # noqa: F401 - one definition, re-exported
from hashflex.web.curtailment import LatestTelemetry
from hashflex.web.history import EventLog, FeedAges, NoiseHistory
from hashflex.web.manager import AuthError, ManagerAuth, limits_change
from hashflex.web.view import dashboard_state, unhealthy_causes

log = logging.getLogger(__name__)
STATIC_DIR = resources.files("hashflex.web") / "static"




class Dashboard:
    """The live document of one site, rebuilt by one publisher thread and served to every client.

    Parameters
    ----------
    loop : ControlLoop
        The site's control loop (read only, through :func:`hashflex.web.view.dashboard_state`).
    status_fn : Callable[[datetime], dict]
        The status document at a time (the loop's ``status`` plus the daemon's additions).
    clock : Callable[[], datetime]
        Site time (timezone-aware; simulated under ``run --simulate``).
    simulated : bool, default False
        Label the site SIMULATED.
    measured_fn : Callable[[], dict[str, float]], optional
        The latest meter values (``load_kw``, ``grid_import_kw``, ``renewable_kw`` in kW,
        ``price_usd_mwh``), e.g. the simulated site's.
    submit_limits : Callable[[LimitsChangeMessage], LimitsAck], optional
        How a write reaches the loop (default ``loop.handle_limits(message, clock())``).
    period_s : float, default 5.0
        Rebuild at least this often (s).
    min_gap_s : float, default 0.25
        And at most this often (s): a burst of changes is one rebuild.

    Attributes
    ----------
    telemetry : LatestTelemetry
        Each miner's latest reading, fed by :attr:`feeds` (``now.curtailment``).
    feeds : FeedAges
        Give it every inbound message (``feeds.seen(message, at)``).
    log : EventLog
        The event log, attached to the loop's recorder.
    """

    def __init__(self, loop: Any, status_fn: Callable[[datetime], dict[str, Any]], clock: Callable[[], datetime], *,
                 simulated: bool = False, measured_fn: Callable[[], dict[str, float]] | None = None,
                 submit_limits: Callable[[Any], Any] | None = None, period_s: float = 5.0,
                 min_gap_s: float = 0.25) -> None:
        self.loop, self.status_fn, self.clock = loop, status_fn, clock
        self.simulated = simulated
        self.measured_fn = measured_fn
        self.submit_limits = submit_limits or (lambda message: loop.handle_limits(message, clock()))
        self.period_s = period_s  # rebuild at least this often (feed ages, tick age); the page ticks countdowns
        self.min_gap_s = min_gap_s  # and at most this often: a burst of changes is one rebuild
        self.log = EventLog.attach(loop)
        self.noise = NoiseHistory()
        self.telemetry = LatestTelemetry()  # the miners' latest readings ("available for curtailment")
        self.feeds = FeedAges(self.telemetry)
        self.version = 0
        self.body = b"{}"
        self.build_seconds = 0.0  # CPU of the last build (benchmarks read it)
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def state(self, now: datetime | None = None) -> dict[str, Any]:
        """Build the dashboard document now (not serialised, not published).

        Parameters
        ----------
        now : datetime, optional
            Site time (default ``clock()``).

        Returns
        -------
        dict[str, Any]
            :func:`hashflex.web.view.dashboard_state`.
        """
        now = now or self.clock()
        status = self.status_fn(now)
        return dashboard_state(self.loop, status, now, log=self.log, noise_history=self.noise,
                               measured=self.measured_fn() if self.measured_fn else None,
                               simulated=self.simulated, feed_ages_s=self.feeds.ages_s(now),
                               miner_readings=self.telemetry.snapshot())

    def refresh(self) -> None:
        """Build and serialise the document now (the publisher thread calls this)."""
        import time

        started = time.thread_time()
        try:
            body = json.dumps(self.state(), default=str, allow_nan=False).encode()
        except Exception:  # noqa: BLE001 - a broken view must not take the site down; keep the last one
            log.exception("dashboard state failed")
            return
        with self._lock:
            self.body, self.version = body, self.version + 1
        self.build_seconds = time.thread_time() - started

    def latest(self) -> tuple[int, bytes]:
        """The last published document.

        Returns
        -------
        version : int
            Bumped on every rebuild.
        body : bytes
            The document as JSON.
        """
        with self._lock:
            return self.version, self.body

    def notify(self) -> None:
        """Something changed (a tick, a message): rebuild at once instead of at the next period."""
        self._changed.set()

    def start(self) -> None:
        """Build the first document and start the publisher thread (idempotent)."""
        if self._thread is None:
            self.refresh()
            self._thread = threading.Thread(target=self._run, name="hashflex-dashboard", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the publisher thread (waits up to 5 s)."""
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._changed.wait(self.period_s)
            self._changed.clear()
            if not self._stop.is_set():
                self.refresh()
                self._stop.wait(self.min_gap_s)


def create_app(*, status_fn: Callable[[datetime], dict[str, Any]], clock: Callable[[], datetime],
               metrics: Any, dashboard: Callable[[], Dashboard | None] | None = None,
               auth: ManagerAuth | None = None, reads_open: bool = True,
               stopping: threading.Event | None = None) -> Starlette:
    """The ASGI app of the daemon's web site (routes: see the module docstring).

    Parameters
    ----------
    status_fn : Callable[[datetime], dict]
        The status document at a time; its failures become ``{"healthy": false, "error": ...}``.
    clock : Callable[[], datetime]
        Site time.
    metrics : StatusMetrics
        ``metrics.render(status, state) -> bytes`` gives the Prometheus text.
    dashboard : Callable[[], Dashboard or None], optional
        The site's dashboard, or None while there is none (status only, no writes).
    auth : ManagerAuth, optional
        Manager tokens (default: none, writes refused).
    reads_open : bool, default True
        Reads without a token (bound to loopback); False: reads need a manager token too.
    stopping : threading.Event, optional
        Set at shutdown: ends the event streams.

    Returns
    -------
    starlette.applications.Starlette
    """
    auth = auth or ManagerAuth()
    get_dashboard = dashboard or (lambda: None)
    stopping = stopping or threading.Event()

    def status_now() -> dict[str, Any]:
        try:
            return status_fn(clock())
        except Exception as exc:  # noqa: BLE001 - the endpoint must answer even if the loop is broken
            log.exception("status failed")
            return {"healthy": False, "error": repr(exc)}

    def read_denied(request: Request) -> Response | None:
        if reads_open:
            return None
        header = request.headers.get("authorization")
        if header is None and request.query_params.get("token"):
            header = f"Bearer {request.query_params['token']}"
        try:
            auth.check(header)
        except AuthError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return None

    async def healthz(request: Request) -> Response:
        status = await asyncio.to_thread(status_now)
        causes = unhealthy_causes(status)
        if causes:
            return JSONResponse({"healthy": False, "unhealthy_causes": causes}, status_code=503)
        ok = bool(status.get("healthy"))
        return PlainTextResponse("ok\n" if ok else "unhealthy\n", status_code=200 if ok else 503)

    async def status(request: Request) -> Response:
        if (denied := read_denied(request)) is not None:
            return denied
        body = json.dumps(await asyncio.to_thread(status_now), default=str)
        return Response(body, media_type="application/json")

    async def metrics_route(request: Request) -> Response:
        if (denied := read_denied(request)) is not None:
            return denied
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        def render() -> bytes:
            dashboard = get_dashboard()
            state = json.loads(dashboard.latest()[1]) if dashboard is not None else None
            return metrics.render(status_now(), state)

        return Response(await asyncio.to_thread(render), media_type=CONTENT_TYPE_LATEST)

    async def index(request: Request) -> Response:
        return FileResponse(str(STATIC_DIR / "index.html"), headers={"Cache-Control": "no-cache"})

    async def api_state(request: Request) -> Response:
        if (denied := read_denied(request)) is not None:
            return denied
        dashboard = get_dashboard()
        if dashboard is None:
            return JSONResponse({"status": await asyncio.to_thread(status_now)})
        return Response(dashboard.latest()[1], media_type="application/json")

    async def events(request: Request) -> Response:
        if (denied := read_denied(request)) is not None:
            return denied

        async def stream():  # noqa: ANN202
            sent = -1
            idle = 0.0
            yield b"retry: 2000\n\n"
            while not stopping.is_set():
                dashboard = get_dashboard()
                if dashboard is None:
                    await asyncio.sleep(0.2)
                    continue
                version, body = dashboard.latest()
                if version != sent:
                    sent, idle = version, 0.0
                    yield b"data: " + body + b"\n\n"
                elif idle >= 15.0:  # a comment keeps proxies from closing a quiet stream
                    idle = 0.0
                    yield b": keepalive\n\n"
                await asyncio.sleep(0.2)
                idle += 0.2

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def get_limits(request: Request) -> Response:
        if (denied := read_denied(request)) is not None:
            return denied
        status = await asyncio.to_thread(status_now)
        return JSONResponse(json.loads(json.dumps(status.get("limits") or {}, default=str)))

    async def post_limits(request: Request) -> Response:
        dashboard = get_dashboard()
        if dashboard is None:
            return JSONResponse({"error": "writes are not served here (no control loop yet)"}, status_code=503)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "body: not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body: expected a JSON object"}, status_code=400)
        try:
            issuer = auth.issuer_for(request.headers.get("authorization"), body.get("issuer"))
        except AuthError as exc:
            log.warning("limits write refused from %s: %s", request.client.host if request.client else "?", exc)
            dashboard.log.add(dashboard.clock(), "rejected", "web limits", f"write refused: {exc}")
            dashboard.notify()
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        try:
            message = _message_from_body(body, issuer, dashboard.clock())
        except ValidationError as exc:
            errors = [{"field": ".".join(str(p) for p in e["loc"]) or "body", "error": e["msg"]}
                      for e in exc.errors()]
            return JSONResponse({"error": "; ".join(f"{e['field']}: {e['error']}" for e in errors),
                                 "errors": errors}, status_code=422)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        ack = await asyncio.to_thread(dashboard.submit_limits, message)
        dashboard.notify()
        data = ack.to_json()
        return JSONResponse(data, status_code=200 if data["status"] == "accepted" else 409)

    routes = [
        Route("/", index), Route("/healthz", healthz), Route("/status", status), Route("/metrics", metrics_route),
        Route("/api/state", api_state), Route("/events", events),
        Route("/api/limits", get_limits, methods=["GET"]), Route("/api/limits", post_limits, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ]
    return Starlette(routes=routes)


_FORM_FIELDS = {"issuer", "reason", "import_limit_kw", "noise_caps_dba", "carbon_budget_kg", "carbon_period",
                "valid_minutes", "clear"}


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name}: expected a number")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a number") from None


def _message_from_body(body: dict[str, Any], issuer: str, now: datetime) -> Any:
    """The page's JSON form -> LimitsChangeMessage (see :func:`hashflex.web.manager.limits_change`)."""
    unknown = sorted(set(body) - _FORM_FIELDS)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field (expected {sorted(_FORM_FIELDS)})")
    caps = body.get("noise_caps_dba") or {}
    if not isinstance(caps, dict):
        raise ValueError("noise_caps_dba: expected {receptor_id: cap_dba}")
    caps = {str(k): v for k, v in caps.items() if v not in (None, "")}
    for receptor, cap in caps.items():
        caps[receptor] = _number({f"noise_caps_dba.{receptor}": cap}, f"noise_caps_dba.{receptor}")
    clear = body.get("clear") or []
    if isinstance(clear, str):
        clear = [clear]
    return limits_change(issuer, now, reason=str(body.get("reason") or "set from the dashboard"),
                         import_limit_kw=_number(body, "import_limit_kw"), noise_caps_dba=caps or None,
                         carbon_budget_kg=_number(body, "carbon_budget_kg"),
                         carbon_period=str(body.get("carbon_period") or "day"),
                         valid_minutes=_number(body, "valid_minutes"), clear=list(clear))
