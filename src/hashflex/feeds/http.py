"""Fetching prices over HTTP: the ERCOT public API (paged) and a generic JSON price endpoint.

Why this shape: the control loop decides *when* to poll (and tracks data age); this module does
one fetch well. A fetch either returns the complete canonical price frame (see
:mod:`hashflex.frames`) or raises a :class:`PriceFeedError` subclass. It never returns
partial data: a page that fails after its retries fails the whole fetch.

Retries: connection errors, timeouts and HTTP 429/500/502/503/504 are retried with exponential
backoff (``backoff_initial_s * backoff_factor**(n-1)``, capped). A ``Retry-After`` header on
429/503 (seconds or an HTTP date) is honoured instead of the backoff; if it asks for longer than
``max_retry_after_s`` the fetch fails at once rather than hammering early. 401/403 and other 4xx are
not retried. The sleep function is injectable so tests run without waiting.

Credentials come from environment variables whose *names* are configurable (defaults
``ERCOT_API_KEY`` for ``Ocp-Apim-Subscription-Key`` and ``ERCOT_ID_TOKEN`` for
``Authorization: Bearer``); a missing variable is a :class:`PriceFeedConfigError` before any request.
Obtaining/refreshing the ID token (ERCOT B2C ROPC flow, ~1 h lifetime) is left to the operator.
"""

from __future__ import annotations

import email.utils
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import pandas as pd
import requests

from hashflex import __version__
from hashflex.frames import DuplicateReport, PriceFileError, empty_price_frame, finalize_price_frame
from hashflex.feeds.ercot import parse_ercot_api, parse_generic_json

__all__ = [
    "PriceFeedError",
    "PriceFeedConfigError",
    "PriceFeedHTTPError",
    "PriceFeedAuthError",
    "PriceFeedTimeout",
    "PriceFeedConnectionError",
    "PriceFeedResponseError",
    "RetryPolicy",
    "ErcotApiConfig",
    "PricePoller",
    "RT_SPP_PATH",
    "DAM_SPP_PATH",
    "fetch_generic_prices",
]

log = logging.getLogger(__name__)

RT_SPP_PATH = "/np6-905-cd/spp_node_zone_hub"
DAM_SPP_PATH = "/np4-190-cd/dam_stlmnt_pnt_prices"
_USER_AGENT = f"hashflex/{__version__}"


class PriceFeedError(RuntimeError):
    """Base class: the price fetch failed and returned nothing."""


class PriceFeedConfigError(PriceFeedError):
    """Configuration problem found before any request (e.g. a credential variable is unset)."""


class PriceFeedHTTPError(PriceFeedError):
    """The server answered with an error status (after retries, if it was retryable)."""

    def __init__(self, message: str, *, url: str, status: int, attempts: int) -> None:
        super().__init__(message)
        self.url, self.status, self.attempts = url, status, attempts


class PriceFeedAuthError(PriceFeedHTTPError):
    """401/403: key or ID token wrong or expired. Not retried."""


class PriceFeedTimeout(PriceFeedError):
    """Every attempt timed out."""


class PriceFeedConnectionError(PriceFeedError):
    """Every attempt failed to connect."""


class PriceFeedResponseError(PriceFeedError):
    """The response was not the JSON shape expected (bad JSON, missing ``_meta``, wrong pages)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Delays are in seconds; ``max_attempts`` counts the first try."""

    max_attempts: int = 5
    backoff_initial_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})

    def backoff_s(self, failed_attempts: int) -> float:
        """Delay after the ``failed_attempts``-th failure (1-based).

        Parameters
        ----------
        failed_attempts : int
            Failures so far (1 after the first).

        Returns
        -------
        float
            Seconds to wait, exponential and capped.
        """
        return min(self.backoff_initial_s * self.backoff_factor ** (failed_attempts - 1), self.backoff_max_s)


