"""Backtest: no look-ahead, each baseline on hand-checkable cases, summary figures recomputed from the
per-interval CSV, the summary.json contract, and the oracle as an upper bound."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from hashflex.backtest.cli import main as backtest_main, profile_with_candidate
from hashflex.backtest.runner import account, build_actuals, load_prices, run_backtest, simulate_policy
from hashflex.backtest.summary import SUMMARY_KEYS, site_level_dba, summary_document, write_outputs
from hashflex.data import bundled_path
from hashflex.profile import parse_profile
from hashflex.sim.site import published_at

# Two groups with one stock mode each and no adders or pool fee, so breakevens are round numbers:
# hashprice 48 $/PH/day = 0.002 $/TH/h; eff: 300 TH/s × 0.002 / 3 kW = 200 $/MWh; old: 100 TH/s → 66.67 $/MWh.
TINY = """
site: {{id: tiny, name: Tiny test site, timezone: America/Chicago, settlement_point: {point},
        interval_minutes: 15, horizon_hours: 4, fine_horizon_hours: 4}}
grid: {{import_limit_kw: {limit}}}
dr: {{issuers: [utility], level_import_limit_kw: {{3: 0}}}}
miner_groups:
  - {{id: eff, model: efficient, units: 3, modes: [{{name: stock, power_kw: 3.0, hashrate_th_s: 300, sound_power_dba: 80}}]}}
  - {{id: old, model: old, units: 2, modes: [{{name: stock, power_kw: 3.0, hashrate_th_s: 100, sound_power_dba: 80}}]}}
{receptors}
carbon: {{default_intensity_kg_per_mwh: 400, intensity_source: test}}
economics: {{hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}}
"""
# Each unit adds 10^((80 − 40)/10) = 10^4 at the receptor; background 20 dB adds 100. A 46 dB cap
# leaves 10^4.6 − 100 ≈ 39,710: three units fit, four do not.
RECEPTOR = """receptors:
  - {id: house, attenuation_db: {eff: 40, old: 40}, background_dba: 20, model_margin_db: 0,
     caps: [{name: always, start: "00:00", end: "23:59", cap_dba: 46}]}
