"""Issue 10 items 1, 2, 4, 5 and 9: what the site acknowledges is what it enforces, and nothing
acknowledged is lost — across restarts (a new Store and loop on the same file, as after kill -9),
a store whose writes fail (injected, and a real full disk on a tiny tmpfs), redeliveries and
rejected messages. Each case failed on the code before the limits book (see the commit message).
"""

from __future__ import annotations

import json
import math
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.control.daemon import load_control_state
from hashflex.control.limits import LimitsBook
from hashflex.control.loop import ControlLoop, HorizonForecast, LoopConfig
from hashflex.control.solver import SolveRunner
from hashflex.messages import DREventMessage, LimitsChangeMessage, NoiseCapOverride
from hashflex.profile import SiteProfile
from hashflex.sim.site import SimulatedFleet
from hashflex.store import Store

T0 = datetime(2025, 7, 1, 15, 0, tzinfo=timezone.utc)  # 10:00 in Chicago
MIN = timedelta(minutes=1)

PROFILE = SiteProfile.model_validate({
    "site": {"name": "faults", "settlement_point": "LZ_WEST", "horizon_hours": 2, "managers": ["site_manager"]},
    "grid": {"import_limit_kw": 100},
    "dr": {"issuers": ["utility", "qse"], "level_import_limit_kw": {1: 30, 2: 8}},
    "miner_groups": [{"id": "air", "model": "S19", "units": 10, "min_off_minutes": 60,
                      "modes": [{"name": "stock", "power_kw": 3, "hashrate_th_s": 100, "sound_power_dba": 90}]}],
    "receptors": [{"id": "porch", "distance_m": {"air": 100}, "background_dba": 30,
                   "caps": [{"name": "always", "start": "00:00", "end": "23:59", "cap_dba": 70}]}],
    "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
    "economics": {"hashprice_usd_per_ph_day": 50},
})


def cheap_forecast(now: datetime, horizon_start: pd.Timestamp, periods: int) -> HorizonForecast:
    index = pd.date_range(horizon_start, periods=periods, freq="15min")
    return HorizonForecast(interval_start=index, price_usd_mwh=np.full(periods, 10.0))


class Captured:
    """A publisher that keeps what the loop publishes (topic suffix → payloads)."""

    def __init__(self) -> None:
        self.sent: dict[str, list[dict[str, Any]]] = {}

    def publish_json(self, topic_suffix: str, payload: dict[str, Any]) -> None:
        self.sent.setdefault(topic_suffix, []).append(payload)


class Site:
    """A loop over a real Store file; ``restart()`` drops the loop and store and loads them again,
    as the daemon does after kill -9 (nothing is carried over in memory)."""

    def __init__(self, path: Path, profile: SiteProfile = PROFILE) -> None:
        self.path, self.profile = path, profile
        self.fleet_driver = SimulatedFleet(profile)
        self.publisher = Captured()
        self.store: Store | None = None
        self.loop: ControlLoop | None = None
        self.restart()

    def restart(self) -> ControlLoop:
        if self.store is not None:
            self.store.close()
        self.store = Store(self.path)
        book, fleet = load_control_state(self.store, self.profile)
        self.loop = ControlLoop(self.profile, forecaster=cheap_forecast, driver=self.fleet_driver,
                                publisher=self.publisher, store=self.store, book=book, fleet=fleet,
                                solver=SolveRunner(inline=True), config=LoopConfig())
        return self.loop

    def close(self) -> None:
        assert self.store is not None
        self.store.close()


@pytest.fixture()
def site(tmp_path: Path) -> Site:
    made = Site(tmp_path / "state.db")
    yield made
    made.close()


def dr(event_id: str = "ev1", mod: int = 0, issuer: str = "utility", start: datetime = T0,
       end: datetime | None = T0 + 60 * MIN, **terms: Any) -> DREventMessage:
    if not terms:
        terms = {"import_limit_kw": 20.0}
    return DREventMessage(event_id=event_id, modification_number=mod, program="utility", start=start, end=end,
                          issuer=issuer, **terms)


def limit_now(loop: ControlLoop, t: datetime) -> float:
    return min(loop.book.import_limits_at(t).values(), default=math.inf)


# ------------------------------------------------------------------ item 1: rejected messages never bind


