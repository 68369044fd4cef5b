"""Simulated miners that speak the real protocols on real loopback sockets.

Two front ends share one miner model (:class:`SimMiner`):

- :class:`SimulatedMinerFleet`: every miner listens on its own TCP port on 127.0.0.1 and answers the
  cgminer-style JSON API subset of LuxOS that :mod:`hashflex.drivers.luxos` uses (one request per
  connection, JSON response terminated by a NUL byte): ``version``, ``logon``, ``logoff``, ``session``,
  ``curtail`` (``<sid>,sleep`` / ``<sid>,wakeup``), ``profileset`` (``<sid>,<profile>``), ``profiles``,
  ``summary``, ``stats``, ``power``. Modelled on LuxOS's documented API: one active session per miner,
  privileged commands take the session id as the first parameter, a session lapses after
  ``session_timeout_s`` of inactivity. All servers run in one asyncio loop on a background thread.
- :class:`MqttSimulatedMiners`: one MQTT v5 connection multiplexes many miners; the miners follow
  their group's topic ``hashflex/<site>/out/setpoints/<group>`` (one message for many miners) and
  their own ``hashflex/<site>/out/setpoint/<miner>``, and publish a ``TelemetryMessage`` on
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

Layout (split along the seams; this module re-exports every name so old imports keep working):
:mod:`hashflex.sim.miner_model` (the miner model and the clock), :mod:`hashflex.sim.luxos` and
:mod:`hashflex.sim.luxos_commands` (the LuxOS TCP front end), :mod:`hashflex.sim.mqtt_miners` (the MQTT
front end).
"""

from __future__ import annotations

# Re-exports: tests, benchmarks and other modules import these names from here.
from hashflex.sim.luxos import ATM_PROFILESET_REFUSED, SIM_LUXMINER_VERSION, SimulatedMinerFleet
from hashflex.sim.miner_model import (
    BOOTING,
    Clock,
    MinerSnapshot,
    MinerState,
    ScaledClock,
    SimMiner,
    _Fleet,
    miners_from_profile,
)
from hashflex.sim.mqtt_miners import MqttSimulatedMiners

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
_REEXPORTED = (BOOTING, Clock, SIM_LUXMINER_VERSION, _Fleet)  # importable from here as before the split
