"""Command-line errors a newcomer met: a documented default refused, and a traceback for an unknown group."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hashflex.cli import build_parser
from hashflex.profile import load_profile


def test_limits_clear_accepts_its_documented_default() -> None:
    args = build_parser().parse_args(["limits", "clear"])  # argparse refused [] against choices on 3.11
    assert args.parts == []


def test_evaluate_repair_names_an_unknown_group_instead_of_a_traceback() -> None:
    result = subprocess.run([sys.executable, "-m", "hashflex.cli", "evaluate-repair", "--group", "nosuch",
                             "--units", "10", "--repair-cost-usd", "300", "--repair-downtime-days", "7",
                             "--repaired-life-days", "365", "--new-hashrate-th-s", "200", "--new-power-kw", "3.5",
                             "--new-sound-dba", "84", "--new-unit-price-usd", "3000"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "group 'nosuch': not in the profile" in result.stderr


def test_profile_group_names_the_groups_there_are() -> None:
    with pytest.raises(ValueError, match="groups: hydro_s21xp, air_s21, air_s19jpro"):
        load_profile("west_texas").group("nosuch")


def test_a_renewables_file_is_bounded_and_a_sparse_one_is_not_stretched(tmp_path) -> None:  # noqa: ANN001
    """Newcomer findings: one row of 99,999,999 kW for a 10 MW plant was accepted, and a single noon row
    was held until midnight (no grid import all afternoon)."""
    import numpy as np
    import pandas as pd

    from hashflex.plan import PlanInputError, read_renewables_csv, renewables_on_grid

    huge = tmp_path / "huge.csv"
    huge.write_text("interval_start,power_kw\n2020-02-03T12:00:00-06:00,99999999\n")
    with pytest.raises(PlanInputError, match="line 2: power_kw 1e\\+08 is above 1.1 × the site's renewable capacity"):
        read_renewables_csv(huge, capacity_kw=10_000.0)
    sparse = tmp_path / "sparse.csv"
    sparse.write_text("interval_start,power_kw\n2020-02-03T12:00:00-06:00,5000\n2020-02-03T12:15:00-06:00,5000\n")
    series = read_renewables_csv(sparse, capacity_kw=10_000.0)
    grid = pd.date_range("2020-02-03T17:45Z", periods=6, freq="15min")  # 11:45 .. 13:00 Central
    # 11:45 before the file: 0; 12:00 and 12:15 as recorded; after the file's own 15-minute spacing: 0.
    np.testing.assert_array_equal(renewables_on_grid(series, grid, pd.Timedelta(minutes=15)), [0, 5000, 5000, 0, 0, 0])
