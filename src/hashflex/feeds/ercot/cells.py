"""Reading a price table and validating its cells, shared by every price parser: CSV text, files
(``.zip`` with one member) or DataFrames with each row's line number kept; prices, integers,
Y/N flags, dates, ISO 8601 instants, and Central prevailing time to UTC — each bad cell raising a
:class:`~hashflex.frames.PriceFileError` naming the file, line and field.

Seam: shapes of tables and cells, not of any report; the ERCOT reports are :mod:`.reports`, the
generic shapes :mod:`.generic`. Split from ``feeds/ercot.py`` (issue 11).
"""

from __future__ import annotations

import contextvars
import csv
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hashflex.frames import PriceFileError

__all__ = ["CENTRAL_TZ", "DEFAULT_INTERVAL", "DEFAULT_SETTLEMENT_POINT", "TableInput"]

CENTRAL_TZ = "America/Chicago"
DEFAULT_SETTLEMENT_POINT = "UNSPECIFIED"
DEFAULT_INTERVAL = pd.Timedelta(minutes=15)

TableInput = pd.DataFrame | str | os.PathLike
"""A DataFrame, CSV *text* (``str``), or a path (``pathlib.Path``; ``.zip`` with one CSV is fine)."""


class _Ctx:
    """Where rows came from, so errors can say ``file line N: Field reason``."""

    def __init__(self, source: str, locate: Callable[[Any], str]) -> None:
        self.source = source
        self.locate = locate

    def error(self, label: Any, field: str, reason: str) -> PriceFileError:
        return PriceFileError(self.source, reason, location=self.locate(label), field=field)


# ---------------------------------------------------------------------------------------- loading
def _read_text(path: Path) -> str:
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as zf:
            members = [n for n in zf.namelist() if n.lower().endswith((".csv", ".json"))]
            if len(members) != 1:
                raise PriceFileError(path.name, f"zip must hold exactly one .csv/.json file, found {members}")
            return zf.read(members[0]).decode("utf-8-sig")
    return path.read_text(encoding="utf-8-sig")


