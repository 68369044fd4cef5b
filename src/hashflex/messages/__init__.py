"""Every message on the wire, in and out, as pydantic v2 models: the one place for the schema.

Conventions
-----------
- Units are in field names (``power_kw``, ``laeq_dba``, ``price_usd_mwh``).
- Every timestamp must carry a timezone; it is normalised to UTC. Naive timestamps are rejected.
- Unknown fields are rejected (``extra="forbid"``); non-finite numbers are rejected.
- Payloads are JSON. :func:`parse_message` validates in pydantic's *strict* JSON mode, so ``"55"`` is
  not a number and ``1`` is not a boolean; building models in Python stays lax (ISO strings work).

Topics (site prefix ``hashflex/<site>/``)::

    in/price  in/renewable/<source>  in/noise/<receptor>  in/carbon  in/hashprice  in/dr  in/limits
    in/telemetry/<miner>  out/setpoint/<miner>  out/schedule  out/status  out/dr/ack
    in/as/award  in/as/deploy  out/as/ack  (ancillary services, issue 15)

Public API
----------
- Inbound models: :class:`PriceMessage`, :class:`RenewableMessage`, :class:`NoiseMessage`,
  :class:`CarbonIntensityMessage`, :class:`HashpriceMessage`, :class:`TelemetryMessage`,
  :class:`DREventMessage`, :class:`LimitsChangeMessage` (``InboundMessage`` is their union).
  Each has ``kind`` (class constant), ``key`` (series key: source, receptor, miner, event id, ...),
  ``observed_at`` (the time the data is about) and ``identity`` (what makes two messages duplicates).
- Outbound models: :class:`SetpointMessage`, :class:`DRAckMessage`, :class:`StatusMessage`.
- :class:`Topics` builds and routes topic names; :func:`parse_message` turns ``(topic, payload)``
  into a model or a :class:`Rejection`, never raising.

The schema is split by seam into submodules (issue 11): :mod:`.base` (UTC times, ids, base models,
``SLEEP``), :mod:`.inbound` (``in/...`` models), :mod:`.outbound` (``out/...`` models),
:mod:`.topics` (:class:`Topics`) and :mod:`.parse` (:func:`parse_message`, :class:`Rejection`).
Import from ``hashflex.messages``: every public name is re-exported here.
"""

from __future__ import annotations

from hashflex.messages.base import SLEEP
# importable from here as before the split (issue 11)
from hashflex.messages.base import _ID_PATTERN, Identifier, Text, UtcDatetime, _Inbound, _Message  # noqa: F401
from hashflex.messages.inbound import (
    INBOUND_MODELS,
    ASAwardMessage,
    ASDeployMessage,
    AsProduct,
    CarbonBudget,
    CarbonIntensityMessage,
    DREventMessage,
    DRProgram,
    ForecastPoint,
    HashpriceMessage,
    InboundMessage,
    LimitsChangeMessage,
    NoiseCapOverride,
    NoiseMessage,
    PriceMessage,
    RenewableMessage,
    TelemetryMessage,
)
from hashflex.messages.outbound import ASAckMessage, DRAckMessage, SetpointMessage, StatusMessage
from hashflex.messages.parse import MAX_PAYLOAD_BYTES, Rejection, parse_message, payload_preview
from hashflex.messages.topics import Topics

__all__ = [
    "ASAckMessage",
    "ASAwardMessage",
    "ASDeployMessage",
    "CarbonIntensityMessage",
    "DRAckMessage",
    "DREventMessage",
    "DRProgram",
    "ForecastPoint",
    "HashpriceMessage",
    "INBOUND_MODELS",
    "InboundMessage",
    "LimitsChangeMessage",
    "NoiseCapOverride",
    "NoiseMessage",
    "PriceMessage",
    "Rejection",
    "RenewableMessage",
    "SetpointMessage",
    "StatusMessage",
    "TelemetryMessage",
    "Topics",
    "CarbonBudget",
    "parse_message",
    "payload_preview",
    "AsProduct",
    "MAX_PAYLOAD_BYTES",
    "SLEEP",
]

