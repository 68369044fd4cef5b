"""The VNish simulator: its own web API and cgminer API on real sockets, and pyasic itself against it."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys

import httpx
import pytest

from hashflex.profile import MinerGroup, MinerMode
from hashflex.sim.firmware import VnishFleet
from hashflex.sim.miners import MinerState, ScaledClock

GROUP = MinerGroup(id="s19xp", model="Antminer S19 XP", units=2, idle_power_kw=0.02, boot_minutes=0.0,
                   modes=[MinerMode(name="eco", power_kw=2.4, hashrate_th_s=110.0, sound_power_dba=95.0),
                          MinerMode(name="stock", power_kw=3.0, hashrate_th_s=134.0, sound_power_dba=97.0)])


@pytest.fixture
def fleet():
    with VnishFleet({"m1": GROUP, "m2": GROUP}, clock=ScaledClock(600)) as f:
        yield f


def _cgminer(host: str, port: int, command: str) -> dict:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(json.dumps({"command": command}).encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.endswith(b"\0")
    return json.loads(data[:-1])


def test_web_api_needs_the_token_and_follows_commands(fleet):
    host, port = fleet.endpoints()["m1"]
    base = f"http://{host}:{port}/api/v1"
    assert httpx.get(f"{base}/summary").status_code == 401
    assert httpx.post(f"{base}/unlock", json={"pw": "wrong"}).status_code == 401
    token = httpx.post(f"{base}/unlock", json={"pw": "admin"}).json()["token"]
    auth = {"Authorization": token}
    assert httpx.post(f"{base}/mining/start", headers=auth).json() == {"success": True}
    assert fleet.miner("m1").snapshot().state is MinerState.HASHING
    bad = httpx.post(f"{base}/settings", headers=auth, json={"miner": {"overclock": {"preset": "9999"}}})
    assert bad.status_code == 400 and "miner.overclock.preset" in bad.json()["error"]
    ok = httpx.post(f"{base}/settings", headers=auth, json={"miner": {"overclock": {"preset": "2400"}}})
    assert ok.status_code == 200 and fleet.miner("m1").mode == "eco"
    summary = httpx.get(f"{base}/summary", headers=auth).json()
    assert summary["miner"]["power_usage"] == 2400 and summary["miner"]["miner_status"]["miner_state"] == "mining"
    assert httpx.get(f"http://{host}:{port}/").text.count("AnthillOS")
    httpx.post(f"{base}/mining/stop", headers={"Authorization": f"Bearer {token}"})
    assert fleet.miner("m1").snapshot().state is MinerState.SLEEPING


def test_cgminer_api_reports_chains_and_a_lost_board(fleet):
    fleet.hardware["m2"].boards_alive = 2
    fleet.miner("m2").command_mode("stock", None)
    host, port = fleet.rpc_endpoints()["m2"]
    stats = _cgminer(host, port, "stats")["STATS"]
    assert stats[0]["Type"] == "Antminer S19 XP"
    assert stats[1]["chain_acn3"] == 0 and stats[1]["chain_acn1"] == 110
    multi = _cgminer(host, port, "summary+pools")
    assert multi["summary"][0]["SUMMARY"][0]["GHS 5s"] == pytest.approx(134000 * 2 / 3)
    assert _cgminer(host, port, "bogus")["STATUS"][0]["STATUS"] == "E"


def test_pyasic_get_miner_and_get_data_on_the_standard_ports():
    import pyasic  # noqa: E402 - the test extra installs it; missing = fail
    address = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(2, 254)}"
    with VnishFleet({"m1": GROUP}, clock=ScaledClock(600), addresses={"m1": address}) as fleet:
        miner = asyncio.run(pyasic.get_miner(address))
        assert type(miner).__name__ == "VNishS19XP"
        assert asyncio.run(miner.resume_mining()) is True
        data = asyncio.run(miner.get_data())
        assert data.wattage == 3000 and data.is_mining is True and data.fw_ver == "1.2.6-sim"
        assert len(data.hashboards) == 3 and len(data.fans) == 4
        assert asyncio.run(miner.stop_mining()) is True
        assert fleet.miner("m1").snapshot().state is MinerState.SLEEPING


def test_hashflex_sim_cli_serves_vnish():
    proc = subprocess.Popen([sys.executable, "-m", "hashflex.cli", "sim", "--protocol", "vnish", "--miners", "2",
                             "--profile", "west_texas"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        endpoints = json.loads(proc.stdout.readline())
        rpc = json.loads(proc.stdout.readline())["rpc_ports"]
        assert len(endpoints) == 2 and set(rpc) == set(endpoints)
        host, port = next(iter(endpoints.values()))
        assert "AnthillOS" in httpx.get(f"http://{host}:{port}/").text
    finally:
        proc.terminate()
        code = proc.wait(30)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        assert code == 0, err


def test_cli_rejects_too_many_miners():
    done = subprocess.run([sys.executable, "-m", "hashflex.cli", "sim", "--protocol", "luxos", "--miners", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--miners must be between 1 and" in done.stderr


def test_stock_antminer_needs_digest_auth_and_follows_work_modes():
    from hashflex.sim.firmware import ANTMINER_REALM, AntminerStockFleet

    with AntminerStockFleet({"m1": GROUP}, clock=ScaledClock(600)) as fleet:
        host, port = fleet.endpoints()["m1"]
        url = f"http://{host}:{port}/cgi-bin"
        challenge = httpx.get(f"{url}/get_system_info.cgi")
        assert challenge.status_code == 401 and ANTMINER_REALM in challenge.headers["www-authenticate"]
        assert httpx.get(f"{url}/get_system_info.cgi", auth=httpx.DigestAuth("root", "wrong")).status_code == 401
        auth = httpx.DigestAuth("root", "root")
        assert httpx.get(f"{url}/get_system_info.cgi", auth=auth).json()["minertype"] == "Antminer S19 XP"
        assert httpx.post(f"{url}/set_miner_conf.cgi", auth=auth, json={"miner-mode": 3}).json()["code"] == "M000"
        assert fleet.miner("m1").mode == "eco"  # low power = the lowest mode
        assert httpx.get(f"{url}/get_miner_conf.cgi", auth=auth).json()["bitmain-work-mode"] == "3"
        assert httpx.post(f"{url}/set_miner_conf.cgi", auth=auth, json={"miner-mode": 7}).json()["code"] == "M001"
        httpx.post(f"{url}/set_miner_conf.cgi", auth=auth, json={"miner-mode": 1})
        assert fleet.miner("m1").snapshot().state is MinerState.SLEEPING
        # unknown paths are not JSON (pyasic's get_miner would otherwise take it for a Marathon miner)
        assert httpx.get(f"http://{host}:{port}/kaonsu/v1/brief", auth=auth).status_code == 404


def test_pyasic_identifies_and_drives_a_stock_antminer_on_the_standard_ports():
    import pyasic  # noqa: E402 - the test extra installs it; missing = fail

    from hashflex.sim.firmware import AntminerStockFleet

    address = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(2, 254)}"
    with AntminerStockFleet({"m1": GROUP}, clock=ScaledClock(600), addresses={"m1": address}) as fleet:
        miner = asyncio.run(pyasic.get_miner(address))
        assert type(miner).__name__ == "BMMinerS19XP"  # pyasic's class for stock-firmware S19 XP
        assert asyncio.run(miner.resume_mining()) is True
        assert fleet.miner("m1").mode == "stock"
        data = asyncio.run(miner.get_data())
        assert data.is_mining is True and data.wattage is None  # stock firmware: no power reading
        assert float(data.hashrate) == pytest.approx(134.0) and len(data.hashboards) == 3
        assert asyncio.run(miner.stop_mining()) is True
        assert fleet.miner("m1").snapshot().state is MinerState.SLEEPING


WHATSMINER = GROUP.model_copy(update={"model": "Whatsminer M50VH80"})


def test_pyasic_identifies_and_drives_a_whatsminer_with_its_encrypted_api():
    import pyasic  # noqa: E402 - the test extra installs it; missing = fail

    from hashflex.sim.firmware import WhatsminerFleet

    address = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(2, 254)}"
    with WhatsminerFleet({"m1": WHATSMINER}, clock=ScaledClock(600), addresses={"m1": address}) as fleet:
        miner = asyncio.run(pyasic.get_miner(address))
        assert type(miner).__name__ == "BTMinerM50VH80"
        assert asyncio.run(miner.resume_mining()) is True  # privileged: token, md5-crypt sign, AES
        data = asyncio.run(miner.get_data())
        assert data.wattage == 3000 and data.is_mining is True and len(data.fans) == 2
        assert asyncio.run(miner.set_power_limit(2500)) is True and fleet.miner("m1").mode == "eco"
        assert asyncio.run(miner.set_power_limit(500)) is False  # under the lowest mode: refused
        assert ("privileged", "adjust_power_limit") in fleet.requests["m1"]
        assert asyncio.run(miner.stop_mining()) is True
        assert fleet.miner("m1").snapshot().state is MinerState.SLEEPING


def test_whatsminer_refuses_a_wrong_password_and_an_unsigned_command():
    from pyasic.miners.backends.btminer import BTMinerV2

    from hashflex.sim.firmware import WhatsminerFleet

    with WhatsminerFleet({"m1": WHATSMINER}, clock=ScaledClock(600), password="s3cret") as fleet:
        host, port = fleet.endpoints()["m1"]
        miner = BTMinerV2(host)
        miner.rpc.port = port
        assert asyncio.run(miner.resume_mining()) is False  # pyasic's default password "admin"
        assert fleet.miner("m1").snapshot().state is MinerState.SLEEPING
        miner.rpc.pwd = "s3cret"
        miner.rpc.token = None
        assert asyncio.run(miner.resume_mining()) is True
        assert _cgminer(host, port, "summary")["SUMMARY"][0]["Power"] == 3000
        with socket.create_connection((host, port), timeout=5) as sock:  # not encrypted with the key
            sock.sendall(json.dumps({"enc": 1, "data": "bm90IGVuY3J5cHRlZA=="}).encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert json.loads(answer.rstrip(b"\0"))["STATUS"] == "E"
        assert fleet.miner("m1").snapshot().state is not MinerState.SLEEPING


def test_hashflex_sim_cli_serves_whatsminers():
    proc = subprocess.Popen([sys.executable, "-m", "hashflex.cli", "sim", "--protocol", "whatsminer", "--miners", "2",
                             "--profile", "west_texas"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        endpoints = json.loads(proc.stdout.readline())
        assert len(endpoints) == 2
        host, port = next(iter(endpoints.values()))
        assert _cgminer(host, port, "devdetails")["DEVDETAILS"][0]["Driver"] == "bitmicro"
    finally:
        proc.terminate()
        code = proc.wait(30)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        assert code == 0, err
