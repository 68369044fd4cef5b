"""One telemetry sample of one miner, in the fields every firmware (and pyasic's MinerData) reports.

This is the input of the health detectors (:mod:`hashflex.health.detectors`) and of the predictive
model (:mod:`hashflex.health.predict`); a real fleet's readings replace the simulated ones field for
field. Units are in the names; a field a firmware does not report is None (never a made-up 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["MinerReading", "reading_from_telemetry"]


@dataclass(frozen=True)
class MinerReading:
    """A miner's state at ``at``: what it draws and hashes, temperatures, fans, boards, errors.

    ``setpoint_power_kw`` is what it was told to draw (None: sleeping or not known);
    ``chip_temp_c`` / ``board_temp_c`` are per hashboard (None for a board without a sensor reading);
    ``hashboards`` is how many report chips, ``expected_hashboards`` how many the model has;
    ``hw_errors`` is the firmware's cumulative hardware-error counter; ``ambient_c`` the inlet temperature.
    """

    miner_id: str
    at: datetime
    power_kw: float | None
    hashrate_th_s: float | None
    setpoint_power_kw: float | None = None
    chip_temp_c: tuple[float | None, ...] = ()
    board_temp_c: tuple[float | None, ...] = ()
    fan_rpm: tuple[int | None, ...] = ()
    hashboards: int | None = None
    expected_hashboards: int | None = None
    hw_errors: int | None = None
    ambient_c: float | None = None
    mode: str | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError(f"reading of {self.miner_id}: at must be timezone-aware")
        for name in ("power_kw", "hashrate_th_s", "setpoint_power_kw"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"reading of {self.miner_id}: {name} must be >= 0, got {value}")

    @property
    def max_chip_temp_c(self) -> float | None:
        """The hottest chip over the boards (°C); None when no board reports one."""
        temps = [t for t in self.chip_temp_c if t is not None]
        return max(temps) if temps else None

    @property
    def efficiency_j_th(self) -> float | None:
        """J/TH = W / (TH/s); None when not hashing or not reported."""
        if self.power_kw is None or not self.hashrate_th_s:
            return None
        return self.power_kw * 1000.0 / self.hashrate_th_s


def reading_from_telemetry(message: object, setpoint_power_kw: float | None = None) -> MinerReading:
    """An MQTT ``TelemetryMessage`` as a reading.

    Its one ``temperature_c`` is taken as the hottest chip; the firmware's ``errors`` strings are
    counted in ``extra["errors"]`` (MQTT telemetry carries no cumulative hardware-error counter, so
    ``hw_errors`` stays None).

    Parameters
    ----------
    message : TelemetryMessage
        :mod:`hashflex.messages`.
    setpoint_power_kw : float, optional
        What the miner was told to draw (kW), when known.

    Returns
    -------
    MinerReading

    Raises
    ------
    ValueError
        A naive timestamp or a negative power or hashrate (:class:`MinerReading`).
    """
    return MinerReading(
        miner_id=message.miner_id,  # type: ignore[attr-defined]
        at=message.timestamp,  # type: ignore[attr-defined]
        power_kw=message.power_kw,  # type: ignore[attr-defined]
        hashrate_th_s=message.hashrate_th_s,  # type: ignore[attr-defined]
        setpoint_power_kw=setpoint_power_kw,
        chip_temp_c=(message.temperature_c,),  # type: ignore[attr-defined]
        mode=message.mode,  # type: ignore[attr-defined]
        extra={"errors": float(len(message.errors))})  # type: ignore[attr-defined]
