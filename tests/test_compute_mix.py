"""`hashflex evaluate-mix` (issue 16): K ASICs vs K' GPU nodes over the same price history."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from hashflex.backtest.cli import main
from hashflex.backtest.mix import evaluate_mix
from hashflex.backtest.runner import build_actuals, load_prices
from hashflex.data import bundled_path
from hashflex.profile import load_profile


def test_gpu_nodes_and_asics_side_by_side_with_payback(capsys: pytest.CaptureFixture[str]) -> None:
    profile = load_profile("quiet_hollow")  # 1.19 MW of miners under a 1.5 MW import limit
    prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv")], [])
    actuals = build_actuals(profile, prices, pd.Timestamp("2020-02-03"), pd.Timestamp("2020-02-04"))
    results = evaluate_mix(profile, actuals, asic_units=20, asic_power_kw=3.5, asic_hashrate_th_s=200,
                           asic_sound_dba=84, asic_unit_price_usd=3000, gpu_nodes=4, gpu_idle_power_kw=1.6,
                           gpu_full_power_kw=10.2, gpu_node_capex_usd=250_000, gpu_contract_usd_per_gpu_hour=2.0)
    gpu = results["+4 GPU nodes"]
    # 47 kW more fits under the limit and the cooling is silent: all 32 GPUs rented all day at $2.
    assert gpu["compute_revenue_usd"] == pytest.approx(32 * 24 * 2.0)
    assert gpu["mining_revenue_usd"] == pytest.approx(results["base"]["mining_revenue_usd"], rel=1e-3)
    assert gpu["payback_years"] == pytest.approx(1_000_000 / gpu["added_profit_usd_per_year"])
    assert results["base"]["compute_revenue_usd"] == 0.0 and results["+20 ASICs"]["capex_usd"] == 60_000
    assert 0 < results["+20 ASICs"]["added_profit_usd_per_year"] < math.inf


def test_the_cli_prints_the_side_by_side_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate-mix", "--profile", "quiet_hollow", "--from", "2020-02-03", "--to", "2020-02-03",
                 "--hashprice", "profile", "--asic-units", "20", "--asic-power-kw", "3.5",
                 "--asic-hashrate-th-s", "200", "--asic-sound-dba", "84", "--asic-unit-price-usd", "3000",
                 "--gpu-nodes", "4", "--gpu-node-capex-usd", "250000", "--gpu-contract-usd-per-gpu-hour", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "+20 ASICs" in out and "+4 GPU nodes" in out and "payback yr" in out
