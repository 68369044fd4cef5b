"""The report's plots: PNGs drawn with matplotlib (Agg) and embedded as base64 ``data:`` URIs, each
in a ``<figure id="plot-...">``, on site-local time axes, marked SIMULATED across the image when
the report is.

Seam: drawing; what the page says in words and tables is :mod:`.render` and :mod:`.labels`.
Split from ``report/render.py`` (issue 11).
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

from hashflex.report.labels import _SIM, _TZ, SIMULATED_TEXT

__all__: list[str] = []


def _png(draw: Any, *, height_in: float = 3.4, time_axis: bool = True) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(11, height_in), dpi=90)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        if time_axis:
            tz = _TZ.get()
            ax.set_xlabel(f"site local time ({tz})")
            _local_axis(ax, tz)
        if _SIM.get():  # across the image, so a cropped or copied plot still says it
            fig.text(0.5, 0.5, SIMULATED_TEXT, fontsize=48, color="#c00000", alpha=0.15, ha="center", va="center",
                     rotation=20, transform=fig.transFigure)
            ax.set_title(f"{SIMULATED_TEXT} DATA", loc="left", fontsize=9, color="#c00000", fontweight="bold")
        if time_axis:
            fig.autofmt_xdate()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _local_axis(ax: Any, tz: str) -> None:
    import matplotlib.dates as mdates
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)
    locator = mdates.AutoDateLocator(tz=zone)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=zone))


def _legend_outside(ax: Any, *extra_axes: Any) -> None:
    """One legend for the axes given, to the right of the plot (never over the data)."""
    handles, labels = ax.get_legend_handles_labels()
    for other in extra_axes:
        h, lab = other.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if handles:  # below the axes, under the time labels: never over the data, never squeezing it
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.4), ncol=min(len(handles), 3),
                  fontsize=8, frameon=False)


def _plot(plot_id: str, caption: str, draw: Any, **kwargs: Any) -> str:
    data = _png(draw, **kwargs)
    tag = f"{SIMULATED_TEXT} DATA — " if _SIM.get() else ""
    text = tag + caption
    if data is None:
        return (f'<figure id="{plot_id}"><figcaption>{html.escape(text)} '
                f"(plot unavailable: matplotlib not installed)</figcaption></figure>")
    return (f'<figure id="{plot_id}"><img alt="{html.escape(text)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(text)}</figcaption></figure>")


def _times(rows: list[dict[str, Any]], key: str) -> list[Any]:
    import pandas as pd

    return [pd.Timestamp(r[key]).to_pydatetime() for r in rows]


def _series(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    return [math.nan if r.get(key) is None else float(r[key]) * scale for r in rows]


def _edges(rows: list[dict[str, Any]]) -> list[Any]:
    """Step edges: every interval start, then the last interval's end (so the last step shows)."""
    import pandas as pd

    return _times(rows, "interval_start") + [pd.Timestamp(rows[-1]["interval_end"]).to_pydatetime()]


def _step(ax: Any, rows: list[dict[str, Any]], values: list[float], **kwargs: Any) -> Any:
    return ax.stairs(values, _edges(rows), baseline=None, **kwargs)


def _shade_dr(ax: Any, events: list[dict[str, Any]]) -> None:
    import pandas as pd

    for k, event in enumerate(e for e in events if e.get("start") and e.get("end")):
        ax.axvspan(pd.Timestamp(event["start"]).to_pydatetime(), pd.Timestamp(event["end"]).to_pydatetime(),
                   color="#ffbf00", alpha=0.25, lw=0, label="DR event in force" if k == 0 else None)


def _price_axis(ax: Any, prices: list[float]) -> None:
    """Symmetric-log price axis: a single $5,000 spike does not flatten $20 hours (linear to ±$100)."""
    finite = [p for p in prices if math.isfinite(p)]
    if finite and (max(finite) > 300 or min(finite) < -100):
        ax.set_yscale("symlog", linthresh=100.0)
    ax.set_ylabel("$/MWh (symlog above $100)" if ax.get_yscale() == "symlog" else "$/MWh")


