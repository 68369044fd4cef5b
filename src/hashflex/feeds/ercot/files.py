"""One entry for an operator's price file: :data:`FORMATS` (every accepted shape),
:func:`detect_format` (judged from the header) and :func:`read_price_file` (sniff, dispatch, hold
the prices to the plausibility bounds).

Seam: choosing a parser for a file; the parsers are :mod:`.reports` and :mod:`.generic`. Split
from ``feeds/ercot.py`` (issue 11).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from hashflex.feeds.ercot.cells import _FILE_BOUNDS, _check_market, _csv_table, _read_text
from hashflex.feeds.ercot.generic import _SIMPLE_REQUIRED, parse_generic_json, parse_simple_csv
from hashflex.feeds.ercot.reports import (
    _CSV_FORMATS,
    NP4_180,
    NP4_190,
    NP6_785,
    NP6_788_COLUMNS,
    NP6_905,
    _parse_ercot_table,
    parse_ercot_api,
    parse_sced_lmp,
)
from hashflex.frames import PriceFileError

__all__ = ["FORMATS", "detect_format", "read_price_file"]

FORMATS: dict[str, tuple[str, ...]] = {
    **{f.name: tuple(f.columns.values()) for f in (NP6_905, NP6_785, NP4_190, NP4_180)},
    "simple-csv": _SIMPLE_REQUIRED,
    "ercot-api-json": ("fields", "data", "_meta.totalPages"),
    "generic-json": ("[{interval_start, price_usd_mwh, interval_end?}]",),
}
"""Every shape :func:`read_price_file` accepts, with its required columns/keys."""


# ----------------------------------------------------------------------------------- entry point
def detect_format(text: str, source: str = "<text>") -> str:
    """Name of the shape ``text`` is in (a key of :data:`FORMATS`), judged from its header.

    A header that is most of one format but lacks a column is attributed to that format, so the
    parser can say which column is missing; anything else raises listing what is accepted.

    Parameters
    ----------
    text : str
        The file's text (CSV or JSON).
    source : str
        Name used in error messages.

    Returns
    -------
    str
        A key of :data:`FORMATS`.

    Raises
    ------
    PriceFileError
        Empty text, invalid JSON, or a header matching no accepted format.
    """
    head = text.lstrip("\ufeff \t\r\n")
    if not head:
        raise PriceFileError(source, "is empty")
    if head[:1] in ("{", "["):
        try:
            obj = json.loads(head)
        except json.JSONDecodeError as exc:
            raise PriceFileError(source, f"is not valid JSON ({exc.msg})", location=f"line {exc.lineno}") from exc
        return "ercot-api-json" if isinstance(obj, Mapping) and "fields" in obj else "generic-json"
    first = next((ln for ln in head.splitlines() if ln.strip()), "")
    header = {c.strip() for c in next(csv.reader([first]), [])}
    scores = {name: len(header & set(cols)) / len(cols) for name, cols in FORMATS.items() if name in _CSV_FORMATS}
    scores["simple-csv"] = len(header & set(_SIMPLE_REQUIRED)) / len(_SIMPLE_REQUIRED)
    best = max(scores.values())
    winners = [n for n, s in scores.items() if s == best]
    if best >= 0.5 and len(winners) == 1:
        return winners[0]
    accepted = "; ".join(f"{n}: {', '.join(c)}" for n, c in FORMATS.items())
    raise PriceFileError(source, f"unknown price format (header {sorted(header)}); accepted formats are {accepted}")


def read_price_file(path: str | os.PathLike, settlement_point: str | Iterable[str] | None = None,
                    settlement_point_type: str | None = None, market: str | None = None) -> pd.DataFrame:
    """Read any accepted price file (see :data:`FORMATS`; ``.zip`` with one member is fine) into the
    canonical frame. This is what ``hashflex plan`` / ``backtest`` / ``run --simulate`` call with an
    operator's file; its prices are held to the plausibility bounds (a row outside them refuses the
    file, naming its line). Raises :class:`PriceFileError` (a ``ValueError``).

    Parameters
    ----------
    path : str or path
        The file (CSV, JSON, or a zip holding one of them).
    settlement_point : str or iterable of str, optional
        Keep only these settlement points (default all); a simple CSV without a settlement point
        column is labelled with the one name given.
    settlement_point_type : str, optional
        RT files: the type to keep where a point has several (``LZ`` or ``LZEW``, ...).
    market : str, optional
        ``RT`` or ``DA``: refuse a file of the other market (simple shapes: label or filter).

    Returns
    -------
    pd.DataFrame
        The canonical price frame (:mod:`hashflex.frames`): UTC interval start/end, settlement
        point, market, price in $/MWh.

    Raises
    ------
    PriceFileError
        Malformed file, naming the file, line (or row, page) and field, or a price outside the
        plausibility bounds.
    ValueError
        A wrong selection (unknown settlement point, type or market).
    """
    token = _FILE_BOUNDS.set(True)
    try:
        return _read_price_file(path, settlement_point, settlement_point_type, market)
    finally:
        _FILE_BOUNDS.reset(token)


def _read_price_file(path: str | os.PathLike, settlement_point: str | Iterable[str] | None = None,
                    settlement_point_type: str | None = None, market: str | None = None) -> pd.DataFrame:
    """Read any accepted price file (see :data:`FORMATS`; ``.zip`` with one member is fine) into the
    canonical frame. This is what ``hashflex plan`` / ``backtest`` call with the operator's file."""
    path = Path(path)
    text = _read_text(path)
    first_line = text.lstrip("\ufeff \t\r\n").split("\n", 1)[0]
    if {c.strip().strip('"') for c in first_line.split(",")} >= set(NP6_788_COLUMNS):
        _check_market("RT", market, path.name)
        return parse_sced_lmp(text, settlement_point=settlement_point, source_name=path.name)
    kind = detect_format(text, path.name)
    if kind in _CSV_FORMATS:
        fmt = _CSV_FORMATS[kind]
        _check_market(fmt.market, market, path.name)
        df, ctx = _csv_table(text, path.name)
        return _parse_ercot_table(df, fmt, ctx, settlement_point, settlement_point_type)
    if kind == "ercot-api-json":
        out = parse_ercot_api(text, settlement_point=settlement_point,
                              settlement_point_type=settlement_point_type, source_name=path.name)
        _check_market(str(out["market"].iloc[0]) if len(out) else (market or "RT"), market, path.name)
        return out
    if kind == "generic-json":
        return parse_generic_json(text, settlement_point=settlement_point, market=market, source_name=path.name)
    return parse_simple_csv(text, settlement_point=settlement_point, market=market, source_name=path.name)

