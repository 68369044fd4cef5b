"""The limits book: everything that limits the site, in one durable place.

What binds the site besides the profile's fixed limits:

- **DR events** accepted by :class:`~hashflex.control.dr.DRBook` (MQTT ``in/dr``, OpenADR 3);
- **site managers' limits** (``in/limits``): an import limit, noise cap overrides and a daily or
  monthly carbon budget, each from an issuer listed in ``profile.site.managers``;
- **4CP windows** from the profile's ``grid.four_cp`` section (ERCOT's Four Coincident Peak
  transmission charge: Nodal Protocols §9.14 / PUCT Subst. R. 25.192; alert days come from the QSE);
- **holds**: a DR event or an import limit that could not be made durable (the store failed) is
  answered ``rejected: store_unavailable`` yet held in memory if it is more restrictive: when in
  doubt, curtail. A hold ends at its own end time, or when a durable message for the same event (or
  the same manager) supersedes it; an open-ended hold stays until then.

This book is the only source of "the limits in force" for the tick (:meth:`import_limits_over`,
:meth:`noise_caps_over`, :meth:`carbon_budget_overrides_kg`), the guard and the fast path
(:meth:`limits_at`), ``/status`` (:meth:`summary`) and a restart (:meth:`to_dict` /
:meth:`from_dict`, committed by :meth:`hashflex.store.Store.commit_state`).

Only accepted transitions change it. Intake is transactional: :meth:`decide_dr` and
:meth:`decide_limits` work on a copy, return the copy with the decision, and the caller commits the
copy's state before swapping it in (:meth:`adopt`) and before saying "accepted". Answers are
idempotent: a message seen before (same issuer, id or time, and byte-identical content) gets the
same answer again — MQTT QoS 1 delivers at least once — except a transient ``store_unavailable``,
which is decided afresh.

Manager limits (per issuer, per part): the latest change from an issuer that carries a part (import,
noise, carbon) replaces that issuer's earlier value of the part; it binds from ``issued_at`` until
``valid_until`` (no expiry when absent); ``clear`` lifts the issuer's own parts it names. A change can only add a constraint: the site is held to
the strictest of the profile and every issuer's value. An interval is held to the strictest value
in force at any moment inside it (a cap window starting at 21:10 binds the 21:00–21:15 interval).

Pure: no I/O, no clock; ``now`` is passed in.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from hashflex.control.ancillary import ASDeployment
from hashflex.control.dr import DRBook, DRDecision, event_limit_kw, source_label
from hashflex.messages import (
    DRAckMessage,
    DREventMessage,
    LimitsChangeMessage,
)
from hashflex.control.limits_ancillary import AncillaryBookMixin
from hashflex.control.limits_binding import BindingMixin
from hashflex.control.limits_values import (  # noqa: F401 - re-exported: the book's public values
    _ANSWERS_KEPT,
    STORE_UNAVAILABLE,
    Hold,
    LimitsAck,
    ManagerLimit,
    content_hash,
    limits_source,
)
from hashflex.profile import SiteProfile

__all__ = ["LimitsAck", "LimitsBook", "ManagerLimit", "STORE_UNAVAILABLE", "content_hash", "limits_source"]


@dataclass
class LimitsBook(AncillaryBookMixin, BindingMixin):
    """DR events, managers' limits and answers given; see the module docstring.

    Parameters
    ----------
    profile : SiteProfile
        The site: ``site.managers``, ``dr``, ``receptors``, ``grid.four_cp``, ``ancillary``.
    dr : DRBook
        The DR events and their lifecycle.
    manager : dict
        ``(issuer, part)`` → the :class:`ManagerLimit` in force.
    answers : collections.OrderedDict
        Message key → the ack JSON given (the last 5,000, oldest forgotten first): idempotent
        answers to redeliveries (MQTT QoS 1 is at-least-once delivery, MQTT v5 §4.3.2).
    holds : dict
        Key → :class:`Hold`, limits held in memory only; never persisted.
    four_cp_alert_days : set of pandas.Timestamp
        The days the QSE announced a 4CP alert (Nodal Protocols §9.14 / PUCT Subst. R. 25.192).
    as_awards : dict
        Award id → the accepted ancillary service award's JSON.
    as_deployments : dict
        Deployment id → the accepted :class:`~hashflex.control.ancillary.ASDeployment`.
    as_early_recalls : dict
        Deployment id → a recall accepted before its deployment arrived (JSON: ``deployment_id``,
        ``product``, ``issuer``, ``recalled_at``, ``received_at``, ``via``), applied when the
        deployment arrives; durable, bounded (:meth:`AncillaryBookMixin.decide_as_deploy`).
    """

    profile: SiteProfile
    dr: DRBook = field(default_factory=DRBook)
    manager: dict[tuple[str, str], ManagerLimit] = field(default_factory=dict)  # (issuer, part) -> limit
    answers: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)  # message key -> ack JSON
    holds: dict[str, Hold] = field(default_factory=dict)  # not durable: never persisted
    four_cp_alert_days: set[pd.Timestamp] = field(default_factory=set)
    # Ancillary services (issue 15, control.ancillary): award id -> the accepted award's JSON, and
    # deployment id -> the accepted deployment (an import limit until recalled or sustained).
    as_awards: dict[str, dict[str, Any]] = field(default_factory=dict)
    as_deployments: dict[str, ASDeployment] = field(default_factory=dict)
    # deployment id -> a recall that overtook its deployment (issue 15), until the deployment arrives.
    as_early_recalls: dict[str, dict[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------------ intake (on a copy)

    def copy(self) -> LimitsBook:
        """An independent copy (queued DR transitions and holds included).

        Returns
        -------
        LimitsBook
            A book sharing only the profile; changing it leaves this one untouched.
        """
        return LimitsBook(self.profile, copy.deepcopy(self.dr), dict(self.manager), OrderedDict(self.answers),
                          dict(self.holds), set(self.four_cp_alert_days), dict(self.as_awards),
                          dict(self.as_deployments), dict(self.as_early_recalls))

    def adopt(self, other: LimitsBook) -> None:
        """Take over ``other``'s state (after it was committed).

        Parameters
        ----------
        other : LimitsBook
            The trial copy returned by a ``decide_*`` method, after ``Store.commit_state`` returned.
        """
        self.dr, self.manager, self.answers = other.dr, other.manager, other.answers
        self.holds, self.four_cp_alert_days = other.holds, other.four_cp_alert_days
        self.as_awards, self.as_deployments = other.as_awards, other.as_deployments
        self.as_early_recalls = other.as_early_recalls

    @staticmethod
    def dr_key(msg: DREventMessage) -> str:
        """The key under which the answer to a DR message is remembered.

        Parameters
        ----------
        msg : DREventMessage
            The message.

        Returns
        -------
        str
            ``dr:<issuer>:<event id>:<modification number>:<content hash>``: equal only for a
            byte-identical redelivery.
        """
        payload = msg.model_dump(mode="json")
        return f"dr:{msg.issuer}:{msg.event_id}:{msg.modification_number}:{content_hash(payload)}"

    def answered_dr(self, msg: DREventMessage) -> DRAckMessage | None:
        """The ack already given to this very message (a redelivery), or None.

        Parameters
        ----------
        msg : DREventMessage
            The message.

        Returns
        -------
        DRAckMessage or None
            The remembered ack, or None for a message not answered before.
        """
        held = self.answers.get(self.dr_key(msg))
        return None if held is None else DRAckMessage.model_validate(held)

    def decide_dr(self, msg: DREventMessage, now: datetime) -> tuple[LimitsBook, DRDecision, DRAckMessage]:
        """Decide one DR message on a copy of the book. Returns (the copy with the decision applied,
        the decision, the ack to send once the copy is committed). The original is untouched.

        The acceptance rules are :meth:`DRBook.apply`'s; an accepted message ends the hold of the
        same event.

        Parameters
        ----------
        msg : DREventMessage
            The message.
        now : datetime
            The decision time, timezone-aware.

        Returns
        -------
        trial : LimitsBook
            The copy with the decision applied and the answer remembered: commit its
            :meth:`to_dict`, then :meth:`adopt` it.
        decision : DRDecision
            Accepted (with the event's limit, kW) or rejected with the reason.
        ack : DRAckMessage
            The answer for ``out/dr/ack``.
        """
        trial = self.copy()
        decision = trial.dr.apply(msg, now, self.profile)
        ack = decision.to_ack(now)
        trial._remember(self.dr_key(msg), ack.model_dump(mode="json"))
        if decision.accepted:
            trial.holds.pop(source_label(msg.event_id), None)
        return trial, decision, ack

    @staticmethod
    def limits_change_id(msg: LimitsChangeMessage) -> str:
        """The id of a limits change: ``<issuer>@<issued_at ISO>#<content hash>``.

        Parameters
        ----------
        msg : LimitsChangeMessage
            The change.

        Returns
        -------
        str
            Unique per distinct message; equal for a redelivery.
        """
        return f"{msg.issuer}@{msg.issued_at.isoformat()}#{content_hash(msg.model_dump(mode='json'))}"

    def answered_limits(self, msg: LimitsChangeMessage) -> LimitsAck | None:
        """The answer already given to this very change (a redelivery), or None.

        Parameters
        ----------
        msg : LimitsChangeMessage
            The change.

        Returns
        -------
        LimitsAck or None
            The remembered answer, or None for a change not answered before.
        """
        held = self.answers.get(f"limits:{self.limits_change_id(msg)}")
        return None if held is None else LimitsAck.from_json(held)

    def decide_limits(self, msg: LimitsChangeMessage, now: datetime) -> tuple[LimitsBook, LimitsAck]:
        """Decide one limits change on a copy (see :meth:`decide_dr`). Rejected: an issuer not in
        ``profile.site.managers``; a change already expired; an import limit above the interconnection's
        (``profile.grid.import_limit_kw``: it could not take effect as sent); a change older than the
        issuer's latest one for the same part (stale); a noise cap for a receptor the profile does not have.

        Accepted: each part the change carries replaces the issuer's earlier value of that part,
        ``clear`` lifts the issuer's parts it names, and the issuer's import-limit hold ends.

        Parameters
        ----------
        msg : LimitsChangeMessage
            The change.
        now : datetime
            The decision time, timezone-aware.

        Returns
        -------
        trial : LimitsBook
            The copy with the change applied (if accepted) and the answer remembered.
        ack : LimitsAck
            The answer for ``out/limits/ack``; a rejection's reason names the field.
        """
        trial = self.copy()
        change_id = self.limits_change_id(msg)
        reason = self._refuse_limits(msg, now)
        if reason is None:
            parts = trial._manager_parts(msg, change_id)
            for part in parts:
                trial.manager[msg.issuer, part.part] = part
            cleared = [p for p in (msg.clear or ()) if trial.manager.pop((msg.issuer, p), None) is not None]
            trial.holds.pop(limits_source(msg.issuer), None)
            said = [_describe(p) for p in parts] + [f"{p} cleared" for p in cleared]
            said += [f"{p}: nothing to clear" for p in (msg.clear or ()) if p not in cleared]
            reason = "accepted: " + ", ".join(said)
        ack = LimitsAck(change_id, msg.issuer, msg.issued_at, "rejected" if not reason.startswith("accepted")
                        else "accepted", reason, now)
        trial._remember(f"limits:{change_id}", ack.to_json())
        return trial, ack

    def _refuse_limits(self, msg: LimitsChangeMessage, now: datetime) -> str | None:
        if msg.issuer not in self.profile.site.managers:
            return (f"issuer: {msg.issuer!r} is not a site manager of this profile "
                    f"(site.managers: {sorted(self.profile.site.managers)})")
        if msg.valid_until is not None and msg.valid_until <= now:
            return f"valid_until: {msg.valid_until.isoformat()} has already passed"
        interconnection_kw = self.profile.grid.import_limit_kw
        if msg.import_limit_kw is not None and msg.import_limit_kw > interconnection_kw:
            # Refused rather than clipped: a manager limit can only lower the import, so a value above the
            # interconnection cannot take effect as sent, and is as likely a unit slip (MW for kW) as a wish.
            return (f"import_limit_kw: {msg.import_limit_kw:,.1f} kW is above the interconnection's import limit "
                    f"of {interconnection_kw:,.1f} kW (profile grid.import_limit_kw); a manager limit can only "
                    "lower it, so send at most that")
        receptors = {r.id for r in self.profile.receptors}
        for i, cap in enumerate(msg.noise_caps or ()):
            if cap.receptor_id not in receptors:
                return f"noise_caps.{i}.receptor_id: unknown receptor {cap.receptor_id!r} (profile: {sorted(receptors)})"
        touched = [p.part for p in self._manager_parts(msg, "")] + list(msg.clear or ())
        for part in touched:
            held = self.manager.get((msg.issuer, part))
            if held is not None and msg.issued_at < held.issued_at:
                return (f"issued_at: stale, {msg.issued_at.isoformat()} is older than the {part} change "
                        f"in force from {held.issued_at.isoformat()}")
        return None

    @staticmethod
    def _manager_parts(msg: LimitsChangeMessage, change_id: str) -> list[ManagerLimit]:
        parts = []
        base = {"issuer": msg.issuer, "change_id": change_id, "issued_at": msg.issued_at, "valid_until": msg.valid_until}
        if msg.import_limit_kw is not None:
            parts.append(ManagerLimit(part="import", import_limit_kw=float(msg.import_limit_kw), **base))
        if msg.noise_caps is not None:
            parts.append(ManagerLimit(part="noise", noise_caps=tuple(msg.noise_caps), **base))
        if msg.carbon_budget is not None:
            parts.append(ManagerLimit(part="carbon", carbon_period=msg.carbon_budget.period,
                                      carbon_budget_kg=float(msg.carbon_budget.budget_kg), **base))
        return parts

    # ------------------------------------------------------------------ holds (store unavailable)

    def hold_dr(self, msg: DREventMessage, now: datetime) -> Hold | None:
        """Hold an undurable DR event's limit in memory when it is more restrictive than what is in
        force over its window (never loosen: a cancellation or a higher limit is not held).

        Called when the store could not commit the message (answered ``rejected:
        store_unavailable``): when in doubt, curtail. A hold binds as one more import limit, so the
        site is held to the lower of it and everything else in force.

        Parameters
        ----------
        msg : DREventMessage
            The message that could not be made durable.
        now : datetime
            The time it arrived, timezone-aware.

        Returns
        -------
        Hold or None
            The hold (key ``DR:<event id>``, the event's window), or None for a cancellation or an
            event without a finite limit.
        """
        limit = event_limit_kw(msg, self.profile)
        if msg.cancelled or limit is None or not math.isfinite(limit):
            return None
        hold = Hold(source_label(msg.event_id), limit, msg.start, msg.end)
        self.holds[hold.key] = hold
        return hold

    def hold_limits(self, msg: LimitsChangeMessage, now: datetime) -> Hold | None:
        """Hold an undurable manager import limit (noise and carbon parts are not held: the import
        limit is the part the fast path enforces without a solve).

        Parameters
        ----------
        msg : LimitsChangeMessage
            The change that could not be made durable.
        now : datetime
            The time it arrived, timezone-aware.

        Returns
        -------
        Hold or None
            The hold (key ``limits:<issuer>``, from ``issued_at`` to ``valid_until``), or None when
            the change has no import limit or its issuer is not a site manager.
        """
        if msg.import_limit_kw is None or msg.issuer not in self.profile.site.managers:
            return None
        hold = Hold(limits_source(msg.issuer), float(msg.import_limit_kw), msg.issued_at, msg.valid_until)
        self.holds[hold.key] = hold
        return hold

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready durable state (holds excluded: they were never accepted).

        Returns
        -------
        dict
            Version 1: ``dr``, ``manager``, ``answers``, ``four_cp_alert_days``, ``as_awards``,
            ``as_deployments`` and ``as_early_recalls`` (absent in a book written before it); what ``Store.commit_state`` writes and :meth:`from_dict` reads.
        """
        return {"version": 1, "dr": self.dr.to_dict(),
                "manager": [h.to_json() for h in self.manager.values()],
                "answers": [[k, v] for k, v in self.answers.items()],
                "four_cp_alert_days": sorted(str(pd.Timestamp(d).date()) for d in self.four_cp_alert_days),
                "as_awards": self.as_awards,
                "as_deployments": [d.to_json() for d in self.as_deployments.values()],
                "as_early_recalls": [dict(r) for r in self.as_early_recalls.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, profile: SiteProfile) -> LimitsBook:
        """The book from :meth:`to_dict` (None: an empty book). Events keep the limit they were
        accepted with, even if the profile's level mapping changed since.

        Parameters
        ----------
        data : dict or None
            The state written by :meth:`to_dict`; None or empty gives an empty book.
        profile : SiteProfile
            The site profile now in force.

        Returns
        -------
        LimitsBook
            The book, without holds.

        Raises
        ------
        KeyError
            If a required key (``dr``, a stored limit's fields) is missing.
        ValueError
            If a stored time is not ISO 8601 or a stored message no longer validates.
        """
        if not data:
            return cls(profile)
        manager = {}
        for row in data.get("manager", []):
            held = ManagerLimit.from_json(row)
            manager[held.issuer, held.part] = held
        answers = OrderedDict((k, v) for k, v in data.get("answers", []))
        days = {pd.Timestamp(d) for d in data.get("four_cp_alert_days", [])}
        awards = dict(data.get("as_awards", {}))
        deployments = {row["deployment_id"]: ASDeployment.from_json(row) for row in data.get("as_deployments", [])}
        early = {row["deployment_id"]: dict(row) for row in data.get("as_early_recalls", [])}
        return cls(profile, DRBook.from_dict(copy.deepcopy(data["dr"])), manager, answers, {}, days, awards, deployments,
                   early)


def _describe(part: ManagerLimit) -> str:
    until = "" if part.valid_until is None else f" until {part.valid_until.isoformat()}"
    if part.part == "import":
        return f"import limit {part.import_limit_kw:.1f} kW{until}"
    if part.part == "noise":
        return "noise caps " + ", ".join(f"{c.receptor_id} {c.cap_dba:.1f} dB(A)" for c in part.noise_caps) + until
    return f"{part.carbon_period} carbon budget {part.carbon_budget_kg:.0f} kg{until}"
