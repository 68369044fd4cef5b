"""``mpc+as`` as a ``hashflex backtest`` policy through the real control loop (issue 15): a day on the
bundled real May 2024 ERCOT prices (LZ_WEST energy, DAM AS clearing prices), real HiGHS solves,
reserve revenue and energy accounting checked by hand from the output frame against the raw file."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from hashflex.backtest.ancillary import (
    EXAMPLE_WEST_TEXAS_ANCILLARY,
    SYNTHETIC_LABEL,
    day_ahead_offers_kw,
    load_hourly_market,
    market_price_frame,
    synthetic_deployments,
    with_ancillary,
)
from hashflex.backtest.ancillary_loop import RT_STAND_IN_NOTE
from hashflex.backtest.cli import main as backtest_main
from hashflex.backtest.runner import build_actuals, run_backtest
from hashflex.backtest.summary import interval_frame, summary_document
from hashflex.data import bundled_path
from hashflex.profile import load_profile

FILE = "ercot/hourly_dam_rt_as_mcpc_2024-05.csv"
PRODUCTS = {"RRS": "dam_mcpc_rrs", "ECRS": "dam_mcpc_ecrs", "NSPIN": "dam_mcpc_nspin"}
QUALIFIED_KW = {"RRS": 10_000.0, "ECRS": 5_000.0, "NSPIN": 5_000.0}


def site():
    """The west_texas site with the ASSUMED example qualification; ECRS deployed often (SYNTHETIC,
    60 a month) so that a one-day test sees deployments (seed 0: ECRS at 04:15 and 13:30 local)."""
    section = copy.deepcopy(EXAMPLE_WEST_TEXAS_ANCILLARY)
    section["products"]["ECRS"]["expected_deployments_per_month"] = 60.0
    return with_ancillary(load_profile("west_texas"), section)


def raw_hours() -> pd.DataFrame:
    """The bundled file read directly (not through the code under test), indexed by UTC hour."""
    raw = pd.read_csv(bundled_path(FILE))
    local = pd.to_datetime(raw["interval_start_cpt_naive"]).dt.tz_localize("America/Chicago", ambiguous=True)
    return raw.set_index(pd.DatetimeIndex(local).tz_convert("UTC"))


@pytest.fixture(scope="module")
def day():
    profile = site()
    market = load_hourly_market(bundled_path(FILE), "lz_west")
    actuals = build_actuals(profile, market_price_frame(market, "LZ_WEST"), "2024-05-08", "2024-05-09",
                            as_market=market)
    result = run_backtest(profile, actuals, ["mpc+as"], replan_minutes=60, seed=0, inline_solver=True)
    return profile, market, actuals, result


def test_prices_are_the_files_real_time_price_and_mcpc(day) -> None:
    _, _, _, result = day
    frame = interval_frame(result, "mpc+as")
    raw = raw_hours().reindex(frame.index.floor("h"))
    assert np.allclose(frame["price_usd_mwh"], raw["rtm_spp_hourly_lz_west"])
    for product, column in PRODUCTS.items():
        assert np.allclose(frame[f"as_mcpc_usd_mw_h_{product}"], raw[column])


def test_awards_are_the_day_ahead_offers_held_hour_by_hour(day) -> None:
    """What reached the loop's limits book is what the DAM co-optimisation offered from 7 May's prices."""
    profile, market, actuals, result = day
    frame = interval_frame(result, "mpc+as")
    start = actuals.index[0]
    known = market[(market.index >= start - pd.Timedelta(days=1)) & (market.index < start)]
    offers, _ = day_ahead_offers_kw(profile, actuals.index, known)
    hour = frame.index.floor("h")
    for product in PRODUCTS:
        award = frame[f"as_award_kw_{product}"]
        expected = pd.Series(offers[product], index=frame.index).groupby(hour).transform("min")
        assert np.allclose(award, expected), product
        assert (award.groupby(hour).nunique() == 1).all(), "an award is hourly"
        assert np.all(award.to_numpy() % 100.0 == 0) and award.max() <= QUALIFIED_KW[product]
    assert frame[[f"as_award_kw_{p}" for p in PRODUCTS]].to_numpy().sum() > 0


def test_reserve_revenue_by_hand(day) -> None:
    """Paid: Σ award × the file's MCPC × ¼ h; charged back: what was not held × MCPC."""
    profile, _, _, result = day
    frame = interval_frame(result, "mpc+as")
    figures = summary_document(result)["policies"]["mpc+as"]
    raw = raw_hours().reindex(frame.index.floor("h"))
    payment = sum((frame[f"as_award_kw_{p}"].to_numpy() * raw[c].to_numpy() * 0.25 / 1000).sum()
                  for p, c in PRODUCTS.items())
    assert (frame["as_deployment_short_kw"] == 0).all(), "the cut reached every deployment's limit"
    clawback = sum((frame[f"reserve_{p}_short_kw"].to_numpy() * raw[c].to_numpy() * 0.25 / 1000).sum()
                   for p, c in PRODUCTS.items())
    assert figures["as_payment_usd"] == pytest.approx(payment, rel=1e-9)
    assert figures["as_clawback_usd"] == pytest.approx(clawback, abs=1e-6)
    assert figures["as_revenue_usd"] == pytest.approx(payment - clawback, rel=1e-9)
    assert payment > 1000.0, "a real day of reserve at May 2024 prices pays"
    awarded = sum((frame[f"as_award_kw_{p}"] * 0.25).sum() for p in PRODUCTS) / 1000
    held = awarded - sum((frame[f"reserve_{p}_short_kw"] * 0.25).sum() for p in PRODUCTS) / 1000
    assert figures["as_awarded_mwh"] == pytest.approx(awarded)
    assert figures["as_obligations_met_pct"] == pytest.approx(100 * held / awarded)
    assert figures["as_obligations_met_pct"] > 99.0


