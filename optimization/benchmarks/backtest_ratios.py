"""Backtest ratios: the MPC with today's rule forecast and with the learned forecaster, side by side in
one run, against the threshold policy and the perfect-foresight oracle, settled at the real daily
hashprice; plus the forecast's own error. Prints one table and the wall time.

Cases (real ERCOT prices; windows start on the case's default day, ``--days`` long):

- ``2020-02``: bundled RTM/DAM Feb 2020 at the profile's point (west_texas: LZ_WEST), a normal month.
- ``2021-02``: bundled Feb 2021, Winter Storm Uri (load shed from Feb 15).
- ``2024-03``, ``2024-05``: the 2024 development data in ``optimization/data/ercot_dev2`` (hub prices,
  ERCOT's day-ahead system load forecast). Only the hub average HB_HUBAVG has a 15-minute RT series
  there (HB_WEST has hourly RT means only), so these cases use a copy of the profile whose
  settlement point is **HB_HUBAVG** (type HU). The learned model also reads the load forecast here.
- ``2025-04`` .. ``2025-11``: the 2025 development months (in the repo, ``optimization/data/ercot_dev2``,
  ``--dev2-dir`` for another copy; HB_HUBAVG RT/DA and the load forecast, as above), each window from the 15th (a fixed rule,
  not picked by looking at prices). The bundled bitcoin data ends 2025-03-08, so these windows settle at the
  profile's constant hashprice (said in the notes); no value is invented. Periods not in the development set are
  kept aside to measure the product: nothing is tuned on them.

Columns: profit ($), profit / oracle, profit / threshold (only when the threshold's profit is
positive; else the difference in $), forecast MAE ($/MWh, over hourly decisions × the next 24 h),
pinball loss (mean over P10/P50/P90; the rule forecast is a point, scored as every quantile),
spike hit rate (intervals whose actual RT was above the least efficient group's breakeven at that
day's hashprice that the forecast also put above it) and false-alarm rate, hard-limit violations,
churn (unit switches: starts + stops actually dispatched, per (group, mode), per day), wall seconds.
The learned model runs as the daemon runs it (``--learned-as daemon``, the default:
``price_model.OnlinePriceModel``, fitted at the first tick and daily at 13:30 Central after the DAM, predicting
with the last fit) or as the backtest's self-refitting hook (``--learned-as backtest``:
``LearnedPriceForecaster``, refitted every ``retrain_h`` from the first tick). ``--estimates`` adds one learned
row per planning estimate in the same run (``PriceModelConfig.plan_estimate``): ``mpc learned`` plans on the
P50, ``mpc learned mean`` on a squared-error model of the conditional mean, ``mpc learned qmean`` on the
mean of P10/P50/P90, ``mpc learned beP`` (``--estimates breakeven:P``) runs a group when the forecast probability
of a price below its breakeven is at least P (the P quantile, interpolated; ``breakeven:P:N``: N in the first hour); each row's forecast columns score the price that row planned on (bias = mean of
forecast − actual). Every case settles each UTC day at that day's hashprice from the bundled bitcoin data
(``feeds.hashprice.bundled_hashprice``; ``--constant-hashprice`` for the profile's 49 $/PH/day).

    python optimization/benchmarks/backtest_ratios.py                       # 3 days per case
    python optimization/benchmarks/backtest_ratios.py --cases 2021-02 --days 4
    python optimization/benchmarks/backtest_ratios.py --days 7 --profiles west_texas quiet_hollow
    python optimization/benchmarks/backtest_ratios.py --old     # + the rules MPC before this round, same run
    python optimization/benchmarks/backtest_ratios.py --cases 2020-02 2025-06 --estimates quantile mean quantile_mean
    python optimization/benchmarks/backtest_ratios.py --cases 2020-02 2024-05 --estimates quantile breakeven:0.4 breakeven:0.5:0.9

Goals (issue 14): mpc >= 99.5 % of the oracle on normal months; in Uri >= the threshold and > 0.
Needs scikit-learn (``pip install 'hashflex[forecast]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hashflex.backtest.runner import (
    Actuals,
    BacktestResult,
    Progress,
    SnapshotForecaster,
    build_actuals,
    load_prices,
    run_backtest,
)
from hashflex.backtest.summary import summary_document, violations
from hashflex.data import bundled_path
from hashflex.feeds.hashprice import bundled_hashprice
from hashflex.price_model import (
    PLAN_ESTIMATES,
    QUANTILES,
    LearnedPriceForecaster,
    OnlinePriceModel,
    PriceModelConfig,
    pinball_loss,
    recorded_price_history,
)
from hashflex.profile import SiteProfile, load_profile

ROOT = Path(__file__).resolve().parents[2]
# The development rows (Feb-May 2024 and Apr 2025 onward), in the repo (PROVENANCE.md). Other periods are kept
# aside to measure the product and are deliberately absent: nothing here is tuned on them.
DEV2 = ROOT / "optimization" / "data" / "ercot_dev2"
DEV2_SHARED = DEV2  # the 2025 cases' folder by default (--dev2-dir reads another copy of the same files)
CASES = {  # case -> (source, first day of the default window)
    "2020-02": ("ercot/RTM-2020-02.csv", "2020-02-10"),
    "2021-02": ("ercot/RTM-2021-02.csv", "2021-02-14"),  # Uri: load shed from Feb 15
    "2024-03": ("dev2", "2024-03-12"),
    "2024-05": ("dev2", "2024-05-07"),  # 2024-05-08: HB_WEST RT 3,057, NSPIN 2,150
    # 2025 development months: the 15th of each month by rule (not picked by looking at prices); the learned
    # model then has two weeks (Apr) or its full 28-day window (May on) of history.
    **{f"2025-{m:02d}": ("dev2-2025", f"2025-{m:02d}-15") for m in range(4, 12)},
}
NORMAL_CASES = ("2020-02", "2024-03", "2024-05", *(f"2025-{m:02d}" for m in range(4, 12)))  # all but Uri
HUB = "HB_HUBAVG"


def dev2_prices(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """HB_HUBAVG RT (15 min) and DA (hourly) as a canonical price frame, and ERCOT's day-ahead system
    load forecast (hourly MW), from the dev2 files in ``folder`` (real ERCOT data: the 2024 rows in the repo,
    optimization/data/ercot_dev2/PROVENANCE.md: Feb-May 2024 and Apr 2025 onward)."""
    frames = []
    for name, market, minutes in (("rt_spp_hb_hubavg_15min.csv", "RT", 15), ("dam_spp_hb_hubavg_hourly.csv", "DA", 60)):
        raw = pd.read_csv(folder / name)
        start = pd.to_datetime(raw["interval_start_utc"], utc=True).dt.as_unit("us")
        frames.append(pd.DataFrame({"interval_start": start, "interval_end": start + pd.Timedelta(minutes=minutes),
                                    "settlement_point": raw["settlement_point"].astype(str), "market": market,
                                    "price_usd_mwh": raw["price_usd_per_mwh"].astype(float)}))
    prices = pd.concat(frames, ignore_index=True)
    load = pd.read_csv(folder / "system_load_forecast_da_hourly.csv")
    load = pd.DataFrame({"interval_start": pd.to_datetime(load["interval_start_utc"], utc=True).dt.as_unit("us"),
                         "load_forecast_mw": load["da_demand_forecast_mw"].astype(float)})
    return prices[prices["settlement_point"] == HUB].reset_index(drop=True), load


def case_inputs(case: str, profile: SiteProfile, dev2_shared: Path = DEV2_SHARED
                ) -> tuple[SiteProfile, pd.DataFrame, pd.DataFrame | None]:
    """The profile (a hub copy for dev2 cases), the price frame and the load forecast (None: not bundled) of a case."""
    source, _ = CASES[case]
    if source == "dev2":
        return hub_copy(profile), *dev2_prices(DEV2)
    if source == "dev2-2025":
        if not (dev2_shared / "rt_spp_hb_hubavg_15min.csv").is_file():
            raise SystemExit(f"case {case}: the dev2 data is not at {dev2_shared} (--dev2-dir)")
        return hub_copy(profile), *dev2_prices(dev2_shared)
    return profile, load_prices(profile, [bundled_path(source)]), None


def settlement_hashprice(hashprice: pd.DataFrame | None, start: pd.Timestamp, days: int) -> pd.DataFrame | None:
    """``hashprice`` when it has every UTC day of the window, else None (the profile's constant): the bundled
    bitcoin data ends 2025-03-08, before the 2025 development months; no value is invented for them."""
    if hashprice is None:
        return None
    have = pd.DatetimeIndex(pd.to_datetime(hashprice["timestamp"], utc=True)).floor("D")
    need = pd.date_range(pd.Timestamp(start).tz_localize("UTC").floor("D") - pd.Timedelta(days=1),
                         periods=days + 2, freq="D")
    return hashprice if need.isin(have).all() else None


def hub_copy(profile: SiteProfile) -> SiteProfile:
    site = profile.site.model_copy(update={"settlement_point": HUB, "settlement_point_type": "HU"})
    return profile.model_copy(update={"site": site})


def breakeven_usd_mwh(profile: SiteProfile, hashprice_usd_per_ph_day: np.ndarray) -> np.ndarray:
    """Per interval: the stock-mode breakeven of the least efficient group (the first to curtail)."""
    fee = 1 - profile.economics.pool_fee_pct / 100
    worst = min(((m.hashrate_th_s / m.power_kw) for g in profile.miner_groups for m in g.modes if m.name == "stock"),
                default=None)
    if worst is None:
        worst = min(m.hashrate_th_s / m.power_kw for g in profile.miner_groups for m in g.modes)
    return hashprice_usd_per_ph_day / 1000.0 / 24.0 * worst * fee * 1000.0 - profile.grid.total_adder_usd_mwh


def forecast_errors(profile: SiteProfile, actuals: Actuals,
                    hooks: dict[str, LearnedPriceForecaster | OnlinePriceModel],
                    hashprice: pd.DataFrame | None) -> dict[str, dict[str, float]]:
    """MAE, pinball and spike hit/false-alarm rates of the rule forecast (``"rules"``) and of each learned
    hook (by its name in ``hooks``), over hourly decisions in the window, each scored on the next 24 h of
    actual RT prices. The point scored is what the MPC plans on (after the forecast's rules)."""
    rt = actuals.prices[actuals.prices["market"] == "RT"].set_index("interval_start")["price_usd_mwh"]
    rt = rt[~rt.index.duplicated(keep="last")]
    forecasters = {"rules": (SnapshotForecaster(profile, actuals), None)}
    forecasters.update({name: (SnapshotForecaster(profile, actuals, price_forecaster=hook), hook)
                        for name, hook in hooks.items()})
    from hashflex.feeds.hashprice import hashprice_by_day

    acc: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in forecasters}
    for tau in actuals.index[::4]:
        times = pd.date_range(tau, periods=96, freq="15min")
        actual = rt.reindex(times).to_numpy(dtype=float)
        ok = np.isfinite(actual)
        hp = (hashprice_by_day(hashprice, times) if hashprice is not None
              else np.full(96, profile.economics.hashprice_usd_per_ph_day))
        line = breakeven_usd_mwh(profile, hp)
        for name, (forecaster, hook) in forecasters.items():
            point = forecaster(tau, tau, 96).price_usd_mwh  # (the daemon's model fits here when due)
            if hook is None:  # the rule forecast is a point, scored as every quantile
                qs: dict[float, np.ndarray] | None = None
            elif isinstance(hook, OnlinePriceModel):
                qs = hook.quantiles(times, tau, forecaster.snapshot(tau))
            else:
                qs = hook.quantiles(times, tau)
            qs = qs or {q: point for q in QUANTILES}
            bucket = acc[name]
            bucket.setdefault("actual", []).append(actual[ok])
            bucket.setdefault("point", []).append(point[ok])
            bucket.setdefault("line", []).append(line[ok])
            for q in QUANTILES:
                bucket.setdefault(f"q{q}", []).append(np.asarray(qs[q])[ok])
    out = {}
    for name, bucket in acc.items():
        y, p, line = (np.concatenate(bucket[k]) for k in ("actual", "point", "line"))
        spikes = y > line
        out[name] = {
            "mae": float(np.mean(np.abs(y - p))),
            "bias": float(np.mean(p - y)),
            "pinball": float(np.mean([pinball_loss(y, np.concatenate(bucket[f"q{q}"]), q) for q in QUANTILES])),
            "spike_hit": float(np.mean(p[spikes] > line[spikes])) if spikes.any() else math.nan,
            "false_alarm": float(np.mean(p[~spikes] > line[~spikes])) if (~spikes).any() else math.nan,
            "spikes": int(spikes.sum()),
        }
    return out


def unit_switches_per_day(counts: dict[Any, np.ndarray], days: float) -> float:
    """Starts + stops dispatched, summed over (group, mode) columns, per day (the churn a site manager sees)."""
    return sum(float(np.abs(np.diff(np.asarray(c, dtype=float))).sum()) for c in counts.values()) / days


def learned_hook(learned_as: str, profile: SiteProfile, actuals: Actuals, load: pd.DataFrame | None,
                 model_config: PriceModelConfig | None) -> LearnedPriceForecaster | OnlinePriceModel:
    """The learned price hook, as the daemon runs it (``daemon``) or the backtest's self-refitting one."""
    point, tz = profile.site.settlement_point, profile.site.timezone
    if learned_as == "daemon":
        # Inline fits (background=False): the backtest's clock waits for them, as the daemon's ticks do not.
        return OnlinePriceModel(recorded_price_history(actuals.prices), point, tz, config=model_config,
                                background=False, load_forecast=load)
    return LearnedPriceForecaster(actuals.prices, point, tz, load_forecast=load, config=model_config)


@contextlib.contextmanager
def rules_before_round_3() -> Iterator[None]:
    """The MPC as it was before this round's issue-14 changes, for a side-by-side row: plan stability valued
    over the first interval only (``hold_span="first"``) and the scarcity floor at the recent RT mean alone
    (``scarcity_floor_follows_last=False``). Patches the loop's and the forecast's module names; restores them."""
    from hashflex.control import loop as control_loop
    from hashflex.control.stability import hold_previous_counts
    from hashflex.forecast import ForecastConfig
    from hashflex.forecast import rules as forecast_rules

    saved = control_loop.hold_previous_counts, forecast_rules.ForecastConfig
    control_loop.hold_previous_counts = functools.partial(hold_previous_counts, hold_span="first")
    forecast_rules.ForecastConfig = functools.partial(ForecastConfig, scarcity_floor_follows_last=False)
    try:
        yield
    finally:
        control_loop.hold_previous_counts, forecast_rules.ForecastConfig = saved


ESTIMATE_ROWS = {"quantile": "mpc learned", "quantile_mean": "mpc learned qmean", "mean": "mpc learned mean",
                 "breakeven": "mpc learned be"}


def estimate_config(spec: str, base: PriceModelConfig) -> tuple[str, PriceModelConfig]:
    """A learned row's name and settings from an ``--estimates`` entry: a plan estimate
    (:data:`hashflex.price_model.PLAN_ESTIMATES`), or ``breakeven:P`` / ``breakeven:P:N`` (run a group when
    P(price < breakeven) >= P; N: the p* for the first ``near_h`` hours), row ``mpc learned beP`` / ``beP/N``.

    Raises
    ------
    ValueError
        An unknown estimate or a probability outside the fitted quantiles (named).
    """
    name, *probabilities = spec.split(":")
    if name not in PLAN_ESTIMATES:
        raise ValueError(f"--estimates: {spec!r}: {name!r} is not one of {PLAN_ESTIMATES}")
    if probabilities and name != "breakeven":
        raise ValueError(f"--estimates: {spec!r}: only breakeven takes a probability (breakeven:P or breakeven:P:N)")
    if len(probabilities) > 2:
        raise ValueError(f"--estimates: {spec!r}: breakeven:P or breakeven:P:N")
    try:
        values = [float(v) for v in probabilities]
    except ValueError:
        raise ValueError(f"--estimates: {spec!r}: a probability is not a number") from None
    if name != "breakeven":
        return ESTIMATE_ROWS[name], dataclasses.replace(base, plan_estimate=name)
    p = values[0] if values else base.breakeven_probability
    near = values[1] if len(values) > 1 else None
    config = dataclasses.replace(base, plan_estimate="breakeven", breakeven_probability=p,
                                 breakeven_probability_near=near)
    return f"mpc learned be{p:g}" + (f"/{near:g}" if near is not None else ""), config


def run_case(name: str, case: str, days: int, hashprice: pd.DataFrame | None, quiet: bool,
             model_config: PriceModelConfig | None = None, learned_as: str = "daemon",
             old: bool = False, estimates: tuple[str, ...] = ("quantile",),
             dev2_shared: Path = DEV2_SHARED) -> tuple[dict, dict, dict]:
    """One case: the rules MPC, threshold and oracle, and the learned MPC once per planning estimate
    (``estimates``: :func:`estimate_config` entries, rows :data:`ESTIMATE_ROWS`), in one run;
    returns the summary document (with ``churn``, ``hashprice``, ``fits``), the forecast errors by row
    name without ``"mpc "`` and the wall seconds per part."""
    _, first_day = CASES[case]
    profile, prices, load = case_inputs(case, load_profile(name), dev2_shared)
    start = pd.Timestamp(first_day)
    hashprice = settlement_hashprice(hashprice, start, days)
    actuals = build_actuals(profile, prices, start, start + pd.Timedelta(days=days), hashprice=hashprice)
    base_config = model_config or PriceModelConfig()
    configs = dict(estimate_config(e, base_config) for e in estimates)
    hooks = {row: learned_hook(learned_as, profile, actuals, load, cfg) for row, cfg in configs.items()}
    progress = Progress.factory(quiet)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    base = run_backtest(profile, actuals, ["mpc", "threshold", "oracle"], progress=progress)
    timings["rules+threshold+oracle"] = time.perf_counter() - started
    runs = {"mpc rules": base.runs["mpc"]}
    schedules = {"mpc rules": base.schedules["mpc"]}
    for row, hook in hooks.items():
        started = time.perf_counter()
        learned = run_backtest(profile, actuals, ["mpc"], progress=progress, price_forecaster=hook)
        timings[row] = time.perf_counter() - started
        runs[row], schedules[row] = learned.runs["mpc"], learned.schedules["mpc"]
    runs.update({"threshold": base.runs["threshold"], "oracle": base.runs["oracle"]})
    schedules.update({"threshold": base.schedules["threshold"], "oracle": base.schedules["oracle"]})
    if old:  # the same MPC with the rules before this round (stability over one interval, floor at the mean)
        started = time.perf_counter()
        with rules_before_round_3():
            before = run_backtest(profile, actuals, ["mpc"], progress=progress)
        timings["mpc rules old"] = time.perf_counter() - started
        runs = {"mpc rules old": before.runs["mpc"], **runs}
        schedules = {"mpc rules old": before.schedules["mpc"], **schedules}
    document = summary_document(BacktestResult(profile, actuals, runs, schedules))
    started = time.perf_counter()
    # Fresh hooks for the scoring replay: the daemon's model never refits for an earlier time (it would
    # answer "fitted after this decision", i.e. the rules, for the whole replay).
    scoring = ({row.replace("mpc ", ""): learned_hook(learned_as, profile, actuals, load, cfg)
                for row, cfg in configs.items()} if learned_as == "daemon"
               else {row.replace("mpc ", ""): hook for row, hook in hooks.items()})
    errors = forecast_errors(profile, actuals, scoring, hashprice)
    timings["forecast scoring"] = time.perf_counter() - started
    hp = actuals.hashprice_usd_per_ph_day
    document["hashprice"] = (f"profile constant {profile.economics.hashprice_usd_per_ph_day:g} $/PH/day"
                             + (" (bundled bitcoin data ends before this window)" if hashprice is None else "")
                             if hp is None else f"{hp.min():.1f}..{hp.max():.1f} $/PH/day")
    document["point"] = profile.site.settlement_point
    first = next(iter(hooks.values()))
    document["fits"] = first.counters["price_model_fits"] if isinstance(first, OnlinePriceModel) else first.fits
    document["learned_ticks"] = (f"{first.counters['price_model_learned_ticks']} of "
                                 f"{first.counters['price_model_learned_ticks'] + first.counters['price_model_rules_ticks']}"
                                 if isinstance(first, OnlinePriceModel) else "-")
    document["churn"] = {policy: unit_switches_per_day(run.counts, days) for policy, run in runs.items()}
    return document, errors, timings


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=3, help="days per case from the case's default start day")
    parser.add_argument("--profiles", nargs="+", default=["west_texas"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--constant-hashprice", action="store_true", help="settle at the profile's constant")
    parser.add_argument("--estimates", nargs="+", default=["quantile"],
                        help="one learned mpc row per planning estimate, same run: quantile (P50), quantile_mean "
                             "(mean of P10/P50/P90), mean (a squared-error model of the conditional mean), "
                             "breakeven[:P[:N]] (run a group when P(price < its breakeven) >= P, default 0.5; N: "
                             "the P for the first hour)")
    parser.add_argument("--dev2-dir", type=Path, default=DEV2_SHARED,
                        help="the dev2 folder for the 2025 cases (default: the repo's optimization/data/ercot_dev2)")
    parser.add_argument("--learned-as", choices=("daemon", "backtest"), default="daemon",
                        help="the learned model as the daemon runs it (fit daily after the DAM) or as the "
                             "backtest's self-refitting hook (every retrain_h)")
    parser.add_argument("--old", action="store_true",
                        help="add a row: the rules MPC before this round (stability over one interval, scarcity "
                             "floor at the mean), side by side in the same run")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    model_config = PriceModelConfig()
    for spec in args.estimates:
        try:
            estimate_config(spec, model_config)
        except ValueError as exc:
            parser.error(str(exc))
    hashprice = None if args.constant_hashprice else bundled_hashprice()
    if any(CASES[c][0] == "dev2" for c in args.cases) and not DEV2.is_dir():
        print(f"dev2 data not found at {DEV2}; run with --cases 2020-02 2021-02", file=sys.stderr)
        return 2
    wall_started = time.perf_counter()
    header = (f"{'case':28s} {'policy':18s} {'profit $':>12s} {'/oracle':>8s} {'/thresh':>12s} {'MAE':>7s} {'bias':>6s} "
              f"{'pinball':>8s} {'spike hit':>9s} {'false al':>8s} {'switch/d':>9s} {'violations':>10s} {'wall s':>7s}")
    lines = [header, "-" * len(header)]
    notes = []
    for name in args.profiles:
        for case in args.cases:
            started = time.perf_counter()
            document, errors, timings = run_case(name, case, args.days, hashprice, args.quiet, model_config,
                                                 args.learned_as, old=args.old,
                                                 estimates=tuple(dict.fromkeys(args.estimates)),
                                                 dev2_shared=args.dev2_dir)
            label = f"{name}@{document['point']} {case}"
            policies = document["policies"]
            threshold = policies["threshold"]["profit_usd"]
            for policy, figures in policies.items():
                profit = figures["profit_usd"]
                if policy == "threshold" or policy == "oracle":
                    vs = "-"
                elif threshold > 0:
                    vs = f"{profit / threshold:.4f}"
                else:
                    vs = f"{profit - threshold:+,.0f} $"
                err = errors.get(policy.replace("mpc ", "")) if policy.startswith("mpc") else None
                lines.append(
                    f"{label:28s} {policy:18s} {profit:12,.0f} {fmt_ratio(figures['profit_ratio_to_oracle']):>8s} "
                    f"{vs:>12s} {err['mae'] if err else math.nan:7.1f} {err['bias'] if err else math.nan:+6.1f} {err['pinball'] if err else math.nan:8.1f} "
                    f"{fmt_ratio(err['spike_hit']) if err else '-':>9s} {fmt_ratio(err['false_alarm']) if err else '-':>8s} "
                    f"{document['churn'][policy]:9.1f} {violations(figures):>10s} {figures['wall_seconds']:7.1f}")
            notes.append(f"{label}: {document['window']['start']} .. {document['window']['end']}, hashprice "
                         f"{document['hashprice']}, spike intervals scored {errors['rules']['spikes']}, learned model "
                         f"({args.learned_as}) fits {document['fits']}, ticks planned on it "
                         f"{document['learned_ticks']}, wall {time.perf_counter() - started:.0f} s "
                         + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
            print(f"{label}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print("\n".join(lines))
    print()
    print("\n".join(notes))
    print(f"\ntotal wall time {time.perf_counter() - wall_started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
