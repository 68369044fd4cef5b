"""MQTT driver: setpoints at QoS 1 through paho-mqtt 2.x, one message per group or per miner.

Two message designs (both JSON, both with the MQTT v5 Message Expiry Interval set to the whole seconds
left until ``expires_at``, rounded down, at least 1, so a broker never delivers a setpoint late; the
deadline is also in the payload, which is what the miner enforces, falling back to sleep when it passes
without renewal):

- **per group** (default, ``setpoint_topics="group"``): one
  :class:`~hashflex.drivers.setpoint_messages.GroupSetpointsMessage` on
  ``hashflex/<site>/out/setpoints/<group>`` carries the setpoints of every miner of that group in the
  batch (one ``issued_at``/``expires_at``; up to ``max_setpoints_per_message`` rows per message, more
  rows go in further messages on the same topic). A 100,000-miner site is a few hundred messages, not
  100,000 (issue 18; ``optimization/benchmarks/mqtt_batch.py`` measures both designs).
- **per miner** (``setpoint_topics="miner"``, or the groups in ``per_miner_groups``, or a setpoint
  without a ``group_id``): one :class:`~hashflex.messages.SetpointMessage` on
  ``hashflex/<site>/out/setpoint/<miner>``, for miners (or brokers' ACLs, ``deploy/mosquitto/acl``)
  that only speak it. When the broker answers a group message with "No matching subscribers" (nobody
  follows the group topic), the driver sends that message's setpoints again on the per-miner topics
  at once, so a site whose miners only speak the per-miner topic keeps working on the default.

``apply(batch)`` publishes the batch on a connection of its own
(:class:`~hashflex.drivers.mqtt_publish.PahoPublisher`: paho keeps up to the broker's Receive Maximum
unacknowledged; Mosquitto's default is 20, raise ``max_inflight_messages`` on the broker for big
sites), then waits for all PUBACKs while the broker keeps answering (a batch times out only after
``puback_timeout_s`` without a PUBACK: a large per-miner batch is not cut short). Results, one per setpoint (a group
message's answer is the answer for each of its miners): ``applied`` when the broker acknowledged;
``rejected`` for a failure reason code (e.g. "Not authorized" from an ACL), an expired or invalid
setpoint; ``unreachable`` when the broker answers "No matching subscribers" for this miner's topic
(that miner is not listening) while the transport is healthy. Transport faults are ``not_sent``
(see :mod:`hashflex.drivers.base`), never counted against a miner: the broker cannot be reached or
refuses our connection, the connection breaks before the PUBACK, no PUBACK for
``puback_timeout_s``, and "No matching subscribers" for *every* setpoint of a batch of two or more,
or for any within ``resubscribe_grace_s`` after a transport fault (a restarted broker without
persistent sessions has no subscribers until the miners reconnect and re-subscribe).

Telemetry comes in through a paho-mqtt client (``feeds.mqtt.mqtt_client``: VERSION2 callbacks, MQTT
v5, automatic reconnect and re-subscription) subscribed to ``in/telemetry/+``.

PUBACK only means the broker has it. Verification follows telemetry on ``in/telemetry/+``: a
setpoint is confirmed by the first telemetry *received after it was published* (ordering by arrival,
so miner clock skew does not matter) whose mode equals the setpoint's and whose power is within
``max(tolerance_kw, tolerance × target)`` (for ``sleep`` the mode alone: idle power varies by model).
``verify(timeout_s)`` waits for the outstanding setpoints and returns ``applied`` for confirmed ones
and ``unverified`` (with the last telemetry seen) for the rest, except that a setpoint with no
telemetry since it was published is ``not_sent`` (cannot be verified: a transport fault) when the
telemetry connection has dropped since it was published; a newer setpoint for a miner replaces the
outstanding one. Feed both to a :class:`~hashflex.drivers.base.MinerRegistry`.

API: ``MqttDriver(site, host="127.0.0.1", port=1883, *, client_id=None, username=None, password=None,
tls_ca_file=None, keepalive_s=30, puback_timeout_s=5.0, tolerance=0.1, tolerance_kw=0.05,
clock=utc_now, resubscribe_grace_s=60.0, setpoint_topics="group", per_miner_groups=(),
max_setpoints_per_message=1000)``; ``start()``, ``wait_connected(timeout_s) -> bool`` and
``connected`` (the telemetry connection; publishing connects on demand), ``apply(batch)``,
``apply_batch(setpoint_batch) -> BatchResult`` (a columnar ``drivers.batch.SetpointBatch``, published
from its columns: same messages and results as ``apply``, answered per message, issue 18),
``verify(timeout_s) -> list[SetpointResult]``, ``pending() -> list[str]``,
``telemetry(miner_id) -> TelemetryMessage | None``, ``close()``; ``publisher`` (its ``connects``
count, ``receive_maximum``); ``messages_published`` (messages in the last batch) and ``last_timings``
(its ``encode_s``, ``publish_s`` — connecting, sending, every PUBACK — and ``results_s``).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from hashflex.drivers.base import SLEEP, Clock, Setpoint, SetpointResult, SetpointStatus, utc_now
from hashflex.drivers.mqtt_publish import PahoPublisher, PublishOutcome
from hashflex.drivers.batch import BatchResult, SetpointBatch
from hashflex.drivers.setpoint_messages import (OutboundMessage, group_messages, group_messages_from_codes,
                                                per_miner_messages)
from hashflex.feeds.mqtt import mqtt_client, stop_clients
from hashflex.messages import TelemetryMessage, Topics, parse_message

__all__ = ["MqttDriver", "PahoPublisher", "PublishOutcome"]

log = logging.getLogger(__name__)

_NO_MATCHING_SUBSCRIBERS = 16  # MQTT v5 PUBACK reason code 0x10
SetpointTopics = Literal["group", "miner"]


@dataclass(frozen=True, slots=True, eq=False)
class _Pending:
    """What a published setpoint asked; one object is shared by every miner of a batch given the same
    mode (issue 18: no object per miner), so it is immutable and a miner's confirmation is kept apart
    (``MqttDriver._confirmed``, valid only while this very object is the miner's pending one)."""

    mode: str  # what the setpoint asked (a mode name or sleep) ...
    power_target_kw: float  # ... at this power, kW (no Setpoint object kept: issue 18)
    after_seq: int  # telemetry with a higher arrival number counts
    epoch: int = 0  # telemetry connection drops seen when it was published


class _Rows:
    """``rows[i]``: the setpoint at flat position ``i`` of a columnar batch, made on demand (for the
    few rows that go per miner: per-miner groups, fallbacks)."""

    def __init__(self, batch: SetpointBatch, offsets: list[int]) -> None:
        self.batch, self.offsets = batch, offsets

    def __getitem__(self, i: int) -> Setpoint:
        g = bisect.bisect_right(self.offsets, i) - 1
        return self.batch.group_setpoints(self.batch.groups[g], [i - self.offsets[g]])[0]


class MqttDriver:
    """Publishes setpoints (per group or per miner) and verifies them against telemetry.

    See the module docstring for the message designs, the statuses and verification.

    Parameters
    ----------
    site : str
        Site id (topic prefix ``hashflex/<site>/``).
    host, port : str, int
        The broker.
    client_id : str, optional
        Base of the client ids (``-tel`` telemetry, ``-pub`` publishing); unique by default.
    username, password, tls_ca_file : str, optional
        Broker credentials and the CA file that verifies the broker (TLS on when given).
    keepalive_s : int
        MQTT keep alive of both connections, s.
    puback_timeout_s : float
        The deadline for connecting, and the longest the broker may go without a PUBACK while a
        batch's messages are outstanding (a stall), s.
    tolerance, tolerance_kw : float
        Verification band: ``max(tolerance_kw, tolerance × target)`` kW around the target power.
    clock : callable
        ``() -> datetime`` (timezone-aware) that setpoint deadlines are measured against.
    resubscribe_grace_s : float
        After a transport fault, "No matching subscribers" is taken as the transport's doing for this
        long, s.
    setpoint_topics : {"group", "miner"}
        The message design for setpoints that carry a ``group_id``.
    per_miner_groups : collection of str
        Groups whose miners only speak the per-miner topic (sent per miner whatever ``setpoint_topics``).
    max_setpoints_per_message : int
        Most rows in one group message (>= 1).

    Raises
    ------
    ValueError
        An unknown ``setpoint_topics``, ``max_setpoints_per_message`` < 1, or a site id that is not a
        topic level.
    """

    _ids = itertools.count()

    def __init__(self, site: str, host: str = "127.0.0.1", port: int = 1883, *, client_id: str | None = None,
                 username: str | None = None, password: str | None = None, tls_ca_file: str | None = None,
                 keepalive_s: int = 30, puback_timeout_s: float = 5.0, tolerance: float = 0.1,
                 tolerance_kw: float = 0.05, clock: Clock = utc_now, resubscribe_grace_s: float = 60.0,
                 setpoint_topics: SetpointTopics = "group", per_miner_groups: Collection[str] = (),
                 max_setpoints_per_message: int = 1000) -> None:
        if setpoint_topics not in ("group", "miner"):
            raise ValueError(f"setpoint_topics: must be 'group' or 'miner', not {setpoint_topics!r}")
        if max_setpoints_per_message < 1:
            raise ValueError(f"max_setpoints_per_message: must be >= 1, not {max_setpoints_per_message}")
        self.topics = Topics(site)
        self.site, self.host, self.port, self.keepalive_s = site, host, port, keepalive_s
        self.puback_timeout_s, self.tolerance, self.tolerance_kw = puback_timeout_s, tolerance, tolerance_kw
        self.clock = clock
        self.resubscribe_grace_s = resubscribe_grace_s
        self.setpoint_topics: SetpointTopics = setpoint_topics
        self.per_miner_groups = frozenset(per_miner_groups)
        self.max_setpoints_per_message = max_setpoints_per_message
        client_id = client_id or f"hashflex-driver-{site}-{next(self._ids)}"
        self._client = mqtt_client(f"{client_id}-tel", username=username, password=password,
                                   tls_ca_file=tls_ca_file)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.message_callback_add(self.topics.telemetry("+"), self._on_telemetry)
        self.publisher = PahoPublisher(host, port, f"{client_id}-pub", username=username, password=password,
                                       tls_ca_file=tls_ca_file, connect_timeout_s=min(5.0, puback_timeout_s),
                                       keepalive_s=keepalive_s)
        self.messages_published = 0  # messages in the last batch (group, per-miner and fallbacks)
        # seconds the last apply spent building payloads, publishing until the last PUBACK, and on results
        self.last_timings: dict[str, float] = {}
        self._connected = threading.Event()
        self._publish_lock = threading.Lock()
        self._cond = threading.Condition()
        self._seq = 0
        self._latest: dict[str, tuple[int, TelemetryMessage]] = {}
        self._pending: dict[str, _Pending] = {}
        # miner -> (the pending setpoint telemetry confirmed, why); stale once a newer one replaces it
        self._confirmed: dict[str, tuple[_Pending, str]] = {}
        self.rejected_telemetry = 0
        self._epoch = 0  # telemetry connection drops so far
        self._transport_fault_at: float | None = None  # monotonic time of the last transport fault
        self.transport_faults = 0  # batches (and connection drops) hit by a transport fault

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> MqttDriver:
        """Connect the telemetry subscription in the background; returns ``self``."""
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self._client.loop_start()
        return self

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """True once the telemetry connection is up (waits up to ``timeout_s`` s)."""
        return self._connected.wait(timeout_s)

    @property
    def connected(self) -> bool:
        """Whether the telemetry connection is up now."""
        return self._connected.is_set()

    def close(self) -> None:
        """Disconnect both connections and stop their network threads: the telemetry thread is awaited at
        most :data:`~hashflex.feeds.mqtt.STOP_TIMEOUT_S` (the broker may be gone: :func:`stop_clients`), a
        batch being published is let finish first (its PUBACK wait is bounded by ``puback_timeout_s``
        without progress)."""
        stop_clients([self._client], what="driver telemetry")
        self._connected.clear()
        with self._publish_lock:
            self.publisher.close()

    def __enter__(self) -> MqttDriver:
        self.start()
        if not self.wait_connected():
            self.close()
            raise ConnectionError(f"MQTT broker {self.host}:{self.port} not reachable")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect to %s:%s refused: %s", self.host, self.port, reason_code)
            return
        client.subscribe(self.topics.telemetry("+"), qos=0)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                       properties: Properties | None) -> None:
        self._connected.clear()
        with self._cond:
            self._epoch += 1
            self._transport_fault_at = time.monotonic()
            self.transport_faults += 1
            self._cond.notify_all()  # a verify() waiting for telemetry need not wait any longer

    def _on_telemetry(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = parse_message(message.topic, message.payload, site=self.site)
        if not isinstance(parsed, TelemetryMessage):
            self.rejected_telemetry += 1
            return
        with self._cond:
            self._seq += 1
            self._latest[parsed.miner_id] = (self._seq, parsed)
            pending = self._pending.get(parsed.miner_id)
            if pending is not None and self._confirmation(parsed.miner_id, pending) is None:
                verdict = self._judge(pending, parsed)
                if verdict is not None:
                    self._confirmed[parsed.miner_id] = (pending, verdict)
                    self._cond.notify_all()

    def _confirmation(self, miner_id: str, pending: _Pending) -> str | None:
        """What confirmed ``pending`` for ``miner_id`` (call with ``_cond`` held), or None."""
        confirmed = self._confirmed.get(miner_id)
        return confirmed[1] if confirmed is not None and confirmed[0] is pending else None

    # ------------------------------------------------------------------ setpoints
    def apply(self, batch: list[Setpoint]) -> list[SetpointResult]:
        """Publish the batch and wait once for all PUBACKs.

        Parameters
        ----------
        batch : list of Setpoint
            The setpoints to send (any miners, any groups).

        Returns
        -------
        list of SetpointResult
            One per setpoint, same order; never raises for a miner's or the transport's fault.
        """
        start = time.monotonic()
        results: list[SetpointResult | None] = [None] * len(batch)
        now = self.clock()
        with self._cond:
            seq = self._seq
        per_miner: list[int] = []
        by_group: dict[tuple[str, datetime, datetime], list[int]] = {}
        grouped = self.setpoint_topics == "group"
        key: tuple[str, datetime, datetime] | None = None
        members: list[int] = []
        for i, sp in enumerate(batch):
            if sp.expires_at <= now:
                results[i] = SetpointResult(sp.miner_id, SetpointStatus.REJECTED,
                                            f"setpoint expired at {sp.expires_at.isoformat()}; not published", 0.0)
            elif grouped and sp.group_id and sp.group_id not in self.per_miner_groups:
                # the dispatcher gives a batch one issued_at/expires_at: same objects, no hashing needed
                if key is None or not (sp.group_id == key[0] and sp.issued_at is key[1] and sp.expires_at is key[2]):
                    key = (sp.group_id, sp.issued_at, sp.expires_at)
                    members = by_group.setdefault(key, [])
                members.append(i)
            else:
                per_miner.append(i)
        rejected: dict[int, str] = {}
        messages: list[OutboundMessage] = []
        for indexes in by_group.values():
            messages += group_messages(self.site, batch, indexes, now, self.max_setpoints_per_message, rejected,
                                       per_miner)
        messages += per_miner_messages(self.topics, batch, sorted(per_miner), now, rejected)
        outcomes: list[PublishOutcome | None] = [None] * len(batch)
        encoded = time.monotonic()
        with self._publish_lock:
            deadline = time.monotonic() + self.puback_timeout_s
            self._publish(messages, outcomes, deadline)
            # nobody follows a group topic: its miners may only speak the per-miner one
            fallback = sorted(i for m in messages if m.group for i in m.indexes
                              if outcomes[i] is not None and outcomes[i].kind == "acked"  # type: ignore[union-attr]
                              and outcomes[i].code == _NO_MATCHING_SUBSCRIBERS)  # type: ignore[union-attr]
            if fallback:
                retry = per_miner_messages(self.topics, batch, fallback, now, rejected)
                self._publish(retry, outcomes, deadline)
                messages += retry
            self.messages_published = len(messages)
        latency = time.monotonic() - start
        published = start + latency
        for i, reason in rejected.items():
            results[i] = SetpointResult(batch[i].miner_id, SetpointStatus.REJECTED, reason, 0.0)
        transport = self._transport_context([o for o in outcomes if o is not None])
        verdicts: dict[int, tuple[SetpointStatus, str]] = {}  # per outcome: a group message's is shared
        with self._cond:
            epoch = self._epoch
        pending: dict[str, _Pending] = {}
        for i, outcome in enumerate(outcomes):
            if outcome is None:
                continue
            verdict = verdicts.get(id(outcome))
            if verdict is None:
                verdict = verdicts[id(outcome)] = self._verdict(outcome, transport)
            sp = batch[i]
            results[i] = SetpointResult(sp.miner_id, verdict[0], verdict[1], latency)
            if verdict[0] is SetpointStatus.APPLIED:
                pending[sp.miner_id] = _Pending(sp.mode, sp.power_target_kw, seq, epoch)
        with self._cond:
            self._pending.update(pending)
        self.last_timings = {"encode_s": encoded - start, "publish_s": published - encoded,
                             "results_s": time.monotonic() - published}
        return [r for r in results if r is not None]

    def apply_batch(self, batch: SetpointBatch) -> BatchResult:
        """:meth:`apply` for a columnar batch (issue 18): each group's rows go into group messages
        straight from the columns (the same payloads, topics, fallbacks and results as ``apply`` of
        ``batch.setpoints()``), and the answer comes back per message, not per miner.

        Parameters
        ----------
        batch : SetpointBatch
            The setpoints, per group as columns (``drivers.batch``).

        Returns
        -------
        BatchResult
            One outcome per setpoint, as ``apply(batch.setpoints())`` gives them; never raises for a
            miner's or the transport's fault.
        """
        start = time.monotonic()
        now = self.clock()
        with self._cond:
            seq = self._seq
        offsets, total = [], 0
        for group in batch.groups:
            offsets.append(total)
            total += len(group)
        rows = _Rows(batch, offsets)
        expired = f"setpoint expired at {batch.expires_at.isoformat()}; not published"
        if batch.expires_at <= now:  # one deadline for the batch: every row, nothing published
            self.messages_published = 0
            return BatchResult(batch, [(SetpointStatus.REJECTED, expired, 0.0)],
                               [np.zeros(len(g), dtype=np.int64) for g in batch.groups])
        rejected: dict[int, str] = {}
        per_miner: list[int] = []
        messages: list[OutboundMessage] = []
        grouped = self.setpoint_topics == "group"
        for group, offset in zip(batch.groups, offsets):
            if not len(group):
                continue
            if grouped and group.group_id and group.group_id not in self.per_miner_groups:
                # rows as codes into the group's (mode, power) table: the table and the id column are
                # checked once, not every row (the same payloads and refusals)
                messages += group_messages_from_codes(
                    self.site, group.group_id, batch.issued_at, batch.expires_at, group.miner_id.tolist(),
                    group.mode.astype(np.int64) + 2, group.names, group.power_kw.tolist(), offset, now,
                    self.max_setpoints_per_message, rejected, per_miner)
            else:
                per_miner.extend(range(offset, offset + len(group)))
        messages += per_miner_messages(self.topics, rows, sorted(per_miner), now, rejected)  # type: ignore[arg-type]
        encoded = time.monotonic()
        answers: list[PublishOutcome] = []
        with self._publish_lock:
            deadline = time.monotonic() + self.puback_timeout_s
            answers = self._publish_messages(messages, deadline)
            # nobody follows a group topic: its miners may only speak the per-miner one
            fallback = sorted(i for m, a in zip(messages, answers)
                              if m.group and a.kind == "acked" and a.code == _NO_MATCHING_SUBSCRIBERS for i in m.indexes)
            if fallback:
                retry = per_miner_messages(self.topics, rows, fallback, now, rejected)  # type: ignore[arg-type]
                messages += retry
                answers += self._publish_messages(retry, deadline)
            self.messages_published = len(messages)
        latency = time.monotonic() - start
        published = start + latency
        # The final answer per row (a fallback's replaces its group message's), as `apply` keeps them.
        flat = np.full(total, -1, dtype=np.int64)
        answer_of: list[PublishOutcome] = []
        for message, answer in zip(messages, answers):
            if message.group and answer.kind == "acked" and answer.code == 0:
                answer = PublishOutcome("acked", 0, f"group message ({len(message.indexes)} miners)")
            flat[message.indexes] = len(answer_of)
            answer_of.append(answer)
        sent = flat >= 0
        weights = np.bincount(flat[sent], minlength=len(answer_of)).tolist()
        transport = self._transport_context(answer_of, weights)
        table: list[tuple[SetpointStatus, str, float]] = []
        verdict_code: dict[tuple[SetpointStatus, str], int] = {}
        code_of = np.empty(len(answer_of) + 1, dtype=np.int64)
        for k, answer in enumerate(answer_of):
            verdict = self._verdict(answer, transport)
            code = verdict_code.get(verdict)
            if code is None:
                code = verdict_code[verdict] = len(table)
                table.append((verdict[0], verdict[1], latency))
            code_of[k] = code
        codes = np.where(sent, code_of[np.maximum(flat, 0)], -1)
        for reason in dict.fromkeys(rejected.values()):
            verdict_code[SetpointStatus.REJECTED, reason] = len(table)
            table.append((SetpointStatus.REJECTED, reason, 0.0))
        for i, reason in rejected.items():
            if codes[i] < 0:  # as in `apply`: a row refused only on its fallback keeps its group message's answer
                codes[i] = verdict_code[SetpointStatus.REJECTED, reason]
        if (codes < 0).any():  # cannot happen: every row is sent, rejected or expired
            raise AssertionError("MqttDriver.apply_batch: a setpoint without an answer")
        columns = [codes[o:o + len(g)] for o, g in zip(offsets, batch.groups)]
        result = BatchResult(batch, table, columns)
        applied = [code for code, (status, _, _) in enumerate(table) if status is SetpointStatus.APPLIED]
        with self._cond:
            epoch = self._epoch
        pending: dict[str, _Pending] = {}
        if applied:
            for group, column in zip(batch.groups, columns):
                ok = np.isin(column, applied)
                if not ok.any():
                    continue
                names = group.names
                power = group.power_kw.tolist()
                index = group.mode.astype(np.int64) + 2
                # one shared record per mode (see _Pending), listed in batch order
                table = np.empty(len(names), dtype=object)
                table[:] = [_Pending(names[k], power[k], seq, epoch) for k in range(len(names))]
                pending.update(zip(group.miner_id[ok].tolist(), table[index[ok]].tolist()))
        with self._cond:
            self._pending.update(pending)
        self.last_timings = {"encode_s": encoded - start, "publish_s": published - encoded,
                             "results_s": time.monotonic() - published}
        return result

    def _publish_messages(self, messages: list[OutboundMessage], deadline: float) -> list[PublishOutcome]:
        if not messages:
            return []
        return self.publisher.publish([(m.topic, m.payload, m.expiry_s) for m in messages],
                                      max(0.001, deadline - time.monotonic()))

    def _publish(self, messages: list[OutboundMessage], outcomes: list[PublishOutcome | None], deadline: float) -> None:
        if not messages:
            return
        answers = self.publisher.publish([(m.topic, m.payload, m.expiry_s) for m in messages],
                                         max(0.001, deadline - time.monotonic()))
        for message, answer in zip(messages, answers):
            if message.group and answer.kind == "acked" and answer.code == 0:
                answer = PublishOutcome("acked", 0, f"group message ({len(message.indexes)} miners)")
            for i in message.indexes:
                outcomes[i] = answer

    def _transport_context(self, outcomes: list[PublishOutcome], weights: list[int] | None = None) -> str | None:
        """Why a "No matching subscribers" answer in this batch is the transport's doing, or None.

        ``weights``: setpoints per outcome (default one each; a group message's outcome stands for
        its rows without being repeated per miner). Records a transport fault (connection lost, no
        PUBACK) for the grace window first."""
        now = time.monotonic()
        if weights is None:
            weights = [1] * len(outcomes)
        with self._cond:
            if any(o.kind in ("lost", "timeout") for o, w in zip(outcomes, weights) if w):
                self._transport_fault_at = now
                self.transport_faults += 1
            fault_at = self._transport_fault_at
        acked = [(o, w) for o, w in zip(outcomes, weights) if w and o.kind == "acked"]
        acked_n = sum(w for _, w in acked)
        if acked_n >= 2 and all(o.code == _NO_MATCHING_SUBSCRIBERS for o, _ in acked):
            return (f"broker {self.host}:{self.port} has no subscriber for any of {acked_n} setpoints' topics "
                    f"(restarted broker or the miners' connection to it down)")
        if fault_at is not None and now - fault_at < self.resubscribe_grace_s:
            return (f"broker {self.host}:{self.port} has no subscriber for the setpoint topic "
                    f"{now - fault_at:.1f} s after a broker connection fault (miners re-subscribing)")
        return None

    def _verdict(self, outcome: PublishOutcome, transport: str | None) -> tuple[SetpointStatus, str]:
        """The status and reason for every setpoint a message with this outcome carried."""
        broker = f"{self.host}:{self.port}"
        # PUBACKs come from the broker whatever the miner does: a missing one is a transport fault
        if outcome.kind == "timeout":
            return SetpointStatus.NOT_SENT, f"transport: no PUBACK from {broker} within {self.puback_timeout_s} s"
        if outcome.kind == "lost":
            return SetpointStatus.NOT_SENT, f"transport: broker {broker}: {outcome.detail}"
        if outcome.kind == "refused" or outcome.code >= 0x80:
            return SetpointStatus.REJECTED, f"broker refused: {outcome.detail}"
        if outcome.code == _NO_MATCHING_SUBSCRIBERS:
            if transport is not None:
                return SetpointStatus.NOT_SENT, f"transport: {transport}"
            return SetpointStatus.UNREACHABLE, "broker has no subscriber for the setpoint topic (miner offline?)"
        via = f" for the {outcome.detail}" if outcome.detail.startswith("group message") else ""
        return SetpointStatus.APPLIED, f"broker acknowledged (PUBACK){via}; awaiting telemetry to verify"

    # ------------------------------------------------------------------ verification
    def _judge(self, sp: _Pending, telemetry: TelemetryMessage) -> str | None:
        if sp.mode == SLEEP:  # asleep draws the group's idle power, whatever the target says
            return f"telemetry confirms sleep at {telemetry.power_kw:.3f} kW" if telemetry.mode == SLEEP else None
        band = max(self.tolerance_kw, self.tolerance * sp.power_target_kw)
        if telemetry.mode == sp.mode and abs(telemetry.power_kw - sp.power_target_kw) <= band:
            return f"telemetry confirms {sp.mode} at {telemetry.power_kw:.3f} kW"
        return None

    def verify(self, timeout_s: float = 0.0) -> list[SetpointResult]:
        """Wait up to ``timeout_s`` for telemetry to confirm the outstanding setpoints; resolve them all."""
        start = time.monotonic()
        deadline = start + timeout_s
        with self._cond:
            # telemetry that arrived before the wait began may already confirm
            for miner_id, pending in self._pending.items():
                latest = self._latest.get(miner_id)
                if self._confirmation(miner_id, pending) is None and latest is not None and latest[0] > pending.after_seq:
                    verdict = self._judge(pending, latest[1])
                    if verdict is not None:
                        self._confirmed[miner_id] = (pending, verdict)
            while (any(self._confirmation(m, p) is None for m, p in self._pending.items())
                   and self._connected.is_set()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            pending_now, self._pending = self._pending, {}
            confirmed_now, self._confirmed = self._confirmed, {}
            latest_now = dict(self._latest)
            epoch_now, connected = self._epoch, self._connected.is_set()
        latency = time.monotonic() - start
        results = []
        for miner_id, pending in pending_now.items():
            confirmed = confirmed_now.get(miner_id)
            if confirmed is not None and confirmed[0] is pending:
                results.append(SetpointResult(miner_id, SetpointStatus.APPLIED, confirmed[1], latency))
                continue
            latest = latest_now.get(miner_id)
            heard = latest is not None and latest[0] > pending.after_seq
            if not heard and (not connected or epoch_now != pending.epoch):
                # no telemetry could reach us: that says nothing about the miner
                results.append(SetpointResult(
                    miner_id, SetpointStatus.NOT_SENT,
                    f"transport: telemetry connection to {self.host}:{self.port} lost since the setpoint was "
                    f"published; cannot verify", latency))
                continue
            results.append(SetpointResult(miner_id, SetpointStatus.UNVERIFIED,
                                          self._mismatch(pending, latest_now.get(miner_id)), latency))
        return results

    def _mismatch(self, pending: _Pending, latest: tuple[int, TelemetryMessage] | None) -> str:
        sp = pending
        band = max(self.tolerance_kw, self.tolerance * sp.power_target_kw)
        want = f"expected {sp.mode} at {sp.power_target_kw:.3f} ± {band:.3f} kW"
        if latest is None or latest[0] <= pending.after_seq:
            return f"no telemetry since the setpoint was published; {want}"
        tel = latest[1]
        hint = " (still booting)" if tel.mode == "booting" and sp.mode != SLEEP else ""
        return f"telemetry says {tel.mode} at {tel.power_kw:.3f} kW{hint}; {want}"

    def pending(self) -> list[str]:
        """Miners with a published setpoint not yet resolved by :meth:`verify`."""
        with self._cond:
            return sorted(self._pending)

    def telemetry(self, miner_id: str) -> TelemetryMessage | None:
        """The latest telemetry received from ``miner_id``, or None if none arrived yet.

        Parameters
        ----------
        miner_id : str
            The miner.

        Returns
        -------
        TelemetryMessage or None
            Its last ``in/telemetry/<miner>`` message (power kW, hashrate TH/s, mode).
        """
        with self._cond:
            latest = self._latest.get(miner_id)
        return latest[1] if latest else None

