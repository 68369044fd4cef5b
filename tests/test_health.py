"""Fleet health: each detector on crafted telemetry, the score, the book, the repair log, curtailable kW."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from hashflex.drivers.base import MinerCapabilities
from hashflex.health.curtailable import available_for_curtailment_kw
from hashflex.health.detectors import (
    Finding,
    HealthBook,
    Rating,
    efficiency_drift,
    error_growth,
    failing_fan,
    health_score,
    lost_hashboard,
    not_following,
    overheating,
)
from hashflex.health.reading import MinerReading
from hashflex.health.repairs import RepairLog

T0 = datetime(2026, 7, 1, 12, tzinfo=timezone.utc)
RATING = Rating(j_th=22.0, hashboards=3, fans=4)


def r(i: int = 0, **kw) -> MinerReading:
    base = dict(miner_id="m1", at=T0 + timedelta(minutes=i), power_kw=3.0, hashrate_th_s=136.0,
                setpoint_power_kw=3.0, chip_temp_c=(70.0, 71.0, 72.0), fan_rpm=(4000, 4000, 4000, 4000),
                hashboards=3, expected_hashboards=3, hw_errors=10)
    base.update(kw)
    return MinerReading(**base)  # type: ignore[arg-type]


HEALTHY = [r(i) for i in range(5)]


def test_healthy_miner_has_no_findings():
    for detector in (not_following, failing_fan, error_growth):
        assert detector(HEALTHY) == []
    for detector in (efficiency_drift, lost_hashboard, overheating):
        assert detector(HEALTHY, RATING) == []
    assert health_score([]) == 1.0


def test_not_following_needs_consecutive_misses():
    history = HEALTHY + [r(5 + i, power_kw=3.6) for i in range(3)]
    [finding] = not_following(history)
    assert finding.kind == "not_following" and finding.severity == "critical"
    assert not_following(HEALTHY + [r(5, power_kw=3.6), r(6, power_kw=3.6), r(7)]) == []  # recovered
    sleeping_but_hashing = [r(i, setpoint_power_kw=0.0, power_kw=3.0) for i in range(3)]
    assert not_following(sleeping_but_hashing)[0].severity == "critical"


def test_efficiency_drift_against_the_rating():
    drifted = [r(i, power_kw=3.0 * 1.12) for i in range(6)]  # +12 % J/TH
    [finding] = efficiency_drift(drifted, RATING)
    assert finding.severity == "warning" and finding.value == pytest.approx(3.36e3 / 136 / 22 - 1)
    assert efficiency_drift([r(i, power_kw=3.6) for i in range(6)], RATING)[0].severity == "critical"
    assert efficiency_drift(drifted, Rating(j_th=None)) == []


def test_lost_hashboard():
    [finding] = lost_hashboard([r(hashboards=2)], RATING)
    assert finding.severity == "critical" and "2 of 3" in finding.detail
    assert lost_hashboard([r(hashboards=2, hashrate_th_s=0.0)], RATING) == []  # asleep: boards not counted


def test_overheating_warning_and_critical():
    assert overheating([r(chip_temp_c=(70.0, 92.0, None))], RATING)[0].severity == "warning"
    assert overheating([r(chip_temp_c=(101.0,))], RATING)[0].severity == "critical"


def test_failing_fan_stalled_and_lagging():
    assert failing_fan([r(fan_rpm=(4000, 0, 4000, 4000))])[0].severity == "critical"
    assert failing_fan([r(fan_rpm=(4000, 2000, 4000, 4000))])[0].severity == "warning"
    assert failing_fan([r(fan_rpm=(0, 0, 0, 0), hashrate_th_s=0.0)]) == []  # asleep


def test_error_growth_per_hour():
    history = [r(0, hw_errors=0), r(30, hw_errors=100)]  # 200 per hour
    assert error_growth(history)[0].kind == "error_growth"
    assert error_growth([r(0, hw_errors=0), r(60, hw_errors=20)]) == []


def test_book_scores_derates_orders_and_alerts_once():
    alerts: list[Finding] = []
    book = HealthBook({"m1": RATING, "m2": RATING, "m3": RATING}, on_alert=alerts.append)
    for i in range(3):
        book.ingest(r(i, miner_id="m1"))
        book.ingest(r(i, miner_id="m2", chip_temp_c=(93.0, 80.0, 80.0)))
        book.ingest(r(i, miner_id="m3", fan_rpm=(4000, 0, 4000, 4000), chip_temp_c=(101.0,)))
    scores = book.scores()
    assert scores["m1"] == 1.0 and scores["m2"] == pytest.approx(0.85) and scores["m3"] == 0.0
    assert book.derate_factor("m1") == 1.0 and book.derate_factor("m2") == 0.8 and book.derate_factor("m3") == 0.0
    assert book.dispatch_order(["m3", "m2", "m1", "new"]) == ["m1", "new", "m2", "m3"]
    assert sorted((a.miner_id, a.kind) for a in alerts) == [("m2", "overheating"), ("m3", "failing_fan"),
                                                            ("m3", "overheating")]
    assert alerts[0].as_alert()["severity"] in ("warning", "critical")
    book.ingest(r(5, miner_id="m2"))  # cooled down: cleared
    assert book.findings("m2") == [] and book.scores()["m2"] == 1.0


def test_a_failing_alert_channel_does_not_stop_the_book():
    def broken(_finding: Finding) -> None:
        raise ConnectionError("webhook down")

    book = HealthBook({"m1": RATING}, on_alert=broken)
    assert book.ingest(r(chip_temp_c=(101.0,)))[0].kind == "overheating"


def test_repair_log_persists_and_never_duplicates(tmp_path):
    path = tmp_path / "repairs.db"
    log = RepairLog(path)
    board = Finding("m7", "lost_hashboard", "critical", "2 of 3 hashboards", T0, 1.0)
    fan = Finding("m8", "failing_fan", "warning", "fan 1 lagging", T0, 2000.0)
    t1 = log.open_ticket(fan)
    t2 = log.open_ticket(board)
    assert log.open_ticket(board).id == t2.id  # seen again: same ticket
    assert [t.id for t in log.queue()] == [t2.id, t1.id]  # critical first
    log.start(t2.id, "ana")
    with pytest.raises(ValueError, match="ticket_id: ticket .* is in_progress"):
        log.start(t2.id, "ana")
    log.close(t2.id, "swapped hashboard 3", {"hashboard": "SN-A1 -> SN-B7"}, notes="ASIC 42 cracked")
    log.close_db()
    reopened = RepairLog(path)
    [done] = reopened.history("m7")
    assert done.status == "done" and done.parts_swapped == {"hashboard": "SN-A1 -> SN-B7"}
    assert [t.id for t in reopened.queue()] == [t1.id]
    assert reopened.failures_by_kind() == {"failing_fan": 1, "lost_hashboard": 1}
    with pytest.raises(ValueError, match="already done"):
        reopened.close(t2.id, "again")
    with pytest.raises(ValueError, match="outcome"):
        reopened.close(t1.id, "x", outcome="lost")
    with pytest.raises(ValueError, match="no repair ticket 999"):
        reopened.start(999, "bo")
    reopened.close_db()


def test_available_for_curtailment_counts_fresh_sleepable_draw():
    def cap(miner_id: str, sleep: bool = True, pdu: bool = False) -> MinerCapabilities:
        return MinerCapabilities(miner_id, "luxos", sleep_wake=sleep, power_target=True, verify=True, power_off=pdu)

    now = T0 + timedelta(minutes=1)
    readings = {"a": r(1, miner_id="a"), "b": r(1, miner_id="b"),
                "c": r(-10, miner_id="c"),  # stale
                "d": r(1, miner_id="d", power_kw=0.05, hashrate_th_s=0.0),  # asleep, PDU
                "e": r(1, miner_id="e")}  # no sleep capability
    caps = {"a": cap("a"), "b": cap("b", pdu=True), "c": cap("c"), "d": cap("d", pdu=True), "e": cap("e", sleep=False)}
    idle = {m: 0.05 for m in readings}
    kw = available_for_curtailment_kw(readings, caps, idle, now, max_age_s=120.0)
    assert kw == pytest.approx((3.0 - 0.05) + 3.0 + 0.05)
