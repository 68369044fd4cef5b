"""The ``rt-risk`` day-ahead offer rule of ``mpc+as`` (issue 15): a reserve award is a minimum running
load, so holding it through a real-time spike costs what the energy-only plan would have saved by
sleeping; the rule prices that from what was published before the DAM closed (10:00 on D−1).

Hand-checkable cases on a SYNTHETIC hourly market (flat prices, one spike; made up for the test) and
a tiny site: 10 hydro blocks of 1 MW (10 kW asleep, 33,333.333 TH/s), hashprice $48/PH/day, no pool
fee, no adders: breakeven = 33,333.333 / 990 TH/s per kW × $0.002 per TH/s per h × 1000 = $67.34/MWh.
The no-look-ahead test uses the real 2024 development rows (optimization/data/ercot_dev2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from as_support import hydro_profile_yaml

from hashflex.backtest.ancillary import (
    EXAMPLE_WEST_TEXAS_ANCILLARY,
    breakeven_usd_mwh,
    load_hourly_market,
    offers_for_day,
    reserve_value_usd_mw_h,
    rt_risk_usd_mw_h,
    with_ancillary,
)
from hashflex.profile import load_profile, parse_profile

PROFILE = hydro_profile_yaml("AS Offers", products=("RRS",))  # SYNTHETIC: as_support's hydro site

BREAKEVEN = 33333.333 / 990.0 * 48.0 / 1000.0 / 24.0 * 1000.0
DEV_FILE = Path(__file__).resolve().parents[1] / "optimization/data/ercot_dev2/hourly_hubs_dam_rt_and_dam_as_mcpc_2024.csv"
DAY = pd.Timestamp("2024-05-08").tz_localize("America/Chicago")


@pytest.fixture(scope="module")
def site():
    return parse_profile(PROFILE, source="test")


def synthetic_market(spike_day: str | None = None, spike_hour: int = 19, spike_usd_mwh: float = BREAKEVEN + 1000.0
                     ) -> pd.DataFrame:
    """SYNTHETIC: 40 days of flat hourly prices (DA and RT $20/MWh, RRS $10/MW-h), one RT spike."""
    local = pd.date_range("2024-04-01", "2024-05-11", freq="h", inclusive="left", tz="America/Chicago")
    frame = pd.DataFrame({"da_usd_mwh": 20.0, "rt_usd_mwh": 20.0, "RRS": 10.0}, index=local)
    if spike_day is not None:
        frame.loc[pd.Timestamp(f"{spike_day} {spike_hour:02d}:00").tz_localize("America/Chicago"), "rt_usd_mwh"] = spike_usd_mwh
    frame.index = frame.index.tz_convert("UTC")
    return frame


def day_index(day: pd.Timestamp) -> pd.DatetimeIndex:
    return pd.date_range(day, day + pd.Timedelta(days=1), freq="15min", inclusive="left").tz_convert("UTC")


def test_breakeven_by_hand(site) -> None:
    assert breakeven_usd_mwh(site, "hydro") == pytest.approx(BREAKEVEN) == pytest.approx(67.34, abs=0.01)
    with pytest.raises(KeyError, match="no group 'nope'"):
        breakeven_usd_mwh(site, "nope")


def test_one_spike_in_the_lookback_prices_its_hour_only(site) -> None:
    """A $1,000/MWh excess over breakeven at 19:00 on 20 April, inside the 28 days before the DAM
    close of 8 May (7 May 10:00): 28 samples of 19:00 (9 April .. 6 May; 7 May 19:00 comes after
    the close), so the risk of 19:00 is 1000 / 28 = $35.71/MW-h and every other hour's is 0. The
    value is the RRS price, $10, less that: negative at 19:00."""
    risk = rt_risk_usd_mw_h(site, synthetic_market("2024-04-20"), DAY)["RRS"]
    assert risk[19] == pytest.approx(1000.0 / 28.0)
    assert np.all(np.delete(risk, 19) == 0.0)
    value = reserve_value_usd_mw_h(site, synthetic_market("2024-04-20"), DAY)["RRS"]
    assert value[19] == pytest.approx(10.0 - 1000.0 / 28.0) and np.all(np.delete(value, 19) == pytest.approx(10.0))
    # Older than the lookback (8 April 19:00 is before 9 April 10:00): no risk at all.
    assert np.all(rt_risk_usd_mw_h(site, synthetic_market("2024-04-08"), DAY)["RRS"] == 0.0)


def test_rt_risk_rule_withholds_only_the_risky_hour(site) -> None:
    """Energy at $20 is below breakeven all day, so the plan runs every block and offers the 5 MW
    qualified in every hour price-taking; the rt-risk rule withholds 19:00 (value < 0) only."""
    market = synthetic_market("2024-04-20")
    index = day_index(DAY)
    taking, _ = offers_for_day(site, market, DAY, index, offer_rule="price-taking")
    risky, _ = offers_for_day(site, market, DAY, index, offer_rule="rt-risk")
    hour = np.asarray(index.tz_convert("America/Chicago").hour)
    assert np.all(taking["RRS"] == 5000.0)
    assert np.all(risky["RRS"][hour == 19] == 0.0) and np.all(risky["RRS"][hour != 19] == 5000.0)
    with pytest.raises(ValueError, match="offer_rule"):
        offers_for_day(site, market, DAY, index, offer_rule="gut-feel")


def test_offers_do_not_look_past_the_dam_close() -> None:
    """Offers for 8 May 2024 (real rows): rewriting every price published after the DAM close
    (real-time prices of hours ending after 7 May 10:00, and everything of 8 May: its real NSPIN
    spike of $2,150/MW-h and RT of $3,000/MWh included) changes nothing; a spike before the close
    changes the rt-risk offers."""
    profile = with_ancillary(load_profile("west_texas"), EXAMPLE_WEST_TEXAS_ANCILLARY)
    market = load_hourly_market(DEV_FILE)
    index = day_index(DAY)
    close = (DAY - pd.Timedelta(days=1) + pd.Timedelta(hours=10)).tz_convert("UTC")
    rewritten = market.copy()
    rt_after = rewritten.index + pd.Timedelta(hours=1) > close
    rewritten.loc[rt_after, "rt_usd_mwh"] = 5000.0
    rewritten.loc[rewritten.index >= DAY.tz_convert("UTC"), ["da_usd_mwh", "RRS", "ECRS", "NSPIN"]] = 0.0
    for rule in ("price-taking", "rt-risk"):
        before, _ = offers_for_day(profile, market, DAY, index, offer_rule=rule)
        after, _ = offers_for_day(profile, rewritten, DAY, index, offer_rule=rule)
        for product in before:
            assert np.array_equal(before[product], after[product]), (rule, product)
    value = reserve_value_usd_mw_h(profile, market, DAY)
    assert all(np.array_equal(value[p], reserve_value_usd_mw_h(profile, rewritten, DAY)[p]) for p in value)
    # A spike known before the close (RT $5,000 at 11:00 on 6 May, every hour 11..16 local) moves the value.
    spiked = market.copy()
    local_hours = spiked.index.tz_convert("America/Chicago")
    spiked.loc[(local_hours.normalize() == pd.Timestamp("2024-05-06", tz="America/Chicago"))
               & (local_hours.hour >= 11) & (local_hours.hour <= 16), "rt_usd_mwh"] = 5000.0
    moved = reserve_value_usd_mw_h(profile, spiked, DAY)
    assert all(moved[p][12] < value[p][12] - 100.0 for p in value)


def test_the_participant_takes_the_offer_rule_by_name() -> None:
    from hashflex.backtest.ancillary import market_price_frame
    from hashflex.backtest.ancillary_loop import ASParticipant
    from hashflex.backtest.runner import build_actuals

    profile = with_ancillary(load_profile("west_texas"), EXAMPLE_WEST_TEXAS_ANCILLARY)
    market = load_hourly_market(DEV_FILE)
    actuals = build_actuals(profile, market_price_frame(market, "LZ_WEST"), "2024-05-08", "2024-05-09",
                            as_market=market)
    with pytest.raises(ValueError, match="offer_rule: 'gut-feel'"):
        ASParticipant(profile, actuals, offer_rule="gut-feel")
    participant = ASParticipant(profile, actuals, offer_rule="rt-risk")
    assert participant.offer_rule == "rt-risk"
    assert any("offer rule rt-risk" in note for note in participant.notes)