def test_energy_accounting_by_hand(day) -> None:
    """Load from the unit counts, import = load − solar used, energy at the real-time price + adders,
    hashes at the profile's hashprice; profit adds the AS net payment (and nothing modelled)."""
    profile, _, _, result = day
    frame = interval_frame(result, "mpc+as")
    figures = summary_document(result)["policies"]["mpc+as"]
    load = np.zeros(len(frame))
    hashrate = np.zeros(len(frame))
    for group in profile.miner_groups:
        on = np.zeros(len(frame))
        for mode in group.modes:
            n = frame[f"units_{group.id}_{mode.name}"].to_numpy(float)
            load += n * mode.power_kw
            hashrate += n * mode.hashrate_th_s
            on += n
        load += (group.units - on) * group.idle_power_kw
    assert np.allclose(frame["load_kw"], load)
    assert (frame["export_kw"] == 0).all()
    grid = np.maximum(load - frame["renewable_kw"].to_numpy(), 0.0)
    assert np.allclose(frame["grid_import_kw"], grid)
    adder = profile.grid.total_adder_usd_mwh
    energy_cost = (grid * (frame["price_usd_mwh"].to_numpy() + adder) * 0.25 / 1000).sum()
    hp = frame["hashprice_usd_per_ph_day"].to_numpy() / 1000 / 24 * (1 - profile.economics.pool_fee_pct / 100)
    revenue = (hashrate * hp * 0.25).sum()
    assert figures["energy_cost_usd"] == pytest.approx(energy_cost, rel=1e-9)
    assert figures["revenue_usd"] == pytest.approx(revenue, rel=1e-9)
    assert figures["profit_usd"] == pytest.approx(
        revenue - energy_cost - figures["carbon_cost_usd"] - figures["start_cost_usd"]
        + figures["as_payment_usd"] - figures["as_clawback_usd"], rel=1e-9)


