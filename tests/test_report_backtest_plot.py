"""The backtest figure (issue 13): every policy's load is drawn (not only mpc's), against the
import limit, in site-local time, with a price axis one spike does not flatten, labelled SIMULATED."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from hashflex.backtest.plot import backtest_figure, plot_backtest
from hashflex.backtest.runner import build_actuals, run_backtest
from hashflex.backtest.summary import interval_frame
from hashflex.profile import parse_profile

PROFILE = """
site: {id: tiny, name: Tiny test site, timezone: America/Chicago, settlement_point: LZ_TEST,
       interval_minutes: 15, horizon_hours: 2, fine_horizon_hours: 2}
grid: {import_limit_kw: 12}
miner_groups:
  - {id: eff, model: efficient, units: 3, modes: [{name: stock, power_kw: 3.0, hashrate_th_s: 300, sound_power_dba: 80}]}
  - {id: old, model: old, units: 2, modes: [{name: stock, power_kw: 3.0, hashrate_th_s: 100, sound_power_dba: 80}]}
carbon: {default_intensity_kg_per_mwh: 400, intensity_source: test}
economics: {hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}
"""
# a quiet day, then a $5,000 scarcity spike in the window: a linear axis would flatten the rest
PRICES = [30.0] * 96 + [30.0, 60.0, 5000.0, 5000.0, 40.0, 20.0] + [30.0] * 20


def test_backtest_figure_draws_every_policys_load(tmp_path) -> None:
    profile = parse_profile(PROFILE, "tiny")
    starts = pd.date_range(pd.Timestamp("2024-03-04T00:00-06:00").tz_convert("UTC"), periods=len(PRICES), freq="15min")
    prices = pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=15),
                           "settlement_point": "LZ_TEST", "market": "RT", "price_usd_mwh": np.asarray(PRICES)})
    start = pd.Timestamp("2024-03-05T00:00-06:00")
    result = run_backtest(profile, build_actuals(profile, prices, start, start + pd.Timedelta(minutes=90)),
                          ["mpc", "threshold", "always-on"])
    figure = backtest_figure(result)
    try:
        price_ax, import_ax = figure.axes[0], figure.axes[1]
        lines = {line.get_label(): line for line in import_ax.get_lines()}
        for name in ("mpc", "threshold", "always-on"):  # each policy's import, recomputed from its frame
            drawn = np.asarray(lines[f"{name} grid import"].get_ydata(), float)
            assert np.allclose(drawn, interval_frame(result, name)["grid_import_kw"].to_numpy(float) / 1000.0), name
        assert "import limit" in lines
        assert price_ax.get_yscale() == "symlog"
        assert "SIMULATED" in figure._suptitle.get_text()  # noqa: SLF001 - matplotlib keeps no public getter
        assert "America/Chicago" in figure.axes[-1].get_xlabel()
        for ax in figure.axes:  # legends to the right of the panel, off the data
            legend = ax.get_legend()
            assert legend is None or legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1
    finally:
        plt.close(figure)
    assert plot_backtest(result, tmp_path / "b.png").stat().st_size > 10_000
