"""Fuel-mix parser and carbon intensity: the real bundled ERCOT sheet (DST days) and hand checks."""

from __future__ import annotations

import pandas as pd
import pytest

from hashflex.data import bundled_path
from hashflex.feeds.fuelmix import (
    EMISSION_FACTORS,
    FUELMIX_COLUMNS,
    INTENSITY_COLUMNS,
    FuelMixError,
    carbon_intensity,
    parse_fuel_mix,
)

CT = "America/Chicago"


def _labels() -> list[str]:
    """Interval-end labels as ERCOT writes them: 0:15, 0:30, ..., 23:45, 0:00."""
    out = []
    for k in range(1, 97):
        minutes = k * 15
        h, m = divmod(minutes, 60)
        out.append(f"{h % 24}:{m:02d}")
    return out


DST_LABELS = ["01:15 (DST)", "01:30 (DST)", "01:45 (DST)", "02:00 (DST)"]


def _sheet(rows: dict[tuple[str, str], dict[str, float]]) -> pd.DataFrame:
    """A sheet with the real column layout; unspecified cells empty."""
    cols = ["Date", "Fuel", "Settlement Type", "Total", *_labels(), *DST_LABELS]
    records = []
    for (date, fuel), cells in rows.items():
        rec = {c: "" for c in cols}
        rec.update({"Date": date, "Fuel": fuel, "Settlement Type": "FINAL"})
        rec.update({k: str(v) for k, v in cells.items()})
        records.append(rec)
    return pd.DataFrame(records, columns=cols)


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    return parse_fuel_mix(bundled_path("fuelmix/IntGenbyFuel2023-03_11.csv"))


def test_real_file_shape_and_contract(real: pd.DataFrame) -> None:
    assert tuple(real.columns) == FUELMIX_COLUMNS
    assert str(real["interval_start"].dt.tz) == "UTC"
    assert set(real["fuel"]) == {"Biomass", "Coal", "Gas", "Gas-CC", "Hydro", "Nuclear", "Other",
                                 "Solar", "WSL", "Wind"}
    for fuel, grp in real.groupby("fuel"):
        steps = grp["interval_start"].diff().dropna()
        # continuous 15-min UTC series inside each month, no duplicates across DST
        assert set(steps) <= {pd.Timedelta(minutes=15), pd.Timedelta(days=214, minutes=15)}  # Apr 1 .. Nov 1, fuel
    assert (real.loc[real["fuel"] == "WSL", "energy_mwh"] <= 0).all()


def test_real_totals_match_the_sum_of_parsed_intervals(real: pd.DataFrame) -> None:
    raw = pd.read_csv(bundled_path("fuelmix/IntGenbyFuel2023-03_11.csv"))
    local_day = real["interval_start"].dt.tz_convert(CT).dt.strftime("%Y-%m-%d")
    sums = real.groupby([local_day, "fuel"])["energy_mwh"].sum()
    for _, row in raw.sample(40, random_state=1).iterrows():
        assert sums[(row["Date"], row["Fuel"])] == pytest.approx(row["Total"], rel=1e-9)


def test_spring_forward_day_has_92_intervals(real: pd.DataFrame) -> None:
    local = real["interval_start"].dt.tz_convert(CT)
    day = real[(local.dt.strftime("%Y-%m-%d") == "2023-03-12") & (real["fuel"] == "Gas")]
    assert len(day) == 92
    # 01:45 CST = 07:45 UTC is followed directly by 03:00 CDT = 08:00 UTC
    starts = set(day["interval_start"])
    assert pd.Timestamp("2023-03-12 07:45", tz="UTC") in starts
    assert pd.Timestamp("2023-03-12 08:00", tz="UTC") in starts


def test_fall_back_day_has_100_intervals_in_the_right_order(real: pd.DataFrame) -> None:
    local = real["interval_start"].dt.tz_convert(CT)
    day = real[(local.dt.strftime("%Y-%m-%d") == "2023-11-05") & (real["fuel"] == "Wind")]
    assert len(day) == 100
    value = dict(zip(day["interval_start"], day["energy_mwh"], strict=True))
    # plain "1:15" = 01:00 CDT = 06:00 UTC; "01:15 (DST)" = 01:00 CST = 07:00 UTC
    assert value[pd.Timestamp("2023-11-05 06:00", tz="UTC")] == pytest.approx(3217.6, abs=0.1)
    assert value[pd.Timestamp("2023-11-05 07:00", tz="UTC")] == pytest.approx(2841.2, abs=0.1)
    assert value[pd.Timestamp("2023-11-05 08:00", tz="UTC")] == pytest.approx(2385.7, abs=0.1)


