"""A site manager's import limit above the interconnection's (the profile's ``grid.import_limit_kw``) is
refused, naming the field and the interconnection's value (newcomer finding: it was acknowledged as
``accepted: import limit ... kW`` while the guard kept holding the profile's limit, so what the manager was
told was not what the site did). Refused, not clipped: a manager limit can only lower the import, and a
value above the connection is as likely a unit slip (MW typed as kW) as a wish. Through the limits book,
the HTTP API (the simulated site's real server on 127.0.0.1) and the limits CLI (the real daemon on a
thread, a real Mosquitto)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from conftest import free_port, poll_until
from hashflex.backtest.runner import load_prices
from hashflex.control.daemon import run_daemon
from hashflex.control.limits import LimitsBook
from hashflex.data import bundled_path
from hashflex.messages import LimitsChangeMessage
from hashflex.profile import parse_profile
from hashflex.sim.live import LiveSite
from hashflex.sim.site import SimulatedFleet, run_simulation, simulation_window
from hashflex.web.manager import ManagerAuth

NOW = datetime(2025, 7, 1, 12, tzinfo=timezone.utc)
TOKEN = "limits-interconnection-token-7"
PROFILE = """
site: {id: icsite, name: Interconnection test site, timezone: America/Chicago, settlement_point: LZ_WEST,
       interval_minutes: 15, horizon_hours: 2, managers: [site_manager]}
grid: {import_limit_kw: 100}
miner_groups:
  - {id: air, model: S21, units: 6, modes: [{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}]}
receptors:
  - {id: porch, distance_m: {air: 150}, background_dba: 30, caps: [{name: all, start: "00:00", end: "23:59", cap_dba: 60}]}
carbon: {default_intensity_kg_per_mwh: 370, intensity_source: test}
economics: {hashprice_usd_per_ph_day: 49}
"""
REASON = ("import_limit_kw: 150.0 kW is above the interconnection's import limit of 100.0 kW (profile "
          "grid.import_limit_kw); a manager limit can only lower it, so send at most that")


def change(kw: float, **extra: object) -> LimitsChangeMessage:
    return LimitsChangeMessage(issuer="site_manager", reason="test", issued_at=NOW, import_limit_kw=kw, **extra)


def test_the_book_refuses_a_limit_above_the_interconnection_and_takes_one_at_it() -> None:
    book = LimitsBook(parse_profile(PROFILE))
    trial, ack = book.decide_limits(change(150.0), NOW)
    assert ack.status == "rejected" and ack.reason == REASON
    assert trial.manager == {}  # nothing of the change binds, not even the parts it carried beside
    _, with_carbon = book.decide_limits(change(150.0, carbon_budget={"budget_kg": 5, "period": "day"}), NOW)
    assert with_carbon.status == "rejected"
    trial, ack = book.decide_limits(change(100.0), NOW)  # at the interconnection: a no-op, but true as said
    assert ack.status == "accepted" and ack.reason == "accepted: import limit 100.0 kW"
    trial, ack = book.decide_limits(change(99.5, valid_until=NOW + timedelta(hours=1)), NOW)
    assert ack.status == "accepted"


def _request(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method="POST" if body is not None else "GET",
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_http_api_answers_409_naming_the_field() -> None:
    profile = parse_profile(PROFILE)
    prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv")], [])
    window = simulation_window(profile, prices, intervals=1)
    live = LiveSite(profile, port=0, speed=0, auth=ManagerAuth(shared=TOKEN), intervals=1)
    live.start()
    try:
        run_simulation(profile, prices, window.start, window.intervals, observer=live, time_limit_s=10)
        url = live.url.rstrip("/")
        write = {"issuer": "site_manager", "import_limit_kw": 150, "valid_minutes": 60, "reason": "too high"}
        status, body = _request(url + "/api/limits", write, token=TOKEN)
        assert status == 409 and body["status"] == "rejected" and body["reason"] == REASON
        limits = _request(url + "/status")[1]["limits"]
        assert limits["manager_limits"] == [] and limits["import_limit_source"] in (None, "interconnection")
        status, body = _request(url + "/api/limits", {**write, "import_limit_kw": 80}, token=TOKEN)
        assert status == 200 and body["reason"].startswith("accepted: import limit 80.0 kW")
    finally:
        live.close()


@pytest.fixture(scope="module")
def daemon(mosquitto, tmp_path_factory):  # noqa: ANN001, ANN201
    profile = parse_profile(PROFILE)
    http_port = free_port()
    stop = threading.Event()
    store = tmp_path_factory.mktemp("limits-ic") / "hashflex.db"
    thread = threading.Thread(target=run_daemon, args=(profile,), daemon=True, kwargs={
        "store_path": str(store), "mqtt_host": mosquitto.host, "mqtt_port": mosquitto.port, "http_port": http_port,
        "driver": SimulatedFleet(profile), "stop": stop, "time_limit_s": 5.0, "price_model": "rules"})
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
    yield status
    stop.set()
    thread.join(30)


def test_the_limits_cli_exits_1_with_the_reason(mosquitto, daemon) -> None:  # noqa: ANN001
    result = subprocess.run([sys.executable, "-m", "hashflex.cli", "limits", "set", "--site", "icsite",
                             "--mqtt-port", str(mosquitto.port), "--timeout", "15", "--import-limit-kw", "150"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"rejected: {REASON}" in result.stdout
    assert "limits:site_manager" not in daemon()["limits"]["import_limits_kw"]
    assert daemon()["counters"]["limits_rejected"] >= 1
