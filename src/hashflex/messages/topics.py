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
        """``hashflex/<site>/``: every topic of the site starts with it."""
        return f"hashflex/{self.site}/"

    @property
    def inbound_filter(self) -> str:
        """The subscription filter for every inbound topic of the site (``hashflex/<site>/in/#``)."""
        return f"{self.prefix}in/#"

    @property
    def price(self) -> str:
        """``in/price``: settlement point prices (:class:`~hashflex.messages.PriceMessage`)."""
        return f"{self.prefix}in/price"

    def renewable(self, source_id: str) -> str:
        """``in/renewable/<source_id>``: one on-site renewable source's output.

        Parameters
        ----------
        source_id : str
            The source's id in the site profile (a topic-safe identifier).

        Returns
        -------
        str
            The full topic name.
        """
        return f"{self.prefix}in/renewable/{source_id}"

    def noise(self, receptor_id: str) -> str:
        """``in/noise/<receptor_id>``: one sound level meter's readings at a receptor.

        Parameters
        ----------
        receptor_id : str
            The receptor's id in the site profile.

        Returns
        -------
        str
            The full topic name.
        """
        return f"{self.prefix}in/noise/{receptor_id}"

    @property
    def carbon(self) -> str:
        """``in/carbon``: grid carbon intensity."""
        return f"{self.prefix}in/carbon"

    @property
    def hashprice(self) -> str:
        """``in/hashprice``: hashprice in $/PH/day."""
        return f"{self.prefix}in/hashprice"

    @property
    def dr(self) -> str:
        """``in/dr``: demand-response events."""
        return f"{self.prefix}in/dr"

    @property
    def limits(self) -> str:
        """``in/limits``: site managers' limits changes."""
        return f"{self.prefix}in/limits"

    def telemetry(self, miner_id: str) -> str:
        """``in/telemetry/<miner_id>``: one miner's telemetry.

        Parameters
        ----------
        miner_id : str
            The miner's id (``profile`` naming rule).

        Returns
        -------
        str
            The full topic name.
        """
        return f"{self.prefix}in/telemetry/{miner_id}"

    def setpoint(self, miner_id: str) -> str:
        """``out/setpoint/<miner_id>``: what one miner should do until its setpoint expires.

        Parameters
        ----------
        miner_id : str
            The miner's id.

        Returns
        -------
        str
            The full topic name.
        """
        return f"{self.prefix}out/setpoint/{miner_id}"

    @property
    def schedule(self) -> str:
        """``out/schedule``: the plan the site runs."""
        return f"{self.prefix}out/schedule"

    @property
    def status(self) -> str:
        """``out/status``: the controller's status document."""
        return f"{self.prefix}out/status"

    @property
    def dr_ack(self) -> str:
        """``out/dr/ack``: acknowledgements of DR events."""
        return f"{self.prefix}out/dr/ack"

    def topic_for(self, message: InboundMessage) -> str:
        """The inbound topic a message belongs on.

        Parameters
        ----------
        message : InboundMessage
            Any inbound model; keyed kinds (renewable, noise, telemetry) put their key in the topic, AS
            awards and deployments go on ``in/as/award`` / ``in/as/deploy``.

        Returns
        -------
        str
            The full topic name, e.g. ``hashflex/west/in/noise/r1``.
        """
        if isinstance(message, (RenewableMessage, NoiseMessage, TelemetryMessage)):
            return f"{self.prefix}in/{message.kind}/{message.key}"
        if isinstance(message, (ASAwardMessage, ASDeployMessage)):
            return f"{self.prefix}in/as/{message.kind.removeprefix('as_')}"
        return f"{self.prefix}in/{message.kind}"

