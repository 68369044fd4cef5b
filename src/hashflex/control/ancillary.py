"""Ancillary service awards and deployments in the limits book (issue 15). Pure: no I/O, no clock.

An **award** (``in/as/award``) is an obligation to hold ``reserve_kw`` of a product over a window: the
plan keeps that much qualified load running (a minimum running load, see ``milp.define_reserve``).
A **deployment** (``in/as/deploy``) is a limit: from ``issued_at`` the site's import must drop by
``deployed_kw`` from the load at that moment (the baseline) within the product's deadline
(``profile.AS_PRODUCT_RULES``: RRS is cut at once by the fast path, ECRS within 10 minutes, Non-Spin
within 30), held until it is recalled. A deployment binds like a DR event: it is an import limit in
the book with source label ``AS:<product>:<id>``.

**How long a deployment holds** (third newcomer review, finding 3). A deployed Load Resource stays
deployed until ERCOT recalls it: the deployment and its recall are both Dispatch Instructions
(Nodal Protocols §6.5.7.6.2.2 RRS, §6.5.7.6.2.3 Non-Spin, §6.5.7.6.2.4 ECRS); the product's sustained
duration (§8.1.1.2.1.x qualification, §8.1.1.3.x; NPRR1282 set RRS 30 min and ECRS 1 h for RTC+B,
NPRR1339) is what the resource must be *able* to sustain, not when the deployment ends. So a
deployment holds until its recall; past ``issued_at`` + the product's ``sustain_h`` it is flagged
(``overrun``: the QSE may have lost the recall), and it still holds (when in doubt, curtail) up to a
backstop, ``profile.ancillary.max_hold_h`` from its instruction (a setpoint always expires), after which
it releases (``end``) with an audit record.

**Stacked deployments** (issue 15, H2 finding 1). A deployment's baseline is the load the site would
draw without the deployments already in force at its arrival: the load drawn then (already cut by
them) plus the MW they hold, at most the load they were themselves measured from
(:func:`stacked_baseline`; ``ASDeployment.stacked_baseline_kw``). The book enforces for each
deployment its baseline less its own MW and less the MW of every other deployment in force
(:func:`stacked_limit_kw`): stacked deployments add up, at its instruction a deployment sheds its MW
from the load drawn, and a recall of one raises the limit by exactly its MW.
(The cut load alone, the former rule, kept a later deployment's limit as low as if the recalled one
were still deployed.) The ack's limit is the one the book enforces, by the same computation.

**The limit is measured from the pre-deployment load only** (issue 15, the project lead's decision
after the 2024-05-08 backtest): ERCOT measures a Load Resource's deployed response from its
telemetered consumption before the instruction (Nodal Protocols §8.1.1.4.x deployment criteria), so a
deployment's limit is its baseline less its MW, constant from the instruction until its recall or
release (less the MW of the other deployments in force, above). Reserve awarded after the instruction
(a new award, an award starting later, a revision raising one) is not part of the instruction and does
not let load come back: what of it the site cannot hold under the limit is a hold shortfall
(:func:`reserve_hold_shortfalls`, clawed back), not a higher limit. The former "award rise"
(limit + max(0, A(t) − A₀)) let load come back after an award stepped up: in the 2024-05-08 backtest
0.4 of a 2.7 MW Non-Spin deployment was delivered, measured from the pre-deployment load, while the
report showed no shortfall. When in doubt, curtail.

**The load drawn at the instruction** (H2 finding 5) is never more than the metered evidence shows:
the lower of the modelled import and the latest measured one, fresh or stale
(:func:`instruction_baseline`), so no delivery is credited that the meter never saw.

**A recall** ends the deployment from the recall's ``issued_at``, whatever the order of the two times
(finding 2): a recall instructed before a future-dated deployment's ``issued_at`` ends it from the
recall's time; one instructed before the deployment even bound (its arrival) cancels it (``end`` =
``binds_from``: it binds nothing any more). A recall never prolongs a deployment. A recall that
overtakes its deployment (QoS 1 redelivery order; a deployment lost and resent) is kept durably in the
limits book as pending (bounded: ``limits_ancillary.EARLY_RECALLS_KEPT``, none older than
``max_hold_h``) and acknowledged once durable; when the deployment arrives, the first pending recall
at or after its ``issued_at`` ends it (:func:`early_recall_ends`; cancelled if it precedes its
binding), and one instructed after every pending recall is a new instruction and holds.

An **amendment** is a deployment message with the id of one in force and a higher ``revision`` (MQTT
``in/as/deploy``; over OpenADR 3 the event's ``modificationDateTime``, see
:mod:`hashflex.openadr.ancillary`): the MW to shed change, measured from the same baseline (the load
when the deployment was first instructed); more MW get the product's deadline from the amendment's
time, fewer MW raise the limit at once (binding from receipt: a reduction has no deadline of its
own and is never late, :func:`has_deadline`; the revision keeps the deadline in force); the end (recall or sustain duration) is unchanged. The rule
for revisions is the DR book's for modification numbers (:meth:`hashflex.control.dr.DRBook.apply`):
the same revision is a repeat, a lower one is stale; both are refused with the reason (a stale one is
counted, ``as_stale``), and an ended deployment is not revived.

Who may send them: the QSE named in ``profile.ancillary.issuer``; only products the profile
qualifies. A deployment is accepted even above the award in force (shedding is always safe; the
ack says so), never for a product the site is not qualified for.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from hashflex.frames import in_force
from hashflex.messages import ASAwardMessage, ASDeployMessage
from hashflex.profile import AS_PRODUCT_RULES, SiteProfile
from hashflex.profile.ancillary import DEFAULT_MAX_HOLD_H

__all__ = ["STALE", "ASDeployment", "above_award_after_change", "amended_deployment", "amendment_refusal",
           "as_source", "award_refusal", "awarded_at_instruction_kw", "awarded_kw", "deploy_refusal", "deployment_from",
           "early_recall_ends", "has_deadline", "instruction_baseline", "recall_end", "reserve_clawback_usd", "reserve_hold_shortfalls", "reserve_keep_kw", "revision_refusal",
           "stacked_baseline", "stacked_limit_kw"]

STALE = "(stale)"  # the end of a refusal for an older revision (counted by the loop as ``as_stale``)


def as_source(product: str, deployment_id: str) -> str:
    """The source label of a deployment's import limit, e.g. ``AS:RRS:d-17``.

    Parameters
    ----------
    product : str
        The ancillary service product: ``RRS``, ``ECRS`` or ``NSPIN``.
    deployment_id : str
        The deployment's id (``ASDeployMessage.deployment_id``).

    Returns
    -------
    str
        ``"AS:<product>:<deployment_id>"``.
    """
    return f"AS:{product}:{deployment_id}"


@dataclass(frozen=True)
class ASDeployment:
    """One accepted deployment: the import limit it sets, from when, by when, until when.

    Deadlines and sustain durations come from ``profile.AS_PRODUCT_RULES`` (sources there: ERCOT
    Nodal Protocols §6.5.7.6.2.2 RRS, §6.5.7.6.2.4 ECRS, §6.5.7.6.2.3 Non-Spin).

    Parameters
    ----------
    deployment_id : str
        The deployment's id.
    product : str
        ``RRS``, ``ECRS`` or ``NSPIN``.
    issuer : str
        The QSE that sent it (``profile.ancillary.issuer``).
    issued_at : datetime
        When it was instructed, timezone-aware; it binds from then.
    deployed_kw : float
        The load to shed, kW.
    baseline_kw : float
        The load drawn when it arrived, kW (the lower of modelled and measured import; already cut
        by the deployments in force then). Its baseline proper, the load the site would draw without
        those deployments, is :attr:`stacked_baseline_kw` (``baseline_kw`` + ``held_at_instruction_kw``).
    limit_kw : float
        The import limit it sets at its instruction: max(baseline_kw − deployed_kw, 0), kW. The book
        enforces :func:`stacked_limit_kw` (it rises by the MW of a deployment in force at the
        instruction once that one ends, and falls by the MW of one instructed later); no award
        moves it (module docstring).
    deadline : datetime
        ``issued_at`` + the product's deployment time: the limit must be met by then.
    end : datetime
        The recall (:func:`recall_end`), or the backstop ``issued_at`` + ``profile.ancillary.max_hold_h``
        (see the module docstring: a deployment holds until recalled). A book written before the
        backstop keeps the end it was accepted with (``issued_at`` + the product's sustain duration).
    revision : int
        The revision in force (0: as first deployed; higher: amended).
    amended_at : datetime or None
        When the revision in force was instructed (None: never amended).
    via : str or None
        The path it came by (``"openadr"`` for the VEN; None: MQTT or any other), so the VEN
        reconciles after a restart only what it sent.
    recalled : bool
        Ended by a recall (``end`` is the recall's time) rather than by its sustain duration.
    received_at : datetime or None
        When it arrived (None: a book written before this field). A deployment dated ahead of its
        arrival (inside the clock-skew window) binds from its arrival: safety first (issue 15,
        newcomer finding 8); its deadline and response are still measured from ``issued_at``.
    awarded_at_instruction_kw : float or None
        The reserve awarded over all products in force at ``issued_at`` or at its arrival, whichever
        is larger (:func:`awarded_at_instruction_kw`), as the book knew the awards when the deployment
        was accepted, kW: a record of what the site carried when instructed (the ``as_performance``
        record and the report's ``book_awarded_at_instruction_mw`` show it). It no longer moves the
        limit: it was A₀ of the former award rise, removed (module docstring); books and trails that
        carry it are read as before. None: a book written before this field.
    overrun_recorded : bool
        The ``overrun`` record (past the product's sustained duration without a recall) was written;
        durable, so it is written once across restarts.
    released_recorded : bool
        The ``released`` record (the backstop ended it without a recall) was written.
    held_at_instruction_kw : float or None
        The MW of the deployments in force at its arrival counted back onto the load drawn to make its
        baseline (:func:`stacked_baseline`), kW. None: a book written before the stacking rule (it
        keeps its own limit, ``limit_kw``).
    """

    deployment_id: str
    product: str
    issuer: str
    issued_at: datetime
    deployed_kw: float
    baseline_kw: float
    limit_kw: float
    deadline: datetime
    end: datetime
    revision: int = 0
    amended_at: datetime | None = None
    via: str | None = None
    recalled: bool = False
    received_at: datetime | None = None
    awarded_at_instruction_kw: float | None = None
    overrun_recorded: bool = False
    released_recorded: bool = False
    held_at_instruction_kw: float | None = None

    @property
    def stacked_baseline_kw(self) -> float:
        """Its baseline: the load the site would draw without the deployments in force at its
        arrival, ``baseline_kw`` + ``held_at_instruction_kw`` (:func:`stacked_baseline`), kW."""
        return self.baseline_kw + (self.held_at_instruction_kw or 0.0)

    @property
    def sustain_until(self) -> datetime:
        """``issued_at`` + the product's sustained duration (``profile.AS_PRODUCT_RULES``): holding
        past it without a recall is an ``overrun`` (flagged, still held)."""
        return self.issued_at + timedelta(hours=float(AS_PRODUCT_RULES[self.product]["sustain_h"]))

    def overrun_at(self, t: datetime) -> bool:
        """Held at ``t`` past its sustained duration without a recall (:attr:`sustain_until` <= t < end)."""
        return not self.recalled and self.sustain_until <= t < self.end

    @property
    def binds_from(self) -> datetime:
        """When its limit binds: min(``issued_at``, ``received_at``)."""
        return self.issued_at if self.received_at is None else min(self.issued_at, self.received_at)

    @property
    def source(self) -> str:
        """The source label of its import limit (:func:`as_source`), e.g. ``AS:ECRS:d-3``."""
        return as_source(self.product, self.deployment_id)

    def in_force(self, start: datetime, end: datetime | None = None) -> bool:
        """In force at ``start`` or at any moment of ``[start, end)`` (:func:`hashflex.frames.in_force`).

        A recalled deployment binds an interval only if it lasted to the interval's end: the
        interval in which it was recalled is free again (as a cancelled DR event binds none), so
        the plan does not keep the site curtailed for the rest of the interval after a recall; at a
        moment it binds until the recall.
        """
        if self.recalled and end is not None and end > start:
            return self.binds_from < end and self.end >= end
        return in_force(self.binds_from, self.end, start, end)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (times ISO 8601), read back by :meth:`from_json`."""
        return {"deployment_id": self.deployment_id, "product": self.product, "issuer": self.issuer,
                "issued_at": self.issued_at.isoformat(), "deployed_kw": self.deployed_kw,
                "baseline_kw": self.baseline_kw, "limit_kw": self.limit_kw,
                "deadline": self.deadline.isoformat(), "end": self.end.isoformat(), "revision": self.revision,
                "amended_at": None if self.amended_at is None else self.amended_at.isoformat(), "via": self.via,
                "recalled": self.recalled,
                "received_at": None if self.received_at is None else self.received_at.isoformat(),
                "awarded_at_instruction_kw": self.awarded_at_instruction_kw,
                "overrun_recorded": self.overrun_recorded, "released_recorded": self.released_recorded,
                "held_at_instruction_kw": self.held_at_instruction_kw}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ASDeployment:
        """The deployment from :meth:`to_json`.

        Parameters
        ----------
        data : dict
            Every field of :meth:`to_json` (``revision``, ``amended_at``, ``via``, ``received_at``,
            ``awarded_at_instruction_kw``, ``overrun_recorded``, ``released_recorded`` and
            ``held_at_instruction_kw`` may be absent: a book written before them).

        Returns
        -------
        ASDeployment
            The deployment.

        Raises
        ------
        KeyError
            If a field is missing.
        ValueError
            If a time is not ISO 8601 or a kW value is not a number.
        """
        amended_at = data.get("amended_at")
        return cls(data["deployment_id"], data["product"], data["issuer"], datetime.fromisoformat(data["issued_at"]),
                   float(data["deployed_kw"]), float(data["baseline_kw"]), float(data["limit_kw"]),
                   datetime.fromisoformat(data["deadline"]), datetime.fromisoformat(data["end"]),
                   int(data.get("revision", 0)), None if amended_at is None else datetime.fromisoformat(amended_at),
                   data.get("via"), bool(data.get("recalled", False)),
                   None if data.get("received_at") is None else datetime.fromisoformat(data["received_at"]),
                   None if data.get("awarded_at_instruction_kw") is None else float(data["awarded_at_instruction_kw"]),
                   bool(data.get("overrun_recorded", False)), bool(data.get("released_recorded", False)),
                   None if data.get("held_at_instruction_kw") is None else float(data["held_at_instruction_kw"]))


def _allocate(profile: SiteProfile, obligations_kw: Mapping[str, float],
              sheddable_kw: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(group id -> kW kept for awards, product -> kW held): each product's obligation assigned to its
    qualified groups (at most ``group_mw`` of it per group), products with the fewest groups first,
    each to the group with the most sheddable load left first."""
    section = profile.ancillary
    keep: dict[str, float] = {}
    held: dict[str, float] = {}
    if section is None:
        return keep, held
    left = {g: max(float(kw), 0.0) for g, kw in sheddable_kw.items()}
    wanted = [(p, float(kw)) for p, kw in obligations_kw.items() if kw > 0 and p in section.products]
    for product, need in sorted(wanted, key=lambda pk: (len(section.products[pk[0]].group_mw), pk[0])):
        shares = section.products[product].group_mw
        held[product] = 0.0
        for group_id in sorted(shares, key=lambda g: (-left.get(g, 0.0), g)):
            take = min(need, left.get(group_id, 0.0), shares[group_id] * 1000.0)
            if take > 0:
                keep[group_id] = keep.get(group_id, 0.0) + take
                left[group_id] -= take
                held[product] += take
                need -= take
    return keep, held


def reserve_keep_kw(profile: SiteProfile, obligations_kw: Mapping[str, float],
                    sheddable_kw: Mapping[str, float]) -> dict[str, float]:
    """Per group, the running sheddable load a cut must keep so the awards in force stay held.

    A cut for a hard limit (the tick's guard, a DR or AS deployment's fast-path cut) takes first
    what no award needs (issue 15: cutting "least efficient first" slept the hall that held the whole
    Non-Spin award while the RRS hydro it was deploying kept mining). Each product's obligation is
    assigned to its qualified groups (``ancillary.products.<P>.group_mw``, at most that many MW of
    it per group), products with the fewest groups first, each to the group with the most sheddable
    load left first: exact when each product has its own groups (the bundled example), a safe
    allocation otherwise. What a product's groups cannot carry is not kept elsewhere (it is short
    whatever the cut does).

    Parameters
    ----------
    profile : SiteProfile
        The site (its ``ancillary`` section; none: nothing to keep).
    obligations_kw : mapping of str to float
        Product -> reserve to hold now, kW (awards in force less what is deployed of that product;
        ``LimitsBook.reserve_obligations_at``).
    sheddable_kw : mapping of str to float
        Group id -> running load above idle now, kW (what the group can hold as reserve).

    Returns
    -------
    dict of str to float
        Group id -> kW of sheddable load to keep running (groups with nothing to keep are absent).
    """
    return _allocate(profile, obligations_kw, sheddable_kw)[0]


def reserve_hold_shortfalls(profile: SiteProfile, obligations_kw: Mapping[str, float],
                            sheddable_kw: Mapping[str, float]) -> dict[str, float]:
    """Per product, the reserve awarded but not held by running, sheddable, qualified load, kW.

    The hold shortfall the audit trail records per interval (``reserve_hold_short``) and the
    backtest settles (:func:`reserve_clawback_usd`): obligation less what the running units of the
    product's qualified groups can shed, by the allocation of :func:`reserve_keep_kw` (exact when
    each product has its own groups; ERCOT compares the award with the Load Resources' telemetered
    capability, Nodal Protocols §6.4.9.1.3, §8.1.1.3).

    Parameters
    ----------
    profile : SiteProfile
    obligations_kw : mapping of str to float
        Product -> reserve to hold over the interval, kW (awards less deployed of that product).
    sheddable_kw : mapping of str to float
        Group id -> running load above idle, kW.

    Returns
    -------
    dict of str to float
        Product -> kW short (>= 0), for every product with an obligation > 0.
    """
    _, held = _allocate(profile, obligations_kw, sheddable_kw)
    return {p: max(float(kw) - held.get(p, 0.0), 0.0) for p, kw in obligations_kw.items()
            if kw > 0 and profile.ancillary is not None and p in profile.ancillary.products}


def obligation_segments(awards: Iterable[tuple[str, datetime, datetime, float]],
                        deployments: Iterable[tuple[str, datetime, datetime, float]],
                        start: datetime, end: datetime) -> list[tuple[datetime, datetime, dict[str, float]]]:
    """The interval cut where an award or a deployment starts or ends: per piece, per product
    max(Σ award in force − Σ deployed MW in force, 0), kW (issue 15, H6). Deployed reserve is being
    delivered, not held, but only while it is in force.

    Parameters
    ----------
    awards : iterable of (product, from, until, reserve_kw)
        Each award revision over the time it was held (:func:`revision_windows`), half-open,
        timezone-aware; kW.
    deployments : iterable of (product, from, until, deployed_kw)
        Each deployment revision over the time it was in force, half-open, timezone-aware; kW.
    start, end : datetime
        The interval, timezone-aware.

    Returns
    -------
    list of (datetime, datetime, dict of str to float)
        (from, until, product -> kW >= 0) in time order, covering ``[start, end)``; the products
        are those with an award overlapping the interval (an award of 0 kW, a withdrawal, counts).

    Raises
    ------
    ValueError
        ``end`` not after ``start``.
    """
    if not end > start:
        raise ValueError(f"interval [{start}, {end}) is empty")
    held: dict[str, list[tuple[datetime, datetime, float]]] = {}
    for product, a, b, kw in awards:
        if a < end and b > start:
            held.setdefault(str(product), []).append((max(a, start), min(b, end), float(kw)))
    shed: dict[str, list[tuple[datetime, datetime, float]]] = {}
    for product, a, b, kw in deployments:
        if str(product) in held and a < end and b > start:
            shed.setdefault(str(product), []).append((max(a, start), min(b, end), float(kw)))
    pieces = [w for ws in (*held.values(), *shed.values()) for w in ws]
    cuts = sorted({start, end} | {a for a, _, _ in pieces} | {b for _, b, _ in pieces})
    out = []
    for a, b in itertools.pairwise(cuts):
        out.append((a, b, {p: max(sum(kw for x, y, kw in ws if x <= a and y >= b)
                                  - sum(kw for x, y, kw in shed.get(p, []) if x <= a and y >= b), 0.0)
                           for p, ws in held.items()}))
    return out


def mean_obligations_kw(awards: Iterable[tuple[str, datetime, datetime, float]],
                        deployments: Iterable[tuple[str, datetime, datetime, float]],
                        start: datetime, end: datetime) -> dict[str, float]:
    """Per product, the reserve to hold over ``[start, end)``: the time-weighted mean of
    max(Σ award in force − Σ deployed MW in force, 0), kW (issue 15, H6; :func:`obligation_segments`).

    The one obligation rule of the loop's hold check (``ControlLoop.record_reserve_hold``), the
    report (``report.ancillary``) and the backtest's settlement. Deployments that ran one after
    another inside the interval are not added up (newcomer finding: 800 + 400 + 100 + 500 kW of
    consecutive deployments, one of 9 s, were subtracted from the award for the whole interval);
    a deployment covering half the interval lowers its obligation by half its MW.

    Parameters and errors as :func:`obligation_segments`.

    Returns
    -------
    dict of str to float
        Product -> kW (>= 0), for every product with an award overlapping the interval.
    """
    segments = obligation_segments(awards, deployments, start, end)
    span_s = (end - start).total_seconds()
    out: dict[str, float] = {}
    for a, b, kw in segments:
        for product, v in kw.items():
            out[product] = out.get(product, 0.0) + v * (b - a).total_seconds() / span_s
    return out


def mean_hold_shortfalls(profile: SiteProfile, awards: Iterable[tuple[str, datetime, datetime, float]],
                         deployments: Iterable[tuple[str, datetime, datetime, float]],
                         sheddable_kw: Mapping[str, float], start: datetime,
                         end: datetime) -> tuple[dict[str, float], dict[str, float]]:
    """Per product, the obligation and the hold shortfall over ``[start, end)`` (issue 15, H6).

    The one rule of the loop's hold check, the report and the backtest: the obligation is
    :func:`mean_obligations_kw` (time-weighted), the load held is ``sheddable_kw`` (group -> kW, the
    commanded sheddable load time-weighted over the interval, capped per group by what was metered,
    :func:`drawn_sheddable_kw`), allocated to the products by :func:`reserve_hold_shortfalls`. Both
    are interval means: a load above the obligation in one part of the interval offsets a shortfall
    in another (the interval is the unit the trail and the backtest settle).

    Parameters
    ----------
    profile : SiteProfile
    awards, deployments, start, end
        As :func:`obligation_segments`.
    sheddable_kw : mapping of str to float
        Group id -> running load above idle held over the interval, kW.

    Returns
    -------
    tuple of (dict of str to float, dict of str to float)
        (product -> obligation kW, product -> kW short), each >= 0, short <= obligation; the
        obligation for every product with an award overlapping the interval, the shortfall for
        those with an obligation > 0 the profile qualifies.

    Raises
    ------
    ValueError
        ``end`` not after ``start``.
    """
    obligation = mean_obligations_kw(awards, deployments, start, end)
    return obligation, reserve_hold_shortfalls(profile, obligation, sheddable_kw)


def mean_award_prices(awards: Iterable[tuple[str, datetime, datetime, float, float | None]],
                      start: datetime, end: datetime) -> dict[str, float]:
    """Product -> the price of its award revisions held inside ``[start, end)``, weighted by reserve
    × time held there, $ per MW per hour (issue 15, H6: the price a time-weighted shortfall is clawed
    back at; a withdrawal, 0 kW, weighs nothing). Products without a priced reserve are absent.

    Parameters
    ----------
    awards : iterable of (product, from, until, reserve_kw, price_usd_mw_h or None)
        Each award revision over the time it was held (:func:`revision_windows`), timezone-aware.
    start, end : datetime
        The interval, timezone-aware.

    Returns
    -------
    dict of str to float
    """
    kw_s: dict[str, float] = {}
    usd: dict[str, float] = {}
    for product, a, b, kw, price in awards:
        overlap = (min(b, end) - max(a, start)).total_seconds()
        if price is None or overlap <= 0 or not kw > 0:
            continue
        kw_s[product] = kw_s.get(product, 0.0) + float(kw) * overlap
        usd[product] = usd.get(product, 0.0) + float(kw) * overlap * float(price)
    return {p: usd[p] / kw_s[p] for p in kw_s if kw_s[p] > 0}


def revision_windows(revisions: Sequence[tuple[datetime | None, datetime, datetime]]
                     ) -> list[tuple[int, datetime, datetime]]:
    """When each revision of one award (or deployment) was held (issue 15, H6): the first over its
    own window, a later one from when it was received (it replaced the one before then, not at the
    window's start), each until the next was received. The one rule of the loop's hold check
    (``ControlLoop.record_reserve_hold``) and the report (``report.ancillary``).

    Parameters
    ----------
    revisions : sequence of (received, start, end)
        The accepted revisions in the order received: when each was received (None: the first, or
        one the loop found in its book at start), and its window, timezone-aware, half-open.

    Returns
    -------
    list of (int, datetime, datetime)
        (index into ``revisions``, from, until) for each revision held for a non-empty time.
    """
    out = []
    for i, (received, start, end) in enumerate(revisions):
        held_from = start if received is None or i == 0 else max(start, received)
        nxt = revisions[i + 1][0] if i + 1 < len(revisions) else None
        until = end if nxt is None else min(end, nxt)
        if until > held_from:
            out.append((i, held_from, until))
    return out


class SheddableMean:
    """The commanded sheddable load per group, time-weighted over an interval (issue 15, H6).

    The hold check counts the sheddable load that was running *over* the interval, not the fleet at
    its end (newcomer finding: 684.6 kW held at 16:15 while more units ran before 16:05). The loop
    :meth:`sample` s the commanded per-group figure (``ControlLoop.reserve_sheddable_kw``) at each
    tick and each fleet change it records; each sample holds until the next. It keeps per-group
    figures per change only (a sample equal to the last is not kept), for ``keep`` and at most
    ``max_samples``: O(groups) memory per change, whatever the fleet's size.

    Parameters
    ----------
    keep : timedelta, default 6 h
        How far back samples are kept (an interval is measured minutes after its end).
    max_samples : int, default 10,000
        The most samples kept (the oldest go first).
    """

    def __init__(self, keep: timedelta = timedelta(hours=6), max_samples: int = 10_000) -> None:
        self.keep = keep
        self.max_samples = max_samples
        self._at: list[datetime] = []
        self._kw: list[dict[str, float]] = []

    def sample(self, at: datetime, sheddable_kw: Mapping[str, float]) -> None:
        """The commanded per-group sheddable load from ``at`` on, group -> kW (negative read as 0);
        an ``at`` before the last sample's is taken as the last's (threads record out of order by
        milliseconds)."""
        kw = {g: max(float(v), 0.0) for g, v in sheddable_kw.items()}
        if self._at:
            at = max(at, self._at[-1])
            if kw == self._kw[-1]:
                return
            if at == self._at[-1]:
                self._kw[-1] = kw
                return
        self._at.append(at)
        self._kw.append(kw)
        # keep the last sample at or before the cutoff: it holds into the span kept
        cutoff = at - self.keep
        drop = max(bisect.bisect_right(self._at, cutoff) - 1, len(self._at) - self.max_samples, 0)
        if drop:
            del self._at[:drop], self._kw[:drop]

    def mean(self, start: datetime, end: datetime) -> dict[str, float] | None:
        """Group -> mean commanded sheddable kW over ``[start, end)``: each sample weighted by how
        long it held inside the interval (the last holds on; time before the first sample counts as
        the first sample's figure: the loop samples from its first tick on).

        Parameters
        ----------
        start, end : datetime
            The interval, timezone-aware.

        Returns
        -------
        dict of str to float or None
            Group -> kW (>= 0); None when never sampled or the interval is empty.
        """
        if not self._at or not end > start:
            return None
        i = max(bisect.bisect_right(self._at, start) - 1, 0)
        span_s = (end - start).total_seconds()
        out = {g: 0.0 for g in self._kw[i]}
        t = start
        while t < end:
            last = i + 1 >= len(self._at)
            until = end if last else min(max(self._at[i + 1], t), end)
            for g, kw in self._kw[i].items():
                out[g] = out.get(g, 0.0) + kw * (until - t).total_seconds() / span_s
            t = until
            i += 0 if last else 1
        return out


_DRAWN_TOLERANCE = 1e-9  # relative: float noise of a sum over many units is not a shortfall


def drawn_sheddable_kw(commanded_kw: Mapping[str, float],
                       metered_sheddable_kw: float | Mapping[str, float] | None) -> dict[str, float]:
    """The commanded per-group sheddable load capped by what the site was measured to draw (issue 15, H1, H1b).

    A Load Resource holds reserve only with load it actually draws (ERCOT checks its telemetered
    consumption against its award, Nodal Protocols §6.4.9.1.3, §8.1.1.3): units commanded to run
    but still booting hold nothing. The one rule of the loop's hold check and the report's.

    - Per group (a mapping, the daemon's telemetry counted miner by miner,
      :func:`metered_group_sheddable_kw`): each group holds min(commanded, metered). Not pro rata:
      each group's figure is measured from its own miners, and qualification is per group
      (``group_mw``), so a group drawing more than it was commanded (a unit commanded asleep or off
      still drawing) does not cover another's shortfall.
    - A site total (a float: a load not known per miner, the backtest's and simulation's modelled
      fleet, or an older trail's metered load less idle): when the groups' commanded figures sum to
      more than it, each group is scaled down pro rata to it (where the shortfall sat is not known).

    Either way a figure at or above the commanded one leaves it unchanged (the commanded figure is
    exact: a unit drawing more than its mode cannot shed more than it was asked to run).

    Parameters
    ----------
    commanded_kw : mapping of str to float
        Group id -> running load above idle as commanded, kW (``ControlLoop.reserve_sheddable_kw``).
    metered_sheddable_kw : float, mapping of str to float, or None
        Measured load above the idle draw that could not be shed, kW, clipped at 0 here: a site
        total, or group id -> kW (a group missing from it keeps its commanded figure: it was not
        measured); None: no fresh measurement (the commanded figures stand).

    Returns
    -------
    dict of str to float
        Group id -> kW held at most, >= 0, the keys of ``commanded_kw``.
    """
    commanded = {g: max(float(kw), 0.0) for g, kw in commanded_kw.items()}
    if metered_sheddable_kw is None:
        return commanded
    if isinstance(metered_sheddable_kw, Mapping):
        out = {}
        for g, kw in commanded.items():
            drawn = max(float(metered_sheddable_kw.get(g, kw)), 0.0)
            out[g] = kw if kw <= drawn * (1.0 + _DRAWN_TOLERANCE) + 1e-9 else drawn
        return out
    total = sum(commanded.values())
    drawn = max(float(metered_sheddable_kw), 0.0)
    if total <= drawn * (1.0 + _DRAWN_TOLERANCE) + 1e-9:
        return commanded
    return {g: kw * drawn / total for g, kw in commanded.items()}


UNCOVERED_MATERIAL_FRACTION = 1.0 / 15.0
"""A miner whose reports leave more than this share of an interval uncovered counts as unreported in it
(``reserve_unreported_running_units``, basis ``partly metered``; issue 15, H7): 60 s of a 15-minute
interval. Below it the part counted as commanded is small and receipt and tick times jitter by seconds;
the held figure weights every uncovered second whatever its length."""


def metered_group_sheddable_kw(mode: np.ndarray, available: np.ndarray, reported_kw: np.ndarray,
                               above_idle_kw: Sequence[float], idle_kw: float,
                               covered: np.ndarray | None = None) -> tuple[float, int]:
    """One group's sheddable load as measured over an interval, counted miner by miner (issue 15, H1b, H7).

    The summed telemetry of a site is too low whenever some miners do not report (patchy telemetry,
    asleep miners gone quiet, units powered off at a PDU), so it is not capped as a whole; per miner:

    - reported: what it drew above the group's idle draw, max(0, mean reported − idle);
    - not reported, running (a mode index >= 0) and available: as commanded, its mode's power −
      idle (no evidence it drew less; counted in the second result, so the basis says so);
    - not reported otherwise (asleep, powered off, unavailable): 0, and no idle is subtracted for it.

    A miner whose reports cover only part of the interval (``covered``, H7: one report at the start,
    then silence) counts covered × the first rule + (1 − covered) × the second or third; with more
    than :data:`UNCOVERED_MATERIAL_FRACTION` uncovered it also counts as not reported (if running).

    Vectorised: O(N) numpy over the group's columns (100k miners in a few ms, once an interval).

    Parameters
    ----------
    mode : np.ndarray
        [N] int, mode index per miner (``GroupArrays.mode``: >= 0 running, -1 asleep, -2 powered off).
    available : np.ndarray
        [N] bool, available per miner (``GroupArrays.available``).
    reported_kw : np.ndarray
        [N] float, each miner's mean reported power over the interval, kW; NaN: it did not report.
    above_idle_kw : sequence of float
        [M] per mode of the group, its power less the group's idle draw, kW (negative read as 0).
    idle_kw : float
        The group's idle draw per unit, kW.
    covered : np.ndarray, optional
        [N] float in [0, 1], the share of the interval each miner's reports cover
        (``IntervalMeter.summary``'s ``miner_covered_fraction``; ignored where it did not report;
        NaN read as 1). None: every reporter covers the whole interval.

    Returns
    -------
    tuple of (float, int)
        The group's sheddable load as measured, kW (>= 0), and how many running miners did not
        report, or left more than :data:`UNCOVERED_MATERIAL_FRACTION` of it uncovered (their
        unreported part counted as commanded if available, 0 if not).
    """
    mode = np.asarray(mode)
    reported = np.asarray(reported_kw, dtype=float)
    heard = np.isfinite(reported)
    running = mode >= 0
    table = np.maximum(np.asarray(above_idle_kw, dtype=float), 0.0)
    commanded = np.zeros(mode.shape, dtype=float)
    commanded[running] = table[mode[running]]
    silent_kw = np.where(running & np.asarray(available, dtype=bool), commanded, 0.0)
    metered_kw = np.maximum(np.where(heard, reported, 0.0) - float(idle_kw), 0.0)
    share = np.where(heard, 1.0, 0.0)
    if covered is not None:
        fraction = np.clip(np.nan_to_num(np.asarray(covered, dtype=float), nan=1.0), 0.0, 1.0)
        share = np.where(heard, fraction, 0.0)
    drawn = share * metered_kw + (1.0 - share) * silent_kw
    unreported = running & (share < 1.0 - UNCOVERED_MATERIAL_FRACTION)
    return float(drawn.sum()), int(unreported.sum())


def reserve_clawback_usd(short_kw: Any, price_usd_mw_h: Any, duration_h: Any) -> Any:
    """The one clawback definition (issue 15): reserve awarded but not held, at the award's price.

    clawback = short_kw / 1000 × price_usd_mw_h × duration_h, per product per interval; summed over
    intervals it is the hourly failed quantity × price when the award is constant over the hour
    (the mean over the hour of min(award, capability) is what the telemetry shows).

    ERCOT's settlement charges a QSE for Ancillary Service capacity it was awarded and did not
    provide: Nodal Protocols §6.4.9.1.3 (Replacement of Ancillary Service Due to Failure to Provide)
    and §6.7.3 (Charges for a Failure to Provide; since NPRR1149, 27 June 2024, systematic: after
    each Operating Hour the AS Supply Responsibility is compared with the real-time telemetry,
    ERCOT notice M-A052424-01). The price ERCOT uses is at least the MCPC (NPRR1149 adds a real-time
    reserve price component that is not bundled here, so this is a lower bound). A deployment that
    delivers less than asked is a performance failure (§8.1.1.4), reported with the deployment, not
    a settlement charge here.

    Parameters
    ----------
    short_kw : float or array
        Hold shortfall, kW (``reserve_hold_shortfalls``).
    price_usd_mw_h : float or array
        The award's price (the DAM MCPC), $ per MW per hour.
    duration_h : float or array
        Interval length, h.

    Returns
    -------
    float or array
        $ charged back (same shape as the inputs' broadcast).
    """
    return short_kw / 1000.0 * price_usd_mw_h * duration_h


def _issuer_refusal(profile: SiteProfile, issuer: str, product: str) -> str | None:
    section = profile.ancillary
    if section is None:
        return "ancillary: this profile has no ancillary section (the site provides no reserves)"
    if issuer != section.issuer:
        return f"issuer: {issuer!r} is not the site's QSE (ancillary.issuer: {section.issuer!r})"
    if product not in section.products:
        return f"product: the site is not qualified for {product} (ancillary.products: {sorted(section.products)})"
    return None


def product_qualified_kw(profile: Any, product: str) -> float | None:
    """The site's qualification for one AS product, kW: the product's ``group_mw`` summed (MW ×
    1000), capped by its ``max_mw`` (profile ``ancillary.products``), the bound
    :func:`award_refusal` applies to one award,
    :func:`hashflex.control.limits_ancillary.award_total_refusal` to the awards in force together and
    :func:`hashflex.control.as_intake.deploy_intake_refusal` to one deployment.

    Parameters
    ----------
    profile : SiteProfile
        The site.
    product : str
        ``RRS``, ``ECRS`` or ``NSPIN``.

    Returns
    -------
    float or None
        kW; None without an ancillary section or when the site is not qualified for ``product``.
    """
    section = profile.ancillary
    if section is None or product not in section.products:
        return None
    offer = section.products[product]
    kw = float(sum(offer.group_mw.values())) * 1000.0
    return min(kw, float(offer.max_mw) * 1000.0) if offer.max_mw is not None else kw


def award_refusal(profile: SiteProfile, msg: ASAwardMessage, held: dict[str, Any] | None, now: datetime) -> str | None:
    """Why an award is refused, or None: wrong issuer or product, more than the site qualified,
    already over, or an older revision than the one held.

    Parameters
    ----------
    profile : SiteProfile
        The site: ``ancillary.issuer`` (the QSE) and ``ancillary.products`` (qualified MW per group,
        optional ``max_mw`` per product).
    msg : ASAwardMessage
        The award.
    held : dict, optional
        The award with the same id already accepted (its JSON), or None.
    now : datetime
        The decision time, timezone-aware.

    Returns
    -------
    str or None
        The refusal, naming the field (``issuer``, ``product``, ``reserve_kw``, ``end``,
        ``revision``, or the missing ``ancillary`` section); None when the award is acceptable.
    """
    reason = _issuer_refusal(profile, msg.issuer, msg.product)
    if reason is not None:
        return reason
    qualified_kw = product_qualified_kw(profile, msg.product)
    if qualified_kw is None:  # _issuer_refusal checked it; refused all the same rather than assumed
        return f"product: the site is not qualified for {msg.product}"
    if msg.reserve_kw > qualified_kw + 1e-6:
        return f"reserve_kw: {msg.reserve_kw:.0f} kW is more than the {qualified_kw:.0f} kW qualified for {msg.product}"
    if msg.end <= now:
        return f"end: {msg.end.isoformat()} has already passed"
    if held is not None:
        return revision_refusal(msg.revision, int(held["revision"]))
    return None


def revision_refusal(revision: int, held_revision: int) -> str | None:
    """Why a message under an id already held is refused by its revision, or None when it is newer.

    The DR book's rule for modification numbers (:meth:`hashflex.control.dr.DRBook.apply`): the
    same number is a repeat (a redelivery with other content, or a sender that forgot to count),
    a lower one is stale (an older version arriving late: a QoS 1 redelivery after a newer one,
    an OpenADR notification overtaken by a poll).

    Parameters
    ----------
    revision : int
        The incoming message's revision.
    held_revision : int
        The revision in force.

    Returns
    -------
    str or None
        ``"revision: ..."``; a stale one ends with :data:`STALE`.
    """
    if revision == held_revision:
        return f"revision: {revision} is the revision held; a change needs a higher revision"
    if revision < held_revision:
        return f"revision: {revision} is older than the revision {held_revision} held {STALE}"
    return None


def amendment_refusal(held: ASDeployment, msg: ASDeployMessage, now: datetime) -> str | None:
    """Why an amendment of the deployment ``held`` is refused, or None.

    Parameters
    ----------
    held : ASDeployment
        The deployment in the book under ``msg.deployment_id``.
    msg : ASDeployMessage
        The amendment (not a recall).
    now : datetime
        The decision time, timezone-aware.

    Returns
    -------
    str or None
        Naming the field: ``revision`` (:func:`revision_refusal`), ``product`` (not the deployment's),
        ``deployment_id`` (already ended: recalled or past its sustain duration).
    """
    reason = revision_refusal(msg.revision, held.revision)
    if reason is not None:
        return reason
    if msg.product != held.product:
        return f"product: {msg.product} differs from the deployment's {held.product}"
    if held.end <= now or held.recalled:
        return (f"deployment_id: {msg.deployment_id!r} ended at {held.end.isoformat()}"
                f"{' (recalled)' if held.recalled else ''}; a new deployment needs a new id")
    return None


def amended_deployment(held: ASDeployment, msg: ASDeployMessage) -> ASDeployment:
    """The deployment ``held`` as amended by ``msg`` (accepted by :func:`amendment_refusal`).

    Parameters
    ----------
    held : ASDeployment
        The deployment in force.
    msg : ASDeployMessage
        The amendment: ``deployed_kw`` (the new obligation), ``revision``, ``issued_at`` (when the
        amendment was instructed).

    Returns
    -------
    ASDeployment
        Same id, product, first instruction time, baseline and end; ``deployed_kw`` and the limit
        max(baseline_kw − deployed_kw, 0) from the amendment; the deadline is the product's from
        the amendment's time when it asks more MW, the one held when it asks fewer (sources of the
        deadlines: :data:`hashflex.profile.AS_PRODUCT_RULES`).
    """
    at = max(msg.issued_at, held.issued_at)
    deadline = held.deadline
    if msg.deployed_kw > held.deployed_kw:
        deadline = at + timedelta(seconds=float(AS_PRODUCT_RULES[held.product]["deadline_s"]))
    return replace(held, deployed_kw=float(msg.deployed_kw), limit_kw=max(held.baseline_kw - float(msg.deployed_kw), 0.0),
                   deadline=deadline, revision=msg.revision, amended_at=at)


def has_deadline(held: ASDeployment | None, msg: ASDeployMessage, now: datetime) -> bool:
    """Whether the instruction ``msg`` has a deadline to meet, so that arriving after it is late.

    Only an instruction asking more MW than the one in force has one: a new deployment (nothing in
    force under its id), or an amendment asking more than the revision in force. An amendment asking
    the same or fewer MW raises the limit (or leaves it): the load already shed for the revision in
    force meets it on receipt, so it binds from receipt and cannot be late (issue 15; the revision in
    force keeps its own deadline, :func:`amended_deployment`).

    Parameters
    ----------
    held : ASDeployment or None
        The deployment in the book under ``msg.deployment_id`` (None: none).
    msg : ASDeployMessage
        The deployment or its amendment (not a recall).
    now : datetime
        The decision time, timezone-aware (a deployment ended by then is not in force).

    Returns
    -------
    bool
        True for a new deployment or an amendment asking more MW than the one in force.
    """
    if held is None or held.recalled or held.end <= now:
        return True
    return float(msg.deployed_kw) > held.deployed_kw


def early_recall_ends(recalled_at: datetime, issued_at: datetime) -> bool:
    """Whether a recall received before its deployment (a pending recall) ends that deployment.

    A recall that overtook its deployment (QoS 1 redelivery order, a deployment lost and resent) ends
    a deployment with its id instructed at or before the recall; a deployment instructed after the
    recall is a new instruction the (older) recall cannot end, as ERCOT's later Dispatch Instruction
    supersedes an earlier one (Nodal Protocols §6.5.7.6.2.x).

    Parameters
    ----------
    recalled_at : datetime
        The pending recall's ``issued_at``, timezone-aware.
    issued_at : datetime
        The arriving deployment's ``issued_at``, timezone-aware.

    Returns
    -------
    bool
        True when ``issued_at <= recalled_at``.
    """
    return issued_at <= recalled_at


def deploy_refusal(profile: SiteProfile, msg: ASDeployMessage) -> str | None:
    """Why a deployment is refused, or None: only the issuer and the product are checked.

    A deployment above the award in force is accepted (shedding is always safe).

    Parameters
    ----------
    profile : SiteProfile
        The site: ``ancillary.issuer`` and the qualified ``ancillary.products``.
    msg : ASDeployMessage
        The deployment or its recall.

    Returns
    -------
    str or None
        The refusal, naming the field; None when the message is acceptable. ``deployed_kw`` 0 (not
        a recall) is refused: it sheds nothing yet would freeze the site at its load for the whole
        sustain duration (newcomer finding 9); a QSE ends a deployment with its recall.
    """
    if not msg.recalled and msg.deployed_kw <= 0:
        return (f"deployed_kw: {msg.deployed_kw:g} kW sheds nothing; > 0 required "
                "(to end a deployment, send its recall)")
    return _issuer_refusal(profile, msg.issuer, msg.product)


def deployment_from(msg: ASDeployMessage, baseline_kw: float, via: str | None = None,
                    received_at: datetime | None = None, *, max_hold_h: float | None = None,
                    awarded_at_instruction_kw: float | None = None,
                    held_at_instruction_kw: float | None = None) -> ASDeployment:
    """The deployment a (not recalled) message sets, from the import ``baseline_kw`` now.

    Parameters
    ----------
    msg : ASDeployMessage
        An accepted deployment (not a recall).
    baseline_kw : float
        The load drawn when it arrived, kW (net of on-site renewables; :func:`instruction_baseline`).
    via : str, optional
        The path it came by (``"openadr"``); kept with the deployment.
    received_at : datetime, optional
        When it arrived: it binds from min(``issued_at``, ``received_at``).
    max_hold_h : float, optional
        The backstop, h from ``issued_at`` (``profile.ancillary.max_hold_h``; None:
        :data:`hashflex.profile.ancillary.DEFAULT_MAX_HOLD_H`): without a recall it ends then.
    awarded_at_instruction_kw : float, optional
        The reserve awarded (all products) in force at the instruction as known now, kW
        (:func:`awarded_at_instruction_kw`); kept with the deployment as a record (it does not move
        the limit).
    held_at_instruction_kw : float, optional
        The MW of the deployments in force at its arrival counted back onto ``baseline_kw``
        (:func:`stacked_baseline`); None only for a book written before the stacking rule.

    Returns
    -------
    ASDeployment
        Limit max(baseline_kw − deployed_kw, 0) kW, deadline from the product's ``deadline_s`` in
        ``profile.AS_PRODUCT_RULES``, end at the backstop (a recall ends it earlier).
    """
    rules = AS_PRODUCT_RULES[msg.product]
    hold_h = DEFAULT_MAX_HOLD_H if max_hold_h is None else float(max_hold_h)
    return ASDeployment(
        deployment_id=msg.deployment_id, product=msg.product, issuer=msg.issuer, issued_at=msg.issued_at,
        deployed_kw=float(msg.deployed_kw), baseline_kw=float(baseline_kw),
        limit_kw=max(float(baseline_kw) - float(msg.deployed_kw), 0.0),
        deadline=msg.issued_at + timedelta(seconds=float(rules["deadline_s"])),
        end=msg.issued_at + timedelta(hours=hold_h), revision=msg.revision, via=via,
        received_at=received_at,
        awarded_at_instruction_kw=None if awarded_at_instruction_kw is None else float(awarded_at_instruction_kw),
        held_at_instruction_kw=None if held_at_instruction_kw is None else float(held_at_instruction_kw),
    )


def recall_end(held: ASDeployment, recalled_at: datetime) -> datetime:
    """When a recall instructed at ``recalled_at`` ends the deployment ``held``.

    From the recall's time, whatever the order of the two instructions (third newcomer review,
    finding 2): min(``held.end``, max(``recalled_at``, ``held.binds_from``)). A recall instructed
    before a future-dated deployment's ``issued_at`` ends it then (it used to hold until
    ``issued_at``); one instructed before the deployment bound at all cancels it (``end`` =
    ``binds_from``: in force nowhere); a recall never prolongs it.

    Parameters
    ----------
    held : ASDeployment
        The deployment in the book (not yet recalled).
    recalled_at : datetime
        The recall's ``issued_at``, timezone-aware.

    Returns
    -------
    datetime
        The deployment's new ``end``.
    """
    return min(held.end, max(recalled_at, held.binds_from))


def awarded_kw(awards: Iterable[tuple[datetime, datetime, float]], start: datetime,
               end: datetime | None = None) -> float:
    """Reserve awarded over all products in force at ``start`` (``end`` None) or overlapping
    ``[start, end)``, kW.

    Parameters
    ----------
    awards : iterable of (start, end, reserve_kw)
        Each award's window (timezone-aware, half-open) and its reserve, kW.
    start : datetime
        The moment, or the interval's start; timezone-aware.
    end : datetime, optional
        The interval's end (None: the moment ``start``).

    Returns
    -------
    float
        Σ reserve_kw of the awards in force, kW.
    """
    total = 0.0
    for a_start, a_end, reserve_kw in awards:
        if (a_start <= start < a_end) if end is None else (a_start < end and a_end > start):
            total += float(reserve_kw)
    return total


def awarded_at_instruction_kw(awards: Sequence[tuple[datetime, datetime, float]], issued_at: datetime,
                              arrived_at: datetime) -> float:
    """The reserve awarded (all products, or one product's awards) in force at a deployment's
    instruction or at its arrival, whichever is larger, over the awards known at its arrival, kW.

    What the site carried when instructed: the load drawn at the arrival (the baseline) already runs
    for every award in force then, including one that started between the instruction and the arrival
    (issue 15, H2 finding 2). Kept with the deployment and in its ``as_performance`` record
    (``ASDeployment.awarded_at_instruction_kw``), and the report's ``awarded_mw`` per product. It was
    A₀ of the former award rise; it no longer moves the limit (module docstring).

    Parameters
    ----------
    awards : sequence of (start, end, reserve_kw)
        The awards known at the arrival (all products; a withdrawn award has reserve_kw 0), kW.
    issued_at : datetime
        The instruction time, timezone-aware.
    arrived_at : datetime
        When it arrived (the baseline's moment), timezone-aware.

    Returns
    -------
    float
        max(A(issued_at), A(arrived_at)), kW (:func:`awarded_kw`).
    """
    return max(awarded_kw(awards, issued_at), awarded_kw(awards, arrived_at))


def stacked_baseline(drawn_kw: float, in_force: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """The baseline of a deployment that arrives while others are in force (issue 15, H2 finding 1).

    **Rule.** A deployment's baseline is the load the site would draw without the deployments
    already in force: the load drawn at its arrival (already cut by them) plus the MW they hold,
    at most the lowest of the loads they were measured from (each one's stacked baseline: the load
    drawn before they cut; a cut that could not shed everything, idle draw, must not inflate it). So stacked deployments add up (the book enforces each one's baseline less the MW of every
    deployment in force, :func:`stacked_limit_kw`), and a recall of one raises the limit by exactly
    its MW. Taking the cut load alone (the former rule) left a later deployment's limit as low as if
    the recalled one were still deployed.

    Parameters
    ----------
    drawn_kw : float
        The load drawn at the arrival, kW (the lower of modelled and measured import,
        :func:`instruction_baseline`).
    in_force : iterable of (deployed_kw, uncut_kw)
        Per deployment in force at the arrival: its MW and the load it was measured from (its
        stacked baseline, :attr:`ASDeployment.stacked_baseline_kw`), kW.

    Returns
    -------
    baseline_kw : float
        min(drawn + Σ deployed, min uncut) (``drawn_kw`` alone when none is in force), kW, >= 0.
    held_kw : float
        ``baseline_kw`` − ``drawn_kw``: the MW of the deployments in force it counts back, kW, >= 0.
    """
    rows = [(float(d), float(u)) for d, u in in_force]
    drawn = max(float(drawn_kw), 0.0)
    if not rows:
        return drawn, 0.0
    baseline = max(min(drawn + sum(d for d, _ in rows), min(u for _, u in rows)), drawn)
    return baseline, baseline - drawn


def stacked_limit_kw(stacked_baseline_kw: float, deployed_kw: float, others_deployed_kw: float) -> float:
    """The import limit the book enforces for one deployment, with others in force or not, kW.

    ``max(stacked baseline − deployed − Σ others' deployed_kw, 0)``: its baseline is the load
    without the deployments in force at its arrival (:func:`stacked_baseline`), and the others are
    every other deployment in force then. So the lowest of them is the site's limit and they add up;
    at the instruction the others are those counted back, and the limit is the load drawn less its
    MW; a recall of one gives back exactly its MW (no longer subtracted). No award moves it (the
    pre-deployment load only, module docstring). A deployment accepted before this rule
    (``held_at_instruction_kw`` None) keeps its own limit (``limit_kw``).

    Parameters
    ----------
    stacked_baseline_kw : float
        :attr:`ASDeployment.stacked_baseline_kw`, kW.
    deployed_kw : float
        Its MW (the revision in force), kW.
    others_deployed_kw : float
        Σ deployed_kw of the other deployments in force then, kW.

    Returns
    -------
    float
        kW, >= 0.
    """
    return max(float(stacked_baseline_kw) - float(deployed_kw) - float(others_deployed_kw), 0.0)


def instruction_baseline(modelled_kw: float, latest_measured: tuple[float, float, str] | None,
                         fresh_s: float, future_skew_s: float = 120.0) -> tuple[float, str]:
    """The load drawn at a deployment's instruction, the evidence it credits delivery against (issue
    15, H2 finding 5): never more than the metered evidence shows.

    A fresh measured import (no older than ``fresh_s``, the guard's freshness) below the model is
    taken, as before. **With stale telemetry** (e.g. a deployment received while the daemon boots,
    the last reading 232 s old) the baseline is min(modelled, last measured), not the model: the
    modelled import of a fleet that has not reported since the start can be the whole plan (22.7 MW)
    while the meter last read 92 kW, and delivery = baseline − load would credit megawatts never
    drawn. The stale reading is the only evidence of what was drawn; taking the lower of the two
    can only lower the limit (when in doubt, curtail) and the credited delivery (no credit is
    invented). It is not marked unmeasured with the model kept: that would keep a limit above
    anything metered. The source names its age. Without any reading the model stands (``modelled``).

    Parameters
    ----------
    modelled_kw : float
        The import the fleet's commanded setpoints model now, kW.
    latest_measured : tuple of (float, float, str) or None
        The latest measured import: (kW, age in s at the instruction, source), or None when none
        was ever received by this process.
    fresh_s : float
        The freshness window, s (``guard.max_age_s``).
    future_skew_s : float
        A reading dated further ahead than this (s) is not evidence (``guard.future_skew_s``).

    Returns
    -------
    baseline_kw : float
        kW, >= 0.
    source : str
        ``"modelled"``, ``"measured: <source>"`` or ``"measured: <source>, stale <age> s"``.
    """
    modelled = float(modelled_kw)
    if latest_measured is None:
        return max(modelled, 0.0), "modelled"
    kw, age_s, source = float(latest_measured[0]), float(latest_measured[1]), latest_measured[2]
    if not math.isfinite(kw) or not math.isfinite(age_s) or -age_s > future_skew_s or kw >= modelled:
        return max(modelled, 0.0), "modelled"
    stale = "" if age_s <= fresh_s else f", stale {age_s:.0f} s"
    return max(kw, 0.0), f"measured: {source}{stale}"


def _excess(product: str, awards: Sequence[tuple[str, datetime, datetime, float]],
            deployments: Iterable[ASDeployment], t: datetime) -> tuple[float, float, float, list[str]]:
    """(deployed − awarded, awarded, deployed, deployment ids) of ``product`` at the moment ``t``, kW."""
    awarded = sum(kw for p, s, e, kw in awards if p == product and s <= t < e)
    live = [d for d in deployments if d.product == product and d.in_force(t)]
    deployed = sum(d.deployed_kw for d in live)
    return deployed - awarded, awarded, deployed, sorted(d.deployment_id for d in live)


def above_award_after_change(product: str, before: Sequence[tuple[str, datetime, datetime, float]],
                             after: Sequence[tuple[str, datetime, datetime, float]],
                             deployments: Iterable[ASDeployment], start: datetime, end: datetime
                             ) -> dict[str, Any] | None:
    """Whether an award change (a withdrawal, a cut, a shorter window) leaves more of ``product``
    deployed than awarded, where it did not before (third newcomer review, finding 4), or None.

    A deployment instruction stands whatever happens to the award afterwards: the site obeys it in
    full (no clause found lets a Load Resource trim a Dispatch Instruction; Nodal Protocols §6.5.7.6.2,
    §8.1.1.4) and its obligation is measured against the award (NPRR1149 §6.7.3, NPRR1196), so the
    excess is flagged (the award's ack, ``as_above_award``), never enforced by lifting the limit.
    Checked at every moment of ``[start, end)`` where the awards or the deployments change.

    Parameters
    ----------
    product : str
        The changed award's product.
    before, after : sequence of (product, start, end, reserve_kw)
        Every award known before and after the change (timezone-aware windows, kW).
    deployments : iterable of ASDeployment
        The deployments in the book (any product; those of ``product`` in force count).
    start, end : datetime
        Where the change matters: from max(now, the earlier of the two windows' starts) to the later
        of their ends.

    Returns
    -------
    dict or None
        ``above_award_kw`` (the largest excess after the change, kW), ``awarded_kw`` and
        ``deployed_kw`` at that moment ``at`` (datetime), ``deployment_ids`` (list); None when no
        moment's excess grew.
    """
    items = list(deployments)
    moments = {start}
    for _, a_start, a_end, _ in [*before, *after]:
        moments.update(t for t in (a_start, a_end) if start <= t < end)
    for d in items:
        moments.update(t for t in (d.binds_from, d.end) if start <= t < end)
    worst: dict[str, Any] | None = None
    for t in sorted(moments):
        excess, awarded, deployed, ids = _excess(product, after, items, t)
        was = max(_excess(product, before, items, t)[0], 0.0)
        if excess > was + 1e-6 and (worst is None or excess > worst["above_award_kw"] + 1e-6):
            worst = {"above_award_kw": excess, "awarded_kw": awarded, "deployed_kw": deployed, "at": t,
                     "deployment_ids": ids}
    return worst
