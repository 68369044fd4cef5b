"""Simulated miners running other firmware families, on real loopback sockets.

- :class:`VnishFleet` (:mod:`hashflex.sim.vnish`): VNish (AnthillOS) on Antminers — web API and
  cgminer API;
- :class:`AntminerStockFleet` (:mod:`hashflex.sim.antminer`): Bitmain's stock firmware — CGI web API
  behind HTTP Digest authentication, bmminer API;
- :class:`WhatsminerFleet` (:mod:`hashflex.sim.whatsminer`): MicroBT's btminer API v2 with its
  encrypted privileged commands;

all served by :mod:`hashflex.sim.served` and reporting telemetry from
:class:`~hashflex.sim.hardware.MinerHardware`. This module re-exports them (split along the seams;
old imports keep working). SIMULATED.
"""

from __future__ import annotations

# Re-exports: tests, benchmarks and hashflex.sim.serve import these names from here.
from hashflex.sim.antminer import ANTMINER_REALM, AntminerStockFleet
from hashflex.sim.served import _AsyncServers, _CgminerProtocol, _HttpProtocol, _ServedFleet
from hashflex.sim.vnish import VNISH_VERSION, VnishFleet, preset_name
from hashflex.sim.whatsminer import WHATSMINER_FW, WhatsminerFleet

__all__ = ["ANTMINER_REALM", "AntminerStockFleet", "VNISH_VERSION", "VnishFleet", "WhatsminerFleet"]
_REEXPORTED = (WHATSMINER_FW, preset_name, _AsyncServers, _CgminerProtocol, _HttpProtocol, _ServedFleet)
