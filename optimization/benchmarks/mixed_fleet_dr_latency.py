"""DR -> every setpoint on a mixed-firmware fleet: LuxOS and VNish miners, time until each miner has it.

``--miners`` simulated miners (default 1,000) run in a child process (miners are other machines: their
CPU is not the controller's): ``--luxos-share`` of them speak LuxOS (``SimulatedMinerFleet``), the rest
VNish (``VnishFleet``: a web API and a cgminer API each). The controller side sends one DR cut (every
miner to sleep) at once: LuxOS miners through the native :class:`~hashflex.drivers.luxos.LuxosDriver`
(or through pyasic with ``--all-pyasic``), VNish miners through
:class:`~hashflex.drivers.pyasic_driver.PyasicDriver`, both drivers in parallel threads. Latency per miner
= the moment its simulator read the sleep command (LuxOS ``curtail <sid>,sleep``; VNish ``POST
/api/v1/mining/stop``) minus the batch start (``time.monotonic()``, system-wide on Linux). Before each
cut every miner is woken (not measured) so sessions/tokens are warm, as in a running site.

    python optimization/benchmarks/mixed_fleet_dr_latency.py [--miners 1000] [--luxos-share 0.5]
        [--trials 3] [--all-pyasic]

Prints p50/p99/max per family and overall, and how long each driver's ``apply`` took. Driver and
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

GROUP = MinerGroup(id="s19xp", model="Antminer S19 XP", units=10_000, idle_power_kw=0.02, boot_minutes=0.0,
                   modes=[MinerMode(name="stock", power_kw=3.0, hashrate_th_s=134.0, sound_power_dba=90.0)])
MODES_KW = {"s19xp": {"stock": 3.0}}


def _sim_main(conn: Any, luxos_ids: list[str], vnish_ids: list[str]) -> None:
    from hashflex.sim.firmware import VnishFleet
    from hashflex.sim.miners import ScaledClock, SimulatedMinerFleet

    clock = ScaledClock(1.0)
    lux = SimulatedMinerFleet({m: GROUP for m in luxos_ids}, clock=clock).start() if luxos_ids else None
    vn = VnishFleet({m: GROUP for m in vnish_ids}, clock=clock).start() if vnish_ids else None
    conn.send({"luxos": lux.endpoints() if lux else {}, "vnish": vn.endpoints() if vn else {},
               "vnish_rpc": vn.rpc_endpoints() if vn else {}})
    while True:
        op, args = conn.recv()
        if op == "stop":
            for fleet in (lux, vn):
                if fleet is not None:
                    fleet.stop()
            conn.send(None)
            return
        if op == "received":
            since = args[0]
            out = {}
            if lux is not None:
                out.update({m: [t for t, c, p in lux.received_at[m] if c == "curtail" and p.endswith(",sleep")
                                and t >= since] for m in lux.miners})
            if vn is not None:
                out.update({m: [t for t, meth, path in vn.received_at[m] if path == "/api/v1/mining/stop"
                                and t >= since] for m in vn.miners})
            conn.send(out)


def _batch(ids: list[str], mode: str) -> list[Setpoint]:
    now = utc_now()
    return [Setpoint(m, mode, 0.0 if mode == "sleep" else 3.0, now, now + timedelta(minutes=15)) for m in ids]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--miners", type=int, default=1000)
    parser.add_argument("--luxos-share", type=float, default=0.5)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--all-pyasic", action="store_true", help="drive the LuxOS miners through pyasic too")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.miners * 6 + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want) if hard != resource.RLIM_INFINITY else want, hard))
    n_lux = int(round(args.miners * args.luxos_share))
    luxos_ids = [f"lux-{i:04d}" for i in range(n_lux)]
    vnish_ids = [f"vn-{i:04d}" for i in range(args.miners - n_lux)]
    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_sim_main, args=(child, luxos_ids, vnish_ids), daemon=True)
    proc.start()
    ends = conn.recv()
    vnish = PyasicDriver([PyasicEndpoint(m, "s19xp", h, "vnish", web_port=p, rpc_port=ends["vnish_rpc"][m][1])
                          for m, (h, p) in ends["vnish"].items()], MODES_KW, deadline_s=10.0)
    if args.all_pyasic:
        lux_driver: Any = PyasicDriver([PyasicEndpoint(m, "s19xp", h, "luxos", rpc_port=p)
                                        for m, (h, p) in ends["luxos"].items()], MODES_KW, deadline_s=10.0)
    else:
        lux_driver = LuxosDriver([LuxosEndpoint(m, "s19xp", h, p) for m, (h, p) in ends["luxos"].items()],
                                 {"s19xp": {"stock": "stock"}})
    latencies: dict[str, list[float]] = {"luxos": [], "vnish": []}
    applies: dict[str, list[float]] = {"luxos": [], "vnish": []}
    failures = 0
    try:
        for _ in range(args.trials):
            for driver, ids in ((lux_driver, luxos_ids), (vnish, vnish_ids)):
                for chunk in range(0, len(ids), 100):
                    woken = driver.apply(_batch(ids[chunk:chunk + 100], "stock"))
                    assert all(r.ok for r in woken), [r for r in woken if not r.ok][:3]
            results: dict[str, list[SetpointResult]] = {}
            took: dict[str, float] = {}

            def run(name: str, driver: Any, ids: list[str]) -> None:
                t = time.monotonic()
                results[name] = driver.apply(_batch(ids, "sleep"))
                took[name] = time.monotonic() - t

            started = time.monotonic()
            threads = [threading.Thread(target=run, args=("luxos", lux_driver, luxos_ids)),
                       threading.Thread(target=run, args=("vnish", vnish, vnish_ids))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            conn.send(("received", (started,)))
            received = conn.recv()
            for name in ("luxos", "vnish"):
                applies[name].append(took[name])
                for r in results[name]:
                    if not r.ok or not received.get(r.miner_id):
                        failures += 1
                        continue
                    latencies[name].append(received[r.miner_id][-1] - started)
    finally:
        lux_driver.close()
        vnish.close()
        conn.send(("stop", ()))
        conn.recv()
        proc.join(30)
    print(f"{args.miners} simulated miners ({len(luxos_ids)} LuxOS via "
          f"{'pyasic' if args.all_pyasic else 'LuxosDriver'}, {len(vnish_ids)} VNish via pyasic), "
          f"{args.trials} DR cuts; latency = simulator read the sleep command - batch start")
    everything = np.array(latencies["luxos"] + latencies["vnish"])
    for name, values in (("luxos", np.array(latencies["luxos"])), ("vnish", np.array(latencies["vnish"])),
                         ("all", everything)):
        if len(values):
            print(f"{name:<6} n={len(values):>5}  p50 {np.percentile(values, 50) * 1000:8.1f} ms  "
                  f"p99 {np.percentile(values, 99) * 1000:8.1f} ms  max {values.max() * 1000:8.1f} ms")
    for name in ("luxos", "vnish"):
        if applies[name]:
            print(f"{name:<6} apply: slowest {max(applies[name]):.2f} s")
    print(f"setpoints not confirmed by the miner: {failures}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
