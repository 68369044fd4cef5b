"""The VEN's ancillary-service intake (issue 15): events of the QSE's programs become AS awards and
deployments, handed to the control loop's own handlers (``loop.handle_as_award``,
``loop.handle_as_deploy``: decide → commit to the limits book → ack on ``out/as/ack`` → the fast
path cuts a deployment at once). A mixin of :class:`hashflex.openadr.ven.VEN`; the mapping rules
and their clauses are in :mod:`hashflex.openadr.ancillary`.

Which programs: ``VENConfig.as_program_names`` (env ``HASHFLEX_OPENADR_AS_PROGRAMS``) — and, once the
site profile has it, ``ancillary.openadr_programs``, which then decides (a VEN configured with other
names refuses to start). The messages carry ``issuer = profile.ancillary.issuer`` (the QSE), which
the loop checks as for MQTT; a VEN given AS programs for a profile without an ``ancillary`` section
refuses to start (every award would be refused).

Lifecycle, per event (isolated like DR events: one bad event never stops the others):

- awards are sent when the event (or its change) is read; an unchanged award is not sent again; a
  changed one goes with a higher revision; a withdrawn one (interval gone, event cancelled or
  deleted) goes with ``reserve_kw`` 0. After a restart an award the limits book already holds with
  the same terms is not sent again.
- deployments are sent by :meth:`AncillaryMixin.dispatch_as` (every VEN tick) once their start has
  come, and recalled at their interval's end, on cancellation or deletion.
- amendments: the VTN modifies an event (3.0.1 ``PUT /events/{eventID}``, a new
  ``modificationDateTime``; OpenADR 3 has no modification counter on the event object, so the
  version is ``modification_number(modificationDateTime)``, :func:`.ven_events.event_version`).
  A deployment in force whose MW changed is sent again under its id with that number as its
  ``revision``: the limits book amends it (``control.ancillary.amended_deployment``), the ack and
  the audit record say so, and its performance is measured against the amended obligation. A new
  end recalls it then; a start moved once it is in force changes nothing (the obligation started).
- stale versions: a version whose ``modificationDateTime`` is older than the one held (a lagging
  VTN replica or cache; a notification overtaken by a poll) changes nothing; it is refused with
  the reason (``as_stale``), and what it would change is sent under its older revision so the
  site refuses it as stale too (counted by the loop: ``hashflex_events_total{counter="as_stale"}``).
- deletions: an event the VTN deletes (notification, or gone from a *complete* listing) withdraws
  its awards and recalls its deployments, with the reason in the audit record; after a restart,
  awards and deployments the limits book holds from this VEN (``via`` ``"openadr"``) for events
  the first complete listing no longer has are withdrawn and recalled (:meth:`reconcile_as`),
  while those still listed are adopted from the book (amended if the event changed while the VEN
  was down, never deployed twice). A failed or partial poll deletes nothing.
- late and oversized deployments: the site accepts, cuts and flags them (``ASAckMessage.late``,
  ``above_award_kw``); the VEN counts the flags too (``as_late``, ``as_above_award``). A deployment
  whose whole interval was over before the VEN read it is never sent (nothing left to shed) but is
  counted (``as_missed``), kept in ``rejections`` and audited (``openadr_rejected``).
- what the site refuses (its ack) is counted (``as_refused``), kept in ``rejections`` and audited;
  the acks are kept in ``as_acks``. Reports asked in the event's ``reportDescriptors`` (the measured
  import over its intervals: the delivered response) follow the DR report path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hashflex.messages import ASAckMessage, ASAwardMessage, ASDeployMessage
from hashflex.openadr.ancillary import MappedASEvent, PlannedDeployment, map_as_event, recall_message
from hashflex.openadr.mapping import ResolvedInterval, message_base
from hashflex.openadr.ven_events import EventVersion, event_version

__all__ = ["AncillaryMixin"]

log = logging.getLogger(__name__)


@dataclass
class _ASTracked:
    """One event of an AS program as last read, and what the site accepted for it."""

    raw: dict[str, Any]
    program_id: str
    fingerprint: str
    number: int  # the version's revision (EventVersion.number)
    product: str | None = None
    intervals: list[ResolvedInterval] = field(default_factory=list)
    awards: dict[str, ASAwardMessage] = field(default_factory=dict)  # accepted, by award id
    planned: dict[str, PlannedDeployment] = field(default_factory=dict)  # what the event asks now
    deployed: dict[str, ASDeployMessage] = field(default_factory=dict)  # accepted and not recalled
    done: set[str] = field(default_factory=set)  # recalled, refused or over: never sent again
    tried: dict[str, float] = field(default_factory=dict)  # amendments refused, by id: kW (not sent again)
    end_reason: str | None = None  # why the event's deployments are recalled (deleted, no longer targeted)
    unreadable: frozenset[str] = frozenset()  # message ids of intervals refused this time (keep what they asked)


def as_programs(config: Any, loop: Any) -> tuple[frozenset[str], str | None]:
    """The AS programs (by ``programName``) and the QSE issuer for a VEN.

    Parameters
    ----------
    config : VENConfig
        Its ``as_program_names``.
    loop : ControlLoop
        Its ``profile.ancillary`` (``issuer``; ``openadr_programs`` when the profile has that field).

    Returns
    -------
    (frozenset of str, str or None)
        Program names and ``profile.ancillary.issuer`` (None without an ancillary section).

    Raises
    ------
    ValueError
        AS programs configured for a profile without an ``ancillary`` section, or names that differ
        from the profile's ``ancillary.openadr_programs``.
    """
    section = getattr(getattr(loop, "profile", None), "ancillary", None)
    names = frozenset(config.as_program_names)
    in_profile = getattr(section, "openadr_programs", None)
    if in_profile is not None:
        if names and names != frozenset(in_profile):
            raise ValueError(f"as_program_names {sorted(names)}: differ from the profile's "
                             f"ancillary.openadr_programs {sorted(in_profile)}")
        names = frozenset(in_profile)
    if names and section is None:
        raise ValueError(f"as_program_names {sorted(names)}: the site profile has no ancillary section, so every "
                         "award and deployment would be refused")
    overlap = names & frozenset(config.program_names or ())
    if overlap:
        log.info("OpenADR programs %s are AS programs: their events are awards and deployments, not DR",
                 sorted(overlap))
    return names, (section.issuer if section is not None else None)


class AncillaryMixin:
    """AS intake of :class:`~hashflex.openadr.ven.VEN` (``process_as_event``, ``dispatch_as``,
    ``cancel_as_event``)."""

    def is_as_program(self, program_id: str) -> bool:
        """True when ``program_id`` is an enrolled program named in the AS programs.

        Parameters
        ----------
        program_id : str
            The VTN's program id.

        Returns
        -------
        bool
        """
        program = self.enrolment.programs.get(program_id) if self.enrolment is not None else None
        return isinstance(program, dict) and program.get("programName") in self.as_program_names

    def process_as_event(self, event: dict[str, Any], now: datetime) -> int:
        """Map one (validated) event of an AS program and send what changed to the loop.

        Parameters
        ----------
        event : dict
            The event as the VTN returns it; its program is enrolled and an AS program.
        now : datetime
            Current time, UTC.

        Returns
        -------
        int
            Messages sent to the loop (awards, withdrawals, deployments, recalls).
        """
        event_id, program_id = str(event["id"]), str(event["programID"])
        held = self._as_events.get(event_id)
        version = event_version(event, held)
        if version is None:
            return 0
        self.counters["events_seen"] += 1
        assert self.issuer_as is not None  # as_programs() refused to start otherwise
        mapped = map_as_event(event, now, program=self.enrolment.programs.get(program_id), issuer=self.issuer_as,
                              horizon=self.config.horizon, modification=version.raw if version.stale else version.number)
        if version.stale and held is not None:
            return self._refuse_stale(event, held, version, mapped, now)
        if mapped.rejected is not None:
            self._reject("event", event_id, mapped.rejected, now)
            return 0  # a version held before stays in force
        tracked = _ASTracked(dict(event), program_id, version.fingerprint, version.number, mapped.product)
        if held is not None:
            tracked.awards, tracked.deployed, tracked.done = held.awards, held.deployed, held.done
            tracked.tried = held.tried
        self._as_events[event_id] = tracked
        self._note_mapping(event_id, mapped, now)
        tracked.unreadable = _interval_bases(event_id, mapped)
        sent = self._apply_awards(tracked, mapped, now)
        tracked.intervals = mapped.intervals
        tracked.planned = {d.deployment_id: d for d in mapped.deployments}
        if mapped.cancelled:
            tracked.planned = {}
            tracked.end_reason = f"OpenADR event {event_id} cancelled (UG 7.9)"
        self._adopt_deployments(tracked, now)
        sent += self._dispatch(tracked, now, rejected=_interval_bases(event_id, mapped))
        self._plan_reports(event, mapped.intervals, now)
        return sent

    def _refuse_stale(self, event: dict[str, Any], held: _ASTracked, version: EventVersion, mapped: MappedASEvent,
                      now: datetime) -> int:
        """An older version of an event held: refused (the version held stays in force). What it
        would change is sent under its older revision, so the site refuses it as stale and counts it."""
        event_id = str(event["id"])
        self._reject("event", event_id, f"stale: modificationDateTime {event.get('modificationDateTime')!r} is older "
                     f"than the version held ({held.raw.get('modificationDateTime')!r}); the version held stays in "
                     "force", now, "as_stale")
        if mapped.rejected is not None:
            return 0
        sent = 0
        for plan in mapped.deployments:
            message = held.deployed.get(plan.deployment_id)
            if message is not None and abs(plan.deployed_kw - message.deployed_kw) > 1e-9:
                older = message.model_copy(update={"revision": version.raw, "deployed_kw": plan.deployed_kw,
                                                   "issued_at": now})
                self.as_acks.append(self.loop.handle_as_deploy(older, now, via="openadr",
                                                               note=f"OpenADR event {event_id}: stale version"))
                sent += 1
        for award in mapped.awards:
            before = held.awards.get(award.award_id)
            if before is not None and not _same_award(before, award):
                self.as_acks.append(self.loop.handle_as_award(award, now, via="openadr",
                                                              note=f"OpenADR event {event_id}: stale version"))
                sent += 1
        return sent

    def _adopt_deployments(self, tracked: _ASTracked, now: datetime) -> None:
        """Deployments the limits book already holds under a planned id (sent before a restart) are
        tracked as sent: amended if their MW changed, recalled when they end, never deployed twice."""
        book = getattr(getattr(self.loop, "book", None), "as_deployments", {})
        for deployment_id in tracked.planned:
            held = book.get(deployment_id)
            if held is None or deployment_id in tracked.deployed or deployment_id in tracked.done:
                continue
            if held.recalled or held.end <= now:
                tracked.done.add(deployment_id)  # over: nothing to send
                continue
            tracked.deployed[deployment_id] = ASDeployMessage(
                deployment_id=deployment_id, revision=held.revision, product=held.product,
                issued_at=held.amended_at or held.issued_at, deployed_kw=held.deployed_kw, issuer=held.issuer)

    def _note_mapping(self, event_id: str, mapped: MappedASEvent, now: datetime) -> None:
        for reason in mapped.unsupported:
            self.counters["unsupported_payloads"] += 1
            self.unsupported.append(f"event {event_id}: {reason}")
            log.warning("OpenADR AS event %s: %s (ignored)", event_id, reason)
        for reason in mapped.rejected_intervals:
            self._reject("interval", event_id, reason, now, "intervals_rejected")
        for warning in mapped.warnings:
            self.counters["timestamp_warnings"] += 1
            log.warning("OpenADR AS event %s: %s", event_id, warning)

    def _apply_awards(self, tracked: _ASTracked, mapped: MappedASEvent, now: datetime) -> int:
        """Send new and changed awards; withdraw the ones the event no longer asks."""
        sent = 0
        wanted = {a.award_id for a in mapped.awards}
        for award in mapped.awards:
            before = tracked.awards.get(award.award_id) or self._award_in_book(award.award_id)
            if before is not None and _same_award(before, award):
                tracked.awards[award.award_id] = before  # held (also across a restart): nothing to send
                continue
            if before is not None and award.revision <= before.revision:
                award = award.model_copy(update={"revision": before.revision + 1})
            sent += self._send_award(tracked, award, now)
        refused = _interval_bases(str(tracked.raw.get("id")), mapped)
        for award_id, before in list(tracked.awards.items()):
            if award_id in wanted or award_id in refused or before.reserve_kw == 0 or before.end <= now:
                continue  # an interval we could not read this time keeps what it asked before
            note = tracked.end_reason or f"OpenADR event {tracked.raw.get('id')}: interval withdrawn"
            sent += self._send_award(tracked, before.model_copy(update={
                "revision": before.revision + 1, "reserve_kw": 0.0, "price_usd_mw_h": None}), now, note)
        return sent

    def _award_in_book(self, award_id: str) -> ASAwardMessage | None:
        """The award the limits book holds under this id (sent before a restart), or None."""
        held = getattr(getattr(self.loop, "book", None), "as_awards", {}).get(award_id)
        if held is None:
            return None
        return ASAwardMessage.model_validate({k: v for k, v in held.items() if k != "via"})

    def _send_award(self, tracked: _ASTracked, award: ASAwardMessage, now: datetime, note: str | None = None) -> int:
        ack = self.loop.handle_as_award(award, now, via="openadr", note=note)
        self._answered(ack, award.award_id, now)
        self.counters["as_awards"] += 1
        if ack is not None and ack.status == "accepted":
            tracked.awards[award.award_id] = award
        return 1

    def _answered(self, ack: ASAckMessage | None, message_id: str, now: datetime) -> None:
        self.as_acks.append(ack)
        if ack is None or ack.status != "accepted":
            self._reject("as", message_id, f"refused by the site: {getattr(ack, 'reason', 'no answer')}", now,
                         "as_refused")
            return
        # The site's flags on an accepted deployment (issue 15; ``control.as_intake.deployment_flags``):
        # the VEN counts them as the loop does, so a VTN or QSE path that delivers late is visible here.
        if ack.late:
            self.counters["as_late"] = self.counters.get("as_late", 0) + 1
        if ack.above_award_kw:
            self.counters["as_above_award"] = self.counters.get("as_above_award", 0) + 1

    def dispatch_as(self, now: datetime) -> int:
        """Send the deployments whose start has come and recall the ones that are over.

        Parameters
        ----------
        now : datetime
            Current time, UTC (the VEN's tick).

        Returns
        -------
        int
            Deployments and recalls sent to the loop.
        """
        with self._lock:
            return sum(self._dispatch(t, now) for t in list(self._as_events.values()))

    def _dispatch(self, tracked: _ASTracked, now: datetime, rejected: frozenset[str] = frozenset()) -> int:
        assert self.issuer_as is not None
        sent = 0
        event_id = tracked.raw.get("id")
        for deployment_id, message in list(tracked.deployed.items()):
            plan = tracked.planned.get(deployment_id)
            if plan is None and deployment_id in rejected:
                continue  # unreadable this time: keeps what it asked before
            if plan is None or (plan.end is not None and plan.end <= now):
                at = min(plan.end, now) if plan is not None and plan.end is not None else now
                reason = (f"OpenADR event {event_id}: interval ended at {plan.end.isoformat()}"  # type: ignore[union-attr]
                          if plan is not None else tracked.end_reason
                          or f"OpenADR event {event_id}: interval no longer in the event")
                sent += self._send_recall(tracked, message, at, now, reason)
            elif abs(plan.deployed_kw - message.deployed_kw) > 1e-9 and tracked.tried.get(deployment_id) != plan.deployed_kw:
                sent += self._send_amendment(tracked, plan, message, now)
        for deployment_id, plan in tracked.planned.items():
            if deployment_id in tracked.deployed or deployment_id in tracked.done or plan.start > now:
                continue
            tracked.done.add(deployment_id)
            if plan.end is not None and plan.end <= now:
                # Over before the VEN read it: nothing left to shed, but the instruction was missed
                # (late beyond its whole interval): counted and audited, never silent (issue 15).
                self._reject("as", deployment_id, f"deployment {plan.start.isoformat()}–{plan.end.isoformat()} "
                             "was over before the VEN read it: never in force at the site (late)", now, "as_missed")
                continue
            message = plan.deploy_message(self.issuer_as, tracked.number)
            ack = self.loop.handle_as_deploy(message, now, via="openadr")
            self._answered(ack, deployment_id, now)
            self.counters["as_deployments"] += 1
            sent += 1
            if ack is not None and ack.status == "accepted":
                tracked.deployed[deployment_id] = message
        return sent

    def _send_amendment(self, tracked: _ASTracked, plan: PlannedDeployment, message: ASDeployMessage,
                        now: datetime) -> int:
        """The event changed the MW of a deployment in force: the same id, the event's revision — or,
        when that is not above the revision in force (``modificationDateTime`` has whole seconds: an
        event modified in the second it was created, seen first after a restart that adopted the
        deployment from the book), the next one, as `event_version` numbers a same-second change.
        A genuinely older version never gets here (`_refuse_stale`)."""
        amendment = ASDeployMessage(deployment_id=message.deployment_id,
                                    revision=max(tracked.number, message.revision + 1),
                                    product=message.product, issued_at=now, deployed_kw=plan.deployed_kw,
                                    issuer=message.issuer)
        note = (f"OpenADR event {tracked.raw.get('id')} modified (modificationDateTime "
                f"{tracked.raw.get('modificationDateTime')}): {message.deployed_kw:.0f} kW -> {plan.deployed_kw:.0f} kW")
        ack = self.loop.handle_as_deploy(amendment, now, via="openadr", note=note)
        self._answered(ack, message.deployment_id, now)
        self.counters["as_amendments"] = self.counters.get("as_amendments", 0) + 1
        if ack is not None and ack.status == "accepted":
            tracked.deployed[message.deployment_id] = amendment
            tracked.tried.pop(message.deployment_id, None)
        else:
            tracked.tried[message.deployment_id] = plan.deployed_kw  # refused: not sent again for these MW
        return 1

    def _send_recall(self, tracked: _ASTracked, message: ASDeployMessage, at: datetime, now: datetime,
                     reason: str | None = None) -> int:
        recall = recall_message(message.deployment_id, message.product, message.issuer, max(at, message.issued_at))
        ack = self.loop.handle_as_deploy(recall, now, via="openadr", note=reason)
        self._answered(ack, message.deployment_id, now)
        self.counters["as_recalls"] += 1
        tracked.deployed.pop(message.deployment_id, None)
        tracked.done.add(message.deployment_id)
        return 1

    def cancel_as_event(self, event_id: str, now: datetime, reason: str | None = None) -> int:
        """Withdraw every award and recall every deployment of an event (deleted, retargeted away).

        Parameters
        ----------
        event_id : str
            The OpenADR event id.
        now : datetime
            Current time, UTC.
        reason : str, optional
            Why: in the audit records of the withdrawals and recalls.

        Returns
        -------
        int
            Messages sent to the loop.
        """
        with self._lock:
            tracked = self._as_events.pop(event_id, None)
            if tracked is None:
                return 0
            self._plans.pop(event_id, None)
            tracked.end_reason = reason or f"OpenADR event {event_id} cancelled"
            sent = self._apply_awards(tracked, MappedASEvent(event_id, cancelled=True), now)
            tracked.planned = {}
            return sent + self._dispatch(tracked, now)


    def reconcile_as(self, listed_bases: set[str], now: datetime) -> int:
        """After a restart, on the first complete listing: withdraw the awards and recall the
        deployments the limits book holds from this VEN (``via`` ``"openadr"``, this QSE) for events
        the VTN no longer lists (deleted while the VEN was down), or for intervals an event read now
        no longer has (modified while the VEN was down). An interval unreadable this time, or an
        event refused as a whole, keeps what it asked before; a failed or partial poll never gets
        here, so nothing in force is dropped on a VTN's error.

        Parameters
        ----------
        listed_bases : set of str
            ``message_base`` of every event id the complete listing has.
        now : datetime
            Current time, UTC.

        Returns
        -------
        int
            Messages sent to the loop.
        """
        book = getattr(self.loop, "book", None)
        if book is None or self.issuer_as is None:
            return 0
        tracked = {i for t in self._as_events.values() for i in (*t.deployed, *t.awards, *t.done, *t.planned)}
        unreadable = {i for t in self._as_events.values() for i in t.unreadable}
        # An event listed but not tracked (refused as a whole this time) keeps what it asked before.
        read = {message_base(e) for e in self._as_events}

        def gone(message_id: str) -> str | None:
            """Why an award or deployment of this VEN in the book is no longer asked for, or None."""
            base = message_id.rsplit(":", 1)[0]
            if base not in listed_bases:
                return f"OpenADR event {base} is no longer on the VTN (deleted while the VEN was down)"
            if (base in read and message_id not in tracked and message_id not in unreadable
                    and message_id.rsplit(".", 1)[0] not in unreadable):
                return f"OpenADR event {base}: interval no longer in the event (modified while the VEN was down)"
            return None

        sent = 0
        for deployment_id, held in list(book.as_deployments.items()):
            if held.via != "openadr" or held.issuer != self.issuer_as or held.recalled or held.end <= now:
                continue
            reason = gone(deployment_id)
            if reason is None:
                continue
            log.info("OpenADR AS deployment %s: %s, recalled", deployment_id, reason)
            ack = self.loop.handle_as_deploy(recall_message(deployment_id, held.product, held.issuer, now), now,
                                             via="openadr", note=reason)
            self._answered(ack, deployment_id, now)
            self.counters["as_recalls"] += 1
            sent += 1
        for award_id, held_award in list(book.as_awards.items()):
            award = self._award_in_book(award_id)
            if (award is None or held_award.get("via") != "openadr" or award.issuer != self.issuer_as
                    or award.reserve_kw == 0 or award.end <= now):
                continue
            reason = gone(award_id)
            if reason is None:
                continue
            withdrawal = award.model_copy(update={"revision": award.revision + 1, "reserve_kw": 0.0,
                                                  "price_usd_mw_h": None})
            ack = self.loop.handle_as_award(withdrawal, now, via="openadr", note=reason)
            self._answered(ack, award_id, now)
            self.counters["as_awards"] += 1
            sent += 1
        return sent


def _same_award(a: ASAwardMessage, b: ASAwardMessage) -> bool:
    keys = ("product", "start", "end", "reserve_kw", "price_usd_mw_h", "issuer")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def _interval_bases(event_id: str, mapped: MappedASEvent) -> frozenset[str]:
    """Message ids of the intervals refused this time (they keep what they asked before)."""
    heads = {r.split(":", 1)[0].removeprefix("interval ") for r in mapped.rejected_intervals}
    return frozenset(f"{message_base(event_id)}:{h}" for h in heads)
