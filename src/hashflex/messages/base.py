"""Shared building blocks of every wire model: UTC timestamps, ids safe as topic levels, the strict
base models, and the safe-default mode name ``SLEEP``.

Seam: the types every schema module (:mod:`.inbound`, :mod:`.outbound`) builds on, and nothing
that knows a topic or a payload; split from the single ``messages.py`` (issue 11).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

__all__ = ["SLEEP", "Identifier", "Text", "UtcDatetime"]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware timestamp, normalised to UTC; naive input is rejected."""

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=_ID_PATTERN)]
"""An id that is also safe as an MQTT topic level (no ``/``, ``+``, ``#``, spaces)."""
Text = Annotated[str, Field(min_length=1, max_length=512)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class _Inbound(_Message):
    kind: ClassVar[str]

    # Every inbound model defines ``key`` (series key within the kind: source, receptor, miner,
    # event id, ...) and ``observed_at`` (the UTC time the data is about); ``identity`` uses both.
    key: ClassVar[property]
    observed_at: ClassVar[property]

    @property
    def identity(self) -> tuple[Any, ...]:
        """Two messages with equal identity are duplicates; the store keeps one."""
        return (self.kind, self.key, self.observed_at)


SLEEP = "sleep"
"""The mode name of the safe default, on the wire and everywhere else: not hashing, drawing the
group's idle power. A miner whose setpoint expires goes to it."""
