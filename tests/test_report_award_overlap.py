"""The live report's award payment and clawback when two revisions of one award overlap (issue 15,
QSE/auditor review finding 4): with each revision paid from when it was received (f1eb822), a
revision whose window reaches back over the one before, and a redelivery of it, must not pay any
stretch twice; the clawback counts each interval and product once.

The trail is written by the real control loop into a real store (as ``test_report_ancillary``; its
SYNTHETIC test site: an award of 4,950 kW keeps 5 blocks running).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from test_report_ancillary import NOW, PROFILE, QUARTER, _award, _prices

from hashflex.audit import AuditLog
from hashflex.control.ancillary import reserve_clawback_usd
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder
from hashflex.control.solver import SolveRunner
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store


def test_overlapping_award_revisions_are_paid_once(tmp_path: Path) -> None:
    """Revision 0: RRS 4,950 kW at $150/MW-h over 16:00–20:00, received 17:00. Revision 1, received
    18:00: 3,000 kW at $150 over 17:00–21:00 (its window reaches back to 17:00, inside revision 0's
    time); redelivered at 18:30. Report 17:00–21:00: revision 0 is paid 17:00–18:00 (4.95 × 150 × 1
    = $742.50), revision 1 18:00–21:00 (3.0 × 150 × 3 = $1,350): $2,092.50. Paying revision 1 over its
    window would add 17:00–18:00 again ($450: $2,542.50); a redelivery counted as a revision of its
    own would add nothing (it is not in the trail). The clawback is the loop's hold-shortfall
    records, each interval and product once (the loop measures 17:00–18:45 at 100 kW: nothing held)."""
    profile = parse_profile(PROFILE, source="test")
    db = tmp_path / "overlap.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, _prices()), driver=SimulatedFleet(profile),
                           solver=SolveRunner(inline=True), store=store, recorder=recorder)
        award = _award("RRS")  # 16:00–20:00, 4,950 kW, $150
        assert loop.handle_as_award(award, NOW).status == "accepted"
        for k in range(4):
            loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=100.0, renewable_kw=0.0,
                                    hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        revised = award.model_copy(update={"revision": 1, "reserve_kw": 3000.0, "start": NOW,
                                           "end": NOW + timedelta(hours=4)})
        assert loop.handle_as_award(revised, NOW + timedelta(hours=1)).status == "accepted"
        again = loop.handle_as_award(revised, NOW + timedelta(minutes=90))  # a QoS 1 redelivery
        for k in range(4, 8):
            loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=100.0, renewable_kw=0.0,
                                    hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
    with AuditLog(db, readonly=True) as log:
        records = list(log.records())
    awards = [r.payload for r in records if r.kind == "as_award"]
    # The redelivery gets its first answer and writes no record of its own (nothing for the report to
    # count twice).
    assert again.status == "accepted" and len(awards) == 2
    report = build_report(db, "2024-06-03T17:00Z", "2024-06-03T21:00Z")
    economics = report["economics"]
    assert economics["reserve_payment_usd"] == pytest.approx(742.5 + 1350.0, abs=0.01)
    shorts = {(r.payload["interval_start"], r.payload["product"]): r.payload for r in records
              if r.kind == "reserve_hold_short"}
    assert len(shorts) == 8, "one record per interval and product"
    expected = sum(reserve_clawback_usd(p["short_kw"], p["price_usd_mw_h"], p["interval_h"]) for p in shorts.values())
    assert expected > 0
    assert economics["reserve_clawback_usd"] == pytest.approx(expected, abs=0.01)
    # 17:00–18:00 held 4,950 kW short at $150, 18:00–19:00 3,000 kW: 742.50 + 450.
    assert economics["reserve_clawback_usd"] == pytest.approx(742.5 + 450.0, abs=0.01)
