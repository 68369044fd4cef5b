"""DR -> every setpoint on a mixed-firmware fleet: how long until each miner has its sleep command.

``--miners`` simulated miners (default 1,000) run in a child process (miners are other machines: their
CPU is not the controller's), split by ``--mix`` (default ``luxos=0.4,vnish=0.2,antminer=0.2,
whatsminer=0.2``) over our simulators: LuxOS (``SimulatedMinerFleet``), VNish (``VnishFleet``), stock
Antminer (``AntminerStockFleet``: CGI web API behind Digest auth) and Whatsminer (``WhatsminerFleet``:
btminer API v2, AES-encrypted privileged commands). The controller sends one DR cut (every miner to
sleep) at once: LuxOS miners through the native :class:`~hashflex.drivers.luxos.LuxosDriver` (or pyasic
with ``--all-pyasic``), the others through :class:`~hashflex.drivers.pyasic_driver.PyasicDriver`, one
driver per family, all in parallel threads. Latency per miner = the moment its simulator read the sleep
command (LuxOS ``curtail <sid>,sleep``; VNish ``POST /api/v1/mining/stop``; Antminer ``POST
/cgi-bin/set_miner_conf.cgi``; Whatsminer ``power_off``) minus the batch start (``time.monotonic()``,
system-wide on Linux). Before each cut every miner is woken (not measured) so sessions/tokens are warm.

    python optimization/benchmarks/mixed_fleet_dr_latency.py [--miners 1000] [--mix luxos=0.4,...]
        [--trials 3] [--all-pyasic]

Prints p50/p99/max per family and overall and how long each driver's ``apply`` took. Drivers and
simulators share the machine's cores (2 on the reference machine), so numbers are pessimistic.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import numpy as np

from hashflex.drivers.base import Setpoint, SetpointResult, utc_now
from hashflex.drivers.luxos import LuxosDriver, LuxosEndpoint
from hashflex.drivers.pyasic_driver import PyasicDriver, PyasicEndpoint
from hashflex.profile import MinerGroup, MinerMode

MODES = [MinerMode(name="eco", power_kw=2.6, hashrate_th_s=115.0, sound_power_dba=88.0),
         MinerMode(name="stock", power_kw=3.0, hashrate_th_s=134.0, sound_power_dba=90.0)]
GROUPS = {"luxos": MinerGroup(id="fleet", model="Antminer S19 XP", units=10_000, modes=MODES),
          "vnish": MinerGroup(id="fleet", model="Antminer S19 XP", units=10_000, modes=MODES),
          "antminer": MinerGroup(id="fleet", model="Antminer S19 XP", units=10_000, modes=MODES),
          "whatsminer": MinerGroup(id="fleet", model="Whatsminer M50VH80", units=10_000, modes=MODES)}
MODES_KW = {"fleet": {"eco": 2.6, "stock": 3.0}}
CUT = {"luxos": lambda c, p: c == "curtail" and p.endswith(",sleep"),
       "vnish": lambda m, p: p == "/api/v1/mining/stop",
       "antminer": lambda m, p: m == "POST" and p == "/cgi-bin/set_miner_conf.cgi",
       "whatsminer": lambda c, _: c == "power_off"}


def _sim_main(conn: Any, ids: dict[str, list[str]]) -> None:
    from hashflex.sim.firmware import AntminerStockFleet, VnishFleet, WhatsminerFleet
    from hashflex.sim.miners import ScaledClock, SimulatedMinerFleet

    clock = ScaledClock(1.0)
    kinds = {"luxos": SimulatedMinerFleet, "vnish": VnishFleet, "antminer": AntminerStockFleet,
             "whatsminer": WhatsminerFleet}
    fleets = {f: kinds[f]({m: GROUPS[f] for m in ids[f]}, clock=clock).start() for f in ids if ids[f]}
    conn.send({f: {"ends": fl.endpoints(), "rpc": getattr(fl, "rpc_endpoints", fl.endpoints)()}
               for f, fl in fleets.items()})
    while True:
        op, args = conn.recv()
        if op == "stop":
            for fleet in fleets.values():
                fleet.stop()
            conn.send(None)
            return
        if op == "received":
            since, out = args[0], {}
            for family, fleet in fleets.items():
                match = CUT[family]
                for m in fleet.miners:
                    rows = fleet.received_at[m]
                    out[m] = [r[0] for r in rows if r[0] >= since and match(*r[1:3]) if len(r) >= 3] \
                        if family != "whatsminer" else [t for t, c in rows if t >= since and match(c, "")]
            conn.send(out)


def _batch(ids: list[str], mode: str) -> list[Setpoint]:
    now = utc_now()
    return [Setpoint(m, mode, 0.0 if mode == "sleep" else 3.0, now, now + timedelta(minutes=15)) for m in ids]


def _mix(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        if name not in GROUPS:
            raise SystemExit(f"--mix: unknown family {name!r} (use {', '.join(GROUPS)})")
        out[name] = float(share)
    return out


def main() -> int:
    """Parse the arguments, run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--miners", type=int, default=1000)
    parser.add_argument("--mix", default="luxos=0.4,vnish=0.2,antminer=0.2,whatsminer=0.2")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--all-pyasic", action="store_true", help="drive the LuxOS miners through pyasic too")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.miners * 6 + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want) if hard != resource.RLIM_INFINITY else want, hard))
    mix = _mix(args.mix)
    total = sum(mix.values())
    counts = {f: int(round(args.miners * share / total)) for f, share in mix.items()}
    ids = {f: [f"{f}-{i:04d}" for i in range(n)] for f, n in counts.items()}
    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_sim_main, args=(child, ids), daemon=True)
    proc.start()
    ends = conn.recv()
    drivers: dict[str, Any] = {}
    for family, info in ends.items():
        if family == "luxos" and not args.all_pyasic:
            drivers[family] = LuxosDriver([LuxosEndpoint(m, "fleet", h, p) for m, (h, p) in info["ends"].items()],
                                          {"fleet": {"eco": "eco", "stock": "stock"}})
        elif family in ("luxos", "whatsminer"):
            drivers[family] = PyasicDriver([PyasicEndpoint(m, "fleet", h, family, rpc_port=p)
                                            for m, (h, p) in info["ends"].items()], MODES_KW, deadline_s=10.0)
        else:
            drivers[family] = PyasicDriver([PyasicEndpoint(m, "fleet", h, family, web_port=p,
                                                           rpc_port=info["rpc"][m][1])
                                            for m, (h, p) in info["ends"].items()], MODES_KW, deadline_s=10.0)
    latencies: dict[str, list[float]] = {f: [] for f in drivers}
    applies: dict[str, list[float]] = {f: [] for f in drivers}
    failures: list[SetpointResult] = []
    try:
        for _ in range(args.trials):
            for family, driver in drivers.items():
                for chunk in range(0, len(ids[family]), 100):
                    woken = driver.apply(_batch(ids[family][chunk:chunk + 100], "stock"))
                    assert all(r.ok for r in woken), [r for r in woken if not r.ok][:3]
            results: dict[str, list[SetpointResult]] = {}
            took: dict[str, float] = {}

            def run(family: str) -> None:
                t = time.monotonic()
                results[family] = drivers[family].apply(_batch(ids[family], "sleep"))
                took[family] = time.monotonic() - t

            started = time.monotonic()
            threads = [threading.Thread(target=run, args=(f,)) for f in drivers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            conn.send(("received", (started,)))
            received = conn.recv()
            for family in drivers:
                applies[family].append(took[family])
                for r in results[family]:
                    if not r.ok or not received.get(r.miner_id):
                        failures.append(r)
                        continue
                    latencies[family].append(received[r.miner_id][-1] - started)
    finally:
        for driver in drivers.values():
            driver.close()
        conn.send(("stop", ()))
        conn.recv()
        proc.join(30)
    how = {f: ("LuxosDriver" if f == "luxos" and not args.all_pyasic else "pyasic") for f in drivers}
    print(f"{args.miners} simulated miners (" + ", ".join(f"{counts[f]} {f} via {how[f]}" for f in drivers)
          + f"), {args.trials} DR cuts; latency = simulator read the sleep command - batch start")
    everything = np.array([x for f in drivers for x in latencies[f]])
    for name, values in [(f, np.array(latencies[f])) for f in drivers] + [("all", everything)]:
        if len(values):
            print(f"{name:<10} n={len(values):>5}  p50 {np.percentile(values, 50) * 1000:8.1f} ms  "
                  f"p99 {np.percentile(values, 99) * 1000:8.1f} ms  max {values.max() * 1000:8.1f} ms")
    for name in drivers:
        print(f"{name:<10} apply: slowest {max(applies[name]):.2f} s")
    print(f"setpoints not confirmed by the miner: {len(failures)}" + (f" (first: {failures[0]})" if failures else ""))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
