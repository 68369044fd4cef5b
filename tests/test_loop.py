"""The control loop on a simulated clock and site: DR, noise through a night, faults."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hashflex.control.loop import ControlLoop, HorizonForecast
from hashflex.control.solver import SolveRunner
from hashflex.data import bundled_path
from hashflex.feeds.ercot import read_price_file
from hashflex.messages import DREventMessage
from hashflex.optimize.problem import problem_from_profile
from hashflex.optimize.schedule import SolveStatus
from hashflex.profile import load_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet, published_at, run_simulation


@pytest.fixture(scope="module")
def feb_2020_prices_west() -> pd.DataFrame:
    rt = read_price_file(bundled_path("ercot/RTM-2020-02.csv"), settlement_point="LZ_WEST", settlement_point_type="LZ")
    da = read_price_file(bundled_path("ercot/DAM-2020-02.csv"), settlement_point="LZ_WEST")
    return pd.concat([rt, da], ignore_index=True)


@pytest.fixture(scope="module")
def feb_2020_prices_north() -> pd.DataFrame:
    rt = read_price_file(bundled_path("ercot/RTM-2020-02.csv"), settlement_point="LZ_NORTH", settlement_point_type="LZ")
    da = read_price_file(bundled_path("ercot/DAM-2020-02.csv"), settlement_point="LZ_NORTH")
    return pd.concat([rt, da], ignore_index=True)


def west_texas_loop(prices: pd.DataFrame, fleet: SimulatedFleet | None = None) -> tuple[ControlLoop, SimulatedFleet]:
    """The default site's loop over recorded prices, an in-process fleet and an inline solver."""
    profile = load_profile("west_texas")
    fleet = fleet or SimulatedFleet(profile)
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, prices), driver=fleet,
                       solver=SolveRunner(inline=True))
    return loop, fleet


def test_dr_event_brings_measured_import_under_the_limit(feb_2020_prices_west: pd.DataFrame) -> None:
    profile = load_profile("west_texas")
    start = pd.Timestamp("2020-02-10T12:00-06:00")
    event = DREventMessage(event_id="ers-7", modification_number=0, program="ERS-10",
                           start=(start + pd.Timedelta(hours=1)).to_pydatetime(),
                           end=(start + pd.Timedelta(hours=2)).to_pydatetime(),
                           import_limit_kw=5_000.0, issuer="utility_oncor")
    result = run_simulation(profile, feb_2020_prices_west, start, 12, dr_events=[event])
    frame = result.intervals
    during = frame[(frame.index >= event.start) & (frame.index < event.end)]
    before = frame[frame.index < event.start]
    assert len(during) == 4
    assert (before["grid_import_kw"] > 10_000).all(), "the site ran before the event"
    assert (during["grid_import_kw"] <= 5_000.0 + 1e-6).all()
    assert set(during["limit_source"]) == {"DR:ers-7"}
    assert result.loop.counters["dr_accepted"] == 1


def test_unknown_issuer_is_rejected_with_a_reason(feb_2020_prices_west: pd.DataFrame) -> None:
    loop, _ = west_texas_loop(feb_2020_prices_west)
    now = pd.Timestamp("2020-02-10T12:00-06:00").to_pydatetime()
    ack = loop.handle_dr(DREventMessage(event_id="x", modification_number=0, program="utility", start=now,
                                        end=now + timedelta(hours=1), import_limit_kw=0.0, issuer="mallory"), now)
    assert ack.status == "rejected" and "mallory" in ack.reason
    assert loop.dr_book.limit_kw_at(now) == np.inf


def test_noise_caps_hold_as_measured_through_a_night(feb_2020_prices_north: pd.DataFrame) -> None:
    """The model underestimates the real level at maple_lane by 2 dB; sensors reveal it, the fast
    path steps units down and the calibration offset tightens later plans."""
    profile = load_profile("quiet_hollow")
    start = pd.Timestamp("2020-02-11T20:00-06:00")
    result = run_simulation(profile, feb_2020_prices_north, start, 40, noise_bias_db={"maple_lane": 2.0}, seed=3)
    frame = result.intervals
    over = frame["noise_measured_dba_maple_lane"] - frame["noise_cap_dba_maple_lane"]
    settled = over.iloc[4:]  # after the first hour the calibration offset has converged
    assert settled.max() <= 1.5, "measured level stays within the meter's scatter (3σ) of the cap"
    assert result.loop.noise_offsets_db["maple_lane"] > 1.0
    assert (frame["load_kw"] > 50).all(), "the site keeps mining what the neighbours allow"


