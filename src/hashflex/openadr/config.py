"""VEN and webhook configuration (dataclasses + ``from_env``).

Environment (all optional except the VEN name): ``HASHFLEX_OPENADR_VEN_NAME`` (required),
``_RESOURCES``, ``_TARGETS``, ``_PROGRAMS``, ``_AS_PROGRAMS`` (comma lists), ``_ISSUER``, ``_POLL_S``,
``_OUTBOX`` (JSON file). ``_AS_PROGRAMS``: the ``programName`` s of the QSE's programs, whose events
are ancillary-service awards and deployments (:mod:`hashflex.openadr.ancillary`), never DR.
The webhook is on when ``HASHFLEX_OPENADR_WEBHOOK_PORT`` is set:

- ``_WEBHOOK_HOST``: bind address, default ``127.0.0.1`` (loopback: a reverse proxy or the TLS
  listener below faces the VTN). A non-loopback address without TLS is refused.
- ``_WEBHOOK_CERT`` and ``_WEBHOOK_KEY``: PEM certificate chain and key; together they turn TLS on
  (the Definition: "The VEN client MUST use HTTPS for the webhook callback URL").
- ``_WEBHOOK_URL``: the public callback URL the VTN calls; it must be ``https://`` (default: built
  from host and port, ``https`` with TLS). A plain-HTTP local listener behind a TLS-terminating proxy
  is fine as long as this URL is HTTPS.
- ``_WEBHOOK_TOKEN``: bearer token the VTN must send (default: 32 random bytes, new at each start).
- ``_WEBHOOK_MAX_BODY``: largest notification body in bytes (default 1 MiB).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from hashflex.messages import DRProgram

__all__ = ["VENConfig", "WebhookConfig", "is_loopback", "server_tls_context"]

DEFAULT_MAX_BODY_BYTES = 1 << 20  # a notification carries one event: far below 1 MiB


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_tls_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+) from PEM files. Raises ``ValueError`` naming the file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"HASHFLEX_OPENADR_WEBHOOK_CERT/_KEY ({cert_file}, {key_file}): {exc}") from exc
    return context


@dataclass(frozen=True)
class WebhookConfig:
    """The webhook listener. ``ssl_context`` None means plain HTTP, allowed only on loopback (behind a
    TLS-terminating proxy whose HTTPS address is ``public_url``)."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    public_url: str | None = None  # what the VTN calls; default <scheme>://host:port/openadr/callback
    bearer_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    ssl_context: Any = None  # an ssl.SSLContext: serve HTTPS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    read_timeout_s: float = 10.0  # per socket operation: a silent or dripping client is dropped
    allow_http_callback: bool = False  # lab only: subscribe with an http:// callback URL

    def __post_init__(self) -> None:
        if self.ssl_context is None and not is_loopback(self.host):
            raise ValueError(f"webhook host {self.host!r}: plain HTTP is only served on loopback; give "
                             "HASHFLEX_OPENADR_WEBHOOK_CERT and _KEY for TLS, or bind 127.0.0.1 behind a TLS proxy")
        if self.max_body_bytes <= 0:
            raise ValueError(f"webhook max_body_bytes {self.max_body_bytes}: must be positive")
        if self.public_url is not None and not self.public_url.startswith("https://") and not self.allow_http_callback:
            raise ValueError(f"webhook public_url {self.public_url!r}: must be https:// (the Definition: the VEN "
                             "MUST use HTTPS for the webhook callback URL)")
        if not self.bearer_token:
            raise ValueError("webhook bearer_token: must not be empty")


@dataclass(frozen=True)
class VENConfig:
    """What the VEN needs to know about itself and the utility's programs."""

    ven_name: str
    resource_names: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()  # extra target strings agreed with the utility
    program_names: tuple[str, ...] | None = None  # None: every program the VTN shows this VEN
    issuer: str | None = None  # hashflex issuer name (must be in profile.dr.issuers); None: the program id
    # programName of the QSE's AS programs (awards and deployments, issuer profile.ancillary.issuer);
    # must agree with the profile's ancillary.openadr_programs once the profile has that field.
    as_program_names: tuple[str, ...] = ()
    dr_program: DRProgram = DRProgram.UTILITY
    poll_interval_s: float = 30.0
    poll_interval_with_webhook_s: float = 300.0
    reenrol_interval_s: float = 3600.0
    horizon: timedelta = timedelta(days=2)  # how far looping events are unrolled
    report_resource_name: str | None = None  # default: the first resource name, else the ven name
    outbox_path: Path | None = None
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    honour_randomize_start: bool = True
    webhook: WebhookConfig | None = None
    seed: int | None = None
    max_rejections_kept: int = 200  # the newest rejected events (with reasons) kept for /status

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> VENConfig:
        """Read the ``HASHFLEX_OPENADR_*`` variables (module docstring). Raises ``ValueError`` naming
        the variable for a missing VEN name or an unusable webhook setting."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return env.get(f"HASHFLEX_OPENADR_{name}") or None

        def names(name: str) -> tuple[str, ...]:
            return tuple(x.strip() for x in (get(name) or "").split(",") if x.strip())

        values: dict[str, Any] = {"ven_name": get("VEN_NAME"), "resource_names": names("RESOURCES"),
                                  "targets": names("TARGETS"), "program_names": names("PROGRAMS") or None,
                                  "issuer": get("ISSUER"), "as_program_names": names("AS_PROGRAMS")}
        if get("POLL_S"):
            values["poll_interval_s"] = _number("HASHFLEX_OPENADR_POLL_S", get("POLL_S"))
        if get("OUTBOX"):
            values["outbox_path"] = Path(get("OUTBOX") or "")
        if get("WEBHOOK_PORT"):
            values["webhook"] = _webhook_from_env(get)
        values.update(overrides)
        if not values.get("ven_name"):
            raise ValueError("HASHFLEX_OPENADR_VEN_NAME: required (the venName the utility provisioned)")
        return cls(**values)


def _number(name: str, text: str | None) -> float:
    try:
        return float(text or "")
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a number") from None


def _webhook_from_env(get: Any) -> WebhookConfig:
    port = int(_number("HASHFLEX_OPENADR_WEBHOOK_PORT", get("WEBHOOK_PORT")))
    if not 0 <= port <= 65535:
        raise ValueError(f"HASHFLEX_OPENADR_WEBHOOK_PORT: {port} is not a TCP port")
    hook: dict[str, Any] = {"host": get("WEBHOOK_HOST") or "127.0.0.1", "port": port, "public_url": get("WEBHOOK_URL")}
    cert, key = get("WEBHOOK_CERT"), get("WEBHOOK_KEY")
    if bool(cert) != bool(key):
        raise ValueError("HASHFLEX_OPENADR_WEBHOOK_CERT and HASHFLEX_OPENADR_WEBHOOK_KEY: give both for TLS")
    if cert and key:
        hook["ssl_context"] = server_tls_context(cert, key)
    if get("WEBHOOK_TOKEN"):
        hook["bearer_token"] = get("WEBHOOK_TOKEN")
    if get("WEBHOOK_MAX_BODY"):
        hook["max_body_bytes"] = int(_number("HASHFLEX_OPENADR_WEBHOOK_MAX_BODY", get("WEBHOOK_MAX_BODY")))
    try:
        return WebhookConfig(**hook)
    except ValueError as exc:
        raise ValueError(f"HASHFLEX_OPENADR_WEBHOOK_*: {exc}") from exc
