"""MQTT ingest: subscribe to ``hashflex/<site>/in/#``, validate, hand to the store and callbacks.

``MqttIngest`` runs paho-mqtt's network loop in its own thread (``start()`` / ``stop()``). For every
message it calls :func:`hashflex.messages.parse_message`; an accepted message that is not a duplicate
is enqueued to the :class:`~hashflex.store.Store` writer (which never blocks on disk) and passed to the
registered callbacks, in the network thread, so callbacks must be fast (the guard's fast path). A
rejected payload is counted, recorded in the store's rejections table and logged with its reason.
Nothing raises out of a paho callback.

Reliability: MQTT v5 with ``clean_start=False`` and a session expiry, a fixed client id, QoS 1
subscriptions, so a broker that keeps the session queues messages across a reconnect; the
subscription is renewed on every connect in case the session was lost (e.g. a broker restart without
persistence). Reconnects back off between ``reconnect_min_s`` and ``reconnect_max_s``.

Acknowledgement: with a store and ``ack_after_commit`` (default), a QoS 1 message is acknowledged
only after its row is committed, so a crash between receipt and commit leaves it unacknowledged and
the broker redelivers it on reconnect (the persistent session); duplicates and rejections are
acknowledged at once.

Two connections: commands and site inputs (``in/price``, ``in/dr``, ``in/limits``, ``in/as/+``,
``in/noise/+``, ``in/renewable/+``, ...) arrive on one, miner telemetry (``in/telemetry/+``, thousands
of messages a second on a large site) on the other, each with its own network thread and its own
broker queue: a DR event or a limits change never waits behind, or is dropped with, a telemetry
backlog (the newcomer review lost a DR event on a 7,200-miner demo with one connection).

Broker configuration matters: Mosquitto's default ``max_queued_messages 1000`` silently drops QoS 1
messages for a subscriber that falls behind a burst (measured: 45% of a 30,000-message burst lost);
set it well above the largest expected burst (the tests and the benchmark use 100,000 / 1,000,000).

Commands: DR events (``in/dr``), limits changes (``in/limits``) and AS awards and deployments
(``in/as/award``, ``in/as/deploy``) are not stored and not deduplicated here: every copy goes to the
control loop, whose limits book decides, commits and acknowledges it (a redelivery gets its first
answer again). With a command handler (:meth:`MqttIngest.set_command_handler`, as the daemon sets
one) each copy goes to it and its answer is what is counted (issue 15, auditor review finding 2):
``accepted`` only when the site answered ``accepted`` (i.e. committed, durably) the first time,
``duplicate`` for a redelivery of an accepted message, ``rejected`` when the site refused it, with
the reason class ``refused:<field>`` (the field the refusal names, or ``store_unavailable``) in
:meth:`MqttIngest.refusal_stats`; the message then goes to the callbacks too (e.g. the dashboard).
Without a command handler (a library use with no site to answer) commands go to the callbacks and
``accepted`` means only well-formed and passed on.

Audit (issue 15, auditor review finding 1): with ``audit`` (``audit(kind, payload, at)``, the
daemon's :meth:`~hashflex.control.records.AuditRecorder.record`) every refused input — by schema or
plausibility here (stage ``ingest``), or by the site (a command's ``rejected`` answer, stage ``site``)
— goes into the hash-chained trail as ``input_rejected`` with the reason naming the field and the
SHA-256 of the raw payload, bounded per kind and minute (:mod:`hashflex.audit.rejections`: the first
``audit_full_per_minute`` in full, the rest counted in one ``input_rejected_summary`` per minute,
written once the minute is over, by a timer, or on :meth:`MqttIngest.stop`).

Duplicates: a message whose ``identity`` (kind, key, timestamp; DR: event id and modification;
price: interval and published_at) was seen among the last ``dedupe_window`` accepted messages is
counted as a duplicate and dropped; the store's upserts make older repeats harmless too. Messages
arriving out of order are stored by their own timestamp.

Plausibility: with ``plausibility`` (a :class:`~hashflex.profile.SiteProfile` or a prebuilt
:class:`~hashflex.plausibility.PlausibilityContext`), every well-formed message is also checked
against the bounds of :mod:`hashflex.plausibility` at ``clock()`` *before* it is deduplicated,
stored or passed to callbacks; an implausible one is handled exactly like a schema rejection
(counted, recorded in the rejections table, logged, passed to the rejection callbacks, acknowledged).
Without it (the default) messages are only schema-checked, as before.

Rejection counters: ``stats()[kind]["rejected"]`` counts every rejection of a kind;
``rejection_stats()`` breaks them down as ``{kind: {reason_class: n}}`` where the reason class is
:attr:`hashflex.messages.Rejection.rule` (``schema:<type>``, ``topic``, ``out_of_bounds:<field>``,
``stale:<field>``, ``future:<field>``, ``unknown_id:<field>``, ...: a bounded set, never a value);
``/metrics`` exports it as ``hashflex_input_rejections_total{kind,reason}``.

API: ``MqttIngest(store, site, host="127.0.0.1", port=1883, *, client_id=None, username=None,
password=None, tls_ca_file=None, keepalive_s=30, session_expiry_s=3600, reconnect_min_s=1, reconnect_max_s=30,
dedupe_window=100_000, ack_after_commit=True, clock=utc_now, plausibility=None, audit=None,
audit_full_per_minute=10)``; ``add_callback(fn)``, ``add_rejection_callback(fn)``, ``set_command_handler(fn)``,
``start()``, ``stop()``, ``wait_connected(timeout_s) -> bool``, ``connected``,
``stats() -> dict[kind, dict[counter, int]]``, ``rejection_stats() -> dict[kind, dict[reason, int]]``,
``refusal_stats() -> dict[kind, dict[reason, int]]`` (commands the site refused),
``backlog() -> dict`` (telemetry lag and the store's write queue: how far behind the ingest is),
``handle(topic, payload)`` (the per-message path, usable without a broker).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hashflex.audit.rejections import REJECTION_AUDIT_FULL_PER_MINUTE, RejectionAudit
from hashflex.messages import InboundMessage, Rejection, Topics, parse_message, payload_preview
from hashflex.messages.parse import COMMAND_KINDS, refusal_rule
from hashflex.plausibility import PlausibilityContext, check_plausible
from hashflex.profile import SiteProfile
from hashflex.store import Store, utc_now

__all__ = ["MqttIngest", "MessageCallback", "RejectionCallback", "CommandHandler", "AuditSink", "mqtt_client",
           "refusal_rule", "stop_clients", "STOP_TIMEOUT_S"]

log = logging.getLogger(__name__)

MessageCallback = Callable[[InboundMessage], None]
RejectionCallback = Callable[[Rejection], None]
CommandHandler = Callable[[InboundMessage], Any]
"""``handler(message) -> answer``: the site's answer to a command (an ack with ``status`` and ``reason``)."""
AuditSink = Callable[[str, Mapping[str, Any], datetime], None]
"""``audit(kind, payload, at)``: appends one audit record (e.g. ``AuditRecorder.record``)."""
COUNTERS = ("accepted", "rejected", "duplicate", "errors")
_LOG_EVERY_S = 60.0  # a repeated rejection reason is logged at WARNING at most this often
LAG_WINDOW_S = 5.0
"""Telemetry lag is the smallest lag of each window this long (s): see :meth:`MqttIngest.backlog`."""
STOP_TIMEOUT_S = 1.5
"""How long :func:`stop_clients` waits for paho's network threads (s): longer than the reconnect sleep's
1 s step, shorter than paho's 5 s TCP connect timeout a gone broker host makes a thread sit in."""


