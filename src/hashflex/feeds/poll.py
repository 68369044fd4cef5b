"""The daemon's price feed: polls prices over HTTP into the store, in its own thread.

Two sources, chosen by environment (``deploy/hashflex.env.example``):
- ``HASHFLEX_PRICE_URL``: a generic JSON price endpoint (another ISO, a retail provider, or a relay);
- ``ERCOT_API_KEY`` (+ ``ERCOT_ID_TOKEN``): the ERCOT public API, RT SPPs for today and DA SPPs for
  today and tomorrow at the profile's settlement point.
Each poll stores what it got with ``published_at`` = the time it was fetched, so the forecast never
uses a price before hashflex could have known it. A failed poll is logged and counted and the next
one tries again; a feed that stays down shows as a stale price in /status and /healthz (the
forecast's fallbacks curtail on unknown prices).

Plausibility: every fetched row is checked against the price bounds of :mod:`hashflex.plausibility`
(the same numbers as MQTT ``in/price``: −$251 to $20,000/MWh, interval length, horizon, staleness)
before it is stored; an implausible row is dropped and counted (``rejected_rows``, and per reason
class in ``rejections`` = ``{"price": {"out_of_bounds:price_usd_mwh": n}}``, which /metrics exports
as ``hashflex_input_rejections_total``), the other rows of the same poll are stored as fetched.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from hashflex.feeds.http import (
    ErcotApiConfig,
    PriceFeedError,
    PricePoller,
    fetch_generic_prices,
)
from hashflex.frames import utc_now
from hashflex.plausibility import filter_price_frame
from hashflex.profile import SiteProfile

log = logging.getLogger(__name__)


class PollingFeed(abc.ABC):
    """What every polled feed shares: the counters ``/status`` and ``/metrics`` read, and the thread that
    calls ``poll_once()`` every ``period_s`` from ``start()`` until ``stop()`` (subclasses define
    ``poll_once``; the price feed and the load-forecast feed).

    Parameters
    ----------
    kind : str
        The input kind its rejections are counted under (``price``, ``load_forecast``).
    period_s : float
        Seconds between polls.
    name : str
        The feed's name in logs and ``/metrics``; its thread is ``hashflex-<name with dashes>``.
    """

    def __init__(self, kind: str, period_s: float, name: str) -> None:
        self.period_s, self.name = period_s, name
        self.polls = self.failures = self.rows = self.rejected_rows = 0
        self.rejections: dict[str, dict[str, int]] = {kind: {}}
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hashflex-" + name.replace(" ", "-"), daemon=True)

    @abc.abstractmethod
    def poll_once(self) -> int:
        """Fetch once and store the plausible rows; how many were stored (0 on failure, never raises)."""

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.period_s)

    def start(self) -> None:
        """Start polling every ``period_s`` in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling: the thread ends after its current wait or poll (it is a daemon thread)."""
        self._stop.set()

    def stats(self) -> dict[str, Any]:
        """Counters for ``/status`` and ``/metrics``: polls, failures, rows stored and rejected, last error.

        Returns
        -------
        dict
            ``feed``, ``polls``, ``failures``, ``rows``, ``rejected_rows``, ``rejections`` (kind ->
            {reason: n}), ``last_error``.
        """
        return {"feed": self.name, "polls": self.polls, "failures": self.failures, "rows": self.rows,
                "rejected_rows": self.rejected_rows,
                "rejections": {kind: dict(counts) for kind, counts in self.rejections.items()},
                "last_error": self.last_error}


class PriceFeed(PollingFeed):
    """``poll_once()`` fetches and stores; ``start()`` polls every ``period_s`` until ``stop()``.

    Parameters
    ----------
    profile : SiteProfile
        The site (settlement point, plausibility bounds).
    store : hashflex.store.Store
        Where plausible rows go.
    fetch : callable
        ``fetch(now) -> DataFrame`` in the canonical price frame (:mod:`hashflex.frames`).
    period_s : float
        Seconds between polls.
    clock : callable
        ``clock() -> datetime``, tz-aware UTC.
    name : str
        The feed's name in logs and ``/metrics``.
    """

    def __init__(self, profile: SiteProfile, store: Any, fetch: Callable[[datetime], pd.DataFrame], *,
                 period_s: float = 300.0, clock: Callable[[], datetime] = utc_now, name: str = "price feed") -> None:
        super().__init__("price", period_s, name)
        self.profile, self.store, self.fetch, self.clock = profile, store, fetch, clock

    def poll_once(self) -> int:
        """Fetch once and store the plausible rows; returns how many were stored (0 on failure).

        Returns
        -------
        int
            Rows stored; a failed fetch (:class:`~hashflex.feeds.http.PriceFeedError` or a bad payload)
            is counted and logged, never raised.
        """
        now = self.clock()
        self.polls += 1
        try:
            frame = self.fetch(now)
        except (PriceFeedError, ValueError) as exc:  # the feed's own typed errors and bad payloads
            self.failures += 1
            self.last_error = str(exc)
            log.warning("%s: poll failed: %s", self.name, exc)
            return 0
        if frame.empty:
            return 0
        frame, dropped, reasons = filter_price_frame(frame, now)
        if dropped:
            counts = self.rejections["price"]
            for rule, n in dropped.items():
                counts[rule] = counts.get(rule, 0) + n
            self.rejected_rows += sum(dropped.values())
            log.warning("%s: %d implausible row(s) dropped, e.g. %s", self.name, sum(dropped.values()),
                        "; ".join(reasons))
        self.last_error = None
        if frame.empty:
            return 0
        self.rows += self.store.put_price_frame(frame, published_at=now)
        return len(frame)


def price_feed_from_env(profile: SiteProfile, store: Any, env: dict[str, str] | None = None) -> PriceFeed | None:
    """The configured feed, or None when the environment names none (prices then come on in/price).

    ``HASHFLEX_PRICE_URL`` selects a generic JSON endpoint, ``ERCOT_API_KEY`` the ERCOT public API
    (RT today and DA today and tomorrow); ``HASHFLEX_PRICE_POLL_S`` sets the period (default 300 s).

    Parameters
    ----------
    profile : SiteProfile
        The site (settlement point and type, time zone).
    store : hashflex.store.Store
        Where the rows go.
    env : dict of str to str, optional
        The environment; default ``os.environ``.

    Returns
    -------
    PriceFeed or None
    """
    env = dict(os.environ if env is None else env)
    point = profile.site.settlement_point
    period_s = float(env.get("HASHFLEX_PRICE_POLL_S", "300"))
    if env.get("HASHFLEX_PRICE_URL"):
        url = env["HASHFLEX_PRICE_URL"]
        return PriceFeed(profile, store, lambda now: fetch_generic_prices(url, settlement_point=point),
                         period_s=period_s, name=f"generic JSON {url}")
    if env.get("ERCOT_API_KEY"):
        poller = PricePoller(ErcotApiConfig(), environ=env)
        tz = profile.tz

        def fetch(now: datetime) -> pd.DataFrame:
            today = now.astimezone(tz).date()
            rt = poller.fetch_rt_prices(today, today, settlement_point=point,
                                        settlement_point_type=profile.site.settlement_point_type)
            da = poller.fetch_dam_prices(today, today + timedelta(days=1), settlement_point=point)
            return pd.concat([rt, da], ignore_index=True).sort_values(
                ["interval_start", "settlement_point", "market"], ignore_index=True)

        return PriceFeed(profile, store, fetch, period_s=period_s, name="ERCOT public API")
    return None
