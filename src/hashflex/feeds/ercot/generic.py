"""The two generic price shapes any operator or price endpoint can write: ``simple-csv``
(interval_start with offset, price_usd_mwh, optional settlement_point, market, interval_end) and
``generic-json`` (a list of such objects).

Seam: shapes that are not ERCOT reports (other ISOs, retail providers, hand-made files); cell
validation is :mod:`.cells`. Split from ``feeds/ercot.py`` (issue 11).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from hashflex.feeds.ercot.cells import (
    DEFAULT_INTERVAL,
    DEFAULT_SETTLEMENT_POINT,
    TableInput,
    _Ctx,
    _first,
    _json,
    _load_table,
    _names,
    _parse_instant,
    _parse_price,
    _text,
)
from hashflex.frames import PriceFileError, finalize_price_frame

__all__ = ["parse_generic_json", "parse_simple_csv"]

_SIMPLE_REQUIRED = ("interval_start", "price_usd_mwh")


def _infer_interval_end(start: pd.Series, point: pd.Series, market: pd.Series) -> pd.Series:
    """End = start + the most common spacing of that point/market's starts (default 15 min)."""
    end = pd.Series(pd.NaT, index=start.index, dtype=start.dtype)
    for _, grp in start.groupby([point, market]):
        uniq = grp.drop_duplicates().sort_values()
        steps = uniq.diff().dropna()
        length = steps.mode().iloc[0] if len(steps) else DEFAULT_INTERVAL
        end.loc[grp.index] = grp + length
    return end


def _parse_simple_table(df: pd.DataFrame, ctx: _Ctx, settlement_point: str | Iterable[str] | None,
                        market: str | None) -> pd.DataFrame:
    for col in _SIMPLE_REQUIRED:
        if col not in df.columns:
            raise PriceFileError(ctx.source, f"column is missing (simple format needs {list(_SIMPLE_REQUIRED)})",
                                 field=col)
    if market is not None and market.upper() not in ("RT", "DA"):
        raise ValueError(f"market must be 'RT' or 'DA', got {market!r}")
    names = _names(settlement_point)
    notes: list[str] = []
    if "settlement_point" in df.columns:
        point = _text(df["settlement_point"])
        if (point == "").any():
            raise ctx.error(_first(point == ""), "settlement_point", "is empty")
        if names is not None:
            missing = sorted(set(names) - set(point))
            if missing:
                raise ValueError(f"{ctx.source}: settlement point(s) {missing} not found; available {sorted(set(point))}")
            df, point = df[point.isin(names)], point[point.isin(names)]
    else:
        if names is not None and len(names) != 1:
            raise ValueError(f"{ctx.source} has no settlement_point column; give one name, not {names}")
        point = pd.Series(names[0] if names else DEFAULT_SETTLEMENT_POINT, index=df.index, dtype=object)
        notes.append(f"{ctx.source} has no settlement_point column: its prices are taken as "
                     f"{names[0] if names else DEFAULT_SETTLEMENT_POINT}")
    if "market" in df.columns:
        mk = _text(df["market"]).str.upper()
        bad = ~mk.isin(["RT", "DA"])
        if bad.any():
            raise ctx.error(_first(bad), "market", f"{df['market'].loc[_first(bad)]!r} is not RT or DA")
        if market is not None:
            keep = mk == market.upper()
            df, point, mk = df[keep], point[keep], mk[keep]
    else:
        mk = pd.Series((market or "RT").upper(), index=df.index, dtype=object)
        notes.append(f"{ctx.source} has no market column: its prices are taken as {(market or 'RT').upper()}")
    start = _parse_instant(df["interval_start"], "interval_start", ctx)
    end = _infer_interval_end(start, point, mk)
    if "interval_end" in df.columns:  # given ends win; blanks (e.g. JSON items without one) are inferred
        given = _text(df["interval_end"]) != ""
        end[given] = _parse_instant(df.loc[given, "interval_end"], "interval_end", ctx)
        bad = ~(end > start)
        if bad.any():
            raise ctx.error(_first(bad), "interval_end", "is not after interval_start")
    rows = pd.DataFrame({"interval_start": start, "interval_end": end, "settlement_point": point,
                         "market": mk, "price_usd_mwh": _parse_price(df["price_usd_mwh"], "price_usd_mwh", ctx)})
    out = finalize_price_frame(rows, ctx.source)
    out.attrs["notes"] = notes  # said by the commands that read the file (plan, backtest, simulate)
    return out


def parse_simple_csv(data: TableInput, *, settlement_point: str | Iterable[str] | None = None,
                     market: str | None = None, source_name: str | None = None) -> pd.DataFrame:
    """A plain CSV any operator can write: interval_start (with offset), price_usd_mwh [, ...].

    Without a settlement_point/market column, ``settlement_point`` (default ``"UNSPECIFIED"``) and
    ``market`` (default ``"RT"``) label the rows; with one, they filter.

    Parameters
    ----------
    data : DataFrame, str or path
        CSV text, a path, or a DataFrame of the table.
    settlement_point : str or iterable of str, optional
        Label (one name) or filter.
    market : str, optional
        ``RT`` or ``DA``: label or filter.
    source_name : str, optional
        Name used in error messages.

    Returns
    -------
    pd.DataFrame
        The canonical price frame; ``attrs["notes"]`` says what was assumed (point, market).

    Raises
    ------
    PriceFileError
        A missing column or a bad cell, naming the line and field.
    ValueError
        A wrong selection.
    """
    df, ctx = _load_table(data, source_name)
    return _parse_simple_table(df, ctx, settlement_point, market)


def parse_generic_json(payload: Any, *, settlement_point: str | Iterable[str] | None = None,
                       market: str | None = None, source_name: str = "<json>") -> pd.DataFrame:
    """A price endpoint's JSON (other ISOs, retail providers): a list of objects with
    interval_start, price_usd_mwh and optionally interval_end, settlement_point, market.

    Parameters
    ----------
    payload : Any
        JSON text or decoded JSON: the list, or an object holding it under ``"prices"`` or ``"data"``.
    settlement_point : str or iterable of str, optional
        Label (one name) or filter.
    market : str, optional
        ``RT`` or ``DA``: label or filter.
    source_name : str
        Name used in error messages.

    Returns
    -------
    pd.DataFrame
        The canonical price frame.

    Raises
    ------
    PriceFileError
        Not a list of price objects, or a bad item (named ``item N``).
    """
    payload = _json(payload)
    if isinstance(payload, Mapping):
        inner = next((payload[k] for k in ("prices", "data") if isinstance(payload.get(k), list)), None)
        if inner is None:
            raise PriceFileError(source_name, "JSON object has no 'prices' or 'data' list")
        payload = inner
    if not isinstance(payload, list) or not all(isinstance(p, Mapping) for p in payload):
        raise PriceFileError(source_name, "must be a list of price objects")
    df = pd.DataFrame(list(payload), dtype=object)
    if not len(df):
        df = pd.DataFrame(columns=list(_SIMPLE_REQUIRED), dtype=object)
    return _parse_simple_table(df, _Ctx(source_name, lambda i: f"item {i}"), settlement_point, market)


