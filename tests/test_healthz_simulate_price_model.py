"""`hashflex run --simulate` shows the learned price model's block in /status as `hashflex run` does
(newcomer finding: the simulated /status had no ``price_model``). Real Feb 2020 ERCOT prices (bundled),
real HiGHS solves, the simulated site's own HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("sklearn")

from hashflex.backtest.runner import load_prices  # noqa: E402
from hashflex.control.daemon import price_model_for, with_price_model  # noqa: E402
from hashflex.data import bundled_path  # noqa: E402
from hashflex.feeds.ercot import publication_times  # noqa: E402
from hashflex.profile import load_profile  # noqa: E402
from hashflex.sim.live import LiveSite  # noqa: E402
from hashflex.sim.site import run_simulation  # noqa: E402

PROFILE = load_profile("quiet_hollow")
LATER = pd.Timestamp("2020-02-04 18:00", tz="UTC")  # ~3.5 days of published RT: enough for a fit


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    frame = load_prices(PROFILE, [bundled_path("ercot/RTM-2020-02.csv"), bundled_path("ercot/DAM-2020-02.csv")])
    frame = frame[frame["interval_start"] < pd.Timestamp("2020-02-06", tz="UTC")].reset_index(drop=True)
    frame["published_at"] = publication_times(frame)
    return frame


def _status(url: str) -> dict:
    with urllib.request.urlopen(url + "status", timeout=30) as response:
        return json.loads(response.read())


def test_simulated_status_has_the_same_price_model_block_as_the_daemon(tmp_path: Path, prices: pd.DataFrame) -> None:
    model = price_model_for(PROFILE, "learned", prices=prices, background=False)
    site = LiveSite(PROFILE, port=0, speed=0)
    site.start()
    try:
        result = run_simulation(PROFILE, prices, LATER, 2, store_path=str(tmp_path / "sim.db"),
                                price_forecaster=model, observer=site)
        status = _status(site.url)
    finally:
        site.close()
    block = status["price_model"]
    daemon_block = with_price_model({"counters": {}}, model)["price_model"]
    assert block is not None and set(block) == set(daemon_block)
    assert block["forecast_source"] == "learned" == status["forecast_source"]
    assert block["trained_at"] is not None
    # the model's counters reach /metrics through the status counters, as in the daemon
    assert status["counters"]["price_model_learned_ticks"] == 2 == model.counters["price_model_learned_ticks"]
    assert len(result.reports) == 2


def test_simulated_status_says_no_model_with_the_rules(tmp_path: Path, prices: pd.DataFrame) -> None:
    site = LiveSite(PROFILE, port=0, speed=0)
    site.start()
    try:
        run_simulation(PROFILE, prices, LATER, 1, store_path=str(tmp_path / "sim.db"), observer=site)
        status = _status(site.url)
    finally:
        site.close()
    assert "price_model" in status and status["price_model"] is None
    assert status["forecast_source"] == "rules"


def test_the_simulate_table_names_its_units_and_how_each_hour_is_summarised() -> None:
    """Newcomer finding: ``price``, ``limit_mw``, ``maple_lane_dba`` and ``maple_lane_cap`` did not say
    whether an hour's figure was a mean, a minimum or a maximum, nor the price's unit."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "hashflex.cli", "run", "--simulate", "--profile", "quiet_hollow",
                          "--intervals", "4", "--no-serve", "--price-model", "rules"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    legend = next(i for i, line in enumerate(lines) if line.startswith("per local hour: "))
    header = lines[legend + 1].split()
    assert header == ["price_usd_mwh", "load_mw", "import_limit_mw", "maple_lane_max_dba", "school_yard_max_dba",
                      "maple_lane_cap_dba", "school_yard_cap_dba", "reason"]
    assert lines[legend + 2].startswith("hour (America/Chicago)")
    assert "highest SIMULATED meter level and lowest noise cap per receptor" in lines[legend]
    assert any(line.startswith("ticks 4, greedy fallback schedules (solver failed or timed out) 0") for line in lines)
