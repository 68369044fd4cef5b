"""Parsers from ERCOT price reports (and two simple generic shapes) to the canonical price frame.

Why: ``hashflex plan`` and ``backtest`` take prices from whatever the operator has: a monthly
historical sheet exported to CSV, a raw MIS file, a page set from ERCOT's public API, or a
retail provider's JSON. Each parser here is a pure function (no network, no clock) returning the
frame described in :mod:`hashflex.frames`; :func:`read_price_file` sniffs a file's header
and dispatches.

Accepted shapes (columns exactly as ERCOT writes them; see the project's ERCOT FORMATS.md notes):

* ``NP6-905-CD`` RT 15-min SPP file: DeliveryDate, DeliveryHour, DeliveryInterval,
  SettlementPointName, SettlementPointType, SettlementPointPrice, DSTFlag.
* ``NP6-785-ER`` historical RT sheet as CSV: Delivery Date, Delivery Hour, Delivery Interval,
  Repeated Hour Flag, Settlement Point Name, Settlement Point Type, Settlement Point Price
  (thousands commas such as ``"9,048.13"`` are accepted).
* ``NP4-190-CD`` DAM SPP file: DeliveryDate, HourEnding ("01:00".."24:00"), SettlementPoint,
  SettlementPointPrice (leading space tolerated), DSTFlag.
* ``NP4-180-ER`` historical DAM sheet as CSV: Delivery Date, Hour Ending, Repeated Hour Flag,
  Settlement Point, Settlement Point Price.
* ERCOT public API JSON (``fields`` + ``data`` rows, ``_meta.totalPages``) for NP6-905-CD and
  NP4-190-CD: ISO dates, boolean DSTFlag.
* ``simple-csv``: interval_start (ISO 8601 *with* offset), price_usd_mwh, optional
  settlement_point, market, interval_end (else the length is the most common spacing, 15 min
  if there is only one interval).
* ``generic-json``: a list of {interval_start, interval_end?, price_usd_mwh, settlement_point?,
  market?} (or an object holding that list under ``"prices"`` or ``"data"``).

Time: ERCOT days are Central prevailing time with hour-ending hours. RT (hour h, interval i)
covers [day + (h-1) h + (i-1)*15 min, +15 min); DAM hour ending h covers [day + (h-1) h, +1 h), so
"24:00" is the last hour of the day. On the fall-back day hour 2 appears twice and the second
copy has DSTFlag / Repeated Hour Flag = Y (mapped to CST, the first to CDT); on the
spring-forward day hour 3 does not exist and is rejected if present.

Settlement point selection: ``settlement_point`` (a name or names, default all) and, for RT,
``settlement_point_type``. Load zones appear in RT data twice (``LZ`` and energy-weighted
``LZEW``); the output has no type column, so one type per name is chosen: the caller's type if
given, else the only type present, else the first of :data:`PREFERRED_TYPES`; if none of those is
present the parser raises rather than mixing. Rows are filtered *before* values are validated,
so a bad price at an unrelated resource node does not block a load-zone plan.

Duplicates: see :mod:`hashflex.frames` (last row wins, report in
``df.attrs["duplicates"]``). Malformed input raises :class:`PriceFileError` naming the file, the
line (CSV), row (DataFrame) or page/row (API) and the field; a wrong selection (unknown point,
type or market) raises plain ``ValueError``.
"""

from __future__ import annotations

import contextvars
import csv
import io
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hashflex.frames import PriceFileError, finalize_price_frame

__all__ = [
    "CENTRAL_TZ",
    "PREFERRED_TYPES",
    "FORMATS",
    "detect_format",
    "parse_rt_spp_interval",
    "parse_rt_spp_historical",
    "parse_dam_spp",
    "parse_dam_spp_historical",
    "parse_ercot_api",
    "parse_simple_csv",
    "parse_generic_json",
    "read_price_file",
    "parse_sced_lmp",
    "publication_times",
    "DAM_PUBLISHED_LOCAL_HOUR",
]

log = logging.getLogger(__name__)

CENTRAL_TZ = "America/Chicago"
PREFERRED_TYPES: tuple[str, ...] = ("HU", "LZ", "LZ_DC")
_ENERGY_WEIGHTED_TYPES = frozenset({"LZEW", "LZ_DCEW"})
DEFAULT_SETTLEMENT_POINT = "UNSPECIFIED"
DEFAULT_INTERVAL = pd.Timedelta(minutes=15)

TableInput = pd.DataFrame | str | os.PathLike
"""A DataFrame, CSV *text* (``str``), or a path (``pathlib.Path``; ``.zip`` with one CSV is fine)."""


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
_SIMPLE_REQUIRED = ("interval_start", "price_usd_mwh")

FORMATS: dict[str, tuple[str, ...]] = {
    **{f.name: tuple(f.columns.values()) for f in (NP6_905, NP6_785, NP4_190, NP4_180)},
    "simple-csv": _SIMPLE_REQUIRED,
    "ercot-api-json": ("fields", "data", "_meta.totalPages"),
    "generic-json": ("[{interval_start, price_usd_mwh, interval_end?}]",),
}
"""Every shape :func:`read_price_file` accepts, with its required columns/keys."""
_CSV_FORMATS = {f.name: f for f in (NP6_905, NP6_785, NP4_190, NP4_180)}


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
    """NP6-905-CD real-time 15-min settlement point prices (one MIS file or several concatenated)."""
    df, ctx = _load_table(data, source_name)
    return _parse_ercot_table(df, NP6_905, ctx, settlement_point, settlement_point_type)


