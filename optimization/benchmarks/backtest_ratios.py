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

Columns: profit ($), profit / oracle, profit / threshold (only when the threshold's profit is
positive; else the difference in $), forecast MAE ($/MWh, over hourly decisions × the next 24 h),
pinball loss (mean over P10/P50/P90; the rule forecast is a point, scored as every quantile),
spike hit rate (intervals whose actual RT was above the least efficient group's breakeven at that
day's hashprice that the forecast also put above it) and false-alarm rate, hard-limit violations,
churn (unit switches: starts + stops actually dispatched, per (group, mode), per day), wall seconds.
The learned model runs as the daemon runs it (``--learned-as daemon``, the default:
``price_model.OnlinePriceModel``, fitted at the first tick and daily at 13:30 Central after the DAM, predicting
with the last fit) or as the backtest's self-refitting hook (``--learned-as backtest``:
``LearnedPriceForecaster``, refitted every ``retrain_h`` from the first tick). Every case settles each UTC day at that day's hashprice from the bundled bitcoin data
(``feeds.hashprice.bundled_hashprice``; ``--constant-hashprice`` for the profile's 49 $/PH/day).

    python optimization/benchmarks/backtest_ratios.py                       # 3 days per case
    python optimization/benchmarks/backtest_ratios.py --cases 2021-02 --days 4
    python optimization/benchmarks/backtest_ratios.py --days 7 --profiles west_texas quiet_hollow
    python optimization/benchmarks/backtest_ratios.py --old     # + the rules MPC before this round, same run

Goals (issue 14): mpc >= 99.5 % of the oracle on normal months; in Uri >= the threshold and > 0.
Needs scikit-learn (``pip install 'hashflex[forecast]'``).
"""

from __future__ import annotations

import argparse
import contextlib
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
    QUANTILES,
    LearnedPriceForecaster,
    OnlinePriceModel,
    PriceModelConfig,
    pinball_loss,
    recorded_price_history,
)
from hashflex.profile import SiteProfile, load_profile

ROOT = Path(__file__).resolve().parents[2]
DEV2 = ROOT / "optimization" / "data" / "ercot_dev2"  # the 2024 development rows, in the repo (PROVENANCE.md)
CASES = {  # case -> (source, first day of the default window)
    "2020-02": ("ercot/RTM-2020-02.csv", "2020-02-10"),
    "2021-02": ("ercot/RTM-2021-02.csv", "2021-02-14"),  # Uri: load shed from Feb 15
    "2024-03": ("dev2", "2024-03-12"),
    "2024-05": ("dev2", "2024-05-07"),  # 2024-05-08: HB_WEST RT 3,057, NSPIN 2,150
}
HUB = "HB_HUBAVG"


def dev2_prices(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """HB_HUBAVG RT (15 min) and DA (hourly) as a canonical price frame, and ERCOT's day-ahead system
    load forecast (hourly MW), from the bundled dev2 files (real ERCOT data; optimization/data/ercot_dev2/PROVENANCE.md)."""
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


def forecast_errors(profile: SiteProfile, actuals: Actuals, hook: LearnedPriceForecaster | OnlinePriceModel,
                    hashprice: pd.DataFrame | None) -> dict[str, dict[str, float]]:
    """MAE, pinball and spike hit/false-alarm rates of the rule forecast and the learned one, over
    hourly decisions in the window, each scored on the next 24 h of actual RT prices."""
    rt = actuals.prices[actuals.prices["market"] == "RT"].set_index("interval_start")["price_usd_mwh"]
    rt = rt[~rt.index.duplicated(keep="last")]
    rules, learned = SnapshotForecaster(profile, actuals), SnapshotForecaster(profile, actuals, price_forecaster=hook)
    from hashflex.feeds.hashprice import hashprice_by_day

    acc: dict[str, dict[str, list[np.ndarray]]] = {"rules": {}, "learned": {}}
    for tau in actuals.index[::4]:
        times = pd.date_range(tau, periods=96, freq="15min")
        actual = rt.reindex(times).to_numpy(dtype=float)
        ok = np.isfinite(actual)
        hp = (hashprice_by_day(hashprice, times) if hashprice is not None
              else np.full(96, profile.economics.hashprice_usd_per_ph_day))
        line = breakeven_usd_mwh(profile, hp)
        point_rules = rules(tau, tau, 96).price_usd_mwh
        point_learned = learned(tau, tau, 96).price_usd_mwh  # (the daemon's model fits here when due)
        quantiles = hook.quantiles(times, tau, learned.snapshot(tau)) if isinstance(hook, OnlinePriceModel) \
            else hook.quantiles(times, tau)
        quantiles = quantiles or {q: point_learned for q in QUANTILES}
        for name, point, qs in (("rules", point_rules, {q: point_rules for q in QUANTILES}),
                                ("learned", point_learned, quantiles)):
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


def run_case(name: str, case: str, days: int, hashprice: pd.DataFrame | None, quiet: bool,
             model_config: PriceModelConfig | None = None, learned_as: str = "daemon",
             old: bool = False) -> tuple[dict, dict, dict]:
    source, first_day = CASES[case]
    profile = load_profile(name)
    load = None
    if source == "dev2":
        profile = hub_copy(profile)
        prices, load = dev2_prices(DEV2)
    else:
        prices = load_prices(profile, [bundled_path(source)])
    start = pd.Timestamp(first_day)
    actuals = build_actuals(profile, prices, start, start + pd.Timedelta(days=days), hashprice=hashprice)
    hook = learned_hook(learned_as, profile, actuals, load, model_config)
    progress = Progress.factory(quiet)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    base = run_backtest(profile, actuals, ["mpc", "threshold", "oracle"], progress=progress)
    timings["rules+threshold+oracle"] = time.perf_counter() - started
    started = time.perf_counter()
    learned = run_backtest(profile, actuals, ["mpc"], progress=progress, price_forecaster=hook)
    timings["mpc learned"] = time.perf_counter() - started
    runs = {"mpc rules": base.runs["mpc"], "mpc learned": learned.runs["mpc"],
            "threshold": base.runs["threshold"], "oracle": base.runs["oracle"]}
    schedules = {"mpc rules": base.schedules["mpc"], "mpc learned": learned.schedules["mpc"],
                 "threshold": base.schedules["threshold"], "oracle": base.schedules["oracle"]}
    if old:  # the same MPC with the rules before this round (stability over one interval, floor at the mean)
        started = time.perf_counter()
        with rules_before_round_3():
            before = run_backtest(profile, actuals, ["mpc"], progress=progress)
        timings["mpc rules old"] = time.perf_counter() - started
        runs = {"mpc rules old": before.runs["mpc"], **runs}
        schedules = {"mpc rules old": before.schedules["mpc"], **schedules}
    document = summary_document(BacktestResult(profile, actuals, runs, schedules))
    started = time.perf_counter()
    # A fresh hook for the scoring replay: the daemon's model never refits for an earlier time (it would
    # answer "fitted after this decision", i.e. the rules, for the whole replay).
    scoring_hook = learned_hook(learned_as, profile, actuals, load, model_config) if learned_as == "daemon" else hook
    errors = forecast_errors(profile, actuals, scoring_hook, hashprice)
    timings["forecast scoring"] = time.perf_counter() - started
    hp = actuals.hashprice_usd_per_ph_day
    document["hashprice"] = ("profile constant" if hp is None else f"{hp.min():.1f}..{hp.max():.1f} $/PH/day")
    document["point"] = profile.site.settlement_point
    document["fits"] = hook.counters["price_model_fits"] if isinstance(hook, OnlinePriceModel) else hook.fits
    document["learned_ticks"] = (f"{hook.counters['price_model_learned_ticks']} of "
                                 f"{hook.counters['price_model_learned_ticks'] + hook.counters['price_model_rules_ticks']}"
                                 if isinstance(hook, OnlinePriceModel) else "-")
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
    parser.add_argument("--plan-mean", action="store_true",
                        help="learned mpc plans at the mean of P10/P50/P90 instead of the P50")
    parser.add_argument("--learned-as", choices=("daemon", "backtest"), default="daemon",
                        help="the learned model as the daemon runs it (fit daily after the DAM) or as the "
                             "backtest's self-refitting hook (every retrain_h)")
    parser.add_argument("--old", action="store_true",
                        help="add a row: the rules MPC before this round (stability over one interval, scarcity "
                             "floor at the mean), side by side in the same run")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    model_config = PriceModelConfig(plan_mean=args.plan_mean)
    hashprice = None if args.constant_hashprice else bundled_hashprice()
    if any(CASES[c][0] == "dev2" for c in args.cases) and not DEV2.is_dir():
        print(f"dev2 data not found at {DEV2}; run with --cases 2020-02 2021-02", file=sys.stderr)
        return 2
    wall_started = time.perf_counter()
    header = (f"{'case':28s} {'policy':14s} {'profit $':>12s} {'/oracle':>8s} {'/thresh':>12s} {'MAE':>7s} "
              f"{'pinball':>8s} {'spike hit':>9s} {'false al':>8s} {'switch/d':>9s} {'violations':>10s} {'wall s':>7s}")
    lines = [header, "-" * len(header)]
    notes = []
    for name in args.profiles:
        for case in args.cases:
            started = time.perf_counter()
            document, errors, timings = run_case(name, case, args.days, hashprice, args.quiet, model_config,
                                                 args.learned_as, old=args.old)
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
                err = errors.get(policy.replace("mpc ", "")) if policy in ("mpc rules", "mpc learned") else None
                lines.append(
                    f"{label:28s} {policy:14s} {profit:12,.0f} {fmt_ratio(figures['profit_ratio_to_oracle']):>8s} "
                    f"{vs:>12s} {err['mae'] if err else math.nan:7.1f} {err['pinball'] if err else math.nan:8.1f} "
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
