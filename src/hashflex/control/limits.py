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
import dataclasses
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from hashflex.control.ancillary import (
    ASDeployment,
    award_refusal,
    deploy_refusal,
    deployment_from,
)
from hashflex.control.dr import DRBook, DRDecision, event_limit_kw, source_label
from hashflex.messages import (
    ASAckMessage,
    ASAwardMessage,
    ASDeployMessage,
    DRAckMessage,
    DREventMessage,
    LimitsChangeMessage,
    NoiseCapOverride,
)
from hashflex.optimize.problem import four_cp_limits_kw
from hashflex.profile import SiteProfile

__all__ = ["LimitsAck", "LimitsBook", "ManagerLimit", "STORE_UNAVAILABLE", "content_hash", "limits_source"]

STORE_UNAVAILABLE = "store_unavailable"
_ANSWERS_KEPT = 5_000  # idempotent answers remembered (oldest forgotten first)


def content_hash(payload: dict[str, Any]) -> str:
    """SHA-256 (hex, first 16 chars) of a message's canonical JSON: equal content, equal hash.

    Parameters
    ----------
    payload : dict
        The message as JSON-ready data (keys sorted, compact separators, other values by ``str``).

    Returns
    -------
    str
        16 lowercase hex digits.
    """
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def limits_source(issuer: str) -> str:
    """The source label of a manager's import limit, e.g. ``limits:site_manager``.

    Parameters
    ----------
    issuer : str
        The site manager (one of ``profile.site.managers``).

    Returns
    -------
    str
        ``"limits:<issuer>"``.
    """
    return f"limits:{issuer}"


