"""Issue 10 item 11: `run --simulate` never plans an interval whose price is unknown.

It used to start nine days after the file's first price and ran a day of NaN prices at 22.6 MW.
Now the default start is the file's first full local day, a --from/--to window the file does not
cover is refused (exit 2, naming the window and the file's coverage), and the output says which
window was used. Through the real CLI with a small price file (west_texas: America/Chicago).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FIRST = "2024-07-01T18:00-05:00"  # the file starts in the evening: July 2 is its first full local day
INTERVALS = 30 * 4  # 30 h of 15-min prices: to 2024-07-03T00:00-05:00


@pytest.fixture
def price_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.csv"
    index = pd.date_range(FIRST, periods=INTERVALS, freq="15min")
    price = np.where(index.hour == 1, 300.0, 22.0)
    pd.DataFrame({"interval_start": [t.isoformat() for t in index], "price_usd_mwh": price}).to_csv(path, index=False)
    return path


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hashflex.cli", "run", "--simulate", "--no-dr-demo", "--speed", "0", *args],
                          capture_output=True, text=True, timeout=600)


def test_default_window_is_the_first_full_local_day(price_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "sim"
    result = simulate("--prices", str(price_file), "--intervals", "6", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "window 2024-07-02 00:00 CDT .. 2024-07-02 01:30 CDT" in result.stdout, result.stdout
    frame = pd.read_csv(out / "simulation.csv")
    assert len(frame) == 6
    assert pd.Timestamp(frame["interval_start"].iloc[0]) == pd.Timestamp("2024-07-02T00:00-05:00")
    assert frame["price_usd_mwh"].notna().all(), "every simulated interval has a known price"
    assert (frame.loc[pd.to_datetime(frame["interval_start"]).dt.tz_convert("America/Chicago").dt.hour == 1,
                      "price_usd_mwh"] == 300.0).all()


@pytest.mark.parametrize("window", [
    ("--from", "2024-07-05"),  # days after the file ends
    ("--from", "2024-07-02T23:00-05:00", "--to", "2024-07-03T02:00-05:00"),  # runs past the end
    ("--from", "2024-07-01T12:00-05:00", "--to", "2024-07-01T20:00-05:00"),  # starts before the first price
    ("--from", "2024-07-02", "--intervals", "500"),  # too many intervals for the file
])
def test_window_the_file_does_not_cover_is_refused(price_file: Path, window: tuple[str, ...]) -> None:
    result = simulate("--prices", str(price_file), *window)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert "prices.csv" in message and "covers 2024-07-01 18:00 CDT .. 2024-07-03 00:00 CDT" in message, message
    assert "window" in message
    assert "ticks" not in result.stdout, "nothing was simulated"


def test_explicit_window_inside_the_file_runs(price_file: Path) -> None:
    result = simulate("--prices", str(price_file), "--from", "2024-07-02T22:00-05:00", "--to", "2024-07-03T00:00-05:00")
    assert result.returncode == 0, result.stderr
    assert "window 2024-07-02 22:00 CDT .. 2024-07-03 00:00 CDT (8 intervals)" in result.stdout, result.stdout
    assert "ticks 8" in result.stdout


def test_a_real_time_only_file_starts_on_its_second_day_and_mines_from_the_first_interval() -> None:
    """Found by a newcomer: with a user's RT-only file the default window began on its first day,
    where the daemon's forecast knows no price yet (RT is published after each interval): the site
    slept at $20/MWh for two hours. Now the window starts a day later and the site runs at once."""
    import pandas as pd

    from hashflex.profile import load_profile
    from hashflex.sim.site import run_simulation, simulation_window

    profile = load_profile("quiet_hollow")
    starts = pd.date_range("2025-07-01T00:00", periods=96 * 3, freq="15min", tz=profile.tz).tz_convert("UTC")
    prices = pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=15),
                           "settlement_point": profile.site.settlement_point, "market": "RT", "price_usd_mwh": 20.0})
    window = simulation_window(profile, prices, intervals=4)
    assert window.start == pd.Timestamp("2025-07-02T00:00", tz=profile.tz)
    assert any("second full local day" in note for note in window.notes)
    from hashflex.forecast import FallbackCode, has_fallback

    result = run_simulation(profile, prices, window.start, window.intervals, dr_events=[])
    assert not has_fallback(result.reports[0].fallbacks, FallbackCode.PRICE_UNKNOWN), result.reports[0].fallbacks
    assert result.intervals["reason"].iloc[0] != "price"  # at night the neighbours' caps bind, not the price
    assert result.intervals["load_kw"].iloc[0] > 0.2 * profile.full_load_kw
