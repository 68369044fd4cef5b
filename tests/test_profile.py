"""Site profiles: the shipped examples load, and every mistake names the file and the field."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
import yaml

from hashflex.profile import (
    DEFAULT_PROFILE,
    ProfileError,
    geometric_attenuation_db,
    load_profile,
    parse_profile,
    profile_hash,
)

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted((REPO / "site_profiles").glob("*.yaml"))


def test_three_example_profiles_ship_and_load() -> None:
    assert len(PROFILES) >= 3
    for path in PROFILES:
        profile = load_profile(path)
        assert profile.miner_groups and profile.carbon.intensity_source


def test_packaged_profiles_are_the_site_profiles_files() -> None:
    packaged = REPO / "src" / "hashflex" / "data" / "profiles"
    for path in PROFILES:
        assert (packaged / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs from its packaged copy"


def test_default_profile_is_a_west_texas_site_of_tens_of_mw() -> None:
    profile = load_profile(DEFAULT_PROFILE)
    assert profile.site.settlement_point == "LZ_WEST"
    assert 10_000 < profile.full_load_kw < 100_000
    assert {g.cooling for g in profile.miner_groups} >= {"air", "hydro"}
    assert profile.renewables and len(profile.receptors) == 2


def test_large_profile_has_4cp_and_dr_and_is_over_100_mw() -> None:
    profile = load_profile(REPO / "site_profiles" / "panhandle_120mw.yaml")
    assert profile.full_load_kw > 100_000
    assert profile.grid.four_cp is not None and profile.dr.level_import_limit_kw[3] == 0


def test_efficiency_defaults_match_published_figures() -> None:
    profile = load_profile(DEFAULT_PROFILE)
    stock = {g.id: g.mode("stock").efficiency_j_per_th for g in profile.miner_groups}
    assert stock["hydro_s21xp"] == pytest.approx(13.5, abs=0.2)
    assert stock["air_s21"] == pytest.approx(17.5, abs=0.2)
    assert stock["air_s19jpro"] == pytest.approx(29.5, abs=0.5)


def _default_data() -> dict:
    return yaml.safe_load((REPO / "site_profiles" / "west_texas.yaml").read_text())


def _error(data: dict) -> str:
    with pytest.raises(ProfileError) as excinfo:
        parse_profile(yaml.safe_dump(data), source="site.yaml")
    return str(excinfo.value)


def test_unknown_key_is_an_error_naming_file_and_path() -> None:
    data = _default_data()
    data["receptors"][0]["night_cap_dba"] = 40
    message = _error(data)
    assert "site.yaml" in message and "receptors.0.night_cap_dba" in message and "Extra inputs" in message


def test_bad_values_name_their_field() -> None:
    data = _default_data()
    data["miner_groups"][1]["modes"][0]["power_kw"] = -1
    data["site"]["timezone"] = "Texas/West"
    message = _error(data)
    assert "miner_groups.1.modes.0.power_kw" in message
    assert "site.timezone" in message and "unknown IANA timezone" in message


def test_receptor_naming_an_unknown_group_is_rejected() -> None:
    data = _default_data()
    data["receptors"][0]["distance_m"]["ghost_group"] = 300
    assert "unknown miner groups ['ghost_group']" in _error(data)


def test_duplicate_group_ids_are_rejected() -> None:
    data = _default_data()
    data["miner_groups"].append(dict(data["miner_groups"][0]))
    assert "duplicate ids ['hydro_s21xp']" in _error(data)


def test_yaml_syntax_error_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not valid YAML"):
        parse_profile("site: [unclosed", source="broken.yaml")
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "missing.yaml")


def test_night_window_wraps_midnight_and_lowest_cap_wins() -> None:
    profile = load_profile(REPO / "site_profiles" / "quiet_hollow.yaml")
    maple = next(r for r in profile.receptors if r.id == "maple_lane")
    tz = profile.tz
    assert maple.cap_at(dt.datetime(2024, 6, 4, 23, 30, tzinfo=tz)) == 42  # Tuesday night
    assert maple.cap_at(dt.datetime(2024, 6, 5, 3, 0, tzinfo=tz)) == 42  # after midnight
    assert maple.cap_at(dt.datetime(2024, 6, 5, 12, 0, tzinfo=tz)) == 50  # Wednesday day
    assert maple.cap_at(dt.datetime(2024, 6, 8, 8, 0, tzinfo=tz)) == 42  # Saturday morning
    assert maple.cap_at(dt.datetime(2024, 6, 8, 12, 0, tzinfo=tz)) == 48  # Saturday day


def test_distance_gives_hemispherical_spreading() -> None:
    assert geometric_attenuation_db(100.0) == pytest.approx(48.0)
    profile = load_profile(DEFAULT_PROFILE)
    ranch = profile.receptors[0]
    assert ranch.attenuation_from("air_s21") == pytest.approx(20 * math.log10(1500) + 8)
    assert math.isinf(ranch.attenuation_from("not_a_group"))


def test_profile_hash_changes_with_content() -> None:
    data = _default_data()
    first = profile_hash(parse_profile(yaml.safe_dump(data)))
    data["carbon"]["daily_budget_kg"] = 1
    assert profile_hash(parse_profile(yaml.safe_dump(data))) != first


def test_scope2_instruments_are_validated() -> None:
    """Market-based Scope 2 instruments live in the profile (issue 13); a bad kind names its path."""
    import json

    from hashflex.profile import SiteProfile, load_profile

    data = json.loads(load_profile("west_texas").model_dump_json())
    data["carbon"]["instruments"] = [{"id": "rec-2020-02", "kind": "REC", "mwh": 100, "source": "M-RETS",
                                      "period_start": "2020-02-01T00:00:00Z", "period_end": "2020-03-01T00:00:00Z"}]
    data["carbon"]["residual_mix_kg_per_mwh"] = 410.0
    profile = SiteProfile.model_validate_json(json.dumps(data))
    assert profile.carbon.instruments[0].mwh == 100 and profile.carbon.residual_mix_kg_per_mwh == 410.0
    data["carbon"]["instruments"][0]["kind"] = "offset"
    with pytest.raises(ValueError, match=r"carbon.instruments.0.kind"):
        SiteProfile.model_validate_json(json.dumps(data))


def test_every_receptor_places_every_group_or_says_it_cannot_hear_it() -> None:
    """Newcomer finding: a receptor without a distance for one group treated that group as silent there,
    and the plan ran 45 % more units at night. Leaving a source out is now an error naming it."""
    data = load_profile("west_texas").model_dump(mode="json", exclude_none=True)
    del data["receptors"][0]["distance_m"]["air_s21"]
    with pytest.raises(ProfileError, match="receptor 'ranch_north': no distance_m or attenuation_db for \\['air_s21'\\]"):
        parse_profile(yaml.safe_dump(data), source="site.yaml")
    data["receptors"][0].setdefault("attenuation_db", {})["air_s21"] = float("inf")  # explicitly inaudible
    assert math.isinf(parse_profile(yaml.safe_dump(data)).receptors[0].attenuation_from("air_s21"))


def test_a_standby_draw_above_a_running_mode_is_refused() -> None:
    data = load_profile("west_texas").model_dump(mode="json", exclude_none=True)
    data["miner_groups"][0]["idle_power_kw"] = 100.0
    with pytest.raises(ProfileError, match="miner_groups.0.*idle_power_kw 100 must be below the lowest mode"):
        parse_profile(yaml.safe_dump(data), source="site.yaml")