@dataclass(frozen=True)
class LimitsAck:
    """The answer to one ``in/limits`` message, published on ``out/limits/ack``.

    ``change_id`` is ``<issuer>@<issued_at ISO>#<content hash>``: unique per distinct message, so two
    changes in the same second are two changes, and a redelivery is recognised.

    Parameters
    ----------
    change_id : str
        ``<issuer>@<issued_at ISO>#<content hash>`` (:meth:`LimitsBook.limits_change_id`).
    issuer : str
        The message's issuer.
    issued_at : datetime
        The message's ``issued_at``, timezone-aware.
    status : str
        ``accepted`` or ``rejected``.
    reason : str
        What was accepted, or why not (the field named).
    acked_at : datetime
        When the answer was given, timezone-aware.
    """

    change_id: str
    issuer: str
    issued_at: datetime
    status: str  # "accepted" | "rejected"
    reason: str
    acked_at: datetime

    @property
    def accepted(self) -> bool:
        """True when ``status`` is ``accepted``."""
        return self.status == "accepted"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (times ISO 8601), the payload of ``out/limits/ack``."""
        return {"change_id": self.change_id, "issuer": self.issuer, "issued_at": self.issued_at.isoformat(),
                "status": self.status, "reason": self.reason, "acked_at": self.acked_at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LimitsAck:
        """The answer from :meth:`to_json` (a remembered answer, given again on a redelivery).

        Parameters
        ----------
        data : dict
            Every field of :meth:`to_json`.

        Returns
        -------
        LimitsAck
            The answer.

        Raises
        ------
        KeyError
            If a field is missing.
        ValueError
            If a time is not ISO 8601.
        """
        return cls(data["change_id"], data["issuer"], datetime.fromisoformat(data["issued_at"]), data["status"],
                   data["reason"], datetime.fromisoformat(data["acked_at"]))


@dataclass(frozen=True)
class ManagerLimit:
    """One part (``import``, ``noise`` or ``carbon``) of a site manager's accepted limits change.

    Parameters
    ----------
    issuer : str
        The site manager.
    part : str
        ``import``, ``noise`` or ``carbon``.
    change_id : str
        The change it came from (:meth:`LimitsBook.limits_change_id`).
    issued_at : datetime
        Binds from then, timezone-aware.
    valid_until : datetime or None
        Binds until then; None: no expiry.
    import_limit_kw : float, optional
        The import limit of an ``import`` part, kW.
    noise_caps : tuple of NoiseCapOverride
        The cap overrides of a ``noise`` part (receptor, window, dB(A)).
    carbon_period : str, optional
        ``day`` or ``month`` for a ``carbon`` part.
    carbon_budget_kg : float, optional
        The budget of a ``carbon`` part, kg CO2 per period.
    """

    issuer: str
    part: str
    change_id: str
    issued_at: datetime
    valid_until: datetime | None
    import_limit_kw: float | None = None
    noise_caps: tuple[NoiseCapOverride, ...] = ()
    carbon_period: str | None = None  # "day" | "month"
    carbon_budget_kg: float | None = None

    def in_force(self, start: datetime, end: datetime | None = None) -> bool:
        """In force at ``start``, or at any moment of ``[start, end)``.

        Parameters
        ----------
        start : datetime
            The moment (or the interval's start), timezone-aware.
        end : datetime, optional
            The interval's end; None (or not after ``start``) asks about the moment ``start``.

        Returns
        -------
        bool
            True when ``[issued_at, valid_until)`` overlaps the moment or interval.
        """
        until = end if end is not None and end > start else start + timedelta(microseconds=1)
        return self.issued_at < until and (self.valid_until is None or self.valid_until > start)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (times ISO 8601, caps as their JSON), read back by :meth:`from_json`."""
        return {"issuer": self.issuer, "part": self.part, "change_id": self.change_id,
                "issued_at": self.issued_at.isoformat(),
                "valid_until": None if self.valid_until is None else self.valid_until.isoformat(),
                "import_limit_kw": self.import_limit_kw,
                "noise_caps": [c.model_dump(mode="json") for c in self.noise_caps],
                "carbon_period": self.carbon_period, "carbon_budget_kg": self.carbon_budget_kg}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManagerLimit:
        """The limit from :meth:`to_json`.

        Parameters
        ----------
        data : dict
            The fields of :meth:`to_json` (``issuer``, ``part``, ``change_id`` and ``issued_at``
            required; the others default to absent).

        Returns
        -------
        ManagerLimit
            The limit.

        Raises
        ------
        KeyError
            If a required field is missing.
        ValueError
            If a time is not ISO 8601 (or a noise cap does not validate: ``pydantic.ValidationError``,
            a ValueError).
        """
        until = data.get("valid_until")
        return cls(data["issuer"], data["part"], data["change_id"], datetime.fromisoformat(data["issued_at"]),
                   None if until is None else datetime.fromisoformat(until), data.get("import_limit_kw"),
                   tuple(NoiseCapOverride.model_validate(c) for c in data.get("noise_caps", [])),
                   data.get("carbon_period"), data.get("carbon_budget_kg"))


@dataclass(frozen=True)
class Hold:
    """A limit held in memory only (its message could not be made durable).

    Parameters
    ----------
    key : str
        ``DR:<event id>`` or ``limits:<issuer>``: a durable message with the same key supersedes it.
    limit_kw : float
        The import limit held, kW.
    start : datetime
        Binds from then, timezone-aware.
    end : datetime or None
        Binds until then; None: until superseded.
    """

    key: str  # "DR:<event id>" or "limits:<issuer>"
    limit_kw: float
    start: datetime
    end: datetime | None

    def in_force(self, start: datetime, end: datetime | None = None) -> bool:
        """In force at ``start``, or at any moment of ``[start, end)``.

        Parameters
        ----------
        start : datetime
            The moment (or the interval's start), timezone-aware.
        end : datetime, optional
            The interval's end; None (or not after ``start``) asks about the moment ``start``.

        Returns
        -------
        bool
            True when the hold's ``[start, end)`` overlaps the moment or interval.
        """
        until = end if end is not None and end > start else start + timedelta(microseconds=1)
        return self.start < until and (self.end is None or self.end > start)


@dataclass
class LimitsBook:
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
                          dict(self.as_deployments))

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
        ``profile.site.managers``; a change already expired; a change older than the issuer's latest
        one for the same part (stale); a noise cap for a receptor the profile does not have.

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

    # ------------------------------------------------------------------ ancillary services (issue 15)

    @staticmethod
    def as_key(msg: ASAwardMessage | ASDeployMessage) -> str:
        """The key under which the answer to an award or deployment is remembered.

        Parameters
        ----------
        msg : ASAwardMessage or ASDeployMessage
            The message.

        Returns
        -------
        str
            ``<kind>:<issuer>:<award or deployment id>:<content hash>``.
        """
        return f"{msg.kind}:{msg.issuer}:{msg.key}:{content_hash(msg.model_dump(mode='json'))}"

    def answered_as(self, msg: ASAwardMessage | ASDeployMessage) -> ASAckMessage | None:
        """The ack already given to this very award or deployment (a redelivery), or None.

        Parameters
        ----------
        msg : ASAwardMessage or ASDeployMessage
            The message.

        Returns
        -------
        ASAckMessage or None
            The remembered ack, or None for a message not answered before.
        """
        held = self.answers.get(self.as_key(msg))
        return None if held is None else ASAckMessage.model_validate(held)

    def decide_as_award(self, msg: ASAwardMessage, now: datetime) -> tuple[LimitsBook, ASAckMessage]:
        """Decide an award on a copy (see :meth:`decide_dr`); refusals: ``ancillary.award_refusal``.

        Parameters
        ----------
        msg : ASAwardMessage
            The award (``reserve_kw`` of a product over ``[start, end)``).
        now : datetime
            The decision time, timezone-aware.

        Returns
        -------
        trial : LimitsBook
            The copy with the award stored (if accepted) and the answer remembered.
        ack : ASAckMessage
            The answer (``kind`` ``as_award``).
        """
        trial = self.copy()
        reason = award_refusal(self.profile, msg, self.as_awards.get(msg.award_id), now)
        if reason is None:
            trial.as_awards[msg.award_id] = msg.model_dump(mode="json")
            reason = f"accepted: {msg.product} {msg.reserve_kw:.0f} kW {msg.start.isoformat()}–{msg.end.isoformat()}"
        ack = ASAckMessage(message_id=msg.award_id, kind="as_award",
                           status="accepted" if reason.startswith("accepted") else "rejected", reason=reason,
                           acked_at=now)
        trial._remember(self.as_key(msg), ack.model_dump(mode="json"))
        return trial, ack

    def decide_as_deploy(self, msg: ASDeployMessage, baseline_kw: float, now: datetime
                         ) -> tuple[LimitsBook, ASAckMessage]:
        """Decide a deployment (or its recall) on a copy. ``baseline_kw``: the site's modelled import
        now; the deployment's limit is baseline − deployed_kw, by the product's deadline.

        A recall ends the held deployment at the recall's ``issued_at``; a deployment id seen before
        is refused; one above the award in force is accepted and the ack says so (shedding is safe).

        Parameters
        ----------
        msg : ASDeployMessage
            The deployment or its recall.
        baseline_kw : float
            The site's modelled import now, kW (net of on-site renewables).
        now : datetime
            The decision time, timezone-aware.

        Returns
        -------
        trial : LimitsBook
            The copy with the deployment stored or ended (if accepted) and the answer remembered.
        ack : ASAckMessage
            The answer (``kind`` ``as_deploy``), with the import limit (kW) and deadline when a
            deployment was accepted.
        """
        trial = self.copy()
        reason = deploy_refusal(self.profile, msg)
        deployment = None
        if reason is None and msg.recalled:
            held = trial.as_deployments.get(msg.deployment_id)
            if held is None:
                reason = f"deployment_id: no deployment {msg.deployment_id!r} to recall"
            else:
                trial.as_deployments[msg.deployment_id] = dataclasses.replace(held, end=max(msg.issued_at, held.issued_at))
                reason = f"accepted: {held.product} deployment recalled at {msg.issued_at.isoformat()}"
        elif reason is None:
            if msg.deployment_id in trial.as_deployments:
                reason = f"deployment_id: {msg.deployment_id!r} was already deployed"
            else:
                deployment = deployment_from(msg, baseline_kw)
                trial.as_deployments[msg.deployment_id] = deployment
                awarded = sum(v for v in trial.reserve_awards_at(msg.issued_at).get(msg.product, {}).values())
                note = "" if msg.deployed_kw <= awarded + 1e-6 else f" (more than the {awarded:.0f} kW awarded)"
                reason = (f"accepted: {msg.product} shed {msg.deployed_kw:.0f} kW from {baseline_kw:.0f} kW to "
                          f"{deployment.limit_kw:.0f} kW by {deployment.deadline.isoformat()}{note}")
        ack = ASAckMessage(message_id=msg.deployment_id, kind="as_deploy",
                           status="accepted" if reason.startswith("accepted") else "rejected", reason=reason,
                           acked_at=now, import_limit_kw=None if deployment is None else deployment.limit_kw,
                           deadline=None if deployment is None else deployment.deadline)
        trial._remember(self.as_key(msg), ack.model_dump(mode="json"))
        return trial, ack

    def reserve_awards_at(self, t: datetime) -> dict[str, dict[str, float]]:
        """Product -> {award id: kW} of the awards in force at ``t``.

        Parameters
        ----------
        t : datetime
            The moment, timezone-aware.

        Returns
        -------
        dict of str to dict of str to float
            Product → award id → reserve, kW, for the awards with ``start <= t < end``.
        """
        out: dict[str, dict[str, float]] = {}
        for award_id, award in self.as_awards.items():
            if datetime.fromisoformat(award["start"]) <= t < datetime.fromisoformat(award["end"]):
                out.setdefault(award["product"], {})[award_id] = float(award["reserve_kw"])
        return out

    def reserve_obligations_over(self, interval_start: Sequence[datetime] | pd.DatetimeIndex,
                                 interval: timedelta) -> dict[str, np.ndarray]:
        """Product -> per interval the reserve the plan must hold (kW): the largest awarded total at
        any moment inside the interval, less what of that product is deployed (shed load cannot also
        be held running). Products without an award are absent.

        Parameters
        ----------
        interval_start : sequence of datetime or pandas.DatetimeIndex
            The intervals' starts, shape (T,), timezone-aware.
        interval : datetime.timedelta
            The intervals' length.

        Returns
        -------
        dict of str to numpy.ndarray
            Product → shape (T,) reserve to hold, kW (>= 0).
        """
        starts = [pd.Timestamp(t).to_pydatetime() for t in interval_start]
        out: dict[str, np.ndarray] = {}
        for award in self.as_awards.values():
            a_start, a_end = datetime.fromisoformat(award["start"]), datetime.fromisoformat(award["end"])
            row = out.setdefault(award["product"], np.zeros(len(starts)))
            for k, start in enumerate(starts):
                if a_start < start + interval and a_end > start:
                    row[k] += float(award["reserve_kw"])
        for deployment in self.as_deployments.values():
            if deployment.product in out:
                row = out[deployment.product]
                for k, start in enumerate(starts):
                    if deployment.in_force(start, start + interval):
                        row[k] = max(row[k] - deployment.deployed_kw, 0.0)
        return out

    def _remember(self, key: str, ack: dict[str, Any]) -> None:
        self.answers[key] = ack
        self.answers.move_to_end(key)
        while len(self.answers) > _ANSWERS_KEPT:
            self.answers.popitem(last=False)

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

    # ------------------------------------------------------------------ what binds

    def import_limits_at(self, t: datetime) -> dict[str, float]:
        """Every import limit in force at ``t`` by source label (DR:<id>, limits:<issuer>, 4CP window,
        hold:<key>), finite values only; the site is held to the minimum.

        Parameters
        ----------
        t : datetime
            The moment, timezone-aware.

        Returns
        -------
        dict of str to float
            Source label → import limit, kW: the binding DR event, each manager's import limit, each
            hold, the 4CP window (``optimize.problem.four_cp_limits_kw``) and each AS deployment
            (``AS:<product>:<id>``).
        """
        out: dict[str, float] = {}
        limit, label = self.dr.limit_at(t)
        if math.isfinite(limit):
            out[label] = limit
        for (issuer, part), held in self.manager.items():
            if part == "import" and held.in_force(t) and held.import_limit_kw is not None:
                out[limits_source(issuer)] = held.import_limit_kw
        for hold in self.holds.values():
            if hold.in_force(t):
                out[f"hold:{hold.key}"] = min(hold.limit_kw, out.get(f"hold:{hold.key}", math.inf))
        cp = four_cp_limits_kw(self.profile, pd.DatetimeIndex([pd.Timestamp(t)]), self.four_cp_alert_days)[0]
        if math.isfinite(cp):
            out["4CP window"] = float(cp)
        for deployment in self.as_deployments.values():
            if deployment.in_force(t):
                out[deployment.source] = deployment.limit_kw
        return out

    def noise_caps_at(self, t: datetime) -> dict[str, float]:
        """Receptor id → the lowest manager cap override in force at ``t``.

        Parameters
        ----------
        t : datetime
            The moment, timezone-aware.

        Returns
        -------
        dict of str to float
            Receptor id → cap, dB(A), for receptors with an override window containing ``t``.
        """
        caps: dict[str, float] = {}
        for (_, part), held in self.manager.items():
            if part != "noise" or not held.in_force(t):
                continue
            for cap in held.noise_caps:
                if cap.window_start <= t < cap.window_end:
                    caps[cap.receptor_id] = min(cap.cap_dba, caps.get(cap.receptor_id, math.inf))
        return caps

    def import_limits_over(self, interval_start: Sequence[datetime] | pd.DatetimeIndex,
                           interval: timedelta) -> tuple[np.ndarray, list[str]]:
        """Per interval ``[start, start + interval)``: the lowest import limit in force at any moment
        inside it and its source label (inf and "" where none). 4CP is left to the problem builder,
        which applies the same windows (``optimize.problem.four_cp_limits_kw``).

        Parameters
        ----------
        interval_start : sequence of datetime or pandas.DatetimeIndex
            The intervals' starts, shape (T,), timezone-aware.
        interval : datetime.timedelta
            The intervals' length.

        Returns
        -------
        limits : numpy.ndarray
            Shape (T,), the binding import limit per interval, kW (inf where none).
        labels : list of str
            Length T, the binding source's label per interval ("" where none).

        Raises
        ------
        ValueError
            If a start is timezone-naive (:meth:`DRBook.limits_over`).
        """
        starts = [pd.Timestamp(t).to_pydatetime() for t in interval_start]
        limits, labels = self.dr.limits_over(starts, interval) if starts else (np.zeros(0), [])
        limits = np.asarray(limits, dtype=float).copy()
        labels = list(labels)
        candidates: list[tuple[float, str, Any]] = [
            (h.import_limit_kw, limits_source(i), h) for (i, p), h in self.manager.items()
            if p == "import" and h.import_limit_kw is not None]
        candidates += [(h.limit_kw, f"hold:{h.key}", h) for h in self.holds.values()]
        candidates += [(d.limit_kw, d.source, d) for d in self.as_deployments.values()]
        for value, label, item in candidates:
            for k, start in enumerate(starts):
                if value < limits[k] and item.in_force(start, start + interval):
                    limits[k], labels[k] = value, label
        return limits, labels

    def noise_caps_over(self, interval_start: pd.DatetimeIndex, interval: timedelta) -> dict[str, np.ndarray]:
        """Receptor id → per interval the lowest override cap whose window overlaps the interval (inf
        where none): a window starting mid-interval binds the whole interval.

        Parameters
        ----------
        interval_start : pandas.DatetimeIndex
            The intervals' starts, shape (T,), timezone-aware.
        interval : datetime.timedelta
            The intervals' length.

        Returns
        -------
        dict of str to numpy.ndarray
            Receptor id → shape (T,) cap, dB(A) (inf where none); receptors without an override are
            absent.
        """
        starts = pd.DatetimeIndex(interval_start)
        ends = starts + pd.Timedelta(interval)
        out: dict[str, np.ndarray] = {}
        for (_, part), held in self.manager.items():
            if part != "noise":
                continue
            active = np.array([held.in_force(s.to_pydatetime(), e.to_pydatetime()) for s, e in zip(starts, ends)],
                              dtype=bool)
            for cap in held.noise_caps:
                overlap = active & (starts < pd.Timestamp(cap.window_end)) & (ends > pd.Timestamp(cap.window_start))
                row = out.setdefault(cap.receptor_id, np.full(len(starts), np.inf))
                row[overlap] = np.minimum(row[overlap], cap.cap_dba)
        return out

    def carbon_budget_overrides_kg(self, t: datetime) -> dict[str, float]:
        """"day" / "month" → the lowest manager budget in force at ``t`` (kg CO2).

        Parameters
        ----------
        t : datetime
            The moment, timezone-aware.

        Returns
        -------
        dict of str to float
            ``day`` and/or ``month`` → budget, kg CO2 per period; empty when no manager set one.
        """
        out: dict[str, float] = {}
        for (_, part), held in self.manager.items():
            if part == "carbon" and held.in_force(t) and held.carbon_period and held.carbon_budget_kg is not None:
                out[held.carbon_period] = min(held.carbon_budget_kg, out.get(held.carbon_period, math.inf))
        return out

    def expire(self, now: datetime) -> list[ManagerLimit]:
        """Drop manager limits and holds whose ``valid_until`` / end has passed; returns the limits
        dropped (the caller records them and commits).

        AS awards that ended more than a day ago and deployments that ended more than 7 days ago are
        dropped too, so the durable book stays bounded.

        Parameters
        ----------
        now : datetime
            The time, timezone-aware.

        Returns
        -------
        list of ManagerLimit
            The manager limits dropped (holds and AS entries are not listed).
        """
        gone = [h for h in self.manager.values() if h.valid_until is not None and h.valid_until <= now]
        for held in gone:
            del self.manager[held.issuer, held.part]
        self.holds = {k: h for k, h in self.holds.items() if h.end is None or h.end > now}
        # Awards and deployments long over are dropped so the durable book stays bounded.
        self.as_awards = {k: a for k, a in self.as_awards.items()
                          if datetime.fromisoformat(a["end"]) > now - timedelta(days=1)}
        self.as_deployments = {k: d for k, d in self.as_deployments.items() if d.end > now - timedelta(days=7)}
        return gone

    def summary(self, now: datetime) -> dict[str, Any]:
        """JSON-ready view for /status: limits in force now, DR events, manager limits, holds.

        Parameters
        ----------
        now : datetime
            The time, timezone-aware.

        Returns
        -------
        dict
            ``import_limit_kw`` and ``import_limit_source`` (the binding one, or None),
            ``import_limits_kw`` (:meth:`import_limits_at`), ``noise_caps_dba``,
            ``carbon_budget_overrides_kg``, ``dr_events`` (pending and active), ``manager_limits``,
            ``holds``, ``as_awards_kw`` and ``as_deployments`` (those in force).
        """
        imports = self.import_limits_at(now)
        binding = min(imports.items(), key=lambda kv: kv[1]) if imports else None
        return {
            "import_limit_kw": None if binding is None else binding[1],
            "import_limit_source": None if binding is None else binding[0],
            "import_limits_kw": imports,
            "noise_caps_dba": self.noise_caps_at(now),
            "carbon_budget_overrides_kg": self.carbon_budget_overrides_kg(now),
            "dr_events": [{"event_id": i, "status": self.dr.status(i), "issuer": self.dr.message(i).issuer,
                           "limit_kw": None if not math.isfinite(self.dr.limit_kw(i)) else self.dr.limit_kw(i),
                           "start": self.dr.message(i).start.isoformat(),
                           "end": None if self.dr.message(i).end is None else self.dr.message(i).end.isoformat()}
                          for i in self.dr.event_ids() if self.dr.status(i) in ("pending", "active")],
            "manager_limits": [h.to_json() for h in self.manager.values()],
            "holds": [{"key": h.key, "limit_kw": h.limit_kw, "start": h.start.isoformat(),
                       "end": None if h.end is None else h.end.isoformat()} for h in self.holds.values()],
            "as_awards_kw": self.reserve_awards_at(now),
            "as_deployments": [d.to_json() for d in self.as_deployments.values() if d.in_force(now)],
        }

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready durable state (holds excluded: they were never accepted).

        Returns
        -------
        dict
            Version 1: ``dr``, ``manager``, ``answers``, ``four_cp_alert_days``, ``as_awards`` and
            ``as_deployments``; what ``Store.commit_state`` writes and :meth:`from_dict` reads.
        """
        return {"version": 1, "dr": self.dr.to_dict(),
                "manager": [h.to_json() for h in self.manager.values()],
                "answers": [[k, v] for k, v in self.answers.items()],
                "four_cp_alert_days": sorted(str(pd.Timestamp(d).date()) for d in self.four_cp_alert_days),
                "as_awards": self.as_awards,
                "as_deployments": [d.to_json() for d in self.as_deployments.values()]}

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
        return cls(profile, DRBook.from_dict(copy.deepcopy(data["dr"])), manager, answers, {}, days, awards, deployments)


def _describe(part: ManagerLimit) -> str:
    until = "" if part.valid_until is None else f" until {part.valid_until.isoformat()}"
    if part.part == "import":
        return f"import limit {part.import_limit_kw:.1f} kW{until}"
    if part.part == "noise":
        return "noise caps " + ", ".join(f"{c.receptor_id} {c.cap_dba:.1f} dB(A)" for c in part.noise_caps) + until
    return f"{part.carbon_period} carbon budget {part.carbon_budget_kg:.0f} kg{until}"
