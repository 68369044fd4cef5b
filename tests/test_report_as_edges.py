"""Edge cases of the AS evidence report a newcomer found (issue 15, report/ancillary.py): reserve
money when an award changes inside an interval, cancelled / late / concurrent deployment rows, one
shortfall rule per row, the award as at the instruction and as later revised, a report on a store
the daemon is still writing, and where the backtest's deployment cost sits in profit.

Every trail is written by the real control loop into a real store (inline HiGHS, simulated fleet,
the real audit recorder), on the SYNTHETIC test site of ``test_report_ancillary`` /
``test_as_deployment_semantics``: 10 hydro blocks of 1 MW, 10 kW each asleep (a block sheds 990 kW),
energy at $200/MWh (only an award keeps a block running); with n blocks running the import is
990 n + 100 kW. Without a plan (no ``tick``) nothing runs: 100 kW, no reserve held.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from test_as_deployment_semantics import MIN, NOW, _award, _awarded_loop, _deploy, _loop
from test_report_ancillary import QUARTER

from hashflex.audit import AuditLog
from hashflex.control.records import AuditRecorder
from hashflex.report import build_report, report_from_records
from hashflex.store import Store

SEC = timedelta(seconds=1)


def _measure(loop, k: int, load_kw: float) -> None:
    loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=load_kw, renewable_kw=0.0, hashrate_th_s=0.0,
                            noise={}, price_usd_mwh=200.0)


def _priced(award_id: str, kw: float, start, end, revision: int = 0, price: float = 150.0):
    """An RRS award at ``price`` $/MW-h (SYNTHETIC)."""
    return _award(award_id, "RRS", kw, revision=revision, start=start, end=end).model_copy(
        update={"price_usd_mw_h": price})


def _report(db: Path, start: str = "2024-06-03T17:00Z", end: str = "2024-06-03T18:00Z") -> dict:
    return build_report(db, start, end)


# ------------------------------------------------------------------------------ 1. withdrawn inside an interval


@pytest.mark.parametrize("running", [False, True])
def test_an_award_withdrawn_inside_an_interval_is_clawed_back_for_the_part_it_was_not_held(
        tmp_path: Path, running: bool) -> None:
    """RRS 4,950 kW at $150/MW-h over 16:00–20:00, received 17:00, withdrawn (revision 1, 0 kW) at
    17:05. Paid 4.95 × 150 × 5/60 = $61.875 for 17:00–17:05. Nothing running (100 kW: 0 kW held):
    the five minutes were not held, clawed back $61.875, net $0 (the report showed $61.875 net: the
    loop measures the interval after the withdrawal, sees no award and writes no hold-short record).
    Five blocks running all interval (5,050 kW): 4,950 kW held, nothing clawed back."""
    db = tmp_path / "withdrawn.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _awarded_loop(None, store, recorder) if running else _loop(None, store, recorder)
        award = _priced("rrs", 4950.0, NOW - timedelta(hours=1), NOW + timedelta(hours=3))
        if not running:
            assert loop.handle_as_award(award, NOW).status == "accepted"
        else:  # _awarded_loop's award has the same id at $20: revise it to $150 from 17:00
            assert loop.handle_as_award(award.model_copy(update={"revision": 1}), NOW).status == "accepted"
        withdrawal = award.model_copy(update={"revision": 2, "reserve_kw": 0.0})
        assert loop.handle_as_award(withdrawal, NOW + 5 * MIN).status == "accepted"
        _measure(loop, 0, 5050.0 if running else 100.0)
        recorder.flush()
        recorder.close()
    economics = _report(db, end="2024-06-03T17:15Z")["economics"]
    assert economics["reserve_payment_usd"] == pytest.approx(61.875, abs=0.01)
    if running:
        assert economics["reserve_clawback_usd"] == pytest.approx(0.0, abs=0.01)
        assert economics["reserve_revenue_usd"] == pytest.approx(61.875, abs=0.01)
    else:
        assert economics["reserve_clawback_usd"] == pytest.approx(61.875, abs=0.01)
        assert economics["reserve_revenue_usd"] == pytest.approx(0.0, abs=0.01)


# ------------------------------------------------------------------------------ 2. starting inside an interval


def test_an_award_starting_inside_an_interval_is_clawed_back_for_its_share_of_it(tmp_path: Path) -> None:
    """RRS 4,950 kW at $150 from 17:05 to 18:00, nothing running. 17:00–17:15: paid 4.95 × 150 × 10/60
    = $123.75; the loop's record charges its 10 minutes (H6: the obligation time-weighted, 4,950 ×
    10/15 = 3,300 kW; before, the whole quarter, $185.625, which the report prorated), $123.75.
    17:15–17:30: $185.625 paid and clawed back. Net $0 for 0 kW held."""
    db = tmp_path / "mid.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(None, store, recorder)
        award = _priced("late-start", 4950.0, NOW + 5 * MIN, NOW + timedelta(hours=1))
        assert loop.handle_as_award(award, NOW).status == "accepted"
        _measure(loop, 0, 100.0)
        _measure(loop, 1, 100.0)
        recorder.flush()
        recorder.close()
    with AuditLog(db, readonly=True) as log:
        shorts = [r.payload for r in log.records(kinds=("reserve_hold_short",))]
    assert shorts[0]["obligation_kw"] == pytest.approx(3300.0)
    assert shorts[0]["clawback_usd"] == pytest.approx(123.75)  # the loop's record: its 10 minutes
    economics = _report(db, end="2024-06-03T17:30Z")["economics"]
    assert economics["reserve_payment_usd"] == pytest.approx(123.75 + 185.625, abs=0.01)
    assert economics["reserve_clawback_usd"] == pytest.approx(123.75 + 185.625, abs=0.01)
    assert economics["reserve_revenue_usd"] == pytest.approx(0.0, abs=0.01)


# ------------------------------------------------------------------------------ 3, 4, 6. rows


def _rows_trail(db: Path) -> None:
    """RRS 4,950 kW awarded (5 blocks, 5,050 kW). ``canc``: recalled at 17:02 (received 17:02:01)
    before the deployment dated 17:02 arrived (17:02:20): cancelled, binds nothing. ``older``: a
    recall dated 17:03 (received first) is older than the deployment dated 17:03:30: it holds.
    ``a``: 990 kW at 17:05. ``b``: 990 kW dated 17:20, arriving 17:40 (late: deadline 17:30).
    No measurement: nothing metered."""
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _awarded_loop(None, store, recorder)
        t = NOW + 2 * MIN
        assert loop.handle_as_deploy(_deploy("canc", t, recalled=True), t + SEC).status == "accepted"
        ack = loop.handle_as_deploy(_deploy("canc", t, 990.0), t + 20 * SEC)
        assert ack.status == "accepted" and "cancelled" in ack.reason
        t = NOW + 3 * MIN
        assert loop.handle_as_deploy(_deploy("older", t, recalled=True), t + SEC).status == "accepted"
        assert loop.handle_as_deploy(_deploy("older", t + 30 * SEC, 990.0), t + 40 * SEC).status == "accepted"
        a = NOW + 5 * MIN
        assert loop.handle_as_deploy(_deploy("a", a, 990.0), a).status == "accepted"
        b = NOW + 20 * MIN
        assert loop.handle_as_deploy(_deploy("b", b, 990.0), b + 20 * MIN).status == "accepted"
        recorder.flush()
        recorder.close()


def test_cancelled_late_and_concurrent_deployment_rows(tmp_path: Path) -> None:
    db = tmp_path / "rows.db"
    _rows_trail(db)
    section = _report(db, end="2024-06-03T19:00Z")["ancillary"]
    rows = {r["deployment_id"]: r for r in section["deployments"]}
    # 3. cancelled: shown so, no window, no shortfall, no metered figures.
    canc = rows["canc"]
    assert canc["status"] == "cancelled" and canc["cancelled"] is True
    assert canc["in_force_from"] is None and canc["in_force_until"] is None and canc["in_force_h"] is None
    assert canc["shortfall_mw"] is None and canc["metered_shortfall_mw"] is None
    assert canc["metered_response_s"] is None and canc["concurrent_with"] == []
    assert section["cancelled_count"] == 1
    # A recall older than its deployment does not end it (the loop holds it): no negative window.
    older = rows["older"]
    assert older["status"] == "accepted" and older["recalled_at"] is None
    assert pd.Timestamp(older["in_force_until"]) > pd.Timestamp(older["in_force_from"])
    # 6. late: in force (held) from its arrival, 17:40, not its instruction, 17:20; its response is
    # still counted from the instruction.
    assert rows["b"]["arrived_late"] is True
    assert rows["b"]["in_force_from"] == "2024-06-03T17:40:00+00:00"
    assert rows["b"]["in_force_h"] == pytest.approx(
        (pd.Timestamp(rows["b"]["in_force_until"]) - pd.Timestamp("2024-06-03T17:40Z")).total_seconds() / 3600)
    # 4. a and b overlap in time (and older with both), with no measurement at all.
    assert rows["a"]["concurrent_with"] == ["b", "older"]
    assert rows["b"]["concurrent_with"] == ["a", "older"]
    assert "canc" not in rows["older"]["concurrent_with"]


def test_a_late_deployment_is_not_assessed_before_it_arrived(tmp_path: Path) -> None:
    """``b`` alone (990 kW dated 17:20, arriving 17:40, deadline 17:30), site at 5,050 kW all along:
    the 17:30 interval started before the site knew of it and is not assessed against it."""
    db = tmp_path / "late.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _awarded_loop(None, store, recorder)
        b = NOW + 20 * MIN
        assert loop.handle_as_deploy(_deploy("b", b, 990.0), b + 20 * MIN).status == "accepted"
        for k in range(4):
            _measure(loop, k, 5050.0)
        recorder.flush()
        recorder.close()
    section = _report(db)["ancillary"]
    starts = {i["interval_start"] for i in section["shortfall_intervals"]}
    assert "2024-06-03T17:30:00+00:00" not in starts and "2024-06-03T17:45:00+00:00" in starts


# ------------------------------------------------------------------------------ 5. one shortfall rule


def _rule_trail(db: Path) -> None:
    """RRS 990 kW awarded for 17:00–20:00 (received 16:50; 1 block runs at 17:00: 1,090 kW). A 1,980
    kW deployment dated 16:58, before the award started, arrives 17:01: limit max(1,090 − 1,980, 0)
    = 0 kW; the fast path leaves 100 kW (idle draw); the site draws 100 kW from then on."""
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(None, store, recorder)
        award = _award("rrs", "RRS", 990.0, start=NOW, end=NOW + timedelta(hours=3))
        assert loop.handle_as_award(award, NOW - 10 * MIN).status == "accepted"
        loop.tick(NOW)
        issued = NOW - 2 * MIN
        assert loop.handle_as_deploy(_deploy("early", issued, 1980.0), NOW + MIN).status == "accepted"
        for k in range(4):
            _measure(loop, k, 100.0)
        recorder.flush()
        recorder.close()


@pytest.mark.parametrize("older_trail", [False, True])
def test_a_rows_commanded_shortfall_uses_the_limit_its_intervals_use(tmp_path: Path, older_trail: bool) -> None:
    """The row's commanded shortfall and its intervals' shortfall come from one rule
    (``control.as_shortfall``) and one limit (``deployment_limit_kw`` at the command). The row once
    said 0.1 MW short (100 kW against 0 kW) while its intervals at the same 100 kW said none (against
    990 kW, the award rise on a trail written before A₀ was kept). The rule changed by decision (the
    limit is measured from the pre-deployment load only: no award moves it): on the live trail and
    on an older one (no ``awarded_at_instruction_kw``, no ``held_at_instruction_kw``) both use 0 kW."""
    from hashflex.report import REPORT_KINDS

    db = tmp_path / "rule.db"
    _rule_trail(db)
    with AuditLog(db, readonly=True) as log:
        records = list(log.records(kinds=REPORT_KINDS))
        verified = log.verify()
    assert {r.payload["awarded_at_instruction_kw"] for r in records if r.kind == "as_performance"} <= {0.0, 990.0}
    if older_trail:
        import dataclasses

        records = [dataclasses.replace(r, payload={k: v for k, v in r.payload.items()
                                                   # a trail written before A0 was kept predates
                                                   # the stacking rule too (no held_at_instruction_kw)
                                                   if k not in ("awarded_at_instruction_kw",
                                                                "held_at_instruction_kw")})
                   if r.kind == "as_performance" else r for r in records]
    audit = {"ok": verified.ok, "records": verified.records, "head_seq": verified.head_seq,
             "head_hash": verified.head_hash, "first_bad_seq": None, "problem": None, "signed_head": None}
    section = report_from_records(records, pd.Timestamp("2024-06-03T16:45Z"), pd.Timestamp("2024-06-03T18:00Z"),
                                  audit=audit)["ancillary"]
    (row,) = section["deployments"]
    assert row["commanded_import_kw"] == pytest.approx(100.0) and row["limit_kw"] == pytest.approx(0.0)
    assert row["metered_intervals"] == 3 and row["metered_import_kw"] == pytest.approx(100.0)
    # limit = max(1,090 − 1,980, 0) on both trails: the 990 kW award does not raise it.
    expected_limit_kw = 0.0
    assert row["commanded_limit_kw"] == pytest.approx(expected_limit_kw)
    for interval in section["shortfall_intervals"]:
        assert interval["binding_limit_kw"] == pytest.approx(expected_limit_kw)
    # The same import against the same limit by the same rule: the same shortfall.
    expected_mw = min(max(100.0 - expected_limit_kw, 0.0), 1980.0) / 1000.0
    assert row["shortfall_mw"] == pytest.approx(expected_mw) and row["metered_shortfall_mw"] == pytest.approx(expected_mw)


# ------------------------------------------------------------------------------ 7. window


def test_metered_response_does_not_depend_on_the_report_window(tmp_path: Path) -> None:
    """``a`` (990 kW at 17:05, limit 4,060 kW); the site drew 5,050 kW at 17:00 and 17:15, 4,060 kW
    from 17:30: under its limit by 17:45, 2,400 s after the instruction, whatever the window that
    shows its row (one that ends before 17:45, or the whole trail)."""
    db = tmp_path / "window.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _awarded_loop(None, store, recorder)
        a = NOW + 5 * MIN
        assert loop.handle_as_deploy(_deploy("a", a, 990.0), a).status == "accepted"
        for k, kw in enumerate([5050.0, 5050.0, 4060.0, 4060.0]):
            _measure(loop, k, kw)
        recorder.flush()
        recorder.close()
    seen = []
    for window in [("2024-06-03T17:05Z", "2024-06-03T17:06Z"), ("2024-06-03T17:00Z", "2024-06-03T17:30Z"),
                   (None, None)]:
        (row,) = build_report(db, *window)["ancillary"]["deployments"]
        seen.append((row["metered_response_s"], row["metered_under_limit_by"]))
    assert seen == [(2400.0, "2024-06-03T17:45:00+00:00")] * 3


# ------------------------------------------------------------------------------ 8. award at instruction and later


def test_a_row_shows_the_award_as_at_the_instruction_and_as_later_cut(tmp_path: Path) -> None:
    """RRS 4,950 kW awarded; 990 kW deployed at 17:05; the award cut to 1,980 kW at 17:30 (its window
    covers the instruction). ``awarded_mw`` stays 4.95 (as known at the instruction: the limits
    book's A₀ rule); ``awarded_latest_mw`` shows the cut, 1.98, and a note says which is which."""
    db = tmp_path / "cut.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _awarded_loop(None, store, recorder)
        a = NOW + 5 * MIN
        assert loop.handle_as_deploy(_deploy("a", a, 990.0), a).status == "accepted"
        cut = _award("rrs", "RRS", 1980.0, revision=1)
        assert loop.handle_as_award(cut, NOW + 30 * MIN).status == "accepted"
        recorder.flush()
        recorder.close()
    section = _report(db)["ancillary"]
    (row,) = section["deployments"]
    assert row["awarded_mw"] == pytest.approx(4.95) and row["awarded_latest_mw"] == pytest.approx(1.98)
    assert row["book_awarded_at_instruction_mw"] == pytest.approx(4.95)  # the book's A0: RRS alone was awarded
    assert any("awarded_latest_mw" in n for n in section["notes"])


# ------------------------------------------------------------------------------ 9. a store still being written


def test_a_report_on_a_running_store_says_what_is_not_final(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """RRS 4,950 kW at $150 from 16:00, nothing running: each quarter is paid $185.625 and clawed
    back $185.625 (the loop writes a hold-short record after each measurement). A report taken when
    the 17:15 measurement was committed but its hold-short record was still queued showed a
    clawback of one quarter against a payment of the whole hour, as final. Now it states the last
    seq it covers and that figures from 17:15 on are not final (its records may be queued), with the
    provisional part of the payment apart; on the complete trail, final through 17:30."""
    db = tmp_path / "running.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(None, store, recorder)
        assert loop.handle_as_award(_priced("rrs", 4950.0, NOW - timedelta(hours=1), NOW + timedelta(hours=3)),
                                    NOW).status == "accepted"
        _measure(loop, 0, 100.0)
        _measure(loop, 1, 100.0)
        recorder.flush()
        recorder.close()
    from hashflex.report import REPORT_KINDS

    with AuditLog(db, readonly=True) as log:
        records = list(log.records(kinds=REPORT_KINDS))
    last_measurement = max(i for i, r in enumerate(records) if r.kind == "measurement")
    assert records[-1].kind == "reserve_hold_short"  # the 17:15 record, after its measurement
    start, end = pd.Timestamp("2024-06-03T17:00Z"), pd.Timestamp("2024-06-03T18:00Z")
    snapshot = records[:last_measurement + 1]  # as read while the writer still held the last record
    audit = {"ok": True, "records": len(snapshot), "head_seq": snapshot[-1].seq, "head_hash": snapshot[-1].hash,
             "first_bad_seq": None, "problem": None, "signed_head": None}
    partial = report_from_records(snapshot, start, end, audit=audit)
    ancillary, economics = partial["ancillary"], partial["economics"]
    assert ancillary["covers_through_seq"] == snapshot[-1].seq
    assert ancillary["final_through"] == "2024-06-03T17:15:00+00:00"
    assert economics["reserve_final_through"] == "2024-06-03T17:15:00+00:00"
    assert economics["reserve_clawback_usd"] == pytest.approx(185.625, abs=0.01)
    assert economics["reserve_provisional_payment_usd"] == pytest.approx(3 * 185.625, abs=0.01)
    assert any("not final" in n for n in economics["notes"])
    complete = _report(db)
    assert complete["ancillary"]["final_through"] == "2024-06-03T17:30:00+00:00"
    assert complete["economics"]["reserve_clawback_usd"] == pytest.approx(2 * 185.625, abs=0.01)
    assert complete["economics"]["reserve_provisional_payment_usd"] == pytest.approx(2 * 185.625, abs=0.01)
    # ``hashflex report`` says so on stderr too (the report itself goes to --out).
    from test_report import _run

    capsys.readouterr()
    assert _run(["report", "--db", str(db), "--from", "2024-06-03T17:00Z", "--to", "2024-06-03T18:00Z",
                 "--format", "json", "--out", str(tmp_path / "report.json")]) == 0
    err = capsys.readouterr().err
    assert "not final" in err and "2024-06-03T17:30:00+00:00" in err and "$371.25" in err


# ------------------------------------------------------------------------------ 10. deployment cost in profit


def test_the_backtest_summary_says_where_the_deployment_cost_sits_in_profit(tmp_path: Path) -> None:
    """One real hour (bundled May 2024 prices, ASSUMED example qualification) of ``mpc+as``: the
    summary table and summary.json's notes say that profit already carries the deployment cost (the
    hash revenue the shed load did not earn) and does not subtract it again."""
    from hashflex.backtest.cli import main as backtest_main
    from hashflex.backtest.summary import summary_table

    out = tmp_path / "as"
    code = backtest_main(["backtest", "--profile", "west_texas", "--ancillary", "example", "--policy", "mpc+as",
                          "--from", "2024-05-08T00:00-05:00", "--to", "2024-05-08T01:00-05:00",
                          "--replan-minutes", "60", "--hashprice", "profile", "--out", str(out), "--quiet"])
    assert code == 0
    document = json.loads((out / "summary.json").read_text())
    assert "as_deployment_cost_usd" in document["policies"]["mpc+as"]
    assert any("as_deployment_cost_usd" in n and "not subtracted again" in n for n in document["notes"])
    table = summary_table(document)
    assert "AS deployment cost $ (in profit, not subtracted)" in table
