"""`hashflex limits set|list|clear`: a site manager's limits from the command line.

``set`` and ``clear`` publish one :class:`~hashflex.messages.LimitsChangeMessage` on
``hashflex/<site>/in/limits`` (QoS 1; the same message the dashboard's form becomes) and print the
daemon's answer from ``out/limits/ack`` (matched by its ``change_id``). Exit 0 accepted, 1 refused
by the daemon, 3 no answer within ``--timeout``, 2 bad input (the field named).

``list`` prints the limits in force now from the daemon's ``/status`` (``--url``, default
http://127.0.0.1:9108; a manager token from ``HASHFLEX_MANAGER_TOKEN`` is
sent when set, for a daemon bound off loopback), or with ``--from-broker`` from its retained
``out/status`` (as of its last tick, which it says): import limit and its source, every import
limit by source, manager limits, holds, DR events.

Broker settings as for ``hashflex run`` (``--mqtt-host``/``--mqtt-port``, ``HASHFLEX_MQTT_USERNAME``,
``HASHFLEX_MQTT_PASSWORD``, ``HASHFLEX_MQTT_TLS_CA``): writing ``in/limits`` on the broker is what
authorises a manager here, so give managers broker credentials whose ACL allows that topic
(deploy/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

import paho.mqtt.client as mqtt

from hashflex.messages import Topics
from hashflex.profile import DEFAULT_PROFILE
from hashflex.web.manager import limits_change

EXIT_REFUSED, EXIT_NO_ANSWER = 1, 3


def _client(args: argparse.Namespace, suffix: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hashflex-limits-{suffix}-{os.getpid()}",
                         protocol=mqtt.MQTTv5)
    if os.environ.get("HASHFLEX_MQTT_USERNAME"):
        client.username_pw_set(os.environ["HASHFLEX_MQTT_USERNAME"], os.environ.get("HASHFLEX_MQTT_PASSWORD"))
    if os.environ.get("HASHFLEX_MQTT_TLS_CA"):
        client.tls_set(ca_certs=os.environ["HASHFLEX_MQTT_TLS_CA"])
    return client


def _receive(args: argparse.Namespace, topic: str, publish: tuple[str, str] | None) -> queue.Queue[bytes]:
    """Subscribe to ``topic`` (then publish ``publish`` once subscribed); messages go to the queue."""
    received: queue.Queue[bytes] = queue.Queue()
    client = _client(args, "cli")

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            received.put(b"")  # connection refused: reported by the caller
            return
        c.subscribe(topic, qos=1)

    def on_subscribe(c: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        if publish is not None:
            c.publish(publish[0], publish[1], qos=1)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = lambda c, u, m: received.put(m.payload)
    try:
        client.connect(args.mqtt_host, args.mqtt_port)
    except OSError as exc:
        raise ValueError(f"--mqtt-host/--mqtt-port {args.mqtt_host}:{args.mqtt_port}: cannot connect ({exc})") from None
    client.loop_start()
    received.client = client  # type: ignore[attr-defined]  # closed by _close
    return received


def _close(received: queue.Queue[bytes]) -> None:
    client = received.client  # type: ignore[attr-defined]
    client.disconnect()
    client.loop_stop()


def _option_error(error: dict[str, Any]) -> str:
    """One pydantic error as the command-line option it came from, e.g. ``--import-limit-kw -1.0: must be >= 0``."""
    field = str(error["loc"][0]) if error.get("loc") else ""
    # A model-level rule (e.g. "give at least one limit") names no field: say so, not "--input".
    option = ("limits" if not field else
              {"noise_caps_dba": "--noise-cap"}.get(field, "--" + field.replace("_", "-")))
    message = str(error.get("msg", "invalid")).replace("Input should be ", "must be ").replace(
        "greater than or equal to", ">=").replace("less than or equal to", "<=")
    value = error.get("input")
    return f"{option} {value!r}: {message}" if not isinstance(value, dict) else f"{option}: {message}"


def cmd_limits(args: argparse.Namespace) -> int:
    """``hashflex limits set|clear|list``: send a change and print its acknowledgement, or list the limits.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`add_limits_parser`.

    Returns
    -------
    int
        Exit status: 0 accepted (or listed), ``EXIT_REFUSED`` refused by the book, ``EXIT_NO_ANSWER``
        no answer within ``--timeout``.

    Raises
    ------
    ValueError
        Naming the option (``--import-limit-kw -1.0: must be >= 0``, ``--noise-cap``), or the broker or
        URL that could not be reached.
    """
    if args.site is None:
        from hashflex.profile import load_profile

        args.site = load_profile(args.profile).site_id
    topics = Topics(args.site)
    if args.action == "list":
        return _list(args, topics)
    now = datetime.now(timezone.utc)
    noise = {}
    for item in getattr(args, "noise_cap", None) or []:
        receptor, sep, value = item.partition("=")
        try:
            noise[receptor] = float(value) if sep else None
        except ValueError:
            noise[receptor] = None
        if noise[receptor] is None:
            raise ValueError(f"--noise-cap {item!r}: expected RECEPTOR=DBA, e.g. ranch_north=42")
    try:
        if args.action == "set":
            message = limits_change(args.issuer, now, reason=args.reason, import_limit_kw=args.import_limit_kw,
                                    noise_caps_dba=noise or None, carbon_budget_kg=args.carbon_budget_kg,
                                    carbon_period=args.carbon_period, valid_minutes=args.valid_minutes)
        else:
            unknown = [part for part in args.parts or [] if part not in ("import", "noise", "carbon")]
            if unknown:
                raise ValueError(f"parts {unknown}: choose from import, noise, carbon")
            message = limits_change(args.issuer, now, reason=args.reason,
                                    clear=args.parts or ["import", "noise", "carbon"])
    except ValidationError as exc:  # name the option, not pydantic's model
        raise ValueError("; ".join(_option_error(e) for e in exc.errors())) from None
    # The daemon's change_id is "<issuer>@<issued_at ISO>#<content hash>" (control.limits): the
    # issuer and the microsecond issue time single out this message's answer.
    change_id = f"{message.issuer}@{message.issued_at.isoformat()}#"
    ack_topic = f"{topics.prefix}out/limits/ack"
    received = _receive(args, ack_topic, (topics.limits, message.model_dump_json()))
    try:
        import time

        deadline = time.monotonic() + args.timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                payload = received.get(timeout=left)
            except queue.Empty:
                break
            if payload == b"":
                raise ValueError(f"broker {args.mqtt_host}:{args.mqtt_port} refused the connection")
            try:
                ack = json.loads(payload)
            except ValueError:
                continue
            if not str(ack.get("change_id", "")).startswith(change_id):
                continue  # another change's answer
            reason = str(ack["reason"])
            # The daemon's reasons start with their verdict already ("accepted: ..."): print it once.
            print(reason if reason.startswith(f"{ack['status']}:") else f"{ack['status']}: {reason}")
            print(f"change_id {ack['change_id']}, acked at {ack['acked_at']}")
            return 0 if ack["status"] == "accepted" else EXIT_REFUSED
    finally:
        _close(received)
    print(f"hashflex limits: no answer on {ack_topic} within {args.timeout:g} s (is `hashflex run` up for "
          f"site {args.site!r}?); change {change_id}...", file=sys.stderr)
    return EXIT_NO_ANSWER


def _list(args: argparse.Namespace, topics: Topics) -> int:
    if not args.from_broker:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(args.url.rstrip("/") + "/status")
        if os.environ.get("HASHFLEX_MANAGER_TOKEN"):
            request.add_header("Authorization", f"Bearer {os.environ['HASHFLEX_MANAGER_TOKEN']}")
        try:
            with urllib.request.urlopen(request, timeout=args.timeout) as response:
                print(format_limits(json.loads(response.read())))
                return 0
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ValueError(f"--url {args.url}: no status ({exc}); try --from-broker") from None
    received = _receive(args, topics.status, None)
    try:
        payload = received.get(timeout=args.timeout)
    except queue.Empty:
        print(f"hashflex limits: no retained status on {topics.prefix}out/status within {args.timeout:g} s",
              file=sys.stderr)
        return EXIT_NO_ANSWER
    finally:
        _close(received)
    if payload == b"":
        raise ValueError(f"broker {args.mqtt_host}:{args.mqtt_port} refused the connection")
    print(format_limits(json.loads(payload)))
    return 0


def format_limits(status: dict[str, Any]) -> str:
    """The limits part of a status document, as lines for a terminal.

    Parameters
    ----------
    status : dict[str, Any]
        ``/status`` or the retained ``out/status`` document.

    Returns
    -------
    str
    """
    limits = status.get("limits") or {}
    lines = [f"site {status.get('site')}, status at {status.get('at')}"]
    if limits.get("import_limit_kw") is None:
        lines.append("import limit in force: the interconnection (no other limit)")
    else:
        lines.append(f"import limit in force: {limits['import_limit_kw']:,.1f} kW ({limits['import_limit_source']})")
    for source, value in sorted((limits.get("import_limits_kw") or {}).items()):
        lines.append(f"  import limit {source}: {value:,.1f} kW")
    for cap_receptor, cap in sorted((limits.get("noise_caps_dba") or {}).items()):
        lines.append(f"  noise cap override {cap_receptor}: {cap:.1f} dB(A)")
    for period, kg in sorted((limits.get("carbon_budget_overrides_kg") or {}).items()):
        lines.append(f"  carbon budget ({period}): {kg:,.0f} kg")
    for held in limits.get("manager_limits") or []:
        until = held.get("valid_until") or "no expiry"
        lines.append(f"manager {held['issuer']}: {held['part']} (change {held['change_id']}, until {until})")
    for hold in limits.get("holds") or []:
        lines.append(f"HELD in memory (not durable): {hold['key']} {hold['limit_kw']:,.1f} kW")
    for event in limits.get("dr_events") or []:
        lines.append(f"DR {event['event_id']} ({event['status']}, {event['issuer']}): "
                     f"{event['limit_kw']} kW from {event['start']} to {event['end']}")
    return "\n".join(lines)


def add_limits_parser(commands: Any, default_profile_site: str | None = None) -> None:
    """Add ``hashflex limits set|list|clear`` to the command parser.

    Parameters
    ----------
    commands : argparse subparsers action
        From ``ArgumentParser.add_subparsers``.
    default_profile_site : str, optional
        Unused; kept for callers.
    """
    limits = commands.add_parser("limits", help="a site manager's limits: set, list, clear (over MQTT)")
    actions = limits.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default=DEFAULT_PROFILE,
                        help=f"site profile YAML or bundled name: its site id is the topic prefix (default {DEFAULT_PROFILE})")
    common.add_argument("--site", help="site id (topic prefix hashflex/<site>/), instead of --profile")
    common.add_argument("--mqtt-host", default=os.environ.get("HASHFLEX_MQTT_HOST", "127.0.0.1"))
    common.add_argument("--mqtt-port", type=int, default=int(os.environ.get("HASHFLEX_MQTT_PORT", "1883")))
    common.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    writer = argparse.ArgumentParser(add_help=False)
    writer.add_argument("--issuer", default="site_manager",
                        help="manager id, one of the profile's site.managers (default site_manager)")
    writer.add_argument("--reason", default="set from the command line", help="why (kept in the audit trail)")
    put = actions.add_parser("set", parents=[common, writer], help="set a temporary limit and print the ack")
    put.add_argument("--import-limit-kw", type=float, help="grid import limit (kW)")
    put.add_argument("--noise-cap", action="append", metavar="RECEPTOR=DBA",
                     help="noise cap override at a receptor (dB(A)); repeatable")
    put.add_argument("--carbon-budget-kg", type=float, help="carbon budget (kg CO2) for --carbon-period")
    put.add_argument("--carbon-period", choices=("day", "month"), default="day")
    put.add_argument("--valid-minutes", type=float, help="how long it holds (default: until cleared; noise caps 24 h)")
    clear = actions.add_parser("clear", parents=[common, writer], help="lift your own limits and print the ack")
    # No argparse `choices` here: with nargs="*" and nothing given, Python 3.11's argparse checks the empty
    # list against the choices and refuses the documented default (a newcomer finding); checked below.
    clear.add_argument("parts", nargs="*", metavar="{import,noise,carbon}", help="which parts (default all three)")
    listing = actions.add_parser("list", parents=[common], help="the limits in force (the daemon's /status)")
    # The daemon's port as `hashflex run` takes it (a newcomer found `list` ignoring HASHFLEX_HTTP_PORT).
    listing.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('HASHFLEX_HTTP_PORT', '9108')}",
                         help="the daemon's HTTP address (default http://127.0.0.1:$HASHFLEX_HTTP_PORT, or 9108)")
    listing.add_argument("--from-broker", action="store_true",
                         help="read the daemon's retained out/status instead (as of its last tick)")
    limits.set_defaults(handler=cmd_limits)