def mqtt_client(client_id: str, *, username: str | None = None, password: str | None = None,
                tls_ca_file: str | None = None, manual_ack: bool = False, reconnect_min_s: float = 1.0,
                reconnect_max_s: float = 30.0, reconnect: bool = True) -> mqtt.Client:
    """A paho-mqtt 2.x client as every hashflex component sets one up: MQTT v5, the VERSION2
    callback API, optional username/password and TLS (the CA file verifies the broker), reconnect
    back-off between ``reconnect_min_s`` and ``reconnect_max_s``. Not connected yet.

    Parameters
    ----------
    client_id : str
        A fixed client id (the broker keeps the session under it).
    username, password : str, optional
        Broker credentials.
    tls_ca_file : str, optional
        CA certificate file; TLS is used when given.
    manual_ack : bool
        Acknowledge QoS 1 messages explicitly (after the store commits).
    reconnect_min_s, reconnect_max_s : float
        Reconnect back-off bounds, seconds.
    reconnect : bool, default True
        Let paho's network thread reconnect after a lost connection; False ends the thread instead (a
        client its owner drops and replaces, as the setpoint publisher does).

    Returns
    -------
    paho.mqtt.client.Client
    """
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack, reconnect_on_failure=reconnect)
    if username is not None:
        client.username_pw_set(username, password)
    if tls_ca_file:
        client.tls_set(ca_certs=tls_ca_file)
    client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)  # type: ignore[arg-type]
    return client


