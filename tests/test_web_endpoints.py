"""Every endpoint of the daemon's web site over real HTTP (uvicorn on loopback), on a short real
simulation (the control loop, HiGHS solves, simulated fleet and noise meters): the page and its
static files, /healthz, /status, /metrics, /api/state, /events (SSE), /api/limits (GET, POST with
every refusal), reads protected off loopback; the Grafana dashboard's queries use only metric names
/metrics exposes; `hashflex run --simulate` prints its URL first and serves /healthz while it runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import poll_until
from hashflex.backtest.runner import load_prices
from hashflex.control.http import METRIC_NAMES
from hashflex.data import bundled_path
from hashflex.profile import parse_profile
from hashflex.sim.live import LiveSite
from hashflex.sim.site import run_simulation, simulation_window
from hashflex.web.manager import AuthError, ManagerAuth

TOKEN = "endpoint-test-token-42"
GRAFANA = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "hashflex-site.json"
PROFILE = """
site: {id: webtest, name: Endpoint test site, timezone: America/Chicago, settlement_point: LZ_WEST,
       interval_minutes: 15, horizon_hours: 3, managers: [site_manager, night_manager]}
grid: {import_limit_kw: 60}
dr: {issuers: [utility], level_import_limit_kw: {1: 40, 2: 20, 3: 0}}
miner_groups:
  - {id: air, model: S21, units: 12, modes: [{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}]}
receptors:
  - {id: porch, distance_m: {air: 150}, background_dba: 30, caps: [{name: all, start: "00:00", end: "23:59", cap_dba: 60}]}
