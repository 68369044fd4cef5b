"""Validating one inbound payload: :func:`parse_message` turns ``(topic, payload)`` into a model or
a :class:`Rejection`, never raising; :func:`payload_preview` is the stored form of a refused payload.

Seam: the wire boundary (topic grammar, size limit, strict JSON, key check) on top of the models
of :mod:`.inbound`; split from ``messages.py`` (issue 11).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import ValidationError

from hashflex.messages.inbound import INBOUND_MODELS, InboundMessage

__all__ = ["MAX_PAYLOAD_BYTES", "Rejection", "parse_message", "payload_preview"]

# Kinds whose topic carries the series key as a last level, and the payload field it must match.
_KEYED_KINDS = {"renewable": "source_id", "noise": "receptor_id", "telemetry": "miner_id"}
_TOPIC_RE = re.compile(r"^hashflex/([^/]+)/in/([^/]+)(?:/([^/]+))?$")
_PAYLOAD_PREVIEW_CHARS = 200
_MAX_ERRORS_IN_REASON = 3
MAX_PAYLOAD_BYTES = 1_000_000


@dataclass(frozen=True)
class Rejection:
    """A payload that was not accepted. ``reason`` names the kind and the field path.

    ``rule`` is the reason *class*, a short label from a bounded set for counters and metrics (never
    the value, never a field name taken from the payload): ``topic``, ``oversize``, ``schema:<pydantic
    error type>``, ``key_mismatch``, ``error``, or from :mod:`hashflex.plausibility`
    ``out_of_bounds:<field>``, ``unknown_id:<field>``, ``stale:<field>``, ``future:<field>``.
    """

    topic: str
    reason: str
    payload: str  # the raw payload, decoded leniently and truncated
    kind: str | None = None
    rule: str = "unspecified"


def payload_preview(payload: bytes | str) -> str:
    """The payload as stored with a rejection: decoded leniently, truncated to 200 characters.

    Parameters
    ----------
    payload : bytes or str
        The raw payload; invalid UTF-8 is replaced, not refused.

    Returns
    -------
    str
        At most 200 characters, with ``…`` appended when cut.
    """
    return _preview(payload.encode("utf-8") if isinstance(payload, str) else bytes(payload))


def _preview(payload: bytes) -> str:
    text = payload[: _PAYLOAD_PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
    if len(text) > _PAYLOAD_PREVIEW_CHARS or len(payload) > _PAYLOAD_PREVIEW_CHARS * 4:
        return text[:_PAYLOAD_PREVIEW_CHARS] + "…"
    return text


def _explain(kind: str, error: ValidationError) -> str:
    parts = []
    errors = error.errors(include_url=False, include_input=False)
    for err in errors[:_MAX_ERRORS_IN_REASON]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "json_invalid":
            parts.append(f"{kind}: payload: {msg}")
        elif loc:
            parts.append(f"{kind}: {loc}: {msg}")
        else:
            parts.append(f"{kind}: {msg}")
    if len(errors) > _MAX_ERRORS_IN_REASON:
        parts.append(f"(+{len(errors) - _MAX_ERRORS_IN_REASON} more)")
    return "; ".join(parts)


def _schema_rule(error: ValidationError) -> str:
    """``schema:<type>`` of the first error: pydantic's error types are a fixed set, unlike field
    paths, which an extra key in the payload could make unbounded."""
    try:
        first = error.errors(include_url=False, include_input=False)[0]["type"]
    except (IndexError, KeyError):
        first = "unknown"
    return f"schema:{first}"


def parse_message(topic: str, payload: bytes | str, *, site: str | None = None) -> InboundMessage | Rejection:
    """Validate one inbound payload against the model its topic names. Never raises.

    Returns the model, or a :class:`Rejection` for an unknown topic, another site's topic (when
    ``site`` is given), an oversized payload, bad JSON, a schema error, or a topic/payload key mismatch.

    Parameters
    ----------
    topic : str
        ``hashflex/<site>/in/<kind>[/<key>]`` (``in/as/award`` and ``in/as/deploy`` for AS).
    payload : bytes or str
        JSON, validated in pydantic's strict mode; at most :data:`MAX_PAYLOAD_BYTES` bytes.
    site : str, optional
        When given, a topic of another site is rejected.

    Returns
    -------
    InboundMessage or Rejection
        The validated model, or the rejection with a reason naming the kind and field and a bounded
        ``rule`` label for metrics.
    """
    raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    match = _TOPIC_RE.match(topic)
    if match is None:
        return Rejection(topic, "topic: not an inbound hashflex topic", _preview(raw), None, "topic")
    topic_site, kind, topic_key = match.groups()
    if kind == "as" and topic_key in ("award", "deploy"):  # in/as/award, in/as/deploy (issue 15)
        kind, topic_key = f"as_{topic_key}", None
    model = INBOUND_MODELS.get(kind)
    if model is None:
        return Rejection(topic, f"topic: unknown kind {kind!r}", _preview(raw), None, "topic")
    if site is not None and topic_site != site:
        return Rejection(topic, f"topic: site {topic_site!r} is not {site!r}", _preview(raw), kind, "topic")
    key_field = _KEYED_KINDS.get(kind)
    if (key_field is None) != (topic_key is None):
        expected = f"in/{kind}/<{key_field}>" if key_field else f"in/{kind}"
        return Rejection(topic, f"topic: expected {expected}", _preview(raw), kind, "topic")
    if len(raw) > MAX_PAYLOAD_BYTES:
        return Rejection(topic, f"{kind}: payload: larger than {MAX_PAYLOAD_BYTES} bytes", _preview(raw), kind,
                         "oversize")
    try:
        message = model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        return Rejection(topic, _explain(kind, exc), _preview(raw), kind, _schema_rule(exc))
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
        return Rejection(topic, f"{kind}: payload: {type(exc).__name__}: {exc}", _preview(raw), kind, "error")
    if key_field is not None and getattr(message, key_field) != topic_key:
        reason = f"{kind}: {key_field}: topic says {topic_key!r} but payload says {getattr(message, key_field)!r}"
        return Rejection(topic, reason, _preview(raw), kind, "key_mismatch")
    return message  # type: ignore[return-value]
