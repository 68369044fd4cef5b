"""The `hashflex` command. Each subcommand is a thin shell around library functions."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from hashflex import __version__
from hashflex.frames import iso_date_argument
from hashflex.profile import DEFAULT_PROFILE, ProfileError, load_profile
from hashflex.store.lock import StoreLockedError

log = logging.getLogger("hashflex")


def _timestamp(text: str) -> pd.Timestamp:
    stamp = pd.Timestamp(text)
    if stamp.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a UTC offset, e.g. 2020-02-10T00:00-06:00")
    return stamp


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value


def cmd_plan(args: argparse.Namespace) -> int:
    """``hashflex plan``: solve one schedule from a price file, print its hourly table, optionally write it.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options (:func:`build_parser`).

    Returns
    -------
    int
        0 (a fallback or time-limited solve is a warning on stderr, not an error).

    Raises
    ------
    PlanInputError
        An unusable input or output file (a ValueError: :func:`main` prints it and exits 2).
    ProfileError
        An invalid profile.
    """
    from hashflex.data import bundled_path
    from hashflex.plan import DEFAULT_PRICE_FILE, PlanInputError, load_inputs, plan, summary_table, write_schedule

    profile = load_profile(args.profile)
    prices = Path(args.prices) if args.prices else bundled_path(DEFAULT_PRICE_FILE)
    inputs = load_inputs(profile, prices, args.start, Path(args.renewables) if args.renewables else None)
    _, schedule = plan(profile, inputs, time_limit_s=args.time_limit, deadline_s=args.deadline)
    print(f"{profile.site.name}: {len(schedule.frame)} intervals from "
          f"{schedule.frame.index[0].tz_convert(profile.tz):%Y-%m-%d %H:%M %Z}, prices {prices.name} "
          f"({profile.site.settlement_point})")
    for note in inputs.notes:
        print(f"note: {note}")
    print(summary_table(schedule, profile))
    if schedule.info.status.value in ("failed_fallback", "time_limit"):
        deadline = args.deadline if args.deadline is not None else args.time_limit + 10.0
        print(f"hashflex plan: warning: {schedule.info.status.value}: "
              + ("greedy fallback schedule, not an optimised one" if schedule.info.status.value == "failed_fallback"
                 else f"HiGHS stopped at its {args.time_limit:g} s time limit; best schedule found so far")
              + f" (time limit {args.time_limit:g} s, deadline {deadline:g} s): {schedule.info.message}",
              file=sys.stderr)
    if args.out:
        try:
            write_schedule(schedule, Path(args.out), profile)
        except PlanInputError:
            raise
        print(f"schedule written to {args.out}")
    return 0


def _price_history(profile, rt_path: Path | None, da_path: Path | None) -> "pd.DataFrame":
    """The same reader as the backtest's (``backtest.runner.load_prices``): the RT file, and the DA
    file given (or the bundled ``DAM-*`` beside an ``RTM-*`` file); notes are printed."""
    from hashflex.backtest.runner import load_prices
    from hashflex.data import bundled_path

    prices = load_prices(profile, [rt_path or bundled_path("ercot/RTM-2020-02.csv")], [da_path] if da_path else [])
    for note in prices.attrs.get("notes", []):
        print(f"note: {note}")
    return prices


def cmd_run(args: argparse.Namespace) -> int:
    """``hashflex run``: the controller daemon, or with ``--simulate`` a simulated site on recorded prices.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options (:func:`build_parser`).

    Returns
    -------
    int
        0 when the daemon or the simulation ends normally.

    Raises
    ------
    ValueError
        A bad option (e.g. ``--speed`` < 0), naming it.
    ProfileError
        An invalid profile.
    """
    args.http_port_given = args.http_port is not None or "HASHFLEX_HTTP_PORT" in os.environ
    if args.http_port is None:
        args.http_port = int(os.environ.get("HASHFLEX_HTTP_PORT", "9108"))
    if args.speed < 0 or args.speed != args.speed:
        raise ValueError(f"--speed {args.speed}: must be >= 0 (simulated seconds per real second)")
    profile = load_profile(args.profile)
    if args.simulate:
        return _run_simulated(profile, args)
    from hashflex.control.daemon import run_daemon
    from hashflex.control.http import HttpBindError

    try:
        run_daemon(profile, store_path=args.store, profile_path=args.profile if Path(args.profile).exists() else None,
                   mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port, http_host=args.http_host, http_port=args.http_port,
                   username=os.environ.get("HASHFLEX_MQTT_USERNAME"), password=os.environ.get("HASHFLEX_MQTT_PASSWORD"),
                   tls_ca_file=os.environ.get("HASHFLEX_MQTT_TLS_CA"), time_limit_s=args.time_limit,
                   price_model=args.price_model)
    except HttpBindError as exc:  # raised before the store is opened or anything recorded
        raise ValueError(f"--http-port {args.http_port}: {exc.strerror}") from None
    return 0


def _local_time(text: str | None, profile, *, end: bool = False) -> pd.Timestamp | None:
    """``--from``/``--to`` of `run --simulate`: a local day (YYYY-MM-DD; ``--to`` includes that day)
    or an ISO 8601 time with offset."""
    if text is None:
        return None
    try:
        stamp = pd.Timestamp(text)
    except ValueError as exc:
        raise ValueError(f"--{'to' if end else 'from'} {text!r}: not a date or an ISO 8601 time ({exc})") from None
    if len(text) <= 10:  # a date: local midnight, DST-safe
        day = stamp.date() + pd.Timedelta(days=1).to_pytimedelta() if end else stamp.date()
        return pd.Timestamp(day).tz_localize(profile.tz)
    if stamp.tzinfo is None:
        raise ValueError(f"--{'to' if end else 'from'} {text!r}: give a UTC offset, e.g. 2020-02-10T00:00-06:00")
    return stamp


def _run_simulated(profile, args: argparse.Namespace) -> int:
    site = _live_site(profile, args)  # the URL first, before the prices load: progress from the first second
    try:
        return _simulate_with_site(profile, args, site)
    finally:
        if site is not None:
            site.close()


def _live_site(profile, args: argparse.Namespace):
    """The dashboard of a simulated run (None with ``--no-serve``): bound now, URL printed now. A
    taken default port falls back to a free one (said); a port given explicitly must be free."""
    if not args.serve:
        return None
    import errno

    from hashflex.sim.live import LiveSite

    speed = 1.0 if args.live else args.speed
    try:
        site = LiveSite(profile, host=args.http_host, port=args.http_port, speed=speed, out=sys.stdout)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or args.http_port_given:
            raise ValueError(f"--http-port {args.http_port}: cannot serve the dashboard there ({exc.strerror})") from None
        site = LiveSite(profile, host=args.http_host, port=0, speed=speed, out=sys.stdout)
        print(f"note: port {args.http_port} is in use; serving on {site.server.port} instead")
    site.start()
    pace = ("no pacing (--speed 0)" if speed <= 0 else
            f"one {profile.site.interval_minutes}-minute interval every {profile.site.interval_minutes * 60 / speed:g} s"
            f" (--speed {speed:g})")
    print(f"dashboard: {site.url}  (also {site.url}healthz, {site.url}metrics); {pace}", flush=True)
    return site


def _simulate_with_site(profile, args: argparse.Namespace, site) -> int:
    from hashflex.control.solver import SolveRunner
    from hashflex.messages import DREventMessage
    from hashflex.sim.site import run_simulation, simulation_window

    prices_path = Path(args.prices) if args.prices else None
    prices = _price_history(profile, prices_path, Path(args.day_ahead) if args.day_ahead else None)
    if args.start is not None and args.sim_from is not None:
        raise ValueError("give --from or --start (the same thing), not both")
    window = simulation_window(profile, prices, start=args.start or _local_time(args.sim_from, profile),
                               end=_local_time(args.sim_to, profile, end=True), intervals=args.intervals,
                               source=prices_path.name if prices_path else "the bundled ERCOT RT prices")
    start, intervals = window.start, window.intervals
    events = []
    run_hours = intervals * profile.site.interval_minutes / 60
    if args.dr_demo and profile.dr.issuers and run_hours > 15:
        # SYNTHETIC demonstration event: an emergency (level 3) call for one hour, 14 h into the run.
        begin = (pd.Timestamp(start) + pd.Timedelta(hours=14)).to_pydatetime()
        events.append(DREventMessage(event_id="demo-ers-1", modification_number=0, program="ERS-10",
                                     start=begin, end=begin + pd.Timedelta(hours=1).to_pytimedelta(),
                                     level=3, issuer=profile.dr.issuers[0]))
    # Only the bundled files are known to be real ERCOT prices; a user's file is named as given.
    prices_said = (f"real ERCOT prices ({profile.site.settlement_point})" if args.prices is None
                   else f"prices from {args.prices} ({profile.site.settlement_point})")
    print(f"{profile.site.name}: simulated site, {prices_said}, "
          f"{window.describe(profile.tz)}" + ("; SYNTHETIC demo DR event (level 3) at +14 h" if events else ""))
    for note in window.notes:
        print(f"note: {note}")
    store_path = None
    if args.out is None and site is not None:  # the live site always keeps a store, for its report
        import tempfile

        args.out = tempfile.mkdtemp(prefix="hashflex-simulate-")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        store_path = str(Path(args.out) / "hashflex.db")
        Path(store_path).unlink(missing_ok=True)
    if site is not None:
        site.intervals = intervals
    from hashflex.control.daemon import price_model_for

    model = price_model_for(profile, args.price_model, prices=prices)  # the daemon's, over the recorded prices
    with SolveRunner(time_limit_s=args.time_limit) as solver:  # the daemon's deadline and fallback
        result = run_simulation(profile, prices, pd.Timestamp(start), intervals, dr_events=events,
                                time_limit_s=args.time_limit, store_path=store_path, solver=solver,
                                observer=site, price_forecaster=model)
    frame = result.intervals
    local = frame.index.tz_convert(profile.tz)
    # Column names carry their units (field-standard names); the line above the table says how each hour
    # is summarised (a newcomer could not tell a mean from a maximum, or a measured level from a cap).
    hourly = frame.groupby(local.floor("h")).agg(
        price_usd_mwh=("price_usd_mwh", "mean"), load_mw=("load_after_fast_path_kw", lambda s: s.mean() / 1000),
        import_limit_mw=("import_limit_kw", lambda s: s.min() / 1000),
        **{f"{r.id}_max_dba": (f"noise_measured_dba_{r.id}", "max") for r in profile.receptors},
        **{f"{r.id}_cap_dba": (f"noise_cap_dba_{r.id}", "min") for r in profile.receptors},
        reason=("reason", lambda s: s.mode().iloc[0] if len(s.mode()) else ""))
    hourly.index = hourly.index.strftime("%a %H:%M")
    hourly.index.name = f"hour ({profile.site.timezone})"
    print("per local hour: mean price and site load, lowest import limit, highest SIMULATED meter level and lowest "
          "noise cap per receptor, and the reason the plan gave most often (what limited it)")
    print(hourly.round(2).to_string())
    status = result.loop.status(result.reports[-1].at)
    print(f"ticks {status['counters']['ticks']}, greedy fallback schedules (solver failed or timed out) "
          f"{status['counters']['fallback_schedules']}, fast-path cuts between solves "
          f"{status['counters']['fast_path_actions']}, DR events accepted {status['counters']['dr_accepted']}")
    if model is not None:  # the learned price model (issue 14): which forecast planned the last tick, and why
        print(f"price forecast at the last tick: {model.last_source} ({model.last_reason})")
    for event in events:
        inside = frame[(frame.index >= event.start) & (frame.index < event.end)]
        worst = (inside["grid_import_kw"] - inside["import_limit_kw"]).max()
        print(f"DR {event.event_id}: limit {inside['import_limit_kw'].min():,.0f} kW, "
              f"max import {inside['grid_import_kw'].max():,.0f} kW -> {'held' if worst <= 1e-6 else 'BROKEN'}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out / "simulation.csv")
        print(f"per-interval results written to {out / 'simulation.csv'}; store and audit trail in {store_path} "
              f"(try: hashflex audit verify --db {store_path})")
        report_path = _write_report(Path(store_path), out / "report.html")  # served or not
        print(f"HTML report: {report_path}")
    if site is not None and args.live:
        import signal
        import threading

        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        print(f"--live: the run is over; the dashboard stays at {site.url} until Ctrl-C", flush=True)
        stop.wait()
    return 0


def _write_report(db: Path, html: Path) -> Path:
    """`hashflex report --db <db> --out <html>` in process."""
    from hashflex.report import build_report
    from hashflex.report.render import render

    html.write_text(render(build_report(db, None, None), "html"), encoding="utf-8")
    return html


def cmd_sim(args: argparse.Namespace) -> int:
    """``hashflex sim``: simulated miners and noise meters on a broker, or firmware simulators on loopback TCP.

    With a firmware ``--protocol`` the first stdout line is a JSON object ``{miner_id: [host, port]}``;
    either way it serves until SIGTERM or SIGINT. Everything it serves is SIMULATED.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options (:func:`build_parser`).

    Returns
    -------
    int
        0 after a stop signal.
    """
    import signal
    import threading

    from hashflex.sim.live import run_live_sim

    profile = load_profile(args.profile)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if args.protocol != "mqtt":
        from hashflex.sim.serve import serve

        # first stdout line: {miner_id: [host, port]}; then serve until SIGTERM/SIGINT
        serve(args.protocol, profile, args.miners, stop, sys.stdout, scale=args.scale,
              standard_ports=args.standard_ports)
        return 0
    run_live_sim(profile, args.mqtt_host, args.mqtt_port, stop, noise_period_s=args.noise_period)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``hashflex`` argument parser with every subcommand (plan, backtest, report, limits, run, sim).

    Returns
    -------
    argparse.ArgumentParser
        Each subcommand sets ``handler`` to its ``cmd_*`` function.
    """
    parser = argparse.ArgumentParser(prog="hashflex", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hashflex {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("HASHFLEX_LOG_LEVEL", "WARNING"),
                        help="logging level (default $HASHFLEX_LOG_LEVEL or WARNING)")
    commands = parser.add_subparsers(dest="command", required=True)

    plan = commands.add_parser("plan", help="solve one schedule and print it")
    plan.add_argument("--profile", default=DEFAULT_PROFILE,
                      help=f"site profile YAML, or a bundled profile name (default {DEFAULT_PROFILE})")
    plan.add_argument("--prices", help="price file: ERCOT RT/DAM report, API JSON, or simple CSV "
                                       "(default: bundled ERCOT RT prices, Feb 2020)")
    plan.add_argument("--renewables", help="CSV with interval_start, power_kw (on-site output)")
    plan.add_argument("--start", type=_timestamp, help="horizon start, ISO 8601 with offset (default: first price)")
    plan.add_argument("--out", help="write the full schedule to this .csv or .json")
    plan.add_argument("--time-limit", type=_positive_seconds, default=20.0, help="solver time limit in seconds")
    plan.add_argument("--deadline", type=_positive_seconds, default=None,
                      help="hard wall-clock deadline for the solve in seconds (default: time limit + 10); "
                           "past it the solver is killed and the greedy fallback is used")
    plan.set_defaults(handler=cmd_plan)

    from hashflex.backtest.cli import add_backtest_parsers
    from hashflex.report.cli import add_report_parsers

    add_backtest_parsers(commands)
    add_report_parsers(commands)
    from hashflex.web.limits_cli import add_limits_parser

    add_limits_parser(commands)

    run = commands.add_parser("run", help="run the controller (live, or --simulate on bundled data)")
    run.add_argument("--profile", default=DEFAULT_PROFILE, help="site profile YAML or bundled name")
    run.add_argument("--simulate", action="store_true",
                     help="simulated clock and site over recorded prices; no broker needed")
    run.add_argument("--prices", help="(simulate) RT price file; default bundled ERCOT RT Feb 2020")
    run.add_argument("--day-ahead", help="(simulate) DA price file; default the matching bundled DAM file")
    run.add_argument("--start", type=_timestamp, help="(simulate) start, ISO 8601 with offset (same as --from)")
    run.add_argument("--from", dest="sim_from", type=iso_date_argument("--from"),
                     help="(simulate) first local day (YYYY-MM-DD) or ISO time with offset; default the price "
                          "file's first full local day")
    run.add_argument("--to", dest="sim_to", type=iso_date_argument("--to"), help="(simulate) last local day (inclusive) or ISO end time (exclusive); "
                                                 "the prices must cover the whole window")
    run.add_argument("--intervals", type=int, help="(simulate) intervals to run (default: one horizon, "
                                                   "cut at the end of the prices)")
    run.add_argument("--no-dr-demo", dest="dr_demo", action="store_false",
                     help="(simulate) skip the synthetic demonstration DR event")
    run.add_argument("--out", help="(simulate) directory for per-interval results, the run's store/audit db and "
                                   "report.html (default: a new temporary directory, printed)")
    run.add_argument("--speed", type=float, default=900.0,
                     help="(simulate) simulated seconds per real second (default 900: one 15-minute interval per "
                          "second, a day in about two minutes); 0: as fast as the solver goes")
    run.add_argument("--live", action="store_true",
                     help="(simulate) run on the wall clock (speed 1) and keep serving the dashboard after the run")
    run.add_argument("--no-serve", dest="serve", action="store_false",
                     help="(simulate) no dashboard: run, print the summary, exit")
    run.add_argument("--price-model", choices=("auto", "learned", "rules"),
                     default=os.environ.get("HASHFLEX_PRICE_MODEL", "auto"),
                     help="price forecast: the learned model once it has two days of stored price history, fitted "
                          "daily in the background (auto: when scikit-learn is installed; learned: required), or "
                          "the rules alone (rules); default $HASHFLEX_PRICE_MODEL or auto")
    run.add_argument("--store", default=os.environ.get("HASHFLEX_STORE", "hashflex.db"), help="SQLite store path")
    run.add_argument("--mqtt-host", default=os.environ.get("HASHFLEX_MQTT_HOST", "127.0.0.1"))
    run.add_argument("--mqtt-port", type=int, default=int(os.environ.get("HASHFLEX_MQTT_PORT", "1883")))
    run.add_argument("--http-host", default=os.environ.get("HASHFLEX_HTTP_HOST", "127.0.0.1"))
    run.add_argument("--http-port", type=int, default=None,
                     help="the dashboard, /healthz, /status, /metrics (default $HASHFLEX_HTTP_PORT or 9108; "
                          "0: a free port)")
    run.add_argument("--time-limit", type=float, default=20.0, help="solver time limit in seconds")
    run.set_defaults(handler=cmd_run)

    sim = commands.add_parser("sim", help="simulated miners and noise meters on a broker, for a live `run`")
    sim.add_argument("--profile", default=DEFAULT_PROFILE, help="site profile YAML or bundled name")
    sim.add_argument("--mqtt-host", default=os.environ.get("HASHFLEX_MQTT_HOST", "127.0.0.1"))
    sim.add_argument("--mqtt-port", type=int, default=int(os.environ.get("HASHFLEX_MQTT_PORT", "1883")))
    sim.add_argument("--noise-period", type=float, default=10.0, help="seconds between noise readings")
    sim.add_argument("--protocol", default="mqtt", choices=("mqtt", "luxos", "vnish", "antminer", "whatsminer"),
                     help="mqtt (default): miners on the broker; luxos|vnish|antminer (stock)|whatsminer: miners "
                          "answering that firmware's API on loopback TCP, first stdout line {miner_id: [host, port]}")
    sim.add_argument("--miners", type=int, default=4, help="(firmware protocols) number of simulated miners")
    sim.add_argument("--scale", type=float, default=1.0, help="(firmware protocols) simulated seconds per real second")
    sim.add_argument("--standard-ports", action="store_true",
                     help="(firmware protocols) one 127.1.x.y address per miner on the standard ports (4028, 80; "
                          "port 80 needs root)")
    sim.set_defaults(handler=cmd_sim)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``hashflex`` entry point: parse, run the subcommand, print errors as one line.

    Parameters
    ----------
    argv : list[str], optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The subcommand's exit status; 2 for a profile, value or missing-file error (printed as
        ``hashflex <command>: error: ...``); 130 on Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (ProfileError, ValueError, FileNotFoundError, StoreLockedError) as exc:
        # StoreLockedError: `run` on a store another daemon holds (one daemon per store), refused before any write
        print(f"hashflex {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