renewables: [{id: solar_pv, kind: solar, capacity_kw: 20}]
carbon: {default_intensity_kg_per_mwh: 370, intensity_source: test, daily_budget_kg: 500}
economics: {hashprice_usd_per_ph_day: 49}
"""


def request(url: str, body: dict | None = None, token: str | None = None, method: str | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, method=method or ("POST" if body is not None else "GET"),
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")


@pytest.fixture(scope="module")
def site():  # noqa: ANN201
    profile = parse_profile(PROFILE)
    prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv")], [])
    window = simulation_window(profile, prices, intervals=2)
    live = LiveSite(profile, port=0, speed=0, auth=ManagerAuth(shared=TOKEN), intervals=2)
    live.start()
    try:
        run_simulation(profile, prices, window.start, window.intervals, observer=live, time_limit_s=10)
        live.server.dashboard.refresh()
        yield live, live.url.rstrip("/")
    finally:
        live.close()


def test_page_and_static_files(site) -> None:  # noqa: ANN001
    _, url = site
    status, body, kind = request(url + "/")
    assert status == 200 and kind.startswith("text/html")
    page = body.decode()
    for element in ("sec-now", "sec-dr", "sec-noise", "sec-schedule", "sec-carbon", "sec-events", "sec-inputs",
                    "limits-form", "/static/vendor/uPlot.iife.min.js", "/static/dashboard.js"):
        assert element in page, element
    for path, needle in (("/static/dashboard.js", b"EventSource"), ("/static/dashboard.css", b"@media"),
                         ("/static/vendor/uPlot.iife.min.js", b"uPlot"), ("/static/vendor/uPlot.LICENSE", b"MIT")):
        status, body, _ = request(url + path)
        assert status == 200 and needle in body, path
    assert request(url + "/nope")[0] == 404


def test_healthz_status_state_and_limits(site) -> None:  # noqa: ANN001
    _, url = site
    assert request(url + "/healthz")[:2] == (200, b"ok\n")
    status = json.loads(request(url + "/status")[1])
    assert status["counters"]["ticks"] == 2 and "limits" in status
    state = json.loads(request(url + "/api/state")[1])
    assert state["site"]["simulated"] is True and state["site"]["managers"] == ["site_manager", "night_manager"]
    assert {"now", "noise", "dr", "schedule", "carbon", "limits", "events", "inputs", "health"} <= set(state)
    assert state["now"]["import_limit_kw"] == 60.0 and state["now"]["import_limit_source"] == "interconnection"
    assert len(state["schedule"]["t"]) == 12 and len(state["schedule"]["reason"]) == 12  # 3 h of 15 min
    assert state["noise"]["receptors"][0]["receptor_id"] == "porch"
    assert state["carbon"]["day"]["budget_kg"] == 500.0
    assert {"noise/porch", "renewable/solar_pv"} <= set(state["inputs"]["feed_ages_s"])
    limits = json.loads(request(url + "/api/limits")[1])
    assert limits["manager_limits"] == [] and limits["import_limit_kw"] is None


def test_events_stream_sends_the_document(site) -> None:  # noqa: ANN001
    _, url = site
    with urllib.request.urlopen(url + "/events", timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        for _ in range(20):
            line = stream.readline()
            if line.startswith(b"data: "):
                document = json.loads(line[6:])
                break
        else:
            pytest.fail("no data line on /events")
    assert document["site"]["id"] == "webtest" and "schedule" in document


def test_metrics_expose_every_listed_gauge(site) -> None:  # noqa: ANN001
    _, url = site
    status, body, kind = request(url + "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    exposed = exposed_names(body.decode())
    assert set(METRIC_NAMES) <= exposed, sorted(set(METRIC_NAMES) - exposed)
    text = body.decode()
    assert 'hashflex_import_limit_kw{source="interconnection"} 60.0' in text
    assert re.search(r'hashflex_noise_cap_dba\{receptor="porch"\} 60\.0', text)
    assert re.search(r'hashflex_carbon_left_kg\{period="day"\} \d', text)
    assert re.search(r'hashflex_feed_age_seconds\{feed="noise/porch"\}', text)


def exposed_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name + "_total" if kind == "counter" and not name.endswith("_total") else name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_grafana_queries_use_only_exposed_metric_names(site) -> None:  # noqa: ANN001
    _, url = site
    exposed = exposed_names(request(url + "/metrics")[1].decode())
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"]]
    used = {name for expr in exprs for name in re.findall(r"\bhashflex_[a-z0-9_]+", expr)}
    assert len(exprs) >= 10 and len(used) >= 15
    assert used <= exposed, f"Grafana queries name metrics /metrics does not expose: {sorted(used - exposed)}"


def test_limits_writes_need_a_token_and_name_the_field(site) -> None:  # noqa: ANN001
    live, url = site
    write = {"issuer": "site_manager", "import_limit_kw": 30, "valid_minutes": 60, "reason": "endpoint test"}
    assert request(url + "/api/limits", write)[0] == 401
    assert request(url + "/api/limits", write, token="not-the-token-at-all")[0] == 401
    assert json.loads(request(url + "/status")[1])["limits"]["manager_limits"] == []
    status, body, _ = request(url + "/api/limits", {**write, "import_limit_kw": -3}, token=TOKEN)
    assert status == 422 and "import_limit_kw" in json.loads(body)["error"]
    status, body, _ = request(url + "/api/limits", {**write, "import_limit": 3}, token=TOKEN)
    assert status == 422 and "import_limit: unknown field" in json.loads(body)["error"]
    status, body, _ = request(url + "/api/limits", {**write, "issuer": "stranger"}, token=TOKEN)
    assert status == 409 and "not a site manager" in json.loads(body)["reason"]
    status, body, _ = request(url + "/api/limits", write, token=TOKEN)
    ack = json.loads(body)
    assert status == 200 and ack["status"] == "accepted" and "import limit 30.0 kW" in ack["reason"]
    limits = json.loads(request(url + "/status")[1])["limits"]
    assert limits["import_limit_kw"] == 30.0 and limits["import_limit_source"] == "limits:site_manager"
    live.server.dashboard.refresh()
    state = json.loads(request(url + "/api/state")[1])
    assert state["now"]["import_limit_label"] == "manager override (site_manager)"
    assert any(e["kind"] == "limits" and "site_manager" in e["trigger"] for e in state["events"])
    assert any(e["kind"] == "rejected" and "write refused" in e["detail"] for e in state["events"])
    status, body, _ = request(url + "/api/limits", {"issuer": "site_manager", "clear": ["import"]}, token=TOKEN)
    assert status == 200 and "import cleared" in json.loads(body)["reason"]


def test_token_file_binds_the_issuer(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# managers\nsite_manager:aaaaaaaaaaaaaaaa\nnight_manager:bbbbbbbbbbbbbbbb\n")
    auth = ManagerAuth.from_env({"HASHFLEX_MANAGER_TOKENS_FILE": str(tokens)})
    assert auth.issuer_for("Bearer bbbbbbbbbbbbbbbb", None) == "night_manager"
    with pytest.raises(AuthError) as refused:
        auth.issuer_for("Bearer bbbbbbbbbbbbbbbb", "site_manager")
    assert refused.value.status == 403
    with pytest.raises(AuthError) as missing:
        auth.issuer_for(None, "site_manager")
    assert missing.value.status == 401
    tokens.write_text("site_manager:short\n")
    with pytest.raises(ValueError, match=r"tokens:1: expected 'issuer:token'"):
        ManagerAuth.from_env({"HASHFLEX_MANAGER_TOKENS_FILE": str(tokens)})
    with pytest.raises(AuthError) as disabled:
        ManagerAuth().issuer_for(f"Bearer {TOKEN}", "site_manager")
    assert disabled.value.status == 403


def test_reads_are_protected_off_loopback_and_writes_without_tokens_are_disabled() -> None:
    from hashflex.control.http import StatusServer

    status = {"healthy": True, "limits": {}}
    server = StatusServer(lambda now: status, lambda: None, host="0.0.0.0", port=0,  # type: ignore[arg-type, return-value]
                          auth=ManagerAuth(shared=TOKEN))
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert request(url + "/status")[0] == 401
        assert request(url + "/metrics")[0] == 401
        assert request(url + "/status", token=TOKEN)[0] == 200
        assert request(url + "/status?token=" + TOKEN)[0] == 200
        assert request(url + "/healthz")[0] == 200  # liveness stays open for the monitor
    finally:
        server.stop()


def test_run_simulate_prints_its_url_first_and_serves_while_running(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "hashflex.cli", "run", "--simulate", "--intervals", "3",
                                "--speed", "300", "--http-port", "0", "--no-dr-demo", "--out", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        assert first.startswith("dashboard: http://127.0.0.1:"), first
        url = first.split()[1]
        poll_until(lambda: process.poll() is not None or request(url + "status")[0] == 200, 60, interval_s=0.2,
                   message="the simulated site's /status")
        assert process.poll() is None, "the run ended before serving"
        assert b"<title>hashflex site</title>" in request(url)[1]
        out, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "[1/3]" in out and "[3/3]" in out  # progress lines
    report = tmp_path / "report.html"
    assert f"HTML report: {report}" in out and report.stat().st_size > 1000
