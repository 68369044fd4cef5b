"""Serving a simulated fleet on loopback: one asyncio loop on a background thread owns the servers
(:class:`_AsyncServers`), a cgminer-style JSON API connection (:class:`_CgminerProtocol`: one request
per connection, NUL-terminated answer), a minimal HTTP/1.1 connection (:class:`_HttpProtocol`) and the
base of the served fleets (:class:`_ServedFleet`: ``start``/``stop``/context manager). Shared by the
VNish, stock Antminer and Whatsminer simulators. SIMULATED. Moved out of :mod:`hashflex.sim.firmware`.
"""

from __future__ import annotations

import abc
import asyncio
import json
import threading
from typing import Any, Callable

from hashflex.sim.miner_model import _Fleet

__all__: list[str] = []

_MAX_REQUEST_BYTES = 1_000_000


class _AsyncServers:
    """An asyncio loop on a background thread that owns the servers of one simulated fleet."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.servers: list[asyncio.AbstractServer] = []

    def start(self, opener: Callable[[], Any]) -> None:
        ready = threading.Event()
        errors: list[BaseException] = []
        self.loop = asyncio.new_event_loop()

        def run() -> None:
            assert self.loop is not None
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(opener())
            except BaseException as exc:  # noqa: BLE001 - reported to the caller of start()
                errors.append(exc)
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name=self.name, daemon=True)
        self.thread.start()
        if not ready.wait(30):
            raise RuntimeError(f"{self.name} did not start")
        if errors:
            self.stop()
            raise errors[0]

    async def listen(self, factory: Callable[[], asyncio.Protocol], host: str, port: int) -> int:
        server = await asyncio.get_running_loop().create_server(factory, host, port, reuse_address=True)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self.loop is None:
            return

        async def close() -> None:
            for server in self.servers:
                server.close()
            await asyncio.sleep(0.02)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(10)
        self.loop.close()
        self.loop = None


class _CgminerProtocol(asyncio.Protocol):
    """One cgminer-API connection: read one JSON request, answer with a NUL-terminated JSON, close."""

    def __init__(self, handler: Callable[[str, str], dict[str, Any]],
                 raw_handler: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.handler, self.raw_handler = handler, raw_handler
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _MAX_REQUEST_BYTES:
            self._reply({"STATUS": [{"STATUS": "E", "Code": 23, "Msg": "Request too large"}]})
            return
        try:
            request = json.loads(self.buf.decode("utf-8").strip("\0 \r\n"))
        except (ValueError, UnicodeDecodeError):
            return  # not complete yet
        if isinstance(request, dict) and "enc" in request and self.raw_handler is not None:
            self._reply(self.raw_handler(request))  # an encrypted (privileged) request
            return
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            self._reply({"STATUS": [{"STATUS": "E", "Code": 23, "Msg": "Invalid JSON"}]})
            return
        command = request["command"]
        parameter = str(request.get("parameter", ""))
        if "+" in command:
            body: dict[str, Any] = {c: [self.handler(c, parameter)] for c in dict.fromkeys(command.split("+"))}
            body["id"] = 1
            self._reply(body)
        else:
            self._reply(self.handler(command, parameter))

    def _reply(self, body: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(body).encode() + b"\0")
        self.transport.close()


class _HttpProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 server connection: one request with Content-Length, answer, close."""

    def __init__(self, handler: Callable[[str, str, dict[str, str], bytes], tuple[int, Any, dict[str, str]]]) -> None:
        self.handler = handler
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _MAX_REQUEST_BYTES:
            self._send(413, {"error": "request too large"}, {})
            return
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            self._send(400, {"error": "bad request line"}, {})
            return
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0") or 0)
        if len(rest) < length:
            return
        status, body, extra = self.handler(method, target.split("?", 1)[0], headers, rest[:length])
        self._send(status, body, extra)

    def _send(self, status: int, body: Any, extra: dict[str, str]) -> None:
        assert self.transport is not None
        if isinstance(body, str):
            payload, ctype = body.encode(), "text/html; charset=utf-8"
        else:
            payload, ctype = json.dumps(body).encode(), "application/json"
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Too Large",
                  503: "Service Unavailable"}.get(status, "Error")
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}", f"Content-Length: {len(payload)}",
                "Connection: close"] + [f"{k}: {v}" for k, v in extra.items()]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        self.transport.close()


class _ServedFleet(_Fleet, abc.ABC):
    """A simulated fleet served on loopback by ``self._servers`` (an :class:`_AsyncServers`):
    ``start()`` opens the sockets (each family its own), ``stop()`` and the context manager close them."""

    _servers: _AsyncServers

    @abc.abstractmethod
    def start(self) -> Any:
        """Open this family's listening sockets and return self."""

    def stop(self) -> None:
        self._servers.stop()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

