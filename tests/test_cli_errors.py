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
