"""ERCOT fuel-mix report → tidy UTC frame → average grid carbon intensity (kg CO2 / MWh).

Why: a site without a carbon-intensity feed still wants its emissions (import × intensity × Δt) to
follow the grid's hour-to-hour mix rather than one static number. ERCOT publishes, per day and fuel,
the energy generated in each 15-minute interval (Fuel Mix Report, ``IntGenbyFuelYYYY.xlsx``, one
sheet per month; a sheet saved as CSV is what :func:`parse_fuel_mix` reads). Pure functions, no I/O
besides reading the given file.

Report shape (see ``hashflex/data/fuelmix/PROVENANCE.md``): ``Date, Fuel, Settlement Type, Total,
0:15 .. 23:45, 0:00, 01:15 (DST) .. 02:00 (DST)``. Interval columns are labelled by their **end** in
Central prevailing time: ``0:15`` is 00:00-00:15 and ``0:00`` is 23:45-24:00 (the day's last
interval, not its first). Values are MWh in that 15 minutes (× 4 = average MW).

DST: on the spring-forward day the columns ``2:15 .. 3:00`` (02:00-03:00 local, which does not exist)
are empty and are dropped; a value there raises. On the fall-back day the plain ``1:15 .. 2:00``
columns are the first, CDT pass through 01:00-02:00 and the ``(DST)`` columns the repeated CST pass
(checked on the real 2023-11-05 file: Wind and Coal run continuously 1:00 → 2:00 → 2:00 (DST) →
2:15 only in that order). ``(DST)`` values on any other day raise.

Intensity is **average** (not marginal) and **direct combustion CO2 only** (no life cycle, no
CH4/N2O, no imports over DC ties), computed as Σ_f MWh_f · EF_f / Σ_f MWh_f over generating fuels.
WSL (storage charging, negative MWh) is load, not generation, and is excluded from both sums;
storage discharge is not separated in the report, so it counts as zero-emission generation.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = [
    "CENTRAL_TZ",
    "EMISSION_FACTORS",
    "EmissionFactor",
    "FUELMIX_COLUMNS",
    "INTENSITY_COLUMNS",
    "FuelMixError",
    "parse_fuel_mix",
    "carbon_intensity",
    "intensity_from_fuel_mix_file",
]

CENTRAL_TZ = "America/Chicago"
INTERVAL = pd.Timedelta(minutes=15)
FUELMIX_COLUMNS: tuple[str, ...] = ("interval_start", "interval_end", "fuel", "energy_mwh", "settlement_type")
INTENSITY_COLUMNS: tuple[str, ...] = (
    "interval_start", "interval_end", "intensity_kg_per_mwh", "generation_mwh", "emissions_kg",
)
EXCLUDED_FUELS = frozenset({"WSL"})  # storage charging: load, not generation
_SETTLEMENT_PREFERENCE = ("FINAL", "TRUE-UP", "TRUEUP", "INITIAL")
_LABEL = re.compile(r"^(\d{1,2}):(\d{2})( \(DST\))?$")


@dataclass(frozen=True)
class EmissionFactor:
    """Direct CO2 per MWh generated: fuel factor (kg CO2/MMBtu) × heat rate (MMBtu/MWh)."""

    fuel_kg_co2_per_mmbtu: float
    heat_rate_mmbtu_per_mwh: float
    basis: str

    @property
    def kg_per_mwh(self) -> float:
        """Direct emissions per MWh generated, kg CO2/MWh (fuel factor × heat rate)."""
        return self.fuel_kg_co2_per_mmbtu * self.heat_rate_mmbtu_per_mwh


# ASSUMPTIONS, stated so a reviewer can change them in one place.
# Fuel factors: US EPA, 40 CFR Part 98 Subpart C, Table C-1 (default CO2 emission factors):
#   natural gas 53.06 kg CO2/MMBtu; sub-bituminous coal 97.17, lignite 97.72 kg CO2/MMBtu (Texas
#   plants burn both, 97.5 is taken between them). Same order as IPCC 2006 Vol. 2 Ch. 2 Table 2.2
#   (natural gas 56,100 kg/TJ = 59.2 kg/MMBtu on a net-calorific basis; EPA's are gross/HHV).
# Heat rates (HHV, MMBtu/MWh net generation) are round, typical US fleet values of the kind the EIA
#   Electric Power Annual reports (average operating heat rates): coal steam ~10.5, natural-gas
#   combined cycle ~7.5, other gas (steam turbines and combustion turbines, ERCOT's "Gas") ~11.0.
#   They are assumptions, not ERCOT unit data. Results: coal ≈ 1,024, Gas-CC ≈ 398, Gas ≈ 584 kg/MWh.
# Zero: nuclear, wind, solar, hydro (no combustion); biomass (biogenic CO2, reported separately under
#   the GHG Protocol; an assumption that a stricter report may replace); "Other" (a small residual,
#   about 0.2 % of energy in the 2023 sample, of mixed and unstated fuels; an assumption).
EMISSION_FACTORS: dict[str, EmissionFactor] = {
    "Coal": EmissionFactor(97.5, 10.5, "EPA 40 CFR 98 Table C-1 coal (sub-bit./lignite) × 10.5 MMBtu/MWh"),
    "Gas-CC": EmissionFactor(53.06, 7.5, "EPA 40 CFR 98 Table C-1 natural gas × 7.5 MMBtu/MWh (combined cycle)"),
    "Gas": EmissionFactor(53.06, 11.0, "EPA 40 CFR 98 Table C-1 natural gas × 11.0 MMBtu/MWh (steam/CT)"),
    "Biomass": EmissionFactor(0.0, 0.0, "biogenic CO2 not counted (assumption)"),
    "Other": EmissionFactor(0.0, 0.0, "unstated small residual, counted as zero (assumption)"),
    "Nuclear": EmissionFactor(0.0, 0.0, "no combustion"),
    "Hydro": EmissionFactor(0.0, 0.0, "no combustion"),
    "Wind": EmissionFactor(0.0, 0.0, "no combustion"),
    "Solar": EmissionFactor(0.0, 0.0, "no combustion"),
}


class FuelMixError(ValueError):
    """Malformed fuel-mix input, naming the source, the date and fuel or column involved."""


def _label_offset(label: str) -> tuple[int, bool] | None:
    """Interval column label → (minutes from local midnight to the interval START, repeated-hour?)."""
    match = _LABEL.match(label.strip())
    if match is None:
        return None
    hour, minute, dst = int(match.group(1)), int(match.group(2)), bool(match.group(3))
    end_min = hour * 60 + minute
    if end_min == 0 and not dst:
        end_min = 24 * 60  # "0:00" ends the day (23:45-24:00)
    return end_min - 15, dst


def _read(data: pd.DataFrame | str | os.PathLike[str], source: str | None) -> tuple[pd.DataFrame, str]:
    if isinstance(data, pd.DataFrame):
        return data.copy(), source or "<DataFrame>"
    path = Path(data)
    return pd.read_csv(path, dtype=str, encoding="utf-8-sig", keep_default_na=False), source or path.name


def parse_fuel_mix(
    data: pd.DataFrame | str | os.PathLike[str], *, source: str | None = None, tz: str = CENTRAL_TZ
) -> pd.DataFrame:
    """Parse a fuel-mix sheet (CSV path or a DataFrame of the sheet) into a tidy UTC frame.

    Returns :data:`FUELMIX_COLUMNS`: interval_start / interval_end (tz-aware UTC, 15 min), fuel,
    energy_mwh (float, MWh in the interval; WSL negative as reported), settlement_type; sorted by
    (interval_start, fuel). Empty cells are dropped (they are the skipped spring-forward hour, or
    unused DST columns). If a (Date, Fuel) appears under several settlement types the most final one
    (FINAL, then TRUE-UP, then INITIAL) is kept. Raises :class:`FuelMixError` on malformed input.

    Parameters
    ----------
    data : DataFrame, str or path
        ERCOT's fuel mix report sheet (Date, Fuel, Settlement Type, one column per 15-minute interval
        labelled ``H:MM``, ``(DST)`` columns for the repeated hour), as a path or a DataFrame.
    source : str, optional
        Name used in error messages (default the file name).
    tz : str
        The sheet's time zone (Central prevailing time).

    Returns
    -------
    pd.DataFrame
        :data:`FUELMIX_COLUMNS`, n rows.

    Raises
    ------
    FuelMixError
        A missing column, a bad date, label or number, or DST columns on a day without a repeated hour.
    """
    df, name = _read(data, source)
    df.columns = [str(c).strip() for c in df.columns]
    for required in ("Date", "Fuel"):
        if required not in df.columns:
            raise FuelMixError(f"{name}: missing column {required!r} (got {list(df.columns)[:6]}...)")
    offsets = {c: _label_offset(c) for c in df.columns}
    value_cols = [c for c, off in offsets.items() if off is not None]
    if len(value_cols) < 96:
        raise FuelMixError(f"{name}: expected 96 interval columns (0:15 .. 0:00), found {len(value_cols)}")
    if "Settlement Type" not in df.columns:
        df["Settlement Type"] = ""
    df["Settlement Type"] = df["Settlement Type"].astype(str).str.strip().str.upper()
    df["Fuel"] = df["Fuel"].astype(str).str.strip()
    rank = {t: i for i, t in enumerate(_SETTLEMENT_PREFERENCE)}
    df["_rank"] = df["Settlement Type"].map(lambda t: rank.get(t, len(rank)))
    df = df.sort_values("_rank", kind="stable").drop_duplicates(["Date", "Fuel"], keep="first")

    long = df.melt(id_vars=["Date", "Fuel", "Settlement Type"], value_vars=value_cols,
                   var_name="label", value_name="raw")
    raw = long["raw"].astype(object).where(long["raw"].notna(), "").map(str).str.strip().str.replace(",", "")
    long = long[raw != ""].copy()
    values = pd.to_numeric(raw[raw != ""], errors="coerce")
    if values.isna().any():
        bad = long[values.isna()].iloc[0]
        raise FuelMixError(f"{name}: {bad['Date']} {bad['Fuel']} column {bad['label']}: "
                           f"{bad['raw']!r} is not a number")
    long["energy_mwh"] = values.astype("float64")
    dates = pd.to_datetime(long["Date"].astype(str).str.strip(), errors="coerce", format="mixed")
    if dates.isna().any():
        raise FuelMixError(f"{name}: unreadable Date {long.loc[dates.isna(), 'Date'].iloc[0]!r}")
    start_min = long["label"].map(lambda c: offsets[c][0])
    repeated = long["label"].map(lambda c: offsets[c][1]).astype(bool)
    naive = dates.dt.normalize() + pd.to_timedelta(start_min, unit="min")
    _check_dst_columns(naive, repeated, long, tz, name)
    # Ambiguous (fall-back) local times: plain columns are the first pass (CDT, is_dst=True),
    # "(DST)" columns the repeated pass (CST, is_dst=False).
    try:
        local = naive.dt.tz_localize(tz, ambiguous=(~repeated).to_numpy(), nonexistent="raise")
    except Exception as exc:  # noqa: BLE001 - pytz/zoneinfo raise different types; name the row
        raise FuelMixError(f"{name}: a value falls in a local time that does not exist ({exc})") from exc
    start = local.dt.tz_convert("UTC").dt.as_unit("us")
    out = pd.DataFrame({
        "interval_start": start.to_numpy(),
        "interval_end": (start + INTERVAL).to_numpy(),
        "fuel": long["Fuel"].to_numpy(),
        "energy_mwh": long["energy_mwh"].to_numpy(),
        "settlement_type": long["Settlement Type"].to_numpy(),
    })
    for col in ("interval_start", "interval_end"):
        out[col] = pd.to_datetime(out[col], utc=True)
    out = out.sort_values(["interval_start", "fuel"], kind="stable").reset_index(drop=True)
    if out.duplicated(["interval_start", "fuel"]).any():
        row = out[out.duplicated(["interval_start", "fuel"])].iloc[0]
        raise FuelMixError(f"{name}: two values for {row['fuel']} at {row['interval_start']}")
    out.attrs["source"] = name
    return out


def _check_dst_columns(naive: pd.Series, repeated: pd.Series, long: pd.DataFrame, tz: str, name: str) -> None:
    """``(DST)`` values are only legal on a fall-back day (when 01:00 local occurs twice)."""
    if not repeated.any():
        return
    days = naive[repeated].dt.normalize().unique()
    for day in days:
        probe = pd.Series([pd.Timestamp(day) + pd.Timedelta(hours=1, minutes=30)])
        ambiguous = probe.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT").isna().iloc[0]
        if not ambiguous:
            fuel = long.loc[repeated & (naive.dt.normalize() == day), "Fuel"].iloc[0]
            raise FuelMixError(f"{name}: {pd.Timestamp(day).date()} {fuel}: values in (DST) columns on a day "
                               f"without a repeated hour")


def carbon_intensity(
    fuel_mix: pd.DataFrame,
    *,
    freq: str = "1h",
    factors: dict[str, EmissionFactor] | None = None,
    min_coverage: float = 1.0,
) -> pd.DataFrame:
    """Average grid intensity per ``freq`` bucket (``"15min"`` or ``"1h"``) from a tidy fuel-mix frame.

    intensity = Σ_f E_f · EF_f / Σ_f E_f over fuels with EF known, E_f > 0 (WSL excluded). A fuel
    not in ``factors`` raises (a new fuel name must be assigned a factor deliberately). Buckets are
    UTC, so DST days need no special case. ``min_coverage``: a bucket is dropped unless it holds at
    least that share of its 15-minute intervals (default: complete buckets only).
    Returns :data:`INTENSITY_COLUMNS`.

    Parameters
    ----------
    fuel_mix : pd.DataFrame
        A :func:`parse_fuel_mix` frame.
    freq : str
        Bucket length, ``"15min"`` or ``"1h"``.
    factors : dict of str to EmissionFactor, optional
        Emission factor per fuel; default :data:`EMISSION_FACTORS`.
    min_coverage : float
        Share of a bucket's 15-minute intervals that must be present (0..1).

    Returns
    -------
    pd.DataFrame
        :data:`INTENSITY_COLUMNS`: interval_start/end (UTC), intensity_kg_per_mwh, generation_mwh,
        emissions_kg.

    Raises
    ------
    FuelMixError
        A fuel without an emission factor.
    """
    factors = EMISSION_FACTORS if factors is None else factors
    gen = fuel_mix[~fuel_mix["fuel"].isin(EXCLUDED_FUELS)]
    unknown = sorted(set(gen["fuel"]) - set(factors))
    if unknown:
        raise FuelMixError(f"no emission factor for fuel(s) {unknown}; add them to the factors")
    energy = gen["energy_mwh"].clip(lower=0.0)
    kg = energy * gen["fuel"].map({f: ef.kg_per_mwh for f, ef in factors.items()}).astype(float)
    bucket = gen["interval_start"].dt.floor(freq)
    grouped = pd.DataFrame({"bucket": bucket, "mwh": energy, "kg": kg, "slot": gen["interval_start"]})
    agg = grouped.groupby("bucket").agg(generation_mwh=("mwh", "sum"), emissions_kg=("kg", "sum"),
                                         slots=("slot", "nunique"))
    width = pd.Timedelta(freq)
    expected = width / INTERVAL
    agg = agg[(agg["slots"] / expected >= min_coverage - 1e-9) & (agg["generation_mwh"] > 0)]
    out = pd.DataFrame({
        "interval_start": agg.index,
        "interval_end": agg.index + width,
        "intensity_kg_per_mwh": (agg["emissions_kg"] / agg["generation_mwh"]).to_numpy(),
        "generation_mwh": agg["generation_mwh"].to_numpy(),
        "emissions_kg": agg["emissions_kg"].to_numpy(),
    }).reset_index(drop=True)
    out["interval_start"] = out["interval_start"].dt.as_unit("us")
    out["interval_end"] = out["interval_end"].dt.as_unit("us")
    return out


def intensity_from_fuel_mix_file(path: str | os.PathLike[str], *, freq: str = "1h") -> pd.DataFrame:
    """Convenience: :func:`parse_fuel_mix` then :func:`carbon_intensity` (e.g. a bundled sheet).

    Parameters
    ----------
    path : str or path
        The fuel mix sheet as CSV.
    freq : str
        Bucket length, ``"15min"`` or ``"1h"``.

    Returns
    -------
    pd.DataFrame
        :data:`INTENSITY_COLUMNS`.

    Raises
    ------
    FuelMixError
        Malformed sheet or a fuel without a factor.
    """
    return carbon_intensity(parse_fuel_mix(path), freq=freq)

