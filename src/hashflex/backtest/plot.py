"""One PNG per backtest: price, load by mode, noise against its cap, cumulative profit per policy.

Load and noise are drawn for one policy (``mpc`` if it ran, else the first); cumulative profit for
every policy. Matplotlib's Agg backend, no display needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hashflex.backtest.runner import BacktestResult  # noqa: E402
from hashflex.backtest.summary import interval_frame, site_level_dba  # noqa: E402

__all__ = ["plot_backtest"]


def plot_backtest(result: BacktestResult, path: Path, policy: str | None = None) -> Path:
    profile = result.profile
    names = list(result.runs)
    shown = policy or ("mpc" if "mpc" in names else names[0])
    frame = interval_frame(result, shown)
    local = frame.index.tz_convert(profile.tz).tz_localize(None)
    figure, axes = plt.subplots(4, 1, figsize=(12, 11), sharex=True, constrained_layout=True)

    axes[0].step(local, frame["price_usd_mwh"], where="post", lw=0.8, color="black")
    axes[0].set_ylabel("RT price $/MWh")
    axes[0].set_title(f"{profile.site.name}: {profile.site.settlement_point}, load and noise for '{shown}'")

    stacks, labels = [], []
    for group in profile.miner_groups:
        for mode in group.modes:
            stacks.append(frame[f"units_{group.id}_{mode.name}"].to_numpy() * mode.power_kw / 1000.0)
            labels.append(f"{group.id} {mode.name}")
    axes[1].stackplot(local, *stacks, labels=labels, step="post")
    axes[1].step(local, frame["import_limit_kw"].clip(upper=profile.grid.import_limit_kw * 1.5) / 1000.0,
                 where="post", color="red", lw=0.8, label="import limit")
    axes[1].set_ylabel("load MW")
    axes[1].legend(fontsize=7, ncol=4, loc="upper right")

    for receptor in profile.receptors:
        line, = axes[2].step(local, frame[f"noise_dba_{receptor.id}"], where="post", lw=0.8,
                             label=f"{receptor.id} modelled")
        measured = f"noise_measured_dba_{receptor.id}"
        if measured in frame:
            level = site_level_dba(frame[measured].to_numpy(float), receptor.background_dba, receptor.cap_applies_to)
            axes[2].plot(local, level, ".", ms=2, color=line.get_color(), label=f"{receptor.id} measured")
        axes[2].step(local, frame[f"noise_cap_dba_{receptor.id}"], where="post", ls="--", lw=0.8,
                     color=line.get_color(), label=f"{receptor.id} cap")
    axes[2].set_ylabel("dB(A)")
    if profile.receptors:
        axes[2].legend(fontsize=7, ncol=3, loc="upper right")

    for name in names:
        profit = interval_frame(result, name)["profit_usd"].cumsum()
        axes[3].plot(local, profit.to_numpy(), label=name)
    axes[3].set_ylabel("cumulative profit $")
    axes[3].legend(fontsize=8)
    axes[3].set_xlabel(f"local time ({profile.site.timezone})")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
