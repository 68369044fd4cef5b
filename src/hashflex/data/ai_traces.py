"""Firm-inference demand from the bundled Azure LLM inference traces (CC BY 4.0; see
``data/ai/PROVENANCE.md`` for the attribution). The traces are one hour of request arrivals; the
demand model is its per-minute token rate (prompt + generated tokens per second), repeated by
minute of the hour across the horizon and scaled so that the trace's busiest minute equals the
contract's peak. It carries the real minute-to-minute burstiness of an LLM service, not a daily
shape (an hour of trace cannot say anything about the day)."""

from __future__ import annotations

import functools
from importlib import resources
from io import StringIO

import numpy as np
import pandas as pd

TRACES = ("azure_conv", "azure_code")
ATTRIBUTION = "Azure LLM inference trace 2023, Microsoft Azure (Azure/AzurePublicDataset), CC BY 4.0"


@functools.lru_cache(maxsize=4)
def trace_tokens_per_s(name: str) -> np.ndarray:
    """Per-minute token rate of a bundled trace over its complete minutes.

    Parameters
    ----------
    name : str
        One of :data:`TRACES`.

    Returns
    -------
    numpy.ndarray
        Shape ``(minutes,)``, tokens/s (prompt + generated tokens per minute / 60).

    Raises
    ------
    ValueError
        An unknown ``name``.
    """
    if name not in TRACES:
        raise ValueError(f"demand_trace must be one of {TRACES}, got {name!r}")
    text = resources.files("hashflex.data").joinpath("ai", "azure_llm_2023-11-16_per_minute.csv").read_text("utf-8")
    frame = pd.read_csv(StringIO(text))
    rows = frame[frame["trace"] == name].iloc[1:-1]  # first and last minute are partial
    return ((rows["context_tokens"] + rows["generated_tokens"]) / 60.0).to_numpy(dtype=float)


def trace_demand_tokens_per_s(name: str, interval_start: pd.DatetimeIndex, peak_tokens_per_s: float,
                              interval: pd.Timedelta | None = None) -> np.ndarray:
    """Demand per interval from a trace, scaled to a contract's peak.

    The trace's per-minute rate, repeated by minute of the hour, averaged over each interval's
    minutes, scaled so the trace's busiest minute is ``peak_tokens_per_s``.

    Parameters
    ----------
    name : str
        One of :data:`TRACES`.
    interval_start : pandas.DatetimeIndex, length T
    peak_tokens_per_s : float
        The contract's peak demand (tokens/s).
    interval : pandas.Timedelta, optional
        Interval length (default: the index's step, or 15 minutes for one interval).

    Returns
    -------
    numpy.ndarray
        Shape ``(T,)``, tokens/s.

    Raises
    ------
    ValueError
        An unknown ``name``.
    """
    rate = trace_tokens_per_s(name)
    shape = rate / rate.max()
    step = interval or ((interval_start[1] - interval_start[0]) if len(interval_start) > 1 else pd.Timedelta(minutes=15))
    minutes = max(int(step / pd.Timedelta(minutes=1)), 1)
    first = np.asarray(interval_start.minute)
    index = (first[:, None] + np.arange(minutes)[None, :]) % 60 % len(shape)
    return peak_tokens_per_s * shape[index].mean(axis=1)
