"""A loopback TCP fault proxy, so that a real HTTP client meets real socket errors.

Each accepted connection takes the next mode from the plan (``proxy.plan(Mode.DROP_RESPONSE)``),
or the default mode once the plan is spent:

- ``PASS``: relay both ways.
- ``DROP_RESPONSE``: relay the request; when the first byte of the answer arrives (the server
  has acted), reset the client's connection and throw the answer away.
- ``BLACKHOLE``: relay the request, withhold the answer, keep the client's connection open until
  the client gives up (its timeout) or the proxy stops.
- ``RESET``: wait for the request's first bytes, then reset without forwarding anything: the
  server never sees it, the client sees a reset after it wrote.
- ``DELAY``: relay, holding the answer back for ``delay`` seconds.
- ``HOLD``: relay the request, hold the answer back until ``release()`` (the provider acted and
  its answer waits, as a call that outlives its lease).
- ``STALL``: read the request and never forward it (a worker killed on its way to the provider).
- ``RESPOND``: read the request and answer it with a canned response (``Canned``, queued by
  ``plan``), never forwarding it: answers the server cannot give, such as Stripe's 409
  ``idempotency_key_in_use``.

Each connection's log carries two events a test may wait on: ``requested`` (a whole request
arrived) and ``upstream_answered`` (the server's answer reached the proxy).

A client that keeps connections alive reuses a PASS connection for later requests; give each
faulted call a fresh client (or connection) so that the plan applies to it.

Every connection is logged (``proxy.log``) with the requests seen on it (request line and
Idempotency-Key; the Authorization header is never kept). The proxy is bounded: at most
``max_connections`` connections, each held at most ``hold_limit`` seconds, and it stops itself
after ``lifetime`` seconds. Use it as a context manager.
"""

from __future__ import annotations

import contextlib
import enum
import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType

_CHUNK = 65536
_MAX_HEAD = 65536


class Mode(enum.Enum):
    """What the proxy does with one connection."""

    PASS = "pass"  # noqa: S105 - a mode name, not a password
    DROP_RESPONSE = "drop_response"
    BLACKHOLE = "blackhole"
    RESET = "reset"
    DELAY = "delay"
    HOLD = "hold"
    STALL = "stall"
    RESPOND = "respond"


@dataclass(frozen=True, slots=True)
class Canned:
    """A response the proxy gives instead of the server's (``Mode.RESPOND``)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        head = [f"HTTP/1.1 {self.status} Canned", "Content-Type: application/json"]
        head += [f"Content-Length: {len(self.body)}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request seen on a connection: its request line and Idempotency-Key."""

    line: str
    idempotency_key: str | None


@dataclass(slots=True)
class Connection:
    """The log of one accepted connection.

    Attributes:
        number: 1 for the first accepted connection.
        mode: what the proxy did with it.
        requests: the requests the client sent on it (whether forwarded or not).
        forwarded: True once any request byte reached the upstream server.
        answered: True once any answer byte reached the client.
        done: True when the proxy closed both sides.
    """

    number: int
    mode: Mode
    requests: list[Request] = field(default_factory=list)
    forwarded: bool = False
    answered: bool = False
    done: bool = False
    canned: Canned | None = None
    requested: threading.Event = field(default_factory=threading.Event)
    upstream_answered: threading.Event = field(default_factory=threading.Event)


