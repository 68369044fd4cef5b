"""Audit trail: the hash chain as specified, tampering of every kind named at the first bad record,
HMAC-signed heads, atomic appends (own transaction, caller's transaction, the store's writer), the
payload helpers and the ``audit verify`` command."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from hashflex.audit import (
    GENESIS,
    HMAC_ENV,
    AuditError,
    AuditLog,
    append_in,
    append_with_store,
    canonical_json,
    config_payload,
    guard_action_payload,
    input_summary_payload,
    laeq_dba,
    measurement_payload,
    noise_interval_summary,
    schedule_payload,
    setpoints_payload,
)
from hashflex.report.cli import add_report_parsers

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
N = 6


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "site.db"
    with AuditLog(path) as log:
        for i in range(N):
            log.append("measurement", {"i": i, "import_kw": 100.5 + i, "note": "bé"}, T0 + timedelta(minutes=15 * i))
    return path


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def rows(path: Path) -> list[tuple]:
    with raw(path) as conn:
        return conn.execute("SELECT seq, at_utc, kind, payload, prev_hash, hash FROM audit_log ORDER BY seq").fetchall()


def verify(path: Path):
    with AuditLog(path, readonly=True) as log:
        return log.verify()


def spec_hash(prev: str, seq: int, at: str, kind: str, payload: dict) -> str:
    """The chain rule written out again from the spec, independent of the module."""
    body = json.dumps({"seq": seq, "at": at, "kind": kind, "payload": payload}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev + body).encode("utf-8")).hexdigest()


def renumber(conn: sqlite3.Connection, from_seq: int, delta: int) -> None:
    conn.execute("UPDATE audit_log SET seq = seq + 100000 WHERE seq >= ?", (from_seq,))
    conn.execute("UPDATE audit_log SET seq = seq - 100000 + ? WHERE seq >= 100000", (delta,))


# --------------------------------------------------------------------------- the chain as specified


def test_chain_recomputes_from_the_spec(db: Path) -> None:
    prev = GENESIS
    for seq, at, kind, text, prev_hash, digest in rows(db):
        payload = json.loads(text)
        assert text == json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert at.endswith("Z") and len(at) == len("2026-03-02T12:00:00.000000Z")
        assert prev_hash == prev
        assert digest == spec_hash(prev, seq, at, kind, payload)
        prev = digest
    result = verify(db)
    assert result.ok and result.records == N and result.head_seq == N and result.head_hash == prev
    assert "bé" in rows(db)[0][3]  # UTF-8, not \\u escapes


def test_canonical_json_floats_and_refusals() -> None:
    assert canonical_json({"b": 0.1, "a": 1, "c": 1.0}) == '{"a":1,"b":0.1,"c":1.0}'
    with pytest.raises(AuditError):
        canonical_json({"x": math.nan})
    with pytest.raises(AuditError):
        canonical_json({"x": math.inf})


def test_append_refuses_unknown_kind_and_naive_time(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.db") as log:
        with pytest.raises(AuditError, match="kind"):
            log.append("gossip", {}, T0)
        with pytest.raises(AuditError, match="naive"):
            log.append("config", {}, datetime(2026, 1, 1))
        assert log.records() == []


def test_empty_trail_verifies(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "e.db") as log:
        result = log.verify()
    assert result.ok and result.records == 0 and result.head_seq is None


# --------------------------------------------------------------------------- tampering, first bad record named


def test_edited_payload(db: Path) -> None:
    with raw(db) as conn:
        text = conn.execute("SELECT payload FROM audit_log WHERE seq = 3").fetchone()[0]
        conn.execute("UPDATE audit_log SET payload = ? WHERE seq = 3", (text.replace("102.5", "2.5"),))
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 3 and "edited" in result.problem


@pytest.mark.parametrize(("column", "value", "seq"), [
    ("at_utc", "2026-03-02T12:31:00.000000Z", 4),
    ("kind", "config", 2),
    ("seq", 7, 6),  # the last record moved to a later seq: a gap
])
def test_edited_time_kind_or_seq(db: Path, column: str, value: object, seq: int) -> None:
    with raw(db) as conn:
        conn.execute(f"UPDATE audit_log SET {column} = ? WHERE seq = ?", (value, seq))
    result = verify(db)
    assert not result.ok and result.first_bad_seq == seq


def test_payload_reformatted_is_caught(db: Path) -> None:
    with raw(db) as conn:
        text = conn.execute("SELECT payload FROM audit_log WHERE seq = 5").fetchone()[0]
        conn.execute("UPDATE audit_log SET payload = ? WHERE seq = 5", (text.replace(",", ", "),))
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 5


def test_deleted_record_leaves_a_gap(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 3")
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 3 and "deleted" in result.problem


def test_deleted_record_with_renumbering(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 3")
        renumber(conn, 4, -1)
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 3 and "deleted" in result.problem


def test_deleted_first_record(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 1")
    result = verify(db)
    assert result.first_bad_seq == 1 and "deleted" in result.problem


def test_inserted_record_with_made_up_hash(db: Path) -> None:
    prev = rows(db)[1][5]
    with raw(db) as conn:
        renumber(conn, 3, +1)
        conn.execute("INSERT INTO audit_log VALUES (3, ?, 'measurement', ?, ?, ?)",
                     ("2026-03-02T12:31:00.000000Z", '{"i":99}', prev, "f" * 64))
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 3 and "inserted" in result.problem


def test_inserted_record_with_correct_own_hash(db: Path) -> None:
    """A forger who knows the rule chains the new record correctly: the next record betrays it."""
    prev = rows(db)[1][5]
    at, payload = "2026-03-02T12:31:00.000000Z", {"i": 99}
    with raw(db) as conn:
        renumber(conn, 3, +1)
        conn.execute("INSERT INTO audit_log VALUES (3, ?, 'measurement', ?, ?, ?)",
                     (at, canonical_json(payload), prev, spec_hash(prev, 3, at, "measurement", payload)))
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 3 and "inserted" in result.problem


def test_reordered_records(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("UPDATE audit_log SET seq = -1 WHERE seq = 3")
        conn.execute("UPDATE audit_log SET seq = 3 WHERE seq = 4")
        conn.execute("UPDATE audit_log SET seq = 4 WHERE seq = -1")
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 3 and "reordered" in result.problem


def test_edited_hash_column(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("UPDATE audit_log SET hash = ? WHERE seq = 2", ("0" * 63 + "1",))
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 2 and "hash" in result.problem


def test_edited_prev_hash_column(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("UPDATE audit_log SET prev_hash = ? WHERE seq = 5", ("a" * 64,))
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 5


def test_edit_and_rehash_everything_after_is_caught_only_by_a_signed_head(db: Path) -> None:
    key = b"k" * 32
    with AuditLog(db) as log:
        signature = log.sign_head(key)
    old = rows(db)
    with raw(db) as conn:  # rewrite record 3 and re-chain 3..N with correct hashes
        prev = old[1][5]
        for seq, at, kind, text, _, _ in old[2:]:
            payload = json.loads(text)
            if seq == 3:
                payload["import_kw"] = 1.0
            digest = spec_hash(prev, seq, at, kind, payload)
            conn.execute("UPDATE audit_log SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                         (canonical_json(payload), prev, digest, seq))
            prev = digest
    assert verify(db).ok  # the chain alone cannot see a full rewrite
    with AuditLog(db, readonly=True) as log:
        result = log.verify_head(signature, key)
    assert not result.ok and result.first_bad_seq == N and "rewritten" in result.problem


# --------------------------------------------------------------------------- signed head


def test_sign_and_verify_head_with_env_key(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HMAC_ENV, "correct horse battery staple")
    with AuditLog(db) as log:
        signature = log.sign_head()
        assert signature.startswith(f"hf-audit-v1:{N}:")
        assert log.verify_head(signature).ok
        log.append("guard_action", guard_action_payload("import_curtail", "DR"), T0 + timedelta(hours=3))
        assert log.verify_head(signature).ok  # later records are fine
        monkeypatch.setenv(HMAC_ENV, "wrong key")
        result = log.verify_head(signature)
        assert not result.ok and "signature" in result.problem
        monkeypatch.setenv(HMAC_ENV, "correct horse battery staple")
        forged = signature.replace(f":{N}:", f":{N - 1}:")
        assert not log.verify_head(forged).ok
        assert not log.verify_head("garbage").ok


def test_truncation_caught_by_signed_head(db: Path) -> None:
    key = b"secret"
    with AuditLog(db) as log:
        signature = log.sign_head(key)
    with raw(db) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq >= 5")
    assert verify(db).ok  # a cut tail looks like a shorter, valid chain
    with AuditLog(db, readonly=True) as log:
        result = log.verify_head(signature, key)
    assert not result.ok and result.first_bad_seq == N and "truncated" in result.problem


def test_sign_needs_a_key_and_a_good_chain(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HMAC_ENV, raising=False)
    with AuditLog(db) as log:
        with pytest.raises(AuditError, match=HMAC_ENV):
            log.sign_head()
    with raw(db) as conn:
        conn.execute("UPDATE audit_log SET hash = ? WHERE seq = 2", ("0" * 64,))
    with AuditLog(db) as log:
        with pytest.raises(AuditError, match="broken"):
            log.sign_head(b"k")


# --------------------------------------------------------------------------- atomicity and concurrency


def test_append_in_commits_and_rolls_back_with_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    AuditLog(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE state (k TEXT PRIMARY KEY, v TEXT)")
    with pytest.raises(AuditError, match="transaction"):
        append_in(conn, "config", {"x": 1}, T0)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO state VALUES ('mode', 'eco')")
    append_in(conn, "setpoints", {"mode": "eco"}, T0)
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT count(*) FROM state").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM audit_log").fetchone()[0] == 0
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO state VALUES ('mode', 'stock')")
    record = append_in(conn, "setpoints", {"mode": "stock"}, T0)
    conn.execute("COMMIT")
    assert record.seq == 1 and conn.execute("SELECT v FROM state").fetchone()[0] == "stock"
    conn.close()
    assert verify(path).ok


def test_append_with_store_commits_after_earlier_writes_and_with_extra_sql(tmp_path: Path) -> None:
    from hashflex.store import Store

    path = tmp_path / "store.db"
    with Store(path) as store:
        store.set_meta("plan", {"n": 1})  # enqueued before the audit record

        def write(conn: sqlite3.Connection) -> None:
            assert conn.execute("SELECT value FROM meta WHERE key = 'plan'").fetchone() is not None
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('audited', '1', 0)")

        record = append_with_store(store, "schedule", {"status": "optimal"}, T0, write=write)
        assert record.seq == 1
        assert store.get_meta("audited") == 1

        def failing(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('half', '1', 0)")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            append_with_store(store, "schedule", {"status": "x"}, T0, write=failing)
        assert store.get_meta("half") is None  # rolled back together
    with AuditLog(path, readonly=True) as log:
        assert [r.seq for r in log.records()] == [1] and log.verify().ok


def test_concurrent_appenders_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    AuditLog(path).close()

    def worker(k: int) -> None:
        with AuditLog(path) as log:
            for i in range(25):
                log.append("input_summary", {"worker": k, "i": i}, T0 + timedelta(seconds=i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify(path)
    assert result.ok and result.records == 100 and result.head_seq == 100


# --------------------------------------------------------------------------- payload helpers


def test_measurement_payload_is_json_safe() -> None:
    p = measurement_payload(T0, 0.25, 500.0, 20.0, 520.0, 1.5e4, {"r1": 41.2}, None, 35.0, 10.0, 4.0,
                            noise_cap_dba={"r1": math.inf}, full_load_kw=np.float64(700.0))
    assert p["interval_start"] == "2026-03-02T12:00:00.000000Z"
    assert p["noise_cap_dba"] == {"r1": None} and p["intensity_kg_per_mwh"] is None and p["full_load_kw"] == 700.0
    canonical_json(p)
    with pytest.raises(AuditError):
        measurement_payload(T0, 0.0, 1, 1, 1, 1, {}, None, None, 0, 0)


def test_laeq_and_noise_interval_summary() -> None:
    assert laeq_dba([40.0, 40.0]) == pytest.approx(40.0)
    # 50 dB for 1/4 of the time and 40 dB for 3/4: 10·log10(0.25·10^5 + 0.75·10^4)
    assert laeq_dba([50.0, 40.0], [60.0, 180.0]) == pytest.approx(10 * math.log10(0.25e5 + 0.75e4))
    level, minutes = noise_interval_summary([(50.0, 60.0), (40.0, 180.0)], cap_dba=45.0)
    assert minutes == pytest.approx(1.0) and level == pytest.approx(laeq_dba([50.0, 40.0], [60.0, 180.0]))
    assert math.isnan(laeq_dba([]))


def test_schedule_setpoints_config_and_input_payloads() -> None:
    from hashflex.optimize.schedule import SolveInfo, SolveStatus
    from hashflex.profile import load_profile, profile_hash

    index = pd.date_range(T0, periods=3, freq="15min", tz="UTC", name="interval_start")
    frame = pd.DataFrame({"interval_end": index + pd.Timedelta(minutes=15), "duration_h": 0.25,
                          "load_kw": np.array([100.0, 50.0, 0.0]), "grid_import_kw": [100.0, 50.0, 0.0],
                          "hashrate_th_s": [4000.0, 2000.0, 0.0], "profit_usd": [1.0, 0.5, 0.0],
                          "revenue_usd": [2.0, 1.0, 0.0], "energy_cost_usd": [1.0, 0.5, 0.0],
                          "emissions_kg": [9.0, 4.5, 0.0], "units_g_eco": np.array([3, 1, 0]),
                          "noise_dba_r1": [44.0, 40.0, -np.inf], "reason": ["", "noise:r1", "price"]}, index=index)
    schedule = SimpleNamespace(frame=frame, info=SolveInfo(SolveStatus.OPTIMAL, objective_usd=1.5, gap=0.001))
    p = schedule_payload(schedule)
    canonical_json(p)
    assert p["status"] == "optimal" and p["gap"] == 0.001 and p["intervals"] == 3
    assert p["reasons"] == {"full_load": 1, "noise:r1": 1, "price": 1}
    assert p["first_row"]["interval_start"] == "2026-03-02T12:00:00.000000Z" and p["first_row"]["units_g_eco"] == 3
    assert p["totals"]["grid_import_mwh"] == pytest.approx(0.0375)

    sp = [SimpleNamespace(group_id="g", mode="eco", power_target_kw=3.0, issued_at=T0,
                          expires_at=T0 + timedelta(minutes=5 + i)) for i in range(3)]
    sp.append(SimpleNamespace(group_id="g", mode="sleep", power_target_kw=0.0, issued_at=T0,
                              expires_at=T0 + timedelta(minutes=4)))
    s = setpoints_payload(sp)
    assert s["counts"] == {"g/eco": 3, "g/sleep": 1} and s["miners"] == 4 and s["power_target_kw"] == 9.0
    assert s["expires_at"] == "2026-03-02T12:04:00.000000Z"

    profile = load_profile("quiet_hollow")
    c = config_payload(profile, "start")
    assert c["profile_hash"] == profile_hash(profile) and c["profile"]["site"]["timezone"] == "America/Chicago"
    canonical_json(c)

    i = input_summary_payload(T0, 0.25, {"price": 3, "noise": 30}, {"noise": 2}, {"laeq_dba: too big": 2})
    assert i["rejected"] == {"noise": 2} and i["accepted"]["noise"] == 30


# --------------------------------------------------------------------------- CLI


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hashflex")
    add_report_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_cli_audit_verify_exit_codes(db: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(["audit", "verify", "--db", str(db)]) == 0
    assert "OK" in capsys.readouterr().out
    monkeypatch.setenv(HMAC_ENV, "k")
    assert _run(["audit", "sign", "--db", str(db)]) == 0
    signature = capsys.readouterr().out.strip()
    assert _run(["audit", "verify", "--db", str(db), "--signature", signature]) == 0
    with raw(db) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 2")
    assert _run(["audit", "verify", "--db", str(db)]) == 1
    assert "seq 2" in capsys.readouterr().err


def test_documented_loop_usage_with_store(tmp_path: Path) -> None:
    """Both ways the module docstring shows the loop recording a schedule with its audit record."""
    from hashflex.store import Store, to_us

    path = tmp_path / "loop.db"
    payload = {"status": "optimal", "gap": 0.001}
    with Store(path) as store:
        store.put_schedule(payload, created_at=T0)
        first = append_with_store(store, "schedule", payload, T0)
        second = append_with_store(store, "schedule", payload, T0 + timedelta(minutes=5), write=lambda c: c.execute(
            "INSERT INTO schedules (created_at_us, payload) VALUES (?, ?)",
            (to_us(T0 + timedelta(minutes=5)), json.dumps(payload))))
        assert len(store.schedules()) == 2 and (first.seq, second.seq) == (1, 2)
    assert verify(path).ok
