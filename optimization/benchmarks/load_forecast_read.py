"""How long the daemon's price model waits for the stored load forecast (issue 14), per read.

SYNTHETIC store: ``--days`` of hourly postings, each 192 hours ahead (ERCOT's NP3-565-CD shape: the
day and seven more, in-use model only), i.e. 4,608 rows a day. Reads the day-ahead vintage as the
daemon's predictor (3 days back, every tick) and its fit (``train_days`` + 2 = 30 days back, daily) do,
through :func:`hashflex.feeds.load_forecast.store_load_forecast_history`; prints the median of ``--runs``.

    python optimization/benchmarks/load_forecast_read.py [--days 30] [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from hashflex.feeds.load_forecast import store_load_forecast_history
from hashflex.store import Store


def main() -> None:
    """Build the SYNTHETIC store, time the reads, print one line per lookback."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.db") as store:
        t0 = pd.Timestamp("2025-04-01", tz="UTC")
        for k in range(24 * args.days):
            published = t0 + pd.Timedelta(hours=k, minutes=30)
            starts = pd.date_range(published.floor("h"), periods=192, freq="h")
            store.put_load_forecast(pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(hours=1),
                                                  "load_forecast_mw": 50_000.0, "published_at": published}),
                                    source="SYNTHETIC")
        store.flush()
        history = store_load_forecast_history(store)
        now = t0 + pd.Timedelta(days=args.days - 3, hours=19, minutes=7)
        print(f"SYNTHETIC store: {store.count('load_forecasts'):,} rows ({args.days} days of hourly 192-hour postings)")
        for label, lookback in (("tick (3 days back)", pd.Timedelta(days=3)), ("fit (30 days back)", pd.Timedelta(days=30))):
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                frame = history(now, lookback)
                times.append(time.perf_counter() - start)
            print(f"{label}: {len(frame)} hours, median {statistics.median(times) * 1000:.1f} ms over {args.runs} reads")


if __name__ == "__main__":
    main()