"""


def tiny(point: str = "LZ_TEST", limit: float = 100.0, receptor: bool = False):
    return parse_profile(TINY.format(point=point, limit=limit, receptors=RECEPTOR if receptor else ""), "tiny")


def rt_frame(start: str, prices: list[float], point: str = "LZ_TEST") -> pd.DataFrame:
    starts = pd.date_range(pd.Timestamp(start).tz_convert("UTC"), periods=len(prices), freq="15min")
    return pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=15),
                         "settlement_point": point, "market": "RT", "price_usd_mwh": np.asarray(prices, float)})


PATTERN = [50, 50, 100, 100, 300, 300, 50, 50]
WINDOW_START = "2024-03-05T00:00-06:00"


def pattern_prices() -> pd.DataFrame:
    """A day at 50 $/MWh, then the pattern, then 50 again (RT only)."""
    return rt_frame("2024-03-04T00:00-06:00", [50.0] * 96 + PATTERN + [50.0] * 40)


def counts_of(run, profile) -> dict[str, list[int]]:
    return {g.id: list(sum(run.counts[gi, m] for m in range(len(g.modes))))
            for gi, g in enumerate(profile.miner_groups)}


def window(profile, prices, n: int = len(PATTERN)):
    start = pd.Timestamp(WINDOW_START)
    return build_actuals(profile, prices, start, start + pd.Timedelta(minutes=15 * n))


# ------------------------------------------------------------------------------------ baselines

def test_threshold_runs_each_group_below_its_breakeven_on_the_last_settled_price() -> None:
    profile = tiny()
    run = simulate_policy(profile, window(profile, pattern_prices()), "threshold")
    # At tick k the last settled RT price is that of interval k−1 (50 before the window).
    assert counts_of(run, profile) == {"eff": [3, 3, 3, 3, 3, 0, 0, 3], "old": [2, 2, 2, 0, 0, 0, 0, 2]}


def test_threshold_persistence_delays_each_switch() -> None:
    profile = tiny()
    run = simulate_policy(profile, window(profile, pattern_prices()), "threshold", persistence=2)
    assert counts_of(run, profile) == {"eff": [0, 3, 3, 3, 3, 3, 0, 0], "old": [0, 2, 2, 2, 0, 0, 0, 0]}


def test_threshold_keeps_fixed_noise_unit_limits_most_profitable_group_first() -> None:
    profile = tiny(receptor=True)
    run = simulate_policy(profile, window(profile, pattern_prices()), "threshold", noise_sigma_db=0.0)
    assert counts_of(run, profile) == {"eff": [3, 3, 3, 3, 3, 0, 0, 3], "old": [0] * 8}
    assert run.fast_path_actions == 0


def test_always_on_runs_every_unit_and_the_guard_cuts_the_least_efficient_to_the_import_limit() -> None:
    profile = tiny(limit=10.0)  # 5 units × 3 kW = 15 kW: the two old units (30 J/TH) go
    run = simulate_policy(profile, window(profile, pattern_prices()), "always-on")
    assert counts_of(run, profile) == {"eff": [3] * 8, "old": [0] * 8}
    unlimited = tiny()
    run = simulate_policy(unlimited, window(unlimited, pattern_prices()), "always-on")
    assert counts_of(run, unlimited) == {"eff": [3] * 8, "old": [2] * 8}


def test_oracle_runs_on_the_actual_price() -> None:
    profile = tiny()
    result = run_backtest(profile, window(profile, pattern_prices()), ["oracle"])
    assert counts_of(result.runs["oracle"], profile) == {"eff": [3, 3, 3, 3, 0, 0, 3, 3],
                                                         "old": [2, 2, 0, 0, 0, 0, 2, 2]}
    # Hand accounting of interval 0: revenue (900 + 200 TH/s) × 0.002 $/TH/h × 0.25 h = 0.55 $,
    # energy 15 kW × 0.25 h × 50 $/MWh = 0.1875 $.
    first = result.schedules["oracle"].frame.iloc[0]
    assert first["revenue_usd"] == pytest.approx(0.55)
    assert first["energy_cost_usd"] == pytest.approx(0.1875)


# ------------------------------------------------------------------------------------ no look-ahead

@pytest.fixture(scope="module")
def west_prices() -> pd.DataFrame:
    profile = tiny("LZ_WEST")
    prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv")])
    prices["published_at"] = published_at(prices)
    return prices


@pytest.mark.parametrize("policy", ["mpc", "threshold"])
def test_decisions_up_to_t_ignore_prices_published_after_t(west_prices: pd.DataFrame, policy: str) -> None:
    profile = tiny("LZ_WEST", receptor=True)
    start, cut = pd.Timestamp("2020-02-10T06:00-06:00"), pd.Timestamp("2020-02-10T09:00-06:00")
    end = start + pd.Timedelta(hours=6)
    perturbed = west_prices.copy()
    later = perturbed["published_at"] > cut
    perturbed.loc[later, "price_usd_mwh"] = perturbed.loc[later, "price_usd_mwh"] * 10 + 500
    runs = [simulate_policy(profile, build_actuals(profile, prices, start, end), policy)
            for prices in (west_prices, perturbed)]
    index = pd.date_range(start, end, freq="15min", inclusive="left")
    known = index <= cut
    for key in runs[0].counts:
        np.testing.assert_array_equal(runs[0].counts[key][known], runs[1].counts[key][known])
    assert any((runs[0].counts[k][~known] != runs[1].counts[k][~known]).any() for k in runs[0].counts), \
        "the perturbation must matter after t, or the test proves nothing"


# ------------------------------------------------------------------------------------ summary

@pytest.fixture(scope="module")
def day_result(west_prices: pd.DataFrame):
    profile = tiny("LZ_WEST", limit=12.0, receptor=True)
    actuals = build_actuals(profile, west_prices, "2020-02-10", "2020-02-11")
    return run_backtest(profile, actuals, ["mpc", "threshold", "always-on", "oracle"])


def test_summary_json_has_the_contract_keys(day_result, tmp_path) -> None:
    written = write_outputs(day_result, tmp_path)
    document = json.loads(written["summary"].read_text())
    assert set(document["policies"]) == {"mpc", "threshold", "always-on", "oracle"}
    for figures in document["policies"].values():
        assert set(SUMMARY_KEYS) <= set(figures)
        assert set(figures["noise_exceedance_minutes"]) == {"house"}
        assert set(figures["noise_exceedance_minutes"]["house"]) == {"modelled", "measured"}
    assert document["policies"]["oracle"]["profit_ratio_to_oracle"] == pytest.approx(1.0)


def test_summary_figures_recomputed_from_the_interval_csv(day_result, tmp_path) -> None:
    written = write_outputs(day_result, tmp_path)
    document = json.loads(written["summary"].read_text())
    profile = day_result.profile
    hp_usd_per_th_h = 48 / 1000 / 24
    for name, figures in document["policies"].items():
        csv = pd.read_csv(tmp_path / f"intervals_{name}.csv")
        dt = 0.25
        eff, old = csv["units_eff_stock"], csv["units_old_stock"]
        load = (eff + old) * 3.0
        grid = csv["grid_import_kw"]
        assert np.allclose(grid, load)  # no renewables in this profile
        revenue = ((eff * 300 + old * 100) * hp_usd_per_th_h * dt).sum()
        energy_cost = (grid * csv["price_usd_mwh"] * dt / 1000).sum()
        starts = np.diff(eff, prepend=0).clip(min=0).sum() * 0 + csv["start_cost_usd"].sum()  # no start costs
        assert starts == 0
        assert figures["revenue_usd"] == pytest.approx(revenue)
        assert figures["energy_cost_usd"] == pytest.approx(energy_cost)
        assert figures["profit_usd"] == pytest.approx(revenue - energy_cost)
        assert figures["energy_mwh"] == pytest.approx((load * dt).sum() / 1000)
        assert figures["emissions_kg"] == pytest.approx((grid * dt * 400 / 1000).sum())
        assert figures["curtailed_hours"] == pytest.approx((dt * (1 - (eff + old) / 5)).sum())
        assert figures["import_violation_kwh"] == pytest.approx(((grid - 12.0).clip(lower=0) * dt).sum())
        energy = (eff + old) * 1e4 + 100
        modelled = 10 * np.log10(energy)
        assert figures["noise_exceedance_minutes"]["house"]["modelled"] == pytest.approx(15 * (modelled > 46 + 1e-6).sum())
        measured = site_level_dba(csv["noise_measured_dba_house"].to_numpy(), 20, "total")
        assert figures["noise_exceedance_minutes"]["house"]["measured"] == pytest.approx(15 * (measured > 46 + 1e-6).sum())
        assert figures["dr_compliance_pct"] is None
    # Hard limits: the import limit (12 kW, four units) and the modelled noise cap hold for every policy.
    for figures in document["policies"].values():
        assert figures["import_violation_kwh"] == 0
        assert figures["noise_exceedance_minutes"]["house"]["modelled"] == 0


def test_oracle_is_the_upper_bound(day_result) -> None:
    document = summary_document(day_result)
    oracle = document["policies"]["oracle"]["profit_usd"]
    gap = max(info.gap or 0.0 for info in day_result.runs["oracle"].infos)
    for name, figures in document["policies"].items():
        assert figures["profit_usd"] <= oracle + abs(oracle) * max(gap, 1e-3) + 1e-6, name


def test_accounting_is_one_function_of_counts(day_result) -> None:
    """Re-accounting any policy's counts reproduces its schedule exactly (no per-policy figures)."""
    for name, run in day_result.runs.items():
        again = account(day_result.profile, day_result.actuals, run.counts)
        pd.testing.assert_series_equal(again.frame["profit_usd"], day_result.schedules[name].frame["profit_usd"])


