"""The profile's ``ancillary`` section (issue 15): reserves as a Load Resource. Split from
`hashflex.profile` (issue 11), which re-exports every name here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from hashflex.profile.base import NonNegFloat, PositiveFloat, _Strict

# --- Ancillary services (issue 15) -----------------------------------------------------------
# The product rules hashflex models for a Load Resource that is not a Controllable Load Resource
# (a mining site registered through a QSE): ``deadline_s``, s from an instruction to full
# deployment; ``sustain_h``, h the site must be able to hold a deployment (past it a deployment
# without a recall is flagged ``as_overrun`` and still held, see ``max_hold_h`` below);
# ``needs_under_frequency_relay``, the qualification a group needs; ``source`` (quoted in refusals)
# and ``sustain_source``. Checked against ERCOT material in December 2026 (issue 15, H7), as found
# in stored copies of the pages named; what is marked NOT VERIFIED was not found in a primary text.
#
# Sustained durations (RTC+B, in force since its go-live in December 2025):
# - RRS 30 min, ECRS 1 h. NPRR1282 "Ancillary Service Duration under Real-Time Co-Optimization"
#   (https://www.ercot.com/mktrules/issues/NPRR1282; ERCOT, posted 29 Apr 2025, sections 2.2, 5.5.2,
#   8.1.1.2.1.1-3, 8.1.1.3.1, 8.1.1.3.2, 8.1.1.3.4): "Updates duration requirements for Regulation
#   Service and Responsive Reserve (RRS) to thirty minutes; and updates duration requirement for
#   ERCOT Contingency Reserve Service (ECRS) to one hour", durations "incorporated as parameters in
#   the current RTC+B business requirements". The stored copy shows it recommended for approval
#   by PRS (14 May 2025) and TAC (28 May 2025), next the Board; the Board's and the PUCT's votes were
#   not found. NPRR1339 "Protocol Clean Up and Alignment with RTC+B Implementation"
#   (https://www.ercot.com/mktrules/issues/NPRR1339; posted 29 May 2026) says NPRR1282 "set the
#   duration requirement for ECRS to one hour" and corrects sections still saying two hours "to align
#   with the as-built one-hour duration for ECRS": 1 h is what runs. Before RTC+B: RRS 1 h
#   (hashflex's earlier value; its source was not re-found) and ECRS 2 h (ERCOT market notice of
#   30 Sep 2022 on NPRR1096: ECRS "capable of being sustained for two consecutive hours").
# - Non-Spin 4 h, unchanged: the same 2022 notice (NPRR1096: "sustained for four consecutive
#   hours"); NPRR1282 does not change it, and ERCOT's RTC task-force analysis of 2025 (summarised by
#   gridmonitor.com) "did not change the initial recommendation ... that Non-Spin duration lasts at
#   least 4 hours". The Protocols' own current text (§8.1.1.2.1.3) was not found.
#
# Deployment times and qualification:
# - ECRS 10 min: NPRR1148 (https://ercot.com/mktrules/issues/NPRR1148) treats ECRS deployments from
#   Load Resources that are not Controllable Load Resources as a ten-minute linear ramp (§6.5.7.3.1
#   (2)(e), for the reliability deployment price adder), "similar to" RRS from such Load Resources.
#   The deployment paragraph itself (§6.5.7.6.2.4) was not found: the 10 minutes are NOT VERIFIED
#   against it.
# - RRS from a Load Resource: tripped by an under-frequency relay at 59.7 Hz (third-party pages only:
#   Enel X, "The Texas Demand Response Opportunity as a Load Resource"; NFM Consulting's RRS guide)
#   and within 10 minutes of an instruction (§6.5.7.6.2.2): NOT VERIFIED in a primary text; kept.
#   NPRR1282 leaves deployment times alone (durations only).
# - Non-Spin within 30 minutes (§6.5.7.6.2.3): NOT VERIFIED in a primary text (ERCOT's Non-Spin
#   deployment procedure and staff slides speak of 30-minute lead times and net load ramps); kept.
#   NPRR1339 amends §6.5.7.6.2.3 (wording on AS Responsibilities under RTC+B, as its summary says).
# - Telemetry: RTC+B's state-of-charge rules (NPRR1282's durations applied to an Energy Storage
#   Resource's state of charge; NPRR1339 drops ESRs' next-hour AS Responsibility telemetry) concern
#   batteries, not a Load Resource; hashflex models none of them.
# Sustained durations are obligations a site may tighten in its QSE agreement.
AS_PRODUCT_RULES: dict[str, dict[str, Any]] = {
    "RRS": {"deadline_s": 600.0, "sustain_h": 0.5, "needs_under_frequency_relay": True,
            "source": "Nodal Protocols §3.18, §6.5.7.6.2.2 (UFR trip at 59.7 Hz; 10 min on instruction)",
            "sustain_source": "NPRR1282 (RTC+B: RRS 30 minutes; was 1 h)"},
    "ECRS": {"deadline_s": 600.0, "sustain_h": 1.0, "needs_under_frequency_relay": False,
             "source": "Nodal Protocols §6.5.7.6.2.4, NPRR1148 (10-minute deployment)",
             "sustain_source": "NPRR1282, NPRR1339 (RTC+B: ECRS 1 hour as built; was 2 h, NPRR1096)"},
    "NSPIN": {"deadline_s": 1800.0, "sustain_h": 4.0, "needs_under_frequency_relay": False,
              "source": "Nodal Protocols §6.5.7.6.2.3 (30-minute deployment)",
              "sustain_source": "NPRR1096 (4 consecutive hours), unchanged by NPRR1282"},
}
AsProductName = Literal["RRS", "ECRS", "NSPIN"]

# How long a deployment without a recall holds at most (issue 15, third newcomer review): a deployed
# Load Resource stays deployed until ERCOT recalls it (Nodal Protocols §6.5.7.6.2.2-4: deployment and
# recall are Dispatch Instructions); ``sustain_h`` above is what it must be *able* to sustain
# (§8.1.1.2.1.x, §8.1.1.3.x; NPRR1282, NPRR1339 under RTC+B: RRS 30 min, ECRS 1 h), so hashflex
# holds a deployment past it (flagged ``as_overrun``) until the recall. A lost recall must not curtail
# the site for ever (a setpoint always expires): after ``max_hold_h`` from the instruction it
# releases, with an audit record. 8 h is the longest demand-response obligation ERCOT defines (an
# ERS deployment's eight-hour performance obligation, NPRR536, its page at
# https://ercot.com/mktrules/issues/NPRR536), twice Non-Spin's 4 h.
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