def stop_clients(clients: Iterable[mqtt.Client], timeout_s: float = STOP_TIMEOUT_S, *, what: str = "MQTT") -> int:
    """Disconnect paho clients and stop their network threads together, waiting at most ``timeout_s``.

    Why (issue 15, task H3): with the broker gone each network thread sits in paho's reconnect cycle —
    a back-off sleep checked once a second, or a TCP connect that hangs up to paho's 5 s connect timeout
    when the broker's host does not answer — and ``loop_stop()`` waits for it without a bound. Stopped
    one after another, a daemon's clients took 11.4 s after SIGTERM. Here every thread is told to stop
    first and then all are awaited against one deadline; a thread still inside a hanging connect is left
    to end on its own (paho's threads are daemon threads: it cannot hold the process; it exits at its next
    check, and the ingest disconnects at once should that connect still succeed). A connected client sends
    its DISCONNECT as before, and its thread, not blocked, stops well inside the bound.

    Parameters
    ----------
    clients : iterable of paho.mqtt.client.Client
        Clients started with ``loop_start()`` (others are only disconnected).
    timeout_s : float, default :data:`STOP_TIMEOUT_S`
        The bound on the whole wait, s.
    what : str, default "MQTT"
        The component, for the warning when a thread is left running.

    Returns
    -------
    int
        How many network threads were still running at the deadline (0: all stopped).
    """
    stoppers = []
    for client in clients:
        try:
            client.disconnect()  # DISCONNECT when connected; else marks the client disconnected
        except (OSError, ValueError):
            pass
        # loop_stop() sets paho's terminate flag at once and then joins without a bound: join it here instead
        stopper = threading.Thread(target=client.loop_stop, name=f"{what}-stop", daemon=True)
        stopper.start()
        stoppers.append(stopper)
    deadline = time.monotonic() + timeout_s
    for stopper in stoppers:
        stopper.join(max(0.0, deadline - time.monotonic()))
    left = sum(stopper.is_alive() for stopper in stoppers)
    if left:
        log.warning("%s: %d network thread(s) still in a connect attempt after %.1f s; left to end on their own",
                    what, left, timeout_s)
    return left


