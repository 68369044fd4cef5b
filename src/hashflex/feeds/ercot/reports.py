"""ERCOT's price reports: the NP6-905-CD / NP6-785-ER real-time and NP4-190-CD / NP4-180-ER
day-ahead files, the public API's pages, NP6-788-CD SCED LMPs (when ERCOT publishes each price
is :mod:`.publication`).

Seam: the columns and time conventions of ERCOT's own reports (hour ending, DST flags, settlement
point types); cell validation is :mod:`.cells`. Split from ``feeds/ercot.py`` (issue 11).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hashflex.feeds.ercot.cells import (
    CENTRAL_TZ,
    TableInput,
    _central_to_utc,
    _Ctx,
    _first,
    _json,
    _load_table,
    _names,
    _parse_day,
    _parse_flag,
    _parse_int,
    _parse_price,
    _text,
)
from hashflex.frames import PriceFileError, finalize_price_frame

__all__ = ["PREFERRED_TYPES", "parse_dam_spp", "parse_dam_spp_historical",
           "parse_ercot_api", "parse_rt_spp_historical", "parse_rt_spp_interval", "parse_sced_lmp"]

log = logging.getLogger("hashflex.feeds.ercot")  # the name it logged under before the split

PREFERRED_TYPES: tuple[str, ...] = ("HU", "LZ", "LZ_DC")
_ENERGY_WEIGHTED_TYPES = frozenset({"LZEW", "LZ_DCEW"})


@dataclass(frozen=True)
class _Format:
    name: str
    market: str
    columns: Mapping[str, str]  # internal key -> column name in the file
    date_format: str = "%m/%d/%Y"

    @property
    def has_type(self) -> bool:
        return "type" in self.columns


def _rt(date: str, hour: str, interval: str, flag: str, point: str, typ: str, price: str) -> dict[str, str]:
    return {"date": date, "hour": hour, "interval": interval, "flag": flag, "point": point, "type": typ, "price": price}


def _da(date: str, hour: str, flag: str, point: str, price: str) -> dict[str, str]:
    return {"date": date, "hour": hour, "flag": flag, "point": point, "price": price}


NP6_905 = _Format("NP6-905-CD", "RT", _rt("DeliveryDate", "DeliveryHour", "DeliveryInterval", "DSTFlag",
                                          "SettlementPointName", "SettlementPointType", "SettlementPointPrice"))
NP6_785 = _Format("NP6-785-ER", "RT", _rt("Delivery Date", "Delivery Hour", "Delivery Interval", "Repeated Hour Flag",
                                          "Settlement Point Name", "Settlement Point Type", "Settlement Point Price"))
NP4_190 = _Format("NP4-190-CD", "DA", _da("DeliveryDate", "HourEnding", "DSTFlag", "SettlementPoint",
                                          "SettlementPointPrice"))
NP4_180 = _Format("NP4-180-ER", "DA", _da("Delivery Date", "Hour Ending", "Repeated Hour Flag", "Settlement Point",
                                          "Settlement Point Price"))
API_905 = _Format("NP6-905-CD (API)", "RT", _rt("deliveryDate", "deliveryHour", "deliveryInterval", "DSTFlag",
                                                "settlementPoint", "settlementPointType", "settlementPointPrice"),
                  date_format="%Y-%m-%d")
API_190 = _Format("NP4-190-CD (API)", "DA", _da("deliveryDate", "hourEnding", "DSTFlag", "settlementPoint",
                                                "settlementPointPrice"), date_format="%Y-%m-%d")
_CSV_FORMATS = {f.name: f for f in (NP6_905, NP6_785, NP4_190, NP4_180)}


# ----------------------------------------------------------------------------------- ERCOT tables
def _select(df: pd.DataFrame, fmt: _Format, names: list[str] | None, sp_type: str | None, ctx: _Ctx) -> pd.DataFrame:
    cols = fmt.columns
    point = _text(df[cols["point"]])
    if names is not None:
        missing = sorted(set(names) - set(point))
        if missing:
            avail = sorted(set(point))
            raise ValueError(f"{ctx.source}: settlement point(s) {missing} not found; available "
                             f"({len(avail)}): {avail[:30]}{' ...' if len(avail) > 30 else ''}")
        df, point = df[point.isin(names)], point[point.isin(names)]
    if not fmt.has_type:
        if sp_type is not None and sp_type.upper() in _ENERGY_WEIGHTED_TYPES:
            raise ValueError(f"{ctx.source}: {fmt.name} has no energy-weighted ({sp_type}) prices")
        return df
    typ = _text(df[cols["type"]])
    pairs = pd.DataFrame({"p": point, "t": typ}).drop_duplicates()
    types_by_point = pairs.groupby("p")["t"].agg(lambda t: sorted(set(t)))
    chosen: dict[str, str] = {}
    for name, types in types_by_point.items():
        if sp_type is not None:
            if sp_type not in types:
                if names is None:
                    continue
                raise ValueError(f"{ctx.source}: {name} has no type {sp_type!r}; it has {types}")
            chosen[name] = sp_type
        elif len(types) == 1:
            chosen[name] = types[0]
        else:
            preferred = [t for t in PREFERRED_TYPES if t in types]
            if not preferred:
                raise ValueError(f"{ctx.source}: {name} appears with types {types}; pass settlement_point_type")
            chosen[name] = preferred[0]
            log.info("%s: %s has types %s; using %s", ctx.source, name, types, preferred[0])
    if sp_type is not None and not chosen and len(df):
        raise ValueError(f"{ctx.source}: no rows of settlement point type {sp_type!r}; "
                         f"types present: {sorted(set(typ))}")
    keep = typ == point.map(chosen)
    return df[keep]


def _parse_ercot_table(df: pd.DataFrame, fmt: _Format, ctx: _Ctx, settlement_point: str | Iterable[str] | None,
                       settlement_point_type: str | None) -> pd.DataFrame:
    cols = fmt.columns
    missing = [c for c in cols.values() if c not in df.columns]
    if missing:
        raise PriceFileError(ctx.source, f"column is missing ({fmt.name} needs {list(cols.values())})",
                             field=missing[0])
    df = _select(df, fmt, _names(settlement_point), settlement_point_type, ctx)
    price = _parse_price(df[cols["price"]], cols["price"], ctx)
    day = _parse_day(df[cols["date"]], cols["date"], fmt.date_format, ctx)
    if fmt.market == "RT":
        hour = _parse_int(df[cols["hour"]], cols["hour"], 1, 24, ctx)
        quarter = _parse_int(df[cols["interval"]], cols["interval"], 1, 4, ctx)
        length = pd.Timedelta(minutes=15)
    else:  # "HH:00" hour ending; a bare integer is tolerated (API variants)
        hour = _parse_int(df[cols["hour"]], cols["hour"], 1, 24, ctx, suffix="(?::00)?")
        quarter = pd.Series(1, index=df.index)
        length = pd.Timedelta(hours=1)
    repeated = _parse_flag(df[cols["flag"]], cols["flag"], ctx)
    local = day + pd.to_timedelta((hour - 1) * 60 + (quarter - 1) * 15, unit="min")
    start = _central_to_utc(local, repeated, cols["hour"], cols["flag"], ctx)
    rows = pd.DataFrame({
        "interval_start": start,
        "interval_end": start + length,
        "settlement_point": _text(df[cols["point"]]),
        "market": fmt.market,
        "price_usd_mwh": price,
    })
    return finalize_price_frame(rows, ctx.source)


def parse_rt_spp_interval(data: TableInput, *, settlement_point: str | Iterable[str] | None = None,
                          settlement_point_type: str | None = None, source_name: str | None = None) -> pd.DataFrame:
    """NP6-905-CD real-time 15-min settlement point prices (one MIS file or several concatenated).

    Parameters
    ----------
    data : DataFrame, str or path
        CSV text, a path (``.zip`` with one CSV is fine) or a DataFrame.
    settlement_point : str or iterable of str, optional
        Keep only these points.
    settlement_point_type : str, optional
        The type to keep where a point has several (load zones: ``LZ`` and ``LZEW``).
    source_name : str, optional
        Name used in error messages.

    Returns
    -------
    pd.DataFrame
        The canonical price frame, market ``RT``, 15-minute intervals.

    Raises
    ------
    PriceFileError
        A missing column or bad cell (line and field named), a DST flag outside the repeated hour.
    ValueError
        An unknown settlement point or type.
    """
    df, ctx = _load_table(data, source_name)
    return _parse_ercot_table(df, NP6_905, ctx, settlement_point, settlement_point_type)


def parse_rt_spp_historical(data: TableInput, *, settlement_point: str | Iterable[str] | None = None,
                            settlement_point_type: str | None = None, source_name: str | None = None) -> pd.DataFrame:
    """NP6-785-ER historical RT hub/load-zone prices (a monthly sheet saved as CSV).

    Parameters
    ----------
    data : DataFrame, str or path
        The sheet as CSV text, a path or a DataFrame.
    settlement_point : str or iterable of str, optional
        Keep only these points.
    settlement_point_type : str, optional
        The type to keep where a point has several.
    source_name : str, optional
        Name used in error messages.

    Returns
    -------
    pd.DataFrame
        The canonical price frame, market ``RT``.

    Raises
    ------
    PriceFileError
        A missing column or bad cell, naming the line and field.
    ValueError
        An unknown settlement point or type.
    """
    df, ctx = _load_table(data, source_name)
    return _parse_ercot_table(df, NP6_785, ctx, settlement_point, settlement_point_type)


def parse_dam_spp(data: TableInput, *, settlement_point: str | Iterable[str] | None = None,
                  settlement_point_type: str | None = None, source_name: str | None = None) -> pd.DataFrame:
    """NP4-190-CD day-ahead hourly settlement point prices. DAM files have no type column, so
    ``settlement_point_type`` only rejects energy-weighted types (DAM has none).

    Parameters
    ----------
    data : DataFrame, str or path
        CSV text, a path or a DataFrame.
    settlement_point : str or iterable of str, optional
        Keep only these points.
    settlement_point_type : str, optional
        Only checked: an energy-weighted type raises.
    source_name : str, optional
        Name used in error messages.

    Returns
    -------
    pd.DataFrame
        The canonical price frame, market ``DA``, hourly intervals.

    Raises
    ------
    PriceFileError
        A missing column or bad cell, naming the line and field.
    ValueError
        An unknown settlement point, or an energy-weighted type.
    """
    df, ctx = _load_table(data, source_name)
    return _parse_ercot_table(df, NP4_190, ctx, settlement_point, settlement_point_type)


def parse_dam_spp_historical(data: TableInput, *, settlement_point: str | Iterable[str] | None = None,
                             settlement_point_type: str | None = None,
                             source_name: str | None = None) -> pd.DataFrame:
    """NP4-180-ER historical DAM hub/load-zone prices (a monthly sheet saved as CSV).

    Parameters
    ----------
    data : DataFrame, str or path
        The sheet as CSV text, a path or a DataFrame.
    settlement_point : str or iterable of str, optional
        Keep only these points.
    settlement_point_type : str, optional
        Only checked: an energy-weighted type raises.
    source_name : str, optional
        Name used in error messages.

    Returns
    -------
    pd.DataFrame
        The canonical price frame, market ``DA``.

    Raises
    ------
    PriceFileError
        A missing column or bad cell, naming the line and field.
    ValueError
        An unknown settlement point, or an energy-weighted type.
    """
    df, ctx = _load_table(data, source_name)
    return _parse_ercot_table(df, NP4_180, ctx, settlement_point, settlement_point_type)



def parse_ercot_api(pages: Mapping[str, Any] | Sequence[Mapping[str, Any]] | str, *,
                    settlement_point: str | Iterable[str] | None = None, settlement_point_type: str | None = None,
                    source_name: str = "ERCOT API") -> pd.DataFrame:
    """ERCOT public-API responses (one page, a list of pages, or JSON text) for NP6-905-CD,
    NP4-190-CD or NP6-788-CD (5-minute SCED LMPs, one interval per SCED run, as :func:`parse_sced_lmp`). Refuses an incomplete page set when pages carry ``_meta`` (no silent partial data).

    Parameters
    ----------
    pages : Mapping, sequence of Mapping, or str
        The API's pages (``fields``, ``data``, ``_meta``).
    settlement_point : str or iterable of str, optional
        Keep only these points.
    settlement_point_type : str, optional
        RT: the type to keep where a point has several.
    source_name : str
        Name used in error messages.

    Returns
    -------
    pd.DataFrame
        The canonical price frame (market from the report: ``RT`` or ``DA``).

    Raises
    ------
    PriceFileError
        Not API pages, pages whose fields differ, a bad row (``page P row R``), an incomplete page
        set, or fields matching neither report.
    """
    pages = _json(pages)
    page_list = [pages] if isinstance(pages, Mapping) else list(pages)
    if not page_list:
        raise PriceFileError(source_name, "no pages given")
    names: list[str] | None = None
    rows: list[list[Any]] = []
    where: list[str] = []
    seen_pages: list[int] = []
    total_pages: int | None = None
    for n, page in enumerate(page_list, start=1):
        if not isinstance(page, Mapping) or not isinstance(page.get("fields"), list) \
                or not isinstance(page.get("data"), list):
            raise PriceFileError(source_name, "is not an ERCOT API page (needs 'fields' and 'data' lists)",
                                 location=f"page {n}")
        page_names = [str(f.get("name", "")) if isinstance(f, Mapping) else str(f) for f in page["fields"]]
        if names is None:
            names = page_names
        elif page_names != names:
            raise PriceFileError(source_name, "fields differ from page 1", location=f"page {n}")
        meta = page.get("_meta") or {}
        page_no = meta.get("currentPage", n)
        seen_pages.append(int(page_no))
        if meta.get("totalPages") is not None:
            total_pages = int(meta["totalPages"])
        for r, row in enumerate(page["data"], start=1):
            if not isinstance(row, list) or len(row) != len(names):
                raise PriceFileError(source_name, f"row must be a list of {len(names)} values",
                                     location=f"page {page_no} row {r}")
            rows.append(row)
            where.append(f"page {page_no} row {r}")
    expected_pages = list(range(1, max(total_pages or 0, 1) + 1))  # an empty result is 1 page with 0 pages total
    if total_pages is not None and sorted(seen_pages) != expected_pages:
        raise PriceFileError(source_name, f"incomplete page set: got pages {sorted(seen_pages)} of {total_pages}")
    assert names is not None
    lower = {nm.lower(): nm for nm in names}
    if "scedtimestamp" in lower and "lmp" in lower:  # NP6-788-CD (lmp_node_zone_hub): 5-minute SCED LMPs
        return _parse_api_sced(rows, names, lower, where, settlement_point, source_name)
    fmt = API_905 if "deliveryinterval" in lower else API_190 if "hourending" in lower else None
    if fmt is None:
        raise PriceFileError(source_name, f"fields {names} match none of NP6-905-CD, NP4-190-CD, NP6-788-CD")
    if "settlementpoint" not in lower and "settlementpointname" in lower:
        lower["settlementpoint"] = lower["settlementpointname"]
    df = pd.DataFrame(rows, columns=names, dtype=object)
    df = df.rename(columns={lower[c.lower()]: c for c in fmt.columns.values() if c.lower() in lower})
    ctx = _Ctx(source_name, lambda i: where[i])
    return _parse_ercot_table(df, fmt, ctx, settlement_point, settlement_point_type)



def _parse_api_sced(rows: list[list[Any]], names: list[str], lower: dict[str, str], where: list[str],
                    settlement_point: str | Iterable[str] | None, source_name: str) -> pd.DataFrame:
    """NP6-788-CD API pages (``/np6-788-cd/lmp_node_zone_hub``: fields ``SCEDTimestamp``
    ``yyyy-MM-ddTHH:mm:ss`` Central prevailing time, ``repeatHourFlag`` boolean, ``settlementPoint``,
    ``LMP``) → the report's columns, then :func:`parse_sced_lmp` (one rule for file and API)."""
    for need in ("settlementpoint", "repeathourflag"):
        if need not in lower:
            raise PriceFileError(source_name, f"fields {names}: NP6-788-CD needs {need}")
    df = pd.DataFrame(rows, columns=names, dtype=object)
    stamps = pd.to_datetime(df[lower["scedtimestamp"]].astype(str), format="ISO8601", errors="coerce")
    if stamps.isna().any():
        i = int(np.flatnonzero(stamps.isna())[0])
        raise PriceFileError(source_name, f"{df[lower['scedtimestamp']].iloc[i]!r} is not yyyy-MM-ddTHH:mm:ss",
                             location=where[i], field="SCEDTimestamp")
    if getattr(stamps.dt, "tz", None) is not None:  # the API speaks Central prevailing time without an offset
        raise PriceFileError(source_name, "timestamps carry an offset; the API's are Central prevailing time",
                             field="SCEDTimestamp")
    flags = df[lower["repeathourflag"]]
    mapped = flags.map(lambda v: "Y" if v is True or str(v).strip().lower() in ("true", "y")
                       else "N" if v is False or str(v).strip().lower() in ("false", "n") else None)
    if mapped.isna().any():
        i = int(np.flatnonzero(mapped.isna())[0])
        raise PriceFileError(source_name, f"{flags.iloc[i]!r} is not true or false", location=where[i],
                             field="repeatHourFlag")
    table = pd.DataFrame({"SCEDTimestamp": stamps.dt.strftime("%m/%d/%Y %H:%M:%S"), "RepeatedHourFlag": mapped,
                          "SettlementPoint": df[lower["settlementpoint"]], "LMP": df[lower["lmp"]]})
    return parse_sced_lmp(table, settlement_point=settlement_point, source_name=source_name)


