"""Issue 18, backtest speed: the faster paths give the same results as the code they replaced.

- ``Store.put_price_history`` (one check for a whole history) stores exactly what one
  ``put_price_frame`` per publication time stored, on the bundled ERCOT prices, and refuses bad
  input naming the field.
- The backtest's summary numbers for a short bundled window are those of the baseline code
  (commit ``4953d1a``, extracted with ``git archive`` and run in a subprocess), for the cheap
  policies (threshold, always-on), whose results do not depend on the solver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hashflex.backtest.runner import load_prices
from hashflex.data import bundled_path
from hashflex.profile import load_profile
from hashflex.sim.site import published_at
from hashflex.store import Store

REPO = Path(__file__).resolve().parents[1]
BASELINE = "4953d1a"  # issue 18's starting point: the code before the speed work
COLUMNS = ["interval_start", "interval_end", "settlement_point", "market", "price_usd_mwh"]


@pytest.fixture(scope="module")
def west_history() -> pd.DataFrame:
    profile = load_profile("west_texas")
    prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv")])
    prices = prices[prices["interval_start"] < pd.Timestamp("2020-02-05", tz="UTC")].reset_index(drop=True)
    prices["published_at"] = published_at(prices)  # four days: hundreds of publication times
    return prices


def _stored(store: Store) -> pd.DataFrame:
    store.flush()
    frame = store.prices(with_published_at=True)
    return frame.sort_values(["market", "interval_start"]).reset_index(drop=True)


def test_price_history_stores_what_one_frame_per_publication_time_stored(west_history, tmp_path) -> None:
    with Store(tmp_path / "old.db") as old:
        for when, block in west_history.groupby("published_at"):  # the CLI's code before issue 18
            old.put_price_frame(block[COLUMNS].reset_index(drop=True), published_at=when.to_pydatetime(),
                                received_at=when.to_pydatetime())
        want = _stored(old)
    with Store(tmp_path / "new.db") as new:
        assert new.put_price_history(west_history[[*COLUMNS, "published_at"]]) == len(west_history)
        got = _stored(new)
    assert len(want) == len(west_history) > 300
    assert set(want["market"]) == {"RT", "DA"}
    pd.testing.assert_frame_equal(got, want)
    # and as of a time, what the forecast would have read, too
    as_of = pd.Timestamp("2020-02-10T12:00", tz="UTC").to_pydatetime()
    with Store(tmp_path / "old.db") as old, Store(tmp_path / "new.db") as new:
        pd.testing.assert_frame_equal(new.prices(as_of=as_of, with_published_at=True),
                                      old.prices(as_of=as_of, with_published_at=True))


def test_price_history_keeps_a_later_revision_as_separate_frames_did(west_history, tmp_path) -> None:
    first = west_history[west_history["market"] == "RT"].head(4).reset_index(drop=True)
    revised = first.copy()
    revised["price_usd_mwh"] = revised["price_usd_mwh"] + 7.0
    revised["published_at"] = revised["published_at"] + pd.Timedelta(hours=1)
    history = pd.concat([revised, first], ignore_index=True)  # the revision first: order must not matter
    with Store(tmp_path / "old.db") as old:
        for frame in (first, revised):
            for when, block in frame.groupby("published_at"):
                old.put_price_frame(block[COLUMNS].reset_index(drop=True), published_at=when.to_pydatetime(),
                                    received_at=when.to_pydatetime())
        want = _stored(old)
    with Store(tmp_path / "new.db") as new:
        new.put_price_history(history)
        got = _stored(new)
    pd.testing.assert_frame_equal(got, want)
    assert (got["price_usd_mwh"].to_numpy() == revised["price_usd_mwh"].to_numpy()).all()


@pytest.mark.parametrize(("change", "field"), [
    (lambda f: f.drop(columns="published_at"), "published_at"),
    (lambda f: f.assign(published_at=f["published_at"].dt.tz_localize(None)), "published_at"),
    (lambda f: f.assign(price_usd_mwh=f["price_usd_mwh"].where(f.index != 3, float("nan"))), "price_usd_mwh"),
    (lambda f: f.assign(market=f["market"].where(f.index != 2, "XX")), "market"),
    (lambda f: pd.concat([f, f.tail(1)], ignore_index=True), "duplicate"),
])
def test_price_history_refuses_bad_input_naming_the_field(west_history, tmp_path, change, field) -> None:
    frame = change(west_history[[*COLUMNS, "published_at"]].head(10).reset_index(drop=True))
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(ValueError, match=field):
            store.put_price_history(frame)
        assert store.count("prices") == 0


# ------------------------------------------------------------------ summary unchanged vs the baseline

RUN = r"""
import json, sys
from hashflex.cli import main
out = sys.argv[1]
main(["backtest", "--profile", sys.argv[2], "--from", sys.argv[3], "--to", sys.argv[4],
      "--policy", "threshold,always-on", "--quiet", "--out", out])
print("RESULT " + json.dumps(json.load(open(out + "/summary.json"))["policies"]))
"""
def _summary(src: Path, out: Path, profile: str, start: str, end: str) -> dict:
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", RUN, str(out), profile, start, end], cwd=out, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(src), "MPLBACKEND": "Agg"},
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


@pytest.fixture(scope="module")
def baseline_src(tmp_path_factory) -> Path:
    """The baseline commit's ``src`` (git archive; a missing git or commit fails the test)."""
    where = tmp_path_factory.mktemp("baseline")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where / "src"


@pytest.mark.parametrize(("profile", "start", "end"), [
    ("west_texas", "2020-02-10T00:00-06:00", "2020-02-10T08:00-06:00"),
    ("panhandle_120mw", "2020-02-10T06:00-06:00", "2020-02-10T08:00-06:00"),
])
def test_summary_of_a_bundled_window_is_the_baseline_codes(baseline_src, tmp_path, profile, start, end) -> None:
    want = _summary(baseline_src, tmp_path / "base", profile, start, end)
    got = _summary(REPO / "src", tmp_path / "new", profile, start, end)
    assert set(got) == set(want) == {"threshold", "always-on"}
    for policy in want:
        figures = {k: v for k, v in want[policy].items() if k != "wall_seconds"}
        assert {"profit_usd", "energy_mwh", "noise_exceedance_minutes", "import_violation_kwh"} <= set(figures)
        for key, value in figures.items():
            if isinstance(value, float):
                assert got[policy][key] == pytest.approx(value, rel=1e-9, abs=1e-9), (policy, key)
            else:
                assert got[policy][key] == value, (policy, key)
        # and interval by interval (the CSV), but the timing column
        old = pd.read_csv(tmp_path / "base" / f"intervals_{policy}.csv").drop(columns="solve_seconds")
        new = pd.read_csv(tmp_path / "new" / f"intervals_{policy}.csv").drop(columns="solve_seconds")
        pd.testing.assert_frame_equal(new, old)
    assert want["always-on"]["energy_mwh"] > 0  # the window ran something
