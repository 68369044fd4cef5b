"""The `hashflex` command. Each subcommand is a thin shell around library functions."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from hashflex import __version__
from hashflex.profile import DEFAULT_PROFILE, ProfileError, load_profile

log = logging.getLogger("hashflex")


def _timestamp(text: str) -> pd.Timestamp:
    stamp = pd.Timestamp(text)
    if stamp.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a UTC offset, e.g. 2020-02-10T00:00-06:00")
    return stamp


def cmd_plan(args: argparse.Namespace) -> int:
    from hashflex.data import bundled_path
    from hashflex.plan import DEFAULT_PRICE_FILE, PlanInputError, load_inputs, plan, summary_table, write_schedule

    profile = load_profile(args.profile)
    prices = Path(args.prices) if args.prices else bundled_path(DEFAULT_PRICE_FILE)
    inputs = load_inputs(profile, prices, args.start, Path(args.renewables) if args.renewables else None)
    _, schedule = plan(profile, inputs, time_limit_s=args.time_limit)
    print(f"{profile.site.name}: {len(schedule.frame)} intervals from "
          f"{schedule.frame.index[0].tz_convert(profile.tz):%Y-%m-%d %H:%M %Z}, prices {prices.name} "
          f"({profile.site.settlement_point})")
    for note in inputs.notes:
        print(f"note: {note}")
    print(summary_table(schedule, profile))
    if args.out:
        try:
            write_schedule(schedule, Path(args.out), profile)
        except PlanInputError:
            raise
        print(f"schedule written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashflex", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hashflex {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    commands = parser.add_subparsers(dest="command", required=True)

    plan = commands.add_parser("plan", help="solve one schedule and print it")
    plan.add_argument("--profile", default=DEFAULT_PROFILE,
                      help=f"site profile YAML, or a bundled profile name (default {DEFAULT_PROFILE})")
    plan.add_argument("--prices", help="price file: ERCOT RT/DAM report, API JSON, or simple CSV "
                                       "(default: bundled ERCOT RT prices, Feb 2020)")
    plan.add_argument("--renewables", help="CSV with interval_start, power_kw (on-site output)")
    plan.add_argument("--start", type=_timestamp, help="horizon start, ISO 8601 with offset (default: first price)")
    plan.add_argument("--out", help="write the full schedule to this .csv or .json")
    plan.add_argument("--time-limit", type=float, default=20.0, help="solver time limit in seconds")
    plan.set_defaults(handler=cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (ProfileError, ValueError, FileNotFoundError) as exc:
        print(f"hashflex {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
