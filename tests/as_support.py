"""Shared builders for the ancillary-service tests (issue 15): the hydro test site, flat prices,
award and deployment messages, a ``ControlLoop`` on inline HiGHS solves and a ``SimulatedFleet``,
``/metrics`` over real HTTP on 127.0.0.1 and the audit payloads of one kind.

The site (SYNTHETIC test data): 10 hydro blocks of 1 MW (33,333.333 TH/s each), 10 kW each asleep, so a
block sheds 990 kW; hashprice $48/PH/day, no pool fee. With n blocks running the modelled import is
990 n + 100 kW. Energy at the default $200/MWh is above the blocks' breakeven: only an award keeps a
block running. The QSE is ``qse-test``.

Every builder takes the values the tests used before they were shared (each test module passes its
own site name, products, price window and award price), so no test asserts anything else than it did.
Imported by name (``from as_support import ...``): pytest puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from hashflex.audit import AuditLog
from hashflex.control.limits import LimitsBook
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder
from hashflex.messages import ASAwardMessage, ASDeployMessage
from hashflex.profile import SiteProfile, parse_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store

ISSUER = "qse-test"
NOW = pd.Timestamp("2024-06-03T17:00Z").to_pydatetime()
MIN = timedelta(minutes=1)
SEC = timedelta(seconds=1)
QUARTER = timedelta(minutes=15)

_HYDRO_SITE = """
site: {{name: {name}, settlement_point: HB_WEST, settlement_point_type: HU, timezone: America/Chicago}}
grid: {{import_limit_kw: {import_limit_kw:g}}}
miner_groups:
  - id: hydro
    model: container
    units: 10
    cooling: hydro
    idle_power_kw: 10
    modes: [{{name: run, power_kw: 1000, hashrate_th_s: 33333.333, sound_power_dba: 100}}]
carbon: {{default_intensity_kg_per_mwh: 400, intensity_source: test}}
economics: {{hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}}
ancillary:
  issuer: {issuer}
  groups: {{hydro: {{response_s: 0.5, under_frequency_relay: true}}}}
  products:
"""


def hydro_profile_yaml(name: str, products: Iterable[str] = ("RRS", "ECRS"),
                       expected_deployments_per_month: float | None = 0.0,
                       import_limit_kw: float = 20000.0, qualified_mw: dict[str, float] | None = None) -> str:
    """The SYNTHETIC hydro site's profile YAML (10 × 1 MW blocks, 10 kW asleep), each product in
    ``products`` qualified for 5 MW of the hydro group.

    Parameters
    ----------
    name : str
        ``site.name`` (each test module keeps its own).
    products : iterable of str
        Qualified products, in order ("RRS", "ECRS", "NSPIN").
    expected_deployments_per_month : float or None
        Written into every product; ``None`` leaves it out (the profile default, 1 a month).
    import_limit_kw : float
        ``grid.import_limit_kw``, kW.
    qualified_mw : dict of str to float, optional
        MW of the hydro group qualified per product (``group_mw``); 5 MW where not given.

    Returns
    -------
    str
        YAML ending in the last product's line and a newline, so a test can append profile lines
        (e.g. ``"  max_hold_h: 3\\n"``, indented under ``ancillary``).
    """
    text = _HYDRO_SITE.format(name=name, import_limit_kw=import_limit_kw, issuer=ISSUER)
    for product in products:
        extra = "" if expected_deployments_per_month is None else \
            f", expected_deployments_per_month: {expected_deployments_per_month:g}"
        mw = (qualified_mw or {}).get(product, 5)
        text += f"    {product}: {{group_mw: {{hydro: {mw:g}}}{extra}}}\n"
    return text


def hydro_profile(name: str, extra: str = "", **kwargs) -> SiteProfile:
    """:func:`hydro_profile_yaml` (``kwargs`` passed on) plus ``extra`` YAML, parsed."""
    return parse_profile(hydro_profile_yaml(name, **kwargs) + extra, source="test")


def flat_prices(price_usd_mwh: float = 200.0, start: str = "2024-05-30T00:00Z", end: str = "2024-06-05T00:00Z",
                settlement_point: str = "HB_WEST") -> pd.DataFrame:
    """SYNTHETIC flat prices, RT and DA, 15-minute intervals [start, end), in $/MWh: the frame
    ``ReplayForecaster`` takes (``interval_start``, ``interval_end``, ``settlement_point``,
    ``market``, ``price_usd_mwh``), RT rows first."""
    starts = pd.date_range(start, end, freq="15min", inclusive="left")
    return pd.concat([pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=15),
                                    "settlement_point": settlement_point, "market": market,
                                    "price_usd_mwh": price_usd_mwh})
                      for market in ("RT", "DA")], ignore_index=True)


def award(award_id: str, product: str, kw: float, *, revision: int = 0, start: datetime = NOW - timedelta(hours=1),
          end: datetime = NOW + timedelta(hours=3), price_usd_mw_h: float | None = 20.0,
          issuer: str = ISSUER) -> ASAwardMessage:
    """An award of ``kw`` kW of ``product`` over [start, end) (default 16:00–20:00 UTC on 3 June 2024)."""
    return ASAwardMessage(award_id=award_id, revision=revision, product=product, start=start, end=end,
                          reserve_kw=kw, price_usd_mw_h=price_usd_mw_h, issuer=issuer)


def deploy(deployment_id: str, issued_at: datetime, kw: float = 0.0, *, product: str = "RRS", revision: int = 0,
           recalled: bool = False, issuer: str = ISSUER) -> ASDeployMessage:
    """A deployment (or, with ``recalled``, its recall) of ``kw`` kW instructed at ``issued_at``."""
    return ASDeployMessage(deployment_id=deployment_id, revision=revision, product=product, issued_at=issued_at,
                           deployed_kw=kw, recalled=recalled, issuer=issuer)


def make_loop(profile: SiteProfile, prices: pd.DataFrame, store: Store | None = None,
              recorder: AuditRecorder | None = None, book: LimitsBook | None = None) -> ControlLoop:
    """A ``ControlLoop`` on ``profile``: forecasts replayed from ``prices``, a ``SimulatedFleet``,
    inline HiGHS solves; optionally a real store, audit recorder and a restored limits book."""
    from hashflex.control.solver import SolveRunner

    return ControlLoop(profile, forecaster=ReplayForecaster(profile, prices), driver=SimulatedFleet(profile),
                       solver=SolveRunner(inline=True), store=store, recorder=recorder, book=book)


def running(loop_or_fleet: ControlLoop | SimulatedFleet) -> int:
    """Units running now in the loop's (or the given) simulated fleet."""
    fleet = loop_or_fleet.driver if isinstance(loop_or_fleet, ControlLoop) else loop_or_fleet
    return sum(fleet.running().values())


