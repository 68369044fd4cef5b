"""A simulated GPU cluster agent that follows the compute driver protocol over MQTT (issue 16).

It subscribes to ``hashflex/<site>/out/compute/<cluster>``, checks each command with the same rule
as the driver (`drivers.compute.check_command`) plus its own knowledge of nodes and jobs, applies
it, and answers on ``hashflex/<site>/in/compute/ack``. Safe behaviour: a node whose cap has expired
(`tick`) falls back to the lowest cap; a node starts at the lowest cap until told otherwise.

The power model is the optimizer's: every GPU of a node runs at its cap (a busy node); cooling adds
``cooling_overhead`` of the IT power. Not a device simulator: it is a stand-in for a node agent
(nvidia-smi / DCGM) and the scheduler (Slurm / Kubernetes) to test the control path end to end.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime

from hashflex.drivers.compute import CapLimits, ComputeCommand, check_command
from hashflex.frames import utc_now


class SimulatedCluster:
    """One GPU cluster's agent (SIMULATED): follows compute commands over MQTT; thread-safe reads.

    Parameters
    ----------
    site : str
        Site id (topic prefix ``hashflex/<site>/``).
    cluster_id : str
    nodes : list[str]
        Node ids; each starts at the lowest cap.
    jobs : list[str]
        Job ids; each starts running.
    limits : CapLimits
        The cluster's per-GPU cap range (W), as the driver checks it.
    gpus_per_node : int, default 8
    cooling_overhead : float, default 0.15
        Cooling power as a fraction of IT power.
    host : str, default "127.0.0.1"
    port : int, default 1883
        The MQTT broker.
    clock : Callable[[], datetime], default utc_now
    """

    def __init__(self, site: str, cluster_id: str, nodes: list[str], jobs: list[str], limits: CapLimits, *,
                 gpus_per_node: int = 8, cooling_overhead: float = 0.15, host: str = "127.0.0.1",
                 port: int = 1883, clock: Callable[[], datetime] = utc_now) -> None:
        self.site, self.cluster_id, self.limits, self.clock = site, cluster_id, limits, clock
        self.gpus_per_node, self.cooling_overhead = gpus_per_node, cooling_overhead
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self.cap_w = {node: limits.min_w for node in nodes}
        self.cap_expires: dict[str, datetime | None] = {node: None for node in nodes}
        self.job_running = {job: True for job in jobs}
        self.applied: list[str] = []
        self._client = None

    def start(self) -> None:
        """Connect to the broker and subscribe to ``hashflex/<site>/out/compute/<cluster>``.

        Raises
        ------
        OSError
            The broker cannot be reached.
        """
        from hashflex.feeds.mqtt import mqtt_client

        self._client = mqtt_client(f"hashflex-{self.site}-simcluster-{self.cluster_id}")
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            f"hashflex/{self.site}/out/compute/{self.cluster_id}", qos=1)
        self._client.on_message = self._on_message
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        """Stop the network loop and disconnect (no-op before :meth:`start`)."""
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()

    def _on_message(self, client, userdata, message) -> None:
        command_id = ""
        try:
            data = json.loads(message.payload)
            command_id = str(data["command_id"])
            command = ComputeCommand(
                kind=data["kind"], cluster_id=data["cluster_id"], node_id=data.get("node_id"),
                job_id=data.get("job_id"), watts_per_gpu=data.get("watts_per_gpu"),
                issued_at=datetime.fromisoformat(data["issued_at"]),
                expires_at=datetime.fromisoformat(data["expires_at"]), command_id=command_id)
            status, reason = self.handle(command)
        except (ValueError, KeyError, TypeError) as exc:
            status, reason = "rejected", f"malformed command: {exc}"
        client.publish(f"hashflex/{self.site}/in/compute/ack",
                       json.dumps({"command_id": command_id, "status": status, "reason": reason}), qos=1)

    def handle(self, command: ComputeCommand) -> tuple[str, str]:
        """Apply one command with the driver's rule plus this cluster's nodes and jobs.

        Parameters
        ----------
        command : ComputeCommand
            ``power_cap`` (a node's per-GPU cap, W, until ``expires_at``), ``suspend`` or ``resume`` (a job).

        Returns
        -------
        status : str
            ``applied`` or ``rejected``.
        reason : str
            Why it was rejected, naming the field; empty when applied.
        """
        problem = check_command(command, {self.cluster_id: self.limits})
        if problem:
            return "rejected", problem
        if command.expires_at <= self.clock():
            return "rejected", "expires_at: already expired"
        with self._lock:
            if command.kind == "power_cap":
                if command.node_id not in self.cap_w:
                    return "rejected", f"node_id: unknown node {command.node_id!r}"
                self.cap_w[command.node_id] = float(command.watts_per_gpu)
                self.cap_expires[command.node_id] = command.expires_at
            else:
                if command.job_id not in self.job_running:
                    return "rejected", f"job_id: unknown job {command.job_id!r}"
                self.job_running[command.job_id] = command.kind == "resume"
            self.applied.append(command.command_id)
        return "applied", ""

    def tick(self) -> list[str]:
        """Expire stale caps to the lowest cap (the safe side).

        Returns
        -------
        list[str]
            The nodes that fell back.
        """
        now = self.clock()
        fell_back = []
        with self._lock:
            for node, expires in self.cap_expires.items():
                if expires is not None and expires <= now:
                    self.cap_w[node] = self.limits.min_w
                    self.cap_expires[node] = None
                    fell_back.append(node)
        return fell_back

    def site_kw(self) -> float:
        """Cluster draw with every GPU at its node's cap, cooling included.

        Returns
        -------
        float
            kW.
        """
        with self._lock:
            it_kw = sum(self.cap_w.values()) * self.gpus_per_node / 1000.0
        return it_kw * (1.0 + self.cooling_overhead)