def test_synthetic_deployments_go_through_the_loop_and_are_measured(day) -> None:
    _, _, _, result = day
    frame = interval_frame(result, "mpc+as")
    document = summary_document(result)
    figures = document["policies"]["mpc+as"]
    deployments = figures["as_deployments"]
    # Every SYNTHETIC draw that starts where the product is awarded is sent (a draw where nothing is
    # awarded has nothing to deploy: seed 0 draws ECRS at 04:15 and 13:30 CDT, NSPIN at 19:15).
    draws = synthetic_deployments(result.profile, result.actuals.index, seed=0)
    expected = sorted(f"SYN-{p}-{result.actuals.index[k]:%Y%m%dT%H%M}" for p, live in draws.items()
                      for k in np.flatnonzero(np.diff(live.astype(int), prepend=0) == 1)
                      if frame[f"as_award_kw_{p}"].iloc[k] > 0)
    assert sorted(d["deployment_id"] for d in deployments) == expected
    assert "SYN-ECRS-20240508T1830" in expected
    for d in deployments:
        assert d["synthetic"] is True
        assert d["shortfall_kw"] == 0 and d["delivered_kw"] >= d["obligation_kw"] - 1e-6
        assert d["measured_within_deadline"] is True and d["measured_response_s"] == 30.0
        at = pd.Timestamp(d["issued_at"])
        assert d["obligation_kw"] == frame.loc[at, f"as_award_kw_{d['product']}"]
    deployed = frame["synthetic_deployment"].to_numpy(bool)
    assert deployed.sum() >= 8
    assert np.all(frame["grid_import_kw"].to_numpy()[deployed] <= frame["as_deployment_limit_kw"].to_numpy()[deployed] + 1e-6)
    assert figures["as_synthetic_deployment_hours"] == pytest.approx(deployed.sum() * 0.25)
    assert figures["as_deployment_cost_usd"] >= 0
    assert any(SYNTHETIC_LABEL in note for note in document["notes"])
    assert any("day-ahead case" in note for note in document["notes"])


def test_real_time_case_says_its_as_prices_are_a_day_ahead_stand_in() -> None:
    profile = site()
    market = load_hourly_market(bundled_path(FILE), "lz_west")
    start = pd.Timestamp("2024-05-08T06:00-05:00")
    actuals = build_actuals(profile, market_price_frame(market, "LZ_WEST"), start, start + pd.Timedelta(hours=3),
                            as_market=market)
    result = run_backtest(profile, actuals, ["mpc+as"], replan_minutes=60, seed=0, inline_solver=True,
                          as_mode="real-time")
    frame = interval_frame(result, "mpc+as")
    document = summary_document(result)
    assert any(RT_STAND_IN_NOTE in note for note in document["notes"])
    assert document["policies"]["mpc+as"]["as_mode"] == "real-time"
    # Re-decided each interval: an award covers its interval only, in 0.1 MW, within the plan's reserve.
    for product in PRODUCTS:
        award = frame[f"as_award_kw_{product}"].to_numpy()
        assert np.all(award % 100.0 == 0) and np.all(award <= QUALIFIED_KW[product])
    payment = sum((frame[f"as_award_kw_{p}"] * frame[f"as_mcpc_usd_mw_h_{p}"] * 0.25 / 1000).sum() for p in PRODUCTS)
    assert document["policies"]["mpc+as"]["as_payment_usd"] == pytest.approx(payment)
    assert payment > 0


def test_mpc_as_without_an_ancillary_section_is_refused() -> None:
    profile = load_profile("west_texas")
    market = load_hourly_market(bundled_path(FILE), "lz_west")
    actuals = build_actuals(profile, market_price_frame(market, "LZ_WEST"), "2024-05-08", "2024-05-09",
                            as_market=market)
    with pytest.raises(ValueError, match="ancillary"):
        run_backtest(profile, actuals, ["mpc+as"], inline_solver=True)
    with pytest.raises(ValueError, match="as_mode"):
        run_backtest(site(), actuals, ["mpc+as"], inline_solver=True, as_mode="weekly")


