"""Issue 10 item 12: `hashflex audit verify` fails closed on a trail it cannot check.

Each case runs the real command in a subprocess, so a traceback (or an exit 0 on nothing) is what
an auditor would see. An empty file, a file that is not SQLite, a missing file, a database with no
audit table and a trail with no records all exit 1 with one clear line on stderr.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hashflex.audit import AuditLog

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def audit_verify(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hashflex.cli", "audit", "verify", "--db", str(db)],
                          capture_output=True, text=True, timeout=120)


def assert_fails_with_one_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "OK" not in result.stdout


def test_empty_file_fails(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    db.touch()
    assert_fails_with_one_line(audit_verify(db), str(db), "empty")


def test_file_that_is_not_a_database_fails(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_text("these are not the records you are looking for\n" * 100)
    assert_fails_with_one_line(audit_verify(db), str(db), "not an SQLite database")


def test_missing_file_fails(tmp_path: Path) -> None:
    db = tmp_path / "nowhere.db"
    assert_fails_with_one_line(audit_verify(db), str(db), "no such file")


def test_database_without_an_audit_trail_fails(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE prices (t TEXT, p REAL)")
    assert_fails_with_one_line(audit_verify(db), str(db), "no audit trail")


def test_trail_with_no_records_fails(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    AuditLog(db).close()  # the table exists, nothing was ever recorded
    assert_fails_with_one_line(audit_verify(db), str(db), "no records")


@pytest.mark.parametrize("records", [1, 3])
def test_a_good_trail_still_verifies(tmp_path: Path, records: int) -> None:
    db = tmp_path / "good.db"
    with AuditLog(db) as log:
        for i in range(records):
            log.append("measurement", {"i": i}, T0)
    result = audit_verify(db)
    assert result.returncode == 0, result.stderr
    assert f"audit chain OK: {records} records" in result.stdout
