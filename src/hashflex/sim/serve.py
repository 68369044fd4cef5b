"""``hashflex sim --protocol luxos|vnish|antminer|whatsminer``: serve simulated miners on loopback TCP for anyone's tools.

The first line on stdout is a JSON object ``{miner_id: [host, port]}`` (the API port: LuxOS/cgminer
4028-style JSON API, Whatsminer's btminer API; for VNish and stock Antminer the web API port, with the cgminer API at ``rpc_ports``); a second
line ``{"rpc_ports": {...}}`` follows for families with two ports. Miners are the profile's groups
(``<group>-<n>`` ids) up to ``--miners`` in total, round-robin over the groups. With
``--standard-ports`` each miner gets its own loopback address 127.<a>.<b>.<c> and the firmware's
standard ports (4028 for the API, 80 for the web), so tools that cannot be given a port (pyasic's
``get_miner``) can find them; binding port 80 needs root (or CAP_NET_BIND_SERVICE).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import TextIO

from hashflex.profile import MinerGroup, SiteProfile

__all__ = ["PROTOCOLS", "fleet_miners", "serve"]

PROTOCOLS = ("luxos", "vnish", "antminer", "whatsminer")


def fleet_miners(profile: SiteProfile, count: int) -> dict[str, MinerGroup]:
    """``count`` miners taken round-robin over the profile's groups, under the controller's ids.

    Raises ValueError for ``count`` < 1 or more miners than the profile has units."""
    from hashflex.sim.miners import miners_from_profile

    total = sum(g.units for g in profile.miner_groups)
    if count < 1 or count > total:
        raise ValueError(f"--miners must be between 1 and {total} (the profile's units), not {count}")
    by_group: dict[str, list[str]] = {}
    all_miners = miners_from_profile(profile)
    for miner_id, group in all_miners.items():
        by_group.setdefault(group.id, []).append(miner_id)
    chosen: dict[str, MinerGroup] = {}
    index = 0
    while len(chosen) < count:
        for ids in by_group.values():
            if index < len(ids) and len(chosen) < count:
                chosen[ids[index]] = all_miners[ids[index]]
        index += 1
    return chosen


def standard_addresses(miner_ids: list[str]) -> dict[str, str]:
    """One loopback address per miner, 127.1.<n // 250>.<n % 250 + 2>."""
    return {mid: f"127.1.{n // 250}.{n % 250 + 2}" for n, mid in enumerate(miner_ids)}


def serve(protocol: str, profile: SiteProfile, miners: int, stop: threading.Event, out: TextIO, *,
          scale: float = 1.0, standard_ports: bool = False,
          on_ready: Callable[[object], None] | None = None) -> None:
    """Serve until ``stop`` is set; print the endpoint map first. Raises ValueError for a bad protocol."""
    from hashflex.sim.miners import ScaledClock, SimulatedMinerFleet

    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)} or mqtt, not {protocol!r}")
    chosen = fleet_miners(profile, miners)
    clock = ScaledClock(scale)
    addresses = standard_addresses(list(chosen)) if standard_ports else {}
    if protocol == "luxos":
        fleet = SimulatedMinerFleet(chosen, clock=clock,
                                    addresses={m: (a, 4028) for m, a in addresses.items()})
        with fleet:
            out.write(json.dumps({m: list(hp) for m, hp in fleet.endpoints().items()}) + "\n")
            out.flush()
            if on_ready:
                on_ready(fleet)
            stop.wait()
        return
    from hashflex.sim.firmware import AntminerStockFleet, VnishFleet, WhatsminerFleet

    if protocol == "whatsminer":
        with WhatsminerFleet(chosen, clock=clock, addresses=addresses) as whatsminers:
            out.write(json.dumps({m: list(hp) for m, hp in whatsminers.endpoints().items()}) + "\n")
            out.flush()
            if on_ready:
                on_ready(whatsminers)
            stop.wait()
        return
    family = VnishFleet if protocol == "vnish" else AntminerStockFleet
    with family(chosen, clock=clock, addresses=addresses) as vnish:
        out.write(json.dumps({m: list(hp) for m, hp in vnish.endpoints().items()}) + "\n")
        out.write(json.dumps({"rpc_ports": {m: list(hp) for m, hp in vnish.rpc_endpoints().items()}}) + "\n")
        out.flush()
        if on_ready:
            on_ready(vnish)
        stop.wait()
