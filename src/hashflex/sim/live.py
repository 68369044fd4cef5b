"""`hashflex sim`: a simulated site on a real broker, for a live `hashflex run` to control; and
:class:`LiveSite`, the dashboard and pacing of `hashflex run --simulate`.

MQTT-simulated miners (every unit of the profile, under the controller's ids) follow
``out/setpoint/<miner>`` and publish telemetry; simulated noise meters publish ``in/noise/<receptor>``
every ``noise_period_s`` from the units actually running (same acoustics as the optimizer, plus the
configured model bias and meter scatter, SYNTHETIC).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any


from hashflex.feeds.mqtt import mqtt_client
from hashflex.messages import Topics
from hashflex.profile import SiteProfile
from hashflex.sim.miners import MqttSimulatedMiners, miners_from_profile
from hashflex.sim.noise import NoiseSensorSim

log = logging.getLogger(__name__)


def running_counts(miners: MqttSimulatedMiners) -> dict[tuple[str, str], int]:
    """Units hashing per (group, mode): what the simulated noise meters hear.

    Parameters
    ----------
    miners : MqttSimulatedMiners
        The simulated miners.

    Returns
    -------
    dict of (str, str) to int
        ``(group_id, mode)`` → miners in that mode with a hashrate above 0 (asleep or booting
        miners are left out: only hashing units run their fans loud).
    """
    counts: dict[tuple[str, str], int] = {}
    for state in miners.states().values():
        if state.mode != "sleep" and state.hashrate_th_s > 0:  # hashing, so its fans are loud
            counts[state.group_id, state.mode] = counts.get((state.group_id, state.mode), 0) + 1
    return counts


def run_live_sim(profile: SiteProfile, host: str, port: int, stop: threading.Event, *,
                 noise_period_s: float = 10.0, noise_bias_db: dict[str, float] | None = None,
                 telemetry_interval_s: float = 5.0) -> None:
    """`hashflex sim`: simulate the profile's miners and noise meters on a broker until ``stop`` is set.

    Every unit of the profile follows its setpoints and publishes telemetry; one noise meter per
    receptor publishes ``in/noise/<receptor>`` (QoS 1, ``simulated``: SYNTHETIC readings) every
    ``noise_period_s`` from the units actually hashing.

    Parameters
    ----------
    profile : SiteProfile
        The site (miner groups, receptors, site id).
    host : str
        The broker's host.
    port : int
        The broker's TCP port.
    stop : threading.Event
        Set it to end the simulation.
    noise_period_s : float, default 10.0
        Seconds between noise readings (wall clock).
    noise_bias_db : dict of str to float, optional
        Receptor id → how far the simulated reality sits above the acoustic model, dB (SYNTHETIC).
    telemetry_interval_s : float, default 5.0
        Seconds between a miner's telemetry messages.
    """
    topics = Topics(profile.site_id)
    miners = MqttSimulatedMiners(profile.site_id, host, port, miners_from_profile(profile),
                                 telemetry_interval_s=telemetry_interval_s)
    sensors = NoiseSensorSim(profile, bias_db=noise_bias_db or {})
    meter = mqtt_client(f"hashflex-sim-noise-{profile.site_id}")
    meter.connect_async(host, port)
    meter.loop_start()
    with miners:
        log.warning("simulating %d miners and %d noise meters for site %s on %s:%d",
                    len(miners.miners), len(profile.receptors), profile.site_id, host, port)
        while not stop.wait(noise_period_s):
            for reading in sensors.measure(running_counts(miners), datetime.now(timezone.utc)):
                meter.publish(topics.noise(reading.receptor_id), reading.model_dump_json(), qos=1)
    meter.disconnect()
    meter.loop_stop()


# --------------------------------------------------------------------------------------------------
# The live site of `hashflex run --simulate`: the dashboard over a simulated clock, paced.

class SimClock:
    """Simulated time for the web side of a simulated run: the interval being simulated, advanced
    with the wall clock at ``speed`` simulated seconds per real second (capped just before the
    next interval, which only the simulation starts). ``speed`` 0: the interval start.

    Parameters
    ----------
    speed : float
        Simulated seconds per wall second (0: time stands at the interval start).
    step_s : float
        The interval length, s; simulated time stays 1 ms short of the next interval.
    """

    def __init__(self, speed: float, step_s: float) -> None:
        self.speed, self.step_s = speed, step_s
        self._at: datetime | None = None
        self._wall = 0.0
        self._lock = threading.Lock()

    def set(self, at: datetime) -> None:
        """Start simulated time at ``at`` (an interval start), from the wall clock now.

        Parameters
        ----------
        at : datetime
            The interval being simulated, timezone-aware.
        """
        with self._lock:
            self._at, self._wall = at, time.monotonic()

    @property
    def wall_started(self) -> float:
        """``time.monotonic()`` when the current interval was :meth:`set`, s (0.0 before)."""
        return self._wall

    def now(self) -> datetime:
        """Simulated time now: wall time before the first :meth:`set`, else inside the interval."""
        with self._lock:
            at, wall = self._at, self._wall
        if at is None:
            return datetime.now(timezone.utc)
        if self.speed <= 0:
            return at
        return at + timedelta(seconds=min((time.monotonic() - wall) * self.speed, self.step_s - 0.001))


class LiveSite:
    """A :class:`hashflex.sim.site.SimulationObserver` that serves the dashboard (``/``, ``/events``,
    ``/healthz``, ``/status``, ``/metrics``, manager writes) of a simulated run and paces it:
    each interval takes at least ``step / speed`` wall seconds (``speed`` 0: no waiting). Prints a
    progress line every ``progress_every`` intervals to ``out``.

    The server binds at construction (a taken port fails at once) and answers 503 "starting"
    until the loop exists; writes go to the loop at simulated time.

    Parameters
    ----------
    profile : SiteProfile
        The simulated site (interval length, time zone, receptors).
    host : str, default "127.0.0.1"
        The dashboard's address.
    port : int, default 9108
        The dashboard's port (0: any free port).
    speed : float, default 900.0
        Simulated seconds per wall second (0: no waiting).
    intervals : int, default 0
        Intervals the run will simulate (progress lines; 0: unknown).
    out : file-like, optional
        Where progress lines go (None: nowhere).
    auth : ManagerAuth, optional
        Who may write limits on the dashboard (default: from the environment).
    progress_every : int, default 4
        Print a progress line every this many intervals (and after the first and the last).
    stop : threading.Event, optional
        Set it to end the run after the current interval.

    Raises
    ------
    OSError
        If the port cannot be bound.
    """

    def __init__(self, profile: SiteProfile, *, host: str = "127.0.0.1", port: int = 9108, speed: float = 900.0,
                 intervals: int = 0, out: Any = None, auth: Any = None, progress_every: int = 4,
                 stop: threading.Event | None = None) -> None:
        from hashflex.control.http import StatusServer

        self.profile = profile
        self.step_s = profile.site.interval_minutes * 60.0
        self.speed = speed
        self.clock = SimClock(speed, self.step_s)
        self.intervals, self.done = intervals, 0
        self.out = out
        self.progress_every = max(1, progress_every)
        self.stop = stop or threading.Event()
        self.last_row: dict[str, Any] = {}
        self.loop: Any = None
        self.server = StatusServer(self._status, self.clock.now, host, port, auth=auth, simulated=True,
                                   measured_fn=self._measured)

    @property
    def url(self) -> str:
        """The dashboard's URL (``http://host:port/``)."""
        return self.server.url

    def start(self) -> None:
        """Start serving (the port is already bound)."""
        self.server.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.stop()

    def _status(self, now: datetime) -> dict[str, Any]:
        if self.loop is None:
            return {"healthy": False, "unhealthy_causes": ["starting: loading prices and the first plan"]}
        status = self.loop.status(now)
        status["simulation"] = {"interval": self.done, "intervals": self.intervals, "speed": self.speed}
        return status

    def _measured(self) -> dict[str, float]:
        row = self.last_row
        keys = {"load_kw": "load_after_fast_path_kw", "grid_import_kw": "grid_import_kw",
                "renewable_kw": "renewable_kw", "price_usd_mwh": "price_usd_mwh"}
        return {k: float(row[v]) for k, v in keys.items() if row.get(v) is not None}

    # SimulationObserver ------------------------------------------------------------------
    def started(self, loop: Any, now: datetime) -> None:
        """The simulation starts: serve ``loop``'s dashboard, simulated time from ``now``.

        Parameters
        ----------
        loop : ControlLoop
            The simulation's control loop.
        now : datetime
            The first interval's start (simulated, UTC).
        """
        self.loop = loop
        self.clock.set(now)
        self.server.attach(loop)

    def message(self, message: Any, now: datetime) -> None:
        """Show an input delivered to the loop on the dashboard's feeds panel.

        Parameters
        ----------
        message : Any
            The inbound message (price, DR event, noise reading, ...).
        now : datetime
            Simulated time of delivery, UTC.
        """
        dashboard = self.server.dashboard
        if dashboard is not None:
            dashboard.feeds.seen(message, now)

    def interval_done(self, row: dict[str, Any], report: Any, now: datetime) -> None:
        """An interval is done: update the dashboard, print progress, pace, start the next interval.

        Parameters
        ----------
        row : dict
            The interval's row of the result frame (price, load, import, limit, noise, reason).
        report : TickReport
            The loop's tick report (not used here).
        now : datetime
            The interval's start (simulated, UTC).

        Raises
        ------
        KeyboardInterrupt
            When ``stop`` is set: ends the simulation as Ctrl-C does.
        """
        self.last_row = row
        self.done += 1
        dashboard = self.server.dashboard
        if dashboard is not None:
            dashboard.notify()
        if self.out is not None and (self.done == 1 or self.done % self.progress_every == 0 or self.done == self.intervals):
            print(self.progress_line(row, now), file=self.out, flush=True)
        if self.speed > 0:  # pace: one interval per step/speed wall seconds, from its start
            wait = self.clock.wall_started + self.step_s / self.speed - time.monotonic()
            if wait > 0:
                self.stop.wait(wait)
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.clock.set(now + timedelta(seconds=self.step_s))

    def progress_line(self, row: dict[str, Any], now: datetime) -> str:
        """``[ 4/96] Sat 01:00 CST  $15.33/MWh  load 30.0 MW  import 21.8 / 30.0 MW (import limit) ...``

        Parameters
        ----------
        row : dict
            The interval's row: ``price_usd_mwh``, ``load_after_fast_path_kw``, ``grid_import_kw``,
            ``import_limit_kw``, ``limit_source``, ``noise_measured_dba_<receptor>``,
            ``noise_cap_dba_<receptor>`` and ``reason``.
        now : datetime
            The interval's start, shown in the site's time zone.

        Returns
        -------
        str
            One line: interval count, local time, price ($/MWh), load and import vs limit (MW),
            each receptor's measured level vs cap (dB(A)), and the plan's reason.

        Raises
        ------
        KeyError
            If a required column of ``row`` is missing.
        """
        local = now.astimezone(self.profile.tz) if hasattr(self.profile.tz, "utcoffset") else now
        width = len(str(self.intervals or self.done))
        noise = "  ".join(f"{r.id} {row.get(f'noise_measured_dba_{r.id}', float('nan')):.1f}/"
                          f"{row.get(f'noise_cap_dba_{r.id}', float('nan')):.0f} dB(A)" for r in self.profile.receptors)
        reason = row.get("reason") or "full load"
        return (f"[{self.done:>{width}}/{self.intervals}] {local:%a %H:%M %Z}  ${row['price_usd_mwh']:.2f}/MWh  "
                f"load {row['load_after_fast_path_kw'] / 1000:.1f} MW  import {row['grid_import_kw'] / 1000:.1f} / "
                f"{row['import_limit_kw'] / 1000:.1f} MW ({row['limit_source']})  {noise}  [{reason}]")