class _Requests:
    """Splits a client's byte stream into HTTP/1.1 requests (Content-Length bodies only)."""

    def __init__(self, into: list[Request]) -> None:
        self._buffer = b""
        self._body_left = 0
        self._into = into

    @property
    def complete(self) -> bool:
        """True once at least one request arrived whole (head and body)."""
        return bool(self._into) and not self._body_left

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._body_left:
                taken = min(self._body_left, len(self._buffer))
                self._body_left -= taken
                self._buffer = self._buffer[taken:]
                if self._body_left:
                    return
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = self._buffer[-_MAX_HEAD:]
                return
            head = self._buffer[:end].decode("latin-1").split("\r\n")
            self._buffer = self._buffer[end + 4 :]
            fields = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            self._into.append(Request(head[0], fields.get("idempotency-key")))
            self._body_left = int(fields.get("content-length", "0") or 0)


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: the peer sees 'connection reset'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """A fault-injecting TCP proxy on 127.0.0.1 in front of ``upstream``.

    Args:
        upstream: ``(host, port)`` of the real server (loopback).
        default: the mode of connections beyond the plan.
        delay: how long ``DELAY`` holds an answer back, in seconds.
        max_connections: connections accepted in total; later ones are reset at once.
        hold_limit: the longest any one connection is kept, in seconds.
        lifetime: the proxy stops itself after this many seconds.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        default: Mode = Mode.PASS,
        delay: float = 0.5,
        max_connections: int = 256,
        hold_limit: float = 15.0,
        lifetime: float = 120.0,
    ) -> None:
        self._upstream = upstream
        self._default = default
        self._delay = delay
        self._max = max_connections
        self._hold = hold_limit
        self._lifetime = lifetime
        self._plan: deque[Mode | Canned] = deque()
        self._released = threading.Event()
        self._log: list[Connection] = []
        self._lock = threading.Lock()
        self._accepted = threading.Condition(self._lock)
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the proxy."""
        return f"http://127.0.0.1:{self.port}"

    def plan(self, *modes: Mode | Canned) -> None:
        """Queue ``modes`` for the next accepted connections, in order (a ``Canned`` response
        stands for ``Mode.RESPOND`` with it)."""
        with self._lock:
            self._plan.extend(modes)

    def set_default(self, mode: Mode) -> None:
        """Give connections accepted from now on, beyond the plan, ``mode``."""
        with self._lock:
            self._default = mode

    def connection(self, number: int, *, timeout: float) -> Connection:
        """The log of the ``number``-th accepted connection, waiting up to ``timeout`` seconds
        for it to arrive.

        Raises:
            TimeoutError: no such connection arrived in time.
        """
        with self._accepted:
            if not self._accepted.wait_for(lambda: len(self._log) >= number, timeout):
                raise TimeoutError(f"connection {number} never arrived")
            return self._log[number - 1]

    def release(self) -> None:
        """Let every answer ``HOLD`` keeps back (now or later) go to its client."""
        self._released.set()

    @property
    def log(self) -> list[Connection]:
        """A snapshot of the connection log, oldest first."""
        with self._lock:
            return list(self._log)

    def start(self) -> FaultProxy:
        thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop accepting, release every held connection and join the threads (bounded)."""
        self._stopped.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _accept(self) -> None:
        deadline = time.monotonic() + self._lifetime
        while not self._stopped.is_set():
            if time.monotonic() > deadline:
                self._stopped.set()
                break
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with self._lock:
                if len(self._log) >= self._max:
                    _reset(client)
                    continue
                planned = self._plan.popleft() if self._plan else self._default
                canned = planned if isinstance(planned, Canned) else None
                mode = Mode.RESPOND if canned is not None else planned
                assert isinstance(mode, Mode)
                record = Connection(number=len(self._log) + 1, mode=mode, canned=canned)
                self._log.append(record)
                self._accepted.notify_all()
            worker = threading.Thread(
                target=self._serve, args=(client, record), name="fault-proxy-conn", daemon=True
            )
            worker.start()
            self._threads.append(worker)

    def _serve(self, client: socket.socket, record: Connection) -> None:
        parser = _Requests(record.requests)
        upstream: socket.socket | None = None
        try:
            if record.mode is Mode.RESET:
                client.settimeout(self._hold)
                with contextlib.suppress(OSError):
                    data = client.recv(_CHUNK)
                    parser.feed(data)
                return
            if record.mode in (Mode.STALL, Mode.RESPOND):
                self._read_request(client, record, parser)
                if record.mode is Mode.RESPOND and record.canned is not None:
                    client.sendall(record.canned.encode())
                    record.answered = True
                    return
                client.settimeout(self._hold)
                while not self._stopped.is_set() and client.recv(_CHUNK):
                    pass  # stalled: never forwarded, until the client goes away
                return
            upstream = socket.create_connection(self._upstream, timeout=5)
            self._relay(client, upstream, record, parser)
        except OSError:
            pass
        finally:
            if record.mode in (Mode.RESET, Mode.DROP_RESPONSE):
                _reset(client)
            else:
                with contextlib.suppress(OSError):
                    client.close()
            if upstream is not None:
                with contextlib.suppress(OSError):
                    upstream.close()
            record.done = True

    def _read_request(self, client: socket.socket, record: Connection, parser: _Requests) -> None:
        client.settimeout(self._hold)
        while not parser.complete:
            data = client.recv(_CHUNK)
            if not data:
                return
            parser.feed(data)
        record.requested.set()

    def _relay(
        self,
        client: socket.socket,
        upstream: socket.socket,
        record: Connection,
        parser: _Requests,
    ) -> None:
        mode = record.mode
        until = time.monotonic() + self._hold
        held = b""
        release_at: float | None = None
        released = False
        upstream_closed = False
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, "client")
            selector.register(upstream, selectors.EVENT_READ, "upstream")
            while not self._stopped.is_set() and time.monotonic() < until:
                if mode is Mode.HOLD and held and self._released.is_set():
                    client.sendall(held)
                    record.answered = True
                    held = b""
                    if upstream_closed:
                        return
                if release_at is not None and time.monotonic() >= release_at:
                    client.sendall(held)
                    record.answered = True
                    held, release_at, released = b"", None, True
                for selected, _ in selector.select(timeout=0.05):
                    sock = selected.fileobj
                    assert isinstance(sock, socket.socket)
                    data = sock.recv(_CHUNK)
                    if selected.data == "client":
                        if not data:
                            return  # the client closed (or gave up waiting)
                        parser.feed(data)
                        upstream.sendall(data)
                        record.forwarded = True
                        if parser.complete:
                            record.requested.set()
                        continue
                    if not data:
                        if mode is Mode.BLACKHOLE or (mode is Mode.HOLD and held):
                            selector.unregister(upstream)
                            upstream_closed = True
                            continue
                        if held and release_at is not None:
                            self._stopped.wait(max(0.0, release_at - time.monotonic()))
                            client.sendall(held)
                        return
                    record.upstream_answered.set()
                    if mode is Mode.DROP_RESPONSE:
                        return  # the server acted; the client gets a reset, not the answer
                    if mode is Mode.HOLD and not self._released.is_set():
                        held += data
                        continue
                    if mode is Mode.BLACKHOLE:
                        continue
                    if mode is Mode.DELAY and not released:
                        held += data
                        if release_at is None:
                            release_at = time.monotonic() + self._delay
                        continue
                    client.sendall(data)
                    record.answered = True
