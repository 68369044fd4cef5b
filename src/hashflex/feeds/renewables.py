"""ERCOT hourly wind (NP4-732-CD) and solar (NP4-737-CD) reports → UTC frames → on-site shapes.

Why: a site with its own PV or wind needs a renewable forecast for the planner; before it has its
own forecast (or when that feed is stale) the shape of ERCOT's system-wide forecast, scaled to the
site's capacity, is a usable prior. It is **not site data**: every scaled frame says so in its
``basis`` column (:data:`SCALED_BASIS`). Pure functions, no network.

Report shape (real files, see the project's ERCOT format notes): ``DELIVERY_DATE`` (MM/DD/YYYY),
``HOUR_ENDING`` (1..24, or "HH:00"), then per region ``SYSTEM_WIDE``/``PANHANDLE``/... the actual
(``SYSTEM_WIDE_GEN``, ``GEN_<REGION>``, empty for future hours), ``COP_HSL_*``, the short-term
forecast (``STWPF_*`` wind, ``STPPF_*`` solar) and the resource power potential (``WGRPP_*`` /
``PVGRPP_*``); ``SYSTEM_WIDE_HSL``; ``DSTFlag``. Values are hourly-average MW. Times: Central
prevailing time, hour ending h covers [h-1, h); on the fall-back day the second HE2 carries
``DSTFlag = Y`` (CST), on the spring-forward day HE3 does not exist (raises if present).

Posting time: one file is one posting (past hours with actuals + the next ~7 days of forecast).
Pass ``posted_at`` when known (the API's ``postedDatetime``). Otherwise it is inferred as the end of
the last hour with an actual **plus one hour**, an upper bound: ERCOT posts each hour's actual
within that next hour, so the backtest may use the forecast up to an hour late but never early.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "CENTRAL_TZ",
    "RENEWABLE_COLUMNS",
    "SCALED_BASIS",
    "RenewableFileError",
    "parse_renewable_report",
    "scale_to_site",
    "as_forecast_rows",
]

CENTRAL_TZ = "America/Chicago"
HOUR = pd.Timedelta(hours=1)
SCALED_BASIS = "scaled ERCOT system-wide shape (not site data)"
RENEWABLE_COLUMNS: tuple[str, ...] = (
    "interval_start", "interval_end", "kind", "region", "actual_mw", "forecast_mw", "potential_mw",
    "cop_hsl_mw", "posted_at",
)
# column prefix per quantity and kind; the region follows ("SYSTEM_WIDE" or "GEN_PANHANDLE" style)
_FORECAST = {"wind": "STWPF", "solar": "STPPF"}
_POTENTIAL = {"wind": "WGRPP", "solar": "PVGRPP"}
_HOUR_RE = re.compile(r"^(\d{1,2})(?::00)?$")


class RenewableFileError(ValueError):
    """Malformed wind/solar report, naming the source, the line and the field."""


def _kind_of(columns: list[str]) -> str:
    if any(c.startswith("STWPF_") for c in columns):
        return "wind"
    if any(c.startswith("STPPF_") for c in columns):
        return "solar"
    raise RenewableFileError(f"neither STWPF_* (wind) nor STPPF_* (solar) columns in {columns[:8]}")


def _regions(columns: list[str], kind: str) -> list[str]:
    prefix = _FORECAST[kind] + "_"
    return [c[len(prefix):] for c in columns if c.startswith(prefix)]


def _actual_column(region: str) -> str:
    return "SYSTEM_WIDE_GEN" if region == "SYSTEM_WIDE" else f"GEN_{region}"


def _numbers(frame: pd.DataFrame, column: str, name: str) -> np.ndarray:
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    text = frame[column].astype(object).where(frame[column].notna(), "").map(str).str.strip().str.replace(",", "")
    values = pd.to_numeric(text.where(text != "", None), errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        line = int(bad.to_numpy().argmax()) + 2
        raise RenewableFileError(f"{name} line {line}: {column} {text[bad].iloc[0]!r} is not a number")
    return values.to_numpy(dtype="float64")


def _local_starts(frame: pd.DataFrame, name: str, tz: str) -> pd.Series:
    dates = pd.to_datetime(frame["DELIVERY_DATE"].astype(str).str.strip(), format="%m/%d/%Y", errors="coerce")
    if dates.isna().any():
        line = int(dates.isna().to_numpy().argmax()) + 2
        raise RenewableFileError(f"{name} line {line}: DELIVERY_DATE {frame['DELIVERY_DATE'].iloc[line - 2]!r}")
    hours = frame["HOUR_ENDING"].astype(str).str.strip().str.extract(_HOUR_RE)[0]
    hour_num = pd.to_numeric(hours, errors="coerce")
    if hour_num.isna().any() or not hour_num.between(1, 24).all():
        line = int((hour_num.isna() | ~hour_num.between(1, 24)).to_numpy().argmax()) + 2
        raise RenewableFileError(f"{name} line {line}: HOUR_ENDING {frame['HOUR_ENDING'].iloc[line - 2]!r}")
    flag = (frame["DSTFlag"].astype(str).str.strip().str.upper() if "DSTFlag" in frame.columns
            else pd.Series("N", index=frame.index))
    repeated = flag.isin(["Y", "TRUE"]).to_numpy()
    naive = dates + pd.to_timedelta(hour_num - 1, unit="h")
    try:
        local = naive.dt.tz_localize(tz, ambiguous=~repeated, nonexistent="raise")
    except Exception as exc:  # noqa: BLE001 - one message whatever the tz backend raises
        raise RenewableFileError(f"{name}: an hour that does not exist in {tz} ({exc})") from exc
    return local.dt.tz_convert("UTC").dt.as_unit("us")


def parse_renewable_report(
    data: pd.DataFrame | str | os.PathLike[str],
    *,
    posted_at: pd.Timestamp | None = None,
    source: str | None = None,
    tz: str = CENTRAL_TZ,
) -> pd.DataFrame:
    """Parse one NP4-732-CD (wind) or NP4-737-CD (solar) posting into a tidy UTC frame.

    Returns :data:`RENEWABLE_COLUMNS`, one row per (hour, region), sorted; ``actual_mw`` is NaN for
    hours not yet measured. ``posted_at`` is the caller's value or the inferred upper bound (see the
    module docstring); ``attrs["posted_at_inferred"]`` says which. Kind is sniffed from the header.

    Parameters
    ----------
    data : DataFrame, str or path
        One posting (CSV path or the sheet as a DataFrame).
    posted_at : pd.Timestamp, optional
        When ERCOT posted it, if known.
    source : str, optional
        Name used in error messages.
    tz : str
        The report's time zone (Central prevailing time).

    Returns
    -------
    pd.DataFrame
        :data:`RENEWABLE_COLUMNS`, MW.

    Raises
    ------
    RenewableFileError
        Naming the source, the line and the field.
    """
    if isinstance(data, pd.DataFrame):
        frame, name = data.copy(), source or "<DataFrame>"
    else:
        path = Path(data)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        name = source or path.name
    frame.columns = [str(c).strip() for c in frame.columns]
    for required in ("DELIVERY_DATE", "HOUR_ENDING"):
        if required not in frame.columns:
            raise RenewableFileError(f"{name}: missing column {required}")
    kind = _kind_of(list(frame.columns))
    start = _local_starts(frame, name, tz)
    if start.duplicated().any():
        raise RenewableFileError(f"{name}: hour {start[start.duplicated()].iloc[0]} appears twice")
    parts = []
    for region in _regions(list(frame.columns), kind):
        parts.append(pd.DataFrame({
            "interval_start": start.to_numpy(),
            "region": region,
            "actual_mw": _numbers(frame, _actual_column(region), name),
            "forecast_mw": _numbers(frame, f"{_FORECAST[kind]}_{region}", name),
            "potential_mw": _numbers(frame, f"{_POTENTIAL[kind]}_{region}", name),
            "cop_hsl_mw": _numbers(frame, f"COP_HSL_{region}", name),
        }))
    out = pd.concat(parts, ignore_index=True)
    out["interval_start"] = pd.to_datetime(out["interval_start"], utc=True).dt.as_unit("us")
    out.insert(1, "interval_end", out["interval_start"] + HOUR)
    out.insert(2, "kind", kind)
    inferred = posted_at is None
    if inferred:
        measured = out.loc[out["actual_mw"].notna(), "interval_end"]
        posted = (measured.max() + HOUR) if len(measured) else out["interval_start"].min()
    else:
        posted = pd.Timestamp(posted_at)
        if posted.tzinfo is None:
            raise ValueError("posted_at must be tz-aware")
        posted = posted.tz_convert("UTC")
    out["posted_at"] = pd.Series(posted, index=out.index).dt.as_unit("us")
    out = out.sort_values(["interval_start", "region"], kind="stable").reset_index(drop=True)
    out = out.loc[:, list(RENEWABLE_COLUMNS)]
    out.attrs.update(source=name, kind=kind, posted_at_inferred=inferred)
    return out


def scale_to_site(
    report: pd.DataFrame,
    capacity_kw: float,
    *,
    fleet_capacity_mw: float | None = None,
    region: str = "SYSTEM_WIDE",
    prefer: str = "actual",
) -> pd.DataFrame:
    """Turn system-wide MW into an on-site kW profile: ``capacity_kw × MW / fleet_capacity_mw``.

    ``prefer="actual"`` uses measured MW where present and the forecast elsewhere (a history
    followed by a forecast); ``prefer="forecast"`` uses the forecast only. ``fleet_capacity_mw``
    should be the fleet's installed capacity; when omitted, the largest ``cop_hsl_mw`` in the frame
    (the most the fleet declared it could sustain in the window) is used, which makes the scaled
    profile reach about the site's capacity at the window's best hour, an optimistic shape to be
    replaced by site data as soon as there is any. Returns interval_start, interval_end,
    power_kw (>= 0), posted_at, basis (= :data:`SCALED_BASIS`).

    Parameters
    ----------
    report : pd.DataFrame
        A :func:`parse_renewable_report` frame.
    capacity_kw : float
        The site's installed capacity of that kind, kW.
    fleet_capacity_mw : float, optional
        ERCOT's installed capacity of the region, MW.
    region : str
        The report region to scale.
    prefer : str
        ``"actual"`` or ``"forecast"``.

    Returns
    -------
    pd.DataFrame
        One row per hour, power in kW clipped to [0, ``capacity_kw``].

    Raises
    ------
    ValueError
        An unknown region or ``prefer`` value, or no positive capacity to scale by.
    """
    if prefer not in ("actual", "forecast"):
        raise ValueError(f"prefer must be 'actual' or 'forecast', got {prefer!r}")
    rows = report[report["region"] == region]
    if rows.empty:
        raise ValueError(f"region {region!r} not in the report (have {sorted(report['region'].unique())})")
    reference = fleet_capacity_mw if fleet_capacity_mw is not None else float(rows["cop_hsl_mw"].max())
    if not np.isfinite(reference) or reference <= 0:
        raise ValueError("fleet capacity must be a positive number of MW")
    mw = rows["forecast_mw"]
    if prefer == "actual":
        mw = rows["actual_mw"].where(rows["actual_mw"].notna(), rows["forecast_mw"])
    power_kw = (capacity_kw * mw / reference).clip(lower=0.0, upper=capacity_kw)
    out = pd.DataFrame({
        "interval_start": rows["interval_start"].to_numpy(),
        "interval_end": rows["interval_end"].to_numpy(),
        "power_kw": power_kw.to_numpy(dtype="float64"),
        "posted_at": rows["posted_at"].to_numpy(),
        "basis": SCALED_BASIS,
    })
    out = out[np.isfinite(out["power_kw"])].reset_index(drop=True)
    out.attrs.update(fleet_capacity_mw=reference, region=region)
    return out


def as_forecast_rows(scaled: pd.DataFrame, source_id: str) -> pd.DataFrame:
    """A :func:`scale_to_site` frame as ``forecast.Snapshot.renewable_forecasts`` rows for one source
    (``source_id, interval_start, power_kw, published_at``; the posting time becomes published_at).

    Parameters
    ----------
    scaled : pd.DataFrame
        A :func:`scale_to_site` frame.
    source_id : str
        The profile's renewable source id.

    Returns
    -------
    pd.DataFrame
    """
    return pd.DataFrame({
        "source_id": source_id,
        "interval_start": scaled["interval_start"].to_numpy(),
        "power_kw": scaled["power_kw"].to_numpy(dtype="float64"),
        "published_at": scaled["posted_at"].to_numpy(),
    }).astype({"interval_start": "datetime64[us, UTC]", "published_at": "datetime64[us, UTC]"})
