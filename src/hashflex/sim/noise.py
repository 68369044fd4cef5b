"""Simulated noise sensors at the receptors, driven by the units actually running.

They use the same acoustics as the optimizer (point sources, energy summation over units, the
receptor's background level) plus a per-receptor calibration error and measurement noise, so a
test can check that the control loop keeps *measured* levels under the caps, not only modelled
ones. The error terms are SYNTHETIC and seeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from hashflex.acoustics import modelled_laeq_dba
from hashflex.messages import NoiseMessage
from hashflex.profile import SiteProfile


@dataclass
class NoiseSensorSim:
    """One simulated class-1 sound level meter per receptor.

    ``bias_db`` is how far reality sits above the model at each receptor (terrain, wind, tonal
    fans the model misses); ``sigma_db`` the interval-to-interval scatter of a 60 s LAeq.

    Parameters
    ----------
    profile : SiteProfile
        The site: receptors, groups' sound power and attenuations (``acoustics.modelled_laeq_dba``).
    bias_db : dict of str to float
        Receptor id → calibration error, dB (reality above the model; SYNTHETIC).
    sigma_db : float, default 0.5
        Standard deviation of the Gaussian scatter of one reading, dB (SYNTHETIC).
    averaging_s : float, default 60.0
        The readings' averaging time, s.
    seed : int, default 0
        Seed of the scatter's random generator (reproducible runs).
    """

    profile: SiteProfile
    bias_db: dict[str, float] = field(default_factory=dict)
    sigma_db: float = 0.5
    averaging_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def measure(self, running: dict[tuple[str, str], int], at: datetime) -> list[NoiseMessage]:
        """One LAeq reading per receptor for the units ``running`` ((group, mode) → count).

        Parameters
        ----------
        running : dict of (str, str) to int
            Units running per (group id, mode name).
        at : datetime
            The readings' timestamp, timezone-aware.

        Returns
        -------
        list of NoiseMessage
            One per receptor, in profile order: the modelled level (background included) + bias +
            scatter, dB(A) rounded to 0.01, class-1 meter, ``simulated=True``.
        """
        messages = []
        for receptor in self.profile.receptors:
            level = modelled_laeq_dba(self.profile, running, receptor.id)
            level += self.bias_db.get(receptor.id, 0.0) + float(self._rng.normal(0.0, self.sigma_db))
            messages.append(NoiseMessage(receptor_id=receptor.id, laeq_dba=round(level, 2),
                                         averaging_s=self.averaging_s, timestamp=at, meter_class=1,
                                         simulated=True))
        return messages
