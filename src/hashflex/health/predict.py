"""Predictive maintenance: rank miners by their risk of failing within N days, from telemetry trends.

No public miner telemetry exists to train on, so :func:`simulate_fleet` builds a **SYNTHETIC** fleet
with documented, labelled failure modes. The model only sees :class:`~hashflex.health.reading.MinerReading`
fields a real fleet reports (chip temperature, ambient, power, hashrate, fan RPM, hardware-error
counter), so a real fleet's history (with its repair log as labels) can replace the simulation:
``features(readings)`` → ``RiskModel.fit(X, y)`` → ``RiskModel.risk(X)``.

Failure modes of the simulation (each failing miner has one; onset ``onset_days`` before the failure,
drawn uniformly in [8, 25] days; healthy miners share the same noise, daily ambient swings, and a few
benign error bursts and hot spells as decoys):

- ``fan_bearing``: a fan's bearing wears; the fan loop commands more speed for the same airflow, so
  the fan's RPM creeps up (to +35 % at failure) and its RPM gets noisier; at failure the fan stalls.
- ``thermal_degradation``: dried thermal paste / clogged heat sinks: chip temperature at the same power
  and ambient climbs (to +18 °C at failure); at failure the board overheats and shuts down.
- ``chip_degradation``: failing ASICs: the hardware-error rate grows exponentially (×40 at failure)
  and the hashrate sags slightly; at failure the hashboard drops out.
- ``psu_degradation``: the PSU's efficiency falls: power at the same hashrate rises (+9 % at failure).

Features (:data:`FEATURES`) over a trailing window (default 7 days) of one miner: the slope per day of
chip temperature rise over ambient per kW; the relative slope of mean fan RPM; the largest relative
slope of any single fan; the log-ratio of the recent to the earlier error rate; the recent error
rate; the relative slope of J/TH. All slopes are least squares, so a single spike moves them little.

Model: :class:`RiskModel`, L2-regularised logistic regression fitted by Newton's method in numpy (seven
interpretable features; no new dependency). Evaluation (:func:`evaluate`): daily snapshots; a
snapshot is positive when the miner fails within ``horizon_days``; precision and recall of the top
``flag_fraction`` of risks, and *lead-time recall*: the share of failures flagged at least ``lead_days``
before they happened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np

from hashflex.health.reading import MinerReading

__all__ = ["FAILURE_MODES", "FEATURES", "Evaluation", "RiskModel", "SimulatedMiner", "evaluate", "features",
           "simulate_fleet", "snapshots"]

FAILURE_MODES = ("fan_bearing", "thermal_degradation", "chip_degradation", "psu_degradation")
FEATURES = ("temp_rise_slope", "fan_rpm_slope", "max_single_fan_slope", "error_rate_growth", "error_rate_recent",
            "efficiency_slope", "fan_rpm_noise")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class SimulatedMiner:
    """One SYNTHETIC miner's history and its label (``failure_day`` None for a healthy miner)."""

    miner_id: str
    readings: list[MinerReading]
    failure_mode: str | None = None
    failure_day: float | None = None
    onset_days: float | None = None
    decoys: list[str] = field(default_factory=list)