def _import_plot(intervals: list[dict[str, Any]], events: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        edges = _edges(intervals)
        grid = [0.0 if math.isnan(v) else v for v in _series(intervals, "import_kw", 1e-3)]
        load = _series(intervals, "load_kw", 1e-3)
        behind = [max(l_ - g, 0.0) if not math.isnan(l_) else 0.0 for l_, g in zip(load, grid, strict=True)]
        _shade_dr(ax, events)
        ax.stairs(grid, edges, fill=True, color="#7f7f7f", alpha=0.8, label="grid import (metered; the limit applies)")
        ax.stairs([g + b for g, b in zip(grid, behind, strict=True)], edges, baseline=grid, fill=True,
                  color="#2ca02c", alpha=0.35, hatch="//",
                  label="on-site renewable used (behind the meter, not counted against the limit)")
        limit = _series(intervals, "import_limit_kw", 1e-3)
        if any(not math.isnan(v) for v in limit):
            ax.stairs(limit, edges, baseline=None, color="red", lw=1.4, label="import limit in force (plan)")
        ax.set_ylabel("MW (interval mean)")
        _legend_outside(ax)
    return _plot("plot-import", "Grid import against the import limit, with on-site renewable supply shown apart",
                 draw, height_in=3.8)


def _energy_plot(hourly: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        t = _times(hourly, "hour_start")
        grid, ren = _series(hourly, "grid_import_mwh"), _series(hourly, "renewable_used_mwh")
        width = 1 / 24 * 0.9
        ax.bar(t, grid, width=width, label="from the grid", color="#7f7f7f", align="edge")
        ax.bar(t, ren, width=width, bottom=grid, label="on-site renewable used", color="#2ca02c", align="edge")
        ax.plot(t, _series(hourly, "renewable_generation_mwh"), drawstyle="steps-post", color="#17becf",
                label="on-site renewable generated")
        ax.set_ylabel("MWh per hour")
        _legend_outside(ax)
    return _plot("plot-energy", "Electricity used per hour, by where it came from", draw)


def _emissions_plot(hourly: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        ax.bar(_times(hourly, "hour_start"), _series(hourly, "location_kg"), width=1 / 24 * 0.9, align="edge",
               color="#8c564b", label="location-based")
        ax.set_ylabel("kg CO₂ per hour")
        _legend_outside(ax)
    return _plot("plot-emissions", "CO₂ emissions per hour (location-based)", draw)


def _noise_plot(receptor: str, hourly: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        t = _times(hourly, "hour_start")
        ax.plot(t, _series(hourly, "measured_laeq_dba"), marker="o", label="measured")
        ax.plot(t, _series(hourly, "model_laeq_dba"), linestyle="--", label="modelled")
        ax.plot(t, _series(hourly, "cap_dba"), drawstyle="steps-post", color="red", label="limit")
        ax.set_ylabel("dB(A), hourly LAeq")
        _legend_outside(ax)
    label = "Sound at " + receptor + (" (simulated sensor)" if _SIM.get() else "") + ": hourly level against its limit"
    return _plot(f"plot-noise-{receptor}", label, draw)


def _dr_plot(event: dict[str, Any], intervals: list[dict[str, Any]]) -> str:
    import pandas as pd

    rows = event["per_interval"]
    t0 = pd.Timestamp(rows[0]["interval_start"]) - pd.Timedelta(hours=1)
    t1 = pd.Timestamp(rows[-1]["interval_end"]) + pd.Timedelta(hours=1)
    around = [r for r in intervals if t0 <= pd.Timestamp(r["interval_start"]) < t1] or rows
    key = "import_kw" if around is not rows else "metered_import_kw"

    def draw(ax: Any) -> None:
        _shade_dr(ax, [event])
        _step(ax, around, _series(around, key), label="metered grid import", lw=1.6)
        _step(ax, rows, _series(rows, "limit_kw"), color="red", label="limit asked")
        _step(ax, rows, _series(rows, "baseline_kw"), linestyle=":", color="gray",
              label=f"baseline ({event.get('baseline_method')})")
        ax.set_ylabel("kW (interval mean)")
        _legend_outside(ax)
    return _plot(f"plot-dr-{event['event_id']}", f"Demand-response event {event['event_id']}: metered import against "
                 f"the limit and the baseline", draw)


def _curtailment_plot(per_day: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        import pandas as pd

        frame = pd.DataFrame(per_day).pivot_table(index="day", columns="cause", values="mwh", aggfunc="sum").fillna(0)
        bottom = [0.0] * len(frame)
        days = [str(d) for d in frame.index]  # site-local calendar days, as labels
        for cause in frame.columns:
            values = frame[cause].tolist()
            ax.bar(days, values, bottom=bottom, width=0.6, label=cause)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylabel("MWh not used per day")
        ax.set_xlabel("site-local day")
        _legend_outside(ax)
    return _plot("plot-curtailment", "Mining switched off per site-local day, by cause", draw, time_axis=False)


def _economics_plot(hourly: list[dict[str, Any]], events: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        t = _times(hourly, "hour_start")
        profit, total = [], 0.0
        for r in hourly:
            if r["energy_cost_usd"] is not None:  # an hour without a price is not costed (not $0)
                total += (r["revenue_usd"] or 0.0) - r["energy_cost_usd"]
            profit.append(total)
        _shade_dr(ax, events)
        ax.plot(t, profit, color="#1f77b4", label="cumulative profit ($)")
        ax.set_ylabel("$")
        twin = ax.twinx()
        prices = _series(hourly, "price_usd_mwh")
        twin.plot(t, prices, drawstyle="steps-post", color="#ff7f0e", alpha=0.8, label="electricity price ($/MWh)")
        _price_axis(twin, prices)
        _legend_outside(ax, twin)
    return _plot("plot-economics", "Cumulative profit and the electricity price (hourly mean)", draw)