def test_solver_timeout_degrades_to_the_fallback_schedule() -> None:
    profile = load_profile("west_texas")
    index = pd.date_range("2020-02-10T06:00Z", periods=96, freq="15min")
    problem = problem_from_profile(profile, index, np.full(96, 20.0))
    runner = SolveRunner(time_limit_s=20.0, deadline_s=0.05)
    try:
        schedule = runner.run(problem, fine_intervals=96)
    finally:
        runner.close()
    assert schedule.status == SolveStatus.FALLBACK
    assert "timeout" in schedule.info.message
    assert runner.timeouts == 1
    assert (schedule.frame["grid_import_kw"] <= schedule.frame["import_limit_kw"] + 1e-6).all()


def test_no_price_known_means_curtail() -> None:
    profile = load_profile("west_texas")
    empty = pd.DataFrame({"interval_start": pd.DatetimeIndex([], tz="UTC"), "interval_end": pd.DatetimeIndex([], tz="UTC"),
                          "settlement_point": [], "market": [], "price_usd_mwh": []})
    fleet = SimulatedFleet(profile)
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, empty), driver=fleet,
                       solver=SolveRunner(inline=True))
    report = loop.tick(pd.Timestamp("2020-02-10T12:00-06:00").to_pydatetime())
    from hashflex.forecast import FallbackCode, has_fallback

    assert has_fallback(report.fallbacks, FallbackCode.PRICE_UNKNOWN)
    assert sum(fleet.running().values()) == 0
    assert not loop.status(report.at)["healthy"]


def test_forecast_has_no_look_ahead(feb_2020_prices_west: pd.DataFrame) -> None:
    """A real-time price spike that has not settled yet is invisible; the day-ahead price is used."""
    profile = load_profile("west_texas")
    prices = feb_2020_prices_west.copy()
    spike = (prices["market"] == "RT") & (prices["interval_start"] == pd.Timestamp("2020-02-10T19:00Z"))
    prices.loc[spike, "price_usd_mwh"] = 9_000.0
    forecaster = ReplayForecaster(profile, prices)
    before = forecaster(pd.Timestamp("2020-02-10T18:50Z").to_pydatetime(), pd.Timestamp("2020-02-10T18:45Z"), 8)
    assert before.price_usd_mwh[1] < 100.0  # 19:00 interval: DA price, not the unsettled RT spike
    published = published_at(prices[spike])
    assert published.iloc[0] == pd.Timestamp("2020-02-10T19:15Z")  # RT known at the end of its interval
    da = prices[(prices["market"] == "DA")].iloc[:1]
    assert published_at(da).iloc[0] == pd.Timestamp("2020-01-31T19:00Z")  # 13:00 CST the day before


def test_setpoints_always_expire(feb_2020_prices_west: pd.DataFrame) -> None:
    loop, fleet = west_texas_loop(feb_2020_prices_west)
    profile = loop.profile
    now = pd.Timestamp("2020-02-10T12:00-06:00").to_pydatetime()
    report = loop.tick(now)
    assert report.batch and all(sp.expires_at > now for sp in report.batch)
    assert max(sp.expires_at for sp in report.batch) <= now + timedelta(minutes=30)
    assert fleet.expire(now + timedelta(minutes=31)) > 0  # a silent controller leaves the miners asleep
    assert sum(fleet.running().values()) == 0


def test_horizon_forecast_contract() -> None:
    forecast = HorizonForecast(pd.date_range("2020-01-01", periods=2, freq="15min", tz="UTC"), np.array([1.0, 2.0]))
    assert forecast.fallbacks == () and forecast.input_ages_s == {}


