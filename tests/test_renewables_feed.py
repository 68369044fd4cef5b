"""ERCOT wind/solar hourly reports: real April 2025 postings, DST handling, site scaling."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from hashflex.data import bundled_path
from hashflex.feeds.renewables import (
    RENEWABLE_COLUMNS,
    SCALED_BASIS,
    RenewableFileError,
    parse_renewable_report,
    scale_to_site,
)

CT = "America/Chicago"


def real_file(name: str) -> Path:
    """The bundled copy of a real ERCOT report (shipped in the package with its provenance)."""
    return bundled_path(f"ercot/{name}")


SOLAR_HEADER = "DELIVERY_DATE,HOUR_ENDING,SYSTEM_WIDE_GEN,COP_HSL_SYSTEM_WIDE,STPPF_SYSTEM_WIDE,PVGRPP_SYSTEM_WIDE," \
               "SYSTEM_WIDE_HSL,DSTFlag\n"


def test_real_wind_posting() -> None:
    wind = parse_renewable_report(real_file("wind_gen_apr-2025.csv"))
    assert tuple(wind.columns) == RENEWABLE_COLUMNS
    assert set(wind["region"]) == {"SYSTEM_WIDE", "PANHANDLE", "COASTAL", "SOUTH", "WEST", "NORTH"}
    system = wind[wind["region"] == "SYSTEM_WIDE"]
    assert len(system) == 216
    assert system["interval_start"].diff().dropna().eq(pd.Timedelta(hours=1)).all()
    # first row: 04/08/2025 HE18 = 17:00-18:00 CDT = 22:00 UTC, actual 9850.44, STWPF 11223.5
    first = system.iloc[0]
    assert first["interval_start"] == pd.Timestamp("2025-04-08 22:00", tz="UTC")
    assert (first["actual_mw"], first["forecast_mw"], first["potential_mw"]) == (9850.44, 11223.5, 10306.2)
    # actuals through 04/10 HE17 (ends 22:00 UTC); posted_at inferred one hour later
    assert system.loc[system["actual_mw"].notna(), "interval_end"].max() == pd.Timestamp("2025-04-10 22:00", tz="UTC")
    assert wind.attrs["posted_at_inferred"]
    assert (wind["posted_at"] == pd.Timestamp("2025-04-10 23:00", tz="UTC")).all()


def test_real_solar_posting_is_zero_at_night() -> None:
    solar = parse_renewable_report(real_file("solar_gen_apr-2025.csv"))
    assert solar.attrs["kind"] == "solar" and set(solar["region"]) == {"SYSTEM_WIDE"}
    local_hour = solar["interval_start"].dt.tz_convert(CT).dt.hour
    night = solar[local_hour.isin([0, 1, 2, 3, 4, 22, 23])]
    assert night["forecast_mw"].max() < 50
    assert solar["forecast_mw"].max() > 20_000


def test_scale_to_site_keeps_the_shape_and_says_what_it_is() -> None:
    solar = parse_renewable_report(real_file("solar_gen_apr-2025.csv"))
    site = scale_to_site(solar, 10_000.0, fleet_capacity_mw=30_000.0)
    assert (site["basis"] == SCALED_BASIS).all()
    system = solar[solar["region"] == "SYSTEM_WIDE"].reset_index(drop=True)
    mw = system["actual_mw"].fillna(system["forecast_mw"])
    assert site["power_kw"].to_numpy() == pytest.approx((10_000.0 * mw / 30_000.0).to_numpy())
    forecast_only = scale_to_site(solar, 10_000.0, fleet_capacity_mw=30_000.0, prefer="forecast")
    assert forecast_only["power_kw"].iloc[0] == pytest.approx(10_000 * 24169.2 / 30_000)
    default = scale_to_site(solar, 10_000.0)
    assert default.attrs["fleet_capacity_mw"] == system["cop_hsl_mw"].max()
    assert default["power_kw"].between(0, 10_000).all()


def test_explicit_posted_at_is_used() -> None:
    text = SOLAR_HEADER + "06/01/2024,12,100,100,110,105,120,N\n"
    out = parse_renewable_report(text_frame(text), posted_at=pd.Timestamp("2024-06-01 10:00", tz=CT))
    assert not out.attrs["posted_at_inferred"]
    assert out["posted_at"].iloc[0] == pd.Timestamp("2024-06-01 15:00", tz="UTC")


def text_frame(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


def test_fall_back_repeated_hour() -> None:
    text = SOLAR_HEADER + "".join(
        f"11/03/2024,{he},0,0,{v},0,0,{flag}\n" for he, v, flag in [(1, 1, "N"), (2, 2, "N"), (2, 3, "Y"), (3, 4, "N")]
    )
    out = parse_renewable_report(text_frame(text))
    assert list(out["interval_start"].dt.strftime("%H:%M")) == ["05:00", "06:00", "07:00", "08:00"]
    assert list(out["forecast_mw"]) == [1, 2, 3, 4]


def test_spring_forward_missing_hour() -> None:
    ok = SOLAR_HEADER + "03/10/2024,2,0,0,1,0,0,N\n03/10/2024,4,0,0,2,0,0,N\n"
    out = parse_renewable_report(text_frame(ok))
    assert list(out["interval_start"]) == [pd.Timestamp("2024-03-10 07:00", tz="UTC"),
                                           pd.Timestamp("2024-03-10 08:00", tz="UTC")]
    with pytest.raises(RenewableFileError, match="does not exist"):
        parse_renewable_report(text_frame(SOLAR_HEADER + "03/10/2024,3,0,0,1,0,0,N\n"))


def test_hour_ending_24_and_hh_00_form() -> None:
    out = parse_renewable_report(text_frame(SOLAR_HEADER + "06/01/2024,24:00,0,0,1,0,0,N\n"))
    assert out["interval_start"].iloc[0] == pd.Timestamp("2024-06-02 04:00", tz="UTC")


def test_malformed_inputs_raise_with_location() -> None:
    with pytest.raises(RenewableFileError, match="line 2: STPPF_SYSTEM_WIDE 'abc'"):
        parse_renewable_report(text_frame(SOLAR_HEADER + "06/01/2024,1,0,0,abc,0,0,N\n"))
    with pytest.raises(RenewableFileError, match="HOUR_ENDING"):
        parse_renewable_report(text_frame(SOLAR_HEADER + "06/01/2024,25,0,0,1,0,0,N\n"))
    with pytest.raises(RenewableFileError, match="neither"):
        parse_renewable_report(text_frame("DELIVERY_DATE,HOUR_ENDING,X\n06/01/2024,1,2\n"))
