"""Free ports and polling with a deadline: the one copy every launcher and test uses."""

import random
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

_handed_out: set[int] = set()


def free_port(*, and_offset: int = 0) -> int:
    """A port nothing listens on, below the kernel's ephemeral range, never handed out twice.

    Servers here restart on the port they were given (NATS nodes, PostgreSQL, gunicorn): a
    port from the ephemeral range could meanwhile become the local end of some outgoing
    connection, and the restart would fail with "address already in use".
    `and_offset`: port + and_offset must be free and below that range too (a Redis Cluster
    node's bus listens on its port + 10000).
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(500):
        port = random.randint(10000, max(low - and_offset, 10001) - 1)  # noqa: S311 (not a secret)
        wanted = {port, port + and_offset}
        if wanted & _handed_out or not all(_bindable(p) for p in wanted):
            continue
        _handed_out.update(wanted)
        return port
    raise RuntimeError(f"no free port between 10000 and {low}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 (what the servers may bind)
        except OSError:
            return False
    return True


def wait_until(predicate, *, timeout: float = 30.0, what: str = "condition", interval: float = 0.05, ignore=()):
    """Poll until `predicate()` is truthy and return it; TimeoutError naming `what` after `timeout` s.

    `ignore`: exception types that mean "not yet" (a server still starting answers with errors).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET, as a kubelet probe sees it (None: nothing answered)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback probes)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None
