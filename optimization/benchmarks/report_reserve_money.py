"""Time ``hashflex.report.ancillary.reserve_money`` on a month of SYNTHETIC 5-minute intervals (issue 15).

The clawback is now weighted per award revision inside each interval (it was one record per interval
and product), so it looks up the award windows of every interval. This prints the time of the
current function and of the baseline (the function at a git revision, default d987bd2, loaded from
``git show``) on the same inputs, their ratio, and both results.

SYNTHETIC inputs: 30 days × 288 five-minute measurements at 100 kW (nothing running), three products
with an hourly award each (RRS, ECRS, NSPIN: 2,160 award records at $10/MW-h, one amended
mid-interval every day), a hold-short record for one interval in ten per product.

Run: ``python optimization/benchmarks/report_reserve_money.py [--baseline REV] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from hashflex.report import ancillary
from hashflex.report.inputs import MEASUREMENT_COLUMNS, ReportInputs


def synthetic_inputs(days: int = 30) -> ReportInputs:
    """The SYNTHETIC month (module docstring)."""
    start = pd.Timestamp("2024-06-01T00:00Z")
    starts = pd.date_range(start, periods=days * 288, freq="5min")
    history = pd.DataFrame({c: None for c in MEASUREMENT_COLUMNS}, index=range(len(starts)))
    history["interval_start"] = starts
    history["interval_h"] = 5 / 60
    history["interval_end"] = starts + pd.Timedelta(minutes=5)
    history["load_kw"] = 100.0
    history["import_kw"] = 100.0
    seq = 0
    awards, shorts = [], []
    for h in range(days * 24):
        hour = start + pd.Timedelta(hours=h)
        for product in ("RRS", "ECRS", "NSPIN"):
            seq += 1
            message = {"award_id": f"{product}-{h}", "revision": 0, "product": product, "start": hour.isoformat(),
                       "end": (hour + pd.Timedelta(hours=1)).isoformat(), "reserve_kw": 1000.0,
                       "price_usd_mw_h": 10.0}
            awards.append({"seq": seq, "at": hour - pd.Timedelta(hours=12), "message": message,
                           "ack": {"status": "accepted"}})
            if h % 24 == 12:  # amended 7 minutes into the hour
                seq += 1
                awards.append({"seq": seq, "at": hour + pd.Timedelta(minutes=7),
                               "message": {**message, "revision": 1, "reserve_kw": 500.0},
                               "ack": {"status": "accepted"}})
    for k, s in enumerate(starts):
        if k % 10 == 0:
            for product in ("RRS", "ECRS", "NSPIN"):
                seq += 1
                shorts.append({"seq": seq, "at": s + pd.Timedelta(minutes=5), "interval_start": s.isoformat(),
                               "interval_h": 5 / 60, "product": product, "obligation_kw": 1000.0, "held_kw": 0.0,
                               "short_kw": 1000.0, "price_usd_mw_h": 10.0})
    history["seq"] = range(seq + 1, seq + 1 + len(history))
    history["at"] = history["interval_end"]
    return ReportInputs(measurements=history, noise=pd.DataFrame(), history=history, as_awards=awards,
                        reserve_hold_short=shorts)


def _baseline(rev: str):
    text = subprocess.run(["git", "show", f"{rev}:src/hashflex/report/ancillary.py"], check=True,
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2]).stdout
    path = Path(tempfile.mkdtemp()) / "ancillary_baseline.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("ancillary_baseline", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["ancillary_baseline"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _time(fn, repeat: int) -> tuple[float, dict]:
    best, out = float("inf"), {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="d987bd2")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    inputs = synthetic_inputs()
    period = (pd.Timestamp("2024-06-01T00:00Z"), pd.Timestamp("2024-07-01T00:00Z"))
    old = _baseline(args.baseline)
    t_old, r_old = _time(lambda: old.reserve_money(inputs, *period), args.repeat)
    t_new, r_new = _time(lambda: ancillary.reserve_money(inputs, *period), args.repeat)
    print(f"intervals {len(inputs.history)}, award records {len(inputs.as_awards)}, "
          f"hold-short records {len(inputs.reserve_hold_short)} (SYNTHETIC)")
    print(f"baseline {args.baseline}: {t_old:.3f} s  payment {r_old['reserve_payment_usd']:.2f} "
          f"clawback {r_old['reserve_clawback_usd']:.2f}")
    print(f"current:        {t_new:.3f} s  payment {r_new['reserve_payment_usd']:.2f} "
          f"clawback {r_new['reserve_clawback_usd']:.2f}")
    print(f"ratio current / baseline: {t_new / t_old:.2f} (best of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