def metrics_text(loop: ControlLoop, at: datetime) -> str:
    """The loop's ``/metrics`` at ``at``, fetched over real HTTP from a ``StatusServer`` on 127.0.0.1."""
    from hashflex.control.http import StatusServer

    server = StatusServer(lambda now: loop.status(now), lambda: at, port=0)
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}metrics", timeout=10) as answer:
            return answer.read().decode()
    finally:
        server.stop()


def audit_payloads(db: Path, kind: str) -> list[dict]:
    """The payloads of the audit trail's records of ``kind`` in ``db``, oldest first."""
    with AuditLog(db, readonly=True) as log:
        return [r.payload for r in log.records(kind)]


_BIG_SMALL_SITE = """
site: {{name: {name}, settlement_point: HB_WEST, settlement_point_type: HU, timezone: America/Chicago}}
grid: {{import_limit_kw: {import_limit_kw:g}}}
miner_groups:
  - id: big
    model: efficient
    units: 1000
    cooling: hydro
    idle_power_kw: 0
    modes: [{{name: run, power_kw: 100, hashrate_th_s: 10000, sound_power_dba: 80}}]
  - id: small
    model: old
    units: 1000
    cooling: air
    idle_power_kw: 0.01
    modes: [{{name: run, power_kw: 2.6, hashrate_th_s: 50, sound_power_dba: 80}}]
carbon: {{default_intensity_kg_per_mwh: 400, intensity_source: test}}
economics: {{hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}}
ancillary:
  issuer: {issuer}
  groups: {{big: {{response_s: 0.5, under_frequency_relay: true}}, small: {{response_s: 30}}}}
  products:
    RRS: {{group_mw: {{big: 5}}, expected_deployments_per_month: 0}}
    ECRS: {{group_mw: {{small: 5}}, expected_deployments_per_month: 0}}
"""


def big_small_profile_yaml(name: str, import_limit_kw: float) -> str:
    """A SYNTHETIC site of 1,000 efficient 100 kW units (10,000 TH/s each, no idle draw, UFR: RRS) and
    1,000 old 2.6 kW units (50 TH/s, 0.01 kW asleep, 30 s response: ECRS), each product qualified for
    5 MW of its group; ``grid.import_limit_kw`` in kW. Breakevens: $200/MWh (big), $38.6/MWh (small)."""
    return _BIG_SMALL_SITE.format(name=name, import_limit_kw=import_limit_kw, issuer=ISSUER)
