"""The dashboard in a real browser (Debian's chromium + chromium-driver through Selenium), on the real
daemon path: `hashflex run` as a process, a real Mosquitto, MQTT-simulated miners.

- the "available for curtailment" tile shows the running miners' telemetered draw (issue 17);
- a DR event published on the broker shows on the page with its limit and countdown within 2 s;
- a noise reading over the cap shows red at that receptor;
- a limit set from the page (with the manager token) is acked and binds (``/status``);
- a write without a token (or with a wrong one) is refused and changes nothing.

A screenshot of the page is kept under the test's tmp dir, and copied to
``$HASHFLEX_DASHBOARD_SCREENSHOT`` when that is set. These tests FAIL (not skip) without chromium,
chromedriver or selenium: install them with ``apt-get install -y chromium chromium-driver`` and
``pip install -e '.[test]'``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pandas as pd
import pytest

from conftest import free_port, poll_until
from hashflex.messages import DREventMessage, NoiseMessage, Topics
from hashflex.profile import load_profile
from hashflex.sim.miners import MqttSimulatedMiners
from hashflex.store import Store

TOKEN = "browser-test-token-0123456789"
PROFILE = """
site: {id: web, name: Browser test site, timezone: America/Chicago, settlement_point: LZ_WEST,
       interval_minutes: 15, horizon_hours: 4, managers: [site_manager]}
grid: {import_limit_kw: 100}
dr: {issuers: [utility], level_import_limit_kw: {1: 40, 2: 20, 3: 0}}
miner_groups:
  - {id: air, model: Antminer S21, units: 10,
     modes: [{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}]}
  - {id: hyd, model: Antminer S21 XP Hyd, units: 5, cooling: hydro,
     modes: [{name: stock, power_kw: 6.4, hashrate_th_s: 473, sound_power_dba: 64}]}
receptors:
  - {id: porch, distance_m: {air: 120, hyd: 120}, background_dba: 30,
     caps: [{name: always, start: "00:00", end: "23:59", cap_dba: 60}]}
  - {id: barn, distance_m: {air: 300, hyd: 300}, background_dba: 30,
     caps: [{name: always, start: "00:00", end: "23:59", cap_dba: 55}]}
carbon: {default_intensity_kg_per_mwh: 370, intensity_source: test placeholder, daily_budget_kg: 900}
economics: {hashprice_usd_per_ph_day: 49.0, pool_fee_pct: 2.0}
"""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def http(port: int, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
                                     data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def browser():  # noqa: ANN201 - selenium types are optional
    """Headless Debian chromium through chromedriver; FAILS with install instructions if missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium missing: pip install -e '.[test]'", pytrace=False)
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.fail("chromium/chromedriver missing: apt-get install -y chromium chromium-driver", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1500,2300",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver_path))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mosquitto):  # noqa: ANN001, ANN201 - conftest fixture
    tmp = tmp_path_factory.mktemp("dashboard")
    profile_path = tmp / "web.yaml"
    profile_path.write_text(PROFILE)
    profile = load_profile(profile_path)
    store_path = tmp / "hashflex.db"
    now = pd.Timestamp(utc_now()).floor("h")
    index = pd.date_range(now - pd.Timedelta(hours=1), periods=8, freq="h")
    with Store(str(store_path)) as store:  # day-ahead prices already published: cheap power, miners run
        store.put_price_frame(pd.DataFrame({"interval_start": index, "interval_end": index + pd.Timedelta(hours=1),
                                            "settlement_point": "LZ_WEST", "market": "DA",
                                            "price_usd_mwh": 20.0}),
                              published_at=(now - pd.Timedelta(hours=12)).to_pydatetime())
        store.flush()
    groups = {g.id: g for g in profile.miner_groups}
    miners = {f"air-{i:02d}": groups["air"] for i in range(1, 11)} | {f"hyd-{i}": groups["hyd"] for i in range(1, 6)}
    sim = MqttSimulatedMiners("web", mosquitto.host, mosquitto.port, miners)
    sim.start()
    assert sim.wait_ready(10)
    http_port = free_port()
    log = tmp / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "hashflex.cli", "--log-level", "INFO", "run", "--profile", str(profile_path),
         "--store", str(store_path), "--mqtt-port", str(mosquitto.port), "--http-port", str(http_port),
         "--time-limit", "5"],
        stdout=log.open("a"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HASHFLEX_MANAGER_TOKEN": TOKEN})
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="web-test", protocol=mqtt.MQTTv5)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    driver = None
    try:
        poll_until(lambda: daemon.poll() is not None or http(http_port, "/healthz")[0] == 200, 60, interval_s=0.2,
                   message=f"daemon healthy (log: {log})")
        assert daemon.poll() is None, log.read_text()[-3000:]
        driver = browser()
        driver.get(f"http://127.0.0.1:{http_port}/")
        poll_until(lambda: driver.find_element("id", "conn").text == "live", 10, interval_s=0.1,
                   message="the page's event stream")
        yield {"port": http_port, "driver": driver, "mqtt": client, "topics": Topics("web"), "tmp": tmp, "log": log}
    finally:
        if driver is not None:
            driver.quit()
        client.loop_stop()
        daemon.terminate()
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
        sim.stop()


