"""Where health findings go: MQTT ``hashflex/<site>/out/alert`` and an HTTPS webhook.

Both take a :class:`~hashflex.health.detectors.Finding` (its ``as_alert()`` JSON) and never raise into
the caller: a broker or webhook that is down is counted (``failures``, ``last_error``), not fatal —
health tracking and control go on. The webhook has a short timeout, refuses redirects and sends an
optional bearer token from the environment (never from a profile file).

API: ``alert_topic(site) -> str``; ``MqttAlerter(client, site, qos=1)`` (a connected paho client) and
``WebhookAlerter(url, *, token_env="HASHFLEX_ALERT_TOKEN", timeout_s=2.0)``, each callable with a
finding, so ``HealthBook(on_alert=...)`` can take either (or :func:`fan_out` of both).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from hashflex.health.detectors import Finding

__all__ = ["MqttAlerter", "WebhookAlerter", "alert_topic", "fan_out"]


def alert_topic(site: str) -> str:
    """The MQTT topic of health alerts for ``site`` (next to ``out/status``).

    Parameters
    ----------
    site : str
        The site id.

    Returns
    -------
    str
        ``hashflex/<site>/out/alert``.
    """
    return f"hashflex/{site}/out/alert"


class _Counted:
    def __init__(self) -> None:
        self.sent = 0
        self.failures = 0
        self.last_error = ""
        self._lock = threading.Lock()

    def _count(self, error: str | None) -> None:
        with self._lock:
            if error is None:
                self.sent += 1
            else:
                self.failures += 1
                self.last_error = error


class MqttAlerter(_Counted):
    """Publishes each finding as JSON on :func:`alert_topic` (QoS 1, not retained).

    Counts ``sent`` and ``failures`` (``last_error``); never raises to the caller.

    Parameters
    ----------
    client : paho.mqtt.client.Client
        A connected client.
    site : str
    qos : int, default 1
    """

    def __init__(self, client: Any, site: str, qos: int = 1) -> None:
        super().__init__()
        self.client, self.topic, self.qos = client, alert_topic(site), qos

    def __call__(self, finding: Finding) -> None:
        """Publish one finding.

        Parameters
        ----------
        finding : Finding
        """
        try:
            info = self.client.publish(self.topic, json.dumps(finding.as_alert()), qos=self.qos)
            self._count(None if info.rc == 0 else f"publish rc {info.rc}")
        except Exception as exc:  # noqa: BLE001 - an alert channel must not break the caller
            self._count(f"{type(exc).__name__}: {exc}")


class WebhookAlerter(_Counted):
    """POSTs each finding as JSON to ``url`` (see the module docstring).

    Counts ``sent`` and ``failures`` (``last_error``); never raises to the caller.

    Parameters
    ----------
    url : str
        ``https://`` (plain ``http`` only to loopback).
    token_env : str, default "HASHFLEX_ALERT_TOKEN"
        Environment variable holding a bearer token, sent when set.
    timeout_s : float, default 2.0

    Raises
    ------
    ValueError
        ``url`` neither https nor loopback.
    """

    def __init__(self, url: str, *, token_env: str = "HASHFLEX_ALERT_TOKEN", timeout_s: float = 2.0) -> None:
        super().__init__()
        if not url.startswith(("https://", "http://127.", "http://localhost")):
            raise ValueError(f"alert webhook url: must be https:// (plain http only to loopback), got {url!r}")
        self.url, self.token_env, self.timeout_s = url, token_env, timeout_s

    def __call__(self, finding: Finding) -> None:
        """POST one finding.

        Parameters
        ----------
        finding : Finding
        """
        import requests

        headers = {"Content-Type": "application/json"}
        token = os.environ.get(self.token_env)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = requests.post(self.url, data=json.dumps(finding.as_alert()), headers=headers,
                                     timeout=self.timeout_s, allow_redirects=False)
            self._count(None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}")
        except requests.RequestException as exc:
            self._count(f"{type(exc).__name__}: {exc}")


def fan_out(channels: Iterable[Callable[[Finding], None]]) -> Callable[[Finding], None]:
    """One callable that sends a finding to every channel (each failure contained by the channel).

    Parameters
    ----------
    channels : Iterable[Callable[[Finding], None]]

    Returns
    -------
    Callable[[Finding], None]
    """
    targets = list(channels)

    def send(finding: Finding) -> None:
        for channel in targets:
            channel(finding)

    return send
