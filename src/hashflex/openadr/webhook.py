"""The VEN's webhook listener: the VTN's ``?echo=`` challenge and its notifications.

Hardened for a listener a VTN (and anyone else who can reach it) talks to:

- **Token before body.** The bearer token is checked on the headers; a request without the right
  token is answered 401 and its body is never read into memory (an unauthenticated 200 MB POST costs
  nothing; at most 64 KiB are drained and discarded so the 401 reaches the client before the close).
- **Lengths.** ``Content-Length`` is required (411; ``Transfer-Encoding`` is refused with 411 too),
  must be a decimal integer ≥ 0 (400 otherwise) and at most ``max_body_bytes`` (413).
- **Time.** Every socket operation (TLS handshake included) has ``read_timeout_s``; the TLS
  handshake runs in the connection's own thread, so a silent client cannot stall the listener.
  At most ``MAX_CONNECTIONS`` connections are served at once; the rest are closed at once (counted).
- **Where.** Loopback by default; TLS when an ``ssl.SSLContext`` is configured (:mod:`config`).

Answers: 200 processed (also when hashflex itself failed to act: polling catches up), 400 not JSON or
not a valid notification (with the reason), 401 bad token, 404 other paths for GET without ``echo``.
Refusals are counted by reason in ``counters`` (``webhook_refused_<reason>``).
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
import threading
from collections.abc import Callable, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from hashflex.messages.parse import loads_marking_duplicates
from hashflex.openadr.config import WebhookConfig

__all__ = ["MAX_CONNECTIONS", "NotificationRefused", "WebhookServer"]

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 32
_DRAIN_BYTES = 64 * 1024


class NotificationRefused(ValueError):
    """Raised by the notification callback for a body that is not a valid notification (→ 400)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type, hook: WebhookConfig,
                 counters: MutableMapping[str, int]) -> None:
        self.hook, self.counters = hook, counters
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _count(self.counters, "too_many_connections")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.hook.read_timeout_s)
        if self.hook.ssl_context is None:
            super().finish_request(request, client_address)
            return
        try:  # the handshake here, in this connection's thread, under the timeout
            wrapped = self.hook.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            _count(self.counters, "tls_handshake")
            log.info("webhook: TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            try:
                wrapped.close()
            except OSError:
                pass


def _count(counters: MutableMapping[str, int], reason: str) -> None:
    key = f"webhook_refused_{reason}"
    counters[key] = counters.get(key, 0) + 1


class WebhookServer:
    """HTTP(S) listener for a VTN's webhook calls.

    ``on_notification(obj)`` gets each authenticated, size-checked, parsed JSON body; it raises
    :class:`NotificationRefused` for an invalid one. ``counters`` (shared with the VEN) receives
    ``notifications_refused`` and ``webhook_refused_<reason>`` counts."""

    def __init__(self, hook: WebhookConfig, on_notification: Callable[[Any], None],
                 counters: MutableMapping[str, int]) -> None:
        self.hook, self.on_notification, self.counters = hook, on_notification, counters
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (the listener must be started)."""
        assert self._server is not None, "webhook not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The callback URL: ``public_url`` if configured, else built from the listener."""
        if self.hook.public_url:
            return self.hook.public_url
        scheme = "https" if self.hook.ssl_context is not None else "http"
        host = f"[{self.hook.host}]" if ":" in self.hook.host else self.hook.host
        return f"{scheme}://{host}:{self.port}/openadr/callback"

    def start(self) -> str:
        """Bind and serve in a daemon thread; returns the callback URL."""
        self._server = _Server((self.hook.host, self.hook.port), self._handler(), self.hook, self.counters)
        self._thread = threading.Thread(target=self._server.serve_forever, name="openadr-webhook", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Shut the listener down and join its thread (up to 5 s)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self
        hook = self.hook
        expected = f"Bearer {hook.bearer_token}".encode()

        class Handler(BaseHTTPRequestHandler):
            timeout = hook.read_timeout_s  # StreamRequestHandler applies it to the socket

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("webhook: " + fmt, *args)

            def do_GET(self) -> None:  # the VTN's challenge when a subscription is created
                echo = parse_qs(urlparse(self.path).query).get("echo")
                if not echo:
                    self._answer(400, b"echo parameter required")
                    return
                self._answer(200, echo[0].encode())

            def do_POST(self) -> None:
                given = self.headers.get("Authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    owner.counters["notifications_refused"] = owner.counters.get("notifications_refused", 0) + 1
                    self._refuse(401, "token", b"bad bearer token")
                    return
                if self.headers.get("Transfer-Encoding") is not None:
                    self._refuse(411, "chunked", b"Content-Length required (no Transfer-Encoding)")
                    return
                raw_length = self.headers.get("Content-Length")
                if raw_length is None:
                    self._refuse(411, "no_length", b"Content-Length required")
                    return
                text = raw_length.strip()
                if not text.isdigit() or not text.isascii():
                    self._refuse(400, "bad_length", b"Content-Length: not a non-negative integer")
                    return
                length = int(text)
                if length > hook.max_body_bytes:
                    self._refuse(413, "too_large", f"body over {hook.max_body_bytes} bytes".encode())
                    return
                try:
                    raw = self.rfile.read(length)
                except (TimeoutError, OSError):
                    _count(owner.counters, "read_timeout")
                    self.close_connection = True
                    return
                if len(raw) != length:
                    self._refuse(400, "short_body", b"body shorter than Content-Length")
                    return
                try:
                    notification = loads_marking_duplicates(raw)  # repeated keys refused by validation
                except ValueError:
                    self._refuse(400, "not_json", b"not JSON")
                    return
                try:
                    owner.on_notification(notification)
                except NotificationRefused as exc:
                    self._refuse(400, "invalid", str(exc)[:2000].encode())
                    return
                except Exception:  # never fail the VTN for our own trouble; polling will catch up
                    log.exception("webhook notification failed")
                self._answer(200, b"")

            def _refuse(self, status: int, reason: str, body: bytes) -> None:
                """Answer without reading the body, then close (draining a little so the answer
                is not lost to a TCP reset)."""
                _count(owner.counters, reason)
                self.close_connection = True
                self._answer(status, body)
                try:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_WR)
                    self.connection.settimeout(0.5)
                    drained = 0
                    while drained < _DRAIN_BYTES:
                        chunk = self.connection.recv(min(16384, _DRAIN_BYTES - drained))
                        if not chunk:
                            break
                        drained += len(chunk)
                except (OSError, ValueError):
                    pass

            def _answer(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    self.close_connection = True

        return Handler
