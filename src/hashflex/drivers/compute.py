"""How the plan reaches GPU clusters (issue 16): a small protocol and an MQTT driver.

Two commands, the levers the optimizer plans with:

- **power cap per node** — watts per GPU on one node, with an expiry; a node whose cap expires
  without renewal falls back to the cluster's lowest cap (curtail when in doubt, never uncapped);
- **suspend / resume a job** — a batch job checkpoints and frees its GPUs, or restarts.

``ComputeDriver.apply(commands) -> list[ComputeResult]`` answers one result per command, in order,
never raising for a node's or the broker's fault: ``applied`` (the cluster agent confirmed),
``rejected`` (refused locally before sending, or by the agent; the reason names the field),
``timeout`` (no confirmation in time) or ``not_sent`` (the broker is unreachable: the command must
not be taken as applied; the node keeps its last cap until it expires, then the lowest cap).

Wire format (MQTT, QoS 1, JSON): commands on ``hashflex/<site>/out/compute/<cluster>``
``{"command_id", "kind": "power_cap"|"suspend"|"resume", "node_id"|"job_id", "watts_per_gpu",
"issued_at", "expires_at"}``; the agent answers on ``hashflex/<site>/in/compute/ack``
``{"command_id", "status": "applied"|"rejected", "reason"}``.

How a real site maps it (nothing here requires these tools):

- power cap → ``nvidia-smi -i <gpu> -pl <watts>`` (or DCGM ``dcgmi config --set -P <watts>``) on each
  GPU of the node, run by a node agent; AMD: ``rocm-smi --setpoweroverdrive``;
- suspend → Slurm ``scontrol suspend <jobid>`` (SIGSTOP, GPUs stay allocated) or, to free the GPUs,
  a checkpoint then ``scontrol requeue <jobid>``; resume → ``scontrol resume`` / the requeued job
  starting again. Kubernetes: scale the job's replicas to 0 (``kubectl scale``) or set
  ``spec.suspend: true`` on a ``batch/v1`` Job (``false`` to resume); power caps via the NVIDIA GPU
  Operator's DCGM on each node.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

COMMAND_KINDS = ("power_cap", "suspend", "resume")
Status = Literal["applied", "rejected", "timeout", "not_sent"]


@dataclass(frozen=True)
class ComputeCommand:
    """One command. ``watts_per_gpu`` for ``power_cap`` (with ``node_id``); ``job_id`` for
    ``suspend``/``resume``. ``expires_at``: tz-aware; a cap past it is not honoured.

    Checked by :func:`check_command` before it is sent, not at construction.

    Parameters
    ----------
    kind : str
        ``power_cap``, ``suspend`` or ``resume``.
    cluster_id : str
        The GPU cluster (``profile.compute.clusters[*].id``).
    issued_at : datetime
        When it was issued, timezone-aware.
    expires_at : datetime
        After it the cap is not honoured and the node falls back to the cluster's lowest cap;
        timezone-aware, after ``issued_at``.
    node_id : str, optional
        The node, for ``power_cap``.
    job_id : str, optional
        The batch job, for ``suspend`` / ``resume``.
    watts_per_gpu : float, optional
        The cap, W per GPU, for ``power_cap`` (within the cluster's :class:`CapLimits`).
    command_id : str, default ""
        The id the agent's ack names ("": the driver draws a random one).
    """

    kind: str
    cluster_id: str
    issued_at: datetime
    expires_at: datetime
    node_id: str | None = None
    job_id: str | None = None
    watts_per_gpu: float | None = None
    command_id: str = ""

    def to_json(self) -> dict:
        """The wire payload (times ISO 8601); see the module docstring."""
        return {"command_id": self.command_id, "kind": self.kind, "cluster_id": self.cluster_id,
                "node_id": self.node_id, "job_id": self.job_id, "watts_per_gpu": self.watts_per_gpu,
                "issued_at": self.issued_at.isoformat(), "expires_at": self.expires_at.isoformat()}


@dataclass(frozen=True)
class ComputeResult:
    """The outcome of one compute command.

    Parameters
    ----------
    command_id : str
        The command's id (drawn by the driver when the command had none).
    status : str
        ``applied`` (the agent confirmed), ``rejected`` (refused before sending or by the agent),
        ``timeout`` (no confirmation in time) or ``not_sent`` (the broker is unreachable).
    reason : str, default ""
        Why, naming the field for a local refusal.
    """

    command_id: str
    status: Status
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True only for ``applied``."""
        return self.status == "applied"


@dataclass(frozen=True)
class CapLimits:
    """Per-GPU cap range of a cluster, in watts (the profile's full power × min fraction .. full).

    Parameters
    ----------
    min_w : float
        The lowest cap, W per GPU (the fallback when a cap expires).
    max_w : float
        The highest cap (full power), W per GPU.
    """

    min_w: float
    max_w: float


def check_command(command: ComputeCommand, limits: dict[str, CapLimits]) -> str | None:
    """Why ``command`` must not be sent (a sentence naming the field), or None if it may be.

    Parameters
    ----------
    command : ComputeCommand
        The command.
    limits : dict of str to CapLimits
        Cluster id → its per-GPU cap range (``control.compute_commands.cap_limits``).

    Returns
    -------
    str or None
        The refusal (``kind``, ``cluster_id``, ``issued_at/expires_at``, ``expires_at``, ``node_id``,
        ``watts_per_gpu`` or ``job_id``), or None.
    """
    if command.kind not in COMMAND_KINDS:
        return f"kind: {command.kind!r} is not one of {COMMAND_KINDS}"
    if command.cluster_id not in limits:
        return f"cluster_id: unknown cluster {command.cluster_id!r}"
    if command.expires_at.tzinfo is None or command.issued_at.tzinfo is None:
        return "issued_at/expires_at: must be tz-aware"
    if command.expires_at <= command.issued_at:
        return "expires_at: must be after issued_at"
    if command.kind == "power_cap":
        if not command.node_id:
            return "node_id: required for power_cap"
        cap = limits[command.cluster_id]
        watts = command.watts_per_gpu
        if watts is None or not (cap.min_w <= watts <= cap.max_w):
            return (f"watts_per_gpu: {watts} outside the cluster's cap range "
                    f"{cap.min_w:.0f}..{cap.max_w:.0f} W")
    elif not command.job_id:
        return f"job_id: required for {command.kind}"
    return None


class ComputeDriver(Protocol):
    """Applies compute commands; one result per command, in order; never raises for a fault."""

    def apply(self, commands: Iterable[ComputeCommand]) -> list[ComputeResult]:
        """Send every command.

        Parameters
        ----------
        commands : iterable of ComputeCommand
            The commands.

        Returns
        -------
        list of ComputeResult
            One per command, in order; ``not_sent`` when the transport is down.
        """
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


class MqttComputeDriver:
    """`ComputeDriver` over MQTT (see the module docstring for topics and payloads).

    Connects at construction (waiting up to ``connect_timeout_s``); when the broker is not reachable
    paho keeps retrying and commands are answered ``not_sent`` meanwhile. Commands are published at
    QoS 1 (MQTT v5 §4.3.2); only the agent's ack on ``in/compute/ack`` makes one ``applied``.

    Parameters
    ----------
    site : str
        The site id: topics ``hashflex/<site>/out/compute/<cluster>`` and ``.../in/compute/ack``.
    limits : dict of str to CapLimits
        Cluster id → per-GPU cap range; commands outside them are rejected before sending.
    host : str, default "127.0.0.1"
        The broker's host.
    port : int, default 1883
        The broker's TCP port.
    ack_timeout_s : float, default 5.0
        How long to wait for the agent's confirmations of one batch, s.
    connect_timeout_s : float, default 5.0
        How long the constructor waits for the first connection, s.
    client_id : str, optional
        MQTT client id (default ``hashflex-<site>-compute-<random>``).
    username, password : str, optional
        Broker credentials.
    tls_ca_file : str, optional
        CA certificate file; TLS is used when given.
    """

    def __init__(self, site: str, limits: dict[str, CapLimits], host: str = "127.0.0.1", port: int = 1883, *,
                 ack_timeout_s: float = 5.0, connect_timeout_s: float = 5.0, client_id: str | None = None,
                 username: str | None = None, password: str | None = None, tls_ca_file: str | None = None) -> None:
        from hashflex.feeds.mqtt import mqtt_client

        self.site, self.limits, self.ack_timeout_s = site, limits, ack_timeout_s
        self._acks: dict[str, dict] = {}
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._client = mqtt_client(client_id or f"hashflex-{site}-compute-{uuid.uuid4().hex[:8]}",
                                   username=username, password=password, tls_ca_file=tls_ca_file)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *args: self._connected.clear()
        self._client.on_message = self._on_message
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError:
            pass  # not connected: apply answers not_sent; paho's loop keeps retrying
        self._client.loop_start()
        self._connected.wait(connect_timeout_s)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(f"hashflex/{self.site}/in/compute/ack", qos=1)
            self._connected.set()

    def _on_message(self, client, userdata, message) -> None:
        try:
            ack = json.loads(message.payload)
            command_id = str(ack["command_id"])
        except (ValueError, KeyError, TypeError):
            return  # a malformed ack confirms nothing; the command times out
        with self._cond:
            self._acks[command_id] = ack
            self._cond.notify_all()

    def apply(self, commands: Iterable[ComputeCommand]) -> list[ComputeResult]:
        """Check, publish and wait for the agent's acks of a batch (up to ``ack_timeout_s`` in all).

        Parameters
        ----------
        commands : iterable of ComputeCommand
            The commands; one without ``command_id`` gets a random one.

        Returns
        -------
        list of ComputeResult
            One per command, in order: ``rejected`` (by :func:`check_command`, or by the agent),
            ``not_sent`` (broker not connected, publish failed), ``timeout`` (no ack in time) or
            ``applied``.
        """
        import time

        commands = list(commands)
        results: dict[int, ComputeResult] = {}
        waiting: dict[int, str] = {}
        for i, command in enumerate(commands):
            command_id = command.command_id or uuid.uuid4().hex
            problem = check_command(command, self.limits)
            if problem:
                results[i] = ComputeResult(command_id, "rejected", problem)
                continue
            if not self._connected.is_set():
                results[i] = ComputeResult(command_id, "not_sent", "broker not connected")
                continue
            payload = json.dumps({**command.to_json(), "command_id": command_id})
            info = self._client.publish(f"hashflex/{self.site}/out/compute/{command.cluster_id}", payload, qos=1)
            if info.rc != 0:
                results[i] = ComputeResult(command_id, "not_sent", f"publish failed (rc {info.rc})")
                continue
            waiting[i] = command_id
        deadline = time.monotonic() + self.ack_timeout_s
        with self._cond:
            while any(cid not in self._acks for cid in waiting.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            for i, command_id in waiting.items():
                ack = self._acks.pop(command_id, None)
                if ack is None:
                    results[i] = ComputeResult(command_id, "timeout", f"no confirmation in {self.ack_timeout_s:g} s")
                elif ack.get("status") == "applied":
                    results[i] = ComputeResult(command_id, "applied", str(ack.get("reason", "")))
                else:
                    results[i] = ComputeResult(command_id, "rejected", str(ack.get("reason", "refused by the agent")))
        return [results[i] for i in range(len(commands))]

    def close(self) -> None:
        """Disconnect and stop the network thread, waiting for it at most ``feeds.mqtt.STOP_TIMEOUT_S``.

        Why bounded: with the broker's host unreachable paho's thread hangs in a TCP connect (up to
        its 5 s connect timeout) and ``loop_stop()`` alone waits for it without a bound, delaying a
        daemon's SIGTERM exit (issue 15, H3); the MQTT drivers stop their clients the same way."""
        from hashflex.feeds.mqtt import stop_clients

        stop_clients([self._client], what="compute driver")
