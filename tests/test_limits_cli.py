"""`hashflex limits set|list|clear` against the real daemon path (run_daemon on a thread, a real
Mosquitto, the in-process simulated fleet as its driver): the CLI publishes ``in/limits`` and prints
the daemon's ``out/limits/ack``; the limit binds (``/status``); a refused change exits 1 with the
reason; a bad value exits 2 naming the field; no daemon exits 3."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request

import pytest

from conftest import free_port, poll_until
from hashflex.control.daemon import run_daemon
from hashflex.profile import parse_profile
from hashflex.sim.site import SimulatedFleet

PROFILE = """
site: {id: clisite, name: CLI test site, timezone: America/Chicago, settlement_point: LZ_WEST,
       interval_minutes: 15, horizon_hours: 2, managers: [site_manager]}
grid: {import_limit_kw: 100}
miner_groups:
  - {id: air, model: S21, units: 6, modes: [{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}]}
receptors:
  - {id: porch, distance_m: {air: 150}, background_dba: 30, caps: [{name: all, start: "00:00", end: "23:59", cap_dba: 60}]}
carbon: {default_intensity_kg_per_mwh: 370, intensity_source: test}
economics: {hashprice_usd_per_ph_day: 49}
"""


def limits_cli(broker, *args: str, site: str = "clisite", timeout: str = "15") -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    return subprocess.run([sys.executable, "-m", "hashflex.cli", "limits", *args[:1], "--site", site,
                           "--mqtt-port", str(broker.port), "--timeout", timeout, *args[1:]],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def daemon(mosquitto, tmp_path_factory):  # noqa: ANN001, ANN201
    profile = parse_profile(PROFILE)
    http_port = free_port()
    stop = threading.Event()
    store = tmp_path_factory.mktemp("limits-cli") / "hashflex.db"
    thread = threading.Thread(target=run_daemon, args=(profile,), daemon=True, kwargs={
        "store_path": str(store), "mqtt_host": mosquitto.host, "mqtt_port": mosquitto.port, "http_port": http_port,
        "driver": SimulatedFleet(profile), "stop": stop, "time_limit_s": 5.0})
    thread.start()

    def status() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=5) as response:
            return json.loads(response.read())

    def ticked() -> bool:
        try:
            return status()["counters"]["ticks"] >= 1
        except OSError:
            return False

    poll_until(ticked, 60, interval_s=0.2, message="the daemon's first tick")
    status.url = f"http://127.0.0.1:{http_port}"  # type: ignore[attr-defined]
    yield status
    stop.set()
    thread.join(30)


def test_set_list_clear_round_trip(mosquitto, daemon) -> None:  # noqa: ANN001
    result = limits_cli(mosquitto, "set", "--import-limit-kw", "12.5", "--valid-minutes", "30", "--reason", "cli test")
    assert result.returncode == 0, result.stderr
    assert "accepted: import limit 12.5 kW" in result.stdout and "accepted: accepted:" not in result.stdout
    assert "change_id site_manager@" in result.stdout
    limits = daemon()["limits"]
    assert limits["import_limit_kw"] == 12.5 and limits["import_limit_source"] == "limits:site_manager"

    listed = limits_cli(mosquitto, "list", "--url", daemon.url)
    assert listed.returncode == 0, listed.stderr
    assert "import limit in force: 12.5 kW (limits:site_manager)" in listed.stdout
    assert "manager site_manager: import" in listed.stdout

    cleared = limits_cli(mosquitto, "clear", "import")
    assert cleared.returncode == 0, cleared.stderr
    assert "import cleared" in cleared.stdout
    assert "limits:site_manager" not in daemon()["limits"]["import_limits_kw"]
    poll_until(lambda: "limits:site_manager" not in limits_cli(mosquitto, "list", "--from-broker").stdout, 30,
               interval_s=0.5, message="the retained status after the re-plan")


def test_a_refused_change_exits_1_with_the_reason(mosquitto, daemon) -> None:  # noqa: ANN001
    result = limits_cli(mosquitto, "set", "--issuer", "intruder", "--import-limit-kw", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rejected: issuer: 'intruder' is not a site manager" in result.stdout
    assert "limits:intruder" not in daemon()["limits"]["import_limits_kw"]


def test_bad_input_names_the_field_and_sends_nothing(mosquitto, daemon) -> None:  # noqa: ANN001
    before = daemon()["counters"]["limits_accepted"] + daemon()["counters"]["limits_rejected"]
    result = limits_cli(mosquitto, "set", "--import-limit-kw", "-5")
    assert result.returncode == 2
    # The option as typed, with the rule: not pydantic's model dump (a newcomer finding).
    assert "--import-limit-kw -5.0: must be >= 0" in result.stderr and "validation error" not in result.stderr
    result = limits_cli(mosquitto, "set", "--noise-cap", "porch:40")
    assert result.returncode == 2 and "RECEPTOR=DBA" in result.stderr
    after = daemon()["counters"]["limits_accepted"] + daemon()["counters"]["limits_rejected"]
    assert after == before


def test_no_daemon_for_the_site_exits_3(mosquitto) -> None:  # noqa: ANN001
    result = limits_cli(mosquitto, "set", "--import-limit-kw", "10", site="nobody", timeout="1")
    assert result.returncode == 3
    assert "no answer on hashflex/nobody/out/limits/ack" in result.stderr
