"""The canonical price-frame contract, and the one helper every feed test uses to enforce it.

`assert_price_contract` re-checks the contract independently of `check_price_frame` (so a bug in
the checker cannot hide a bug in a parser) and then also runs the checker.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hashflex.frames import (
    PRICE_COLUMNS,
    DuplicateReport,
    check_price_frame,
    empty_price_frame,
    finalize_price_frame,
)


def assert_price_contract(df: pd.DataFrame) -> None:
    """Shared check for every parser's output (used by the ERCOT, DST and HTTP tests)."""
    assert list(df.columns) == list(PRICE_COLUMNS)
    for col in ("interval_start", "interval_end"):
        assert isinstance(df[col].dtype, pd.DatetimeTZDtype), col
        assert str(df[col].dt.tz) == "UTC", col
        assert df[col].notna().all(), col
    assert (df["interval_end"] > df["interval_start"]).all()
    assert df["settlement_point"].map(lambda v: isinstance(v, str) and v != "").all()
    assert set(df["market"]) <= {"RT", "DA"}
    assert df["price_usd_mwh"].dtype == np.float64
    assert np.isfinite(df["price_usd_mwh"].to_numpy()).all()
    keys = list(zip(df["interval_start"], df["settlement_point"], df["market"]))
    assert len(set(keys)) == len(keys), "duplicate (interval_start, settlement_point, market)"
    assert keys == sorted(keys), "not sorted by interval_start, settlement_point, market"
    assert list(df.index) == list(range(len(df)))
    assert isinstance(df.attrs.get("duplicates"), DuplicateReport)
    check_price_frame(df)


def _frame(**over: object) -> pd.DataFrame:
    start = pd.to_datetime(["2021-02-01T06:00Z", "2021-02-01T06:15Z"], utc=True)
    base = {
        "interval_start": start,
        "interval_end": start + pd.Timedelta(minutes=15),
        "settlement_point": ["LZ_WEST", "LZ_WEST"],
        "market": ["RT", "RT"],
        "price_usd_mwh": [10.0, -5.0],
    }
    base.update(over)
    return pd.DataFrame(base)


def test_valid_frame_and_empty_frame_pass() -> None:
    check_price_frame(_frame())
    empty = empty_price_frame()
    check_price_frame(empty)
    assert list(empty.columns) == list(PRICE_COLUMNS) and len(empty) == 0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[list(PRICE_COLUMNS)[::-1]], "columns"),
        (lambda d: d.assign(interval_start=d["interval_start"].dt.tz_localize(None)), "interval_start"),
        (lambda d: d.assign(interval_end=d["interval_end"].dt.tz_convert("America/Chicago")), "interval_end"),
        (lambda d: d.assign(interval_end=d["interval_start"]), "after interval_start"),
        (lambda d: d.assign(market=["RT", "ID"]), "market"),
        (lambda d: d.assign(settlement_point=["LZ_WEST", ""]), "settlement_point"),
        (lambda d: d.assign(price_usd_mwh=[1.0, np.inf]), "finite"),
        (lambda d: d.assign(price_usd_mwh=[1, 2]), "float64"),
        (lambda d: d.iloc[::-1].reset_index(drop=True), "sorted"),
        (lambda d: d.assign(interval_start=d["interval_start"].iloc[[0, 0]].to_numpy(),
                            interval_end=d["interval_end"].iloc[[0, 0]].to_numpy()), "duplicate"),
        (lambda d: d.set_index(pd.Index([5, 6])), "RangeIndex"),
    ],
)
def test_check_price_frame_names_the_problem(mutate, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_price_frame(mutate(_frame()))


def test_finalize_keeps_last_conflicting_row_and_reports_it(caplog: pytest.LogCaptureFixture) -> None:
    rows = pd.concat([_frame(), _frame(price_usd_mwh=[10.0, 7.0]), _frame()], ignore_index=True)
    # input order for 06:15: -5.0, 7.0, -5.0 -> last wins (-5.0); 06:00: 10.0 three times (identical)
    with caplog.at_level("WARNING"):
        out = finalize_price_frame(rows, "x.csv")
    assert_price_contract(out)
    assert out["price_usd_mwh"].tolist() == [10.0, -5.0]
    rep = out.attrs["duplicates"]
    assert rep.source == "x.csv"
    assert rep.identical_rows_dropped == 3 and rep.conflicting_rows_dropped == 1
    assert len(rep.conflicts) == 1
    assert rep.conflicts[0].prices_usd_mwh == (-5.0, 7.0, -5.0)
    assert rep.conflicts[0].kept_price_usd_mwh == -5.0
    assert "conflicting prices" in caplog.text


def test_finalize_without_duplicates_reports_nothing() -> None:
    out = finalize_price_frame(_frame().iloc[::-1], "y")
    assert not out.attrs["duplicates"]
    assert out["interval_start"].is_monotonic_increasing
