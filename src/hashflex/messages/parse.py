"""Validating one inbound payload: :func:`parse_message` turns ``(topic, payload)`` into a model or
a :class:`Rejection`, never raising; :func:`payload_preview` is the stored form of a refused payload.

Seam: the wire boundary (topic grammar, size limit, strict JSON, key check, no duplicate keys in
a command) on top of the models of :mod:`.inbound`; split from ``messages.py`` (issue 11).
:func:`refusal_rule` is the one reason class of a command the site refused, used alike by the MQTT
ingest (``/status`` ``inputs_refused``) and the control loop (``command_rejections``, ``/metrics``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pydantic import ValidationError

from hashflex.messages.inbound import INBOUND_MODELS, InboundMessage

__all__ = ["COMMAND_KINDS", "MAX_PAYLOAD_BYTES", "DuplicateKeyObject", "Rejection", "duplicate_key", "duplicate_key_in",
           "duplicate_key_reason", "loads_marking_duplicates", "parse_message", "payload_preview", "refusal_rule"]

# Kinds whose topic carries the series key as a last level, and the payload field it must match.
_KEYED_KINDS = {"renewable": "source_id", "noise": "receptor_id", "telemetry": "miner_id"}
_TOPIC_RE = re.compile(r"^hashflex/([^/]+)/in/([^/]+)(?:/([^/]+))?$")
_PAYLOAD_PREVIEW_CHARS = 200
_MAX_ERRORS_IN_REASON = 3
MAX_PAYLOAD_BYTES = 1_000_000
COMMAND_KINDS = frozenset({"dr", "limits", "as_award", "as_deploy"})
"""Kinds the control loop decides and answers (never stored by the ingest); their payloads are also
refused with a duplicated JSON key (:func:`parse_message`)."""
_REFUSAL_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,40}")
_DUPLICATE_KEY_SHOWN_CHARS = 60


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


def refusal_rule(reason: str | None, kind: str | None = None) -> str:
    """The reason class of a command the site refused: ``refused:<field>`` from the answer's reason,
    whose text starts with the field it names (``"deployed_kw: 0 kW sheds nothing"``), or
    ``refused:store_unavailable``; ``refused`` when it names none. A bounded label (never a value).

    One name for one refusal (issue 15, H1 finding 7): the MQTT ingest counts a command's refusal
    by it (``/status`` ``inputs_refused``) and the control loop counts the same refusal by it
    (``command_rejections``, exported as ``hashflex_input_rejections_total{kind,reason}``), whether
    the limits book refused it or the plausibility bounds did (``"as_deploy: issued_at: ... beyond
    the 120 s clock-skew window"`` is ``refused:issued_at``; the bound's own class,
    ``future:issued_at``, stays in the reason's words: "beyond the ... clock-skew window").

    Parameters
    ----------
    reason : str or None
        The answer's reason.
    kind : str, optional
        The command's kind: a leading ``<kind>:`` or ``<kind> `` (a plausibility refusal) is skipped.

    Returns
    -------
    str
        ``refused:<field>`` or ``refused``.
    """
    text = (reason or "").strip()
    for prefix in ((f"{kind}:", f"{kind} ") if kind else ()):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
            break
    head = text.split(":", 1)[0].strip()
    return f"refused:{head}" if _REFUSAL_FIELD.fullmatch(head) else "refused"


def _repeated_key(pairs: list[tuple[str, object]]) -> str | None:
    """The first key given twice among one JSON object's ``pairs``, or None: the one rule of the duplicate-key
    refusal, for MQTT commands (:func:`duplicate_key`) and OpenADR objects (:func:`loads_marking_duplicates`)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


def duplicate_key_reason(where: str) -> str:
    """The refusal's reason after its subject: ``<where>: duplicate key: given more than once in one JSON
    object (which value was meant is unknown)``; ``where`` is the key (MQTT) or its path (OpenADR)."""
    shown = where if len(where) <= _DUPLICATE_KEY_SHOWN_CHARS else where[:_DUPLICATE_KEY_SHOWN_CHARS] + "…"
    return f"{shown}: duplicate key: given more than once in one JSON object (which value was meant is unknown)"


def duplicate_key(raw: bytes) -> str | None:
    """The first key that appears twice in one JSON object of ``raw`` (at any depth), or None.

    Strict JSON parsers differ on duplicate keys (RFC 8259 §4: names "SHOULD be unique", and
    receivers then disagree; pydantic, like ``json.loads``, keeps the last). For a command, two
    values for one field are two instructions: which was meant is unknown, so the payload is refused
    rather than guessed (issue 15, H1 finding 4).

    Parameters
    ----------
    raw : bytes
        The payload (at most :data:`MAX_PAYLOAD_BYTES`).

    Returns
    -------
    str or None
        The duplicated key; None when every object's keys are unique or the payload is not JSON
        (the schema check then names what is wrong).
    """
    found: list[str] = []

    def pairs_hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        if not found and (key := _repeated_key(pairs)) is not None:
            found.append(key)
        return dict(pairs)

    try:
        json.loads(raw, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):  # not JSON (or too deep): pydantic's error names it
        return None
    return found[0] if found else None


class DuplicateKeyObject(dict):  # type: ignore[type-arg]
    """A JSON object (a ``dict``: the last value of a repeated key, as ``json.loads`` keeps) in which the key
    ``duplicate`` was given more than once; made by :func:`loads_marking_duplicates`."""

    duplicate: str = ""


def _marking_hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
    key = _repeated_key(pairs)
    if key is None:
        return dict(pairs)
    marked = DuplicateKeyObject(pairs)
    marked.duplicate = key
    return marked


def loads_marking_duplicates(raw: bytes | str) -> object:
    """``json.loads(raw)`` where every object with a repeated key comes back as a :class:`DuplicateKeyObject`,
    so that a document holding many objects (an OpenADR VTN's event listing, a webhook notification) can
    refuse only the object that has one (:func:`duplicate_key_in`), by the rule MQTT commands are refused by
    (:func:`duplicate_key`; issue 15, task H3).

    Parameters
    ----------
    raw : bytes or str
        A JSON document (bytes: UTF-8/16/32, as ``json.loads`` detects).

    Returns
    -------
    object
        The parsed document.

    Raises
    ------
    ValueError
        ``raw`` is not JSON (``json.JSONDecodeError``, or ``UnicodeDecodeError``).
    """
    return json.loads(raw, object_pairs_hook=_marking_hook)


def duplicate_key_in(value: object, skip: frozenset[str] | tuple[str, ...] = ()) -> str | None:
    """Where the first repeated key of a document from :func:`loads_marking_duplicates` is, or None.

    Parameters
    ----------
    value : object
        The parsed document (or any part of it); plain dicts and lists are searched, depth first.
    skip : collection of str
        Keys of the top-level object not searched (a notification's ``object``: the event is checked
        as an event, with its id).

    Returns
    -------
    str or None
        The key's path, e.g. ``payloads`` or ``intervals.0.intervalPeriod`` (a repeated key of the
        top-level object: the key alone); None when no object has a repeated key.
    """
    stack: list[tuple[str, object, bool]] = [("", value, True)]
    while stack:
        path, item, top = stack.pop()
        if isinstance(item, dict):
            if isinstance(item, DuplicateKeyObject):
                return f"{path}.{item.duplicate}" if path else item.duplicate
            children = [(k, v) for k, v in item.items() if not (top and k in skip)]
        elif isinstance(item, list):
            children = list(enumerate(item))
        else:
            continue
        stack.extend((f"{path}.{k}" if path else str(k), v, False) for k, v in reversed(children))
    return None


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
    ``site`` is given), an oversized payload, bad JSON, a schema error, a topic/payload key mismatch,
    or a command (:data:`COMMAND_KINDS`: DR, limits, AS award and deployment) with a key twice in one
    JSON object (:func:`duplicate_key`; rule ``schema:duplicate_key``, the reason naming the key).
    Observations are not checked for duplicate keys (a second parse of every telemetry message
    would cost the ingest; their values are bounded by :mod:`hashflex.plausibility`).

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
    if kind in COMMAND_KINDS and (twice := duplicate_key(raw)) is not None:
        return Rejection(topic, f"{kind}: {duplicate_key_reason(twice)}", _preview(raw), kind, "schema:duplicate_key")
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