@dataclass(frozen=True)
class ErcotApiConfig:
    """Where and how to reach the ERCOT public API. Env var names, not secrets, live here."""

    base_url: str = "https://api.ercot.com/api/public-reports"
    api_key_env: str | None = "ERCOT_API_KEY"
    id_token_env: str | None = "ERCOT_ID_TOKEN"
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0  # per socket read, not for the whole response (requests semantics)
    page_size: int = 10_000
    max_pages: int = 1_000
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def _retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _get_json(session: requests.Session, url: str, *, params: Mapping[str, Any] | None,
              headers: Mapping[str, str], timeout_s: tuple[float, float], retry: RetryPolicy,
              sleep: Callable[[float], None]) -> Any:
    """GET ``url`` and decode JSON, retrying per ``retry``; raise a PriceFeedError when done trying."""
    last: Exception | None = None
    for attempt in range(1, retry.max_attempts + 1):
        delay_s: float | None = None
        try:
            resp = session.get(url, params=params, headers=dict(headers), timeout=timeout_s)
        except requests.Timeout as exc:
            last = PriceFeedTimeout(f"GET {url} timed out after {attempt} attempt(s) "
                                    f"(connect/read timeout {timeout_s[0]}/{timeout_s[1]} s): {exc}")
        except requests.ConnectionError as exc:
            last = PriceFeedConnectionError(f"GET {url} could not connect after {attempt} attempt(s): {exc}")
        else:
            if resp.status_code == 200:
                try:
                    return resp.json()
                except ValueError as exc:
                    raise PriceFeedResponseError(f"GET {resp.url} returned invalid JSON: {exc}") from exc
            body = resp.text[:200].replace("\n", " ")
            message = f"GET {resp.url} returned HTTP {resp.status_code} after {attempt} attempt(s): {body}"
            if resp.status_code in (401, 403):
                raise PriceFeedAuthError(message + " (check the subscription key and refresh the ID token)",
                                         url=url, status=resp.status_code, attempts=attempt)
            if resp.status_code not in retry.retry_statuses:
                raise PriceFeedHTTPError(message, url=url, status=resp.status_code, attempts=attempt)
            last = PriceFeedHTTPError(message, url=url, status=resp.status_code, attempts=attempt)
            if resp.status_code in (429, 503):
                delay_s = _retry_after_s(resp.headers.get("Retry-After"))
                if delay_s is not None and delay_s > retry.max_retry_after_s:
                    raise PriceFeedHTTPError(f"{message}; server asks to retry after {delay_s:.0f} s, more than "
                                             f"max_retry_after_s={retry.max_retry_after_s:.0f}",
                                             url=url, status=resp.status_code, attempts=attempt)
        if attempt == retry.max_attempts:
            break
        if delay_s is None:
            delay_s = retry.backoff_s(attempt)
        log.warning("%s; retrying in %.1f s", last, delay_s)
        sleep(delay_s)
    assert last is not None
    raise last


