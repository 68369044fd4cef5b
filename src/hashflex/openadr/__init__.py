"""OpenADR 3 VEN: a utility's VTN enrols the site as a flexible load.

- :mod:`hashflex.openadr.client`: OAuth2 client credentials + the VTN REST calls (``requests``).
- :mod:`hashflex.openadr.mapping`: pure mapping of OpenADR events to ``DREventMessage`` s, prices,
  carbon intensity and export limits.
- :mod:`hashflex.openadr.ven`: enrolment, polling, webhook subscription, reports with an outbox.

Every DR request goes through ``ControlLoop.handle_dr``, like MQTT DR.
"""

from hashflex.openadr.client import OpenADRClient, OpenADRConfig, VTNError, VTNUnavailable
from hashflex.openadr.mapping import MappedEvent, map_event
from hashflex.openadr.ven import VEN, ReportOutbox, VENConfig, WebhookConfig

__all__ = ["MappedEvent", "OpenADRClient", "OpenADRConfig", "ReportOutbox", "VEN", "VENConfig", "VTNError",
           "VTNUnavailable", "WebhookConfig", "map_event"]
