"""The Stripe-compatible test server: stripe-stateful-mock, pinned by the project's package-lock.

``with stripe_mock() as mock: mock.url`` installs the pinned package (``npm ci``, skipped while
``node_modules`` was installed from the same lockfile), starts ``tests/stripe_mock/launcher.js``
on a free loopback port, waits until it accepts connections and stops it by pid at the end.
Missing ``node`` or ``npm`` is an error, never a skip: the Stripe scenarios must run in CI.

The mock keeps all state in memory for its lifetime: tests sharing one server use their own
references (and so their own provider keys).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "tests" / "stripe_mock" / "launcher.js"
PACKAGE = "stripe-stateful-mock"
_STAMP = ".payonce-lock.sha256"  # inside node_modules: npm ci wipes it with everything else
_READY_WITHIN = 20.0  # seconds for node to start listening
_INSTALL_WITHIN = 300.0  # seconds for npm ci on a cold cache


class StripeMockError(RuntimeError):
    """The Stripe-compatible server could not be installed or started."""


@dataclass(frozen=True, slots=True)
class StripeMock:
    """A running stripe-stateful-mock.

    Attributes:
        port: its loopback port.
        pid: the node process, stopped by this pid at the end.
    """

    port: int
    pid: int

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """The base address for ``StripeClient(base_addresses={"api": url})``."""
        return f"http://127.0.0.1:{self.port}"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StripeMockError(
            f"{name} is not installed; the Stripe-compatible test server needs Node.js and npm "
            "(Debian: apt-get install nodejs npm)"
        )
    return path


def ensure_installed(repo: Path = REPO) -> Path:
    """Run ``npm ci`` unless ``node_modules`` already matches ``package-lock.json``.

    A stamp of the lockfile's SHA-256 inside ``node_modules`` records what was installed; a
    file lock serialises concurrent test sessions on the same tree. Returns the package's
    directory.

    Raises:
        StripeMockError: npm is missing or ``npm ci`` failed.
    """
    npm = _tool("npm")
    lock = repo / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    modules = repo / "node_modules"
    installed = modules / PACKAGE / "package.json"
    stamp = modules / _STAMP
    tag = hashlib.sha256(str(repo).encode()).hexdigest()[:16]
    guard = Path(tempfile.gettempdir()) / f"payonce-npm-{tag}.lock"
    with guard.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if installed.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
            return installed.parent
        done = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=_INSTALL_WITHIN,
            check=False,
        )
        if done.returncode != 0 or not installed.is_file():
            raise StripeMockError(
                f"npm ci failed (exit {done.returncode}) in {repo}:\n{done.stderr[-4000:]}"
            )
        stamp.write_text(digest + "\n")
    return installed.parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read()[-4000:].decode("utf-8", "replace")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextlib.contextmanager
def stripe_mock(*, ready_within: float = _READY_WITHIN) -> Iterator[StripeMock]:
    """Install (if needed), start and finally stop a stripe-stateful-mock on loopback.

    Raises:
        StripeMockError: node/npm missing, install failed, or the server never listened.
    """
    node = _tool("node")
    ensure_installed()
    env = {**os.environ, "LOG_LEVEL": os.environ.get("STRIPE_MOCK_LOG_LEVEL", "silent")}
    last = ""
    for _ in range(3):  # a free port can be taken between our probe and node's bind
        port = _free_port()
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(
                [node, str(LAUNCHER), str(port)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                # Readiness poll of a child process, bounded; no test timing depends on it.
                deadline = time.monotonic() + ready_within
                while proc.poll() is None and not _accepts(port):
                    if time.monotonic() > deadline:
                        raise StripeMockError(
                            f"stripe-stateful-mock did not listen on 127.0.0.1:{port} within "
                            f"{ready_within:.0f} s:\n{_tail(log)}"
                        )
                    time.sleep(0.05)
                if proc.poll() is None:
                    yield StripeMock(port=port, pid=proc.pid)
                    return
                last = _tail(log)
            finally:
                _stop(proc)
    raise StripeMockError(f"stripe-stateful-mock exited at start:\n{last}")