class PricePoller:
    """Fetch ERCOT RT (NP6-905-CD) and DAM (NP4-190-CD) prices from the public API, all pages.

    One call = one complete fetch; the caller's loop decides how often to call. Use as a context
    manager (or call :meth:`close`) to release the HTTP session.
    """

    def __init__(self, config: ErcotApiConfig | None = None, *, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, environ: Mapping[str, str] | None = None) -> None:
        self.config = config or ErcotApiConfig()
        self._session = session or requests.Session()
        self._sleep = sleep
        self._environ = os.environ if environ is None else environ

    def __enter__(self) -> PricePoller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def auth_headers(self) -> dict[str, str]:
        """Headers from the configured env vars; raises PriceFeedConfigError naming a missing one.

        Returns
        -------
        dict of str to str

        Raises
        ------
        PriceFeedConfigError
            A credential variable named by the config is unset.
        """
        headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        for env, header, prefix in ((self.config.api_key_env, "Ocp-Apim-Subscription-Key", ""),
                                    (self.config.id_token_env, "Authorization", "Bearer ")):
            if env is None:
                continue
            value = self._environ.get(env, "").strip()
            if not value:
                raise PriceFeedConfigError(f"environment variable {env} is not set (needed for the {header} header)")
            headers[header] = prefix + value
        return headers

    def fetch_pages(self, path: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every page of an API report query, in order; raises unless all ``_meta.totalPages`` arrive.

        Parameters
        ----------
        path : str
            The report's API path (e.g. :data:`RT_SPP_PATH`).
        params : Mapping[str, Any]
            Query parameters (dates, settlement point).

        Returns
        -------
        list of dict
            The pages as decoded JSON.

        Raises
        ------
        PriceFeedError
            The subclass says why: HTTP status, authentication, timeout, connection, or a response of
            the wrong shape (including a missing page).
        """
        headers = self.auth_headers()
        url = self.config.base_url.rstrip("/") + "/" + path.lstrip("/")
        cfg = self.config
        pages: list[dict[str, Any]] = []
        total: int | None = None
        page_no = 1
        while total is None or page_no <= total:
            query = {**params, "page": page_no, "size": cfg.page_size}
            body = _get_json(self._session, url, params=query, headers=headers,
                             timeout_s=(cfg.connect_timeout_s, cfg.read_timeout_s), retry=cfg.retry, sleep=self._sleep)
            meta = body.get("_meta") if isinstance(body, dict) else None
            if not isinstance(meta, dict) or not isinstance(meta.get("totalPages"), int):
                raise PriceFeedResponseError(f"GET {url} page {page_no}: response has no _meta.totalPages")
            if meta.get("currentPage", page_no) != page_no:
                raise PriceFeedResponseError(f"GET {url}: asked for page {page_no}, got {meta.get('currentPage')}")
            if total is None:
                total = meta["totalPages"]
                if total > cfg.max_pages:
                    raise PriceFeedResponseError(f"GET {url}: {total} pages exceed max_pages={cfg.max_pages}; "
                                                 "narrow the query")
            elif meta["totalPages"] != total:
                raise PriceFeedResponseError(f"GET {url}: totalPages changed from {total} to "
                                             f"{meta['totalPages']} while paging")
            pages.append(body)
            page_no += 1
        return pages

    def fetch_rt_prices(self, delivery_date_from: date, delivery_date_to: date, *,
                        settlement_point: str | Iterable[str] | None = None,
                        settlement_point_type: str | None = None) -> pd.DataFrame:
        """Real-time 15-min SPPs (NP6-905-CD) for operating days ``from``..``to`` inclusive.

        Each named point is queried separately (server-side filter), so asking for two load
        zones does not download every resource node; ``None`` fetches all points.

        Parameters
        ----------
        delivery_date_from, delivery_date_to : date
            Operating days (Central time), inclusive.
        settlement_point : str or iterable of str, optional
            Settlement point name(s).
        settlement_point_type : str, optional
            E.g. ``HU``, ``LZ``; chooses between a load zone's ``LZ`` and ``LZEW`` rows.

        Returns
        -------
        pd.DataFrame
            The canonical price frame, market ``RT``.

        Raises
        ------
        PriceFeedError
            The fetch failed (see :meth:`fetch_pages`).
        """
        extra = {"settlementPointType": settlement_point_type} if settlement_point_type else {}
        return self._fetch_points(RT_SPP_PATH, delivery_date_from, delivery_date_to, settlement_point,
                                  settlement_point_type, extra)

    def fetch_dam_prices(self, delivery_date_from: date, delivery_date_to: date, *,
                         settlement_point: str | Iterable[str] | None = None) -> pd.DataFrame:
        """Day-ahead hourly SPPs (NP4-190-CD) for operating days ``from``..``to`` inclusive.

        Parameters
        ----------
        delivery_date_from, delivery_date_to : date
            Operating days (Central time), inclusive.
        settlement_point : str or iterable of str, optional
            Settlement point name(s).

        Returns
        -------
        pd.DataFrame
            The canonical price frame, market ``DA``.

        Raises
        ------
        PriceFeedError
            The fetch failed (see :meth:`fetch_pages`).
        """
        return self._fetch_points(DAM_SPP_PATH, delivery_date_from, delivery_date_to, settlement_point, None, {})

    def _fetch_points(self, path: str, start: date, end: date, settlement_point: str | Iterable[str] | None,
                      settlement_point_type: str | None, extra: Mapping[str, Any]) -> pd.DataFrame:
        if end < start:
            raise ValueError(f"delivery_date_to {end} is before delivery_date_from {start}")
        params = {"deliveryDateFrom": start.isoformat(), "deliveryDateTo": end.isoformat(), **extra}
        points: list[str | None] = (
            [None] if settlement_point is None
            else [settlement_point] if isinstance(settlement_point, str) else list(settlement_point))
        frames = []
        for point in points:
            query = params if point is None else {**params, "settlementPoint": point}
            frames.append(_parse_pages(self.fetch_pages(path, query), path, point, settlement_point_type))
        if len(frames) == 1:
            return frames[0]
        out = finalize_price_frame(pd.concat(frames, ignore_index=True), f"ERCOT API {path}")
        reports = [f.attrs["duplicates"] for f in frames]  # points are disjoint: combine the per-point reports
        out.attrs["duplicates"] = DuplicateReport(
            source=f"ERCOT API {path}",
            identical_rows_dropped=sum(r.identical_rows_dropped for r in reports),
            conflicting_rows_dropped=sum(r.conflicting_rows_dropped for r in reports),
            conflicts=tuple(c for r in reports for c in r.conflicts))
        return out


def _parse_pages(pages: list[dict[str, Any]], path: str, settlement_point: str | Iterable[str] | None,
                 settlement_point_type: str | None) -> pd.DataFrame:
    if not any(p.get("data") for p in pages):  # e.g. tomorrow's DAM before it is posted: empty, not partial
        log.info("ERCOT API %s: no rows for this query", path)
        out = empty_price_frame()
        out.attrs = {"source": f"ERCOT API {path}", "duplicates": DuplicateReport(source=f"ERCOT API {path}")}
        return out
    try:
        return parse_ercot_api(pages, settlement_point=settlement_point,
                               settlement_point_type=settlement_point_type, source_name=f"ERCOT API {path}")
    except PriceFileError as exc:
        raise PriceFeedResponseError(str(exc)) from exc


def fetch_generic_prices(url: str, *, settlement_point: str | Iterable[str] | None = None,
                         market: str | None = None, headers: Mapping[str, str] | None = None,
                         params: Mapping[str, Any] | None = None, connect_timeout_s: float = 10.0,
                         read_timeout_s: float = 30.0, retry: RetryPolicy | None = None,
                         sleep: Callable[[float], None] = time.sleep,
                         session: requests.Session | None = None) -> pd.DataFrame:
    """GET a generic JSON price endpoint (see :func:`hashflex.feeds.ercot.parse_generic_json`).

    Parameters
    ----------
    url : str
        The endpoint.
    settlement_point : str or iterable of str, optional
        Label (or filter) the rows by settlement point.
    market : str, optional
        ``RT`` or ``DA``.
    headers, params : Mapping, optional
        Request headers and query parameters.
    connect_timeout_s, read_timeout_s : float
        Timeouts per attempt, seconds.
    retry : RetryPolicy, optional
        How hard to try.
    sleep : callable
        ``sleep(seconds)`` between attempts (tests pass a fake).
    session : requests.Session, optional
        An existing session.

    Returns
    -------
    pd.DataFrame
        The canonical price frame.

    Raises
    ------
    PriceFeedError
        The fetch failed (status, timeout, connection, or a payload that is not the generic shape).
    """
    own = session is None
    sess = session or requests.Session()
    try:
        body = _get_json(sess, url, params=params,
                         headers={"Accept": "application/json", "User-Agent": _USER_AGENT, **(headers or {})},
                         timeout_s=(connect_timeout_s, read_timeout_s), retry=retry or RetryPolicy(), sleep=sleep)
    finally:
        if own:
            sess.close()
    try:
        return parse_generic_json(body, settlement_point=settlement_point, market=market, source_name=url)
    except PriceFileError as exc:
        raise PriceFeedResponseError(str(exc)) from exc
