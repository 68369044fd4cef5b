"""`hashflex backtest` and `hashflex evaluate`: thin shells around ``backtest.runner``.

``add_backtest_parsers(subparsers)`` registers both on the main parser's subparsers; each sets
``handler`` (the main CLI calls ``args.handler(args)``).

- ``backtest``: run policies over recorded prices, print the side-by-side table, and with
  ``--out DIR`` write ``intervals_<policy>.csv``, ``summary.json`` (contract in
  ``backtest.summary``), ``backtest.png`` and ``backtest.db`` (a ``hashflex.store.Store`` holding the
  mpc run's records: prices with publication times, schedules as the loop stores them, noise and
  renewable readings, DR events, and the summary under meta key ``backtest_summary``; with both mpc
  and mpc+as, ``backtest_mpc+as.db`` holds the mpc+as run's records alike). When the run has
  ended (its recorder flushed and closed), each store gets meta key ``backtest_run_end``
  (:data:`RUN_END_KEY`: the trail's head then, and the AS qualification's label), from which
  ``hashflex report`` knows the trail is complete (no record can still be queued) and that the
  qualification is ASSUMED (issue 15, H8 finding 6).
  ``--policy mpc+as`` (issue 15) runs mpc with reserve awards and SYNTHETIC deployments through the
  same loop (``backtest.ancillary_loop``), on the hourly AS clearing prices of ``--as-prices``
  (default the bundled May 2024 file, whose LZ_WEST/HB_* energy prices are then the price history
  too); ``--as-mode day-ahead|real-time``; ``--ancillary example|FILE`` adds an ancillary section.
- ``evaluate``: the same backtest with and without K units of a new miner model (a new group; at
  each receptor it is placed as close as the nearest existing group, the conservative choice) →
  added profit per unit per day and simple payback days.
- ``evaluate-mix`` (``backtest.mix``) and ``evaluate-repair`` (``backtest.repair``): K ASICs vs GPU
  nodes; repair vs replace for failing units.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from hashflex.backtest.ancillary import OFFER_RULES
from hashflex.backtest.ancillary_loop import AS_MODES, AS_POLICY
from hashflex.backtest.policies import POLICIES
from hashflex.backtest.runner import Progress, build_actuals, load_prices, run_backtest
from hashflex.backtest.summary import summary_document, summary_table, write_outputs
from hashflex.frames import iso_date_argument
from hashflex.messages import DREventMessage
from hashflex.profile import DEFAULT_PROFILE, SiteProfile, load_profile

__all__ = ["add_backtest_parsers", "cmd_backtest", "cmd_evaluate", "evaluate", "profile_with_candidate"]

DEFAULT_PRICES = "ercot/RTM-2020-02.csv"
DEFAULT_AS_PRICES = "ercot/hourly_dam_rt_as_mcpc_2024-05.csv"  # the only bundled AS clearing prices (DAM MCPC)


def _policies(text: str) -> list[str]:
    names = list(POLICIES) if text == "all" else [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in (*POLICIES, AS_POLICY)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown policy {', '.join(unknown) or text!r}; choose from "
                                         f"{', '.join((*POLICIES, AS_POLICY))} or all (all: without {AS_POLICY})")
    return names


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds") from None
    if not value > 0 or value == math.inf:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value


def _window_end(text: str | None) -> pd.Timestamp | None:
    """``--to``: a date means through the end of that local day; a time is the exclusive end."""
    if text is None:
        return None
    stamp = pd.Timestamp(text)
    return stamp + pd.Timedelta(days=1) if len(text) <= 10 else stamp


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=DEFAULT_PROFILE, help="site profile YAML or bundled name")
    parser.add_argument("--prices", nargs="+", help="price file(s), any format `plan` reads (RT and/or DA); "
                                                    "default the bundled ERCOT RT prices of Feb 2020")
    parser.add_argument("--day-ahead", nargs="+", default=[], help="day-ahead price file(s) (default: the "
                                                                   "DAM-*.csv beside an RTM-*.csv)")
    parser.add_argument("--renewables", help="CSV with interval_start, power_kw (recorded on-site output); "
                                             "default a SYNTHETIC clear-sky shape")
    parser.add_argument("--dr-events", help="JSON list of DR event messages (in/dr payloads) to replay")
    parser.add_argument("--from", dest="start", type=iso_date_argument("--from"),
                        help="first local day (YYYY-MM-DD) or ISO time with offset")
    parser.add_argument("--to", dest="end", type=iso_date_argument("--to"),
                        help="last local day (inclusive) or ISO end time (exclusive)")
    parser.add_argument("--replan-minutes", type=int, default=None,
                        help="mpc: re-solve every N minutes (default: every interval)")
    parser.add_argument("--persistence", type=int, default=1,
                        help="threshold: intervals a price signal must hold before switching (default 1)")
    parser.add_argument("--time-limit", type=float, default=20.0, help="solver time limit per solve, s")
    parser.add_argument("--deadline", type=_positive_seconds, default=None,
                        help="hard wall-clock deadline per solve, s (default: time limit + 10); past it the "
                             "solver is killed and the greedy fallback used, as in the daemon")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated noise sensors")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--hashprice", choices=("bundled", "profile"), default="bundled",
                        help="settle each UTC day at that day's hashprice from the bundled bitcoin data (default; "
                             "the profile's constant where the window lies outside it, with a note), or at the "
                             "profile's constant")


def add_backtest_parsers(subparsers: Any) -> None:
    """Register ``backtest``, ``evaluate``, ``evaluate-mix`` and ``evaluate-repair``.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The main parser's subparsers; each command sets ``handler``.
    """
    backtest = subparsers.add_parser("backtest", help="what hashflex would have earned on recorded prices, "
                                                      "against threshold, always-on and perfect foresight")
    _common_arguments(backtest)
    backtest.add_argument("--policy", type=_policies, default=list(POLICIES),
                          help=f"mpc, {AS_POLICY}, threshold, always-on, oracle, a comma list, or all (default all: "
                               f"every policy but {AS_POLICY})")
    backtest.add_argument("--as-prices", help=f"{AS_POLICY}: hourly file of DAM AS clearing prices (MCPC) and energy "
                                              f"prices (ercot dev2 hourly_hubs_dam_rt_and_dam_as_mcpc.csv shape); "
                                              f"default the bundled May 2024 slice, whose energy prices are then the "
                                              f"price history unless --prices is given")
    backtest.add_argument("--as-mode", choices=AS_MODES, default="day-ahead",
                          help=f"{AS_POLICY}: awards from the day-ahead market (default) or reserve re-decided every "
                               f"interval (RTC+B; only DA AS prices are bundled: they stand in, labelled)")
    backtest.add_argument("--offer-rule", choices=OFFER_RULES, default=None,
                          help=f"{AS_POLICY}, day-ahead case: what an offer values a MW of reserve at: D-1's MCPC "
                               f"(price-taking, the default) or the expected MCPC less the real-time running risk "
                               f"of the 28 days before the DAM close (rt-risk)")
    backtest.add_argument("--ancillary", help=f"{AS_POLICY}: an ancillary section (YAML/JSON file) for a profile "
                                              f"without one, or 'example' for the ASSUMED west_texas qualification")
    backtest.add_argument("--out", help="directory for intervals_*.csv, summary.json, backtest.png, backtest.db")
    backtest.set_defaults(handler=cmd_backtest)

    evaluate_parser = subparsers.add_parser("evaluate", help="added profit and payback of K units of a new model")
    _common_arguments(evaluate_parser)
    evaluate_parser.add_argument("--model-power-kw", type=float, required=True)
    evaluate_parser.add_argument("--model-hashrate-th-s", type=float, required=True)
    evaluate_parser.add_argument("--model-sound-dba", type=float, required=True, help="sound power level Lw")
    evaluate_parser.add_argument("--unit-price-usd", type=float, required=True)
    evaluate_parser.add_argument("--units", type=int, required=True)
    evaluate_parser.add_argument("--model-name", default="candidate")
    evaluate_parser.add_argument("--policy", type=_policies, default=["mpc"],
                                 help="policy to evaluate under (default mpc)")
    evaluate_parser.set_defaults(handler=cmd_evaluate)

    from hashflex.backtest.mix import add_mix_parser  # issue 16: ASICs vs GPU nodes
    from hashflex.backtest.repair import add_repair_parser  # issue 17: repair vs replace

    add_mix_parser(subparsers)
    add_repair_parser(subparsers)


RUN_END_KEY = "backtest_run_end"  # read by hashflex.report (BACKTEST_RUN_END_KEY; a sibling package: not imported)
ASSUMED_QUALIFICATION = ("ASSUMED: EXAMPLE_WEST_TEXAS_ANCILLARY (--ancillary example), an assumed qualification, "
                         "not a real registration")


def _qualification(args: argparse.Namespace) -> str | None:
    """The AS qualification's label for the summary's notes and the report: ``--ancillary example`` is
    ASSUMED (None otherwise: the profile's own section, or a FILE the user gave, is not labelled)."""
    return ASSUMED_QUALIFICATION if getattr(args, "ancillary", None) == "example" else None


def _mark_run_end(store: Any, path: Path, qualification: str | None) -> None:
    """Write :data:`RUN_END_KEY` to ``store``: the head of the trail at ``path`` now that the run has
    ended (``audit_head_seq``, ``audit_head_hash``; the run's recorder is flushed and closed, so a
    record after it was written by something else) and ``as_qualification``."""
    from hashflex.audit import AuditLog

    with AuditLog(path, readonly=True) as log:
        head = log.head()
    store.set_meta(RUN_END_KEY, {"audit_head_seq": None if head is None else head[0],
                                 "audit_head_hash": None if head is None else head[1],
                                 "as_qualification": qualification})


def _with_ancillary(profile: SiteProfile, args: argparse.Namespace) -> SiteProfile:
    """The profile with ``--ancillary`` applied (``example``: the ASSUMED west_texas qualification)."""
    text = getattr(args, "ancillary", None)
    if not text:
        return profile
    from hashflex.backtest.ancillary import EXAMPLE_WEST_TEXAS_ANCILLARY, with_ancillary

    if text == "example":
        print(f"note: ancillary section: {ASSUMED_QUALIFICATION}", file=sys.stderr)
        return with_ancillary(profile, EXAMPLE_WEST_TEXAS_ANCILLARY)
    import yaml

    section = yaml.safe_load(Path(text).read_text(encoding="utf-8"))
    return with_ancillary(profile, section.get("ancillary", section) if isinstance(section, dict) else section)


def _as_market(args: argparse.Namespace, profile: SiteProfile) -> Any:
    """The hourly AS market for ``mpc+as`` (None when the policy is not run)."""
    if AS_POLICY not in (getattr(args, "policy", None) or []):
        return None
    from hashflex.backtest.ancillary import load_hourly_market
    from hashflex.data import bundled_path

    return load_hourly_market(args.as_prices or bundled_path(DEFAULT_AS_PRICES), profile.site.settlement_point.lower())


def _inputs(args: argparse.Namespace, profile: SiteProfile):  # noqa: ANN202 - Actuals
    from hashflex.data import bundled_path
    from hashflex.plan import read_renewables_csv

    as_market = _as_market(args, profile)
    if as_market is not None and not args.prices:  # the AS file's own energy prices are the history
        from hashflex.backtest.ancillary import market_price_frame

        prices = market_price_frame(as_market, profile.site.settlement_point)
    else:
        prices = load_prices(profile, args.prices or [bundled_path(DEFAULT_PRICES)], args.day_ahead or [])
    for note in prices.attrs.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    renewables = (read_renewables_csv(Path(args.renewables), sum(r.capacity_kw for r in profile.renewables))
                  if args.renewables else None)
    events = []
    if args.dr_events:
        payload = json.loads(Path(args.dr_events).read_text(encoding="utf-8"))
        events = [DREventMessage.model_validate(item) for item in (payload if isinstance(payload, list) else [payload])]
    if getattr(args, "hashprice", "profile") == "bundled":
        from hashflex.feeds.hashprice import bundled_hashprice

        try:
            return build_actuals(profile, prices, args.start, _window_end(args.end), renewables=renewables,
                                 dr_events=events, hashprice=bundled_hashprice(), as_market=as_market)
        except ValueError as exc:
            if not str(exc).startswith("hashprice:"):
                raise
            print(f"note: {exc}; the window is settled at the profile's "
                  f"{profile.economics.hashprice_usd_per_ph_day:g} $/PH/day", file=sys.stderr)
    return build_actuals(profile, prices, args.start, _window_end(args.end), renewables=renewables, dr_events=events,
                         as_market=as_market)


def _run(profile: SiteProfile, actuals: Any, args: argparse.Namespace, policies: list[str], store: Any = None,
         as_store: Any = None) -> Any:
    return run_backtest(profile, actuals, policies, replan_minutes=args.replan_minutes, time_limit_s=args.time_limit,
                        persistence=args.persistence, seed=args.seed, store=store, as_store=as_store,
                        progress=Progress.factory(args.quiet), deadline_s=args.deadline,
                        as_mode=getattr(args, "as_mode", "day-ahead"), offer_rule=getattr(args, "offer_rule", None))


AS_TRAIL = f"backtest_{AS_POLICY}.db"  # the mpc+as trail when mpc runs too (backtest.db holds mpc's)


def _option_notes(args: argparse.Namespace, stored: bool) -> list[str]:
    """What the command line asked that the policies run do not use, and which run backtest.db holds
    (newcomer findings: options silently ignored; a report on the db showed mpc's figures only)."""
    notes = []
    if AS_POLICY not in args.policy:
        if getattr(args, "offer_rule", None) is not None:
            notes.append(f"--offer-rule applies to {AS_POLICY} only: ignored (policies {', '.join(args.policy)})")
        if getattr(args, "as_mode", "day-ahead") != "day-ahead":
            notes.append(f"--as-mode applies to {AS_POLICY} only: ignored (policies {', '.join(args.policy)})")
    if stored:
        recorded = "mpc" if "mpc" in args.policy else AS_POLICY
        notes.append(f"backtest.db holds the audit trail of the {recorded} run (what `hashflex report --db` reads)")
        if recorded == "mpc" and AS_POLICY in args.policy:
            notes.append(f"{AS_TRAIL} holds the audit trail of the {AS_POLICY} run (`hashflex report --db` on it "
                         "gives the reserve evidence)")
    return notes


def cmd_backtest(args: argparse.Namespace) -> int:
    """``hashflex backtest``: run the policies, print the table and notes, write ``--out``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``backtest`` arguments.

    Returns
    -------
    int
        The exit code (0).
    """
    profile = _with_ancillary(load_profile(args.profile), args)
    actuals = _inputs(args, profile)
    local = actuals.index.tz_convert(profile.tz)
    print(f"{profile.site.name}: backtest {local[0]:%Y-%m-%d %H:%M} .. "
          f"{(local[-1] + actuals.step):%Y-%m-%d %H:%M %Z} ({actuals.days:g} days, {len(actuals.index)} intervals), "
          f"{profile.site.settlement_point} RT prices; policies {', '.join(args.policy)}"
          + (f"; mpc re-plans every {args.replan_minutes} min" if args.replan_minutes else ""))
    store = as_store = None
    out = Path(args.out) if args.out else None
    if out is not None and ("mpc" in args.policy or AS_POLICY in args.policy):
        from hashflex.store import Store

        out.mkdir(parents=True, exist_ok=True)
        (out / "backtest.db").unlink(missing_ok=True)
        (out / AS_TRAIL).unlink(missing_ok=True)  # a stale one from an earlier run would be read as this run's
        store = Store(out / "backtest.db")
        _store_prices(store, actuals)
        if "mpc" in args.policy and AS_POLICY in args.policy:  # each loop's trail (newcomer: only mpc's was kept)
            as_store = Store(out / AS_TRAIL)
            _store_prices(as_store, actuals)
    try:
        result = _run(profile, actuals, args, args.policy, store, as_store)
        qualification = _qualification(args)
        # The summary says the qualification is ASSUMED as the report of its trail does (H8 finding 6).
        labels = [f"AS qualification: {qualification}"] if qualification and AS_POLICY in args.policy else []
        document = summary_document(result, labels)
        print(summary_table(document))
        for note in document["notes"] + _option_notes(args, store is not None):
            print(f"note: {note}")
        if out is not None:
            from hashflex.backtest.plot import plot_backtest

            written = write_outputs(result, out, labels)
            plot_backtest(result, out / "backtest.png")
            for kept, path in ((store, out / "backtest.db"), (as_store, out / AS_TRAIL)):
                if kept is not None:
                    kept.set_meta("backtest_summary", document)
                    # The AS run's trail: backtest_mpc+as.db, or backtest.db when mpc did not run.
                    holds_as = kept is as_store or (AS_POLICY in args.policy and "mpc" not in args.policy)
                    _mark_run_end(kept, path, qualification if holds_as else None)
            print(f"written to {out}: {', '.join(sorted(p.name for p in written.values()))}, backtest.png"
                  + (", backtest.db" if store is not None else "") + (f", {AS_TRAIL}" if as_store is not None else ""))
    finally:
        for kept in (store, as_store):
            if kept is not None:
                kept.close()
    return 0


def _store_prices(store: Any, actuals: Any) -> None:
    """Recorded prices into the store with the times they were published (as the daemon's feed would)."""
    from hashflex.sim.site import published_at

    prices = actuals.prices.copy()
    if "published_at" not in prices.columns:
        prices["published_at"] = published_at(prices)
    columns = ["interval_start", "interval_end", "settlement_point", "market", "price_usd_mwh", "published_at"]
    # One contract check and one stream of rows (issue 18: a frame and a check per publication time
    # took 15 s for a month of 15-minute prices); each row received when published, as before.
    store.put_price_history(prices[columns].reset_index(drop=True))


# ---------------------------------------------------------------------------------------- evaluate

def profile_with_candidate(profile: SiteProfile, *, power_kw: float, hashrate_th_s: float, sound_dba: float,
                           units: int, name: str = "candidate") -> SiteProfile:
    """The profile plus a group of ``units`` new miners with one ``stock`` mode. At each receptor the
    group is as close as the nearest existing group (lowest attenuation): the conservative placement."""
    data = profile.model_dump()
    group_id = "new_" + "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    idle = min(g.idle_power_kw for g in profile.miner_groups)
    data["miner_groups"].append({"id": group_id, "model": name, "units": units, "idle_power_kw": idle,
                                 "modes": [{"name": "stock", "power_kw": power_kw, "hashrate_th_s": hashrate_th_s,
                                            "sound_power_dba": sound_dba}]})
    for receptor, spec in zip(data["receptors"], profile.receptors):
        nearest = min(spec.attenuation_from(g.id) for g in profile.miner_groups)
        if math.isfinite(nearest):
            receptor.setdefault("attenuation_db", {})[group_id] = nearest
    return SiteProfile.model_validate(data)


def evaluate(profile: SiteProfile, actuals: Any, *, candidate: SiteProfile, units: int, unit_price_usd: float,
             policies: list[str], **kwargs: Any) -> dict[str, Any]:
    """Added profit per unit per day and simple payback (days) of the candidate units, per policy."""
    base = summary_document(run_backtest(profile, actuals, policies, **kwargs))
    extended = summary_document(run_backtest(candidate, actuals, policies, **kwargs))
    days = actuals.days
    out = {}
    for name in policies:
        added = extended["policies"][name]["profit_usd"] - base["policies"][name]["profit_usd"]
        per_unit_day = added / units / days
        out[name] = {"base_profit_usd": base["policies"][name]["profit_usd"],
                     "with_units_profit_usd": extended["policies"][name]["profit_usd"],
                     "added_profit_usd_per_unit_day": per_unit_day,
                     "payback_days": unit_price_usd / per_unit_day if per_unit_day > 0 else math.inf,
                     # solves past their deadline (greedy schedules): the comparison is less sharp
                     "fallback_schedules": (base["policies"][name].get("fallback_schedules", 0)
                                            + extended["policies"][name].get("fallback_schedules", 0)),
                     "solves": base["policies"][name].get("solves", 0) + extended["policies"][name].get("solves", 0)}
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``hashflex evaluate``: added profit and payback of K units of a new model; prints the answer.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    int
        The exit code (0).
    """
    profile = load_profile(args.profile)
    actuals = _inputs(args, profile)
    candidate = profile_with_candidate(profile, power_kw=args.model_power_kw, hashrate_th_s=args.model_hashrate_th_s,
                                       sound_dba=args.model_sound_dba, units=args.units, name=args.model_name)
    results = evaluate(profile, actuals, candidate=candidate, units=args.units, unit_price_usd=args.unit_price_usd,
                       policies=args.policy, replan_minutes=args.replan_minutes, time_limit_s=args.time_limit,
                       persistence=args.persistence, seed=args.seed,
                       progress=Progress.factory(args.quiet), deadline_s=args.deadline)
    print(f"{profile.site.name}: {args.units} × {args.model_name} ({args.model_power_kw} kW, "
          f"{args.model_hashrate_th_s} TH/s, Lw {args.model_sound_dba} dB(A)) over {actuals.days:g} days")
    for name, r in results.items():
        payback = "never (no added profit)" if math.isinf(r["payback_days"]) else f"{r['payback_days']:,.0f} days"
        print(f"  {name}: profit ${r['base_profit_usd']:,.0f} -> ${r['with_units_profit_usd']:,.0f}; "
              f"added ${r['added_profit_usd_per_unit_day']:,.2f} per unit per day; simple payback {payback}")
        if r["fallback_schedules"]:
            print(f"note: {name}: {r['fallback_schedules']} of {r['solves']} solves fell back to the greedy schedule "
                  f"(solver deadline {args.deadline if args.deadline is not None else args.time_limit + 10:g} s)")
    for note in actuals.notes:
        print(f"note: {note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (until the main CLI wires the parsers in)."""
    parser = argparse.ArgumentParser(prog="hashflex")
    add_backtest_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
