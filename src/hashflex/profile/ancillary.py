"""The profile's ``ancillary`` section (issue 15): reserves as a Load Resource. Split from
`hashflex.profile` (issue 11), which re-exports every name here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from hashflex.profile.base import NonNegFloat, PositiveFloat, _Strict

# --- Ancillary services (issue 15) -----------------------------------------------------------
# The product rules hashflex models for a Load Resource that is not a Controllable Load Resource
# (a mining site registered through a QSE). Sources: ERCOT Nodal Protocols §3.18 (Resource limits
# in providing Ancillary Service; Load Resources on under-frequency relays), §6.5.7.6.2.2
# (deployment of Responsive Reserve: Load Resources trip on their under-frequency relay at
# 59.7 Hz, or deploy within 10 minutes of an instruction), §6.5.7.6.2.4 (ECRS deployment; NPRR1148:
# Load Resources other than Controllable Load Resources are treated as a 10-minute linear ramp),
# §6.5.7.6.2.3 (Non-Spinning Reserve: full deployment within 30 minutes). Sustain durations are
# the obligation hashflex plans to hold once deployed; they are defaults a site may tighten in its
# QSE agreement — check them against the Protocols in force (RTC+B, December 2025).
AS_PRODUCT_RULES: dict[str, dict[str, Any]] = {
    "RRS": {"deadline_s": 600.0, "sustain_h": 1.0, "needs_under_frequency_relay": True,
            "source": "Nodal Protocols §3.18, §6.5.7.6.2.2 (UFR trip at 59.7 Hz; 10 min on instruction)"},
    "ECRS": {"deadline_s": 600.0, "sustain_h": 2.0, "needs_under_frequency_relay": False,
             "source": "Nodal Protocols §6.5.7.6.2.4, NPRR1148 (10-minute deployment)"},
    "NSPIN": {"deadline_s": 1800.0, "sustain_h": 4.0, "needs_under_frequency_relay": False,
              "source": "Nodal Protocols §6.5.7.6.2.3 (30-minute deployment)"},
}
AsProductName = Literal["RRS", "ECRS", "NSPIN"]

# How long a deployment without a recall holds at most (issue 15, third newcomer review): a deployed
# Load Resource stays deployed until ERCOT recalls it (Nodal Protocols §6.5.7.6.2.2-4: deployment and
# recall are Dispatch Instructions); ``sustain_h`` above is what it must be *able* to sustain
# (§8.1.1.2.1.x, §8.1.1.3.x; NPRR1282, NPRR1339 under RTC+B: RRS 30 min, ECRS 1 h), so hashflex
# holds a deployment past it (flagged ``as_overrun``) until the recall. A lost recall must not curtail
# the site for ever (a setpoint always expires): after ``max_hold_h`` from the instruction it
# releases, with an audit record. 8 h is the longest demand-response obligation ERCOT defines (an
# ERS deployment's eight-hour performance obligation, NPRR536), twice Non-Spin's 4 h.
DEFAULT_MAX_HOLD_H = 8.0


class AncillaryGroup(_Strict):
    """How fast one miner group can shed its load (hydro/immersion or air, firmware sleep time)."""

    response_s: PositiveFloat = Field(description="seconds from a deployment to the load being off")
    under_frequency_relay: bool = Field(default=False, description="load tripped by a UFR at 59.7 Hz (RRS)")


class AncillaryProduct(_Strict):
    """One product the site is qualified for: the MW offered per qualified group (the group's share
    of the Load Resource) and the expected deployments, which price the opportunity cost."""

    group_mw: dict[str, NonNegFloat] = Field(min_length=1, description="qualified group id -> MW offered")
    max_mw: PositiveFloat | None = Field(default=None, description="cap on the product's total offer")
    expected_deployments_per_month: NonNegFloat = 1.0
    expected_deployment_hours: NonNegFloat = 1.0

    @property
    def expected_deployed_fraction(self) -> float:
        """Share of held hours the reserve is expected to be deployed (a 730-hour month)."""
        return min(self.expected_deployments_per_month * self.expected_deployment_hours / 730.0, 1.0)


class AncillarySection(_Strict):
    """Ancillary services as a Load Resource (rules per product: ``AS_PRODUCT_RULES``)."""

    issuer: str = Field(min_length=1, description="broker identity of the QSE that sends in/as/award and in/as/deploy")
    openadr_programs: list[str] | None = Field(
        default=None, description="programName of the OpenADR 3 programs through which the QSE sends awards and "
                                  "deployments (openadr.ancillary); None: awards and deployments over MQTT only")
    groups: dict[str, AncillaryGroup] = Field(min_length=1)
    products: dict[AsProductName, AncillaryProduct] = Field(default_factory=dict)
    max_hold_h: PositiveFloat = Field(
        default=DEFAULT_MAX_HOLD_H,
        description="backstop, h from a deployment's instruction: without a recall it holds (flagged as_overrun "
                    "past the product's sustain_h) until then, and releases with an audit record; at least every "
                    "qualified product's sustained duration (AS_PRODUCT_RULES sustain_h)")

    @model_validator(mode="after")
    def _qualified(self) -> "AncillarySection":
        for name, product in self.products.items():
            rules = AS_PRODUCT_RULES[name]
            if self.max_hold_h < rules["sustain_h"]:
                raise ValueError(f"max_hold_h: {self.max_hold_h:g} h is shorter than {name}'s sustained duration "
                                 f"of {rules['sustain_h']:g} h (AS_PRODUCT_RULES): the backstop would release a "
                                 "deployment the site must still sustain")
            for group_id in product.group_mw:
                group = self.groups.get(group_id)
                if group is None:
                    raise ValueError(f"products.{name}.group_mw: group {group_id!r} has no entry in ancillary.groups")
                if group.response_s > rules["deadline_s"]:
                    raise ValueError(f"products.{name}.group_mw.{group_id}: response_s {group.response_s:g} s is "
                                     f"slower than the product's {rules['deadline_s']:g} s ({rules['source']})")
                if rules["needs_under_frequency_relay"] and not group.under_frequency_relay:
                    raise ValueError(f"products.{name}.group_mw.{group_id}: {name} from a Load Resource needs "
                                     f"under_frequency_relay: true ({rules['source']})")
        return self
