"""Dashboard cost with 10,000 simulated miners: page load and first update in a real browser, and
the cost of the live document (SSE) per tick against the tick's own CPU (goal: under 5 %).

Runs a short real simulation (control loop, HiGHS solves in process, simulated fleet and noise
meters) of a 10,000-miner site with the dashboard served on loopback, then:

- per tick: CPU seconds of the tick (``time.thread_time`` around the simulation's interval, solve
  included) and of one dashboard build + JSON serialisation (what every SSE client is sent: built
  once per change, whatever the number of browsers);
- the document's size in bytes;
- with chromium + chromedriver + selenium present: wall seconds from navigation to the page showing
  the first update (units running filled in).

Usage: python optimization/benchmarks/dashboard_cost.py [--intervals 4] [--miners 10000]
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

from hashflex.backtest.runner import load_prices
from hashflex.data import bundled_path
from hashflex.profile import parse_profile
from hashflex.sim.live import LiveSite
from hashflex.sim.site import run_simulation, simulation_window

PROFILE = """
site: {{id: bench, name: Bench 10k, timezone: America/Chicago, settlement_point: LZ_WEST, interval_minutes: 15,
       horizon_hours: 24, managers: [site_manager]}}
grid: {{import_limit_kw: 40000}}
dr: {{issuers: [utility], level_import_limit_kw: {{1: 20000, 2: 10000, 3: 0}}}}
miner_groups:
  - {{id: air, model: S21, units: {air}, modes: [{{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}},
                                          {{name: eco, power_kw: 2.8, hashrate_th_s: 180, sound_power_dba: 81}}]}}
  - {{id: hyd, model: S21 Hyd, units: {hyd}, cooling: hydro,
     modes: [{{name: stock, power_kw: 6.4, hashrate_th_s: 473, sound_power_dba: 64}}]}}
receptors:
  - {{id: ranch, distance_m: {{air: 900, hyd: 900}}, background_dba: 32, caps: [{{name: night, start: "22:00", end: "06:00", cap_dba: 45}}]}}
  - {{id: rv_park, distance_m: {{air: 1500, hyd: 1500}}, background_dba: 35, caps: [{{name: all, start: "00:00", end: "23:59", cap_dba: 50}}]}}
renewables: [{{id: solar_pv, kind: solar, capacity_kw: 8000}}]
carbon: {{default_intensity_kg_per_mwh: 370, intensity_source: bench, daily_budget_kg: 200000}}
economics: {{hashprice_usd_per_ph_day: 49}}
"""


class Timed(LiveSite):
    """LiveSite that also times each interval's CPU and one dashboard build per interval."""

    def started(self, loop, now):  # noqa: ANN001, ANN201
        """Start the clocks as the simulation starts."""
        super().started(loop, now)
        self.tick_cpu, self.build_cpu, self.sizes = [], [], []
        self._mark = time.thread_time()

    def interval_done(self, row, report, now):  # noqa: ANN001, ANN201
        """Record the interval's tick CPU, one dashboard build's CPU and the page size."""
        tick = time.thread_time() - self._mark
        dashboard = self.server.dashboard
        dashboard.refresh()  # what the publisher thread does once per change
        self.tick_cpu.append(tick)
        self.build_cpu.append(dashboard.build_seconds)
        self.sizes.append(len(dashboard.latest()[1]))
        super().interval_done(row, report, now)
        self._mark = time.thread_time()


def page_load_s(url: str) -> float | None:
    """Seconds to load the dashboard page at ``url`` (None if it failed)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,2000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        started = time.perf_counter()
        driver.get(url)
        while driver.find_element("id", "units-now").text in ("", "–"):
            if time.perf_counter() - started > 30:
                return float("nan")
            time.sleep(0.01)
        return time.perf_counter() - started
    finally:
        driver.quit()


def main() -> None:
    """Parse the arguments, run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=4)
    parser.add_argument("--miners", type=int, default=10_000)
    args = parser.parse_args()
    air = args.miners * 7 // 10
    profile = parse_profile(PROFILE.format(air=air, hyd=args.miners - air))
    prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv")], [])
    window = simulation_window(profile, prices, intervals=args.intervals)
    site = Timed(profile, port=0, speed=0, intervals=args.intervals)
    site.start()
    try:
        run_simulation(profile, prices, window.start, window.intervals, observer=site, time_limit_s=20)
        load = page_load_s(site.url)
    finally:
        site.close()
    ticks, builds = site.tick_cpu[1:] or site.tick_cpu, site.build_cpu[1:] or site.build_cpu  # first tick warms up
    print(f"miners: {args.miners}, intervals: {args.intervals}")
    print(f"tick CPU s (median): {statistics.median(ticks):.3f}")
    print(f"dashboard build + JSON CPU s per tick (median): {statistics.median(builds):.4f}")
    print(f"SSE document cost / tick CPU: {100 * statistics.median(builds) / statistics.median(ticks):.2f} % (goal < 5 %)")
    print(f"periodic refresh (every 5 s, for feed ages): {100 * statistics.median(builds) / 5:.2f} % of one core")
    print(f"document size: {statistics.median(site.sizes) / 1024:.1f} KiB")
    print("page load + first update s: " + ("n/a (no chromium/chromedriver/selenium)" if load is None else f"{load:.2f}"))


if __name__ == "__main__":
    main()
