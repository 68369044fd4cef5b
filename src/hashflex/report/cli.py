"""``hashflex report`` and ``hashflex audit verify|sign``: register with :func:`add_report_parsers`.

::

    hashflex report [--from 2026-03-01 --to 2026-03-31] [--db hashflex.db] [--format html|json|csv]
                    [--out FILE] [--recs FILE] [--high-price 100] [--dr-tolerance-kw 0]
                    [--signature hf-audit-v1:...] [--export-dir DIR]

Without ``--from``/``--to`` the report covers the whole trail. ``--signature`` checks a signed head
and shows the result in the report. ``--export-dir`` also writes ``intervals.csv`` (the period's
time series, UTC) and ``dr_<event>.csv`` (settlement rows per DR event).
    hashflex audit verify [--db hashflex.db] [--signature hf-audit-v1:...]   # exit 0 pass, 1 fail
    hashflex audit sign [--db hashflex.db]       # prints a signed head (key: HASHFLEX_AUDIT_HMAC_KEY)

``--db`` defaults to env ``HASHFLEX_DB``, else ``hashflex.db``. A report on a chain that fails
verification is still written (marked FAILED at the top) and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hashflex.audit import AuditError, AuditLog, verify_file
from hashflex.frames import iso_date_argument

__all__ = ["add_report_parsers", "cmd_audit_sign", "cmd_audit_verify", "cmd_report"]

DEFAULT_DB = "hashflex.db"


def _db(args: argparse.Namespace) -> Path:
    path = Path(args.db or os.environ.get("HASHFLEX_DB") or DEFAULT_DB)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such database")
    return path


def cmd_report(args: argparse.Namespace) -> int:
    """``hashflex report``: build the report of the audit trail for the period and write it (HTML,
    JSON or CSV; per-interval and settlement exports with ``--export-dir``).

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``report`` arguments.

    Returns
    -------
    int
        Exit status: 0, or 1 when the audit chain or the signed head fails.

    Raises
    ------
    ValueError
        An unknown format or a bad period.
    FileNotFoundError
        The database does not exist.
    """
    from hashflex.report import build_report
    from hashflex.report.render import render

    fmt = args.format or (Path(args.out).suffix.lstrip(".").lower() if args.out else "") or "html"
    if fmt not in ("html", "json", "csv"):
        raise ValueError(f"format {fmt!r}: expected html, json or csv")
    report = build_report(_db(args), args.start, args.end, recs_file=args.recs,
                          high_price_usd_mwh=args.high_price, dr_tolerance_kw=args.dr_tolerance_kw,
                          signature=args.signature)
    text = render(report, fmt)
    if args.export_dir:
        from hashflex.report.export import write_exports

        for path in write_exports(report, args.export_dir):
            print(f"export written to {path}")
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"report ({fmt}) written to {args.out}")
    else:
        sys.stdout.write(text)
    audit = report["report"]["audit"]
    if report["report"].get("simulated"):
        print("note: SIMULATED data: " + report["report"]["provenance"]["detail"], file=sys.stderr)
    ancillary = report.get("ancillary") or {}
    if ancillary.get("qualification"):  # a backtest's ASSUMED qualification (H8 finding 6), as its summary says
        print(f"note: AS qualification: {ancillary['qualification']}", file=sys.stderr)
    provisional = (report.get("economics") or {}).get("reserve_provisional_payment_usd") or 0.0
    if provisional > 0 or ancillary.get("provisional_interval_count"):
        # Issue 15: a report on a store the daemon is still writing is not presented as final.
        print(f"note: ancillary figures after {ancillary.get('final_through') or 'the first interval'} are not final "
              f"(trail read through seq {ancillary.get('covers_through_seq')}; ${provisional:,.2f} of reserve "
              f"payment provisional): records may still be queued", file=sys.stderr)
    if not audit["ok"]:
        print(f"warning: audit chain FAILED at seq {audit['first_bad_seq']}: {audit['problem']}", file=sys.stderr)
        return 1
    signed = audit.get("signed_head")
    if signed is not None and not signed["ok"]:
        print(f"warning: signed head FAILED: {signed['problem']}", file=sys.stderr)
        return 1
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    # Fails closed (exit 1, one line): a missing, empty or non-SQLite file, or no records (verify_file).
    """``hashflex audit verify``: check the audit chain (and a signed head) of a database; fails
    closed (exit 1, one line) for a missing, empty or non-SQLite file, or no records.

    Parameters
    ----------
    args : argparse.Namespace
        ``db``, ``signature``.

    Returns
    -------
    int
        0 when the chain (and signature) verify, else 1.
    """
    path = Path(args.db or os.environ.get("HASHFLEX_DB") or DEFAULT_DB)
    try:
        result = verify_file(path, args.signature)
    except AuditError as exc:
        print(f"audit verify: {exc}", file=sys.stderr)
        return 1
    if result.ok:
        print(result.describe() + (" ; signed head matches" if args.signature else ""))
        return 0
    print(result.describe(), file=sys.stderr)
    return 1


def cmd_audit_sign(args: argparse.Namespace) -> int:
    """``hashflex audit sign``: print the signed head of the trail (keep the line off the box).

    Parameters
    ----------
    args : argparse.Namespace
        ``db``.

    Returns
    -------
    int
        0, or 1 when the chain does not verify or no HMAC key is set.
    """
    log = AuditLog(_db(args), readonly=True)
    try:
        print(log.sign_head())
    except AuditError as exc:
        print(f"audit sign: {exc}", file=sys.stderr)
        return 1
    finally:
        log.close()
    return 0


def add_report_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report`` and ``audit {verify,sign}`` to the ``hashflex`` subcommands (``handler`` set).

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The ``hashflex`` command's subparsers.
    """
    report = subparsers.add_parser("report", help="sustainability and DR report from the audit trail")
    report.add_argument("--from", dest="start", type=iso_date_argument("--from"),
                        help="period start: a date (site-local midnight) or ISO time with offset; "
                             "default the trail's first measured interval")
    report.add_argument("--to", dest="end", type=iso_date_argument("--to"),
                        help="period end: a date (included, to the next midnight) or ISO time (excluded); "
                             "default the end of the trail's last measured interval")
    report.add_argument("--signature", help="signed head from 'hashflex audit sign' to verify and show "
                                            "(key: HASHFLEX_AUDIT_HMAC_KEY); a mismatch exits 1")
    report.add_argument("--export-dir", help="also write intervals.csv and dr_<event>.csv (UTC) here")
    report.add_argument("--db", help=f"database (default $HASHFLEX_DB or {DEFAULT_DB})")
    report.add_argument("--format", choices=("html", "json", "csv"), help="default: from --out suffix, else html")
    report.add_argument("--out", help="write to this file (default: stdout)")
    report.add_argument("--recs", help="RECs file (CSV or JSON with mwh; optional period, residual mix factor)")
    report.add_argument("--high-price", type=float, default=100.0,
                        help="USD/MWh at or above which an interval counts as high-price (default 100)")
    report.add_argument("--dr-tolerance-kw", type=float, default=0.0,
                        help="kW over a DR limit still counted as compliant (default 0)")
    report.set_defaults(handler=cmd_report)

    audit = subparsers.add_parser("audit", help="check the audit trail")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    verify = actions.add_parser("verify", help="verify the hash chain (exit 0 pass, 1 fail)")
    verify.add_argument("--db", help=f"database (default $HASHFLEX_DB or {DEFAULT_DB})")
    verify.add_argument("--signature", help="also check a signed head from 'audit sign' (needs the HMAC key)")
    verify.set_defaults(handler=cmd_audit_verify)
    sign = actions.add_parser("sign", help="print an HMAC-signed chain head (key in HASHFLEX_AUDIT_HMAC_KEY)")
    sign.add_argument("--db", help=f"database (default $HASHFLEX_DB or {DEFAULT_DB})")
    sign.set_defaults(handler=cmd_audit_sign)