def test_cli_runs_mpc_as_and_writes_the_as_figures(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = backtest_main(["backtest", "--profile", "west_texas", "--ancillary", "example", "--policy", "mpc+as",
                          "--from", "2024-05-08T00:00-05:00", "--to", "2024-05-08T02:00-05:00",
                          "--replan-minutes", "60", "--hashprice", "profile", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "AS revenue $ (net)" in printed and "SYNTHETIC" in printed
    summary = json.loads((out / "summary.json").read_text())
    figures = summary["policies"]["mpc+as"]
    csv = pd.read_csv(out / "intervals_mpc+as.csv")
    assert figures["as_payment_usd"] == pytest.approx(csv["as_payment_usd"].sum())
    assert figures["as_payment_usd"] > 0


def test_cli_offer_rule_reaches_the_participant(tmp_path, capsys) -> None:
    """`hashflex backtest --offer-rule rt-risk` offers with the rt-risk rule (its note says so); the
    default stays price-taking (no such note)."""
    args = ["backtest", "--profile", "west_texas", "--ancillary", "example", "--policy", "mpc+as",
            "--from", "2024-05-08T00:00-05:00", "--to", "2024-05-08T01:00-05:00",
            "--replan-minutes", "60", "--hashprice", "profile", "--quiet"]
    assert backtest_main(args + ["--offer-rule", "rt-risk", "--out", str(tmp_path / "rt")]) == 0
    assert "offer rule rt-risk" in capsys.readouterr().out
    assert backtest_main(args + ["--out", str(tmp_path / "pt")]) == 0
    assert "offer rule rt-risk" not in capsys.readouterr().out


def test_as_options_without_mpc_as_are_said_to_be_ignored(tmp_path, capsys) -> None:
    """Newcomer finding: `--offer-rule` and `--as-mode` with policies that have no reserves were
    silently ignored; and a report on backtest.db did not say which run the db holds."""
    assert backtest_main(["backtest", "--profile", "west_texas", "--policy", "threshold,mpc",
                          "--from", "2020-02-10T00:00-06:00", "--to", "2020-02-10T01:00-06:00",
                          "--offer-rule", "rt-risk", "--as-mode", "real-time", "--quiet",
                          "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "--offer-rule applies to mpc+as only: ignored" in printed
    assert "--as-mode applies to mpc+as only: ignored" in printed
    assert "backtest.db holds the audit trail of the mpc run" in printed


def test_an_offer_rule_with_the_real_time_mode_is_said_to_be_ignored(tmp_path, capsys) -> None:
    """Newcomer finding: `--as-mode real-time --offer-rule rt-risk` gave the same run as without the rule,
    and said nothing (the offer rule prices day-ahead offers only)."""
    args = ["backtest", "--profile", "west_texas", "--ancillary", "example", "--policy", "mpc+as",
            "--from", "2024-05-08T00:00-05:00", "--to", "2024-05-08T01:00-05:00", "--as-mode", "real-time",
            "--replan-minutes", "60", "--hashprice", "profile", "--quiet"]
    assert backtest_main(args + ["--offer-rule", "rt-risk", "--out", str(tmp_path / "rt")]) == 0
    assert "offer rule rt-risk ignored" in capsys.readouterr().out
    assert backtest_main(args + ["--out", str(tmp_path / "none")]) == 0
    assert "ignored" not in capsys.readouterr().out


def test_cli_keeps_the_mpc_as_trail_beside_the_mpc_one(tmp_path, capsys) -> None:
    """Newcomer finding (issue 15): with `--policy mpc,mpc+as` only mpc's audit trail was kept, so an
    auditor had no reserve evidence of the mpc+as run. Now backtest.db holds mpc's trail and
    backtest_mpc+as.db the mpc+as run's, each verifiable, and the report on the second shows the
    reserve the backtest paid."""
    from hashflex.audit import AuditLog
    from hashflex.report import build_report

    out = tmp_path / "out"
    code = backtest_main(["backtest", "--profile", "west_texas", "--ancillary", "example", "--policy", "mpc,mpc+as",
                          "--from", "2024-05-08T00:00-05:00", "--to", "2024-05-08T02:00-05:00",
                          "--replan-minutes", "60", "--hashprice", "profile", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "backtest.db holds the audit trail of the mpc run" in printed
    assert "backtest_mpc+as.db holds the audit trail of the mpc+as run" in printed
    kinds = {}
    for name in ("backtest.db", "backtest_mpc+as.db"):
        with AuditLog(out / name, readonly=True) as log:
            assert log.verify().ok, name
            kinds[name] = {r.kind for r in log.records()}
    assert "as_award" in kinds["backtest_mpc+as.db"] and "as_award" not in kinds["backtest.db"]
    summary = json.loads((out / "summary.json").read_text())
    report = build_report(out / "backtest_mpc+as.db")
    assert report["economics"]["reserve_payment_usd"] == pytest.approx(
        summary["policies"]["mpc+as"]["as_payment_usd"], rel=1e-6, abs=0.01)


def test_obligations_met_is_never_shown_rounded_up_to_100() -> None:
    """Newcomer finding (issue 15): "AS obligations met 100.00" for 99.9994 % ($1.45 clawed back)."""
    from hashflex.backtest.summary import percent_not_rounded_up

    assert percent_not_rounded_up(99.9994) == "99.999"
    assert percent_not_rounded_up(99.99995) == "99.999"
    assert percent_not_rounded_up(100.0) == "100.000"
    assert percent_not_rounded_up(100.0 * (1 / 3) * 3) == "100.000"  # float noise is not a shortfall
    assert percent_not_rounded_up(0.0) == "0.000"
