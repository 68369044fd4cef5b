"""The daemon's HTTP price feed against a real HTTP server on 127.0.0.1, into a real store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from conftest import json_server

from hashflex.feeds.http import PriceFeedError
from hashflex.feeds.poll import PriceFeed, price_feed_from_env
from hashflex.profile import load_profile
from hashflex.store import Store


@pytest.fixture()
def price_server():
    rows = [{"interval_start": (pd.Timestamp("2024-07-01T05:00Z") + pd.Timedelta(hours=h)).isoformat(),
             "interval_end": (pd.Timestamp("2024-07-01T06:00Z") + pd.Timedelta(hours=h)).isoformat(),
             "price_usd_mwh": 20.0 + h, "market": "DA", "settlement_point": "LZ_WEST"} for h in range(4)]

    with json_server(rows) as url:
        yield url


def test_generic_feed_stores_prices_published_when_fetched(price_server: str, tmp_path: Path) -> None:
    profile = load_profile("west_texas")
    fetched_at = datetime(2024, 6, 30, 18, 0, tzinfo=timezone.utc)
    with Store(str(tmp_path / "s.db")) as store:
        feed = price_feed_from_env(profile, store, {"HASHFLEX_PRICE_URL": price_server})
        assert feed is not None and "generic JSON" in feed.name
        feed.clock = lambda: fetched_at
        assert feed.poll_once() == 4
        store.flush()
        prices = store.prices(settlement_point="LZ_WEST", with_published_at=True)
        assert prices["price_usd_mwh"].tolist() == [20.0, 21.0, 22.0, 23.0]
        assert (prices["published_at"] == pd.Timestamp(fetched_at)).all()
        # Not known before it was fetched: the forecast's no-look-ahead rests on this.
        assert store.prices(settlement_point="LZ_WEST", as_of=fetched_at - timedelta(seconds=1)).empty


def test_a_failing_feed_is_counted_and_the_next_poll_tries_again(tmp_path: Path) -> None:
    profile = load_profile("west_texas")
    calls = []

    def fetch(now: datetime) -> pd.DataFrame:
        calls.append(now)
        raise PriceFeedError("HTTP 503 from the price endpoint")

    with Store(str(tmp_path / "s.db")) as store:
        feed = PriceFeed(profile, store, fetch, period_s=0.01)
        assert feed.poll_once() == 0 and feed.poll_once() == 0
        assert feed.stats()["failures"] == 2 and "503" in feed.stats()["last_error"]
        assert store.count("prices") == 0


def test_no_feed_configured_means_none() -> None:
    assert price_feed_from_env(load_profile("west_texas"), None, {}) is None
