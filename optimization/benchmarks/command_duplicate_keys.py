"""What refusing duplicate JSON keys costs a command's parse (issue 15, H1 finding 4).

``parse_message`` parses a DR, limits or AS command twice since H1: ``json.loads`` with an
``object_pairs_hook`` that looks for a key given twice, then pydantic's strict JSON validation. This
times, per payload kind, ``parse_message`` (with the check) against the baseline of the same
``parse_message`` with the check switched off (``parse.COMMAND_KINDS`` emptied for the baseline run:
the pre-H1 path), and prints the medians (µs per parse) and their ratio. Observations (telemetry: thousands a second) are not checked,
so their parse is unchanged; the telemetry row shows that (its ratio should be ~1).

Payloads are SYNTHETIC (valid messages of each kind).

    python optimization/benchmarks/command_duplicate_keys.py [--repeat 2000] [--trials 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from hashflex.messages import parse as parse_module
from hashflex.messages.parse import parse_message

PAYLOADS = {  # SYNTHETIC
    "as_deploy": ("in/as/deploy", {"deployment_id": "dep-1", "product": "RRS", "issued_at": "2026-07-14T19:03:10Z",
                                   "deployed_kw": 3000, "issuer": "qse"}),
    "as_award": ("in/as/award", {"award_id": "aw-1", "product": "RRS", "start": "2026-07-14T18:00:00Z",
                                 "end": "2026-07-14T22:00:00Z", "reserve_kw": 5000, "price_usd_mw_h": 12.5,
                                 "issuer": "qse"}),
    "dr": ("in/dr", {"event_id": "e-1", "modification_number": 0, "program": "ERS-10",
                     "start": "2026-07-14T18:00:00Z", "import_limit_kw": 1000, "issuer": "utility"}),
    "limits": ("in/limits", {"issuer": "ops", "reason": "bench", "issued_at": "2026-07-14T18:00:00Z",
                             "noise_caps": [{"receptor_id": "porch", "cap_dba": 45.0,
                                             "window_start": "2026-07-14T18:00:00Z",
                                             "window_end": "2026-07-14T22:00:00Z"}] * 20}),
    "telemetry": ("in/telemetry/g-1", {"miner_id": "g-1", "timestamp": "2026-07-14T18:00:00Z", "mode": "run",
                                       "power_kw": 3.5, "hashrate_th_s": 200.0, "temperature_c": 60.0}),
}


def _median_us(fn, repeat: int, trials: int) -> float:  # noqa: ANN001
    per_call = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        per_call.append((time.perf_counter() - start) / repeat * 1e6)
    return statistics.median(per_call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=7)
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    print(f"{'kind':10} {'bytes':>6} {'baseline µs':>12} {'with check µs':>14} {'ratio':>6}")
    for kind, (suffix, body) in PAYLOADS.items():
        raw = json.dumps(body).encode()
        topic = f"hashflex/site/{suffix}"
        parsed = parse_message(topic, raw)
        assert not hasattr(parsed, "rule"), f"{kind}: the benchmark payload is refused: {parsed}"
        kinds = parse_module.COMMAND_KINDS
        parse_module.COMMAND_KINDS = frozenset()  # the pre-H1 path: no duplicate-key check
        try:
            baseline = _median_us(lambda: parse_message(topic, raw), args.repeat, args.trials)  # noqa: B023
        finally:
            parse_module.COMMAND_KINDS = kinds
        checked = _median_us(lambda: parse_message(topic, raw), args.repeat, args.trials)  # noqa: B023
        print(f"{kind:10} {len(raw):6d} {baseline:12.2f} {checked:14.2f} {checked / baseline:6.2f}")


if __name__ == "__main__":
    main()