NP6_788_COLUMNS = ("SCEDTimestamp", "RepeatedHourFlag", "SettlementPoint", "LMP")
SCED_NOMINAL = pd.Timedelta(minutes=5)
SCED_MAX_GAP = pd.Timedelta(minutes=15)


def parse_sced_lmp(data: TableInput, *, settlement_point: str | Iterable[str] | None = None,
                   source_name: str | None = None) -> pd.DataFrame:
    """NP6-788-CD "LMPs by Resource Nodes, Load Zones and Trading Hubs" (one row per SCED run and
    settlement point) → the canonical frame, market ``RT``, one interval per SCED run.

    ``SCEDTimestamp`` is Central prevailing time (``MM/DD/YYYY HH:MM:SS``); ``RepeatedHourFlag`` ``Y``
    marks the second (standard-time) pass through the repeated hour in November. SCED runs about
    every 5 minutes and each LMP holds until the next run (Nodal Protocols §6.5.7.3): an interval
    ends at the point's next SCED timestamp, the last one (or one followed by a gap over 15
    minutes) after a nominal 5 minutes — a gap stays a gap (an unknown interval), never stretched.
    The 15-minute settlement point price is the time-weighted mean over these intervals
    (``frames.time_weighted_mean``, §6.6.1); note that an LMP excludes the real-time reserve price
    adders a settlement point price includes, so it is a lower bound in scarcity.

    Raises :class:`PriceFileError` naming the line and field.

    Parameters
    ----------
    data : DataFrame, str or path
        CSV text, a path or a DataFrame with :data:`NP6_788_COLUMNS`.
    settlement_point : str or iterable of str, optional
        Keep only these points.
    source_name : str, optional
        Name used in error messages.

    Returns
    -------
    pd.DataFrame
        The canonical price frame, market ``RT``, one interval per SCED run ($/MWh).

    Raises
    ------
    PriceFileError
        A missing column, a bad flag, timestamp or price, naming the line and field.
    ValueError
        An unknown settlement point.
    """
    df, ctx = _load_table(data, source_name)
    for col in NP6_788_COLUMNS:
        if col not in df.columns:
            raise PriceFileError(ctx.source, f"column is missing (NP6-788-CD needs {list(NP6_788_COLUMNS)})", field=col)
    names = _names(settlement_point)
    point = _text(df["SettlementPoint"])
    if names is not None:
        missing = sorted(set(names) - set(point))
        if missing:
            raise ValueError(f"{ctx.source}: settlement point(s) {missing} not found; available {sorted(set(point))}")
        df, point = df[point.isin(names)], point[point.isin(names)]
    flag = _text(df["RepeatedHourFlag"]).str.upper()
    bad = ~flag.isin(["Y", "N"])
    if bad.any():
        raise ctx.error(_first(bad), "RepeatedHourFlag", f"{df['RepeatedHourFlag'].loc[_first(bad)]!r} is not Y or N")
    naive = pd.to_datetime(_text(df["SCEDTimestamp"]), format="%m/%d/%Y %H:%M:%S", errors="coerce")
    if naive.isna().any():
        label = _first(naive.isna())
        raise ctx.error(label, "SCEDTimestamp", f"{df['SCEDTimestamp'].loc[label]!r} is not MM/DD/YYYY HH:MM:SS")
    local = pd.DatetimeIndex(naive).tz_localize(CENTRAL_TZ, ambiguous=(flag == "N").to_numpy(), nonexistent="NaT")
    if local.isna().any():
        label = df.index[int(np.flatnonzero(local.isna())[0])]
        raise ctx.error(label, "SCEDTimestamp", f"{df['SCEDTimestamp'].loc[label]!r} does not exist in Central time")
    rows = pd.DataFrame({"interval_start": local.tz_convert("UTC"), "settlement_point": point.to_numpy(),
                         "price_usd_mwh": _parse_price(df["LMP"], "LMP", ctx).to_numpy()})
    rows = rows.sort_values(["settlement_point", "interval_start"], kind="stable").reset_index(drop=True)
    following = rows.groupby("settlement_point")["interval_start"].shift(-1)
    gap = following - rows["interval_start"]
    rows["interval_end"] = following.where(gap.notna() & (gap > pd.Timedelta(0)) & (gap <= SCED_MAX_GAP),
                                           rows["interval_start"] + SCED_NOMINAL)
    rows["market"] = "RT"
    return finalize_price_frame(rows, ctx.source)
