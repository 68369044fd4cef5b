"""pyasic itself against our LuxOS simulator: discovery, get_data, get_config, power limit, sleep/wake.

pyasic's ``get_miner(ip)`` only probes the standard ports (80/443 web, 4028 API), so each simulated
miner listens on its own random 127.x.y.z loopback address at port 4028 (all of 127.0.0.0/8 is
loopback on Linux). The other tests point pyasic's RPC object at the simulator's port directly.
Before the simulator answered ``config``/``pools``/``fans``/... and ``+`` multi-commands,
``get_data`` raised ``APIError: Failed to call config``.
"""

from __future__ import annotations

import asyncio
import random
import warnings

import pyasic
import pytest

from hashflex.profile import MinerGroup, MinerMode
from hashflex.sim.miners import MinerState, ScaledClock, SimulatedMinerFleet

GROUP = MinerGroup(id="s19xp", model="Antminer S19 XP", units=2, idle_power_kw=0.02, boot_minutes=1.0,
                   modes=[MinerMode(name="eco", power_kw=2.4, hashrate_th_s=110.0, sound_power_dba=95.0),
                          MinerMode(name="stock", power_kw=3.0, hashrate_th_s=134.0, sound_power_dba=97.0)])


def _loopback_address() -> str:
    # a random 127.x.y.z (not 127.0.0.1, where other tests' simulators listen) on the standard port
    return f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(2, 254)}"


@pytest.fixture
def fleet():
    clock = ScaledClock(scale=600)
    with SimulatedMinerFleet({"m1": GROUP, "m2": GROUP}, clock=clock) as f:
        yield f


def _luxminer(fleet: SimulatedMinerFleet, miner_id: str):
    from pyasic.miners.antminer.luxos.X19.S19 import LUXMinerS19XP

    host, port = fleet.endpoints()[miner_id]
    miner = LUXMinerS19XP(host)
    miner.rpc.port = port
    return miner


def test_get_miner_discovers_the_model_on_the_standard_port():
    address = _loopback_address()
    with SimulatedMinerFleet({"m1": GROUP}, clock=ScaledClock(600), addresses={"m1": (address, 4028)}) as f:
        assert f.endpoints() == {"m1": (address, 4028)}
        miner = asyncio.run(pyasic.get_miner(address))
    assert miner is not None
    assert type(miner).__name__ == "LUXMinerS19XP"


def test_addresses_must_be_loopback():
    with pytest.raises(ValueError, match="addresses\\[m1\\].*loopback"):
        SimulatedMinerFleet({"m1": GROUP}, addresses={"m1": ("10.0.0.5", 4028)})


def test_get_data_reads_every_field(fleet, wait_for):
    fleet.miner("m1").command_mode("stock", None)
    wait_for(lambda: fleet.miner("m1").snapshot().state is MinerState.HASHING, message="m1 hashing")
    data = asyncio.run(_luxminer(fleet, "m1").get_data())
    assert data.wattage == 3000
    assert data.wattage_limit == 3000  # active profile "stock" from config + profiles
    assert data.fw_ver and data.api_ver == "3.7"
    assert len(data.fans) == 4 and all(f.speed and f.speed > 0 for f in data.fans)
    assert len(data.hashboards) == 3 and all(b.chips == 110 and b.temp and b.temp > 30 for b in data.hashboards)
    assert sum(float(b.hashrate) for b in data.hashboards) == pytest.approx(134.0, rel=1e-3)
    assert data.pools and data.pools[0].user == "hashflex.m1"
    # one multi-command for all of it, as pyasic sends it
    assert any("+" in command for command, _ in fleet.commands["m1"])


def test_get_config_has_the_full_profiles(fleet):
    config = asyncio.run(_luxminer(fleet, "m1").get_config())
    presets = {p.name: p.power for p in config.mining_mode.available_presets}
    assert presets == {"eco": 2400, "stock": 3000}
    assert config.mining_mode.active_preset.name == "stock"
    assert config.temperature.hot == 90 and config.pools.groups[0].name == "Default"


def test_set_power_limit_picks_the_highest_profile_under_the_limit(fleet):
    miner = _luxminer(fleet, "m1")
    assert asyncio.run(miner.set_power_limit(2500)) is True
    assert fleet.miner("m1").mode == "eco"


def test_set_power_limit_turns_atm_off_and_on_again(fleet):
    fleet.set_atm("m2", True)
    assert asyncio.run(_luxminer(fleet, "m2").set_power_limit(2500)) is True
    assert fleet.miner("m2").mode == "eco" and fleet.atm_enabled("m2") is True


def test_stop_and_resume_mining(fleet):
    miner = _luxminer(fleet, "m1")
    assert asyncio.run(miner.resume_mining()) is True
    assert fleet.miner("m1").snapshot().state is not MinerState.SLEEPING
    assert asyncio.run(miner.stop_mining()) is True
    assert fleet.miner("m1").snapshot().state is MinerState.SLEEPING


def test_multicommand_refuses_privileged_parts(fleet):
    from pyasic.errors import APIError

    miner = _luxminer(fleet, "m1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(APIError, match="privileged"):
            asyncio.run(miner.rpc.send_command("summary+curtail", "x,sleep"))
    assert fleet.miner("m1").snapshot().state is MinerState.SLEEPING


def test_hashflex_sim_cli_serves_luxos_miners_pyasic_can_read():
    import json
    import subprocess
    import sys

    from pyasic.miners.backends.luxminer import LUXMiner

    proc = subprocess.Popen([sys.executable, "-m", "hashflex.cli", "sim", "--protocol", "luxos", "--miners", "3",
                             "--profile", "west_texas"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        endpoints = json.loads(proc.stdout.readline())
        assert len(endpoints) == 3 and len({m.split("-")[0] for m in endpoints}) == 3  # round-robin over groups
        miner_id, (host, port) = next(iter(endpoints.items()))
        assert host == "127.0.0.1"
        miner = LUXMiner(host)
        miner.rpc.port = port
        data = asyncio.run(miner.get_data(include=["wattage", "fw_ver"]))
        assert data.fw_ver and data.wattage is not None
    finally:
        proc.terminate()
        code = proc.wait(30)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        assert code == 0, err
