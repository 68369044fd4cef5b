"""Setpoints through a real Mosquitto on loopback: one message per miner vs one message per group.

For 1,000, 10,000 and 100,000 setpoints (SYNTHETIC miners ``g<k>-<n>`` in ``--groups`` groups), the
MQTT driver's ``apply(batch)`` is timed from the call until every PUBACK is in (building and validating
the payloads included), for:

- ``per-miner``: ``MqttDriver(setpoint_topics="miner")``, one ``SetpointMessage`` per miner on
  ``out/setpoint/<miner>`` (paho-mqtt 2.x);
- ``per-group``: ``MqttDriver()`` (the default), one ``GroupSetpointsMessage`` per group (at most
  ``--rows`` rows each) on ``out/setpoints/<group>`` (paho-mqtt 2.x);
- ``per-group columns``: the same driver and messages, given the batch as the control loop gives it,
  as columns (``apply_batch`` of a ``drivers.batch.SetpointBatch``: rows encoded from mode codes,
  issue 18);
- ``baseline`` (with ``--baseline-rev``, default the commit before issue 18's change): the driver of
  that revision, loaded from git — per-miner messages through its hand-written ``QoS1Publisher``.

A subscriber in another process (standing in for the miners, as on a real site, so it does not share
our GIL) follows both topics at QoS 1 and reports when it had every setpoint (``at miners``: the last
arrival, from the same monotonic clock). Between trials the bench waits until the subscriber has
drained. Prints a table per size: the median and the best ``apply`` of ``--trials`` trials (the call until
every PUBACK is in and every result made), the median split into ``encode`` (building and validating
payloads) and ``publish`` (connecting, sending, until the last PUBACK; the baseline driver does not
split), ``at miners``, the median CPU time of the publishing process (all its threads: less sensitive
than wall time to a shared machine) and the ratio of the medians to per-group.

    python optimization/benchmarks/mqtt_batch.py [--sizes 1000 10000 100000] [--trials 3] [--groups 48]
        [--rows 1000] [--baseline-rev 6a52998] [--max-inflight 20]

``--max-inflight`` is the broker's ``max_inflight_messages`` (Mosquitto's default is 20; it is also the
Receive Maximum the broker announces, which bounds a publisher's unacknowledged window).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from hashflex.drivers.base import Setpoint, SetpointStatus  # noqa: E402
from hashflex.drivers.batch import GroupBatch, SetpointBatch  # noqa: E402
from hashflex.drivers.mqtt import MqttDriver  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_rate import start_mosquitto  # noqa: E402  (same folder: the broker helper)

SITE = "mqttbatch"

SUBSCRIBER = r"""
import json, sys, threading, time
import paho.mqtt.client as mqtt
state = {"messages": 0, "rows": 0, "last": 0.0}
lock = threading.Lock()
def on_message(client, userdata, message):
    body = json.loads(message.payload)
    rows = len(body["setpoints"]) if "setpoints" in body else 1
    with lock:
        state["messages"] += 1
        state["rows"] += rows
        state["last"] = time.monotonic()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-miners", protocol=mqtt.MQTTv5)
c.max_queued_messages_set(0)
c.on_message = on_message
c.on_subscribe = lambda *a: print("ready", flush=True)
c.connect(sys.argv[1], int(sys.argv[2]))
c.subscribe([(sys.argv[3], 1), (sys.argv[4], 1)])
c.loop_start()
for line in sys.stdin:
    with lock:
        print(state["messages"], state["rows"], repr(state["last"]), flush=True)
"""


class Subscriber:
    """The miners' side in another process: counts messages and setpoint rows, reports the last arrival."""

    def __init__(self, port: int) -> None:
        topics = [f"hashflex/{SITE}/out/setpoint/+", f"hashflex/{SITE}/out/setpoints/+"]
        self.proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, "127.0.0.1", str(port), *topics],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("subscriber did not start")

    def state(self) -> tuple[int, int, float]:
        """(messages, setpoint rows, monotonic time of the last arrival) received so far."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        messages, rows, last = self.proc.stdout.readline().split()
        return int(messages), int(rows), float(last)

    def wait_rows(self, rows: int, timeout_s: float) -> float | None:
        """The monotonic time of the last arrival once ``rows`` setpoints arrived in all, or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _, got, last = self.state()
            if got >= rows:
                return last
            time.sleep(0.02)
        return None

    def close(self) -> None:
        """Stop the subscriber process."""
        self.proc.terminate()
        self.proc.wait(5)


