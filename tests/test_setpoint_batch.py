"""The columnar setpoint batch through the driver interface (issue 18): on random fleets the batch
path gives the same per-miner setpoints (mode, power, expiry), the same results, the same registry
state and the same loop state and records as the per-miner path it replaces."""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.audit.payloads import setpoints_payload
from hashflex.control.dispatch import ArrayDispatch
from hashflex.control.fleet import FleetArrays, FleetState, Miner
from hashflex.drivers.base import MinerRegistry, Setpoint, SetpointResult, SetpointStatus
from hashflex.drivers.batch import BatchResult, GroupBatch, SetpointBatch, send_batch
from hashflex.profile import SiteProfile
from hashflex.sim.site import SimulatedFleet

NOW = datetime(2025, 7, 1, 20, 0, tzinfo=timezone.utc)
EXPIRY_S = 600.0
STATUSES = list(SetpointStatus)


@st.composite
def sites(draw: st.DrawFn) -> tuple[SiteProfile, FleetState]:
    """A random profile (1-4 groups, 1-3 modes, 1-15 units) and its fleet, in random modes."""
    groups = []
    for g in range(draw(st.integers(1, 4))):
        n_modes = draw(st.integers(1, 3))
        powers = sorted(draw(st.lists(st.integers(15, 60), min_size=n_modes, max_size=n_modes, unique=True)))
        groups.append({"id": f"g{g}", "model": "S", "units": draw(st.integers(1, 15)),
                       "idle_power_kw": draw(st.sampled_from([0.0, 0.01, 0.02])),
                       "min_on_minutes": draw(st.sampled_from([0, 30])),
                       "modes": [{"name": f"m{k}", "power_kw": p / 10, "hashrate_th_s": p * 5 + k,
                                  "sound_power_dba": 70 + k} for k, p in enumerate(powers)]})
    profile = SiteProfile.model_validate({
        "site": {"name": "random", "settlement_point": "LZ_WEST", "horizon_hours": 2},
        "grid": {"import_limit_kw": 1000.0},
        "miner_groups": groups,
        "receptors": [{"id": "house", "attenuation_db": {g["id"]: 40.0 for g in groups}, "background_dba": 30,
                       "caps": [{"name": "always", "start": "00:00", "end": "23:59", "cap_dba": 100.0},
                                {"name": "late", "start": "23:59", "end": "00:00", "cap_dba": 100.0}]}],
        "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
        "economics": {"hashprice_usd_per_ph_day": 50},
    })
    modes = {g.id: ["sleep"] + [m.name for m in g.modes] for g in profile.miner_groups}
    miners = [Miner(m, g, mode=draw(st.sampled_from(modes[g]))) for m, g in profile.miner_ids().items()]
    return profile, FleetState(miners, profile.miner_groups)


def _random_modes(arrays: FleetArrays, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g: rng.integers(-1, len(a.mode_names), size=len(a.miner_id)).astype(np.int16) for g, a in arrays.groups.items()}


def _fate(seed: int, tick: int, miner_id: str) -> SetpointStatus:
    """A miner's answer in one tick, the same for both drivers (most are applied)."""
    k = zlib.crc32(f"{seed}/{tick}/{miner_id}".encode()) % 12
    return STATUSES[k] if k < len(STATUSES) else SetpointStatus.APPLIED


def _reason(status: SetpointStatus) -> str:
    return f"the test says {status.value}"


def _fields(setpoints) -> list[tuple]:
    return [(sp.miner_id, sp.mode, sp.power_target_kw, sp.issued_at, sp.expires_at, sp.group_id) for sp in setpoints]


