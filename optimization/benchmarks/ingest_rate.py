"""End-to-end ingest rate: publisher -> Mosquitto -> MqttIngest (validate) -> Store (SQLite WAL).

Starts its own mosquitto on a free loopback port, runs a QoS 1 publisher in a separate process that
sends N valid messages of mixed kinds (noise, renewable, telemetry, carbon, hashprice, price), and
measures validated-and-stored messages per second and loss (rows in the store vs messages published).

    python optimization/benchmarks/ingest_rate.py [-n 50000] [--goal 5000]

Exit status 1 if any message is lost or the rate is below the goal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt

SITE = "bench"
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mosquitto(workdir: Path, max_inflight: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """A Mosquitto broker on a free loopback port in ``workdir``: (process, port). ``max_inflight``: the
    broker's ``max_inflight_messages`` (its Receive Maximum), default Mosquitto's own."""
    binary = os.environ.get("HASHFLEX_MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = workdir / "mosquitto.conf"
    inflight = f"max_inflight_messages {max_inflight}\n" if max_inflight is not None else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{inflight}"
                    "max_queued_messages 1000000\nlog_dest stderr\nlog_type error\n")
    proc = subprocess.Popen([binary, "-c", str(conf)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"mosquitto exited with {proc.returncode}")
            time.sleep(0.02)
    proc.terminate()
    raise SystemExit("mosquitto did not start")


def message(i: int) -> tuple[str, str]:
    """The i-th message: unique identity, valid, cycling through six kinds."""
    prefix = f"hashflex/{SITE}/in/"
    stamp = T0 + timedelta(seconds=i)
    ts = stamp.isoformat()
    match i % 6:
        case 0:
            r = f"r{i % 7}"
            return prefix + f"noise/{r}", json.dumps({"receptor_id": r, "laeq_dba": 40 + i % 20, "averaging_s": 1,
                                                      "timestamp": ts, "meter_class": 1})
        case 1:
            return prefix + "renewable/pv1", json.dumps({"source_id": "pv1", "power_kw": i % 5000, "timestamp": ts})
        case 2:
            m = f"m{i % 500}"
            return prefix + f"telemetry/{m}", json.dumps({"miner_id": m, "power_kw": 3.4, "hashrate_th_s": 200,
                                                          "mode": "stock", "temperature_c": 60, "errors": [],
                                                          "timestamp": ts})
        case 3:
            return prefix + "carbon", json.dumps({"intensity_kg_per_mwh": 400, "kind": "marginal", "timestamp": ts,
                                                  "source": "bench"})
        case 4:
            return prefix + "hashprice", json.dumps({"hashprice_usd_per_ph_day": 50, "timestamp": ts,
                                                     "source": "bench"})
        case _:
            return prefix + "price", json.dumps({"settlement_point": "HB_WEST", "market": "RT",
                                                 "interval_start": ts,
                                                 "interval_end": (stamp + timedelta(minutes=15)).isoformat(),
                                                 "price_usd_mwh": (i % 300) - 50})


def publish(port: int, n: int) -> None:
    """Publisher process: send n QoS 1 messages, wait for every PUBACK, print the elapsed time."""
    acked = 0
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    for i in range(n):
        topic, payload = message(i)
        client.publish(topic, payload, qos=1)
    while acked < n:
        time.sleep(0.01)
    print(json.dumps({"published": n, "publish_s": time.perf_counter() - start}), flush=True)
    client.disconnect()
    client.loop_stop()


def run(n: int, goal: float) -> int:
    """Ingest ``n`` messages and print the rate against ``goal`` (messages/s); exit code."""
    src = Path(__file__).resolve().parent.parent.parent / "src"
    if (src / "hashflex").is_dir():
        sys.path.insert(0, str(src))  # run from a checkout without installing
    from hashflex.feeds.mqtt import MqttIngest
    from hashflex.store import Store

    with tempfile.TemporaryDirectory(prefix="hashflex-bench-") as tmp:
        workdir = Path(tmp)
        broker, port = start_mosquitto(workdir)
        try:
            store = Store(workdir / "bench.db")
            ingest = MqttIngest(store, SITE, "127.0.0.1", port, client_id="bench-ingest", session_expiry_s=0)
            ingest.start()
            if not ingest.wait_connected(10):
                raise SystemExit("ingest did not connect")
            start = time.perf_counter()
            first_handled: float | None = None
            cpu_start = time.process_time()
            publisher = subprocess.Popen([sys.executable, __file__, "--publish", str(port), "-n", str(n)],
                                         stdout=subprocess.PIPE, text=True)
            deadline = start + max(60.0, n / 500)
            while True:
                handled = sum(ingest.totals().values())
                if first_handled is None and handled:
                    first_handled = time.perf_counter()
                if handled >= n or time.perf_counter() > deadline:
                    break
                time.sleep(0.002 if first_handled is None else 0.02)
            validated_s = time.perf_counter() - start
            store.flush(timeout_s=120)
            stored_s = time.perf_counter() - start
            ingest_cpu_s = time.process_time() - cpu_start
            out, _ = publisher.communicate(timeout=60)
            pub = json.loads(out.strip().splitlines()[-1])
            ingest.stop()
            stored = store.count("observations") + store.count("prices")
            totals = ingest.totals()
            writer = store.writer_stats()
            store.close()
        finally:
            broker.terminate()
            broker.wait(10)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)

    rate = stored / stored_s
    sustained = stored / (stored_s - (first_handled - start)) if first_handled else 0.0
    lost = pub["published"] - stored
    print(f"published      {pub['published']:>8} msgs in {pub['publish_s']:.2f} s "
          f"({pub['published'] / pub['publish_s']:,.0f} msg/s, QoS 1, separate process)")
    print(f"ingest counts  accepted={totals['accepted']} rejected={totals['rejected']} "
          f"duplicate={totals['duplicate']} errors={totals['errors']}")
    print(f"validated      {validated_s:.2f} s after publisher start")
    print(f"stored         {stored:>8} rows in {stored_s:.2f} s (incl. final flush); writer batches={writer['batches']}")
    print(f"end-to-end     {rate:,.0f} msg/s validated and stored, from publisher launch (goal {goal:,.0f})")
    print(f"sustained      {sustained:,.0f} msg/s from first message received to last row committed")
    print(f"cpu            ingest process {ingest_cpu_s:.2f} s; publisher + mosquitto "
          f"{children.ru_utime + children.ru_stime:.2f} s; wall {stored_s:.2f} s on {os.cpu_count()} cores")
    print(f"loss           {lost} ({'OK' if lost == 0 else 'LOST MESSAGES'})")
    return 0 if lost == 0 and rate >= goal else 1


def main() -> int:
    """Parse the arguments, run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="messages to publish")
    parser.add_argument("--goal", type=float, default=5_000.0, help="msg/s required for exit status 0")
    parser.add_argument("--publish", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        publish(args.publish, args.n)
        return 0
    return run(args.n, args.goal)


if __name__ == "__main__":
    sys.exit(main())
