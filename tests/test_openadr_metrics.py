"""The OpenADR VEN's counters reach /metrics (issue 15 review: the VEN counted late, above-award and missed
AS deployments, but only in /status's ``openadr`` block, which the metrics never read)."""

from __future__ import annotations

from hashflex.control.daemon import with_openadr_counters
from hashflex.control.http import StatusMetrics


def test_ven_counters_are_exported_with_an_openadr_prefix_beside_the_loops() -> None:
    status = {"healthy": True, "counters": {"as_late": 2, "dr_events": 5}}
    ven = {"counters": {"as_late": 1, "as_missed": 3, "polls": 40}, "as_programs": ["ercot-rrs"]}
    merged = with_openadr_counters(status, ven)
    assert merged["openadr"] is ven
    assert merged["counters"] == {"as_late": 2, "dr_events": 5, "openadr_as_late": 1, "openadr_as_missed": 3,
                                  "openadr_polls": 40}
    assert status["counters"] == {"as_late": 2, "dr_events": 5}, "the input document is not changed"
    text = StatusMetrics().render(merged).decode()
    assert 'hashflex_events_total{counter="openadr_as_missed"} 3.0' in text
    assert 'hashflex_events_total{counter="as_late"} 2.0' in text
    assert 'hashflex_events_total{counter="openadr_as_late"} 1.0' in text


def test_without_a_ven_nothing_is_added() -> None:
    merged = with_openadr_counters({"counters": {"ticks": 1}}, None)
    assert merged == {"counters": {"ticks": 1}, "openadr": None}
