"""The bundled compute profile (issue 16 leftover): ``west_texas_ai`` shares the default site with an
H100 inference cluster driven by the bundled Azure trace, and ``hashflex plan`` runs on it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from hashflex.profile import load_profile

REPO = Path(__file__).resolve().parents[1]


def test_the_ai_profile_ships_packaged_and_names_its_sources() -> None:
    text = (REPO / "site_profiles" / "west_texas_ai.yaml").read_bytes()
    assert (REPO / "src" / "hashflex" / "data" / "profiles" / "west_texas_ai.yaml").read_bytes() == text
    for source in (b"DGX H100", b"10.2 kW", b"CC BY 4.0", b"POLCA", b"ASSUMED"):
        assert source in text, source
    profile = load_profile("west_texas_ai")
    assert profile.compute is not None
    cluster = profile.compute.clusters[0]
    assert (cluster.gpus, cluster.full_power_kw) == (1024, 10.2)
    assert [w.demand_trace for w in profile.compute.inference] == ["azure_conv"]
    # The site is the default one: same settlement point, import limit and neighbours.
    default = load_profile("west_texas")
    assert profile.site.settlement_point == default.site.settlement_point
    assert profile.grid.import_limit_kw == default.grid.import_limit_kw
    assert [r.id for r in profile.receptors] == [r.id for r in default.receptors]
    assert all(np.isfinite(r.attenuation_from("h100")) for r in profile.receptors)  # placed by distance


def test_hashflex_plan_runs_on_the_ai_profile(tmp_path: Path) -> None:
    out = tmp_path / "plan.csv"
    executable = shutil.which("hashflex")
    command = [executable] if executable else [sys.executable, "-m", "hashflex.cli"]
    result = subprocess.run([*command, "plan", "--profile", "west_texas_ai", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "status optimal" in result.stdout
    frame = pd.read_csv(out)
    assert len(frame) == 96
    assert np.all(frame["service_level_chat"] >= 0.99 - 1e-9)
    assert frame["demand_tokens_per_s_chat"].max() <= 1_500_000 + 1e-6 and frame["demand_tokens_per_s_chat"].std() > 0
    assert np.all(frame["cluster_kw_h100"] > 0) and np.all(frame["grid_import_kw"] <= frame["import_limit_kw"] + 1e-6)
