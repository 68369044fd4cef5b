"""OpenADR 3 events of the QSE's programs → ancillary-service awards and deployments (issue 15).

Pure: no network, no clock (``now`` is passed in). The VEN (:mod:`hashflex.openadr.ven_ancillary`)
feeds the results to the control loop's own AS handlers (``handle_as_award``, ``handle_as_deploy``),
the same decide → commit → acknowledge path as MQTT ``in/as/award`` and ``in/as/deploy``.

The mapping chosen, and why (UG = User Guide 3.1.1, DEF = Definition 3.1.1, YAML = openadr3-*.yaml)
--------------------------------------------------------------------------------------------------
OpenADR 3 has no enumerated payload type for a reserve award (DEF, Table 1 "Event Enumerations": the
capacity types — ``IMPORT_CAPACITY_SUBSCRIPTION``, ``IMPORT_CAPACITY_RESERVATION`` ... — describe
import capacity *granted to* a customer, the opposite of an obligation to be able to shed load), so
hashflex does not bend one of them into a meaning it does not have. Instead:

- **Who**: only events of the programs configured as the site's AS issuer (by ``programName``; see
  :class:`~hashflex.openadr.config.VENConfig` ``as_program_names`` and the profile's ``ancillary``
  section). They are handed to the loop with ``issuer = profile.ancillary.issuer`` (the QSE), which
  the loop checks like any AS message. An event of any other program is DR and never an award: its
  AS payloads are "unsupported" (counted), as before.
- **Which product**: the program names it. DEF, program: "programType: User defined string
  categorizing the program, e.g. "PRICING_TARIFF"" (3.0.1 ``programType``; in 3.1.1 the program
  attribute ``PROGRAM_TYPE``, "A program defined categorization", enumerations
  program-attributes.schema.yaml). Values: ``ERCOT_AS_RRS``, ``ERCOT_AS_ECRS``, ``ERCOT_AS_NSPIN``
  (:data:`AS_PROGRAM_TYPES`) — one program per product, as ERCOT awards and deploys each product on
  its own. A program of the AS issuer without one of these is refused (every event, with the reason).
- **Award** = MW per product per interval: the private payload type ``AS_AWARD`` (YAML
  payloadType: "See enumerations in Definitions for defined string values, or use privately defined
  strings"), one non-negative value per interval, units ``KW``, ``W`` or ``MW`` **required** in the
  event's or program's payloadDescriptor (a reserve read in the wrong unit is off by 1,000). Each
  interval becomes one ``ASAwardMessage``: ``award_id = <event base>:<interval id>`` (as DR ids,
  :func:`hashflex.openadr.mapping.to_message_id`), ``revision`` = the modification number, start/end
  = the interval. An award needs a finite interval (PT0S is refused for it). Optional
  ``AS_AWARD_PRICE`` in the same interval: the clearing price, currency USD, units ``MW`` (default:
  $ per MW per hour, ERCOT's MCPC unit) or ``KW``. A withdrawn interval (event cancelled per UG 7.9,
  deleted, or the interval removed) is sent again with ``reserve_kw`` 0 and a higher revision (the
  award message's "``reserve_kw`` 0 withdraws it").
- **Deployment** = a dispatch of the program's product with MW and start: the enumerated
  ``DISPATCH_SETPOINT_RELATIVE`` (DEF: "The relative change of consumption by a resource ... used to
  dispatch a resource's load"). The enumeration schema (event-interval-payloads.schema.yaml) gives
  its value ``minimum: 0``, so the sign cannot carry a direction: in an AS program it is the
  *reduction* in consumption (a Load Resource is deployed only by shedding), units required as for
  awards. The interval's start is the instruction time (``issued_at``; the loop's product deadline
  runs from it); the VEN sends it once the start has come. A PT0S duration means until recalled
  (YAML 3.0.1 intervalPeriod: "A duration of default PT0S indicates instantaneous or infinity,
  depending on payloadType": a dispatch is a state). A finite interval end, a cancellation or a
  deletion recalls it; without one it holds until ``ancillary.max_hold_h`` from its instruction
  (flagged ``as_overrun`` past the product's sustain duration, ``profile.AS_PRODUCT_RULES``). A modified event (3.0.1 ``PUT /events/{eventID}``, "updateEvent"; the event object
  has no modification counter, its ``modificationDateTime`` — "VTN provisioned on object
  modification" — orders the versions) amends a sent deployment: the same id with a higher
  ``revision`` and the new MW (:mod:`hashflex.openadr.ven_ancillary`); an older version is stale
  and refused. A start moved once the deployment is in force changes nothing.
- **Malformed**: an event that does not validate, whose program names no product, or whose AS
  payload has no usable units is refused as a whole with the reason; an interval with a bad value
  (not one non-negative number, an open-ended award) is refused alone (``rejected_intervals``).
- Timing (``0001-01-01`` = now, loops, randomizeStart, cancellation) follows
  :mod:`hashflex.openadr.timing` exactly as for DR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from hashflex.messages import ASAwardMessage, ASDeployMessage
from hashflex.openadr.mapping import POWER_KW, payload_descriptors, single_number, to_message_id
from hashflex.openadr.models import ObjectRejected, validate_event
from hashflex.openadr.timing import (
    STATE_TYPES,
    ResolvedInterval,
    is_cancelled,
    modification_number,
    parse_datetime,
    resolve_intervals,
)

__all__ = ["AS_PAYLOAD_TYPES", "AS_PROGRAM_TYPES", "AWARD", "AWARD_PRICE", "DEPLOY", "MappedASEvent",
           "PlannedDeployment", "map_as_event", "program_product", "recall_message"]

AS_PROGRAM_TYPES: dict[str, str] = {"ERCOT_AS_RRS": "RRS", "ERCOT_AS_ECRS": "ECRS", "ERCOT_AS_NSPIN": "NSPIN"}
AWARD = "AS_AWARD"  # private payload type (YAML: "or use privately defined strings")
AWARD_PRICE = "AS_AWARD_PRICE"  # private: USD per MW (default) or per kW, per hour
DEPLOY = "DISPATCH_SETPOINT_RELATIVE"  # enumerated (DEF Table 1): the reduction, in an AS program
AS_PAYLOAD_TYPES = frozenset({AWARD, AWARD_PRICE, DEPLOY})
_AS_STATE_TYPES = STATE_TYPES | {DEPLOY, AWARD}  # PT0S: until recalled (an award then is refused: no end)
_PRICE_PER_MW_H = {"MW": 1.0, "KW": 1000.0}


def program_product(program: Mapping[str, Any] | None) -> str:
    """The AS product an AS-issuer program names.

    Parameters
    ----------
    program : Mapping or None
        The program object as the VTN returns it: 3.0.1 ``programType`` or 3.1.1 ``attributes``
        entry of type ``PROGRAM_TYPE`` (DEF, program; program-attributes.schema.yaml).

    Returns
    -------
    str
        ``"RRS"``, ``"ECRS"`` or ``"NSPIN"`` (:data:`AS_PROGRAM_TYPES`).

    Raises
    ------
    ValueError
        Naming the field: no program type, or one that is not (exactly one) AS product.
    """
    program = program or {}
    found: list[Any] = []
    if program.get("programType") is not None:
        found.append(program["programType"])
    for attribute in program.get("attributes") or []:
        if isinstance(attribute, Mapping) and attribute.get("type") == "PROGRAM_TYPE":
            found.extend(attribute.get("values") or [])
    if not found:
        raise ValueError(f"programType: program {program.get('programName')!r} of the AS issuer names no product "
                         f"(programType or attribute PROGRAM_TYPE: one of {', '.join(AS_PROGRAM_TYPES)})")
    products = {AS_PROGRAM_TYPES.get(v) if isinstance(v, str) else None for v in found}
    if None in products or len(products) != 1:
        raise ValueError(f"programType: {found!r} is not one of {', '.join(AS_PROGRAM_TYPES)} "
                         f"(program {program.get('programName')!r})")
    return str(products.pop())


@dataclass(frozen=True)
class PlannedDeployment:
    """One deployment an AS event asks for: shed ``deployed_kw`` of ``product`` from ``start``.

    Attributes
    ----------
    deployment_id : str
        ``<event base>:<interval id>`` (a hashflex Identifier).
    product : str
        ``RRS``, ``ECRS`` or ``NSPIN``.
    start : datetime
        The instruction time (UTC): the interval's start.
    end : datetime or None
        When it is recalled (the interval's end); None: until recalled or the product's sustain
        duration has passed.
    deployed_kw : float
        The reduction asked, kW (>= 0).
    """

    deployment_id: str
    product: str
    start: datetime
    end: datetime | None
    deployed_kw: float

    def deploy_message(self, issuer: str, revision: int = 0) -> ASDeployMessage:
        """The ``in/as/deploy`` message for this deployment, from ``issuer`` (the QSE).

        Parameters
        ----------
        issuer : str
            ``profile.ancillary.issuer``.
        revision : int
            The event version's number (``modificationDateTime``, see
            :func:`hashflex.openadr.ven_events.event_version`): a later version amends under a
            higher one.

        Returns
        -------
        ASDeployMessage
            ``issued_at`` = ``start``.
        """
        return ASDeployMessage(deployment_id=self.deployment_id, product=self.product, issued_at=self.start,
                               deployed_kw=self.deployed_kw, issuer=issuer, revision=revision)

    def same_terms(self, message: ASDeployMessage) -> bool:
        """True when ``message`` (sent before) deploys the same MW from the same start."""
        return message.issued_at == self.start and abs(message.deployed_kw - self.deployed_kw) < 1e-9


def recall_message(deployment_id: str, product: str, issuer: str, at: datetime) -> ASDeployMessage:
    """The recall of a deployment at ``at`` (UTC): the same id with ``recalled`` true.

    Parameters
    ----------
    deployment_id, product, issuer : str
        As in the deployment being recalled.
    at : datetime
        When the obligation ends (the interval's end, or now for a cancellation).

    Returns
    -------
    ASDeployMessage
    """
    return ASDeployMessage(deployment_id=deployment_id, product=product, issued_at=at, deployed_kw=0.0,
                           recalled=True, issuer=issuer)


@dataclass
class MappedASEvent:
    """What one event of an AS-issuer program asks of the site.

    Attributes
    ----------
    oadr_event_id : str
        The OpenADR event id.
    product : str or None
        The program's product; None when the event was refused before it was known.
    awards : list of ASAwardMessage
        One per finite ``AS_AWARD`` interval, not yet over.
    deployments : list of PlannedDeployment
        One per ``DISPATCH_SETPOINT_RELATIVE`` interval.
    intervals : list of ResolvedInterval
        The event's intervals with absolute times (for reports).
    unsupported : list of str
        Payload types an AS program does not use (ignored, counted by the VEN).
    cancelled : bool
        UG 7.9 cancellation: everything the event asked is withdrawn or recalled.
    rejected : str or None
        Why the whole event is refused (nothing else is set).
    rejected_intervals : list of str
        ``"interval <id>: why"`` for intervals refused alone.
    warnings : list of str
        Accepted with a doubt (a naive ``modificationDateTime``).
    """

    oadr_event_id: str
    product: str | None = None
    awards: list[ASAwardMessage] = field(default_factory=list)
    deployments: list[PlannedDeployment] = field(default_factory=list)
    intervals: list[ResolvedInterval] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    cancelled: bool = False
    rejected: str | None = None
    rejected_intervals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _power_factor(descriptors: Mapping[str, Mapping[str, Any]], kind: str) -> float:
    units = descriptors.get(kind, {}).get("units")
    if not isinstance(units, str) or units.upper() not in POWER_KW:
        raise ValueError(f"payloadDescriptors: {kind} needs units KW, W or MW (got {units!r}); a reserve read in "
                         "the wrong unit is off by 1,000")
    return POWER_KW[units.upper()]


def _price_factor(descriptors: Mapping[str, Mapping[str, Any]]) -> float:
    descriptor = descriptors.get(AWARD_PRICE, {})
    currency = str(descriptor.get("currency") or "USD").upper()
    units = str(descriptor.get("units") or "MW").upper()
    if currency != "USD" or units not in _PRICE_PER_MW_H:
        raise ValueError(f"payloadDescriptors: {AWARD_PRICE} in USD per MW or per KW (got {currency} per {units})")
    return _PRICE_PER_MW_H[units]


def _reduction(values: Sequence[Any], kind: str) -> float:
    value = single_number(values)
    if value is None or value < 0:
        raise ValueError(f"{kind} value {list(values)!r}: not one non-negative number")
    return value


def map_as_event(event: Mapping[str, Any], now: datetime, *, program: Mapping[str, Any] | None, issuer: str,
                 horizon: timedelta = timedelta(days=2), modification: int | None = None,
                 random_offset: timedelta = timedelta(0),
                 interval_offsets: Mapping[int, timedelta] | None = None) -> MappedASEvent:
    """Map one event of an AS-issuer program to awards and deployments. Never raises.

    Parameters
    ----------
    event : Mapping
        The event as the VTN returns it (validated here against ``models.Event``).
    now : datetime
        Current time, UTC (``0001-01-01`` starts are read as now; awards already over are left out).
    program : Mapping or None
        The event's program (its product, its payloadDescriptors).
    issuer : str
        The QSE's identity, ``profile.ancillary.issuer``: the messages' ``issuer``.
    horizon : timedelta
        How far looping events are unrolled.
    modification : int, optional
        The award revision; default: from ``modificationDateTime`` (whole seconds since 2020).
    random_offset, interval_offsets : timedelta, mapping
        randomizeStart offsets drawn by the VEN (UG 7.3).

    Returns
    -------
    MappedASEvent
        ``rejected`` set (and nothing else) when the whole event is refused.
    """
    event_id = str(event.get("id")) if isinstance(event, Mapping) else "?"
    result = MappedASEvent(event_id)
    try:
        validate_event(event)
        result.product = program_product(program)
        modified = event.get("modificationDateTime")
        try:
            parse_datetime(modified)
        except ValueError as exc:
            result.warnings.append(f"modificationDateTime: {exc}; read as UTC")
        number = modification_number(modified) if modification is None else modification
        if is_cancelled(event):
            result.cancelled = True
            return result
        descriptors = payload_descriptors(event, program)
        kinds = {str(p.get("type")) for i in event.get("intervals") or [] for p in i.get("payloads") or []}
        factors = {kind: _power_factor(descriptors, kind) for kind in (AWARD, DEPLOY) if kind in kinds}
        price_factor = _price_factor(descriptors) if AWARD_PRICE in kinds else 1.0
        result.intervals = resolve_intervals(event, now, random_offset=random_offset,
                                             interval_offsets=interval_offsets, horizon=horizon,
                                             errors=result.rejected_intervals, state_types=_AS_STATE_TYPES)
    except ObjectRejected as exc:
        result.rejected = f"invalid event: {exc.reason}"
        return result
    except (ValueError, OverflowError, TypeError) as exc:
        result.rejected = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        return result
    for interval in result.intervals:
        try:
            _map_interval(result, interval, event_id, number, issuer, factors, price_factor, now)
        except (ValueError, ValidationError) as exc:
            if isinstance(exc, ValidationError):
                error = exc.errors()[0]
                reason = f"{'.'.join(str(p) for p in error['loc']) or 'message'}: {error['msg']}"
            else:
                reason = str(exc)
            result.rejected_intervals.append(f"interval {interval.interval_id}: {reason}")
    return result


def _map_interval(result: MappedASEvent, interval: ResolvedInterval, event_id: str, number: int, issuer: str,
                  factors: Mapping[str, float], price_factor: float, now: datetime) -> None:
    if interval.end is not None and interval.end <= interval.start:
        return  # an empty interval asks nothing
    assert result.product is not None
    ident = to_message_id(event_id, interval.interval_id)
    for kind in interval.payloads:
        if kind not in AS_PAYLOAD_TYPES:
            result.unsupported.append(f"payload type {kind} in an AS program")
    if AWARD in interval.payloads:
        reserve_kw = _reduction(interval.payloads[AWARD], AWARD) * factors[AWARD]
        if interval.end is None:
            raise ValueError(f"{AWARD}: an award needs a finite interval (a start and a duration other than PT0S)")
        price = None
        if AWARD_PRICE in interval.payloads:
            value = single_number(interval.payloads[AWARD_PRICE])
            if value is None:
                raise ValueError(f"{AWARD_PRICE} value {interval.payloads[AWARD_PRICE]!r}: not one number")
            price = value * price_factor
        if interval.end > now:
            result.awards.append(ASAwardMessage(award_id=ident, revision=number, product=result.product,
                                                start=interval.start, end=interval.end, reserve_kw=reserve_kw,
                                                price_usd_mw_h=price, issuer=issuer))
    elif AWARD_PRICE in interval.payloads:
        result.unsupported.append(f"{AWARD_PRICE} without {AWARD} in interval {interval.interval_id}")
    if DEPLOY in interval.payloads:
        deployed_kw = _reduction(interval.payloads[DEPLOY], DEPLOY) * factors[DEPLOY]
        result.deployments.append(PlannedDeployment(ident, result.product, interval.start, interval.end, deployed_kw))
