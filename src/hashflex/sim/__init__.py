"""Simulated site equipment speaking the real protocols (see :mod:`hashflex.sim.miners`)."""

from hashflex.sim.miners import (  # noqa: F401 - re-exported (the package's __all__ is sim.miners')
    MinerSnapshot,
    MinerState,
    MqttSimulatedMiners,
    ScaledClock,
    SimMiner,
    SimulatedMinerFleet,
    miners_from_profile,
)

from hashflex.sim.miners import __all__  # noqa: E402,F401 - one list of what the package exports