# --------------------------------------------------------------------------- the batch itself


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sites(), seed=st.integers(0, 2**16))
def test_the_batch_is_the_per_miner_setpoints(case, seed) -> None:
    """`ArrayDispatch.to_batch` lists exactly `to_setpoints`' setpoints (mode, power, expiry, group),
    in the same order; its counts and audit summary are the per-miner ones."""
    _, fleet = case
    arrays = FleetArrays.from_fleet(fleet)
    dispatch = ArrayDispatch(_random_modes(arrays, seed))
    want = dispatch.to_setpoints(arrays, NOW, EXPIRY_S)
    batch = dispatch.to_batch(arrays, NOW, EXPIRY_S)
    assert len(batch) == len(want)
    assert _fields(batch) == _fields(want)
    assert batch == want
    assert all(sp.expires_at == NOW + timedelta(seconds=EXPIRY_S) for sp in batch)
    assert batch.audit_summary("schedule") == setpoints_payload(list(want), source="schedule")
    assert setpoints_payload(batch, source="guard") == setpoints_payload(list(want), source="guard")
    tally: dict[tuple[str, str], int] = {}
    for sp in want:
        tally[sp.group_id, sp.mode] = tally.get((sp.group_id, sp.mode), 0) + 1
    assert batch.counts() == tally


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sites(), seed=st.integers(0, 2**16))
def test_results_in_columns_are_the_per_miner_results(case, seed) -> None:
    """`BatchResult.from_results` round-trips; `tally`, `rows` and `status_of` say what the list says."""
    _, fleet = case
    arrays = FleetArrays.from_fleet(fleet)
    batch = ArrayDispatch(_random_modes(arrays, seed)).to_batch(arrays, NOW, EXPIRY_S)
    results = [SetpointResult(sp.miner_id, _fate(seed, 0, sp.miner_id), _reason(_fate(seed, 0, sp.miner_id)), 0.5)
               for sp in batch]
    got = BatchResult.from_results(batch, results)
    assert list(got) == results
    fresh = BatchResult(batch, got.outcomes, got.codes)  # made from the columns alone
    assert list(fresh) == results
    tally: dict[str, int] = {}
    for r in results:
        tally[r.status.value] = tally.get(r.status.value, 0) + 1
    assert fresh.tally() == tally
    bad = {SetpointStatus.REJECTED, SetpointStatus.TIMEOUT}
    assert [(sp, r) for sp, r in fresh.rows(bad)] == [(sp, r) for sp, r in zip(batch, results) if r.status in bad]
    some = [r.miner_id for r in results[::3]] + ["nobody"]
    assert fresh.status_of(some) == {r.miner_id: r.status for r in results[::3]}


def test_batch_refuses_what_a_setpoint_refuses() -> None:
    """The checks a `Setpoint` makes, made once per batch and column, naming what is wrong."""
    ids = np.array(["a-1", "a-2"], dtype=object)
    power = np.array([0.0, 0.01, 3.0])
    with pytest.raises(ValueError, match="timezone-aware"):
        SetpointBatch([], NOW.replace(tzinfo=None), NOW.replace(tzinfo=None) + timedelta(seconds=1))
    with pytest.raises(ValueError, match="expires_at must be after"):
        SetpointBatch([], NOW, NOW)
    with pytest.raises(ValueError, match="mode index"):
        GroupBatch("a", ids, np.array([0, 1], dtype=np.int16), ("eco",), power)
    with pytest.raises(ValueError, match=">= 0"):
        GroupBatch("a", ids, np.array([0, -1], dtype=np.int16), ("eco",), np.array([0.0, -1.0, 3.0]))
    with pytest.raises(ValueError, match="2 modes for 1 miners"):
        GroupBatch("a", ids[:1], np.array([0, -1], dtype=np.int16), ("eco",), power)
    batch = SetpointBatch([GroupBatch("a", ids, np.array([0, -1], dtype=np.int16), ("eco",), power)], NOW,
                          NOW + timedelta(seconds=1))
    with pytest.raises(ValueError, match="result 1 is for 'a-3'"):
        BatchResult.from_results(batch, [SetpointResult("a-1", SetpointStatus.APPLIED, "ok"),
                                         SetpointResult("a-3", SetpointStatus.APPLIED, "ok")])
    with pytest.raises(ValueError, match="1 results for 2"):
        BatchResult.from_results(batch, [SetpointResult("a-1", SetpointStatus.APPLIED, "ok")])


class _PerMinerDriver:
    """A driver with only `apply` (LuxOS-like): `send_batch` must expand the batch for it."""

    def __init__(self) -> None:
        self.received: list[list[Setpoint]] = []

    def apply(self, batch):
        self.received.append(list(batch))
        return [SetpointResult(sp.miner_id, SetpointStatus.APPLIED, "ok") for sp in batch]


def test_a_per_miner_driver_gets_the_batch_one_setpoint_at_a_time() -> None:
    """The default for drivers without ``apply_batch``: the batch's setpoints, in order, to ``apply``."""
    ids = np.array(["a-1", "a-2"], dtype=object)
    batch = SetpointBatch([GroupBatch("a", ids, np.array([0, -1], dtype=np.int16), ("eco",),
                                      np.array([0.0, 0.01, 3.0]))], NOW, NOW + timedelta(seconds=60))
    driver = _PerMinerDriver()
    result = send_batch(driver, batch)
    assert _fields(driver.received[0]) == [("a-1", "eco", 3.0, NOW, NOW + timedelta(seconds=60), "a"),
                                           ("a-2", "sleep", 0.01, NOW, NOW + timedelta(seconds=60), "a")]
    assert result.tally() == {"applied": 2}


