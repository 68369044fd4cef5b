"""Outbound models (``out/...`` topics): setpoints, DR and AS acknowledgements, status.

Seam: what the site says, never parsed from the wire by the site itself; split from
``messages.py`` (issue 11).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from hashflex.messages.base import Identifier, Text, UtcDatetime, _Message

__all__ = ["ASAckMessage", "DRAckMessage", "SetpointMessage", "StatusMessage"]


class ASAckMessage(_Message):
    """The answer to an AS award or deployment (``out/as/ack``); ``message_id`` is the award or
    deployment id. A deployment's ack carries the import limit it set and its deadline; an accepted recall's
    the import limit in force after it (the lowest the limits book holds, else the interconnection's).

    An accepted deployment (or amendment) also says how it arrived and what it asks against the
    award (issue 15; ``control.as_intake.deployment_flags``), so the QSE sees at once what the site
    obeyed beyond its obligation: ``late`` (it arrived after its deadline, instruction time + the
    product's deployment time; it is cut at once all the same), ``late_by_s`` (seconds past the
    deadline at arrival), ``awarded_kw`` (the product's awards in force at the instruction, kW) and
    ``above_award_kw`` (kW of the product deployed at the instruction beyond them; the full
    instruction is obeyed). None on awards, recalls and refusals. ``message_id`` is None only for a
    refused payload whose id could not be read (empty, not a JSON object, an invalid id): the QSE
    still hears that something it sent on the topic was refused (issue 15, H1 finding 6)."""

    message_id: Identifier | None
    kind: Literal["as_award", "as_deploy"]
    status: Literal["accepted", "rejected"]
    reason: Text | None = None
    acked_at: UtcDatetime
    import_limit_kw: float | None = None
    deadline: UtcDatetime | None = None
    late: bool | None = None
    late_by_s: float | None = Field(default=None, ge=0)
    awarded_kw: float | None = Field(default=None, ge=0)
    above_award_kw: float | None = Field(default=None, ge=0)



class SetpointMessage(_Message):
    """What one miner should do until expires_at; after that it falls back to its safe default."""

    miner_id: Identifier
    mode: Identifier  # an operating mode name, or "sleep"
    power_target_kw: float = Field(ge=0, le=100)
    issued_at: UtcDatetime
    expires_at: UtcDatetime

    @model_validator(mode="after")
    def _expiry(self) -> SetpointMessage:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at: must be after issued_at")
        return self


class DRAckMessage(_Message):
    """The answer to a DR event (``out/dr/ack``): accepted or rejected, with the reason when rejected."""

    event_id: Identifier
    # None only on a rejection whose payload's number could not be read (absent, negative, not an
    # integer): the ack must not claim a number the issuer never sent.
    modification_number: int | None = Field(ge=0, lt=2**31)
    status: Literal["accepted", "rejected"]
    reason: Text | None = None
    acked_at: UtcDatetime

    @model_validator(mode="after")
    def _reason_on_reject(self) -> DRAckMessage:
        if self.status == "rejected" and self.reason is None:
            raise ValueError("reason: required when status is rejected")
        return self


class StatusMessage(_Message):
    """The controller's status document (``out/status``): the site, a time and free-form fields."""

    site: Identifier
    timestamp: UtcDatetime
    fields: dict[str, Any] = Field(default_factory=dict)
