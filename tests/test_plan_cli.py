"""`hashflex plan` end to end on the bundled real prices, through the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hashflex.cli import main
from hashflex.data import bundled_path
from hashflex.profile import load_profile

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("hashflex")
    command = [executable] if executable else [sys.executable, "-m", "hashflex.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)


def test_plan_default_writes_the_csv_contract(tmp_path: Path) -> None:
    out = tmp_path / "schedule.csv"
    result = run_cli("plan", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "status optimal" in result.stdout and "ranch_north dB(A)/cap" in result.stdout
    frame = pd.read_csv(out)
    profile = load_profile("west_texas")
    assert len(frame) == 96
    required = ["interval_start", "price_usd_mwh", "load_kw", "grid_import_kw", "import_limit_kw",
                "renewable_used_kw", "emissions_kg", "profit_usd", "reason"]
    required += [f"units_{g.id}_{m.name}" for g in profile.miner_groups for m in g.modes]
    required += [f"noise_dba_{r.id}" for r in profile.receptors] + [f"noise_cap_dba_{r.id}" for r in profile.receptors]
    assert not set(required) - set(frame.columns)
    starts = pd.to_datetime(frame["interval_start"], utc=True)
    assert starts.iloc[0] == pd.Timestamp("2020-02-01T06:00Z")  # 00:00 CST, first RT interval of the file
    assert (frame["grid_import_kw"] <= frame["import_limit_kw"] + 1e-6).all()
    for receptor in profile.receptors:
        assert (frame[f"noise_dba_{receptor.id}"] <= frame[f"noise_cap_dba_{receptor.id}"]).all()
    assert frame["emissions_kg"].sum() <= profile.carbon.daily_budget_kg + 1e-6


def test_plan_prices_come_from_the_real_file(tmp_path: Path) -> None:
    out = tmp_path / "schedule.csv"
    assert main(["plan", "--out", str(out), "--start", "2020-02-10T00:00-06:00"]) == 0
    frame = pd.read_csv(out)
    raw = pd.read_csv(bundled_path("ercot/RTM-2020-02.csv"), thousands=",")
    raw = raw[(raw["Settlement Point Name"] == "LZ_WEST") & (raw["Settlement Point Type"] == "LZ")
              & (raw["Delivery Date"] == "02/10/2020")]
    expected = raw.sort_values(["Delivery Hour", "Delivery Interval"])["Settlement Point Price"].to_numpy(dtype=float)
    np.testing.assert_allclose(frame["price_usd_mwh"].to_numpy(), expected)


def test_plan_json_output_and_simple_csv_prices(tmp_path: Path) -> None:
    prices = tmp_path / "prices.csv"
    index = pd.date_range("2024-07-01T00:00-05:00", periods=96, freq="15min")
    price = np.where((index.hour >= 15) & (index.hour < 19), 900.0, 25.0)
    pd.DataFrame({"interval_start": [t.isoformat() for t in index], "price_usd_mwh": price}).to_csv(prices, index=False)
    out = tmp_path / "schedule.json"
    assert main(["plan", "--prices", str(prices), "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["status"] == "optimal" and len(document["profile_sha256"]) == 64
    spike = [row for row in document["intervals"] if row["price_usd_mwh"] == 900.0]
    assert len(spike) == 16 and all(row["reason"] == "price" for row in spike)


def test_bad_price_file_is_a_clear_error_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prices = tmp_path / "prices.csv"
    prices.write_text("interval_start,price_usd_mwh\n2024-07-01T00:00-05:00,12.5\n2024-07-01T00:15-05:00,abc\n")
    out = tmp_path / "schedule.csv"
    assert main(["plan", "--prices", str(prices), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "prices.csv" in error and "price_usd_mwh" in error
    assert not out.exists() and not list(tmp_path.glob(".schedule*"))


def test_bad_profile_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "site.yaml"
    profile.write_text((REPO / "site_profiles" / "west_texas.yaml").read_text().replace("import_limit_kw: 30000", "import_limit_kw: lots"))
    assert main(["plan", "--profile", str(profile)]) == 2
    assert "grid.import_limit_kw" in capsys.readouterr().err


def test_five_minute_site_plans_on_a_multiresolution_grid(tmp_path: Path) -> None:
    out = tmp_path / "schedule.csv"
    profile = REPO / "site_profiles" / "panhandle_120mw.yaml"
    prices = bundled_path("ercot/RTM-2021-02.csv")
    assert main(["plan", "--profile", str(profile), "--prices", str(prices), "--out", str(out),
                 "--start", "2021-02-15T00:00-06:00"]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 288  # one row per 5-min interval even though the far horizon is hourly
    assert (frame["grid_import_kw"] <= frame["import_limit_kw"] + 1e-6).all()
    # Winter Storm Uri: HB_PAN sat at the $9,000 cap, far above every breakeven, so nothing runs.
    assert (frame.loc[frame["price_usd_mwh"] > 1000, "reason"] == "price").all()