def test_rejected_messages_change_nothing_before_or_after_a_restart(site: Site) -> None:
    loop = site.loop
    assert loop.handle_dr(dr(), T0).status == "accepted"
    rogue_cancel = dr(mod=1, issuer="stranger", cancelled=True)
    other_issuer = dr(mod=2, issuer="qse", import_limit_kw=90.0)
    unmapped_level = dr("ev2", level=3)
    for message in (rogue_cancel, other_issuer, unmapped_level):
        assert loop.handle_dr(message, T0 + MIN).status == "rejected"
    for current in (loop, site.restart()):
        assert limit_now(current, T0 + 2 * MIN) == 20.0
        assert current.book.dr.event_ids() == ["ev1"]
        limits, sources = current.book.import_limits_over(pd.date_range(T0, periods=8, freq="15min"),
                                                          timedelta(minutes=15))
        assert list(limits[:4]) == [20.0] * 4 and np.isinf(limits[4:]).all(), "no 0 kW from the unmapped level"
        assert sources[0] == "DR:ev1"


# ------------------------------------------------------------------ item 2: accepted means durable


def test_store_failure_rejects_holds_the_limit_and_reports_unhealthy(site: Site) -> None:
    loop = site.loop
    loop.tick(T0 - 20 * MIN)
    assert site.fleet_driver.load_kw() > 20.0, "cheap power: miners running before the event"
    site.store.fail_commits("database or disk is full")
    ack = loop.handle_dr(dr(), T0)
    assert ack.status == "rejected" and ack.reason.startswith("store_unavailable")
    assert site.fleet_driver.load_kw() <= 20.0 + 1e-9, "the limit is held (and cut to) although not durable"
    assert limit_now(loop, T0 + MIN) == 20.0
    status = loop.status(T0 + MIN)
    assert status["healthy"] is False
    assert any(c.startswith("store_unavailable") for c in status["unhealthy_causes"])
    assert loop.counters["dr_accepted"] == 0 and loop.counters["store_unavailable"] == 1
    # The issuer resends once the disk has room: now it is accepted, durable, and healthy again.
    site.store.fail_commits(None)
    assert loop.handle_dr(dr(), T0 + 2 * MIN).status == "accepted"
    assert not any(c.startswith("store_unavailable") for c in loop.status(T0 + 2 * MIN)["unhealthy_causes"])
    assert limit_now(site.restart(), T0 + 3 * MIN) == 20.0


def test_unacknowledged_event_is_not_claimed_after_a_restart(site: Site) -> None:
    site.store.fail_commits("disk I/O error")
    assert site.loop.handle_dr(dr(), T0).status == "rejected"
    site.store.fail_commits(None)
    # Nothing was acknowledged, so nothing is claimed durable; the hold was memory only.
    assert math.isinf(limit_now(site.restart(), T0 + MIN))