class FlakyFleet(SimulatedFleet):
    """A simulated fleet in which some miners never answer."""

    def __init__(self, profile, dead: set[str]) -> None:  # noqa: ANN001
        super().__init__(profile)
        self.dead = dead

    def apply(self, batch):  # noqa: ANN001, ANN201
        from hashflex.drivers.base import SetpointResult, SetpointStatus

        alive = [sp for sp in batch if sp.miner_id not in self.dead]
        results = {r.miner_id: r for r in super().apply(alive)}
        return [results.get(sp.miner_id) or SetpointResult(sp.miner_id, SetpointStatus.TIMEOUT, "no answer within 2 s")
                for sp in batch]


def test_miners_that_never_answer_are_planned_without(feb_2020_prices_west: pd.DataFrame) -> None:
    dead = {f"hydro_s21xp-{i:04d}" for i in range(1, 51)}
    loop, fleet = west_texas_loop(feb_2020_prices_west, FlakyFleet(load_profile("west_texas"), dead))
    now = pd.Timestamp("2020-02-10T12:00-06:00").to_pydatetime()
    for k in range(4):
        report = loop.tick(now + timedelta(minutes=15 * k))
    status = loop.status(report.at)
    assert set(status["miners_unavailable"]) == dead
    assert "consecutive setpoints failed" in next(iter(status["miners_unavailable"].values()))
    running = {sp.miner_id for sp in report.batch if sp.mode != "sleep"}
    assert not running & dead, "unavailable miners get no running setpoint"
    assert report.schedule.frame["units_hydro_s21xp_eco"].iloc[0] + report.schedule.frame["units_hydro_s21xp_stock"].iloc[0] \
        + report.schedule.frame["units_hydro_s21xp_turbo"].iloc[0] <= 2000 - 50


def test_profile_reload_tightens_limits_but_refuses_a_new_fleet(feb_2020_prices_west: pd.DataFrame) -> None:
    import yaml

    from hashflex.profile import parse_profile

    loop, fleet = west_texas_loop(feb_2020_prices_west)
    profile = loop.profile
    now = pd.Timestamp("2020-02-10T12:00-06:00").to_pydatetime()
    loop.tick(now)
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "site_profiles" / "west_texas.yaml").read_text())
    data["grid"]["import_limit_kw"] = 10_000
    assert loop.reload_profile(parse_profile(yaml.safe_dump(data)), now) == "reloaded"
    report = loop.tick(now + timedelta(minutes=15))
    assert report.schedule.frame["grid_import_kw"].max() <= 10_000 + 1e-6
    data["miner_groups"][0]["units"] = 10
    assert loop.reload_profile(parse_profile(yaml.safe_dump(data)), now).startswith("refused")
    assert loop.profile.grid.import_limit_kw == 10_000


def test_site_manager_limits_apply_at_once_and_strangers_are_refused(feb_2020_prices_west: pd.DataFrame) -> None:
    from hashflex.messages import LimitsChangeMessage, NoiseCapOverride

    loop, fleet = west_texas_loop(feb_2020_prices_west)
    profile = loop.profile
    now = pd.Timestamp("2020-02-10T21:00-06:00").to_pydatetime()
    loop.tick(now)
    stranger = LimitsChangeMessage(issuer="neighbour", reason="too loud", issued_at=now, import_limit_kw=0.0)
    loop.on_message(stranger, now)
    assert loop.book.manager == {} and loop.counters["limits_rejected"] == 1
    tonight = LimitsChangeMessage(
        issuer="site_manager", reason="party next door: quieter tonight", issued_at=now, import_limit_kw=12_000.0,
        carbon_budget={"budget_kg": 5_000.0, "period": "day"},
        noise_caps=[NoiseCapOverride(receptor_id="rv_park_east", cap_dba=40.0, window_start=now,
                                     window_end=now + timedelta(hours=10))])
    loop.on_message(tonight, now)
    assert fleet.load_kw() <= 12_000.0 + 1e-6, "the fast path cut to the new limit at once"
    report = loop.tick(now + timedelta(minutes=15))
    frame = report.schedule.frame
    assert frame["grid_import_kw"].max() <= 12_000.0 + 1e-6
    assert frame["noise_dba_rv_park_east"].iloc[:20].max() <= 40.0 - profile.receptors[1].model_margin_db + 1e-6
    today = frame.index.tz_convert(profile.tz).normalize() == frame.index.tz_convert(profile.tz).normalize()[0]
    assert frame.loc[today, "emissions_kg"].sum() <= 5_000.0 + 1e-6, "the tightened daily carbon budget holds"
    assert "carbon" in set(frame.loc[today, "reason"]), "and it binds (3 h at 12 MW would emit ~13 t)"
    assert loop.carbon_budgets(frame.index)[0].remaining_kg <= 5_000.0