def batch(size: int, groups: int) -> list[Setpoint]:
    """``size`` setpoints as the dispatcher makes them: one issued_at/expires_at, groups of equal size."""
    now = datetime.now(timezone.utc)
    expires = now + timedelta(minutes=15)
    per_group = -(-size // groups)
    return [Setpoint(f"g{i // per_group:02d}-{i % per_group:06d}", "eco", 2.9, now, expires,
                     group_id=f"g{i // per_group:02d}") for i in range(size)]


def column_batch(size: int, groups: int) -> SetpointBatch:
    """:func:`batch` as columns (the same miners, mode and power), as the control loop sends it."""
    now = datetime.now(timezone.utc)
    per_group = -(-size // groups)
    out = []
    for g in range(groups):
        n = max(0, min(per_group, size - g * per_group))
        if not n:
            continue
        ids = np.array([f"g{g:02d}-{i:06d}" for i in range(n)], dtype=object)
        out.append(GroupBatch(f"g{g:02d}", ids, np.zeros(n, dtype=np.int16), ("eco",), np.array([0.0, 0.01, 2.9]),
                              sorted_ids=True))
    return SetpointBatch(out, now, now + timedelta(minutes=15))


class Columns:
    """A driver given its batch as columns (``apply_batch``): ``apply(size, groups)`` for `run`."""

    def __init__(self, driver: MqttDriver) -> None:
        self.driver = driver

    def __getattr__(self, name: str):  # noqa: ANN204 - start, close, last_timings ... of the driver
        return getattr(self.driver, name)


def load_baseline(rev: str) -> ModuleType | None:
    """The MQTT driver module of revision ``rev`` (None when git or the revision is missing)."""
    try:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:src/hashflex/drivers/mqtt.py"],
                                check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"baseline {rev}: not loaded ({exc})", file=sys.stderr)
        return None
    path = Path(tempfile.mkdtemp(prefix="mqtt-baseline-")) / "baseline_mqtt.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_mqtt", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_mqtt"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(driver, sub: Subscriber, size: int, groups: int) -> tuple[float, float | None, int, float, float, float]:  # noqa: ANN001,E501
    """(s for apply until all PUBACKs and results, s until the subscriber had every setpoint, messages
    published, CPU s of this process, s encoding, s publishing until the last PUBACK)."""
    _, rows_before, _ = sub.state()
    columns = isinstance(driver, Columns)
    setpoints = column_batch(size, groups) if columns else batch(size, groups)
    cpu = time.process_time()
    started = time.monotonic()
    results = driver.apply_batch(setpoints) if columns else driver.apply(setpoints)
    acked = time.monotonic() - started
    cpu = time.process_time() - cpu
    if columns:
        if results.tally() != {"applied": size}:
            raise SystemExit(f"setpoints not all applied: {results.tally()}")
    else:
        bad = [r for r in results if r.status is not SetpointStatus.APPLIED]
        if bad:
            raise SystemExit(f"{len(bad)} setpoints not applied, e.g. {bad[0]}")
    last = sub.wait_rows(rows_before + size, timeout_s=300)
    timings = getattr(driver, "last_timings", {})
    return (acked, (last - started) if last is not None else None, getattr(driver, "messages_published", size), cpu,
            timings.get("encode_s", float("nan")), timings.get("publish_s", float("nan")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--groups", type=int, default=48, help="miner groups the setpoints are spread over")
    parser.add_argument("--rows", type=int, default=1000, help="most setpoints per group message")
    parser.add_argument("--baseline-rev", default="6a52998",
                        help="git revision whose driver is the baseline ('' to skip)")
    parser.add_argument("--max-inflight", type=int, default=20, help="the broker's max_inflight_messages")
    args = parser.parse_args()

    baseline = load_baseline(args.baseline_rev) if args.baseline_rev else None
    workdir = Path(tempfile.mkdtemp(prefix="mqtt-batch-"))
    broker, port = start_mosquitto(workdir, args.max_inflight)
    sub = Subscriber(port)
    designs: dict[str, object] = {
        "per-group": MqttDriver(SITE, "127.0.0.1", port, client_id="bench-group", puback_timeout_s=300.0,
                                max_setpoints_per_message=args.rows),
        "per-group columns": Columns(MqttDriver(SITE, "127.0.0.1", port, client_id="bench-columns",
                                                puback_timeout_s=300.0, max_setpoints_per_message=args.rows)),
        "per-miner": MqttDriver(SITE, "127.0.0.1", port, client_id="bench-miner", puback_timeout_s=300.0,
                                setpoint_topics="miner"),
    }
    if baseline is not None:
        designs[f"baseline {args.baseline_rev}"] = baseline.MqttDriver(SITE, "127.0.0.1", port, client_id="bench-base",
                                                                       puback_timeout_s=300.0)
    print(f"Mosquitto on loopback (max_inflight_messages {args.max_inflight}), {os.cpu_count()} CPUs, "
          f"{args.groups} groups, <= {args.rows} rows per group message, {args.trials} trials; "
          "SYNTHETIC miners; subscriber in another process")
    try:
        for driver in designs.values():
            driver.start()  # type: ignore[attr-defined]
            driver.wait_connected(10)  # type: ignore[attr-defined]
        for size in args.sizes:
            rows = []
            for name, driver in designs.items():
                trials = [run(driver, sub, size, args.groups) for _ in range(args.trials)]
                acked = [t[0] for t in trials]
                delivered = [t[1] for t in trials if t[1] is not None]
                rows.append((name, trials[0][2], statistics.median(acked), min(acked),
                             statistics.median(delivered) if delivered else float("nan"),
                             statistics.median(t[3] for t in trials), statistics.median(t[4] for t in trials),
                             statistics.median(t[5] for t in trials)))
            group_median = rows[0][2]
            print(f"\n{size:,} setpoints")
            print(f"  {'design':<22} {'messages':>9} {'apply median':>13} {'best':>9} {'encode':>9} "
                  f"{'publish':>9} {'at miners':>10} {'CPU':>9} {'vs per-group':>13}")
            for name, messages, median, best, delivered, cpu, encode, publish in rows:
                print(f"  {name:<22} {messages:>9,} {median * 1000:>10.0f} ms {best * 1000:>6.0f} ms "
                      f"{encode * 1000:>6.0f} ms {publish * 1000:>6.0f} ms {delivered * 1000:>7.0f} ms "
                      f"{cpu * 1000:>6.0f} ms {median / group_median:>12.1f}x")
    finally:
        for driver in designs.values():
            driver.close()  # type: ignore[attr-defined]
        sub.close()
        broker.terminate()
        broker.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
