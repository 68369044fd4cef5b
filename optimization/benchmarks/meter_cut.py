"""The site-meter fast path (`ControlLoop.handle_meter` with a reading 5 % over the import limit) at
1k / 10k / 100k SYNTHETIC miners: the cut decided in counts (`CountGuard.import_over_limit_cut`, what
the loop runs on sites without PDU power-off groups) vs the per-miner guard (`Guard.import_over_limit_cut`
on the fleet's setpoints, what it ran before and still runs on PDU sites), side by side in one process,
each on a fresh loop over the same fleet (the SYNTHETIC site of `fleet_tick.py`), median of ``--runs``.

    python optimization/benchmarks/meter_cut.py [--sizes 1000 10000 100000] [--runs 3]

Prints per size: milliseconds per path, the ratio, and the units left running by each (must agree).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_tick import NOW, synthetic_site  # noqa: E402

from hashflex.control.loop import ControlLoop  # noqa: E402
from hashflex.drivers.base import SetpointResult, SetpointStatus  # noqa: E402
from hashflex.drivers.batch import BatchResult  # noqa: E402


class _Driver:
    """Every setpoint applied at once (the driver edge is not what this measures)."""

    def apply_batch(self, batch):  # noqa: D102
        return BatchResult.all_applied(batch, "ok")

    def apply(self, batch):  # noqa: D102
        return [SetpointResult(sp.miner_id, SetpointStatus.APPLIED, "ok") for sp in batch]


def _one(n: int, per_miner: bool) -> tuple[float, int]:
    profile, fleet, _, measurements, _ = synthetic_site(n)
    loop = ControlLoop(profile, forecaster=None, driver=_Driver(), fleet=copy.deepcopy(fleet))
    loop.measurements = measurements
    loop.request_replan = lambda reason: None
    if per_miner:
        loop._pdu_site = lambda: True  # the per-miner branch (PDU sites), on the same fleet
    limit = profile.grid.import_limit_kw
    started = time.perf_counter()
    cut = loop.handle_meter(limit * 1.05, NOW, NOW)
    elapsed = time.perf_counter() - started
    assert cut, "the reading is over the limit: the fast path must cut"
    return elapsed, loop.fleet.units_running()


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print one line per fleet size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'miners':>8} {'counts ms':>10} {'per-miner ms':>13} {'ratio':>7} {'running (counts / per miner)':>30}")
    for n in args.sizes:
        counts = [_one(n, False) for _ in range(args.runs)]
        miners = [_one(n, True) for _ in range(args.runs)]
        c, m = statistics.median(t for t, _ in counts) * 1000, statistics.median(t for t, _ in miners) * 1000
        print(f"{n:>8} {c:>10.1f} {m:>13.1f} {m / c:>6.1f}x {counts[0][1]:>14} / {miners[0][1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