def parse_rt_spp_historical(data: TableInput, *, settlement_point: str | Iterable[str] | None = None,
                            settlement_point_type: str | None = None, source_name: str | None = None) -> pd.DataFrame:
    """NP6-785-ER historical RT hub/load-zone prices (a monthly sheet saved as CSV)."""
    df, ctx = _load_table(data, source_name)
    return _parse_ercot_table(df, NP6_785, ctx, settlement_point, settlement_point_type)


def parse_dam_spp(data: TableInput, *, settlement_point: str | Iterable[str] | None = None,
                  settlement_point_type: str | None = None, source_name: str | None = None) -> pd.DataFrame:
    """NP4-190-CD day-ahead hourly settlement point prices. DAM files have no type column, so
    ``settlement_point_type`` only rejects energy-weighted types (DAM has none)."""
    df, ctx = _load_table(data, source_name)
    return _parse_ercot_table(df, NP4_190, ctx, settlement_point, settlement_point_type)


def parse_dam_spp_historical(data: TableInput, *, settlement_point: str | Iterable[str] | None = None,
                             settlement_point_type: str | None = None,
                             source_name: str | None = None) -> pd.DataFrame:
    """NP4-180-ER historical DAM hub/load-zone prices (a monthly sheet saved as CSV)."""
    df, ctx = _load_table(data, source_name)
    return _parse_ercot_table(df, NP4_180, ctx, settlement_point, settlement_point_type)


def _json(payload: Any) -> Any:
    return json.loads(payload) if isinstance(payload, (str, bytes)) else payload


def parse_ercot_api(pages: Mapping[str, Any] | Sequence[Mapping[str, Any]] | str, *,
                    settlement_point: str | Iterable[str] | None = None, settlement_point_type: str | None = None,
                    source_name: str = "ERCOT API") -> pd.DataFrame:
    """ERCOT public-API responses (one page, a list of pages, or JSON text) for NP6-905-CD or
    NP4-190-CD. Refuses an incomplete page set when pages carry ``_meta`` (no silent partial data)."""
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
    fmt = API_905 if "deliveryinterval" in lower else API_190 if "hourending" in lower else None
    if fmt is None:
        raise PriceFileError(source_name, f"fields {names} match neither NP6-905-CD nor NP4-190-CD")
    if "settlementpoint" not in lower and "settlementpointname" in lower:
        lower["settlementpoint"] = lower["settlementpointname"]
    df = pd.DataFrame(rows, columns=names, dtype=object)
    df = df.rename(columns={lower[c.lower()]: c for c in fmt.columns.values() if c.lower() in lower})
    ctx = _Ctx(source_name, lambda i: where[i])
    return _parse_ercot_table(df, fmt, ctx, settlement_point, settlement_point_type)


# --------------------------------------------------------------------------------- generic shapes
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
    ``market`` (default ``"RT"``) label the rows; with one, they filter."""
    df, ctx = _load_table(data, source_name)
    return _parse_simple_table(df, ctx, settlement_point, market)


def parse_generic_json(payload: Any, *, settlement_point: str | Iterable[str] | None = None,
                       market: str | None = None, source_name: str = "<json>") -> pd.DataFrame:
    """A price endpoint's JSON (other ISOs, retail providers): a list of objects with
    interval_start, price_usd_mwh and optionally interval_end, settlement_point, market."""
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


# ----------------------------------------------------------------------------------- entry point
def detect_format(text: str, source: str = "<text>") -> str:
    """Name of the shape ``text`` is in (a key of :data:`FORMATS`), judged from its header.

    A header that is most of one format but lacks a column is attributed to that format, so the
    parser can say which column is missing; anything else raises listing what is accepted."""
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
    file, naming its line). Raises :class:`PriceFileError` (a ``ValueError``)."""
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


DAM_PUBLISHED_LOCAL_HOUR = 13
"""ERCOT posts Day-Ahead Market results around 13:00 Central the day before the operating day
(Nodal Protocols §4.5.3, "Communicating DAM Results"; the DAM closes at 10:00)."""


def publication_times(prices: pd.DataFrame) -> pd.Series:
    """When each price of a canonical frame became known, as ERCOT publishes them.

    Real-time settlement point prices: at the end of their interval (posted within minutes of the
    interval's last SCED run; Nodal Protocols §6.3.2). Day-ahead prices: at 13:00 Central
    prevailing time the day before the operating day (:data:`DAM_PUBLISHED_LOCAL_HOUR`).

    Parameters
    ----------
    prices : canonical price frame (``interval_start``, ``interval_end``, ``market`` …), n rows

    Returns
    -------
    pd.Series, n rows, tz-aware UTC, aligned with ``prices``.
    """
    local_day = prices["interval_start"].dt.tz_convert(CENTRAL_TZ).dt.normalize()
    da_time = (local_day - pd.Timedelta(days=1) + pd.Timedelta(hours=DAM_PUBLISHED_LOCAL_HOUR)).dt.tz_convert("UTC")
    return prices["interval_end"].where(prices["market"] == "RT", da_time)