# --------------------------------------------------------------------------- the registry


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sites(), seeds=st.lists(st.integers(0, 2**16), min_size=1, max_size=6))
def test_the_registry_counts_a_batch_as_its_results(case, seeds) -> None:
    """`MinerRegistry.record_batch` leaves every miner's counts and availability as `record` of the
    same results one by one does, batch after batch (failures build up, applied resets them)."""
    _, fleet = case
    arrays = FleetArrays.from_fleet(fleet)
    groups = {m: g for g, a in arrays.groups.items() for m in a.miner_id.tolist()}
    at = NOW
    one, many = (MinerRegistry(groups, max_failures=2, clock=lambda: at) for _ in range(2))
    for tick, seed in enumerate(seeds):
        batch = ArrayDispatch(_random_modes(arrays, seed)).to_batch(arrays, NOW, EXPIRY_S)
        results = [SetpointResult(sp.miner_id, _fate(seed, tick, sp.miner_id), _reason(_fate(seed, tick, sp.miner_id)))
                   for sp in batch]
        one.record(results)
        many.record_batch(BatchResult.from_results(batch, results))
        assert many.unavailable() == one.unavailable()
        assert {m: (h.failures, h.mismatches) for m, h in many._health.items()} == {
            m: (h.failures, h.mismatches) for m, h in one._health.items()}
        assert all(many.is_available(m) == one.is_available(m) for m in groups)
        assert many.availability_by_group() == one.availability_by_group()


# --------------------------------------------------------------------------- the loop


class _Flaky:
    """Answers each setpoint with its miner's fate for this call (`_fate`): per setpoint (``apply``)
    or, when ``columns``, a batch whole in columns (``apply_batch``); records what it was sent."""

    def __init__(self, seed: int, columns: bool) -> None:
        self.seed, self.calls, self.sent = seed, 0, []
        if columns:
            self.apply_batch = self._apply_batch

    def apply(self, batch):
        self.calls += 1
        self.sent.append(_fields(batch))
        return [SetpointResult(sp.miner_id, s, _reason(s)) for sp in batch for s in [_fate(self.seed, self.calls, sp.miner_id)]]

    def _apply_batch(self, batch: SetpointBatch) -> BatchResult:
        self.calls += 1
        self.sent.append(_fields(batch))
        codes = []
        for group in batch.groups:
            codes.append(np.array([STATUSES.index(_fate(self.seed, self.calls, m)) for m in group.miner_id.tolist()],
                                  dtype=np.int64))
        return BatchResult(batch, [(s, _reason(s), 0.0) for s in STATUSES], codes)


class _OnceSolved:
    """A real HiGHS solve of the first problem, the same schedule for every later tick and both loops."""

    def __init__(self, shared: dict) -> None:
        from hashflex.control.solver import SolveRunner

        self.shared, self.runner, self.last_seconds = shared, SolveRunner(time_limit_s=30, inline=True), 0.0

    def run(self, problem, fine_intervals=None):
        if "schedule" not in self.shared:
            self.shared["schedule"] = self.runner.run(problem, fine_intervals)
        return self.shared["schedule"]


def _flat(now, start, periods):
    from hashflex.control.loop import HorizonForecast

    return HorizonForecast(pd.date_range(start, periods=periods, freq="15min"), np.full(periods, 20.0))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sites(), seed=st.integers(0, 2**16), level=st.floats(40.0, 90.0))