# ------------------------------------------------------------------------------------ CLI, evaluate

def test_cli_writes_every_output(tmp_path) -> None:
    profile_path = tmp_path / "tiny.yaml"
    profile_path.write_text(TINY.format(point="LZ_WEST", limit=100.0, receptors=RECEPTOR))
    out = tmp_path / "out"
    code = backtest_main(["backtest", "--profile", str(profile_path), "--prices", str(bundled_path("ercot/RTM-2020-02.csv")),
                          "--from", "2020-02-10T08:00-06:00", "--to", "2020-02-10T11:00-06:00",
                          "--policy", "all", "--replan-minutes", "60", "--out", str(out), "--quiet"])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"summary.json", "backtest.png", "backtest.db", "intervals_mpc.csv", "intervals_oracle.csv"} <= names
    from hashflex.store import Store

    with Store(out / "backtest.db") as store:
        assert store.count("schedules") == 12
        summary = store.get_meta("backtest_summary")["policies"]["mpc"]
        assert summary["profit_usd"] is not None
    # The report on the backtest's own trail agrees with its summary (found by a newcomer: the trail
    # valued revenue at the forecast's hashprice, the summary at the day's settled one).
    from hashflex.report import build_report

    economics = build_report(out / "backtest.db")["economics"]
    assert economics["revenue_usd"] == pytest.approx(summary["revenue_usd"], abs=0.01)
    assert economics["energy_cost_usd"] == pytest.approx(summary["energy_cost_usd"], abs=0.01)


