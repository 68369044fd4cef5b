"""Issue 18 (task H5): the fixed cost of `hashflex backtest` around the run.

- Pyomo is not imported in the main process by the backtest's modules: ``--policy mpc`` solves in the
  worker, and Pyomo's import cost ~0.3-0.8 s of every command (it came through ``backtest.ancillary``
  and ``backtest.policies``, which imported ``optimize.solve`` at the top; failed before).
- The figure's layout is computed once and the PNG encoded at zlib level 1: the pixels are those of a
  plain ``savefig`` of the same figure (constrained layout done by matplotlib's own draw pass).
- The command's outputs are unchanged (summary.json and intervals CSV: `optimization/benchmarks/backtest_command.py`).
"""

from __future__ import annotations

import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from hashflex.backtest.plot import backtest_figure, plot_backtest
from hashflex.backtest.runner import build_actuals, run_backtest
from hashflex.profile import parse_profile
from test_report_backtest_plot import PRICES, PROFILE


def test_the_backtest_modules_do_not_import_pyomo() -> None:
    code = ("import sys\n"
            "import hashflex.backtest.runner, hashflex.backtest.ancillary, hashflex.backtest.ancillary_loop\n"
            "import hashflex.backtest.policies, hashflex.backtest.summary, hashflex.backtest.plot\n"
            "print(sorted(m for m in sys.modules if m == 'pyomo' or m.startswith('pyomo.')\n"
            "             or m == 'hashflex.optimize.solve')[:5])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_solve_name_still_solves_in_process() -> None:
    """`backtest.ancillary.solve` (the lazy name the AS study calls) is HiGHS's solve, imported on first use."""
    from hashflex.backtest import ancillary
    from hashflex.optimize.problem import problem_from_profile

    profile = parse_profile(PROFILE, "tiny")
    index = pd.date_range("2024-03-04T06:00Z", periods=4, freq="15min")
    schedule = ancillary.solve(problem_from_profile(profile, index, np.array([30.0, 30.0, 5000.0, 30.0])),
                               time_limit_s=10)
    frame = schedule.frame
    assert frame["units_eff_stock"].iloc[2] == 0 and frame["units_eff_stock"].iloc[0] == 3  # the spike sleeps


def test_the_figure_has_the_pixels_of_a_plain_savefig(tmp_path) -> None:
    profile = parse_profile(PROFILE, "tiny")
    starts = pd.date_range(pd.Timestamp("2024-03-04T00:00-06:00").tz_convert("UTC"), periods=len(PRICES), freq="15min")
    prices = pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=15),
                           "settlement_point": "LZ_TEST", "market": "RT", "price_usd_mwh": np.asarray(PRICES)})
    start = pd.Timestamp("2024-03-04T12:00-06:00")
    result = run_backtest(profile, build_actuals(profile, prices, start, start + pd.Timedelta(hours=12)),
                          ["threshold", "always-on"])
    plain = backtest_figure(result)
    try:
        plain.savefig(tmp_path / "plain.png", dpi=110)  # matplotlib's layout pass, then the render
    finally:
        plt.close(plain)
    fast = plot_backtest(result, tmp_path / "fast.png")
    a = np.asarray(Image.open(tmp_path / "plain.png"))
    b = np.asarray(Image.open(fast))
    assert a.shape == b.shape
    assert np.array_equal(a, b), int((a != b).any(axis=-1).sum())
    assert a.std() > 0  # a drawn figure, not a blank one
