"""A hardware fault injected in a simulated miner reaches the health book and the repair queue through
pyasic: lost hashboard and a stalled fan on a LuxOS miner, read by PyasicDriver."""

from __future__ import annotations

from datetime import timedelta

from hashflex.drivers.base import Setpoint, utc_now
from hashflex.drivers.pyasic_driver import PyasicDriver, PyasicEndpoint
from hashflex.health.detectors import HealthBook, Rating
from hashflex.health.repairs import RepairLog
from hashflex.profile import MinerGroup, MinerMode
from hashflex.sim.miners import MinerState, ScaledClock, SimulatedMinerFleet

GROUP = MinerGroup(id="s19xp", model="Antminer S19 XP", units=3, idle_power_kw=0.02, boot_minutes=0.0,
                   modes=[MinerMode(name="stock", power_kw=3.0, hashrate_th_s=134.0, sound_power_dba=97.0)])


def test_injected_faults_become_findings_scores_and_tickets(tmp_path, wait_for):
    with SimulatedMinerFleet({"ok": GROUP, "board": GROUP, "fan": GROUP}, clock=ScaledClock(600)) as fleet:
        fleet.hardware["board"].boards_alive = 2
        fleet.hardware["fan"].fan_health = 0.1  # fans barely turn: chips overheat too
        driver = PyasicDriver([PyasicEndpoint(m, "s19xp", h, "luxos", rpc_port=p)
                               for m, (h, p) in fleet.endpoints().items()], {"s19xp": {"stock": 3.0}})
        try:
            now = utc_now()
            assert all(r.ok for r in driver.apply([Setpoint(m, "stock", 3.0, now, now + timedelta(minutes=5))
                                                   for m in fleet.miners]))
            wait_for(lambda: all(s.state is MinerState.HASHING for s in fleet.states().values()), message="hashing")
            alerts = []
            book = HealthBook({m: Rating(j_th=3000 / 134) for m in fleet.miners}, on_alert=alerts.append)
            for reading in driver.read().values():
                book.ingest(reading)
        finally:
            driver.close()
    kinds = {(f.miner_id, f.kind) for f in book.findings()}
    assert ("board", "lost_hashboard") in kinds
    assert ("fan", "failing_fan") in kinds and ("fan", "overheating") in kinds
    assert not [f for f in book.findings() if f.miner_id == "ok"]
    assert book.scores()["ok"] == 1.0 and book.scores()["board"] < 1.0 and book.scores()["fan"] == 0.0
    assert book.derate_factor("fan") == 0.0 and book.dispatch_order(fleet.miners)[0] == "ok"
    log = RepairLog(tmp_path / "repairs.db")
    for finding in alerts:
        log.open_ticket(finding)
    assert {t.miner_id for t in log.queue()} == {"board", "fan"}
    log.close_db()
