"""Ancillary service awards and deployments in the limits book (issue 15). Pure: no I/O, no clock.

An **award** (``in/as/award``) is an obligation to hold ``reserve_kw`` of a product over a window: the
plan keeps that much qualified load running (a minimum running load, see ``milp.define_reserve``).
A **deployment** (``in/as/deploy``) is a limit: from ``issued_at`` the site's import must drop by
``deployed_kw`` from the load at that moment (the baseline) within the product's deadline
(``profile.AS_PRODUCT_RULES``: RRS is cut at once by the fast path, ECRS within 10 minutes, Non-Spin
within 30), held until it is recalled or the product's sustain duration has passed. A deployment
binds like a DR event: it is an import limit in the book with source label ``AS:<product>:<id>``.

Who may send them: the QSE named in ``profile.ancillary.issuer``; only products the profile
qualifies. A deployment is accepted even above the award in force (shedding is always safe; the
ack says so), never for a product the site is not qualified for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hashflex.messages import ASAwardMessage, ASDeployMessage
from hashflex.profile import AS_PRODUCT_RULES, SiteProfile

__all__ = ["ASDeployment", "as_source", "award_refusal", "deploy_refusal", "deployment_from"]


def as_source(product: str, deployment_id: str) -> str:
    """The source label of a deployment's import limit, e.g. ``AS:RRS:d-17``."""
    return f"AS:{product}:{deployment_id}"


@dataclass(frozen=True)
class ASDeployment:
    """One accepted deployment: the import limit it sets, from when, by when, until when.

    ``baseline_kw``: the site's modelled import when it arrived; ``limit_kw`` = max(baseline −
    deployed, 0); ``deadline``: issued_at + the product's deployment time; ``end``: the recall, or
    issued_at + the product's sustain duration."""

    deployment_id: str
    product: str
    issuer: str
    issued_at: datetime
    deployed_kw: float
    baseline_kw: float
    limit_kw: float
    deadline: datetime
    end: datetime

    @property
    def source(self) -> str:
        return as_source(self.product, self.deployment_id)

    def in_force(self, start: datetime, end: datetime | None = None) -> bool:
        """In force at ``start``, or at any moment of ``[start, end)``."""
        until = end if end is not None and end > start else start + timedelta(microseconds=1)
        return self.issued_at < until and self.end > start

    def to_json(self) -> dict[str, Any]:
        return {"deployment_id": self.deployment_id, "product": self.product, "issuer": self.issuer,
                "issued_at": self.issued_at.isoformat(), "deployed_kw": self.deployed_kw,
                "baseline_kw": self.baseline_kw, "limit_kw": self.limit_kw,
                "deadline": self.deadline.isoformat(), "end": self.end.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ASDeployment:
        return cls(data["deployment_id"], data["product"], data["issuer"], datetime.fromisoformat(data["issued_at"]),
                   float(data["deployed_kw"]), float(data["baseline_kw"]), float(data["limit_kw"]),
                   datetime.fromisoformat(data["deadline"]), datetime.fromisoformat(data["end"]))


def _issuer_refusal(profile: SiteProfile, issuer: str, product: str) -> str | None:
    section = profile.ancillary
    if section is None:
        return "ancillary: this profile has no ancillary section (the site provides no reserves)"
    if issuer != section.issuer:
        return f"issuer: {issuer!r} is not the site's QSE (ancillary.issuer: {section.issuer!r})"
    if product not in section.products:
        return f"product: the site is not qualified for {product} (ancillary.products: {sorted(section.products)})"
    return None


def award_refusal(profile: SiteProfile, msg: ASAwardMessage, held: dict[str, Any] | None, now: datetime) -> str | None:
    """Why an award is refused, or None: wrong issuer or product, more than the site qualified,
    already over, or an older revision than the one held."""
    reason = _issuer_refusal(profile, msg.issuer, msg.product)
    if reason is not None:
        return reason
    product = profile.ancillary.products[msg.product]  # type: ignore[union-attr]
    qualified_kw = sum(product.group_mw.values()) * 1000.0
    if product.max_mw is not None:
        qualified_kw = min(qualified_kw, product.max_mw * 1000.0)
    if msg.reserve_kw > qualified_kw + 1e-6:
        return f"reserve_kw: {msg.reserve_kw:.0f} kW is more than the {qualified_kw:.0f} kW qualified for {msg.product}"
    if msg.end <= now:
        return f"end: {msg.end.isoformat()} has already passed"
    if held is not None and msg.revision <= int(held["revision"]):
        return f"revision: {msg.revision} is not newer than the revision {held['revision']} held"
    return None


def deploy_refusal(profile: SiteProfile, msg: ASDeployMessage) -> str | None:
    """Why a deployment is refused, or None: only the issuer and the product are checked."""
    return _issuer_refusal(profile, msg.issuer, msg.product)


def deployment_from(msg: ASDeployMessage, baseline_kw: float) -> ASDeployment:
    """The deployment a (not recalled) message sets, from the modelled import ``baseline_kw`` now."""
    rules = AS_PRODUCT_RULES[msg.product]
    return ASDeployment(
        deployment_id=msg.deployment_id, product=msg.product, issuer=msg.issuer, issued_at=msg.issued_at,
        deployed_kw=float(msg.deployed_kw), baseline_kw=float(baseline_kw),
        limit_kw=max(float(baseline_kw) - float(msg.deployed_kw), 0.0),
        deadline=msg.issued_at + timedelta(seconds=float(rules["deadline_s"])),
        end=msg.issued_at + timedelta(hours=float(rules["sustain_h"])),
    )
