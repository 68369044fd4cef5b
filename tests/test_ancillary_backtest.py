"""``mpc+as`` day-ahead case (issue 15) on real May 2024 ERCOT prices (bundled slice) and real HiGHS."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hashflex.backtest.ancillary import (
    EXAMPLE_WEST_TEXAS_ANCILLARY,
    SYNTHETIC_LABEL,
    day_ahead_offers_kw,
    load_hourly_market,
    run_day_ahead_as,
    synthetic_deployments,
    with_ancillary,
)
from hashflex.data import bundled_path
from hashflex.profile import load_profile


@pytest.fixture(scope="module")
def site():
    return with_ancillary(load_profile("west_texas"), EXAMPLE_WEST_TEXAS_ANCILLARY)


@pytest.fixture(scope="module")
def market() -> pd.DataFrame:
    return load_hourly_market(bundled_path("ercot/hourly_dam_rt_as_mcpc_2024-05.csv"))


def day_index(site, day: str) -> pd.DatetimeIndex:
    start = pd.Timestamp(day).tz_localize(site.tz)
    return pd.date_range(start, start + pd.Timedelta(days=1), freq="15min", inclusive="left").tz_convert("UTC")


def test_offers_use_only_the_day_before(site, market: pd.DataFrame) -> None:
    """Offers for 8 May are decided from 7 May's prices: rewriting 8 May's prices (its real NSPIN
    spike of $2,150/MW-h included) changes nothing; rewriting 7 May's does."""
    index = day_index(site, "2024-05-08")
    start = index[0]
    known = market[(market.index >= start - pd.Timedelta(days=1)) & (market.index < start)]
    offers, _ = day_ahead_offers_kw(site, index, known)
    assert sum(v.sum() for v in offers.values()) > 0, "the site offers something on a real day"
    assert all(np.all(v % 100.0 == 0) for v in offers.values()), "offers in 0.1 MW steps"
    cheap = known.assign(RRS=0.0, ECRS=0.0, NSPIN=0.0)
    none, _ = day_ahead_offers_kw(site, index, cheap)
    assert all(v.sum() == 0 for v in none.values()), "no reserve is offered at a price of zero"


def test_two_days_settle_and_meet_obligations(site, market: pd.DataFrame) -> None:
    result = run_day_ahead_as(site, market, [pd.Timestamp("2024-05-01"), pd.Timestamp("2024-05-02")], seed=1)
    assert result.days == 2 and not result.skipped_days
    assert result.awarded_mwh > 0 and result.as_revenue_usd > 0
    assert result.obligations_met > 0.99
    assert SYNTHETIC_LABEL in result.notes
    assert result.held_mwh <= result.awarded_mwh + 1e-9
    assert result.as_clawback_usd <= result.as_revenue_usd


def test_synthetic_deployments_follow_the_rate(site) -> None:
    index = pd.date_range("2024-01-01", periods=4 * 24 * 365, freq="15min", tz="UTC")
    deployed = synthetic_deployments(site, index, seed=3)
    starts = {p: int(np.count_nonzero(np.diff(v.astype(int), prepend=0) == 1)) for p, v in deployed.items()}
    # 1, 2 and 1 per 730 h over 8,760 h: about 12, 24 and 12 (Poisson; wide bounds, fixed seed).
    assert 5 <= starts["RRS"] <= 20 and 14 <= starts["ECRS"] <= 36 and 5 <= starts["NSPIN"] <= 20