def simulate_fleet(miners: int = 300, days: int = 60, *, samples_per_day: int = 6, failure_share: float = 0.25,
                   seed: int = 0) -> list[SimulatedMiner]:
    """A SYNTHETIC fleet with labelled failure modes (see the module docstring).

    Deterministic for a ``seed``. Not real data: use it to test the model, never to claim accuracy
    on a real fleet.

    Parameters
    ----------
    miners : int, default 300
    days : int, default 60
        Length of every history (days, from :data:`T0`).
    samples_per_day : int, default 6
        Readings per miner per day.
    failure_share : float, default 0.25
        Fraction of miners that fail within the window.
    seed : int, default 0

    Returns
    -------
    list[SimulatedMiner]
    """
    rng = np.random.default_rng(seed)
    steps = days * samples_per_day
    t_days = np.arange(steps) / samples_per_day
    out = []
    for i in range(miners):
        mode = None
        failure_day = onset = None
        if rng.random() < failure_share:
            mode = FAILURE_MODES[int(rng.integers(len(FAILURE_MODES)))]
            failure_day = float(rng.uniform(20, days + 15))  # some fail after the window (label unseen)
            onset = float(rng.uniform(8, 25))
        power0 = float(rng.uniform(2.9, 3.6))
        j_th = float(rng.uniform(20.0, 30.0))
        ambient = 25 + 8 * np.sin(2 * np.pi * (t_days - 0.3)) + rng.normal(0, 1.0, steps) \
            + float(rng.uniform(-5, 5))
        temp_coef = float(rng.uniform(9.0, 12.0))  # °C per kW of chip rise
        fan_base = float(rng.uniform(4000, 5200))
        err_base = float(rng.uniform(2, 20))  # errors per day
        progress = np.zeros(steps)
        if mode is not None:
            assert failure_day is not None and onset is not None
            progress = np.clip((t_days - (failure_day - onset)) / onset, 0.0, 1.0)
        decoys = []
        power = power0 * (1 + rng.normal(0, 0.01, steps))
        hashrate = power0 * 1000 / j_th * (1 + rng.normal(0, 0.01, steps))
        if mode == "psu_degradation":
            power = power * (1 + 0.09 * progress ** 1.5)
        if mode == "chip_degradation":
            hashrate = hashrate * (1 - 0.03 * progress)
        chip = ambient + temp_coef * power + rng.normal(0, 1.2, steps)
        if mode == "thermal_degradation":
            chip = chip + 18 * progress ** 1.3
        if rng.random() < 0.1:  # decoy: a hot spell (the whole site, not this miner) for two days
            start = int(rng.integers(0, max(1, steps - 2 * samples_per_day)))
            bump = np.zeros(steps)
            bump[start:start + 2 * samples_per_day] = 6.0
            ambient, chip = ambient + bump, chip + bump
            decoys.append("hot_spell")
        fans = np.tile(fan_base, (4, steps)) * (1 + rng.normal(0, 0.015, (4, steps)))
        fans = fans * (1 + 0.004 * (ambient - 25))  # the fan loop follows the ambient
        if mode == "fan_bearing":
            bad = int(rng.integers(4))
            fans[bad] = fans[bad] * (1 + 0.35 * progress) + rng.normal(0, 1, steps) * 250 * progress
        rate = err_base * np.exp(np.log(40.0) * progress ** 2) if mode == "chip_degradation" else \
            np.full(steps, err_base)
        if rng.random() < 0.1:  # decoy: one day of an error burst (a pool glitch, a brown-out)
            start = int(rng.integers(0, max(1, steps - samples_per_day)))
            rate = rate.copy()
            rate[start:start + samples_per_day] *= 15
            decoys.append("error_burst")
        errors = np.cumsum(rng.poisson(rate / samples_per_day))
        miner_id = f"sim-{i:04d}"
        last = steps if failure_day is None else min(steps, int(failure_day * samples_per_day))
        readings = [MinerReading(miner_id=miner_id, at=T0 + timedelta(days=float(t_days[k])),
                                 power_kw=float(power[k]), hashrate_th_s=float(hashrate[k]),
                                 chip_temp_c=(float(chip[k]),), fan_rpm=tuple(int(f) for f in fans[:, k]),
                                 hw_errors=int(errors[k]), ambient_c=float(ambient[k]), hashboards=3,
                                 expected_hashboards=3)
                    for k in range(last)]
        out.append(SimulatedMiner(miner_id, readings, mode, failure_day, onset, decoys))
    return out


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0:
        return 0.0
    xm = x - x.mean()
    return float((xm * (y - y.mean())).sum() / (xm * xm).sum())


