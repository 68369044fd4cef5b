"""Simulated site equipment speaking the real protocols (see :mod:`hashflex.sim.miners`)."""

from hashflex.sim.miners import (
    MinerSnapshot,
    MinerState,
    MqttSimulatedMiners,
    ScaledClock,
    SimMiner,
    SimulatedMinerFleet,
    miners_from_profile,
)

__all__ = [
    "MinerSnapshot",
    "MinerState",
    "MqttSimulatedMiners",
    "ScaledClock",
    "SimMiner",
    "SimulatedMinerFleet",
    "miners_from_profile",
]
