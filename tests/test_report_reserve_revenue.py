"""``hashflex report`` on an ``mpc+as`` backtest database counts the reserve revenue (issue 15; a
newcomer found the report's economics left it out, so its profit disagreed with the backtest's).

Two hours of the bundled real May 2024 prices through the real control loop (``hashflex backtest
--policy mpc+as --out``, inline HiGHS), then ``hashflex report`` on the ``backtest.db`` it wrote. The
reserve payment in the report comes from the audit trail's accepted awards (MW × their price × hours
in the period); it must equal the backtest's own settlement (award × MCPC), and the report's profit
must carry it.
"""

from __future__ import annotations

import json

import pytest

from hashflex.backtest.cli import main as backtest_main
from hashflex.report import build_report


@pytest.fixture(scope="module")
def backtest_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpc_as_report")
    code = backtest_main(["backtest", "--profile", "west_texas", "--ancillary", "example", "--policy", "mpc+as",
                          "--from", "2024-05-08T00:00-05:00", "--to", "2024-05-08T02:00-05:00",
                          "--replan-minutes", "60", "--hashprice", "profile", "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_report_economics_carry_the_reserve_payment_of_the_backtest(backtest_out) -> None:
    figures = json.loads((backtest_out / "summary.json").read_text())["policies"]["mpc+as"]
    assert figures["as_payment_usd"] > 0, "two real hours of reserve pay something"
    report = build_report(backtest_out / "backtest.db")
    economics = report["economics"]
    # The same awards at the same prices over the same two hours: equal to the cent.
    assert economics["reserve_payment_usd"] == pytest.approx(figures["as_payment_usd"], abs=0.01)
    assert economics["reserve_clawback_usd"] == 0.0  # no deployment was short
    assert economics["reserve_revenue_usd"] == pytest.approx(economics["reserve_payment_usd"], abs=0.01)
    assert economics["profit_usd"] == pytest.approx(
        economics["revenue_usd"] - economics["energy_cost_usd"] + economics["reserve_revenue_usd"], abs=0.02)


def test_report_of_a_trail_without_awards_has_no_reserve_money(tmp_path) -> None:
    """An ``mpc`` backtest's trail has no award: reserve figures are 0 and profit is as before
    (revenue − electricity cost)."""
    out = tmp_path / "mpc"
    code = backtest_main(["backtest", "--profile", "west_texas", "--policy", "mpc",  # the bundled Feb 2020 prices
                          "--from", "2020-02-10T00:00-06:00", "--to", "2020-02-10T01:00-06:00",
                          "--replan-minutes", "60", "--hashprice", "profile", "--out", str(out), "--quiet"])
    assert code == 0
    economics = build_report(out / "backtest.db")["economics"]
    assert economics["reserve_payment_usd"] == 0.0 and economics["reserve_revenue_usd"] == 0.0
    assert economics["profit_usd"] == pytest.approx(economics["revenue_usd"] - economics["energy_cost_usd"], abs=0.01)


def test_a_metered_deployment_shortfall_is_reported_not_charged_back(tmp_path) -> None:
    """The trail of test_report_ancillary's RRS case (10 hydro blocks, an RRS award of 4,950 kW at
    $150/MW-h from 16:00 to 20:00, deployed at 17:03 with a 50 kW metered shortfall over the three
    quarter hours from 17:15). Report 17:00–18:00: paid 4.95 MW × $150 × 1 h = $742.50. The one
    clawback definition (issue 15, ``control.ancillary.reserve_clawback_usd``) charges reserve not
    held (ERCOT's failure to provide, §6.7.3); a deployment's metered shortfall is a performance
    figure (§8.1.1.4), in the deployments table, not charged: net $742.50 (it was $736.88 when the
    report charged it and the backtest did not: the $317.73 vs $4.96 a newcomer saw)."""
    from test_report_ancillary import _report, _trail

    db = tmp_path / "rrs.db"
    _trail(db, "RRS", 5000.0, [1090.0, 100.0, 100.0, 100.0])
    report = _report(db)
    economics = report["economics"]
    assert report["ancillary"]["deployments"][0]["metered_shortfall_mw"] == pytest.approx(0.05)
    assert economics["reserve_payment_usd"] == pytest.approx(742.5)
    assert economics["reserve_clawback_usd"] == 0.0
    assert economics["reserve_revenue_usd"] == pytest.approx(742.5, abs=0.01)
    assert economics["profit_usd"] == pytest.approx(
        economics["revenue_usd"] - economics["energy_cost_usd"] + 742.5, abs=0.02)


def test_award_time_no_measurement_covers_is_reported_as_unverified(tmp_path) -> None:
    """Newcomer finding (issue 15): after a kill -9 the reserve payment counted the whole interval
    while no measurement or hold check covered part of it. The 17:15–17:30 quarter has no
    measurement record (the controller down): of the $742.50 paid for 17:00–18:00, 4.95 MW × $150 ×
    0.25 h = $185.625 is for award time nothing evidences; with every quarter measured, none is."""
    from test_report_ancillary import _report, _trail

    gap = tmp_path / "gap.db"
    _trail(gap, "RRS", 1000.0, [1090.0, 100.0, 100.0, 100.0, 100.0], skip=(1,))
    economics = _report(gap)["economics"]
    assert economics["reserve_payment_usd"] == pytest.approx(742.5)
    assert economics["reserve_unverified_hold_h"] == pytest.approx(0.25)
    assert economics["reserve_unverified_payment_usd"] == pytest.approx(185.625, abs=0.01)  # shown to the cent
    full = tmp_path / "full.db"
    _trail(full, "RRS", 1000.0, [1090.0, 100.0, 100.0, 100.0, 100.0])
    assert _report(full)["economics"]["reserve_unverified_payment_usd"] == 0.0
