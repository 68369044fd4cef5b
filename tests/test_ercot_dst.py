"""Daylight-saving days in ERCOT files: 2020-11-01 (fall back, hour 2 twice) and 2021-03-14
(spring forward, no hour 3), for RT (both file shapes and the API) and DAM ("24:00" included)."""

from __future__ import annotations

import pandas as pd
import pytest

from hashflex.frames import PriceFileError
from hashflex.feeds.ercot import (
    parse_dam_spp,
    parse_dam_spp_historical,
    parse_ercot_api,
    parse_rt_spp_historical,
    parse_rt_spp_interval,
)
from test_ercot_contract import assert_price_contract

FALL = "11/01/2020"
SPRING = "03/14/2021"


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def rt_hours(day: str) -> list[tuple[int, bool]]:
    """(hour ending, repeated?) in the order ERCOT publishes them for ``day``."""
    if day == FALL:
        return [(1, False), (2, False), (2, True)] + [(h, False) for h in range(3, 25)]
    if day == SPRING:
        return [(h, False) for h in range(1, 25) if h != 3]
    return [(h, False) for h in range(1, 25)]


def rt_905(day: str) -> str:
    """NP6-905-CD rows for LZ_WEST (LZ and LZEW); LZ price = 100*hour + interval (+50 if repeated)."""
    out = ["DeliveryDate,DeliveryHour,DeliveryInterval,SettlementPointName,SettlementPointType,"
           "SettlementPointPrice,DSTFlag"]
    for h, rep in rt_hours(day):
        for i in range(1, 5):
            p = 100 * h + i + (50 if rep else 0)
            out.append(f"{day},{h},{i},LZ_WEST,LZ,{p},{'Y' if rep else 'N'}")
            out.append(f"{day},{h},{i},LZ_WEST,LZEW,{p + 0.5},{'Y' if rep else 'N'}")
    return "\n".join(out) + "\n"


def rt_785(day: str) -> str:
    out = ["Delivery Date,Delivery Hour,Delivery Interval,Repeated Hour Flag,Settlement Point Name,"
           "Settlement Point Type,Settlement Point Price"]
    for h, rep in rt_hours(day):
        for i in range(1, 5):
            out.append(f"{day},{h},{i},{'Y' if rep else 'N'},HB_NORTH,HU,\"{1000 * h + i + (50 if rep else 0):,}\"")
    return "\n".join(out) + "\n"


def dam_190(day: str) -> str:
    out = ["DeliveryDate,HourEnding,SettlementPoint,SettlementPointPrice,DSTFlag"]
    for h, rep in rt_hours(day):
        out.append(f"{day},{h:02d}:00,HB_NORTH, {h + (0.5 if rep else 0)},{'Y' if rep else 'N'}")
    return "\n".join(out) + "\n"


def dam_180(day: str) -> str:
    out = ["Delivery Date,Hour Ending,Repeated Hour Flag,Settlement Point,Settlement Point Price"]
    for h, rep in rt_hours(day):
        out.append(f"{day},{h:02d}:00,{'Y' if rep else 'N'},LZ_WEST,{h + (0.5 if rep else 0)}")
    return "\n".join(out) + "\n"


def assert_contiguous(df: pd.DataFrame, step: pd.Timedelta, first: str, end: str) -> None:
    assert (df["interval_end"] - df["interval_start"] == step).all()
    assert (df["interval_start"].iloc[1:].to_numpy() == df["interval_end"].iloc[:-1].to_numpy()).all()
    assert df["interval_start"].iloc[0] == ts(first)
    assert df["interval_end"].iloc[-1] == ts(end)


# --------------------------------------------------------------------------------------- fall back
@pytest.mark.parametrize("parse, text", [(parse_rt_spp_interval, rt_905(FALL)),
                                         (parse_rt_spp_historical, rt_785(FALL))],
                         ids=["NP6-905-CD", "NP6-785-ER"])
def test_rt_fall_back_day_has_100_distinct_intervals(parse, text: str) -> None:
    df = parse(text)
    assert_price_contract(df)
    assert len(df) == 100 and not df.attrs["duplicates"]
    # 00:00 CDT = 05:00 UTC .. 24:00 CST = 06:00 UTC next day: 25 hours
    assert_contiguous(df, pd.Timedelta(minutes=15), "2020-11-01 05:00", "2020-11-02 06:00")
    by_start = dict(zip(df["interval_start"], df["price_usd_mwh"]))
    scale = 100 if parse is parse_rt_spp_interval else 1000
    assert by_start[ts("2020-11-01 06:00")] == scale * 2 + 1        # HE2 i1, first copy (CDT)
    assert by_start[ts("2020-11-01 07:00")] == scale * 2 + 1 + 50   # HE2 i1, DSTFlag Y (CST)
    assert by_start[ts("2020-11-01 07:45")] == scale * 2 + 4 + 50
    assert by_start[ts("2020-11-01 08:00")] == scale * 3 + 1        # HE3 i1 = 02:00 CST


def test_rt_fall_back_lz_chosen_not_lzew() -> None:
    df = parse_rt_spp_interval(rt_905(FALL), settlement_point="LZ_WEST")
    assert (df["price_usd_mwh"] % 1 == 0).all()  # LZEW prices end in .5
    ew = parse_rt_spp_interval(rt_905(FALL), settlement_point_type="LZEW")
    assert (ew["price_usd_mwh"] % 1 == 0.5).all() and len(ew) == 100


@pytest.mark.parametrize("parse, text", [(parse_dam_spp, dam_190(FALL)), (parse_dam_spp_historical, dam_180(FALL))],
                         ids=["NP4-190-CD", "NP4-180-ER"])