def test_candidate_group_is_placed_at_the_nearest_existing_attenuation() -> None:
    profile = tiny(receptor=True)
    extended = profile_with_candidate(profile, power_kw=5.0, hashrate_th_s=500.0, sound_dba=70.0, units=4, name="S23 Hyd")
    group = extended.group("new_s23_hyd")
    assert group.units == 4 and group.modes[0].power_kw == 5.0
    assert extended.receptors[0].attenuation_from("new_s23_hyd") == 40.0
    assert math.isinf(profile.receptors[0].attenuation_from("new_s23_hyd"))


def test_dr_event_is_honoured_by_every_policy() -> None:
    from hashflex.messages import DREventMessage

    profile = tiny()
    begin = pd.Timestamp(WINDOW_START) + pd.Timedelta(minutes=30)
    event = DREventMessage(event_id="ers-1", modification_number=0, program="ERS-10", level=3, issuer="utility",
                           start=begin.to_pydatetime(), end=(begin + pd.Timedelta(minutes=45)).to_pydatetime())
    start = pd.Timestamp(WINDOW_START)
    actuals = build_actuals(profile, pattern_prices(), start, start + pd.Timedelta(hours=2), dr_events=[event])
    assert list(actuals.import_limit_source[:6]) == ["import limit"] * 2 + ["DR:ers-1"] * 3 + ["import limit"]
    result = run_backtest(profile, actuals, ["mpc", "threshold", "always-on", "oracle"])
    document = summary_document(result)
    for name, figures in document["policies"].items():
        assert figures["dr_compliance_pct"] == 100.0, name
        assert figures["import_violation_kwh"] == 0.0, name
        assert all(run_counts[2:5].sum() == 0 for run_counts in result.runs[name].counts.values()), name


class _Terminal:
    def __init__(self, tty: bool) -> None:
        self.text, self.tty = "", tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(("tty", "quiet", "shown"), [(True, False, True), (True, True, False), (False, False, False)])
def test_progress_line_only_on_a_terminal_and_not_when_quiet(tty: bool, quiet: bool, shown: bool) -> None:
    from hashflex.backtest.runner import Progress

    stream = _Terminal(tty)
    bar = Progress.factory(quiet, stream)("mpc", 96, 15 / 1440)
    bar.update(48)
    bar.update(96)
    bar.close()
    assert ("ETA" in stream.text) is shown


def test_replan_minutes_solves_once_per_period_and_dispatches_the_cached_plan_between() -> None:
    profile = tiny()
    actuals = window(profile, pattern_prices())
    every = simulate_policy(profile, actuals, "mpc")
    hourly = simulate_policy(profile, actuals, "mpc", replan_minutes=60)
    assert every.solves == 8
    assert hourly.solves == 2  # at 00:00 and 01:00; nothing asked for a re-plan in between
    assert (hourly.extra["solve_seconds"][[1, 2, 3, 5, 6, 7]] == 0).all()


def test_mpc_keeps_the_daily_carbon_budget() -> None:
    """The loop charges the daily budget with today's measured emissions at every re-plan.
    Full load emits 15 kW × 0.25 h × 0.4 kg/kWh = 1.5 kg per interval; the budget allows 4."""
    text = TINY.format(point="LZ_TEST", limit=100.0, receptors="").replace(
        "carbon: {default_intensity_kg_per_mwh", "carbon: {daily_budget_kg: 6, default_intensity_kg_per_mwh")
    profile = parse_profile(text, "tiny-carbon")
    # Prices rise through every day, so the forecast (yesterday's same time, the last RT price near
    # now) always shows the future dearer than now: the plan runs as early as the budget allows.
    rising = rt_frame("2024-03-04T00:00-06:00", [20.0 + 0.5 * (k % 96) for k in range(96 + 40)])
    start = pd.Timestamp(WINDOW_START)
    actuals = build_actuals(profile, rising, start, start + pd.Timedelta(hours=8))
    run = simulate_policy(profile, actuals, "mpc")
    frame = account(profile, actuals, run.counts).frame
    assert frame["emissions_kg"].sum() <= 6.0 + 1e-6
    assert frame["emissions_kg"].sum() >= 6.0 - 1.5, "the budget is used, not left idle"