def text_of(driver, css: str) -> str:  # noqa: ANN001
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return driver.find_element("css selector", css).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def test_the_available_for_curtailment_tile_shows_the_fleets_telemetry(site) -> None:  # noqa: ANN001
    """Issue 17: the 15 MQTT-simulated miners report their mode's power (idle 0 kW in this profile) and
    their driver sleeps them on command, so the site can shed exactly the draw of the running units:
    3.5 kW per running air unit plus 6.4 kW per running hyd unit, all of it by sleep."""
    driver, port = site["driver"], site["port"]
    power_kw = {"air": 3.5, "hyd": 6.4}
    seen: dict = {}

    def consistent() -> bool:
        now = json.loads(http(port, "/api/state")[1] or b"{}").get("now") or {}
        c = now.get("curtailment") or {}
        running_kw = sum(power_kw[u["group"]] * u["running"] for u in now.get("units", []) if u["mode"] != "sleep")
        seen.update(c, running_kw=running_kw, tile=text_of(driver, "#curtail-now"),
                    detail=text_of(driver, "#curtail-detail"))
        return (c.get("miners_reporting") == 15 and running_kw > 0 and abs(c["sleep_kw"] - running_kw) < 1e-6
                and c["power_off_kw"] == 0.0 and seen["tile"] == f"{c['available_kw'] / 1000:.3f} MW")

    poll_until(consistent, 20, interval_s=0.2, message=f"the tile showing the running units' draw ({seen})")
    assert "of 15 reporting miners" in seen["detail"] and "sleep" in seen["detail"], seen["detail"]
    print(f"available for curtailment on the page: {seen['tile']} ({seen['detail']})")


def test_a_dr_event_shows_with_its_limit_and_countdown_within_2_s(site) -> None:  # noqa: ANN001
    driver, topics = site["driver"], site["topics"]
    now = utc_now()
    event = DREventMessage(event_id="ers-web-1", modification_number=0, program="ERS-10", start=now,
                           end=now + timedelta(hours=1), level=2, issuer="utility")
    site["mqtt"].publish(topics.dr, event.model_dump_json(), qos=1).wait_for_publish(5)
    published = time.monotonic()
    row = 'tr[data-event-id="ers-web-1"]'
    poll_until(lambda: "20 kW" in text_of(driver, f"{row} .dr-limit") and
               ":" in text_of(driver, f"{row} .dr-countdown .t"), 2.0, interval_s=0.05,
               message="the DR event row with its 20 kW limit and countdown")
    shown_after_s = time.monotonic() - published
    countdown = text_of(driver, f"{row} .dr-countdown")
    assert countdown.startswith("ends in"), countdown
    parts = [int(p) for p in text_of(driver, f"{row} .dr-countdown .t").split(":")]
    left_s = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    assert 3300 <= left_s <= 3600, countdown  # about an hour left
    poll_until(lambda: text_of(driver, f"{row} .dr-countdown .t") not in ("", countdown.split()[2]), 3,
               message="the countdown counting down")
    poll_until(lambda: "DR event ers-web-1" in text_of(driver, "#limit-source"), 5, message="the limit's source")
    assert "20 kW" in text_of(driver, "#import-limit")
    print(f"DR event on the page {shown_after_s:.2f} s after publishing")


