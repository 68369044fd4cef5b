"""ERCOT report parsers on the real bundled files, crafted edge cases and malformed input."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashflex.data import bundled_path
from hashflex.frames import PriceFileError
from hashflex.feeds.ercot import (
    FORMATS,
    detect_format,
    parse_dam_spp,
    parse_ercot_api,
    parse_generic_json,
    parse_rt_spp_historical,
    parse_rt_spp_interval,
    parse_simple_csv,
    read_price_file,
)
from test_ercot_contract import assert_price_contract

UTC = "UTC"
RT_HIST_HEADER = ("Delivery Date,Delivery Hour,Delivery Interval,Repeated Hour Flag,Settlement Point Name,"
                  "Settlement Point Type,Settlement Point Price\n")
RT_905_HEADER = ("DeliveryDate,DeliveryHour,DeliveryInterval,SettlementPointName,SettlementPointType,"
                 "SettlementPointPrice,DSTFlag\n")


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz=UTC)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------- real files
def test_rtm_2020_02_lz_west_is_29_days_of_96_lz_intervals() -> None:
    df = read_price_file(bundled_path("RTM-2020-02.csv"), settlement_point="LZ_WEST")
    assert_price_contract(df)
    assert len(df) == 29 * 96
    assert set(df["settlement_point"]) == {"LZ_WEST"} and set(df["market"]) == {"RT"}
    assert df["interval_start"].iloc[0] == ts("2020-02-01 06:00")  # midnight CST
    assert df["interval_end"].iloc[-1] == ts("2020-03-01 06:00")
    assert (df["interval_start"].diff().dropna() == pd.Timedelta(minutes=15)).all()
    assert (df["interval_end"] - df["interval_start"] == pd.Timedelta(minutes=15)).all()
    # last row of the file: 02/29/2020 HE24 interval 4, LZ -1.96 (negative, kept)
    assert df["price_usd_mwh"].iloc[-1] == -1.96
    assert df.attrs["source"] == "RTM-2020-02.csv" and not df.attrs["duplicates"]


def test_rtm_2021_02_hb_north_uri_prices_not_clipped() -> None:
    df = read_price_file(bundled_path("RTM-2021-02.csv"), settlement_point="HB_NORTH")
    assert_price_contract(df)
    assert len(df) == 28 * 96
    assert df["price_usd_mwh"].max() == 9315.45
    assert (df["price_usd_mwh"] > 5000).sum() > 10
    assert df["price_usd_mwh"].min() < 0
    # "02/16/2021,19,1,N,HB_NORTH,HU,"9,048.13"" -> 18:00 CST = 00:00 UTC next day
    row = df[df["interval_start"] == ts("2021-02-17 00:00")]
    assert row["price_usd_mwh"].tolist() == [9048.13]


def test_rt_load_zone_type_default_lz_and_lzew_on_request() -> None:
    path = bundled_path("RTM-2021-02.csv")
    at = ts("2021-02-17 00:00")
    lz = read_price_file(path, settlement_point="LZ_WEST")
    ew = read_price_file(path, settlement_point="LZ_WEST", settlement_point_type="LZEW")
    assert lz.loc[lz["interval_start"] == at, "price_usd_mwh"].tolist() == [9079.31]
    assert ew.loc[ew["interval_start"] == at, "price_usd_mwh"].tolist() == [9093.82]
    assert len(lz) == len(ew) == 28 * 96


def test_rt_whole_file_one_row_per_point_and_interval() -> None:
    df = read_price_file(bundled_path("RTM-2020-02.csv"))
    assert_price_contract(df)
    assert df["settlement_point"].nunique() == 15  # 7 hubs + 8 zones, LZEW folded away, never mixed
    assert len(df) == 15 * 29 * 96


def test_dam_2021_02_hourly_with_thousands_commas() -> None:
    df = read_price_file(bundled_path("DAM-2021-02.csv"), settlement_point="HB_NORTH", market="DA")
    assert_price_contract(df)
    assert len(df) == 28 * 24 and set(df["market"]) == {"DA"}
    assert df["price_usd_mwh"].max() == 8998.99
    assert (df["interval_end"] - df["interval_start"] == pd.Timedelta(hours=1)).all()
    # "02/16/2021,19:00,N,HB_NORTH,"6,483.57"" -> HE19 = 18:00-19:00 CST
    assert df.loc[df["interval_start"] == ts("2021-02-17 00:00"), "price_usd_mwh"].tolist() == [6483.57]


def test_dam_2020_02_hour_ending_24_is_last_hour_of_day() -> None:
    df = read_price_file(bundled_path("DAM-2020-02.csv"), settlement_point="LZ_WEST")
    assert_price_contract(df)
    assert len(df) == 29 * 24
    last = df.iloc[-1]  # 02/29/2020,24:00,N,LZ_WEST,10.51
    assert (last["interval_start"], last["interval_end"]) == (ts("2020-03-01 05:00"), ts("2020-03-01 06:00"))
    assert last["price_usd_mwh"] == 10.51


def test_np6_905_raw_interval_file() -> None:
    path = bundled_path("np6-905-cd_2025-04-10_he19_int2.csv")
    df = read_price_file(path, settlement_point=["HB_NORTH", "LZ_WEST"])
    assert_price_contract(df)
    # HE19 interval 2 = 18:15-18:30 CDT = 23:15-23:30 UTC
    assert set(df["interval_start"]) == {ts("2025-04-10 23:15")}
    assert set(df["interval_end"]) == {ts("2025-04-10 23:30")}
    assert dict(zip(df["settlement_point"], df["price_usd_mwh"])) == {"HB_NORTH": 37.76, "LZ_WEST": 35.59}
    ew = parse_rt_spp_interval(path, settlement_point="LZ_WEST", settlement_point_type="LZEW")
    assert ew["price_usd_mwh"].tolist() == [35.6]


def test_np4_190_raw_dam_file_with_leading_spaces() -> None:
    df = read_price_file(bundled_path("np4-190-cd_2025-04-11.csv"))
    assert_price_contract(df)
    assert df["settlement_point"].nunique() == 988 and len(df) == 988 * 24
    north = df[df["settlement_point"] == "HB_NORTH"]
    assert north["interval_start"].iloc[0] == ts("2025-04-11 05:00")  # HE1 = 00:00 CDT
    assert north["price_usd_mwh"].iloc[:2].tolist() == [30.04, 25.08]


def test_dataframe_input_matches_file_input() -> None:
    path = bundled_path("RTM-2020-02.csv")
    from_file = parse_rt_spp_historical(path, settlement_point="HB_HOUSTON")
    from_df = parse_rt_spp_historical(pd.read_csv(path, dtype=str), settlement_point="HB_HOUSTON")
    pd.testing.assert_frame_equal(from_file, from_df)


def test_zip_with_one_csv(tmp_path: Path) -> None:
    zpath = tmp_path / "cdr.00012301.SPPHLZNP6905_20250410_1830.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(bundled_path("np6-905-cd_2025-04-10_he19_int2.csv"), "SPPHLZNP6905_20250410_1830.csv")
    df = read_price_file(zpath, settlement_point="HB_NORTH")
    assert df["price_usd_mwh"].tolist() == [37.76]


# ------------------------------------------------------------------------------ selection errors
def test_unknown_settlement_point_lists_available() -> None:
    with pytest.raises(ValueError, match=r"LZ_WST.*not found.*LZ_WEST"):
        read_price_file(bundled_path("DAM-2020-02.csv"), settlement_point="LZ_WST")


def test_market_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="holds DA prices"):
        read_price_file(bundled_path("DAM-2020-02.csv"), market="RT")


def test_point_with_two_unpreferred_types_is_not_mixed() -> None:
    text = RT_905_HEADER + "04/10/2025,19,2,X_RN,RN,1.0,N\n04/10/2025,19,2,X_RN,PCCRN,2.0,N\n"
    with pytest.raises(ValueError, match="pass settlement_point_type"):
        parse_rt_spp_interval(text)
    assert parse_rt_spp_interval(text, settlement_point_type="PCCRN")["price_usd_mwh"].tolist() == [2.0]


def test_requested_type_missing_for_point() -> None:
    with pytest.raises(ValueError, match="HB_NORTH has no type 'LZ'"):
        read_price_file(bundled_path("np6-905-cd_2025-04-10_he19_int2.csv"),
                        settlement_point="HB_NORTH", settlement_point_type="LZ")


def test_dam_has_no_energy_weighted_type() -> None:
    with pytest.raises(ValueError, match="energy-weighted"):
        parse_dam_spp(bundled_path("np4-190-cd_2025-04-11.csv"), settlement_point_type="LZEW")


# -------------------------------------------------------------------------------- malformed input
def test_bad_number_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "RTM-2020-02.csv", RT_HIST_HEADER + "02/01/2020,1,1,N,LZ_WEST,LZ,11.66\n"
                 "02/01/2020,1,2,N,LZ_WEST,LZ,abc\n")
    with pytest.raises(PriceFileError) as exc:
        read_price_file(path)
    assert str(exc.value) == "RTM-2020-02.csv line 3: Settlement Point Price 'abc' is not a number"
    assert (exc.value.source, exc.value.location, exc.value.field) == ("RTM-2020-02.csv", "line 3",
                                                                       "Settlement Point Price")


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ("02/01/2020,25,1,N,LZ_WEST,LZ,1", "Delivery Hour", "'25' is not an integer in 1..24"),
        ("02/01/2020,1,5,N,LZ_WEST,LZ,1", "Delivery Interval", "'5' is not an integer in 1..4"),
        ("02/01/2020,1,1,X,LZ_WEST,LZ,1", "Repeated Hour Flag", "'X' is not Y or N"),
        ("2020-02-01,1,1,N,LZ_WEST,LZ,1", "Delivery Date", "'2020-02-01' is not a date"),
        ("02/01/2020,1,1,N,LZ_WEST,LZ,", "Settlement Point Price", "is empty"),
        ("02/01/2020,1,1,N,LZ_WEST,LZ,inf", "Settlement Point Price", "'inf' is not a finite number"),
        ("02/01/2020,1,1,N,LZ_WEST,LZ,\"1,2,3\"", "Settlement Point Price", "'1,2,3' is not a number"),
    ],
)
def test_bad_values_name_the_field(row: str, field: str, reason: str) -> None:
    with pytest.raises(PriceFileError, match=f"line 2: {field} {reason}"):
        parse_rt_spp_historical(RT_HIST_HEADER + row + "\n", source_name="m.csv")


def test_missing_column_is_named(tmp_path: Path) -> None:
    header = RT_HIST_HEADER.replace(",Settlement Point Price", "")
    path = write(tmp_path, "rt.csv", header + "02/01/2020,1,1,N,LZ_WEST,LZ\n")
    with pytest.raises(PriceFileError, match="rt.csv: Settlement Point Price column is missing"):
        read_price_file(path)


def test_unknown_format_lists_accepted_formats(tmp_path: Path) -> None:
    path = write(tmp_path, "weird.csv", "time,cost\n2021-01-01,3\n")
    with pytest.raises(PriceFileError) as exc:
        read_price_file(path)
    msg = str(exc.value)
    assert msg.startswith("weird.csv: unknown price format")
    for name in FORMATS:
        assert name in msg


def test_short_row_empty_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match="line 2: has 6 fields, the header has 7"):
        parse_rt_spp_historical(RT_HIST_HEADER + "02/01/2020,1,1,N,LZ_WEST,LZ\n")
    with pytest.raises(PriceFileError, match="empty.csv: is empty"):
        read_price_file(write(tmp_path, "empty.csv", "\n"))
    with pytest.raises(PriceFileError, match="bad.json line 1: is not valid JSON"):
        read_price_file(write(tmp_path, "bad.json", '{"fields": ['))


# ------------------------------------------------------------------------------------ duplicates
def test_identical_duplicates_dropped_conflicts_keep_last_and_are_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    text = RT_905_HEADER + (
        "04/10/2025,19,2,HB_NORTH,HU,37.76,N\n"
        "04/10/2025,19,2,HB_NORTH,HU,37.76,N\n"   # identical repeat
        "04/10/2025,19,3,HB_NORTH,HU,40.00,N\n"
        "04/10/2025,19,3,HB_NORTH,HU,41.50,N\n"   # retry file supersedes
    )
    with caplog.at_level("WARNING"):
        df = parse_rt_spp_interval(text, source_name="concat.csv")
    assert_price_contract(df)
    assert df["price_usd_mwh"].tolist() == [37.76, 41.50]
    rep = df.attrs["duplicates"]
    assert (rep.identical_rows_dropped, rep.conflicting_rows_dropped) == (1, 1)
    assert [(c.interval_start, c.prices_usd_mwh, c.kept_price_usd_mwh) for c in rep.conflicts] == [
        (ts("2025-04-10 23:30"), (40.0, 41.5), 41.5)]
    assert "concat.csv" in caplog.text and "conflicting" in caplog.text


# ------------------------------------------------------------------------------------ ERCOT API
def _api_page(rows: list[list], fields: list[str], page: int, total: int) -> dict:
    return {
        "_meta": {"totalRecords": 3, "pageSize": 2, "totalPages": total, "currentPage": page},
        "report": {"reportEMIL": "NP6-905-CD"},
        "fields": [{"name": f, "label": f, "dataType": "VARCHAR"} for f in fields],
        "data": rows,
        "_links": {},
    }


RT_API_FIELDS = ["deliveryDate", "deliveryHour", "deliveryInterval", "settlementPoint", "settlementPointType",
                 "settlementPointPrice", "DSTFlag"]
RT_API_PAGES = [
    _api_page([["2025-04-10", 19, 2, "HB_NORTH", "HU", 37.76, False],
               ["2025-04-10", 19, 2, "LZ_WEST", "LZEW", 35.6, False]], RT_API_FIELDS, 1, 2),
    _api_page([["2025-04-10", 19, 2, "LZ_WEST", "LZ", 35.59, False]], RT_API_FIELDS, 2, 2),
]


def test_api_rt_pages() -> None:
    df = parse_ercot_api(RT_API_PAGES)
    assert_price_contract(df)
    assert dict(zip(df["settlement_point"], df["price_usd_mwh"])) == {"HB_NORTH": 37.76, "LZ_WEST": 35.59}
    assert set(df["interval_start"]) == {ts("2025-04-10 23:15")}


def test_api_dam_page_from_json_file(tmp_path: Path) -> None:
    fields = ["deliveryDate", "hourEnding", "settlementPoint", "settlementPointPrice", "DSTFlag"]
    page = _api_page([["2025-04-11", "01:00", "HB_NORTH", 30.04, False],
                      ["2025-04-11", "24:00", "HB_NORTH", 28.5, False]], fields, 1, 1)
    path = write(tmp_path, "dam.json", json.dumps(page))
    assert detect_format(path.read_text()) == "ercot-api-json"
    df = read_price_file(path, market="DA")
    assert_price_contract(df)
    assert df["interval_start"].tolist() == [ts("2025-04-11 05:00"), ts("2025-04-12 04:00")]
    assert df["market"].tolist() == ["DA", "DA"]


def test_api_incomplete_pages_and_bad_rows_refused() -> None:
    with pytest.raises(PriceFileError, match=r"incomplete page set: got pages \[1\] of 2"):
        parse_ercot_api(RT_API_PAGES[:1])
    bad = _api_page([["2025-04-10", 19, 2, "HB_NORTH", "HU", 37.76]], RT_API_FIELDS, 1, 1)
    with pytest.raises(PriceFileError, match="page 1 row 1: row must be a list of 7 values"):
        parse_ercot_api(bad)
    bad = _api_page([["2025-04-10", 19, 2, "HB_NORTH", "HU", "n/a", False]], RT_API_FIELDS, 1, 1)
    with pytest.raises(PriceFileError, match="ERCOT API page 1 row 1: settlementPointPrice 'n/a' is not a number"):
        parse_ercot_api(bad)


# --------------------------------------------------------------------------- simple CSV and JSON
def test_simple_csv_infers_15_min_and_labels(tmp_path: Path) -> None:
    path = write(tmp_path, "prices.csv", "interval_start,price_usd_mwh\n"
                 "2025-04-10T18:00:00-05:00,20.5\n2025-04-10T18:15:00-05:00,-3\n2025-04-10T23:45:00Z,6000\n")
    df = read_price_file(path, settlement_point="LZ_WEST")
    assert_price_contract(df)
    assert df["interval_start"].tolist() == [ts("2025-04-10 23:00"), ts("2025-04-10 23:15"), ts("2025-04-10 23:45")]
    assert (df["interval_end"] - df["interval_start"] == pd.Timedelta(minutes=15)).all()
    assert df["price_usd_mwh"].tolist() == [20.5, -3.0, 6000.0]
    assert set(df["settlement_point"]) == {"LZ_WEST"} and set(df["market"]) == {"RT"}


def test_simple_csv_hourly_spacing_and_columns() -> None:
    text = ("interval_start,price_usd_mwh,settlement_point,market\n"
            "2025-01-01T00:00:00+00:00,10,A,DA\n2025-01-01T01:00:00+00:00,11,A,DA\n"
            "2025-01-01T03:00:00+00:00,12,A,DA\n2025-01-01T00:00:00+00:00,99,B,DA\n")
    df = parse_simple_csv(text, settlement_point="A")
    assert (df["interval_end"] - df["interval_start"] == pd.Timedelta(hours=1)).all()
    assert df["settlement_point"].tolist() == ["A"] * 3 and set(df["market"]) == {"DA"}
    single = parse_simple_csv(text, settlement_point="B")
    assert single["interval_end"].tolist() == [ts("2025-01-01 00:15")]  # one interval: default 15 min


def test_simple_csv_market_column_filters_and_bad_values_are_named() -> None:
    text = ("interval_start,price_usd_mwh,market\n"
            "2025-01-01T00:00:00Z,10,RT\n2025-01-01T00:00:00Z,20,da\n")
    assert parse_simple_csv(text, market="DA")["price_usd_mwh"].tolist() == [20.0]
    assert parse_simple_csv(text)["market"].tolist() == ["DA", "RT"]  # sorted by point then market
    with pytest.raises(ValueError, match="market must be 'RT' or 'DA'"):
        parse_simple_csv(text, market="ID")
    with pytest.raises(PriceFileError, match="line 3: market 'X' is not RT or DA"):
        parse_simple_csv(text.replace(",da", ",X"))
    with pytest.raises(ValueError, match=r"\['Z'\] not found"):
        parse_simple_csv("interval_start,price_usd_mwh,settlement_point\n2025-01-01T00:00Z,1,A\n",
                         settlement_point=["A", "Z"])


def test_simple_csv_requires_offset_and_end_after_start() -> None:
    with pytest.raises(PriceFileError, match="line 2: interval_start '2025-01-01 00:00' is not an ISO 8601 "
                                             "time with a UTC offset"):
        parse_simple_csv("interval_start,price_usd_mwh\n2025-01-01 00:00,1\n")
    with pytest.raises(PriceFileError, match="line 2: interval_end is not after interval_start"):
        parse_simple_csv("interval_start,interval_end,price_usd_mwh\n"
                         "2025-01-01T00:00Z,2025-01-01T00:00Z,1\n")
    with pytest.raises(PriceFileError, match="price_usd_mwh column is missing"):
        parse_simple_csv("interval_start,price\n2025-01-01T00:00Z,1\n")


def test_generic_json_list_and_wrapped(tmp_path: Path) -> None:
    items = [{"interval_start": "2025-04-10T00:00:00+02:00", "interval_end": "2025-04-10T01:00:00+02:00",
              "price_usd_mwh": 55.2},
             {"interval_start": "2025-04-10T01:00:00+02:00", "interval_end": "2025-04-10T02:00:00+02:00",
              "price_usd_mwh": -1}]
    df = read_price_file(write(tmp_path, "p.json", json.dumps(items)), settlement_point="NL", market="DA")
    assert_price_contract(df)
    assert df["interval_start"].tolist() == [ts("2025-04-09 22:00"), ts("2025-04-09 23:00")]
    assert df["price_usd_mwh"].tolist() == [55.2, -1.0]
    wrapped = parse_generic_json({"prices": items}, settlement_point="NL", market="DA")
    pd.testing.assert_frame_equal(df, wrapped)
    with pytest.raises(PriceFileError, match="item 1: price_usd_mwh is empty"):
        parse_generic_json([items[0], {"interval_start": items[1]["interval_start"], "price_usd_mwh": None}])


def test_detect_format_for_each_ercot_header() -> None:
    assert detect_format(bundled_path("RTM-2020-02.csv").read_text()) == "NP6-785-ER"
    assert detect_format(bundled_path("DAM-2020-02.csv").read_text()) == "NP4-180-ER"
    assert detect_format(bundled_path("np6-905-cd_2025-04-10_he19_int2.csv").read_text()) == "NP6-905-CD"
    assert detect_format(bundled_path("np4-190-cd_2025-04-11.csv").read_text()) == "NP4-190-CD"
    assert detect_format("interval_start,price_usd_mwh\n") == "simple-csv"
    assert detect_format('[{"interval_start": "x"}]') == "generic-json"


# ------------------------------------------------------------------------------------- property
# Every price the plausibility bounds admit ([-251, 20,000] $/MWh; outside them a file is refused,
# tested in test_time_series_boundaries.py).
prices = st.decimals(min_value=-251, max_value=20_000, places=2, allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None)
@given(st.lists(prices, min_size=1, max_size=96))
def test_prices_round_trip_exactly_with_thousands_commas(values: list) -> None:
    lines = []
    for n, v in enumerate(values):
        hour, quarter = n // 4 + 1, n % 4 + 1
        lines.append(f'07/04/2022,{hour},{quarter},N,HB_WEST,HU,"{v:,.2f}"')
    df = parse_rt_spp_historical(RT_HIST_HEADER + "\n".join(lines) + "\n")
    assert_price_contract(df)
    assert df["price_usd_mwh"].tolist() == [float(v) for v in values]
    assert df["interval_start"].iloc[0] == ts("2022-07-04 05:00")  # CDT


# ---------------------------------------------------------------------------------- bundled data
def test_bundled_path_by_name_and_relative_path() -> None:
    assert bundled_path("RTM-2020-02.csv") == bundled_path("ercot/RTM-2020-02.csv")
    assert bundled_path("RTM-2020-02.csv").is_file()
    with pytest.raises(FileNotFoundError, match=r"no bundled data file 'RTM-1999-02.csv'.*ercot/DAM-2020-02.csv"):
        bundled_path("RTM-1999-02.csv")


def test_provenance_lists_every_bundled_file_with_its_hash() -> None:
    import hashlib

    folder = bundled_path("ercot/PROVENANCE.md").parent
    provenance = (folder / "PROVENANCE.md").read_text()
    csvs = sorted(folder.glob("*.csv"))
    assert len(csvs) == 9  # six price files, wind and solar reports, the May 2024 DA/AS clearing prices
    for path in csvs:
        assert f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}" in provenance
