"""The VEN's webhook: the callback listener (:mod:`hashflex.openadr.webhook`), subscriptions to
event changes, and notifications. A mixin of :class:`hashflex.openadr.ven.VEN`, split from
``ven.py`` (pure move)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hashflex.openadr.client import VTNError
from hashflex.openadr.models import Notification, ObjectRejected, validate_object
from hashflex.openadr.webhook import NotificationRefused, WebhookServer

__all__ = ["WebhookMixin"]

log = logging.getLogger(__name__)


class WebhookMixin:
    """Webhook and subscriptions of :class:`~hashflex.openadr.ven.VEN`."""

    def start_webhook(self) -> str:
        """Start the callback listener (:mod:`.webhook`); returns the callback URL."""
        hook = self.config.webhook
        if hook is None:
            raise ValueError("webhook: not configured")
        if self._webhook is None:
            self._webhook = WebhookServer(hook, self._on_webhook, self.counters)
            self._webhook.start()
        return self.callback_url

    def _on_webhook(self, body: Any) -> None:
        now = self.clock()
        try:  # the event inside is validated as an event (its id in the refusal), not here
            notification = validate_object(Notification, body, unchecked=("object",))
        except ObjectRejected as exc:
            self._reject("notification", "?", exc.reason, now, "objects_rejected")
            raise NotificationRefused(exc.reason) from exc
        dumped = notification.model_dump(mode="python", exclude_unset=True)
        dumped["object"] = body["object"]  # as received: the copy lost the mark of a repeated key (task H3)
        self.on_notification(dumped, now)

    @property
    def callback_url(self) -> str:
        """The URL the VTN calls (the webhook must be started)."""
        assert self._webhook is not None, "webhook not started"
        return self._webhook.url

    def subscribe(self) -> bool:
        """Subscribe to event changes of every enrolled program. False (polling only) if the VTN
        does not support subscriptions or refuses them, or the callback URL is not HTTPS."""
        assert self.enrolment is not None and self.config.webhook is not None
        url = self.callback_url
        if not url.startswith("https://") and not self.config.webhook.allow_http_callback:
            self._last_error = f"webhook callback {url}: not HTTPS (the spec requires it); polling only"
            log.error("OpenADR %s", self._last_error)
            self.subscription_ids = []
            return False
        try:
            for old in self.client.subscriptions(self.config.ven_name):
                if not isinstance(old, dict):
                    continue
                if any(isinstance(op, dict) and op.get("callbackUrl") == url for op in old.get("objectOperations") or []):
                    self.client.delete_subscription(str(old["id"]))
            self.subscription_ids = []
            for program_id in self.enrolment.programs:
                created = self.client.create_subscription({
                    "clientName": self.config.ven_name, "programID": program_id,
                    "objectOperations": [{"objects": ["EVENT"], "operations": ["CREATE", "UPDATE", "DELETE"],
                                          "callbackUrl": url, "bearerToken": self.config.webhook.bearer_token}],
                    **({} if self.client.config.api_version.startswith("3.0") else {"targets": self.my_targets})})
                self.subscription_ids.append(str(created.get("id")) if isinstance(created, dict) else "?")
        except VTNError as exc:
            log.warning("OpenADR subscription failed (%s): polling every %.0f s", exc, self.config.poll_interval_s)
            self.subscription_ids = []
            return False
        return True

    def on_notification(self, notification: Mapping[str, Any], now: datetime) -> int:
        """One VTN notification: an EVENT create/update is processed, a DELETE cancels."""
        self.counters["notifications"] += 1
        if notification.get("objectType") != "EVENT" or not isinstance(notification.get("object"), dict):
            return 0
        event = notification["object"]
        if notification.get("operation") == "DELETE":
            return self.cancel_event(str(event.get("id")), now,
                                     reason=f"OpenADR event {event.get('id')} deleted (VTN notification)")
        if self.enrolment is None:
            return 0
        return self._process_isolated(event, now)

    @property
    def push_active(self) -> bool:
        """True while subscriptions are in place (polling then slows to ``poll_interval_with_webhook_s``)."""
        return bool(self.subscription_ids)