def test_dam_fall_back_day_has_25_hours_and_24_00_is_last(parse, text: str) -> None:
    df = parse(text)
    assert_price_contract(df)
    assert len(df) == 25
    assert_contiguous(df, pd.Timedelta(hours=1), "2020-11-01 05:00", "2020-11-02 06:00")
    prices = dict(zip(df["interval_start"], df["price_usd_mwh"]))
    assert prices[ts("2020-11-01 06:00")] == 2.0   # HE 02:00 N (01:00 CDT)
    assert prices[ts("2020-11-01 07:00")] == 2.5   # HE 02:00 Y (01:00 CST)
    assert prices[ts("2020-11-02 05:00")] == 24.0  # HE 24:00 = 23:00 CST


def test_api_fall_back_with_boolean_dst_flag() -> None:
    rows = [["2020-11-01", "02:00", "HB_NORTH", 20.0, False], ["2020-11-01", "02:00", "HB_NORTH", 21.0, True]]
    page = {"_meta": {"totalPages": 1, "currentPage": 1},
            "fields": [{"name": n} for n in ("deliveryDate", "hourEnding", "settlementPoint",
                                             "settlementPointPrice", "DSTFlag")],
            "data": rows}
    df = parse_ercot_api(page)
    assert_price_contract(df)
    assert df["interval_start"].tolist() == [ts("2020-11-01 06:00"), ts("2020-11-01 07:00")]
    assert df["price_usd_mwh"].tolist() == [20.0, 21.0]


def test_unflagged_repeat_is_reported_as_conflict_not_silently_mixed() -> None:
    text = rt_905(FALL).replace(",Y\n", ",N\n")  # a file that lost its DST flags
    df = parse_rt_spp_interval(text, settlement_point="LZ_WEST")
    assert_price_contract(df)
    rep = df.attrs["duplicates"]
    assert len(df) == 96 and rep.conflicting_rows_dropped == 4 and len(rep.conflicts) == 4
    assert rep.conflicts[0].prices_usd_mwh == (201.0, 251.0) and rep.conflicts[0].kept_price_usd_mwh == 251.0


def test_repeated_flag_outside_fall_back_hour_is_an_error() -> None:
    text = rt_785("04/10/2025").replace("04/10/2025,5,1,N", "04/10/2025,5,1,Y")
    with pytest.raises(PriceFileError, match=r"line 18: Repeated Hour Flag is Y but 2025-04-10 04:00 Central is not in "
                                             "the repeated fall-back hour"):
        parse_rt_spp_historical(text)


# ---------------------------------------------------------------------------------- spring forward
@pytest.mark.parametrize("parse, text", [(parse_rt_spp_interval, rt_905(SPRING)),
                                         (parse_rt_spp_historical, rt_785(SPRING))],
                         ids=["NP6-905-CD", "NP6-785-ER"])
def test_rt_spring_forward_day_has_92_intervals(parse, text: str) -> None:
    df = parse(text)
    assert_price_contract(df)
    assert len(df) == 92
    # 00:00 CST = 06:00 UTC .. 24:00 CDT = 05:00 UTC next day: 23 hours
    assert_contiguous(df, pd.Timedelta(minutes=15), "2021-03-14 06:00", "2021-03-15 05:00")
    by_start = dict(zip(df["interval_start"], df["price_usd_mwh"]))
    scale = 100 if parse is parse_rt_spp_interval else 1000
    assert by_start[ts("2021-03-14 07:45")] == scale * 2 + 4  # HE2 i4 = 01:45 CST
    assert by_start[ts("2021-03-14 08:00")] == scale * 4 + 1  # HE4 i1 = 03:00 CDT


@pytest.mark.parametrize("parse, text", [(parse_dam_spp, dam_190(SPRING)), (parse_dam_spp_historical, dam_180(SPRING))],
                         ids=["NP4-190-CD", "NP4-180-ER"])
def test_dam_spring_forward_day_has_23_hours(parse, text: str) -> None:
    df = parse(text)
    assert_price_contract(df)
    assert len(df) == 23
    assert_contiguous(df, pd.Timedelta(hours=1), "2021-03-14 06:00", "2021-03-15 05:00")
    assert df["price_usd_mwh"].iloc[-1] == 24.0 and df["interval_start"].iloc[-1] == ts("2021-03-15 04:00")
    assert 3.0 not in set(df["price_usd_mwh"])


def test_hour_3_on_spring_forward_day_is_rejected() -> None:
    text = dam_190(SPRING).replace("03/14/2021,04:00", "03/14/2021,03:00", 1)
    with pytest.raises(PriceFileError, match=r"line 4: HourEnding 2021-03-14 02:00 Central does not exist"):
        parse_dam_spp(text)
    rt = rt_785(SPRING) + "03/14/2021,3,2,N,HB_NORTH,HU,1\n"
    with pytest.raises(PriceFileError, match=r"line 94: Delivery Hour 2021-03-14 02:15 Central does not exist"):
        parse_rt_spp_historical(rt)


def test_ordinary_days_around_the_switch_have_24_hours() -> None:
    before, after = parse_dam_spp(dam_190("10/31/2020")), parse_dam_spp(dam_190("11/02/2020"))
    assert_contiguous(before, pd.Timedelta(hours=1), "2020-10-31 05:00", "2020-11-01 05:00")  # CDT
    assert_contiguous(after, pd.Timedelta(hours=1), "2020-11-02 06:00", "2020-11-03 06:00")   # CST