def test_a_noise_reading_over_the_cap_shows_red_at_that_receptor(site) -> None:  # noqa: ANN001
    driver, topics = site["driver"], site["topics"]
    reading = NoiseMessage(receptor_id="porch", laeq_dba=71.5, averaging_s=60, timestamp=utc_now(), meter_class=1)
    site["mqtt"].publish(topics.noise("porch"), reading.model_dump_json(), qos=1).wait_for_publish(5)
    porch, barn = 'tr[data-receptor="porch"]', 'tr[data-receptor="barn"]'
    # The page redraws the table on every update: read it in one go, in the page.
    read = ("const r = document.querySelector(arguments[0]); return r && [r.className, r.innerText, "
            "getComputedStyle(r.cells[0]).backgroundColor];")
    poll_until(lambda: (driver.execute_script(read, porch) or [""])[0] == "over", 5, interval_s=0.05,
               message="the porch row marked over cap")
    klass, text, color = driver.execute_script(read, porch)
    assert "71.5" in text and "OVER CAP" in text, text
    red, green, blue = (int(float(c)) for c in color[color.index("(") + 1:color.index(")")].split(",")[:3])
    assert red > 100 and red > 2 * green and red > 2 * blue, color  # red, as the page says it
    assert driver.execute_script(read, barn)[0] == ""  # only at that receptor


def test_an_unauthenticated_write_is_refused(site) -> None:  # noqa: ANN001
    driver, port = site["driver"], site["port"]
    before = json.loads(http(port, "/status")[1])["limits"]
    driver.find_element("id", "lim-token").clear()
    driver.find_element("id", "lim-import").clear()
    driver.find_element("id", "lim-import").send_keys("5")
    driver.find_element("id", "lim-set").click()
    poll_until(lambda: "refused (401)" in text_of(driver, "#lim-ack"), 5, message="the page saying refused")
    assert http(port, "/api/limits", {"issuer": "site_manager", "import_limit_kw": 5})[0] == 401
    assert http(port, "/api/limits", {"issuer": "site_manager", "import_limit_kw": 5}, token="wrong-token-123456")[0] == 401
    after = json.loads(http(port, "/status")[1])["limits"]
    assert after["manager_limits"] == before["manager_limits"] == []
    assert "limits:site_manager" not in after["import_limits_kw"]


def test_a_limit_set_from_the_page_is_acked_and_binds(site) -> None:  # noqa: ANN001
    driver, port = site["driver"], site["port"]
    driver.find_element("id", "lim-token").send_keys(TOKEN)
    driver.find_element("id", "lim-import").clear()
    driver.find_element("id", "lim-import").send_keys("15")
    driver.find_element("id", "lim-valid").send_keys("30")
    driver.find_element("id", "lim-reason").send_keys("browser test")
    driver.find_element("id", "lim-set").click()
    poll_until(lambda: "acked: accepted" in text_of(driver, "#lim-ack"), 10, message="the ack on the page")
    assert "import limit 15.0 kW" in text_of(driver, "#lim-ack")
    limits = json.loads(http(port, "/status")[1])["limits"]
    assert limits["import_limits_kw"]["limits:site_manager"] == 15.0
    assert limits["import_limit_kw"] == 15.0 and limits["import_limit_source"] == "limits:site_manager"
    poll_until(lambda: "manager override (site_manager)" in text_of(driver, "#limit-source"), 5,
               message="the page showing the manager's limit in force")
    poll_until(lambda: "limits" in text_of(driver, "#events") and "site_manager" in text_of(driver, "#events"), 5,
               message="the change in the event log")
    screenshot = site["tmp"] / "dashboard.png"
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)  # let the charts settle before the picture (not an assertion)
    assert driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 20_000
    copy_to = os.environ.get("HASHFLEX_DASHBOARD_SCREENSHOT")
    if copy_to:
        Path(copy_to).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, copy_to)
    print(f"screenshot: {screenshot}")