def test_midnight_label_is_the_last_interval_of_its_day() -> None:
    frame = parse_fuel_mix(_sheet({("2023-06-01", "Coal"): {"0:00": 7.0, "0:15": 1.0}}))
    assert list(frame["interval_start"]) == [pd.Timestamp("2023-06-01 05:00", tz="UTC"),
                                             pd.Timestamp("2023-06-02 04:45", tz="UTC")]
    assert list(frame["energy_mwh"]) == [1.0, 7.0]


def test_hand_computed_intensity_excludes_storage_charging() -> None:
    sheet = _sheet({
        ("2023-06-01", "Coal"): {"0:15": 100.0},
        ("2023-06-01", "Gas-CC"): {"0:15": 100.0},
        ("2023-06-01", "Wind"): {"0:15": 200.0},
        ("2023-06-01", "WSL"): {"0:15": -50.0},
    })
    out = carbon_intensity(parse_fuel_mix(sheet), freq="15min")
    assert tuple(out.columns) == INTENSITY_COLUMNS
    expected = (100 * 97.5 * 10.5 + 100 * 53.06 * 7.5) / 400.0
    assert out["intensity_kg_per_mwh"].iloc[0] == pytest.approx(expected)
    assert out["generation_mwh"].iloc[0] == 400.0


def test_factors_are_the_documented_products() -> None:
    assert EMISSION_FACTORS["Coal"].kg_per_mwh == pytest.approx(1023.75)
    assert EMISSION_FACTORS["Gas-CC"].kg_per_mwh == pytest.approx(397.95)
    assert EMISSION_FACTORS["Gas"].kg_per_mwh == pytest.approx(583.66)
    assert all(EMISSION_FACTORS[f].kg_per_mwh == 0 for f in ("Wind", "Solar", "Nuclear", "Hydro"))


def test_hourly_intensity_on_dst_days(real: pd.DataFrame) -> None:
    hourly = carbon_intensity(real, freq="1h")
    local_day = hourly["interval_start"].dt.tz_convert(CT).dt.strftime("%Y-%m-%d")
    assert (local_day == "2023-03-12").sum() == 23
    assert (local_day == "2023-11-05").sum() == 25
    assert hourly["intensity_kg_per_mwh"].between(50, 1100).all()
    # energy-weighted mean of the hours equals the month's total emissions / generation
    total = hourly["emissions_kg"].sum() / hourly["generation_mwh"].sum()
    assert 150 < total < 600


def test_incomplete_hours_are_dropped_unless_allowed() -> None:
    sheet = _sheet({("2023-06-01", "Gas"): {"0:15": 10.0, "0:30": 10.0}})
    assert carbon_intensity(parse_fuel_mix(sheet)).empty
    partial = carbon_intensity(parse_fuel_mix(sheet), min_coverage=0.5)
    assert partial["intensity_kg_per_mwh"].iloc[0] == pytest.approx(583.66)


def test_unknown_fuel_raises() -> None:
    with pytest.raises(FuelMixError, match="Unobtanium"):
        carbon_intensity(parse_fuel_mix(_sheet({("2023-06-01", "Unobtanium"): {"0:15": 1.0}})))


def test_dst_columns_on_an_ordinary_day_raise() -> None:
    with pytest.raises(FuelMixError, match="repeated hour"):
        parse_fuel_mix(_sheet({("2023-06-01", "Coal"): {"01:15 (DST)": 1.0}}))


def test_value_in_the_skipped_spring_hour_raises() -> None:
    with pytest.raises(FuelMixError, match="does not exist"):
        parse_fuel_mix(_sheet({("2023-03-12", "Coal"): {"2:30": 1.0}}))


def test_bad_number_names_date_fuel_and_column() -> None:
    with pytest.raises(FuelMixError, match=r"2023-06-01 Coal column 0:30: 'x'"):
        parse_fuel_mix(_sheet({("2023-06-01", "Coal"): {"0:30": "x"}}))


def test_most_final_settlement_type_wins() -> None:
    sheet = pd.concat([
        _sheet({("2023-06-01", "Coal"): {"0:15": 1.0}}).assign(**{"Settlement Type": "INITIAL"}),
        _sheet({("2023-06-01", "Coal"): {"0:15": 2.0}}),
    ], ignore_index=True)
    frame = parse_fuel_mix(sheet)
    assert list(frame["energy_mwh"]) == [2.0]
    assert list(frame["settlement_type"]) == ["FINAL"]
