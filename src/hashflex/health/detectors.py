"""Fleet-health detectors, a health score per miner, and the book that keeps both.

Each detector is a pure function of one miner's recent :class:`~hashflex.health.reading.MinerReading`
history (oldest first) and its :class:`Rating` (what the model should do), returning
:class:`Finding` s. Thresholds are parameters with defaults chosen for air-cooled SHA-256 ASICs
(chip "hot" 90 °C / "dangerous" 100 °C as LuxOS's default temperature control; fans under 1,000 RPM
while hashing have stalled); set them per model in the profile.

Detectors:
- ``not_following``: the last ``samples`` readings with a setpoint all draw outside
  ``setpoint × (1 ± tolerance)`` (or hash while told to sleep).
- ``efficiency_drift``: median J/TH of the window is ``threshold`` (8 %) or more above the rating.
- ``lost_hashboard``: fewer boards report chips than the model has.
- ``overheating``: hottest chip ≥ ``hot_c`` (warning) / ``danger_c`` (critical).
- ``failing_fan``: a fan at 0 RPM or under ``stall_rpm`` while hashing, or one fan under
  ``lag`` (60 %) of the others' median (critical: the miner will overheat).
- ``error_growth``: hardware errors grow faster than ``max_per_h`` per hour over the window.

Score: 1.0 for no findings, minus 0.15 per warning and 0.5 per critical, floored at 0.0.
:class:`HealthBook` ingests readings (thread-safe), keeps ``window`` per miner, and answers
``findings()``, ``scores()``, ``derate_factor(miner_id)`` (1.0 healthy; down to 0.0 for a miner that
should not run: hot units are derated, not only slept), ``dispatch_order(ids)`` (healthiest first) and
``silent(now, max_age_s)`` (miners whose latest reading is older: a silent miner produces no reading,
so no detector can flag it; /status counts them, issue 15 H7).
New findings go to ``on_alert(finding)`` once (MQTT ``out/alert``, a webhook, the dashboard).
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from hashflex.health.reading import MinerReading

__all__ = ["Finding", "HealthBook", "Rating", "detect", "efficiency_drift", "error_growth", "failing_fan",
           "health_score", "lost_hashboard", "not_following", "overheating"]

WARNING, CRITICAL = "warning", "critical"


@dataclass(frozen=True)
class Rating:
    """What one miner model should do: rated efficiency, boards and fans it has, its temperature limits.

    Attributes
    ----------
    j_th : float or None
        Rated efficiency (J/TH); None: unknown (no drift detection).
    hashboards, fans : int
        How many the model has.
    hot_c, danger_c : float
        Chip temperatures (°C) that warn and that are critical.
    """

    j_th: float | None = None
    hashboards: int = 3
    fans: int = 4
    hot_c: float = 90.0
    danger_c: float = 100.0


@dataclass(frozen=True)
class Finding:
    """One detected problem of one miner.

    Attributes
    ----------
    miner_id : str
    kind : str
        The detector's name (``overheating``, ``failing_fan``, ...).
    severity : str
        ``warning`` or ``critical``.
    detail : str
        What was seen, readable.
    at : datetime
        Time of the reading that showed it.
    value : float or None
        The detector's number (°C, RPM, fraction, ...), see each detector.
    """

    miner_id: str
    kind: str
    severity: str
    detail: str
    at: datetime
    value: float | None = None

    def as_alert(self) -> dict[str, object]:
        """The payload of an alert (MQTT ``out/alert``, webhook).

        Returns
        -------
        dict[str, object]
            JSON-ready ``miner_id``, ``kind``, ``severity``, ``detail``, ``at`` (ISO 8601), ``value``.
        """
        return {"miner_id": self.miner_id, "kind": self.kind, "severity": self.severity, "detail": self.detail,
                "at": self.at.isoformat(), "value": self.value}


def not_following(history: Sequence[MinerReading], *, tolerance: float = 0.15, samples: int = 3,
                  sleep_max_kw: float = 0.1) -> list[Finding]:
    """Readings that do not follow the setpoint the miner was given.

    Parameters
    ----------
    history : Sequence[MinerReading]
        One miner's recent readings, oldest first.
    tolerance : float, default 0.15
        Allowed relative deviation of ``power_kw`` from ``setpoint_power_kw`` (fraction).
    samples : int, default 3
        How many of the last readings with a setpoint must all be off.
    sleep_max_kw : float, default 0.1
        Most a miner told to sleep (setpoint 0 kW) may draw (kW); it must also report no hashrate.

    Returns
    -------
    list[Finding]
        One finding, or none. Critical: a miner that ignores setpoints cannot be curtailed.
    """
    told = [r for r in history if r.setpoint_power_kw is not None and r.power_kw is not None][-samples:]
    if len(told) < samples:
        return []
    off = []
    for r in told:
        target = r.setpoint_power_kw or 0.0
        if target <= 0.0:
            off.append((r.hashrate_th_s or 0.0) > 0 or (r.power_kw or 0.0) > sleep_max_kw)
        else:
            off.append(abs((r.power_kw or 0.0) - target) > tolerance * target)
    if not all(off):
        return []
    last = told[-1]
    return [Finding(last.miner_id, "not_following", CRITICAL,
                    f"{samples} readings off its setpoint: draws {last.power_kw:.2f} kW, told "
                    f"{last.setpoint_power_kw:.2f} kW", last.at, last.power_kw)]


def efficiency_drift(history: Sequence[MinerReading], rating: Rating, *, threshold: float = 0.08,
                     samples: int = 3) -> list[Finding]:
    """Median J/TH over the window ``threshold`` or more above the model's rating.

    Parameters
    ----------
    history : Sequence[MinerReading]
        One miner's recent readings, oldest first.
    rating : Rating
        The model's rated ``j_th`` (J/TH); None switches the detector off.
    threshold : float, default 0.08
        Relative drift that warns (fraction); twice it is critical.
    samples : int, default 3
        Fewest readings with an efficiency before anything is said.

    Returns
    -------
    list[Finding]
        One finding, or none. ``value`` is the relative drift.
    """
    values = [e for r in history if (e := r.efficiency_j_th) is not None]
    if rating.j_th is None or len(values) < samples:
        return []
    median = statistics.median(values[-max(samples, len(values) // 2):])
    drift = median / rating.j_th - 1.0
    if drift < threshold:
        return []
    last = history[-1]
    severity = CRITICAL if drift >= 2 * threshold else WARNING
    return [Finding(last.miner_id, "efficiency_drift", severity,
                    f"{median:.1f} J/TH vs rated {rating.j_th:.1f} (+{drift:.0%})", last.at, drift)]


def lost_hashboard(history: Sequence[MinerReading], rating: Rating) -> list[Finding]:
    """Fewer hashboards report chips than the model has, while hashing.

    Parameters
    ----------
    history : Sequence[MinerReading]
        One miner's recent readings, oldest first.
    rating : Rating
        ``hashboards`` is used when the reading does not say how many it expects.

    Returns
    -------
    list[Finding]
        One finding, or none. Critical; ``value`` is the number of boards missing.
    """
    last = history[-1] if history else None
    if last is None or last.hashboards is None or not last.hashrate_th_s:
        return []
    expected = last.expected_hashboards or rating.hashboards
    if last.hashboards >= expected:
        return []
    return [Finding(last.miner_id, "lost_hashboard", CRITICAL,
                    f"{last.hashboards} of {expected} hashboards report chips", last.at,
                    float(expected - last.hashboards))]


def overheating(history: Sequence[MinerReading], rating: Rating) -> list[Finding]:
    """Hottest chip at or above the model's ``hot_c`` (warning) or ``danger_c`` (critical).

    Parameters
    ----------
    history : Sequence[MinerReading]
        One miner's recent readings, oldest first.
    rating : Rating
        ``hot_c`` and ``danger_c`` (°C); defaults 90 / 100 °C as LuxOS's default temperature control.

    Returns
    -------
    list[Finding]
        One finding, or none. ``value`` is the hottest chip (°C).
    """
    last = history[-1] if history else None
    hottest = last.max_chip_temp_c if last else None
    if last is None or hottest is None or hottest < rating.hot_c:
        return []
    severity = CRITICAL if hottest >= rating.danger_c else WARNING
    limit = rating.danger_c if severity == CRITICAL else rating.hot_c
    return [Finding(last.miner_id, "overheating", severity, f"chip {hottest:.0f} °C (limit {limit:.0f} °C)",
                    last.at, hottest)]


def failing_fan(history: Sequence[MinerReading], *, stall_rpm: int = 1000, lag: float = 0.6) -> list[Finding]:
    """A stalled fan while hashing (critical), or one lagging the others (warning).

    Parameters
    ----------
    history : Sequence[MinerReading]
        One miner's recent readings, oldest first.
    stall_rpm : int, default 1000
        A fan under this speed (RPM) while the miner hashes has stalled.
    lag : float, default 0.6
        A fan under this fraction of the other fans' median speed is failing.

    Returns
    -------
    list[Finding]
        One finding, or none. ``value`` is the slowest fan's RPM.
    """
    last = history[-1] if history else None
    if last is None or not last.fan_rpm or not last.hashrate_th_s:
        return []
    rpms = [r for r in last.fan_rpm if r is not None]
    if not rpms:
        return []
    stalled = [i for i, r in enumerate(last.fan_rpm) if r is not None and r < stall_rpm]
    if stalled:
        return [Finding(last.miner_id, "failing_fan", CRITICAL, f"fan(s) {stalled} under {stall_rpm} RPM while "
                        f"hashing ({min(rpms)} RPM)", last.at, float(min(rpms)))]
    for i, rpm in enumerate(last.fan_rpm):
        others = [r for j, r in enumerate(last.fan_rpm) if j != i and r is not None]
        if rpm is not None and others and rpm < lag * statistics.median(others):
            return [Finding(last.miner_id, "failing_fan", WARNING,
                            f"fan {i} at {rpm} RPM, the others ~{statistics.median(others):.0f}", last.at, float(rpm))]
    return []


def error_growth(history: Sequence[MinerReading], *, max_per_h: float = 50.0) -> list[Finding]:
    """Hardware errors growing faster than ``max_per_h`` per hour over the window.

    Parameters
    ----------
    history : Sequence[MinerReading]
        One miner's recent readings, oldest first.
    max_per_h : float, default 50.0
        Error growth (per hour) above which it warns; four times it is critical.

    Returns
    -------
    list[Finding]
        One finding, or none. ``value`` is the growth (errors per hour).
    """
    counted = [r for r in history if r.hw_errors is not None]
    if len(counted) < 2:
        return []
    first, last = counted[0], counted[-1]
    hours = (last.at - first.at).total_seconds() / 3600.0
    if hours <= 0 or last.hw_errors is None or first.hw_errors is None:
        return []
    rate = max(0, last.hw_errors - first.hw_errors) / hours
    if rate <= max_per_h:
        return []
    return [Finding(last.miner_id, "error_growth", WARNING if rate < 4 * max_per_h else CRITICAL,
                    f"{rate:.0f} hardware errors per hour", last.at, rate)]


def detect(history: Sequence[MinerReading], rating: Rating) -> list[Finding]:
    """Every detector on one miner's history.

    Parameters
    ----------
    history : Sequence[MinerReading]
        One miner's recent readings, oldest first.
    rating : Rating
        What the miner's model should do.

    Returns
    -------
    list[Finding]
        Every finding (empty for no history or a healthy miner).
    """
    if not history:
        return []
    return (not_following(history) + efficiency_drift(history, rating) + lost_hashboard(history, rating)
            + overheating(history, rating) + failing_fan(history) + error_growth(history))


def health_score(findings: Iterable[Finding]) -> float:
    """A miner's health score: 1.0 healthy; −0.15 per warning, −0.5 per critical; never below 0.0.

    Parameters
    ----------
    findings : Iterable[Finding]
        The miner's current findings.

    Returns
    -------
    float
        The score in [0, 1].
    """
    penalty = sum(0.5 if f.severity == CRITICAL else 0.15 for f in findings)
    return max(0.0, 1.0 - penalty)


class HealthBook:
    """Readings in; findings, scores, derating and dispatch order out (thread-safe).

    Parameters
    ----------
    ratings : Mapping[str, Rating]
        miner id -> its model's rating (a miner missing here gets ``Rating()``).
    window : int, default 30
        Readings kept per miner.
    on_alert : callable, optional
        Called once with each new finding (MQTT ``out/alert``, a webhook, the dashboard); its
        failures are contained.
    """

    def __init__(self, ratings: Mapping[str, Rating], *, window: int = 30,
                 on_alert: Callable[[Finding], None] | None = None) -> None:
        self.ratings = dict(ratings)
        self.window = window
        self.on_alert = on_alert
        self._history: dict[str, deque[MinerReading]] = {}
        self._findings: dict[str, list[Finding]] = {}
        self._alerted: set[tuple[str, str, str]] = set()
        self._last_at_s: dict[str, float] = {}  # miner id -> its newest reading's time, POSIX s (silent())
        self._lock = threading.Lock()

    def ingest(self, reading: MinerReading) -> list[Finding]:
        """Add a reading and run the detectors on the miner's window.

        Parameters
        ----------
        reading : MinerReading
            The miner's newest reading.

        Returns
        -------
        list[Finding]
            The miner's current findings (the new ones also go to ``on_alert``).
        """
        with self._lock:
            history = self._history.setdefault(reading.miner_id, deque(maxlen=self.window))
            history.append(reading)
            at_s = reading.at.timestamp()
            if at_s > self._last_at_s.get(reading.miner_id, -math.inf):
                self._last_at_s[reading.miner_id] = at_s
            findings = detect(list(history), self.ratings.get(reading.miner_id, Rating()))
            self._findings[reading.miner_id] = findings
            active = {(f.miner_id, f.kind, f.severity) for f in findings}
            new = [f for f in findings if (f.miner_id, f.kind, f.severity) not in self._alerted]
            # a cleared finding may alert again if it comes back
            self._alerted = {k for k in self._alerted if k[0] != reading.miner_id} | active
        for finding in new:
            if self.on_alert is not None:
                try:
                    self.on_alert(finding)
                except Exception:  # noqa: BLE001 - an alert channel down must not stop health tracking
                    pass
        return findings

    def findings(self, miner_id: str | None = None) -> list[Finding]:
        """The current findings of one miner, or of the whole fleet.

        Parameters
        ----------
        miner_id : str, optional
            The miner; None: every miner.

        Returns
        -------
        list[Finding]
        """
        with self._lock:
            if miner_id is not None:
                return list(self._findings.get(miner_id, []))
            return [f for fs in self._findings.values() for f in fs]

    def scores(self) -> dict[str, float]:
        """Every miner's health score.

        Returns
        -------
        dict[str, float]
            miner id -> score in [0, 1] (:func:`health_score`); miners with no readings are absent.
        """
        with self._lock:
            return {m: health_score(fs) for m, fs in self._findings.items()}

    def derate_factor(self, miner_id: str) -> float:
        """Fraction of its planned power the dispatcher should give this miner.

        Parameters
        ----------
        miner_id : str

        Returns
        -------
        float
            0.0 for a critical overheat, a stalled fan or a miner that ignores its setpoints; 0.8 for a
            warm one or a lagging fan; else 1.0.
        """
        findings = self.findings(miner_id)
        if any(f.severity == CRITICAL and f.kind in ("overheating", "failing_fan", "not_following") for f in findings):
            return 0.0
        if any(f.kind in ("overheating", "failing_fan") for f in findings):
            return 0.8
        return 1.0

    def reporting_count(self) -> int:
        """How many miners have sent at least one reading (the base :meth:`silent` judges)."""
        with self._lock:
            return len(self._last_at_s)

    def unreported(self, miner_ids: Iterable[str]) -> list[str]:
        """The miners of ``miner_ids`` that have sent no reading to this book (since the process
        started), sorted (issue 15, H9: a fleet silent since a restart). O(len(miner_ids)).

        Parameters
        ----------
        miner_ids : iterable of str
            The miners to check (e.g. the fleet's running ones).

        Returns
        -------
        list[str]
            Their ids that never reported, sorted.
        """
        with self._lock:
            return sorted(m for m in miner_ids if m not in self._last_at_s)

    def silent(self, now: datetime, max_age_s: float) -> list[str]:
        """Miners that have reported but whose newest reading is more than ``max_age_s`` old at ``now``.

        A miner that never reported is not in it (a site may run without telemetry). O(miners that
        reported), numpy over their times: a few ms for 100k.

        Parameters
        ----------
        now : datetime
            The time judged at, timezone-aware.
        max_age_s : float
            The telemetry staleness window, s (``plausibility.bounds.STALENESS_S["telemetry"]``).

        Returns
        -------
        list[str]
            Their ids, sorted.
        """
        with self._lock:
            ids = list(self._last_at_s)
            at_s = np.fromiter(self._last_at_s.values(), dtype=float, count=len(ids))
        old = np.flatnonzero(now.timestamp() - at_s > max_age_s)
        return sorted(ids[i] for i in old)

    def dispatch_order(self, miner_ids: Iterable[str]) -> list[str]:
        """Miners healthiest first (unknown miners count as healthy), then by id.

        Parameters
        ----------
        miner_ids : Iterable[str]

        Returns
        -------
        list[str]
        """
        scores = self.scores()
        return sorted(miner_ids, key=lambda m: (-scores.get(m, 1.0), m))