def test_a_simulated_run_keeps_a_verifiable_audit_trail_the_report_reads(tmp_path: Path,
                                                                       feb_2020_prices_west: pd.DataFrame) -> None:
    from hashflex.audit import AuditLog

    profile = load_profile("west_texas")
    db = tmp_path / "run.db"
    result = run_simulation(profile, feb_2020_prices_west, pd.Timestamp("2020-02-10T18:00-06:00"), 8,
                            store_path=str(db))
    log = AuditLog(db, readonly=True)
    assert log.verify().ok
    kinds = [r.kind for r in log.records()]
    assert kinds.count("measurement") == 8 and kinds.count("schedule") == 8 and kinds[0] == "config"
    measured = [r.payload for r in log.records("measurement")]
    expected_mwh = (result.intervals["grid_import_kw"] * 0.25).sum() / 1000
    assert sum(m["import_kw"] * m["interval_h"] for m in measured) / 1000 == pytest.approx(expected_mwh)


def test_daily_carbon_budget_is_charged_with_what_was_emitted_today(feb_2020_prices_west: pd.DataFrame) -> None:
    """Planning each tick with the whole daily budget would overrun it; the loop nets out the day's
    measured emissions, so the day's total stays within the budget."""
    import yaml

    from hashflex.profile import parse_profile

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "site_profiles" / "west_texas.yaml").read_text())
    data["carbon"]["daily_budget_kg"] = 20_000  # the last 8 h of a day at full load would emit ~80 t
    profile = parse_profile(yaml.safe_dump(data))
    start = pd.Timestamp("2020-02-10T16:00-06:00")
    result = run_simulation(profile, feb_2020_prices_west, start, 32)  # to the end of the local day
    emitted_kg = (result.intervals["grid_import_kw"] * 0.25).sum() * profile.carbon.default_intensity_kg_per_mwh / 1000
    assert 15_000 < emitted_kg <= 20_000 * 1.005
    assert result.loop.emitted_kg["2020-02-10"] == pytest.approx(emitted_kg)


def test_site_contribution_caps_compare_the_site_part_of_a_reading() -> None:
    from hashflex.acoustics import compared_level_dba

    assert compared_level_dba(50.0, 40.0, "total") == 50.0
    assert compared_level_dba(50.0, 40.0, "site") == pytest.approx(10 * np.log10(10**5 - 10**4))
    assert compared_level_dba(40.0, 40.0, "site") == -np.inf  # background only: the site is silent


def test_a_silent_site_at_a_site_cap_receptor_is_not_locked_out(feb_2020_prices_north: pd.DataFrame) -> None:
    """quiet_hollow's school_yard cap applies to the site's contribution; readings there include
    40 dB(A) of background. A reading while the site is silent must not become an infinite
    calibration offset that keeps every audible unit off for good."""
    from hashflex.messages import NoiseMessage

    profile = load_profile("quiet_hollow")
    fleet = SimulatedFleet(profile)
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, feb_2020_prices_north), driver=fleet,
                       solver=SolveRunner(inline=True))
    now = pd.Timestamp("2020-02-11T12:00-06:00").to_pydatetime()  # nothing running yet: the site is silent
    loop.on_message(NoiseMessage(receptor_id="school_yard", laeq_dba=40.4, averaging_s=60, timestamp=now,
                                 meter_class=1), now)
    assert np.isfinite(loop.noise_offsets_db.get("school_yard", 0.0))
    report = loop.tick(now)
    assert sum(fleet.running().values()) > 50, "daytime mining goes on near the school"
    assert report.schedule.frame["noise_dba_school_yard"].iloc[0] <= 45.0
