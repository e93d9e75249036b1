"""Throwaway Redis servers for tests: a 3-master Redis Cluster, or one plain server.

Every server binds 127.0.0.1 on a free port, runs in a temporary directory without persistence,
and is stopped by its pid when the context exits. Plain module (no pytest): the fixtures live
in the test modules that use it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Cluster", "delete_prefix", "free_port", "redis_cluster", "redis_server"]

HOST = "127.0.0.1"
_START_TIMEOUT = 20.0  # seconds; only turns a server that never comes up into a failure
_POLL = 0.02  # seconds between readiness probes of a starting server
_BUS_OFFSET = 10000  # a cluster node also listens on its port + 10000 (the cluster bus)


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its master ports (the first one is a good seed)."""

    ports: tuple[int, ...]

    @property
    def url(self) -> str:
        """A ``redis://`` URL of the seed node."""
        return f"redis://{HOST}:{self.ports[0]}"


def _bindable(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    With ``cluster_bus`` the port 10000 above it (a cluster node's bus port) must be free too,
    and so below 55536.
    """
    while True:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if not cluster_bus:
            return port
        if port + _BUS_OFFSET <= 65535 and _bindable(port + _BUS_OFFSET):
            return port


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", HOST, "-p", str(port), *args],  # noqa: S607 (from PATH)
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout + done.stderr


def _wait_until(
    proc: subprocess.Popen[bytes], probe: str, port: int, predicate: str, directory: Path
) -> None:
    """Poll until the probe's answer contains ``predicate`` (or, with a password, NOAUTH)."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        answer = _cli(port, *probe.split())
        if predicate in answer or "NOAUTH" in answer:
            return
        time.sleep(_POLL)
    log = (directory / f"redis-{port}.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"redis on port {port} did not answer {probe!r} with {predicate!r}:\n{log}")


def _start(directory: Path, port: int, extra: Sequence[str]) -> subprocess.Popen[bytes]:
    log = (directory / f"redis-{port}.log").open("wb")
    try:
        # fmt: off
        command = [
            "redis-server",
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(directory),
            *extra,
        ]
        # fmt: on
        return subprocess.Popen(
            command,
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()  # the child holds its own descriptor


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def redis_server(*extra: str) -> Iterator[int]:
    """One plain ``redis-server`` with ``extra`` options; yields its port."""
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="payonce-redis-")))
        port = free_port()
        proc = _start(directory, port, extra)
        stack.callback(_stop, proc)
        _wait_until(proc, "PING", port, "PONG", directory)
        yield port


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[Cluster]:
    """A Redis Cluster of ``masters`` masters and no replicas, ready (``cluster_state:ok``)."""
    with ExitStack() as stack:
        directory = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="payonce-cluster-"))
        )
        ports: list[int] = []
        while len(ports) < masters:
            port = free_port(cluster_bus=True)
            if all(abs(port - other) != _BUS_OFFSET and port != other for other in ports):
                ports.append(port)
        procs = {}
        for port in ports:
            options = ("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf")
            procs[port] = _start(directory, port, options)
            stack.callback(_stop, procs[port])
        for port in ports:
            _wait_until(procs[port], "PING", port, "PONG", directory)
        created = _cli(
            ports[0],
            "--cluster", "create", *(f"{HOST}:{port}" for port in ports),
            "--cluster-replicas", "0", "--cluster-yes",
            timeout=60.0,
        )  # fmt: skip
        if "[OK] All 16384 slots covered" not in created:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created}")
        for port in ports:
            _wait_until(procs[port], "CLUSTER INFO", port, "cluster_state:ok", directory)
        yield Cluster(tuple(ports))


def delete_prefix(client: Any, prefix: str) -> int:
    """Delete every key a payonce store with ``prefix`` wrote (its hash-tagged bucket keys and
    its global keys), on a ``redis.Redis`` or a ``RedisCluster``; returns how many."""
    deleted = 0
    for pattern in (f"{{{prefix}:*", f"{prefix}:*"):
        for key in list(client.scan_iter(match=pattern, count=1000)):
            deleted += int(client.delete(key))
    return deleted
