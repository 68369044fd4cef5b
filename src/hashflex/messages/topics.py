"""Topic names of one site (``hashflex/<site>/in/...``, ``.../out/...``): :class:`Topics`.

Seam: building and routing topic strings; parsing a payload by its topic is :mod:`.parse`.
Split from ``messages.py`` (issue 11).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hashflex.messages.base import _ID_PATTERN
from hashflex.messages.inbound import (
    ASAwardMessage,
    ASDeployMessage,
    InboundMessage,
    NoiseMessage,
    RenewableMessage,
    TelemetryMessage,
)

__all__ = ["Topics"]


@dataclass(frozen=True)
class Topics:
    """Topic names for one site: ``Topics("west").noise("r1") == "hashflex/west/in/noise/r1"``."""

    site: str

    def __post_init__(self) -> None:
        if not re.match(_ID_PATTERN, self.site):
            raise ValueError(f"site {self.site!r}: not a valid topic level")

    @property
    def prefix(self) -> str:
        return f"hashflex/{self.site}/"

    @property
    def inbound_filter(self) -> str:
        return f"{self.prefix}in/#"

    @property
    def price(self) -> str:
        return f"{self.prefix}in/price"

    def renewable(self, source_id: str) -> str:
        return f"{self.prefix}in/renewable/{source_id}"

    def noise(self, receptor_id: str) -> str:
        return f"{self.prefix}in/noise/{receptor_id}"

    @property
    def carbon(self) -> str:
        return f"{self.prefix}in/carbon"

    @property
    def hashprice(self) -> str:
        return f"{self.prefix}in/hashprice"

    @property
    def dr(self) -> str:
        return f"{self.prefix}in/dr"

    @property
    def limits(self) -> str:
        return f"{self.prefix}in/limits"

    def telemetry(self, miner_id: str) -> str:
        return f"{self.prefix}in/telemetry/{miner_id}"

    def setpoint(self, miner_id: str) -> str:
        return f"{self.prefix}out/setpoint/{miner_id}"

    @property
    def schedule(self) -> str:
        return f"{self.prefix}out/schedule"

    @property
    def status(self) -> str:
        return f"{self.prefix}out/status"

    @property
    def dr_ack(self) -> str:
        return f"{self.prefix}out/dr/ack"

    def topic_for(self, message: InboundMessage) -> str:
        """The inbound topic a message belongs on."""
        if isinstance(message, (RenewableMessage, NoiseMessage, TelemetryMessage)):
            return f"{self.prefix}in/{message.kind}/{message.key}"
        if isinstance(message, (ASAwardMessage, ASDeployMessage)):
            return f"{self.prefix}in/as/{message.kind.removeprefix('as_')}"
        return f"{self.prefix}in/{message.kind}"

