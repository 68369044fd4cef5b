"""OpenADR 3 VEN: a utility's VTN enrols the site as a flexible load.

- :mod:`hashflex.openadr.client`: OAuth2 client credentials + the VTN REST calls (``requests``),
  bounded paging.
- :mod:`hashflex.openadr.models`: pydantic models of the VTN objects, checked against the spec.
- :mod:`hashflex.openadr.mapping`: pure mapping of OpenADR events to ``DREventMessage`` s, prices,
  carbon intensity and export limits; :mod:`hashflex.openadr.timing`: the spec's timing and
  duration rules (quoted there).
- :mod:`hashflex.openadr.config`: ``VENConfig`` / ``WebhookConfig`` and their environment variables.
- :mod:`hashflex.openadr.reports`: report schedule and body, the outbox.
- :mod:`hashflex.openadr.webhook`: the hardened webhook listener (HTTPS, token before body).
- :mod:`hashflex.openadr.ven`: the VEN, assembled from :mod:`~hashflex.openadr.ven_enrolment`,
  :mod:`~hashflex.openadr.ven_events` (polling, mapping, DR), :mod:`~hashflex.openadr.ven_webhook`
  (subscriptions) and :mod:`~hashflex.openadr.ven_reports`.

Every DR request goes through ``ControlLoop.handle_dr``, like MQTT DR.
"""

from hashflex.openadr.client import OpenADRClient, OpenADRConfig, VTNError, VTNUnavailable
from hashflex.openadr.config import VENConfig, WebhookConfig
from hashflex.openadr.mapping import MappedEvent, map_event
from hashflex.openadr.reports import ReportOutbox
from hashflex.openadr.ven import VEN

__all__ = ["MappedEvent", "OpenADRClient", "OpenADRConfig", "ReportOutbox", "VEN", "VENConfig", "VTNError",
           "VTNUnavailable", "WebhookConfig", "map_event"]