class MqttIngest:
    """Validated MQTT input for one site; see the module docstring.

    Parameters
    ----------
    store : hashflex.store.Store or None
        Where accepted observations go (None: callbacks only).
    site : str
        The site's topic level.
    host, port : str, int
        The broker.
    client_id, username, password, tls_ca_file : str, optional
        Connection settings (:func:`mqtt_client`).
    keepalive_s, session_expiry_s : int
        MQTT keepalive and session expiry, seconds.
    reconnect_min_s, reconnect_max_s : float
        Reconnect back-off bounds, seconds.
    dedupe_window : int
        How many recent message identities are remembered for duplicate detection.
    ack_after_commit : bool
        Acknowledge a QoS 1 message only after its row is committed.
    clock : callable
        ``clock() -> datetime`` for plausibility checks.
    plausibility : SiteProfile or PlausibilityContext, optional
        Bounds every message is checked against before it is stored or passed on.
    split_telemetry : bool
        Miner telemetry on its own connection (client id ``<client_id>-telemetry``; default True);
        False: one connection subscribed to ``in/#``.
    lag_window_s : float
        The telemetry lag is the smallest of each window this long, s (:meth:`backlog`).
    audit : callable, optional
        ``audit(kind, payload, at)``: refused inputs go into the audit trail through it, bounded
        (module docstring; None: not audited).
    audit_full_per_minute : int
        Refusals recorded in full per kind and minute (:mod:`hashflex.audit.rejections`).
    """

    def __init__(
        self,
        store: Store | None,
        site: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_ca_file: str | None = None,
        keepalive_s: int = 30,
        session_expiry_s: int = 3600,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        dedupe_window: int = 100_000,
        ack_after_commit: bool = True,
        clock: Callable[[], datetime] = utc_now,
        plausibility: SiteProfile | PlausibilityContext | None = None,
        split_telemetry: bool = True,
        lag_window_s: float = LAG_WINDOW_S,
        audit: AuditSink | None = None,
        audit_full_per_minute: int = REJECTION_AUDIT_FULL_PER_MINUTE,
    ) -> None:
        self.store = store
        self.plausibility = (PlausibilityContext.from_profile(plausibility) if isinstance(plausibility, SiteProfile)
                             else plausibility)
        self.topics = Topics(site)
        self.host, self.port = host, port
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._clock = clock
        self._callbacks: list[MessageCallback] = []
        self._rejection_callbacks: list[RejectionCallback] = []
        self._command_handler: CommandHandler | None = None
        self._refusals: defaultdict[str, dict[str, int]] = defaultdict(dict)
        self._answered: OrderedDict[tuple[Any, ...], None] = OrderedDict()  # commands the site accepted
        self._rejection_audit = RejectionAudit(audit, audit_full_per_minute) if audit is not None else None
        self._audit_timer: threading.Timer | None = None
        self._reasons: defaultdict[str, dict[str, int]] = defaultdict(dict)
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._dedupe_window = dedupe_window
        self._counts: defaultdict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
        self._lock = threading.Lock()  # guards _counts and _seen (handle() may be called from tests too)
        self._last_logged: dict[tuple[str | None, str], float] = {}
        self._stopping = False
        # Telemetry lag (the ingest backlog): the smallest (handled − measured) of each LAG_WINDOW_S, so a
        # miner whose clock runs slow cannot fake a backlog, and a real one shows in every message.
        self._lag_window_s = lag_window_s
        self._lag_bucket_start: float | None = None
        self._lag_bucket_min = float("inf")
        self._lag_s: float | None = None
        self._lag_at: float | None = None
        self.connects = 0
        self.connects_by_role: dict[str, int] = {}

        self._ack_after_commit = ack_after_commit and store is not None
        prefix = self.topics.prefix
        # role -> the topic filters its connection subscribes to (see the module docstring).
        self._filters: dict[str, list[str]] = (
            {"inputs": [f"{prefix}in/+", f"{prefix}in/renewable/+", f"{prefix}in/noise/+", f"{prefix}in/as/+"],
             "telemetry": [f"{prefix}in/telemetry/+"]}
            if split_telemetry else {"inputs": [self.topics.inbound_filter]})
        self._connected = {role: threading.Event() for role in self._filters}
        base_id = client_id or f"hashflex-ingest-{site}"
        self._clients: dict[str, mqtt.Client] = {}
        for role in self._filters:
            client = mqtt_client(base_id if role == "inputs" else f"{base_id}-{role}", username=username,
                                 password=password, tls_ca_file=tls_ca_file, manual_ack=self._ack_after_commit,
                                 reconnect_min_s=reconnect_min_s, reconnect_max_s=reconnect_max_s)
            client.user_data_set(role)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.on_subscribe = self._on_subscribe
            self._clients[role] = client
        self._client = self._clients["inputs"]

    # ------------------------------------------------------------------ lifecycle

    def add_callback(self, callback: MessageCallback) -> None:
        """Call ``callback(message)`` for each accepted, non-duplicate message (network thread).

        Parameters
        ----------
        callback : callable
            ``callback(message)``; must be fast (it runs in the network thread).
        """
        self._callbacks.append(callback)

    def add_rejection_callback(self, callback: RejectionCallback) -> None:
        """Call ``callback(rejection)`` for each rejected payload (network thread), e.g. to answer a
        rejected DR event with a ``rejected`` ack.

        Parameters
        ----------
        callback : callable
            ``callback(rejection)`` with a :class:`~hashflex.messages.Rejection`.
        """
        self._rejection_callbacks.append(callback)

    def set_command_handler(self, handler: CommandHandler) -> None:
        """Answer commands (DR, limits, AS) with ``handler(message)`` and count its answer (module docstring).

        Parameters
        ----------
        handler : callable
            ``handler(message) -> answer`` where ``answer.status`` is ``"accepted"`` or ``"rejected"``
            and ``answer.reason`` names the field (the control loop's ``handle_dr``, ``handle_limits``,
            ``handle_as_award``, ``handle_as_deploy``); runs in the network thread.
        """
        self._command_handler = handler

    def start(self) -> None:
        """Connect in the background; retries until the broker answers."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self._session_expiry_s
        for client in self._clients.values():
            client.connect_async(
                self.host, self.port, keepalive=self._keepalive_s, clean_start=False, properties=properties
            )
            client.loop_start()

    def stop(self) -> None:
        """Disconnect and stop the network threads, waiting at most :data:`STOP_TIMEOUT_S` for them
        (:func:`stop_clients`); the store is left open."""
        self._stopping = True
        stop_clients(self._clients.values(), what="ingest")  # bounded: the broker may be gone (task H3)
        for event in self._connected.values():
            event.clear()
        if self._audit_timer is not None:
            self._audit_timer.cancel()
        if self._rejection_audit is not None:
            self._rejection_audit.flush(None)  # the minute in progress: its count record now

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """True once connected and subscribed.

        Parameters
        ----------
        timeout_s : float
            Seconds to wait at most.

        Returns
        -------
        bool
        """
        deadline = time.monotonic() + timeout_s
        return all(event.wait(max(deadline - time.monotonic(), 0.0)) for event in self._connected.values())

    @property
    def connected(self) -> bool:
        """True while every connection is up and subscribed."""
        return all(event.is_set() for event in self._connected.values())

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per kind (``price``, ``noise``, ..., ``unknown``): accepted/rejected/duplicate/errors."""
        with self._lock:
            return {kind: dict(counts) for kind, counts in self._counts.items()}

    def rejection_stats(self) -> dict[str, dict[str, int]]:
        """Rejections per kind and reason class: ``{"renewable": {"out_of_bounds:power_kw": 1}}``."""
        with self._lock:
            return {kind: dict(reasons) for kind, reasons in self._reasons.items()}

    def refusal_stats(self) -> dict[str, dict[str, int]]:
        """Commands the site refused (a command handler's ``rejected`` answers), per kind and reason
        class: ``{"as_deploy": {"refused:deployed_kw": 1}}``. Counted in ``stats()[kind]["rejected"]``
        as well; not in :meth:`rejection_stats` (``/metrics`` has them from the loop's own
        ``command_rejections``, so they are not counted twice)."""
        with self._lock:
            return {kind: dict(reasons) for kind, reasons in self._refusals.items()}

    def _note_lag(self, message: Any) -> None:
        lag_s = (self._clock() - message.timestamp).total_seconds()
        now = time.monotonic()
        with self._lock:
            if self._lag_bucket_start is None:
                self._lag_bucket_start = now
            self._lag_bucket_min = min(self._lag_bucket_min, lag_s)
            if now - self._lag_bucket_start >= self._lag_window_s:
                self._lag_s, self._lag_at = self._lag_bucket_min, now
                self._lag_bucket_start, self._lag_bucket_min = now, float("inf")

    def backlog(self) -> dict[str, Any]:
        """How far behind the ingest is (``/status`` ``ingest_backlog``, ``/metrics``, ``/healthz``).

        Messages are handled as paho reads them, so a backlog builds up outside this process (the
        broker's queue for the telemetry connection) and shows as telemetry handled late: the lag is
        the smallest (handled − measured) of the last completed ``LAG_WINDOW_S`` window (clock skew of
        one miner cannot raise it). Rows waiting for the store's writer are the other backlog
        (:func:`hashflex.control.daemon.with_ingest_backlog` turns both into /healthz causes).

        Returns
        -------
        dict
            ``telemetry_lag_s`` (s, None before a full window of telemetry), ``lag_window_age_s`` (s since
            that window closed; a lag older than a few windows means telemetry stopped), and, with a store,
            ``store_queued`` (writes waiting) and ``store_oldest_queued_s`` (age of the oldest, s).
        """
        now = time.monotonic()
        with self._lock:
            lag, at = self._lag_s, self._lag_at
            if self._lag_bucket_start is not None and now - self._lag_bucket_start >= self._lag_window_s \
                    and self._lag_bucket_min != float("inf"):
                lag, at = self._lag_bucket_min, now  # a window that ended without a message to close it
        out: dict[str, Any] = {"telemetry_lag_s": None if lag is None else round(lag, 3),
                               "lag_window_age_s": None if at is None else round(now - at, 3)}
        if self.store is not None:
            stats = self.store.writer_stats()
            out["store_queued"] = stats.get("queued", 0)
            out["store_oldest_queued_s"] = stats.get("oldest_queued_s")
        return out

    def totals(self) -> dict[str, int]:
        """Counters summed over all kinds."""
        totals = dict.fromkeys(COUNTERS, 0)
        for counts in self.stats().values():
            for name, value in counts.items():
                totals[name] += value
        return totals

    # ------------------------------------------------------------------ message path

    def handle(self, topic: str, payload: bytes) -> InboundMessage | Rejection | None:
        """Validate, dedupe, store and dispatch one payload. Returns the message, the rejection, or
        None for a duplicate. Never raises.

        Parameters
        ----------
        topic : str
            The MQTT topic.
        payload : bytes
            The raw payload.

        Returns
        -------
        InboundMessage, Rejection or None
        """
        try:
            result = parse_message(topic, payload, site=self.topics.site)
            if isinstance(result, Rejection):
                self._reject(result, payload)
                return result
            if result.kind in COMMAND_KINDS and self._command_handler is not None:
                self._answer(result, topic, payload)
                self._dispatch(result, topic)
                return result
            if result.kind in COMMAND_KINDS:
                # DR events, limits changes and AS messages are decided, committed and answered by
                # the control loop's limits book — bounds included, so every path (MQTT, the web
                # page, OpenADR) is checked alike and a refusal is acknowledged with its reason — and
                # a redelivery gets its first answer: pass every copy on, store none here.
                self._count(result.kind, "accepted")
                self._dispatch(result, topic)
                return result
            if result.kind == "telemetry":
                self._note_lag(result)
            if self.plausibility is not None:
                implausible = check_plausible(result, self._clock(), self.plausibility, topic)
                if implausible is not None:
                    implausible = dataclasses.replace(implausible, payload=payload_preview(payload))
                    self._reject(implausible, payload)
                    return implausible
            identity = result.identity
            with self._lock:
                if identity in self._seen:
                    self._counts[result.kind]["duplicate"] += 1
                    return None
            if self.store is not None:
                self.store.put(result, received_at=self._clock())
            with self._lock:  # only once stored, so a redelivery after a failed put is not a "duplicate"
                self._seen[identity] = None
                if len(self._seen) > self._dedupe_window:
                    self._seen.popitem(last=False)
                self._counts[result.kind]["accepted"] += 1
            self._dispatch(result, topic)
            return result
        except Exception:  # noqa: BLE001 - never raise into paho's network loop
            log.exception("ingest: unexpected error handling %s", topic)
            self._count("unknown", "errors")
            return None

    def _dispatch(self, result: InboundMessage, topic: str) -> None:
        for callback in self._callbacks:
            try:
                callback(result)
            except Exception:
                log.exception("ingest: callback %r failed on %s", callback, topic)
                self._count(result.kind, "errors")

    def _answer(self, message: InboundMessage, topic: str, payload: bytes) -> None:
        """A command to the site's handler; its answer is what is counted (and audited when refused)."""
        try:
            answer = self._command_handler(message)  # type: ignore[misc]
        except Exception:
            log.exception("ingest: command handler failed on %s", topic)
            self._count(message.kind, "errors")
            return
        status, reason = getattr(answer, "status", None), str(getattr(answer, "reason", "") or "")
        identity = message.identity
        with self._lock:
            counts = self._counts[message.kind]
            if status == "accepted":
                if identity in self._answered:
                    counts["duplicate"] += 1
                else:
                    counts["accepted"] += 1
                    self._answered[identity] = None
                    if len(self._answered) > self._dedupe_window:
                        self._answered.popitem(last=False)
                return
            counts["rejected"] += 1
            rule = refusal_rule(reason, message.kind)
            refusals = self._refusals[message.kind]
            refusals[rule] = refusals.get(rule, 0) + 1
        self._audit(topic, message.kind, "site", rule, reason or "refused", payload)

    def _audit(self, topic: str, kind: str | None, stage: str, rule: str, reason: str, payload: bytes) -> None:
        """A refused input into the audit trail (bounded); a summary due later arms the timer."""
        audit = self._rejection_audit
        if audit is None:
            return
        try:
            audit.refused(topic=topic, kind=kind, stage=stage, rule=rule, reason=reason, payload=payload,
                          received_at=self._clock())
            if self._audit_timer is None:  # armed already during a flood: no lock, no look at the minute
                self._arm_audit_timer()
        except Exception:  # noqa: BLE001 - the audit must never stop the ingest
            log.exception("ingest: could not audit a refused %s", topic)

    def _arm_audit_timer(self) -> None:
        """A summary is due when its minute ends: a timer writes it then, even if no input follows."""
        audit = self._rejection_audit
        due = audit.pending_until() if audit is not None else None
        with self._lock:
            if due is None or self._audit_timer is not None or self._stopping:
                return
            delay_s = min(max((due - self._clock()).total_seconds() + 1.0, 1.0), 61.0)
            self._audit_timer = threading.Timer(delay_s, self._flush_audit)
            self._audit_timer.daemon = True
            self._audit_timer.start()

    def _flush_audit(self) -> None:
        """Timer: write the summary of a minute that is over (re-armed while one is still due)."""
        with self._lock:
            self._audit_timer = None
        if self._rejection_audit is None or self._stopping:
            return
        try:
            self._rejection_audit.flush(self._clock())
            self._arm_audit_timer()
        except Exception:  # noqa: BLE001
            log.exception("ingest: could not write the refused-input summary")

    def _count(self, kind: str, counter: str) -> None:
        with self._lock:
            self._counts[kind][counter] += 1

    def _reject(self, rejection: Rejection, payload: bytes) -> None:
        kind = rejection.kind or "unknown"
        with self._lock:
            self._counts[kind]["rejected"] += 1
            reasons = self._reasons[kind]
            reasons[rejection.rule] = reasons.get(rejection.rule, 0) + 1
        if self.store is not None:
            self.store.put_rejection(rejection, received_at=self._clock())
        self._audit(rejection.topic, rejection.kind, "ingest", rejection.rule, rejection.reason, payload)
        now = time.monotonic()
        key = (rejection.topic, rejection.reason)
        if now - self._last_logged.get(key, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_logged[key] = now
            if len(self._last_logged) > 10_000:
                self._last_logged.clear()
            log.warning("ingest: rejected %s: %s; payload=%r", rejection.topic, rejection.reason, rejection.payload)
        else:
            log.debug("ingest: rejected %s: %s", rejection.topic, rejection.reason)
        for callback in self._rejection_callbacks:
            try:
                callback(rejection)
            except Exception:
                log.exception("ingest: rejection callback %r failed on %s", callback, rejection.topic)
                self._count(kind, "errors")

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            if reason_code.is_failure:
                log.warning("ingest: connect to %s:%s refused: %s", self.host, self.port, reason_code)
                return
            if self._stopping:  # a connect that outlived stop()'s bound: take nothing more (unacked: redelivered)
                client.disconnect()
                return
            self.connects_by_role[userdata] = self.connects_by_role.get(userdata, 0) + 1
            if userdata == "inputs":  # ``connects``: the commands' connection (the one a DR event takes)
                self.connects += 1
            log.info("ingest: connected to %s:%s (%s connection; session present: %s)", self.host, self.port,
                     userdata, getattr(flags, "session_present", None))
            filters = self._filters[userdata]
            if filters != [self.topics.inbound_filter]:
                # A session kept from a version with one connection still holds in/#: drop it, or the
                # broker keeps queueing telemetry for this connection too.
                client.unsubscribe(self.topics.inbound_filter)
            client.subscribe([(f, 1) for f in filters])
        except Exception:  # noqa: BLE001
            log.exception("ingest: on_connect failed")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        try:
            failures = [rc for rc in reason_codes if rc.is_failure]
            if failures:
                log.error("ingest (%s): subscription to %s refused: %s", userdata, self._filters[userdata], failures)
                return
            self._connected[userdata].set()
        except Exception:  # noqa: BLE001
            log.exception("ingest: on_subscribe failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected[userdata].clear()
        if self._stopping:
            log.info("ingest: disconnected from %s:%s", self.host, self.port)
            return
        log.warning("ingest: disconnected from %s:%s: %s; reconnecting", self.host, self.port, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # paho decodes lazily; a broker should never pass this on
            topic = message._topic.decode("utf-8", errors="replace")
        result = self.handle(topic, message.payload)
        if not self._ack_after_commit or message.qos == 0:
            return
        try:
            if self.store is not None and result is not None and not isinstance(result, Rejection):
                self.store.after_commit(partial(client.ack, message.mid, message.qos))
            else:  # duplicate, rejection or error: nothing more will be stored, acknowledge now
                client.ack(message.mid, message.qos)
        except Exception:  # noqa: BLE001
            log.exception("ingest: could not acknowledge %s", message.topic)
