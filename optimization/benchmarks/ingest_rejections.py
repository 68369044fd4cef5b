"""Ingest cost of refused inputs with the bounded audit (issue 15, auditor finding 1), against a baseline.

Runs ``MqttIngest.handle`` (no broker: the per-message path the network thread runs) on a real
``Store`` in a temporary directory for (a) a flood of malformed ``in/as/deploy`` payloads and (b)
well-formed noise readings (the accepted path, which the change must not slow). With the audit
(``audit=AuditRecorder(store).record``, as ``hashflex run`` wires it) when the code under test has it;
the baseline (a ``git worktree`` of the commit before) has none. Prints per-message wall and CPU
microseconds. SYNTHETIC payloads.

Usage (alternate the two, the machine is shared)::

    git worktree add /tmp/base <commit before>
    for i in 1 2 3; do
      PYTHONPATH=/tmp/base/src python optimization/benchmarks/ingest_rejections.py --label base
      python optimization/benchmarks/ingest_rejections.py --label new
    done
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import hashflex
from hashflex.feeds.mqtt import MqttIngest
from hashflex.store import Store

SITE = "bench"


def measure(ingest: MqttIngest, topic: str, payloads: list[bytes]) -> tuple[float, float]:
    """(wall µs, CPU µs) per message of ``ingest.handle`` over ``payloads``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for payload in payloads:
        ingest.handle(topic, payload)
    return ((time.perf_counter() - wall) * 1e6 / len(payloads), (time.process_time() - cpu) * 1e6 / len(payloads))


def main() -> None:
    """Print one JSON line of per-message costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="new")
    parser.add_argument("-n", type=int, default=20_000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the rejection warnings (rate-limited per reason) are not what is timed
    now = datetime.now(timezone.utc)
    bad = [b'{"deployment_id": "flood-%d", "product": ' % i for i in range(args.n)]  # SYNTHETIC flood
    good = [json.dumps({"receptor_id": "porch", "laeq_dba": 40.0 + (i % 100) / 10, "averaging_s": 60,
                        "timestamp": now.replace(microsecond=i % 1_000_000).isoformat(), "meter_class": 1}).encode()
            for i in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.db") as store:
        audited = "audit" in inspect.signature(MqttIngest).parameters
        recorder = None
        kwargs = {}
        if audited:
            from hashflex.control.records import AuditRecorder

            recorder = AuditRecorder(store)
            kwargs["audit"] = recorder.record
        ingest = MqttIngest(store, SITE, client_id="bench", **kwargs)
        prefix = f"hashflex/{SITE}/"
        bad_wall, bad_cpu = measure(ingest, f"{prefix}in/as/deploy", bad)
        good_wall, good_cpu = measure(ingest, f"{prefix}in/noise/porch", good)
        ingest.stop()
        if recorder is not None:
            recorder.flush()
            recorder.close()
        store.flush()
        records = 0
        if audited:
            from hashflex.audit import AuditLog

            with AuditLog(Path(tmp) / "bench.db", readonly=True) as log:
                records = len(log.records())
    print(json.dumps({"label": args.label, "hashflex": str(Path(hashflex.__file__).parent), "n": args.n,
                      "audited": audited, "audit_records": records,
                      "refused_wall_us": round(bad_wall, 1), "refused_cpu_us": round(bad_cpu, 1),
                      "accepted_wall_us": round(good_wall, 1), "accepted_cpu_us": round(good_cpu, 1)}))


if __name__ == "__main__":
    main()
