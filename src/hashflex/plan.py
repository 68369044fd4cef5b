"""One planning pass (`hashflex plan`): profile + price file → Schedule, summary and output file.

Reading and writing live here at the edges; the problem assembly and the solve are the same
pure functions the daemon uses, and so is the deadline: the solve runs in a worker
(:class:`~hashflex.control.solver.SolveRunner`) killed at ``deadline_s`` (default the time limit +
10 s), after which the greedy fallback is returned with status ``failed_fallback`` (HiGHS can
overrun its own time limit by minutes). Output files are written to a temporary file in the target
directory and renamed, so a failed run never leaves a half-written schedule behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hashflex.feeds.ercot import read_price_file
from hashflex.forecast import ForecastConfig
from hashflex.frames import TimeFrameError, gap_runs, require_aware, time_weighted_mean
from hashflex.control.solver import SolveRunner
from hashflex.optimize.problem import Problem, problem_from_profile
from hashflex.optimize.schedule import Schedule
from hashflex.profile import SiteProfile, profile_hash

DEFAULT_PRICE_FILE = "ercot/RTM-2020-02.csv"
UNKNOWN_PRICE_USD_MWH = ForecastConfig().unknown_price_usd_mwh  # the daemon's price for an unknown interval

# The CSV columns other tools read; documented in the README ("Schedule CSV contract").
CONTRACT_COLUMNS = ("interval_start", "price_usd_mwh", "load_kw", "grid_import_kw", "import_limit_kw",
                    "renewable_used_kw", "emissions_kg", "profit_usd", "reason")


class PlanInputError(ValueError):
    """An input file for `plan` is unusable; the message says which and why."""


@dataclass(frozen=True)
class PlanInputs:
    """What one planning pass plans on: the grid, prices and on-site output.

    Attributes
    ----------
    interval_start : pandas.DatetimeIndex, length n
        The planning grid (UTC).
    price_usd_mwh : numpy.ndarray, shape (n,)
        Settlement price per interval ($/MWh); unknown intervals hold the daemon's unknown price.
    renewable_kw : numpy.ndarray, shape (n,), or None
        On-site output per interval (kW).
    notes : tuple[str, ...]
        What was dropped, shortened or priced as unknown, for the operator.
    price_known : numpy.ndarray, shape (n,), of bool, or None
        False where the file had no price (planned at the unknown price, i.e. curtailed).
    """
    interval_start: pd.DatetimeIndex
    price_usd_mwh: np.ndarray
    renewable_kw: np.ndarray | None
    notes: tuple[str, ...]
    price_known: np.ndarray | None = None  # False where the file had no price (planned at the unknown price)


def horizon_index(profile: SiteProfile, start: pd.Timestamp) -> pd.DatetimeIndex:
    """The profile's planning grid from ``start``: ``horizon_hours`` of ``interval_minutes`` intervals.

    Parameters
    ----------
    profile : SiteProfile
    start : pandas.Timestamp
        Tz-aware first interval start.

    Returns
    -------
    pandas.DatetimeIndex
        UTC.
    """
    step = pd.Timedelta(minutes=profile.site.interval_minutes)
    periods = int(profile.site.horizon_hours * 60 / profile.site.interval_minutes)
    return pd.date_range(start.tz_convert("UTC"), periods=periods, freq=step)


def prices_on_grid(prices: pd.DataFrame, index: pd.DatetimeIndex, interval: pd.Timedelta | None = None) -> np.ndarray:
    """The settlement price of each interval of ``index``, from one market's rows.

    The time-weighted mean of the prices covering it (:func:`hashflex.frames.time_weighted_mean`:
    5-minute SCED prices average into a 15-minute interval as ERCOT settles them, ERCOT Nodal
    Protocols §6.6.1; an hourly DA price covers its four quarters).

    Parameters
    ----------
    prices : pandas.DataFrame
        Canonical price frame rows of one market (:mod:`hashflex.frames`).
    index : pandas.DatetimeIndex, length n
        Interval starts (UTC).
    interval : pandas.Timedelta, optional
        Interval length (default: the index's step, or the first row's length for one interval).

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)``, $/MWh; NaN where any part of the interval has no price (an unknown
        interval, not the end of data).
    """
    if prices.empty or len(index) == 0:
        return np.full(len(index), np.nan)
    if interval is not None:
        step = pd.Timedelta(interval)
    else:
        step = (index[1] - index[0]) if len(index) > 1 else pd.Timedelta(prices["interval_end"].iloc[0]
                                                                        - prices["interval_start"].iloc[0])
    return time_weighted_mean(prices["interval_start"], prices["interval_end"], prices["price_usd_mwh"], index, step)


def renewables_on_grid(series: pd.Series, index: pd.DatetimeIndex, step: pd.Timedelta) -> np.ndarray:
    """Recorded on-site output on the planning grid: a row holds until the next row, but never longer than
    the file's own spacing (the median gap between rows; ``step`` for a single row), so a sparse file is not
    stretched over the rest of the day; an interval no row covers counts as 0 kW (the safe side: more import).

    Parameters
    ----------
    series : pd.Series
        kW by interval start (UTC), sorted (:func:`read_renewables_csv`).
    index : pd.DatetimeIndex
        The grid's interval starts (UTC).
    step : pd.Timedelta
        The grid's interval length.

    Returns
    -------
    np.ndarray
        [len(index)] kW.
    """
    if series.empty:
        return np.zeros(len(index))
    starts = series.index
    spacing = pd.Series(starts).diff().dropna()
    hold = spacing.median() if len(spacing) else step
    pos = starts.searchsorted(index, side="right") - 1
    out = np.zeros(len(index))
    ok = pos >= 0
    age = index[ok] - starts[pos[ok]]
    fresh = np.asarray(age < hold)
    values = series.to_numpy(dtype=float)[pos[ok]]
    out[np.flatnonzero(ok)[fresh]] = values[fresh]
    return out


def read_renewables_csv(path: Path, capacity_kw: float | None = None) -> pd.Series:
    """A simple on-site output file: ``interval_start``, ``power_kw``.

    Parameters
    ----------
    path : Path
        CSV with ``interval_start`` (ISO 8601 with a UTC offset: a time without one is refused with
        its line, see :mod:`hashflex.frames`) and ``power_kw`` (kW, >= 0).
    capacity_kw : float, optional
        The site's renewable nameplate (kW): a row above 1.1 × it is refused with its line, as an MQTT
        reading is (:mod:`hashflex.plausibility`).

    Returns
    -------
    pandas.Series
        kW indexed by interval start (UTC), sorted.

    Raises
    ------
    PlanInputError
        Unreadable file, a missing column, a naive or repeated time, or a bad ``power_kw``, naming
        the line.
    """
    try:
        frame = pd.read_csv(path, dtype={"interval_start": str})
    except (OSError, ValueError) as exc:
        raise PlanInputError(f"{path}: cannot read renewables CSV: {exc}") from exc
    missing = {"interval_start", "power_kw"} - set(frame.columns)
    if missing:
        raise PlanInputError(f"{path}: renewables CSV lacks column(s) {sorted(missing)}")
    try:
        index = require_aware(frame["interval_start"], source=str(path), field="interval_start")
    except TimeFrameError as exc:
        raise PlanInputError(str(exc)) from exc
    repeated = index.duplicated()
    if repeated.any():
        line = int(np.flatnonzero(repeated)[0]) + 2
        raise PlanInputError(f"{path} line {line}: interval_start {index[line - 2].isoformat()} appears twice")
    power = pd.to_numeric(frame["power_kw"], errors="coerce")
    bad = power.isna() | (power < 0) | ~np.isfinite(power)
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise PlanInputError(f"{path} line {line}: power_kw must be a number >= 0")
    if capacity_kw is not None:
        over = power > 1.1 * capacity_kw
        if over.any():
            line = int(np.flatnonzero(over.to_numpy())[0]) + 2
            raise PlanInputError(f"{path} line {line}: power_kw {power[over].iloc[0]:g} is above 1.1 × the site's "
                                 f"renewable capacity ({capacity_kw:g} kW)")
    return pd.Series(power.to_numpy(dtype=float), index=index).sort_index()


def load_inputs(profile: SiteProfile, prices_path: Path, start: pd.Timestamp | None,
                renewables_path: Path | None = None) -> PlanInputs:
    """Prices (any accepted format) for the profile's settlement point on the planning grid.

    Real-time where the file has it for an interval, else day-ahead; a gap inside the horizon is
    priced as the daemon prices an unknown interval (and said in ``notes``); a horizon beyond the
    file's last price is shortened (and said).

    Parameters
    ----------
    profile : SiteProfile
    prices_path : Path
        A price file :func:`hashflex.feeds.ercot.read_price_file` accepts.
    start : pandas.Timestamp or None
        First interval (tz-aware); None: the file's first interval.
    renewables_path : Path, optional
        On-site output (:func:`read_renewables_csv`).

    Returns
    -------
    PlanInputs

    Raises
    ------
    PlanInputError
        A missing or malformed file (naming file, line and field), no prices for the settlement
        point, or none covering ``start``.
    """
    try:
        prices = read_price_file(prices_path, settlement_point=profile.site.settlement_point,
                                 settlement_point_type=profile.site.settlement_point_type)
    except FileNotFoundError as exc:
        raise PlanInputError(f"{prices_path}: no such file") from exc
    except ValueError as exc:  # PriceFileError is a ValueError and names file/line/field
        raise PlanInputError(str(exc)) from exc
    if prices.empty:
        raise PlanInputError(f"{prices_path}: no prices for {profile.site.settlement_point}")
    notes = list(prices.attrs.get("notes", []))
    if prices.attrs.get("duplicates"):
        report = prices.attrs["duplicates"]
        notes.append(f"{prices_path}: {report.identical_rows_dropped} identical and "
                     f"{report.conflicting_rows_dropped} conflicting duplicate row(s) dropped (the last row kept)")
    if start is None:
        start = prices["interval_start"].min()
    index = horizon_index(profile, start)
    # One market: real-time where the file has it for the interval, else day-ahead.
    price = np.full(len(index), np.nan)
    for market in ("RT", "DA"):
        rows = prices[prices["market"] == market]
        if not rows.empty:
            values = prices_on_grid(rows.reset_index(drop=True), index)
            fill = np.isnan(price) & ~np.isnan(values)
            price[fill] = values[fill]
    known = ~np.isnan(price)
    if not known[0]:
        raise PlanInputError(f"{prices_path}: no price covers the start {index[0].isoformat()}")
    last_known = int(np.flatnonzero(known)[-1])
    if last_known < len(index) - 1:
        notes.append(f"prices end at {index[last_known + 1].isoformat()}: horizon shortened to {last_known + 1} "
                     f"intervals")
        index, price = index[:last_known + 1], price[:last_known + 1]
    step = pd.Timedelta(minutes=profile.site.interval_minutes)
    for gap in gap_runs(index, price, step):
        notes.append(f"no price for {gap.describe()}: priced as unknown at {UNKNOWN_PRICE_USD_MWH:g} $/MWh "
                     f"(curtailed), as the daemon prices an unknown interval")
    known = ~np.isnan(price)
    price = np.where(known, price, UNKNOWN_PRICE_USD_MWH)
    renewable = None
    if renewables_path is not None:
        series = read_renewables_csv(renewables_path, sum(r.capacity_kw for r in profile.renewables))
        renewable = renewables_on_grid(series, index, step)
    return PlanInputs(index, price, renewable, tuple(notes), known)


def plan(profile: SiteProfile, inputs: PlanInputs, *, time_limit_s: float = 20.0,
         deadline_s: float | None = None) -> tuple[Problem, Schedule]:
    """Build and solve the plan with the daemon's problem builder and solver.

    HiGHS stops at ``time_limit_s``; the worker is killed at ``deadline_s`` wall-clock seconds and
    the greedy fallback (status ``failed_fallback``, message "solver timeout after ...") is returned.

    Parameters
    ----------
    profile : SiteProfile
    inputs : PlanInputs
    time_limit_s : float, default 20.0
        HiGHS time limit (s).
    deadline_s : float, optional
        Wall-clock deadline of the worker (s; default ``time_limit_s`` + 10).

    Returns
    -------
    problem : Problem
    schedule : Schedule
        With a ``price_known`` column when the inputs say which prices were the file's.

    Raises
    ------
    PlanInputError
        ``deadline_s`` not > 0.
    """
    if deadline_s is not None and not deadline_s > 0:
        raise PlanInputError(f"deadline_s must be > 0 seconds, got {deadline_s}")
    problem = problem_from_profile(profile, inputs.interval_start, inputs.price_usd_mwh,
                                   renewable_kw=inputs.renewable_kw)
    fine = int(profile.site.fine_horizon_hours * 60 / profile.site.interval_minutes)
    with SolveRunner(time_limit_s=time_limit_s, deadline_s=deadline_s) as runner:
        schedule = runner.run(problem, fine)
    if inputs.price_known is not None:
        # Say which prices were the file's and which the placeholder that curtails an unknown interval.
        schedule.frame["price_known"] = np.asarray(inputs.price_known, dtype=bool)
    return problem, schedule


def output_frame(schedule: Schedule) -> pd.DataFrame:
    """The schedule as the CSV/JSON contract: UTC ISO 8601 times, no caps written as empty.

    Parameters
    ----------
    schedule : Schedule

    Returns
    -------
    pandas.DataFrame
        One row per interval; the contract columns are :data:`CONTRACT_COLUMNS` (README, "Schedule
        CSV contract").
    """
    frame = schedule.frame.reset_index()
    for column in ("interval_start", "interval_end"):
        frame[column] = frame[column].map(lambda ts: ts.isoformat())
    for column in [c for c in frame.columns if c.startswith("noise_cap_dba_")]:
        frame[column] = frame[column].where(np.isfinite(frame[column]))
    return frame


def write_schedule(schedule: Schedule, path: Path, profile: SiteProfile) -> None:
    """Write the schedule as CSV or JSON (by suffix), atomically (temporary file, then rename).

    Parameters
    ----------
    schedule : Schedule
    path : Path
        ``.csv`` or ``.json``.
    profile : SiteProfile
        Its name and hash go into the JSON header.

    Raises
    ------
    PlanInputError
        Another suffix.
    OSError
        The file cannot be written (nothing is left behind).
    """
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise PlanInputError(f"{path}: output must end in .csv or .json")
    frame = output_frame(schedule)
    if suffix == ".csv":
        payload = frame.to_csv(index=False)
    else:
        info = schedule.info
        payload = json.dumps({
            "site": profile.site.name,
            "profile_sha256": profile_hash(profile),
            "status": info.status.value,
            "gap": info.gap,
            "objective_usd": info.objective_usd,
            "penalties": info.penalties,
            "message": info.message,
            "intervals": json.loads(frame.to_json(orient="records")),
        }, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def summary_table(schedule: Schedule, profile: SiteProfile) -> str:
    """Hourly table a site manager reads: price, units on, load, noise vs cap, profit, reason.

    Parameters
    ----------
    schedule : Schedule
    profile : SiteProfile
        For the local time zone and the receptors.

    Returns
    -------
    str
        The table, the totals line, and a footnote when some prices were unknown.
    """
    frame = schedule.frame
    local = frame.index.tz_convert(profile.tz)
    hours = local.floor("h")
    unit_columns = [c for c in frame.columns if c.startswith("units_")]
    grouped = frame.groupby(hours)
    header = ["hour (local)", "$/MWh", "units on", "load MW"]
    for receptor in profile.receptors:
        header.append(f"{receptor.id} dB(A)/cap")
    header += ["profit $", "reason"]
    rows = [header]
    unknown_any = "price_known" in frame.columns and not bool(frame["price_known"].all())
    for hour, block in grouped:
        known = block["price_known"] if "price_known" in block.columns else pd.Series(True, index=block.index)
        price_cell = (f"{block.loc[known, 'price_usd_mwh'].mean():,.2f}*" if known.any() and not known.all()
                      else "unknown*" if not known.any() else f"{block['price_usd_mwh'].mean():,.2f}")
        row = [hour.strftime("%a %m-%d %H:%M"), price_cell,
               f"{int(block[unit_columns].sum(axis=1).mean()):,}", f"{block['load_kw'].mean() / 1000:,.2f}"]
        for receptor in profile.receptors:
            level = block[f"noise_dba_{receptor.id}"].max()
            cap = block[f"noise_cap_dba_{receptor.id}"].min()
            row.append(f"{level:.1f}/{'-' if math.isinf(cap) else f'{cap:.0f}'}")
        reasons = [r for r in block["reason"] if r]
        row += [f"{block['profit_usd'].sum():,.0f}", max(set(reasons), key=reasons.count) if reasons else "full load"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) if 0 < i < len(header) - 1 else cell.ljust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))) for row in rows]
    info = schedule.info
    gap = "n/a" if info.gap is None else f"{info.gap * 100:.3f}%"
    totals = (f"status {info.status.value} (gap {gap}, build {info.build_seconds:.2f} s, solve {info.solve_seconds:.2f} s)"
              f"; profit ${frame['profit_usd'].sum():,.0f}; energy {float((frame['load_kw'] * frame['duration_h']).sum()) / 1000:,.1f} MWh"
              f"; emissions {frame['emissions_kg'].sum() / 1000:,.1f} t")
    if info.penalties:
        totals += f"; soft limits paid: {info.penalties}"
    if info.message and info.status.value == "failed_fallback":
        totals += f"; fallback because {info.message}"
    footnote = ([f"* some or all intervals had no price in the file: they were planned at "
                 f"{UNKNOWN_PRICE_USD_MWH:,.0f} $/MWh, i.e. curtailed, and their $ figures are not market figures "
                 f"(column price_known in the CSV)"] if unknown_any else [])
    return "\n".join(lines + ["", totals, *footnote])
