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

The module is split by seam (issue 11): :mod:`.cells` (loading tables, validating cells, Central
time), :mod:`.reports` (ERCOT's reports and API, SCED LMPs), :mod:`.publication` (when ERCOT
publishes each price), :mod:`.generic` (simple CSV, generic JSON) and :mod:`.files`
(:data:`FORMATS`, :func:`detect_format`, :func:`read_price_file`). Import from
``hashflex.feeds.ercot``: every name is re-exported.
"""

from __future__ import annotations

from hashflex.feeds.ercot.cells import CENTRAL_TZ, DEFAULT_INTERVAL, DEFAULT_SETTLEMENT_POINT, TableInput
from hashflex.feeds.ercot.files import FORMATS, detect_format, read_price_file
from hashflex.feeds.ercot.generic import parse_generic_json, parse_simple_csv
from hashflex.feeds.ercot.publication import DAM_PUBLISHED_LOCAL_HOUR, publication_times
from hashflex.feeds.ercot.reports import (
    NP6_788_COLUMNS,
    PREFERRED_TYPES,
    SCED_MAX_GAP,
    SCED_NOMINAL,
    parse_dam_spp,
    parse_dam_spp_historical,
    parse_ercot_api,
    parse_rt_spp_historical,
    parse_rt_spp_interval,
    parse_sced_lmp,
)

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
    "DEFAULT_INTERVAL",
    "DEFAULT_SETTLEMENT_POINT",
    "NP6_788_COLUMNS",
    "SCED_MAX_GAP",
    "SCED_NOMINAL",
    "TableInput",
]