def _csv_table(text: str, source: str) -> tuple[pd.DataFrame, _Ctx]:
    """Parse CSV text keeping each row's physical line number as the index (for error messages)."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    for row in reader:
        if not row or all(not c.strip() for c in row):
            continue
        if header is None:
            header = [c.strip() for c in row]
            continue
        if len(row) != len(header):
            raise PriceFileError(source, f"has {len(row)} fields, the header has {len(header)}",
                                 location=f"line {reader.line_num}")
        rows.append(row)
        lines.append(reader.line_num)
    if header is None:
        raise PriceFileError(source, "is empty (no header line)")
    df = pd.DataFrame(rows, columns=header, index=pd.Index(lines, dtype="int64"), dtype=object)
    return df, _Ctx(source, lambda n: f"line {n}")


def _load_table(data: TableInput, source_name: str | None) -> tuple[pd.DataFrame, _Ctx]:
    if isinstance(data, pd.DataFrame):
        df = data.reset_index(drop=True)  # positional row numbers for messages; duplicate labels can't confuse
        df.columns = [str(c).strip() for c in df.columns]
        return df, _Ctx(source_name or "<DataFrame>", lambda n: f"row {n}")
    if isinstance(data, os.PathLike):
        path = Path(data)
        return _csv_table(_read_text(path), source_name or path.name)
    if isinstance(data, str):
        return _csv_table(data, source_name or "<text>")
    raise TypeError(f"expected DataFrame, CSV text or Path, got {type(data).__name__}")


def _text(s: pd.Series) -> pd.Series:
    """Column as stripped Python str; missing values become '' so they fail validation by name."""
    return s.astype(object).where(s.notna(), "").map(str).str.strip()


def _names(settlement_point: str | Iterable[str] | None) -> list[str] | None:
    if settlement_point is None:
        return None
    names = [settlement_point] if isinstance(settlement_point, str) else list(settlement_point)
    return [n.strip() for n in names]


def _check_market(fmt_market: str, market: str | None, source: str) -> None:
    if market is not None and market.upper() != fmt_market:
        raise ValueError(f"{source} holds {fmt_market} prices, but market={market!r} was requested")


# ------------------------------------------------------------------------------ value validation
def _first(mask: pd.Series) -> Any:
    return mask.index[int(np.asarray(mask, dtype=bool).argmax())]


_FILE_BOUNDS: contextvars.ContextVar[bool] = contextvars.ContextVar("hashflex_price_file_bounds", default=False)
"""True while :func:`read_price_file` parses: a file's prices are held to the plausibility bounds
row by row and an out-of-bounds row refuses the file with its line (the HTTP feed instead drops
the bad rows and keeps the good ones, ``plausibility.filter_price_frame``)."""


def _parse_price(s: pd.Series, field: str, ctx: _Ctx) -> pd.Series:
    """$/MWh as float; thousands commas allowed, nothing clipped, NaN/inf rejected; when reading a
    file (:data:`_FILE_BOUNDS`), a value outside the plausibility bounds (``hashflex.plausibility``:
    the same table MQTT prices and the HTTP feed are held to) is refused with its line."""
    t = _text(s)
    thousands = t.str.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?")
    t = t.where(~thousands, t.str.replace(",", "", regex=False))
    v = pd.to_numeric(t, errors="coerce").astype("float64")
    bad = ~np.isfinite(v)
    if bad.any():
        label = _first(bad)
        raw = s.loc[label]
        reason = "is empty" if t.loc[label] == "" else f"{raw!r} is not a number"
        if not np.isnan(v.loc[label]):
            reason = f"{raw!r} is not a finite number"
        raise ctx.error(label, field, reason)
    from hashflex.plausibility import PRICE_CEILING_USD_MWH, PRICE_FLOOR_USD_MWH

    outside = (v < PRICE_FLOOR_USD_MWH) | (v > PRICE_CEILING_USD_MWH)
    if _FILE_BOUNDS.get() and outside.any():
        label = _first(outside)
        raise ctx.error(label, field, f"{s.loc[label]!r} $/MWh is outside the plausible range "
                                      f"[{PRICE_FLOOR_USD_MWH:g}, {PRICE_CEILING_USD_MWH:g}] $/MWh (README, input bounds)")
    return v


def _parse_int(s: pd.Series, field: str, lo: int, hi: int, ctx: _Ctx, suffix: str = "") -> pd.Series:
    t = _text(s)
    m = t.str.extract(rf"^(\d{{1,2}}){suffix}$", expand=False)
    v = pd.to_numeric(m, errors="coerce")
    bad = v.isna() | (v < lo) | (v > hi)
    if bad.any():
        label = _first(bad)
        raise ctx.error(label, field, f"{s.loc[label]!r} is not an integer in {lo}..{hi}")
    return v.astype("int64")


def _parse_flag(s: pd.Series, field: str, ctx: _Ctx) -> pd.Series:
    t = _text(s).str.upper().replace({"TRUE": "Y", "FALSE": "N"})
    bad = ~t.isin(["Y", "N"])
    if bad.any():
        label = _first(bad)
        raise ctx.error(label, field, f"{s.loc[label]!r} is not Y or N")
    return t == "Y"


def _parse_day(s: pd.Series, field: str, fmt: str, ctx: _Ctx) -> pd.Series:
    t = _text(s)
    d = pd.to_datetime(t, format=fmt, errors="coerce")
    if d.isna().any():
        label = _first(d.isna())
        raise ctx.error(label, field, f"{s.loc[label]!r} is not a date ({fmt.replace('%', '')})")
    return d


def _central_to_utc(local: pd.Series, repeated: pd.Series, hour_field: str, flag_field: str,
                    ctx: _Ctx) -> pd.Series:
    """Naive Central wall-clock starts -> UTC. ``repeated`` marks the second (CST) copy of the
    fall-back hour; a flag outside that hour, or a start that does not exist (spring-forward
    hour 3), is an error rather than a guess."""
    idx = pd.DatetimeIndex(local)
    n = len(idx)
    as_dst = idx.tz_localize(CENTRAL_TZ, ambiguous=np.ones(n, bool), nonexistent="NaT")
    as_std = idx.tz_localize(CENTRAL_TZ, ambiguous=np.zeros(n, bool), nonexistent="NaT")
    missing = pd.Series(as_dst.isna(), index=local.index)
    if missing.any():
        label = _first(missing)
        raise ctx.error(label, hour_field, f"{local.loc[label]:%Y-%m-%d %H:%M} Central does not exist "
                                           "(spring-forward day has no hour ending 03)")
    ambiguous = pd.Series(np.asarray(as_dst != as_std), index=local.index)
    stray = repeated & ~ambiguous
    if stray.any():
        label = _first(stray)
        raise ctx.error(label, flag_field, f"is Y but {local.loc[label]:%Y-%m-%d %H:%M} Central is not "
                                           "in the repeated fall-back hour")
    utc_dst = pd.Series(as_dst.tz_convert("UTC"), index=local.index)
    utc_std = pd.Series(as_std.tz_convert("UTC"), index=local.index)
    return utc_dst.where(~repeated, utc_std)



def _json(payload: Any) -> Any:
    return json.loads(payload) if isinstance(payload, (str, bytes)) else payload


_OFFSET_RE = r".*[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})"


def _parse_instant(s: pd.Series, field: str, ctx: _Ctx) -> pd.Series:
    t = _text(s)
    if (t == "").any():
        raise ctx.error(_first(t == ""), field, "is empty")
    no_offset = ~t.str.fullmatch(_OFFSET_RE, case=False)
    if no_offset.any():
        label = _first(no_offset)
        raise ctx.error(label, field, f"{s.loc[label]!r} is not an ISO 8601 time with a UTC offset")
    v = pd.to_datetime(t, utc=True, format="ISO8601", errors="coerce")
    if v.isna().any():
        label = _first(v.isna())
        raise ctx.error(label, field, f"{s.loc[label]!r} is not a valid ISO 8601 time")
    return v