@pytest.fixture()
def full_disk(tmp_path: Path) -> Path:
    """A 4 MiB tmpfs (we are root here and in CI), unmounted afterwards."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_is_answered_store_unavailable(full_disk: Path) -> None:
    site = Site(full_disk / "state.db")
    try:
        filler = full_disk / "filler"
        try:
            with filler.open("wb") as handle:  # fill the file system to the last block
                while True:
                    handle.write(b"\0" * 4096)
                    handle.flush()
        except OSError:
            pass
        events = [dr(f"event-{k:03d}-" + "x" * 100) for k in range(40)]
        answers = [site.loop.handle_dr(event, T0).status for event in events]
        assert "rejected" in answers, "a full disk cannot make every event durable"
        first_refused = events[answers.index("rejected")]
        assert site.loop.book.answered_dr(first_refused) is None, "a store_unavailable answer is not memoised"
        assert any(c.startswith("store_unavailable") for c in site.loop.status(T0)["unhealthy_causes"])
        accepted = [e.event_id for e, a in zip(events, answers) if a == "accepted"]
        filler.unlink()
        restarted = site.restart()
        assert sorted(restarted.book.dr.event_ids()) == sorted(accepted), "exactly the acknowledged events"
    finally:
        site.close()


# ------------------------------------------------------------------ item 5: redeliveries


def test_a_redelivery_gets_the_original_ack_even_after_a_restart(site: Site) -> None:
    first = site.loop.handle_dr(dr(), T0)
    again = site.loop.handle_dr(dr(), T0 + MIN)
    assert again == first and site.loop.counters["dr_duplicates"] == 1
    assert site.publisher.sent["out/dr/ack"] == [first.model_dump(mode="json")] * 2
    assert site.restart().handle_dr(dr(), T0 + 2 * MIN) == first
    conflicting = site.loop.handle_dr(dr(import_limit_kw=50.0), T0 + 3 * MIN)
    assert conflicting.status == "rejected" and "duplicate" in conflicting.reason
    assert limit_now(site.loop, T0 + 4 * MIN) == 20.0
    rogue = dr("ev9", issuer="stranger")
    assert site.loop.handle_dr(rogue, T0) == site.loop.handle_dr(rogue, T0 + MIN), "a rejection is repeated too"


# ------------------------------------------------------------------ item 4: managers' limits


def limits(issued_at: datetime = T0, issuer: str = "site_manager", **change: Any) -> LimitsChangeMessage:
    return LimitsChangeMessage(issuer=issuer, reason="test", issued_at=issued_at, **change)


def test_manager_limit_expires_at_valid_until_and_one_without_expiry_survives_restart(site: Site) -> None:
    loop = site.loop
    loop.tick(T0)
    ack = loop.handle_limits(limits(import_limit_kw=20.0, valid_until=T0 + 30 * MIN), T0 + MIN)
    assert ack.status == "accepted" and site.publisher.sent["out/limits/ack"][-1]["status"] == "accepted"
    assert site.fleet_driver.load_kw() <= 20.0 + 1e-9, "cut at once"
    loop.tick(T0 + 31 * MIN)
    assert math.isinf(limit_now(loop, T0 + 31 * MIN)) and loop.book.manager == {}
    loop.tick(T0 + 62 * MIN)  # past the units' 60 min minimum off time too
    assert site.fleet_driver.load_kw() > 20.0, "mining resumes after the limit expired"
    assert loop.handle_limits(limits(T0 + 32 * MIN, import_limit_kw=40.0), T0 + 32 * MIN).status == "accepted"
    assert limit_now(site.restart(), T0 + 10 * 60 * MIN) == 40.0, "a limit without expiry is kept across a restart"


def test_two_changes_in_the_same_second_are_two_changes(site: Site) -> None:
    first = site.loop.handle_limits(limits(import_limit_kw=50.0), T0)
    second = site.loop.handle_limits(limits(import_limit_kw=30.0), T0)
    assert first.status == second.status == "accepted" and first.change_id != second.change_id
    assert limit_now(site.loop, T0) == 30.0
    assert site.loop.handle_limits(limits(import_limit_kw=30.0), T0) == second, "a redelivery is answered again"
    stranger = site.loop.handle_limits(limits(issuer="neighbour", import_limit_kw=0.0), T0)
    assert stranger.status == "rejected" and "site manager" in stranger.reason
    stale = site.loop.handle_limits(limits(T0 - MIN, import_limit_kw=90.0), T0)
    assert stale.status == "rejected" and "stale" in stale.reason and limit_now(site.loop, T0) == 30.0


def test_a_new_noise_cap_cuts_at_once_not_at_the_next_interval(site: Site) -> None:
    loop = site.loop
    loop.tick(T0)
    before = loop.modelled_level_dba("porch")
    cap = NoiseCapOverride(receptor_id="porch", cap_dba=before - 6.0, window_start=T0, window_end=T0 + 60 * MIN)
    assert loop.handle_limits(limits(noise_caps=[cap]), T0 + MIN).status == "accepted"
    after = loop.modelled_level_dba("porch")
    margin = PROFILE.receptors[0].model_margin_db
    assert after + margin <= cap.cap_dba + 1e-6, f"modelled {after:.1f} + margin must be under {cap.cap_dba:.1f}"


# ------------------------------------------------------------------ item 9: commitment across a restart


def test_min_off_survives_a_restart(site: Site) -> None:
    loop = site.loop
    loop.tick(T0 - 20 * MIN)
    running = sum(1 for m in loop.fleet.miners.values() if m.running)
    assert running == 10
    loop.handle_dr(dr(import_limit_kw=10.0, end=T0 + 5 * MIN), T0)  # stops 7 units at T0
    stopped = [m.miner_id for m in loop.fleet.miners.values() if not m.running]
    assert len(stopped) >= 7
    site.store.flush()
    restarted = site.restart()
    assert all(not restarted.fleet.miners[m].running for m in stopped)
    report = restarted.tick(T0 + 10 * MIN)  # event over, power cheap: min-off still holds them
    assert report.schedule.frame.iloc[0]["units_air_stock"] == 10 - len(stopped)
    idle_kw = PROFILE.miner_groups[0].idle_power_kw
    assert site.fleet_driver.load_kw() <= 3 * (10 - len(stopped)) + len(stopped) * idle_kw + 1e-9


# ------------------------------------------------------------------ the property


issuers = st.sampled_from(["utility", "qse", "stranger"])
times = st.integers(min_value=0, max_value=180).map(lambda m: T0 + m * MIN)


@st.composite
def dr_messages(draw: st.DrawFn) -> DREventMessage:
    start = draw(times)
    end = draw(st.one_of(st.none(), st.integers(1, 120).map(lambda m: start + m * MIN)))
    terms = draw(st.sampled_from([{"import_limit_kw": 20.0}, {"import_limit_kw": 55.0}, {"level": 1},
                                  {"level": 2}, {"level": 3}, {"cancelled": True}]))
    return DREventMessage(event_id=draw(st.sampled_from(["a", "b"])), modification_number=draw(st.integers(0, 3)),
                          program="utility", start=start, end=end, issuer=draw(issuers), **terms)


@st.composite
def limits_messages(draw: st.DrawFn) -> LimitsChangeMessage:
    issued = draw(times)
    return LimitsChangeMessage(issuer=draw(st.sampled_from(["site_manager", "stranger"])), reason="p", issued_at=issued,
                               import_limit_kw=draw(st.sampled_from([15.0, 45.0])),
                               valid_until=draw(st.one_of(st.none(), st.just(issued + 90 * MIN))))


steps = st.lists(st.tuples(st.one_of(dr_messages(), limits_messages()), st.booleans(), st.integers(0, 5)),
                 min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps)
def test_state_in_force_equals_replay_of_accepted_messages(tmp_path_factory: pytest.TempPathFactory,
                                                           sequence: list[tuple[Any, bool, int]]) -> None:
    """For any DR / limits messages from any issuers, with restarts anywhere, the state in force is
    what replaying only the accepted messages (in order) into an empty book gives."""
    site = Site(tmp_path_factory.mktemp("prop") / "state.db")
    accepted: list[tuple[Any, datetime]] = []
    now = T0
    try:
        for message, restart, advance in sequence:
            now = now + advance * MIN
            handle = site.loop.handle_dr if isinstance(message, DREventMessage) else site.loop.handle_limits
            repeats = site.loop.counters["dr_duplicates"] + site.loop.counters["limits_duplicates"]
            ack = handle(message, now)
            repeated = site.loop.counters["dr_duplicates"] + site.loop.counters["limits_duplicates"] > repeats
            if ack.status == "accepted" and not repeated:  # a redelivery's repeated answer is not a new change
                accepted.append((message, now))
            if restart:
                site.restart()
        replay = LimitsBook(PROFILE)
        for message, at in accepted:
            if isinstance(message, DREventMessage):
                trial, decision, _ = replay.decide_dr(message, at)
                assert decision.accepted, f"replay refused an accepted message: {decision.reason}"
            else:
                trial, ack = replay.decide_limits(message, at)
                assert ack.accepted, ack.reason
            replay.adopt(trial)
        held = site.loop.book
        for minute in range(0, 300, 7):
            t = T0 + minute * MIN
            assert held.import_limits_at(t) == replay.import_limits_at(t), t
        assert json.dumps(held.to_dict()["manager"]) == json.dumps(replay.to_dict()["manager"])
        assert {i: held.dr.message(i) for i in held.dr.event_ids()} == {i: replay.dr.message(i)
                                                                           for i in replay.dr.event_ids()}
    finally:
        site.close()


# ------------------------------------------------------------------ item 7: driver I/O off the message thread


class BlockedDriver(SimulatedFleet):
    """A driver whose every apply waits until the test releases it (a hung miner, a slow broker)."""

    def __init__(self, profile: SiteProfile) -> None:
        super().__init__(profile)
        import threading

        self.release = threading.Event()
        self.entered = threading.Event()

    def apply(self, batch):  # noqa: ANN001, ANN201
        self.entered.set()
        assert self.release.wait(30), "the test never released the driver"
        return super().apply(batch)


def test_a_dr_ack_never_waits_for_the_driver(tmp_path: Path) -> None:
    """The ack and the decision happen on the message thread; the cut goes to the sender thread.
    With the driver blocked, handle_dr still returns (and acks) — before, it waited on the driver."""
    driver = BlockedDriver(PROFILE)
    publisher = Captured()
    with Store(tmp_path / "s.db") as store:
        loop = ControlLoop(PROFILE, forecaster=cheap_forecast, driver=driver, publisher=publisher, store=store,
                           solver=SolveRunner(inline=True), config=LoopConfig(async_sends=True))
        for miner in loop.fleet.miners.values():  # the site was running
            miner.mode = "stock"
        ack = loop.handle_dr(dr(), T0)
        assert ack.status == "accepted" and publisher.sent["out/dr/ack"][0]["status"] == "accepted"
        assert driver.entered.wait(10), "the cut was handed to the driver"
        assert driver.running() == {}, "…which is still blocked: the ack did not wait for it"
        driver.release.set()
        loop.flush_sends()
        assert driver.load_kw() <= 20.0 + 1e-9
        loop.close()


def test_a_manager_clears_their_own_limit_and_only_theirs(site: Site) -> None:
    loop = site.loop
    assert loop.handle_limits(limits(import_limit_kw=20.0), T0).status == "accepted"
    cleared = loop.handle_limits(limits(T0 + MIN, clear=["import"]), T0 + MIN)
    assert cleared.status == "accepted" and "import cleared" in cleared.reason
    assert math.isinf(limit_now(loop, T0 + 2 * MIN))
    assert math.isinf(limit_now(site.restart(), T0 + 2 * MIN)), "the clearing is durable"
    stale = site.loop.handle_limits(limits(T0 - MIN, clear=["import"]), T0 + 3 * MIN)
    assert stale.status == "accepted" and "nothing to clear" in stale.reason
    with pytest.raises(ValueError, match="both set and cleared"):
        limits(import_limit_kw=5.0, clear=["import"])


def test_out_of_bounds_commands_are_refused_with_an_ack_on_every_path(site: Site) -> None:
    """Found by a newcomer: the dashboard's limits API accepted an import limit of 1e308 kW and a
    150 dB(A) noise cap (kept across a restart), and over MQTT the same values got no ack at all.
    The loop now checks every command against the bounds table and answers the refusal."""
    loop = site.loop
    cap = NoiseCapOverride(receptor_id="porch", cap_dba=150.0, window_start=T0, window_end=T0 + 60 * MIN)
    for message in (limits(import_limit_kw=1e308), limits(noise_caps=[cap]),
                    limits(T0 + timedelta(days=365 * 900), import_limit_kw=10.0)):
        ack = loop.handle_limits(message, T0)
        assert ack.status == "rejected" and ("outside" in ack.reason or "clock-skew" in ack.reason), ack.reason
    assert [a["status"] for a in site.publisher.sent["out/limits/ack"]] == ["rejected"] * 3
    assert loop.book.manager == {} and site.restart().book.manager == {}
    ack = site.loop.handle_dr(dr(import_limit_kw=1e308), T0)
    assert ack.status == "rejected" and "import_limit_kw" in ack.reason


def test_a_refused_dr_message_is_acked_without_a_number_it_never_sent(site: Site) -> None:
    """Found by a newcomer: a DR message with ``modification_number: -1`` was refused and acked as
    number 0 — a number the issuer never sent (and a valid one: it could be read as acking event 0)."""
    from hashflex.messages import parse_message

    payload = json.dumps({"event_id": "ev-neg", "modification_number": -1, "program": "ERS-10",
                          "start": T0.isoformat(), "import_limit_kw": 10.0, "issuer": "utility"})
    rejection = parse_message(f"hashflex/{PROFILE.site_id}/in/dr", payload.encode())
    assert getattr(rejection, "kind", None) == "dr" and "modification_number" in rejection.reason
    site.loop.on_rejection(rejection, T0)
    (ack,) = site.publisher.sent["out/dr/ack"]
    assert ack["event_id"] == "ev-neg" and ack["status"] == "rejected" and ack["modification_number"] is None
    # A readable number is echoed as sent.
    rejection = parse_message(f"hashflex/{PROFILE.site_id}/in/dr", payload.replace('"import_limit_kw": 10.0',
                                                                                    '"import_limit_kw": -5').replace(
        '"modification_number": -1', '"modification_number": 4').encode())
    site.loop.on_rejection(rejection, T0)
    assert site.publisher.sent["out/dr/ack"][-1]["modification_number"] == 4


def test_refused_commands_are_counted_and_stored_like_other_rejections(site: Site) -> None:
    """Newcomer finding: an out-of-range DR event was acked 'rejected' but missing from
    hashflex_input_rejections_total and from the store's rejections table."""
    from hashflex.control.http import input_rejections

    ack = site.loop.handle_dr(dr(import_limit_kw=1e9), T0)
    assert ack.status == "rejected"
    status = site.loop.status(T0)
    # Counted as refused:<field>, the name the MQTT ingest gives the same answer in /status
    # inputs_refused (issue 15, H1 finding 7); the bound's words stay in the reason.
    assert status["command_rejections"] == {"dr": {"refused:import_limit_kw": 1}}
    assert input_rejections(status) == {("dr", "refused:import_limit_kw"): 1}
    site.store.flush()
    stored = site.store.rejections()
    assert len(stored) == 1 and "import_limit_kw" in stored["reason"].iloc[0]
    assert "outside the plausible range" in stored["reason"].iloc[0]
