"""The control loop's ancillary-service intake (issue 15): awards and deployments from the QSE into the
limits book (durable, idempotent), the reserve inputs of the plan, and measured deployment
performance. A mixin of :class:`~hashflex.control.loop.ControlLoop`, split from ``loop.py``.

Sources: ERCOT Nodal Protocols §3.18 (Load Resource participation), §6.5.7.6.2.x (deployment of
RRS, ECRS and Non-Spin); the product rules are ``profile.AS_PRODUCT_RULES``.

A deployment holds until recalled (:mod:`hashflex.control.ancillary`): the tick's transitions
(:meth:`AncillaryIntakeMixin._record_transitions`, which extends the loop's) flag one held past its
product's sustained duration (``as_overrun``) and record the backstop's release (``as_released``),
each once: an ``as_performance`` audit record with ``event`` ``overrun`` / ``released`` and a
``hashflex_events_total`` counter.

Refusals (issue 15, helper task H1): besides the limits book's (issuer, qualification, revision, an
award already ended) and the plausibility bounds' (``hashflex.plausibility``: kW within the site's
scale, ``issued_at`` neither beyond the clock skew nor older than the backstop
``ancillary.max_hold_h``), the intake refuses a recall naming another product than the deployment it
recalls and a deployment above the product's qualification (:func:`deploy_intake_refusal`); the book
refuses an award whose product's awards in force together would exceed the qualification (H11,
:func:`hashflex.control.limits_ancillary.award_total_refusal`). Every
refusal is acked ``rejected`` on ``out/as/ack``, audited (an ``as_award``/``as_deploy`` record with
the message and the ack), counted in ``as_rejected`` and in ``command_rejections``
(``hashflex_input_rejections_total{kind,reason}``) under :func:`hashflex.messages.parse.refusal_rule`,
the same ``refused:<field>`` the MQTT ingest counts in ``/status`` ``inputs_refused``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from hashflex.control.ancillary import (
    STALE,
    ASDeployment,
    deploy_refusal,
    has_deadline,
    instruction_baseline,
    product_qualified_kw,
)
from hashflex.control.guard import Guard
from hashflex.control.limits import STORE_UNAVAILABLE, Hold, LimitsBook
from hashflex.messages import (
    ASAckMessage,
    ASAwardMessage,
    ASDeployMessage,
)
from hashflex.messages.parse import refusal_rule
from hashflex.plausibility import PlausibilityContext, check_plausible
from hashflex.profile import SiteProfile
from hashflex.profile.ancillary import DEFAULT_MAX_HOLD_H

log = logging.getLogger(__name__)


def deployment_performance(message: ASDeployMessage, baseline_kw: float, limit_kw: float, commanded_kw: float,
                           now: datetime, deadline: datetime | None, amended_from_kw: float | None = None,
                           asks_more: bool = True) -> dict[str, Any]:
    """What one AS deployment asked and what the fast path commanded (issue 15).

    Parameters
    ----------
    message : ASDeployMessage
        The deployment, or its amendment (``revision`` > 0: then ``issued_at`` is the amendment's
        time, from which the response to it is measured).
    baseline_kw : float
        The modelled import when the deployment was first instructed, kW.
    limit_kw : float
        The import limit in force (baseline − obligation), kW.
    commanded_kw : float
        The modelled import after the fast path's cut, kW.
    now : datetime
        When the cut was commanded.
    deadline : datetime or None
        By when the limit must be met (None: at ``issued_at``).
    amended_from_kw : float, optional
        The obligation before this amendment, kW (None: not an amendment).
    asks_more : bool
        False for an amendment asking the same or fewer MW: it binds from receipt and has no
        deadline to miss (``commanded_within_deadline`` True).

    Returns
    -------
    dict
        obligation (deployed kW), delivered = baseline − commanded import, shortfall = what the
        commanded import is still over the limit (load that cannot be shed: idle draw,
        auxiliaries), time to command; the ``measured_*`` keys are filled by
        :meth:`AncillaryIntakeMixin.measure_as_deployments`.
    """
    delivered = max(baseline_kw - commanded_kw, 0.0)
    return {"deployment_id": message.deployment_id, "product": message.product, "revision": message.revision,
            "amended_from_kw": amended_from_kw,
            "issued_at": message.issued_at.isoformat(),
            "deadline": (deadline or message.issued_at).isoformat(),
            "obligation_kw": float(message.deployed_kw), "baseline_kw": baseline_kw, "limit_kw": limit_kw,
            "commanded_import_kw": commanded_kw, "delivered_kw": delivered,
            "shortfall_kw": max(commanded_kw - limit_kw, 0.0),
            "commanded_after_s": max((now - message.issued_at).total_seconds(), 0.0),
            "commanded_within_deadline": not asks_more or deadline is None or now <= deadline,
            "measured_import_kw": None, "measured_shortfall_kw": None, "measured_response_s": None,
            "measured_within_deadline": None}


def deployment_flags(book: LimitsBook, message: ASDeployMessage, deadline: datetime | None, now: datetime,
                     asks_more: bool = True) -> dict[str, Any]:
    """How a deployment arrived and what it asks against the award (issue 15): late, above the award.

    A deployment is **late** when it arrives (``now``) after its deadline (instruction time + the
    product's deployment time, ``profile.AS_PRODUCT_RULES``): the QSE's or the path's delay, not the
    site's. It is obeyed at once all the same (when in doubt, curtail) and flagged, and its response
    stays measured from the instruction (``issued_at``), as ERCOT measures a Load Resource's
    deployment from the Dispatch Instruction (Nodal Protocols §6.5.7.6.2.2-4, §8.1.1.4): the delay
    is shown beside it (``arrival_delay_s``) so the site's own part (``commanded_after_s`` −
    ``arrival_delay_s``) is visible. Only an instruction asking more MW than the one in force has a
    deadline to meet (``asks_more``, :func:`hashflex.control.ancillary.has_deadline`): an amendment
    asking fewer binds from receipt and is never late (``binds_from_receipt``).

    A deployment is **above the award** when the product's deployments in force at its instruction
    (this one included, as amended) ask more than the product's award at the deployment: in force at
    the instruction or at the arrival, whichever is larger
    (:meth:`~hashflex.control.limits_ancillary.AncillaryBookMixin.product_awarded_at_instruction_kw`, the
    report's ``awarded_mw``). A Load
    Resource's obligation and its failed quantity are counted against its Ancillary Service
    Resource Responsibility (Nodal Protocols §6.7.3 and §8.1.1.4 as revised by NPRR1149/NPRR1196:
    Real-Time telemetry is compared with the AS Supply Responsibility); no clause found lets a site
    refuse or trim a Dispatch Instruction, so the site obeys the full instruction (shedding is
    always safe) and measures its obligation against the award: ``award_obligation_kw`` = this
    deployment's kW less the excess (the excess is charged to the latest deployment),
    ``award_limit_kw`` = baseline − that.

    Parameters
    ----------
    book : LimitsBook
        The book with this deployment decided (the trial copy), for the awards and the deployments
        in force at the instruction.
    message : ASDeployMessage
        The deployment or its amendment (not a recall).
    deadline : datetime or None
        Its deadline (the ack's; None: not accepted, no flags).
    now : datetime
        When it arrived (the decision time), UTC.
    asks_more : bool
        Whether it asks more MW than the deployment in force under its id (or is new); False: an
        amendment asking the same or fewer MW, which cannot be late.

    Returns
    -------
    dict
        ``late`` (bool), ``binds_from_receipt`` (``not asks_more``), ``late_by_s`` (s past the deadline at arrival, 0 if not late),
        ``arrival_delay_s`` (s from the instruction to arrival, >= 0), ``received_at`` (ISO),
        ``awarded_kw``, ``deployed_in_force_kw`` (the product's deployments in force at the
        instruction), ``above_award_kw``, ``award_obligation_kw`` (kW, >= 0).
    """
    at = message.issued_at
    # The award in force at the instruction or at the arrival, whichever is larger (H8 finding 4: a
    # deployment instructed before its award started was all "above" a 0 kW award the report showed as 1 MW).
    awarded_kw = book.product_awarded_at_instruction_kw(message.product, at, now)
    in_force_kw = float(sum(d.deployed_kw for d in book.as_deployments.values()
                            if d.product == message.product and d.in_force(at)))
    above_kw = max(in_force_kw - awarded_kw, 0.0)
    late = asks_more and deadline is not None and now > deadline
    return {"late": late, "binds_from_receipt": not asks_more, "late_by_s": max((now - deadline).total_seconds(), 0.0) if late else 0.0,  # type: ignore[operator]
            "arrival_delay_s": max((now - at).total_seconds(), 0.0), "received_at": now.isoformat(),
            "awarded_kw": awarded_kw, "deployed_in_force_kw": in_force_kw,
            "above_award_kw": above_kw if above_kw > 1e-6 else 0.0,
            "award_obligation_kw": max(float(message.deployed_kw) - above_kw, 0.0)}


def _flagged_ack(ack: ASAckMessage, message: ASDeployMessage, flags: dict[str, Any]) -> ASAckMessage:
    """The ack with the deployment's flags (:func:`deployment_flags`) as fields and, when late or
    above the award, said in its reason."""
    notes = []
    if flags["late"]:
        notes.append(f"late: arrived {flags['arrival_delay_s']:.0f} s after the instruction, "
                     f"{flags['late_by_s']:.0f} s past the deadline; cut at once")
    reason = ack.reason or ""
    if flags["above_award_kw"] > 0 and "more than the" not in reason:  # the book names a single deployment's excess
        notes.append(f"{flags['deployed_in_force_kw']:.0f} kW of {message.product} deployed is more than the "
                     f"{flags['awarded_kw']:.0f} kW awarded")
    if flags["above_award_kw"] > 0:
        notes.append("obeyed in full; obligation measured against the award")
    if notes:
        reason = f"{reason} ({'; '.join(notes)})"
    return ack.model_copy(update={"reason": reason[:500], "late": flags["late"], "late_by_s": flags["late_by_s"],
                                  "awarded_kw": flags["awarded_kw"], "above_award_kw": flags["above_award_kw"]})




def deploy_intake_refusal(profile: SiteProfile, held: ASDeployment | None, message: ASDeployMessage,
                          in_force: Iterable[ASDeployment] = ()) -> str | None:
    """Why the intake refuses a deployment before the limits book decides it, or None (issue 15,
    helper task H1 findings 3 and 5). Only a message the book's own first rule accepts
    (:func:`hashflex.control.ancillary.deploy_refusal`: the issuer, a qualified product,
    ``deployed_kw`` > 0) is checked here, so the book's reason comes first.

    - A **recall naming another product** than the deployment in force under its id
      (``product``): a recall ends one instruction; one that names another product is not that
      instruction's recall (a mixed-up id, or another product's recall sent under it). Refusing it
      keeps the cut in force (when in doubt, curtail) and tells the QSE at once. (A recall that
      arrives *before* its deployment cannot be checked here: the book keeps it pending, and
      refuses a second pending recall of the id naming another product, H11 finding 1.)
    - A **deployment above the product's qualification** (``deployed_kw``, :func:`~hashflex.control.limits_ancillary.product_qualified_kw`):
      the bound is the site's qualified MW *for that product*, not the award and not the fleet's
      total. Not the award: the site obeys a deployment above the award in full (an award may be
      cut or withdrawn, or reach the site late, while a deployment holds; no clause lets a Load
      Resource trim a Dispatch Instruction to its award, Nodal Protocols §6.7.3, §8.1.1.4), so the
      award is what its obligation is measured against, not a reason to refuse. Not the fleet's total
      qualified (all products): ERCOT qualifies a Resource for each service separately, up to the
      MW it was tested for (Nodal Protocols §8.1.1.1, Ancillary Service qualification and testing),
      and its responsibility for a product is awarded within that, so a legitimate instruction never
      asks more of the product (ASSUMED: the profile's qualification is the one registered with
      ERCOT); more is a unit slip (MW sent as kW ×1000) or another resource's
      instruction, and obeying it cut the whole site to zero, after which the miners' minimum
      off time left the awards of *other* products unheld and clawed back. An amendment is bounded
      alike, and so is the **sum** of the product's deployments in force (``in_force``, other ids)
      and this one (second newcomer finding 4: RRS dep-r2 100 kW in force, dep-r3 450 kW accepted on a
      500 kW qualification cut the site to 0 kW): the same rule as for one deployment, as awards
      are summed against the qualification.

    Parameters
    ----------
    profile : SiteProfile
        The site (its ``ancillary`` section).
    held : ASDeployment or None
        The deployment in the book under ``message.deployment_id`` (None: none).
    message : ASDeployMessage
        The deployment, its amendment or its recall.
    in_force : iterable of ASDeployment
        The book's deployments in force at the arrival (any product, any id: only the other ids of
        ``message.product`` are summed), kW each in ``deployed_kw``.

    Returns
    -------
    str or None
        The refusal, starting with the field it names (``product:`` or ``deployed_kw:``); None
        when the book decides.
    """
    if deploy_refusal(profile, message) is not None:
        return None  # the book refuses it, naming its own field
    if message.recalled:
        if held is not None and held.product != message.product:
            return (f"product: the recall names {message.product} but deployment {message.deployment_id!r} is "
                    f"{held.product}; a recall must name its deployment's product (the deployment stays in force)")
        return None
    qualified = product_qualified_kw(profile, message.product)  # one rule for awards (summed) and deployments
    if qualified is not None and float(message.deployed_kw) > qualified + 1e-6:
        return (f"deployed_kw: {message.deployed_kw:.0f} kW is more than the {qualified:.0f} kW qualified for "
                f"{message.product} (profile ancillary.products.{message.product}); nothing was cut")
    others = sorted((d.deployment_id, float(d.deployed_kw)) for d in in_force
                    if d.product == message.product and d.deployment_id != message.deployment_id)
    total_kw = float(message.deployed_kw) + sum(kw for _, kw in others)
    if qualified is not None and others and total_kw > qualified + 1e-6:
        named = ", ".join(f"{i} {kw:.0f} kW" for i, kw in others)
        return (f"deployed_kw: {message.deployed_kw:.0f} kW with the {message.product} deployments in force "
                f"({named}) sums to {total_kw:.0f} kW, more than the {qualified:.0f} kW qualified for "
                f"{message.product} (profile ancillary.products.{message.product}); nothing more was cut "
                "(the deployments in force hold)")
    return None


class AncillaryIntakeMixin:
    """Award and deployment handlers of the control loop."""

    # ------------------------------------------------------------------ ancillary services (issue 15)

    def _reserve_inputs(self, index: pd.DatetimeIndex) -> dict[str, Any]:
        """The awards in force as the plan's reserve obligations (kW per product, net of what is
        deployed) with their award prices; nothing without an ancillary section or an award."""
        if self.profile.ancillary is None or not self.book.as_awards:
            return {}
        obligations = self.book.reserve_obligations_over(index, self.interval)
        prices = {product: np.zeros(len(index)) for product in obligations}
        for award in self.book.as_awards.values():
            if award.get("price_usd_mw_h") is None:
                continue
            start, end = pd.Timestamp(award["start"]), pd.Timestamp(award["end"])
            inside = np.asarray((index < end) & (index + self.interval > start))
            prices[award["product"]][inside] = float(award["price_usd_mw_h"])
        return {"as_award_kw": obligations, "as_price_usd_mw_h": prices}

    def _decide_commit_ack(self, message: ASAwardMessage | ASDeployMessage, now: datetime,
                           decide: Callable[[], tuple[LimitsBook, ASAckMessage]], note: str | None = None
                           ) -> tuple[ASAckMessage, bool]:
        """decide → commit → ack, as :meth:`handle_dr`: ``accepted`` only once committed; a redelivery
        gets its first answer again. Returns (ack, whether it is new and accepted). Call with the lock.
        A stale revision is counted (``as_stale``); ``note`` (why the sender sent it) goes into the
        audit record with the message and the ack."""
        repeat = self.book.answered_as(message)
        if repeat is not None:
            self.counters["as_duplicates"] = self.counters.get("as_duplicates", 0) + 1
            self._publish("out/as/ack", repeat.model_dump(mode="json"))
            return repeat, False
        trial, ack = decide()
        try:
            self._commit_book(trial)
        except Exception as exc:  # noqa: BLE001 - StoreUnavailable, or any failure to persist
            self._state_failed(exc)
            if ack.status == "accepted":
                ack = ack.model_copy(update={"status": "rejected", "reason": f"{STORE_UNAVAILABLE}: {exc}"})
        else:
            self.book.adopt(trial)
        counter = "as_accepted" if ack.status == "accepted" else "as_rejected"
        self.counters[counter] = self.counters.get(counter, 0) + 1
        if ack.status != "accepted" and not (ack.reason or "").startswith(STORE_UNAVAILABLE):
            # A refusal by the book (wrong issuer, above qualification, already ended, deployed_kw 0)
            # is a bad input too: counted with the input rejections (hashflex_input_rejections_total)
            # by the field its reason names (newcomer finding 12), as out-of-bounds commands are, and
            # under the one name the MQTT ingest gives it in /status (refused:<field>, H1 finding 7).
            self._count_refusal(message.kind, ack.reason)
        if ack.status != "accepted" and (ack.reason or "").endswith(STALE):
            self.counters["as_stale"] = self.counters.get("as_stale", 0) + 1
            log.warning("AS %s %s refused: %s", message.kind, message.key, ack.reason)
        self._publish("out/as/ack", ack.model_dump(mode="json"))
        self._record(message.kind, lambda: {"message": message.model_dump(mode="json"),
                                            "ack": ack.model_dump(mode="json"), **({"note": note} if note else {})},
                     now)
        return ack, ack.status == "accepted"

    def _implausible(self, message: Any, now: datetime) -> str | None:
        """The reason a command is out of the plausibility bounds (``hashflex.plausibility``, the
        same table the MQTT ingest applies to observations), or None. Every path that hands the loop
        a command — MQTT, the dashboard's limits API, OpenADR — is checked here alike."""
        rejection = check_plausible(message, now, self._plausibility)
        if rejection is None:
            return None
        # Counted with the ingest's rejections (hashflex_input_rejections_total) and kept in the store's
        # rejections table, as any input out of bounds is (a newcomer found these missing from both).
        # Counted as refused:<field> (refusal_rule), the name the MQTT ingest gives the same refusal in
        # /status inputs_refused (H1 finding 7: /metrics said future:issued_at there); the bound's class
        # (rejection.rule, e.g. future:issued_at) stays in the reason's words ("beyond the ... window").
        kind = rejection.kind or getattr(message, "kind", "command")
        self._count_refusal(kind, rejection.reason)
        if self.store is not None:
            try:
                self.store.put_rejection(rejection, received_at=now)
            except Exception:  # a failing store must not stop the refusal
                log.exception("could not store a rejection")
        return rejection.reason

    def _count_refusal(self, kind: str, reason: str | None) -> None:
        """Count one refused command in ``command_rejections`` (``/metrics``
        ``hashflex_input_rejections_total{kind,reason}``) under :func:`refusal_rule` of its reason:
        ``refused:<field>``, as the MQTT ingest counts the same answer (``/status`` ``inputs_refused``)."""
        label = refusal_rule(reason, kind)
        by_rule = self.command_rejections.setdefault(kind, {})
        by_rule[label] = by_rule.get(label, 0) + 1

    def _refuse_as(self, message: Any, kind: str, message_id: str, now: datetime) -> ASAckMessage | None:
        """Refuse an award or deployment out of the plausibility bounds, or None when within them:
        acked ``rejected`` on ``out/as/ack``, counted (``as_rejected``, ``command_rejections``) and
        audited like the book's refusals (an ``as_award``/``as_deploy`` record with the message and
        the ack; H1 finding 1: a stale deployment's refusal was in no record)."""
        with self._lock:
            implausible = self._implausible(message, now)
            if implausible is None:
                return None
            ack = ASAckMessage(message_id=message_id, kind=kind, status="rejected", reason=implausible[:500],
                               acked_at=now)
            self.counters["as_rejected"] = self.counters.get("as_rejected", 0) + 1
            log.warning("AS %s %s refused: %s", kind, message_id, ack.reason)
            self._publish("out/as/ack", ack.model_dump(mode="json"))
            self._record(kind, lambda: {"message": message.model_dump(mode="json"), "ack": ack.model_dump(mode="json"),
                                        "stage": "plausibility"}, now)
        return ack

    def _refused_on_intake(self, message: ASDeployMessage, reason: str, now: datetime
                           ) -> tuple[LimitsBook, ASAckMessage]:
        """The book unchanged but for the remembered answer (a redelivery gets it again) and the
        ``rejected`` ack of :func:`deploy_intake_refusal`; for :meth:`_decide_commit_ack`."""
        trial = self.book.copy()
        ack = ASAckMessage(message_id=message.deployment_id, kind="as_deploy", status="rejected",
                           reason=reason[:500], acked_at=now)
        trial._remember(trial.as_key(message), ack.model_dump(mode="json"))
        return trial, ack

    def handle_as_award(self, message: ASAwardMessage, now: datetime, *, via: str | None = None,
                        note: str | None = None) -> ASAckMessage:
        """An AS award from the QSE: decide, commit, acknowledge on ``out/as/ack``, re-plan so the
        plan holds the awarded reserve as a minimum running load.

        Parameters
        ----------
        message : ASAwardMessage
            The award (or its change, or its withdrawal: ``reserve_kw`` 0).
        now : datetime
            The decision time, UTC.
        via : str, optional
            The path it came by (``"openadr"``; None: MQTT), kept with the award in the book.
        note : str, optional
            Why it was sent (e.g. the OpenADR event was deleted), into the audit record.

        Returns
        -------
        ASAckMessage
            Accepted only once committed; a redelivery gets its first answer. A change (withdrawal,
            cut, shorter window) that leaves a deployment above the award is accepted and flagged:
            ``above_award_kw`` and ``awarded_kw`` in the ack, its reason, ``as_above_award`` counted;
            the deployment's limit stays (the instruction is obeyed in full).
        """
        refused = self._refuse_as(message, "as_award", message.award_id, now)
        if refused is not None:
            return refused
        with self._lock:
            ack, fresh = self._decide_commit_ack(message, now, lambda: self.book.decide_as_award(message, now, via),
                                                 note)
            if fresh and (ack.above_award_kw or 0.0) > 0:  # a change left a deployment above the award (finding 4)
                self.counters["as_above_award"] = self.counters.get("as_above_award", 0) + 1
                log.warning("AS award %s changed: %s", message.award_id, ack.reason)
        if fresh:
            self.request_replan(f"AS award {message.award_id}")
        return ack

    def handle_as_deploy(self, message: ASDeployMessage, now: datetime, *, via: str | None = None,
                         note: str | None = None) -> ASAckMessage:
        """An AS deployment: an import limit of (modelled import now − deployed_kw) in the book,
        committed, acknowledged, and cut at once by the fast path (every product: RRS must be, and
        acting now meets any later deadline). What the cut achieves is measured against the
        obligation (:attr:`as_performance`: shortfall when the cut cannot reach the limit); a
        store failure holds the cut anyway (when in doubt, curtail) while the ack says rejected.

        The same id with a higher ``revision`` amends it (measured from the first baseline, against
        the amended obligation from the amendment's time; :mod:`hashflex.control.ancillary`); a
        recall ends it (its performance record says when and why).

        Parameters
        ----------
        message : ASDeployMessage
            The deployment, its amendment or its recall.
        now : datetime
            The decision time, UTC.
        via : str, optional
            The path it came by (``"openadr"``; None: MQTT), kept with the deployment in the book.
        note : str, optional
            Why it was sent (e.g. the OpenADR event was deleted), into the audit record (and, for a
            recall, into the performance record as ``end_reason``).

        Returns
        -------
        ASAckMessage
            Accepted only once committed (with the import limit, kW, and deadline); a redelivery
            gets its first answer. ``rejected`` (nothing cut, no limit), naming the field: out of the
            plausibility bounds (``issued_at`` beyond the clock skew, or as old as the backstop
            ``ancillary.max_hold_h``: its hold was already over; ``deployed_kw`` beyond the site's
            scale), :func:`deploy_intake_refusal` (a recall of another ``product``; ``deployed_kw``
            above the product's qualification), or the limits book's rules.
        """
        refused = self._refuse_as(message, "as_deploy", message.deployment_id, now)
        if refused is not None:
            return refused
        with self._lock:
            held = self.book.as_deployments.get(message.deployment_id)  # an amendment's deployment in force
            intake_refusal = deploy_intake_refusal(
                self.profile, held, message, [d for d in self.book.as_deployments.values() if d.in_force(now)])
            if intake_refusal is not None:  # a recall of another product, above the qualification alone or summed (H1; finding 4)
                ack, _ = self._decide_commit_ack(
                    message, now, lambda: self._refused_on_intake(message, intake_refusal, now), note)
                return ack
            asks_more = message.recalled or has_deadline(held, message, now)  # fewer MW cannot be late
            # A recall that overtook this deployment (kept in the book until it arrives), issue 15.
            early = None if held is not None else self.book.as_early_recalls.get(message.deployment_id)
            decided_deployment: dict[str, ASDeployment | None] = {}
            batch = self.fleet.as_setpoints(now, self.expiry_s)
            renewable_kw = self.measurements.renewable_kw or 0.0  # the import, as the cut models it
            modelled_kw = self.guard.net_import_kw(batch, self.measurements.auxiliary_kw, renewable_kw)
            # the lower of the model and the latest metered import, fresh or stale (issue 15, H2 finding 5)
            latest = getattr(self, "_latest_measured_import", None)
            evidence = None if latest is None else (latest[0], (now - latest[1]).total_seconds(), latest[2])
            baseline_kw, baseline_source = instruction_baseline(modelled_kw, evidence, self.guard.max_age_s,
                                                                self.guard.future_skew_s)
            flags: dict[str, Any] = {}

            def decide() -> tuple[LimitsBook, ASAckMessage]:
                trial, decided = self.book.decide_as_deploy(message, baseline_kw, now, via,
                                                            baseline_source=baseline_source)
                decided_deployment["in_trial"] = trial.as_deployments.get(message.deployment_id)
                if decided.status != "accepted" or message.recalled or decided.deadline is None:
                    return trial, decided
                flags.update(deployment_flags(trial, message, decided.deadline, now, asks_more))
                decided = _flagged_ack(decided, message, flags)
                trial._remember(trial.as_key(message), decided.model_dump(mode="json"))  # a redelivery gets the flags too
                return trial, decided

            ack, fresh = self._decide_commit_ack(message, now, decide, note)
            in_trial = decided_deployment.get("in_trial")
            if message.recalled:
                if fresh and held is None:  # accepted as pending (durable): counted, the ack is in the trail
                    self.counters["as_recall_early"] = self.counters.get("as_recall_early", 0) + 1
                    log.warning("AS recall of %s received before its deployment: kept until it arrives",
                                message.deployment_id)
                elif fresh:
                    self._deployment_ended(message, now, note or "recalled")
            elif early is not None and in_trial is not None and in_trial.recalled and in_trial.end <= now:
                # Ended by the recall that overtook it, before it arrived: nothing to cut (a failed
                # commit refuses it and the durable pending recall still ends it when resent).
                if fresh:
                    self._early_recall_applied(message, in_trial, early, now)
            elif fresh or (ack.status == "rejected" and (ack.reason or "").startswith(STORE_UNAVAILABLE)):
                if held is not None and held.end > now:
                    baseline_kw = held.baseline_kw  # an amendment: the obligation counts from the first load
                limit = max(baseline_kw - message.deployed_kw, 0.0)
                if fresh and ack.import_limit_kw is not None:  # the book's enforced limit, as acked (H2 finding 2)
                    limit = ack.import_limit_kw
                if not fresh:  # accepted but not durable: hold the cut in memory all the same
                    section = self.profile.ancillary
                    backstop = timedelta(hours=section.max_hold_h if section is not None else DEFAULT_MAX_HOLD_H)
                    end = held.end if held is not None and held.end > now else message.issued_at + backstop
                    key = f"AS:{message.deployment_id}"
                    previous = self.book.holds.get(key)
                    if previous is None or limit < previous.limit_kw:  # a hold only ever tightens
                        self.book.holds[key] = Hold(key, limit, min(message.issued_at, now), end)
                self._cut_to_limit_now(now, f"AS {message.product} deployment {message.deployment_id}")
                after = self.guard.net_import_kw(self.fleet.as_setpoints(now, self.expiry_s),
                                                 self.measurements.auxiliary_kw, renewable_kw)
                performance = deployment_performance(message, baseline_kw, limit, after, now, ack.deadline,
                                                     held.deployed_kw if held is not None and held.end > now else None,
                                                     asks_more)
                if held is None or held.end <= now:  # a first instruction: which load it sheds from
                    performance.update(baseline_source=baseline_source, modelled_baseline_kw=modelled_kw)
                in_book = self.book.as_deployments.get(message.deployment_id)
                if fresh and in_book is not None:  # what it carried when instructed, its stacking, how long it holds
                    performance.update(awarded_at_instruction_kw=in_book.awarded_at_instruction_kw,
                                       held_at_instruction_kw=in_book.held_at_instruction_kw,
                                       sustain_until=in_book.sustain_until.isoformat(),
                                       release_at=in_book.end.isoformat())
                if fresh and early is not None and in_book is not None:
                    if in_book.recalled:  # a recall dated ahead: ends it later, it binds until then
                        self.counters["as_recall_early_ended"] = self.counters.get("as_recall_early_ended", 0) + 1
                        performance.update(ended_at=in_book.end.isoformat(),
                                           end_reason=f"recalled before it arrived (recall received at "
                                                      f"{early['received_at']})")
                    elif early.get("product", message.product) != message.product:  # not its recall (H1 finding 3)
                        performance.update(early_recall_other_product={"product": early["product"],
                                                                       "recalls_at": early["recalls_at"],
                                                                       "received_at": early["received_at"]})
                    else:  # the recall was older than this instruction: it holds
                        self.counters["as_recall_early_older"] = self.counters.get("as_recall_early_older", 0) + 1
                        performance.update(early_recall_older={"recalls_at": early["recalls_at"],
                                                               "received_at": early["received_at"]})
                if flags:  # late / above the award (issue 15): counted, and in the record the evidence report reads
                    self._count_flags(message, flags)
                    award_limit_kw = max(baseline_kw - flags["award_obligation_kw"], 0.0)
                    performance.update({**flags, "award_limit_kw": award_limit_kw,
                                        "award_shortfall_kw": max(after - award_limit_kw, 0.0),
                                        "measured_award_shortfall_kw": None})
                self.as_performance[message.deployment_id] = performance
                self._record("as_performance", lambda: dict(self.as_performance[message.deployment_id]), now)
        if fresh:
            self.request_replan(f"AS deployment {message.deployment_id}")
        return ack

    def note_measured_import(self, import_kw: float, measured_at: datetime, source: str) -> None:
        """Keep the latest measured site import (a site meter reading, or the miners' telemetry
        summed when there is no meter), the load an AS deployment sheds from when it is fresh and
        below the model (:func:`hashflex.control.ancillary.instruction_baseline`).

        Parameters
        ----------
        import_kw : float
            The measured import, kW (net of on-site renewables).
        measured_at : datetime
            When it was measured, timezone-aware.
        source : str
            ``"site meter"`` or ``"miner telemetry"``, named in the deployment's ack.
        """
        self._latest_measured_import = (float(import_kw), measured_at, source)

    def _count_flags(self, message: ASDeployMessage, flags: dict[str, Any]) -> None:
        """Count a new deployment that arrived late (``as_late``) or asks more than the award
        (``as_above_award``): ``hashflex_events_total{counter=...}`` in /metrics. Call with the lock."""
        for counter, hit in (("as_late", flags["late"]), ("as_above_award", flags["above_award_kw"] > 0)):
            if hit:
                self.counters[counter] = self.counters.get(counter, 0) + 1
                log.warning("AS %s deployment %s: %s", message.product, message.deployment_id,
                            "arrived after its deadline" if counter == "as_late" else
                            f"{flags['above_award_kw']:.0f} kW above the {flags['awarded_kw']:.0f} kW awarded")

    def _early_recall_applied(self, message: ASDeployMessage, deployment: ASDeployment, early: dict[str, Any],
                              now: datetime) -> None:
        """A deployment arrived that a recall received before it had already ended (issue 15): counted
        (``as_recall_early_ended``), logged and audited as an ``as_performance`` record with
        ``ended_at`` (the recall's time, or its binding time if the recall preceded it: cancelled)
        and ``end_reason``; nothing is cut. Call with the lock."""
        self.counters["as_recall_early_ended"] = self.counters.get("as_recall_early_ended", 0) + 1
        cancelled = deployment.end == deployment.binds_from
        log.warning("AS %s deployment %s arrived after its recall (at %s): %s", message.product,
                    message.deployment_id, deployment.end.isoformat(), "cancelled" if cancelled else "ended")
        self.as_performance[message.deployment_id] = performance = {
            "deployment_id": message.deployment_id, "product": message.product, "revision": message.revision,
            "issued_at": message.issued_at.isoformat(), "deadline": deployment.deadline.isoformat(),
            "received_at": now.isoformat(), "obligation_kw": float(message.deployed_kw),
            "baseline_kw": deployment.baseline_kw, "limit_kw": deployment.limit_kw,
            "ended_at": deployment.end.isoformat(), "cancelled": cancelled, "ended_before_arrival": True,
            "end_reason": (f"recalled before it arrived (recall at {deployment.end.isoformat()}, received at "
                           f"{early['received_at']})"),
            "measured_import_kw": None, "measured_shortfall_kw": None, "measured_response_s": None,
            "measured_within_deadline": None}
        self._record("as_performance", lambda: dict(performance), now)

    def _deployment_ended(self, recall: ASDeployMessage, now: datetime, reason: str) -> None:
        """A recall was accepted: its performance record says when and why it ended (audited)."""
        performance = self.as_performance.get(recall.deployment_id)
        if performance is None:
            return
        held = self.book.as_deployments.get(recall.deployment_id)
        performance["ended_at"] = (recall.issued_at if held is None else held.end).isoformat()
        performance["end_reason"] = reason
        self._record("as_performance", lambda: dict(performance), now)

    def _record_transitions(self, now: datetime) -> None:
        """The loop's transitions (:meth:`LoopStatusMixin._record_transitions`: DR, expired limits),
        then the AS deployments' (:meth:`_as_deployment_transitions`). Extends the loop's method
        through the mixin order (``ControlLoop`` lists this mixin before ``LoopStatusMixin``), so the
        tick and a restart's :meth:`restore` both run it."""
        super()._record_transitions(now)  # type: ignore[misc]
        self._as_deployment_transitions(now)

    def _as_deployment_transitions(self, now: datetime) -> None:
        """Flag each deployment held past its product's sustained duration without a recall
        (``overrun``) and record each the backstop released (``released``), once each (issue 15,
        third newcomer review, finding 3; the rule: :mod:`hashflex.control.ancillary`).

        Each is an ``as_performance`` audit record (the deployment's performance record, or its book
        entry after a restart, with ``event``, ``overrun``, ``sustain_until``, ``release_at``; a
        release adds ``ended_at`` and ``end_reason``), a ``hashflex_events_total`` counter
        (``as_overrun``, ``as_released``) and a warning. The book remembers what was recorded
        (``overrun_recorded``, ``released_recorded``) and is committed, so a restart does not record
        it again; a failed commit is shown as any state failure (the record may then repeat after a
        restart, never be lost).

        Parameters
        ----------
        now : datetime
            The tick's time, timezone-aware.
        """
        events: list[tuple[str, ASDeployment]] = []
        with self._lock:
            for deployment in list(self.book.as_deployments.values()):
                if deployment.recalled:
                    continue
                marks: dict[str, bool] = {}
                if not deployment.overrun_recorded and deployment.sustain_until <= now and deployment.end > deployment.sustain_until:
                    events.append(("overrun", deployment))
                    marks["overrun_recorded"] = True
                if not deployment.released_recorded and deployment.end <= now:
                    events.append(("released", deployment))
                    marks["released_recorded"] = True
                if marks:
                    self.book.as_deployments[deployment.deployment_id] = dataclasses.replace(deployment, **marks)
            if not events:
                return
            try:
                self._commit_book(self.book)
            except Exception as exc:  # noqa: BLE001 - StoreUnavailable, or any failure to persist
                self._state_failed(exc)
            for event, deployment in events:
                self._record_deployment_event(event, deployment, now)

    def _record_deployment_event(self, event: str, deployment: ASDeployment, now: datetime) -> None:
        """Count, log and audit one ``overrun`` or ``released`` deployment (call with the lock)."""
        counter = "as_overrun" if event == "overrun" else "as_released"
        self.counters[counter] = self.counters.get(counter, 0) + 1
        sustain_h = (deployment.sustain_until - deployment.issued_at).total_seconds() / 3600.0
        hold_h = (deployment.end - deployment.issued_at).total_seconds() / 3600.0
        if event == "overrun":
            log.warning("AS %s deployment %s: held past its sustained duration (%g h) without a recall; holding "
                        "until recalled or the backstop at %s", deployment.product, deployment.deployment_id,
                        sustain_h, deployment.end.isoformat())
        else:
            log.warning("AS %s deployment %s: no recall within max_hold_h (%g h): released at %s",
                        deployment.product, deployment.deployment_id, hold_h, deployment.end.isoformat())
        performance = self.as_performance.setdefault(deployment.deployment_id, {
            "deployment_id": deployment.deployment_id, "product": deployment.product,
            "revision": deployment.revision, "issued_at": deployment.issued_at.isoformat(),
            "obligation_kw": deployment.deployed_kw, "baseline_kw": deployment.baseline_kw,
            "limit_kw": deployment.limit_kw, "deadline": deployment.deadline.isoformat()})
        performance.update(overrun=True, sustain_until=deployment.sustain_until.isoformat(),
                           release_at=deployment.end.isoformat())
        if event == "released":
            performance.update(ended_at=deployment.end.isoformat(),
                               end_reason=f"backstop: no recall within ancillary.max_hold_h ({hold_h:g} h)")
        record = {**performance, "event": event}  # the event is this record's, not the deployment's state
        self._record("as_performance", lambda: record, now)

    def measure_as_deployments(self, import_kw: float, measured_at: datetime) -> None:
        """A measured site import (meter, or telemetry summed): the first reading at or under a
        deployment's limit is its response time; the shortfall is what the last reading before the
        deadline is still over the limit."""
        responded: list[dict[str, Any]] = []
        with self._lock:
            for performance in self.as_performance.values():
                issued = datetime.fromisoformat(performance["issued_at"])
                deadline = datetime.fromisoformat(performance["deadline"])
                if measured_at < issued or performance.get("ended_before_arrival"):
                    continue  # not yet instructed, or recalled before it reached the site: nothing to meet
                # A late deployment (it arrived after its deadline) is assessed on the first reading
                # at or after its arrival, the earliest the site could have acted on it.
                late_first = ((performance.get("late") or performance.get("binds_from_receipt"))
                              and performance.get("measured_import_kw") is None
                              and measured_at >= datetime.fromisoformat(performance["received_at"]))
                if measured_at <= deadline or late_first:
                    performance["measured_import_kw"] = import_kw
                    performance["measured_shortfall_kw"] = max(import_kw - performance["limit_kw"], 0.0)
                    if "award_limit_kw" in performance:
                        performance["measured_award_shortfall_kw"] = max(import_kw - performance["award_limit_kw"], 0.0)
                if import_kw <= performance["limit_kw"] + 1e-6 and performance.get("measured_response_s") is None:
                    performance["measured_response_s"] = (measured_at - issued).total_seconds()
                    performance["measured_within_deadline"] = (bool(performance.get("binds_from_receipt"))
                                                               or measured_at <= deadline)
                    responded.append(dict(performance))
        for performance in responded:  # the measured response goes into the trail (evidence reports read it)
            self._record("as_performance", lambda p=performance: p, measured_at)

    def reload_profile(self, profile: SiteProfile, now: datetime) -> str:
        """Swap in an edited profile (SIGHUP). Limits, caps and economics may change at runtime; the
        fleet itself (groups, units) may not, since miners are addressed by it: that needs a restart."""
        fleet_shape = lambda p: [(g.id, g.units) for g in p.miner_groups]
        if fleet_shape(profile) != fleet_shape(self.profile):
            return "refused: miner groups or unit counts changed; restart the daemon to re-address the fleet"
        with self._lock:
            self.profile = profile
            self.book.profile = profile
            self.guard = Guard(profile)
            self._plausibility = PlausibilityContext.from_profile(profile)
            self._record("config", lambda: self._config_payload("change"), now)
        self.request_replan("profile reloaded")
        return "reloaded"