def features(readings: Sequence[MinerReading]) -> np.ndarray:
    """The :data:`FEATURES` of one miner's trailing window.

    Parameters
    ----------
    readings : Sequence[MinerReading]
        One miner's readings, oldest first (fewer than 4: all zeros).

    Returns
    -------
    numpy.ndarray
        Shape ``(len(FEATURES),)``; 0.0 where the fields a feature needs are missing.
    """
    if len(readings) < 4:
        return np.zeros(len(FEATURES))
    t = np.array([(r.at - readings[0].at).total_seconds() / 86400 for r in readings])
    out = np.zeros(len(FEATURES))
    rise = [(tt, (r.max_chip_temp_c - r.ambient_c) / r.power_kw) for tt, r in zip(t, readings)
            if r.max_chip_temp_c is not None and r.ambient_c is not None and r.power_kw]
    if len(rise) >= 3:
        a = np.array(rise)
        out[0] = _slope(a[:, 0], a[:, 1])
    fan_rows = [(tt, r.fan_rpm) for tt, r in zip(t, readings) if r.fan_rpm and None not in r.fan_rpm]
    if len(fan_rows) >= 3:
        ft = np.array([x for x, _ in fan_rows])
        fans = np.array([f for _, f in fan_rows], dtype=float)
        mean = fans.mean(axis=1)
        out[1] = _slope(ft, mean / mean.mean())
        out[2] = max(_slope(ft, fans[:, j] / fans[:, j].mean()) for j in range(fans.shape[1]))
        ratio = fans / np.median(fans, axis=1, keepdims=True)
        out[6] = float(np.max(np.std(ratio, axis=0)))
    errs = [(tt, r.hw_errors) for tt, r in zip(t, readings) if r.hw_errors is not None]
    if len(errs) >= 4:
        a = np.array(errs, dtype=float)
        split = a[-1, 0] - 2.0  # the last two days against the rest
        recent, earlier = a[a[:, 0] >= split], a[a[:, 0] <= split]
        rate = lambda s: max(0.0, (s[-1, 1] - s[0, 1]) / max(s[-1, 0] - s[0, 0], 1e-9)) if len(s) >= 2 else 0.0  # noqa: E731
        out[3] = math.log1p(rate(recent)) - math.log1p(rate(earlier))
        out[4] = math.log1p(rate(recent))
    eff = [(tt, r.efficiency_j_th) for tt, r in zip(t, readings) if r.efficiency_j_th is not None]
    if len(eff) >= 3:
        a = np.array(eff)
        out[5] = _slope(a[:, 0], a[:, 1] / a[:, 1].mean())
    return out


def snapshots(fleet: Sequence[SimulatedMiner], *, window_days: float = 7.0, horizon_days: float = 7.0,
              every_days: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[tuple[str, float, float | None]]]:
    """Feature snapshots of every miner every ``every_days``, labelled.

    Parameters
    ----------
    fleet : Sequence[SimulatedMiner]
        Histories with their labels (a real fleet: its history and repair log in the same form).
    window_days : float, default 7.0
        Trailing window of each snapshot (days).
    horizon_days : float, default 7.0
        A snapshot is positive when the miner fails within this many days after it.
    every_days : float, default 1.0

    Returns
    -------
    x : numpy.ndarray
        Shape ``(n, len(FEATURES))``.
    y : numpy.ndarray
        Shape ``(n,)``, 1 for positive snapshots.
    meta : list[tuple[str, float, float or None]]
        Per row: miner id, day (since :data:`T0`), days to failure (None: never fails).
    """
    rows, labels, meta = [], [], []
    for miner in fleet:
        if not miner.readings:
            continue
        times = np.array([(r.at - T0).total_seconds() / 86400 for r in miner.readings])
        day = window_days
        while day <= times[-1] + 1e-9:
            lo, hi = np.searchsorted(times, day - window_days), np.searchsorted(times, day, side="right")
            rows.append(features(miner.readings[lo:hi]))
            to_fail = None if miner.failure_day is None else miner.failure_day - day
            labels.append(1 if to_fail is not None and 0 < to_fail <= horizon_days else 0)
            meta.append((miner.miner_id, day, to_fail))
            day += every_days
    return np.array(rows), np.array(labels), meta


