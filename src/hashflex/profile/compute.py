"""The profile's ``compute`` section (issue 16): GPU clusters and the workloads they serve under the
site's one cap. Split from `hashflex.profile` (issue 11), which re-exports every name here."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import Field, model_validator

from hashflex.profile.base import NonNegFloat, PositiveFloat, _Strict, require_unique as _require_unique

class GpuCluster(_Strict):
    """A cluster of identical GPU nodes behind the site meter.

    Power model (per GPU, node power divided by ``gpus_per_node``): an idle GPU draws
    ``idle_power_kw / gpus_per_node``; a working GPU draws between ``min_power_cap_fraction`` and 1
    of ``full_power_kw / gpus_per_node`` (the vendor power cap, e.g. ``nvidia-smi -pl``) and its
    throughput, as a fraction of uncapped, follows ``throughput_curve``: concave points
    (power fraction, throughput fraction) ending at (1, 1). Default curve from published H100
    figures (700 W TDP; capping 700 → 600 W costs 5–8 % of memory-bound inference throughput and
    10–15 % of training step rate), see optimization/FORMULATION.md. Cooling adds
    ``cooling_overhead_fraction`` of the IT power; its sound power ``cooling_sound_power_dba`` is
    at full IT load (scaled down conservatively in proportion to the IT load)."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    gpu_model: str = "H100-SXM"
    nodes: Annotated[int, Field(ge=1)]
    gpus_per_node: Annotated[int, Field(ge=1)] = 8
    idle_power_kw: NonNegFloat = Field(description="per node, GPUs idle")
    full_power_kw: PositiveFloat = Field(description="per node, every GPU uncapped at full load")
    min_power_cap_fraction: float = Field(default=0.5, gt=0, le=1)
    throughput_curve: list[tuple[float, float]] = Field(
        default_factory=lambda: [(0.5, 0.70), (0.857, 0.93), (1.0, 1.0)],
        description="(power fraction of full, throughput fraction of uncapped), ascending, ending at (1, 1)")
    cooling_overhead_fraction: NonNegFloat = 0.15
    cooling_sound_power_dba: float = Field(default=0.0, ge=0, le=140)
    boot_minutes: NonNegFloat = 5.0
    drain_minutes: NonNegFloat = 2.0

    @model_validator(mode="after")
    def _curve(self) -> "GpuCluster":
        if self.full_power_kw <= self.idle_power_kw:
            raise ValueError("full_power_kw must exceed idle_power_kw")
        curve = self.throughput_curve
        if len(curve) < 1 or abs(curve[-1][0] - 1.0) > 1e-9 or abs(curve[-1][1] - 1.0) > 1e-9:
            raise ValueError("throughput_curve must end at (1.0, 1.0)")
        if curve[0][0] > self.min_power_cap_fraction + 1e-9:
            raise ValueError("throughput_curve must start at or below min_power_cap_fraction")
        slopes = []
        for (p0, q0), (p1, q1) in zip(curve, curve[1:]):
            if p1 <= p0 or q1 < q0:
                raise ValueError("throughput_curve points must ascend in power and not fall in throughput")
            slopes.append((q1 - q0) / (p1 - p0))
        if any(b > a + 1e-9 for a, b in zip(slopes, slopes[1:])):
            raise ValueError("throughput_curve must be concave (slopes must not increase)")
        return self

    @property
    def gpus(self) -> int:
        """GPUs in the cluster: nodes × GPUs per node."""
        return self.nodes * self.gpus_per_node


class InferenceService(_Strict):
    """Firm inference: serve ``demand_tokens_per_s`` (a constant, or the bundled trace scaled to
    ``demand_peak_tokens_per_s``) at ``service_level`` of demand; power-capped within the
    cluster's limits, stopped only in an emergency (the shortfall is reported and penalised)."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    cluster: str
    tokens_per_s_per_gpu: PositiveFloat = Field(description="uncapped throughput of one GPU for this model")
    demand_tokens_per_s: NonNegFloat = 0.0
    demand_trace: Literal["none", "azure_conv", "azure_code"] = "none"
    service_level: float = Field(default=0.99, gt=0, le=1)
    revenue_usd_per_million_tokens: NonNegFloat
    penalty_usd_per_million_tokens: NonNegFloat = Field(description="per million tokens short of the service level")


class BatchJob(_Strict):
    """A deferrable batch/training job: ``gpu_hours`` of uncapped-GPU work between ``release`` and
    ``deadline``, on at most ``max_gpus``; preemptible at ``checkpoint_cost_usd_per_gpu`` per GPU
    suspended (the work lost since the last checkpoint and the restart)."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    cluster: str
    gpu_hours: PositiveFloat
    max_gpus: Annotated[int, Field(ge=1)]
    release: dt.datetime
    deadline: dt.datetime
    revenue_usd_per_gpu_hour: NonNegFloat
    late_penalty_usd_per_gpu_hour: NonNegFloat = Field(description="per GPU-hour not done by the deadline")
    checkpoint_cost_usd_per_gpu: NonNegFloat = 0.0

    @model_validator(mode="after")
    def _window(self) -> "BatchJob":
        if self.release.tzinfo is None or self.deadline.tzinfo is None:
            raise ValueError("release and deadline need a UTC offset (e.g. 2024-03-01T06:00:00-06:00)")
        if self.deadline <= self.release:
            raise ValueError("deadline must be after release")
        return self


class SpotCapacity(_Strict):
    """Interruptible capacity: any number of GPUs up to ``max_gpus``, uncapped, at a lower price."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    cluster: str
    max_gpus: Annotated[int, Field(ge=0)]
    price_usd_per_gpu_hour: NonNegFloat


class ComputeSection(_Strict):
    """GPU clusters and the workloads they serve under the site's one cap (issue 16)."""

    clusters: list[GpuCluster] = Field(min_length=1)
    inference: list[InferenceService] = Field(default_factory=list)
    batch: list[BatchJob] = Field(default_factory=list)
    spot: list[SpotCapacity] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> "ComputeSection":
        ids = [c.id for c in self.clusters]
        _require_unique("compute.clusters", ids)
        _require_unique("compute workloads", [w.id for w in (*self.inference, *self.batch, *self.spot)])
        for workload in (*self.inference, *self.batch, *self.spot):
            if workload.cluster not in ids:
                raise ValueError(f"workload {workload.id!r} names unknown cluster {workload.cluster!r}")
        return self
