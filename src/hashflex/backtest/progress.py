"""The progress line of a backtest (split out of ``backtest.runner``, issue 11)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "no_progress"]


class Progress:
    """One self-rewriting line on stderr with rate and ETA; silent unless ``enabled``.

    Parameters
    ----------
    label : str
        The policy's name, printed first.
    total : int
        Intervals to run.
    step_days : float
        Length of one interval in days (for "s per simulated day").
    enabled : bool
        Write nothing when False.
    stream : TextIO, optional
        Default ``sys.stderr``.
    min_interval_s : float
        Least wall time between two rewrites, s.
    """

    def __init__(self, label: str, total: int, *, step_days: float, enabled: bool, stream: TextIO | None = None,
                 min_interval_s: float = 0.5) -> None:
        self.label, self.total, self.step_days, self.enabled = label, max(total, 1), step_days, enabled
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self._last = 0.0
        self.min_interval_s = min_interval_s

    @classmethod
    def factory(cls, quiet: bool, stream: TextIO | None = None) -> Callable[[str, int, float], Progress]:
        """A ``(label, total, step_days) -> Progress`` maker, enabled only on a terminal and not ``quiet``.

        Parameters
        ----------
        quiet : bool
            The CLI's ``--quiet``.
        stream : TextIO, optional
            Default ``sys.stderr``.

        Returns
        -------
        callable
        """
        stream = stream or sys.stderr
        enabled = not quiet and hasattr(stream, "isatty") and stream.isatty()
        return lambda label, total, step_days: cls(label, total, step_days=step_days, enabled=enabled, stream=stream)

    def update(self, done: int) -> None:
        """Rewrite the line for ``done`` intervals finished (at most every ``min_interval_s``)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < self.min_interval_s and done < self.total:
            return
        self._last = now
        elapsed = now - self.started
        rate = elapsed / done if done else 0.0
        eta = rate * (self.total - done)
        per_day = rate / self.step_days if self.step_days else 0.0
        self.stream.write(f"\r{self.label}: {done}/{self.total} intervals ({100 * done / self.total:3.0f}%), "
                          f"{per_day:5.1f} s per simulated day, ETA {_clock(eta)}   ")
        self.stream.flush()

    def close(self) -> None:
        """End the line with the total wall time."""
        if self.enabled:
            self.stream.write(f"\r{self.label}: done in {_clock(time.perf_counter() - self.started)}"
                              + " " * 40 + "\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def no_progress(label: str, total: int, step_days: float) -> Progress:
    """A silent :class:`Progress` (the default of ``run_backtest``)."""
    return Progress(label, total, step_days=step_days, enabled=False)