class RiskModel:
    """L2-regularised logistic regression on standardised features (Newton's method, numpy).

    Parameters
    ----------
    l2 : float, default 1.0
        Ridge penalty on the weights (not the intercept).
    """

    def __init__(self, l2: float = 1.0) -> None:
        self.l2 = l2
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.weights: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray, iterations: int = 50) -> RiskModel:
        """Fit to labelled snapshots, the classes weighted equally.

        Parameters
        ----------
        x : numpy.ndarray
            Shape ``(n, len(FEATURES))``.
        y : numpy.ndarray
            Shape ``(n,)``, 0 or 1.
        iterations : int, default 50
            Most Newton steps (stops when a step is under 1e-8).

        Returns
        -------
        RiskModel
            Itself, fitted.

        Raises
        ------
        ValueError
            When ``y`` lacks failing or healthy examples.
        """
        if len(x) == 0 or y.sum() == 0 or y.sum() == len(y):
            raise ValueError("fit needs both failing and healthy examples")
        self.mean, self.scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        z = np.hstack([np.ones((len(x), 1)), (x - self.mean) / self.scale])
        w = np.zeros(z.shape[1])
        weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))  # balance the classes
        reg = np.eye(len(w)) * self.l2
        reg[0, 0] = 0.0
        for _ in range(iterations):
            p = 1 / (1 + np.exp(-np.clip(z @ w, -30, 30)))
            grad = z.T @ (weight * (p - y)) + reg @ w
            hess = (z * (weight * p * (1 - p))[:, None]).T @ z + reg
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        self.weights = w
        return self

    def risk(self, x: np.ndarray) -> np.ndarray:
        """Probability-like risk of failing within the horizon, per row.

        Parameters
        ----------
        x : numpy.ndarray
            Shape ``(n, len(FEATURES))``.

        Returns
        -------
        numpy.ndarray
            Shape ``(n,)``, in [0, 1].

        Raises
        ------
        RuntimeError
            Before :meth:`fit`.
        """
        if self.weights is None or self.mean is None or self.scale is None:
            raise RuntimeError("fit the model first")
        z = np.hstack([np.ones((len(x), 1)), (x - self.mean) / self.scale])
        return 1 / (1 + np.exp(-np.clip(z @ self.weights, -30, 30)))

    def coefficients(self) -> dict[str, float]:
        """The fitted weight of each feature (standardised units).

        Returns
        -------
        dict[str, float]
            feature name -> weight.
        """
        assert self.weights is not None
        return dict(zip(FEATURES, map(float, self.weights[1:])))


@dataclass(frozen=True)
class Evaluation:
    """Precision and recall of a risk model on labelled snapshots (:func:`evaluate`).

    Attributes
    ----------
    precision, recall : float
        Of the flagged snapshots, over daily snapshots (fractions).
    lead_recall : float
        Failures flagged at least ``lead_days`` before they happened (fraction).
    failures : int
        Failures counted for ``lead_recall``.
    flagged_per_day : float
    base_rate : float
        Share of positive snapshots.
    horizon_days, lead_days, flag_fraction : float
        The settings evaluated.
    """
    precision: float
    recall: float
    lead_recall: float  # failures flagged at least lead_days before
    failures: int
    flagged_per_day: float
    base_rate: float
    horizon_days: float
    lead_days: float
    flag_fraction: float


def evaluate(model: RiskModel, fleet: Sequence[SimulatedMiner], *, horizon_days: float = 7.0, lead_days: float = 2.0,
             flag_fraction: float = 0.05, window_days: float = 7.0) -> Evaluation:
    """Flag the top ``flag_fraction`` of miners by risk each day and score the flags.

    Parameters
    ----------
    model : RiskModel
        Fitted.
    fleet : Sequence[SimulatedMiner]
    horizon_days : float, default 7.0
        A snapshot is positive when the miner fails within this many days.
    lead_days : float, default 2.0
        A failure counts as caught when flagged at least this many days before it.
    flag_fraction : float, default 0.05
        Share of the fleet flagged per day (at least one miner).
    window_days : float, default 7.0

    Returns
    -------
    Evaluation
    """
    x, y, meta = snapshots(fleet, window_days=window_days, horizon_days=horizon_days)
    risk = model.risk(x)
    flagged = np.zeros(len(y), dtype=bool)
    days = np.array([d for _, d, _ in meta])
    for day in np.unique(days):
        idx = np.where(days == day)[0]
        k = max(1, int(round(flag_fraction * len(idx))))
        flagged[idx[np.argsort(-risk[idx])[:k]]] = True
    tp = int((flagged & (y == 1)).sum())
    precision = tp / max(1, int(flagged.sum()))
    recall = tp / max(1, int(y.sum()))
    by_miner: dict[str, list[int]] = {}
    for i, (m, _d, _tf) in enumerate(meta):
        by_miner.setdefault(m, []).append(i)
    caught, failures = 0, 0
    for miner in fleet:
        if miner.failure_day is None or miner.failure_day > (miner.readings[-1].at - T0).days + 1 or \
                miner.failure_day < window_days + lead_days:
            continue
        failures += 1
        rows = [i for i in by_miner.get(miner.miner_id, []) if (tf := meta[i][2]) is not None
                and lead_days <= tf <= horizon_days]
        caught += any(flagged[i] for i in rows)
    return Evaluation(precision, recall, caught / max(1, failures), failures,
                      float(flagged.sum()) / max(1, len(np.unique(days))), float(y.mean()), horizon_days, lead_days,
                      flag_fraction)
