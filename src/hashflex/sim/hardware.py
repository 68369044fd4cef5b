"""The hardware behind a simulated miner: hashboards, fans, temperatures and error counters.

Every firmware simulator (LuxOS in :mod:`hashflex.sim.miners`, the others in
:mod:`hashflex.sim.firmware`) reports its telemetry from one :class:`MinerHardware` per miner, so a fault
injected here shows up the same way through every protocol and through pyasic. SYNTHETIC: the numbers
are a simple physical sketch, not a vendor's thermal model:

- the power and hashrate of the mode (from :class:`~hashflex.sim.miners.SimMiner`) are split over the
  hashboards that are alive; a lost board (``boards_alive`` < ``boards``) takes its share of the hashrate
  and of the power with it (the firmware keeps running the others);
- ``efficiency_drift`` (1.0 = as rated) multiplies the power drawn for the same hashrate (J/TH rising:
  dust, degraded chips, a tired PSU);
- chip temperature = ambient + ``thermal_c_per_kw`` × board power / cooling, where cooling falls with
  the fans' speed (``fan_health`` 1.0 = healthy, 0.0 = stopped) and a ``thermal_resistance`` factor
  that grows with clogged heat sinks; the firmware's fan loop raises fan speed with temperature;
- ``hw_errors`` counts hardware errors; ``error_rate_per_h`` adds to it as simulated time passes.

API: ``MinerHardware(boards=3, fans=4, chips_per_board=110, ambient_c=30.0)``, fields above, and
``reading(power_kw, hashrate_th_s, hashing, now) -> HardwareReading``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["HardwareReading", "MinerHardware"]

FAN_MAX_RPM = 6000
FAN_IDLE_RPM = 1200


@dataclass(frozen=True)
class HardwareReading:
    """One telemetry sample, in the units firmwares report (W, GH/s per board, °C, RPM)."""

    power_w: float
    hashrate_th_s: float
    board_hashrate_ghs: tuple[float, ...]  # per board slot; 0.0 for a lost board
    board_alive: tuple[bool, ...]
    chip_temp_c: tuple[float, ...]
    board_temp_c: tuple[float, ...]
    fan_rpm: tuple[int, ...]
    hw_errors: int
    chips_per_board: int


@dataclass
class MinerHardware:
    """The physical state of one simulated miner; mutate the fields to inject faults (thread-safe reads)."""

    boards: int = 3
    fans: int = 4
    chips_per_board: int = 110
    ambient_c: float = 30.0
    boards_alive: int = 3
    efficiency_drift: float = 1.0  # power multiplier at the same hashrate (1.0 = rated J/TH)
    fan_health: float = 1.0  # 1.0 healthy; a failing fan set spins slower for the same command
    thermal_resistance: float = 1.0  # >1: clogged heat sinks, dried thermal paste
    thermal_c_per_kw: float = 9.0  # °C rise of a board per kW it draws, at full fan speed
    hw_errors: int = 0
    error_rate_per_h: float = 0.0
    _last: datetime | None = field(default=None, repr=False)
    _errors_frac: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reading(self, power_kw: float, hashrate_th_s: float, hashing: bool, now: datetime) -> HardwareReading:
        """Telemetry for a miner drawing ``power_kw`` / hashing ``hashrate_th_s`` as rated (kW, TH/s)."""
        with self._lock:
            if self._last is not None and now > self._last:
                self._errors_frac += self.error_rate_per_h * (now - self._last).total_seconds() / 3600.0
                whole = int(self._errors_frac)
                self.hw_errors += whole
                self._errors_frac -= whole
            self._last = now
            alive = max(0, min(self.boards, self.boards_alive))
            share = alive / self.boards if self.boards else 0.0
            if hashing:
                hashrate = hashrate_th_s * share
                power = power_kw * (share * self.efficiency_drift + (1 - share) * 0.05)
            else:
                hashrate, power = 0.0, power_kw
            per_board_kw = power / max(alive, 1) if hashing else 0.0
            # The firmware's fan loop: faster when hotter; a failing fan spins slower than commanded.
            rise_at_full = self.thermal_c_per_kw * per_board_kw * self.thermal_resistance
            command = min(1.0, 0.3 + rise_at_full / 60.0) if hashing else 0.2
            rpm = command * FAN_MAX_RPM * max(0.0, min(1.0, self.fan_health))
            cooling = max(rpm / FAN_MAX_RPM / max(command, 1e-9), 0.05)  # 1.0 when fans do what is asked
            chip = self.ambient_c + rise_at_full / cooling * 2.2
            board = self.ambient_c + rise_at_full / cooling * 1.6
            board_alive = tuple(i < alive for i in range(self.boards))
            per_board_ghs = hashrate * 1000.0 / alive if alive else 0.0
            return HardwareReading(
                power_w=power * 1000.0, hashrate_th_s=hashrate,
                board_hashrate_ghs=tuple(per_board_ghs if a and hashing else 0.0 for a in board_alive),
                board_alive=board_alive,
                chip_temp_c=tuple(round(chip, 1) if a else 0.0 for a in board_alive),
                board_temp_c=tuple(round(board, 1) if a else 0.0 for a in board_alive),
                fan_rpm=tuple(int(rpm) for _ in range(self.fans)) if hashing or rpm else (0,) * self.fans,
                hw_errors=self.hw_errors, chips_per_board=self.chips_per_board)