def test_the_loop_on_the_batch_path_ends_as_on_the_per_miner_path(case, seed, level) -> None:
    """Two loops on the same fleet, one whose driver takes the batch whole in columns, one whose
    driver takes setpoints one by one, answering the same miners with the same failures: tick after
    tick and through a noise fast-path cut, both drivers are sent the same setpoints (mode, power,
    expiry), and the loops end with the same results, fleet (modes, starts, stops: the failed
    miners reverted), unavailable miners, counters and audit records."""
    from hashflex.control.loop import ControlLoop

    profile, fleet = case
    shared: dict = {}
    loops, drivers, records = [], [], []
    for columns in (False, True):
        driver = _Flaky(seed, columns)
        own = FleetState.from_dict(fleet.to_dict(), profile)
        loop = ControlLoop(profile, forecaster=_flat, driver=driver, fleet=own, solver=_OnceSolved(shared))
        entries: list = []
        loop.recorder = type("Recorder", (), {"record": lambda self, kind, payload, at, e=entries: e.append(
            (kind, payload, at))})()
        loop.registry._clock = lambda: NOW
        if not columns:  # the per-miner path as it was: lists of Setpoint to `apply`, results per miner
            loop._dispatch = lambda batch, now, modes=None, loop=loop: ControlLoop._dispatch(
                loop, list(batch), now, modes=modes)
        loops.append(loop)
        drivers.append(driver)
        records.append(entries)
    for k in range(3):
        reports = [loop.tick(NOW + timedelta(minutes=15 * k)) for loop in loops]
        assert isinstance(reports[1].batch, SetpointBatch) and isinstance(reports[1].results, BatchResult)
        assert isinstance(reports[0].results, list)
        assert _fields(reports[0].batch) == _fields(reports[1].batch)
        assert list(reports[0].results) == list(reports[1].results)
    for loop in loops:
        loop._cut_noise_now("house", level, 45.0, NOW + timedelta(minutes=40))
    per_miner, batched = loops
    assert drivers[0].sent == drivers[1].sent
    assert batched.fleet.to_dict() == per_miner.fleet.to_dict()
    assert batched.registry.unavailable() == per_miner.registry.unavailable()
    assert batched.counters == per_miner.counters
    assert batched.transport_failure == per_miner.transport_failure
    assert records[1] == records[0]


def test_the_simulated_fleet_takes_a_batch_as_its_setpoints() -> None:
    """`SimulatedFleet.apply_batch` (array writes) leaves the fleet as `apply` of the same setpoints,
    including a mode its group lacks (held aside) and ids that are not the profile's order."""
    profile = SiteProfile.model_validate({
        "site": {"name": "small", "settlement_point": "LZ_WEST"}, "grid": {"import_limit_kw": 100.0},
        "miner_groups": [{"id": "a", "model": "S", "units": 3, "idle_power_kw": 0.01,
                          "modes": [{"name": "eco", "power_kw": 2.0, "hashrate_th_s": 80, "sound_power_dba": 80},
                                    {"name": "stock", "power_kw": 3.0, "hashrate_th_s": 100, "sound_power_dba": 84}]}],
        "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
        "economics": {"hashprice_usd_per_ph_day": 50},
    })
    power = np.array([0.0, 0.01, 2.0, 3.0])
    end = NOW + timedelta(minutes=5)
    cases = [
        GroupBatch("a", np.array(["a-1", "a-2", "a-3"], dtype=object), np.array([1, -1, 0], dtype=np.int16),
                   ("eco", "stock"), power, sorted_ids=True),
        GroupBatch("a", np.array(["a-3", "a-1", "a-2"], dtype=object), np.array([1, -1, 0], dtype=np.int16),
                   ("eco", "stock"), power),
        GroupBatch("a", np.array(["a-1", "a-2", "a-3"], dtype=object), np.array([1, 0, 0], dtype=np.int16),
                   ("warp", "stock"), power),
    ]
    for group in cases:
        batch = SetpointBatch([group], NOW, end)
        whole, each = SimulatedFleet(profile), SimulatedFleet(profile)
        result = whole.apply_batch(batch)
        each.apply(batch.setpoints())
        assert result.tally() == {"applied": 3}
        assert whole.running() == each.running()
        assert whole.load_kw() == pytest.approx(each.load_kw())
        assert whole.expire(end) == each.expire(end)
        assert whole.running() == each.running() == {}


@settings(max_examples=200, deadline=None)
@given(groups=st.lists(st.tuples(st.lists(st.floats(0.0, 5000.0, allow_nan=False, allow_infinity=False),
                                          min_size=3, max_size=5),
                                 st.lists(st.integers(-2, 2), min_size=0, max_size=300)),
                       min_size=1, max_size=4))
def test_power_target_is_the_in_order_sum_to_the_bit(groups) -> None:
    """`SetpointBatch.power_target_kw` (vectorised, issue 18) equals the per-miner sum in batch
    order exactly — not pairwise summation, whose last bits differ and would change the audit
    record's hash. Awkward SYNTHETIC float powers, empty groups included."""
    built, expected = [], 0.0
    for k, (powers, modes) in enumerate(groups):
        table = np.array(powers[:3] + [powers[-1]], dtype=float)  # off, sleep and 2 modes
        mode = np.array([m if m < 2 else 1 for m in modes], dtype=np.int16)
        built.append(GroupBatch(f"g{k}", np.array([f"g{k}-{i}" for i in range(len(mode))], dtype=object), mode,
                                ("eco", "normal"), table))
        for m in mode.tolist():
            expected += float(table[m + 2])
    batch = SetpointBatch(built, NOW, NOW + timedelta(seconds=EXPIRY_S))
    assert batch.power_target_kw() == expected  # exact, not approx
