"""Issue 10 items 1, 4 and 5 against the daemon as a process: real Mosquitto, MQTT-simulated
miners, kill -9. Rejected DR messages (a stranger's cancel, another authorised issuer's
modification, an unmapped level) must not change what binds after a restart; a QoS 1 redelivery is
answered with its first ack; a manager's limit is acknowledged on out/limits/ack and a limit
without expiry survives the restart. On the code before the limits book this test fails (no
out/limits/ack; the redelivery answered "rejected: duplicate"; after kill -9 the stranger's cancel
had removed the event).
"""

from __future__ import annotations

import json
import signal
from datetime import timedelta

from conftest import free_port, poll_until
from hashflex.messages import DREventMessage, LimitsChangeMessage, Topics
from test_daemon_e2e import (  # noqa: F401 - site is a fixture
    AckListener,
    http_get,
    site,
    start_daemon,
    stop_daemon,
    utc_now,
)

PROFILE_PATCH = ("dr: {issuers: [utility], level_import_limit_kw: {1: 40, 2: 20, 3: 0}}",
                 "dr: {issuers: [utility, qse], level_import_limit_kw: {1: 40, 2: 20}}")


def status(port: int) -> dict:
    code, body = http_get(port, "/status")
    return json.loads(body) if code in (200, 503) and body else {}


def test_only_accepted_state_binds_across_kill_9(site) -> None:  # noqa: ANN001, F811 - test_daemon_e2e fixture
    profile_path, store_path, sim, broker, tmp_path = site
    profile_path.write_text(profile_path.read_text().replace(*PROFILE_PATCH).replace("managers: [manager]",
                                                                                     "managers: [site_manager]"))
    topics = Topics("e2e")
    http_port = free_port()
    log = tmp_path / "daemon.log"
    daemon = start_daemon(profile_path, store_path, broker.port, http_port, log)
    acks = AckListener(broker.host, broker.port, f"{topics.prefix}out/+/ack")
    try:
        try:
            poll_until(lambda: sim.total_power_kw() > 60, 60, message="miners running")
        except BaseException:
            print(log.read_text()[-3000:])
            raise
        now = utc_now()
        event = DREventMessage(event_id="ev1", modification_number=0, program="ERS-10", start=now,
                               end=now + timedelta(hours=2), import_limit_kw=20.0, issuer="utility")
        acks.publish(topics.dr, event.model_dump_json())
        poll_until(lambda: len(acks.acks) == 1, 10, message="first ack")
        first = acks.acks[0]
        assert first["status"] == "accepted"
        # The same message again (QoS 1 may deliver twice): the first answer again.
        acks.publish(topics.dr, event.model_dump_json())
        # A stranger's cancel, another authorised issuer's modification, an unmapped level.
        acks.publish(topics.dr, event.model_copy(update={"modification_number": 1, "issuer": "mallory",
                                                          "cancelled": True}).model_dump_json())
        acks.publish(topics.dr, event.model_copy(update={"modification_number": 2, "issuer": "qse",
                                                          "import_limit_kw": 90.0}).model_dump_json())
        acks.publish(topics.dr, DREventMessage(event_id="ev2", modification_number=0, program="ERS-10", start=now,
                                               end=now + timedelta(hours=1), level=3,
                                               issuer="utility").model_dump_json())
        limits = LimitsChangeMessage(issuer="site_manager", reason="transformer work", issued_at=now,
                                     import_limit_kw=50.0)
        acks.publish(topics.limits, limits.model_dump_json())
        poll_until(lambda: len(acks.acks) == 6, 15, message="six acks")
        assert acks.acks[1] == first, "a redelivery gets the original ack"
        assert [a["status"] for a in acks.acks[2:5]] == ["rejected"] * 3
        limits_ack = acks.acks[5]
        assert limits_ack["status"] == "accepted" and limits_ack["issuer"] == "site_manager"
        poll_until(lambda: sim.total_power_kw() <= 20.0, 10, message="load under the DR limit")

        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        daemon = start_daemon(profile_path, store_path, broker.port, http_port, log)
        poll_until(lambda: status(http_port).get("last_solve") is not None, 60, message="first tick after restart")
        after = status(http_port)
        assert after["active_dr_events"] == ["ev1"], "the accepted event, and only it, survived kill -9"
        assert after["limits"]["import_limit_kw"] == 20.0 and after["limits"]["import_limit_source"] == "DR:ev1"
        assert after["limits"]["import_limits_kw"]["limits:site_manager"] == 50.0
        assert sim.total_power_kw() <= 20.0
    finally:
        acks.close()
        stop_daemon(daemon)
