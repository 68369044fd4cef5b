"""/status ``limits.as_deployments[].limit_kw`` is the limit the book enforces now (issue 15, second
newcomer finding 6): it showed the limit stored at the instruction (689.4 kW) while 889–939 kW was
enforced after a stacked deployment's recall. The stored figure stays, named ``limit_at_instruction_kw``.

SYNTHETIC hydro site of ``as_support`` (5 blocks run for 4,950 kW RRS awarded: 5,050 kW), inline HiGHS,
/status over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import timedelta

import pytest
from as_support import NOW, award, deploy, flat_prices, hydro_profile, make_loop

from hashflex.control.http import StatusServer

MIN = timedelta(minutes=1)


def _status_http(loop, at) -> dict:
    server = StatusServer(lambda now: loop.status(now), lambda: at, port=0)
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}status", timeout=10) as answer:
            return json.loads(answer.read())
    finally:
        server.stop()


def test_status_shows_the_enforced_limit_after_a_stacked_deployments_recall() -> None:
    """A sheds 1,980 kW at 17:05, B 990 kW at 17:07 (stacked on 5,050 kW: limit 2,080 kW, stored
    limit 3,070 − 990 = 2,080 kW from the load drawn). A recalled at 17:10: B's limit is
    5,050 − 990 = 4,060 kW; its stored ``limit_kw`` stays 2,080 kW."""
    loop = make_loop(hydro_profile("AS Status Limit"), flat_prices())
    assert loop.handle_as_award(award("rrs", "RRS", 4950.0), NOW).status == "accepted"
    loop.tick(NOW)
    a_at, b_at, recall_at = NOW + 5 * MIN, NOW + 7 * MIN, NOW + 10 * MIN
    assert loop.handle_as_deploy(deploy("A", a_at, 1980.0), a_at).status == "accepted"
    assert loop.handle_as_deploy(deploy("B", b_at, 990.0), b_at).status == "accepted"
    assert loop.handle_as_deploy(deploy("A", recall_at, recalled=True), recall_at).status == "accepted"
    enforced = loop.book.import_limits_at(recall_at + MIN)["AS:RRS:B"]
    assert enforced == pytest.approx(4060.0)
    assert loop.book.as_deployments["B"].limit_kw == pytest.approx(2080.0), "the stored figure differs"
    shown = {d["deployment_id"]: d for d in _status_http(loop, recall_at + MIN)["limits"]["as_deployments"]}
    assert shown["B"]["limit_kw"] == pytest.approx(enforced)
    assert shown["B"]["limit_at_instruction_kw"] == pytest.approx(2080.0)
