"""One PNG per backtest: price, every policy's grid import against the import limit, load by mode and
noise against its cap for one policy, cumulative profit per policy.

Every panel is in the site's local time (the axis names the zone); the price axis is symmetric-log
once prices leave the ordinary range, so one scarcity spike does not flatten the rest; legends sit
to the right of the panels, never over the data. A backtest runs a simulated fleet (and, without
``--renewables``, a SYNTHETIC solar shape) on recorded prices, so the figure says SIMULATED in its
title and across every panel. Matplotlib's Agg backend, no display needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hashflex.backtest.runner import BacktestResult  # noqa: E402
from hashflex.backtest.summary import interval_frame, site_level_dba  # noqa: E402

__all__ = ["backtest_figure", "plot_backtest"]

SIMULATED_LABEL = "SIMULATED fleet on recorded prices"
PRICE_LINEAR_USD_MWH = 100.0  # symlog: linear within ±$100/MWh, logarithmic beyond


def _price_axis(ax: plt.Axes, prices: np.ndarray) -> None:
    finite = prices[np.isfinite(prices)]
    if finite.size and (finite.max() > 3 * PRICE_LINEAR_USD_MWH or finite.min() < -PRICE_LINEAR_USD_MWH):
        ax.set_yscale("symlog", linthresh=PRICE_LINEAR_USD_MWH)
        ax.set_ylabel("RT price $/MWh\n(symlog above $100)")
    else:
        ax.set_ylabel("RT price $/MWh")


PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNG (Pillow's default is 6): issue 18, the month's figure encodes in a fraction of the
time for a somewhat larger file; the pixels are the same."""


def plot_backtest(result: BacktestResult, path: Path, policy: str | None = None) -> Path:
    """Draw ``result`` into ``path`` (PNG, 110 dpi); ``policy``: whose load by mode and noise are drawn
    (default ``mpc`` if it ran, else the first). Returns ``path``."""
    figure = backtest_figure(result, policy)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The constrained layout computed once at the saving dpi, then fixed: savefig otherwise draws the whole
    # figure once with rendering disabled to lay it out, then again to render (issue 18: ~0.5 s of the
    # month's figure). Same pixels (a test compares them).
    figure.set_dpi(110)
    figure.get_layout_engine().execute(figure)
    figure.set_layout_engine("none")
    figure.savefig(path, dpi=110, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    plt.close(figure)
    return path


def backtest_figure(result: BacktestResult, policy: str | None = None) -> plt.Figure:
    """The figure :func:`plot_backtest` saves (five panels sharing the local-time axis; panel 1 has
    one grid-import line per policy). The caller closes it."""
    profile = result.profile
    names = list(result.runs)
    shown = policy or ("mpc" if "mpc" in names else names[0])
    frame = interval_frame(result, shown)
    tz = profile.tz
    # matplotlib's date numbers, converted once (issue 18: each call converting 2,784 datetimes again took
    # ~0.4 s of the month's figure); the axis is made a date axis below (locator and formatter in ``tz``)
    times = mdates.date2num(frame.index)
    figure, axes = plt.subplots(5, 1, figsize=(13, 14), sharex=True, constrained_layout=True)
    offset = frame.index.tz_convert(tz)[0].strftime("%Z, UTC%z")
    figure.suptitle(f"{SIMULATED_LABEL} — {profile.site.name}: {profile.site.settlement_point}, "
                    f"{len(names)} polic{'y' if len(names) == 1 else 'ies'}", color="#c00000", fontweight="bold")

    prices = frame["price_usd_mwh"].to_numpy(float)
    axes[0].step(times, prices, where="post", lw=0.8, color="black", label="RT price")
    _price_axis(axes[0], prices)

    limit_mw = frame["import_limit_kw"].clip(upper=profile.grid.import_limit_kw * 1.5).to_numpy(float) / 1000.0
    styles = ("-", "--", ":", "-.")  # policies that ran the same load stay distinguishable
    for k, name in enumerate(names):
        policy_frame = interval_frame(result, name)
        axes[1].step(times, policy_frame["grid_import_kw"].to_numpy(float) / 1000.0, where="post",
                     lw=1.8 - 0.3 * (k % 4), ls=styles[k % 4], label=f"{name} grid import")
    axes[1].step(times, limit_mw, where="post", color="red", lw=1.2, ls="--", label="import limit")
    axes[1].set_ylabel("grid import MW\n(every policy)")

    stacks, labels = [], []
    for group in profile.miner_groups:
        for mode in group.modes:
            stacks.append(frame[f"units_{group.id}_{mode.name}"].to_numpy() * mode.power_kw / 1000.0)
            labels.append(f"{group.id} {mode.name}")
    axes[2].stackplot(times, *stacks, labels=labels, step="post")
    if "renewable_used_kw" in frame:
        axes[2].step(times, frame["grid_import_kw"].to_numpy(float) / 1000.0, where="post", color="black", lw=0.8,
                     label="grid import (the limit applies to this)")
    axes[2].set_ylabel(f"load MW by mode\n('{shown}')")

    for receptor in profile.receptors:
        line, = axes[3].step(times, frame[f"noise_dba_{receptor.id}"], where="post", lw=0.8,
                             label=f"{receptor.id} modelled")
        measured = f"noise_measured_dba_{receptor.id}"
        if measured in frame:
            level = site_level_dba(frame[measured].to_numpy(float), receptor.background_dba, receptor.cap_applies_to)
            axes[3].plot(times, level, ".", ms=2, color=line.get_color(), label=f"{receptor.id} simulated sensor")
        axes[3].step(times, frame[f"noise_cap_dba_{receptor.id}"], where="post", ls="--", lw=0.8,
                     color=line.get_color(), label=f"{receptor.id} cap")
    axes[3].set_ylabel(f"dB(A) ('{shown}')")

    for name in names:
        profit = interval_frame(result, name)["profit_usd"].cumsum()
        axes[4].plot(times, profit.to_numpy(), label=name)
    axes[4].set_ylabel("cumulative profit $")

    locator = mdates.AutoDateLocator(tz=tz)
    axes[4].xaxis.set_major_locator(locator)
    axes[4].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=tz))
    axes[4].set_xlabel(f"site local time ({profile.site.timezone}; {offset} at the start)")
    for ax in axes:
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.text(0.5, 0.5, "SIMULATED", transform=ax.transAxes, fontsize=28, color="#c00000", alpha=0.12,
                ha="center", va="center", rotation=12, in_layout=False)  # inside the axes: no margin to make
    return figure
