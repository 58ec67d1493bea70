"""Redis Streams publishing from Django's sync world, and the transport's entry point.

`RedisTransport.publish` is called after commit from request threads, management commands
and handler threads. It never blocks on the network: the batch joins a queue that one
sender thread per process (recreated after fork) drains, pipelining each burst of PUBLISH
scripts (de-duplication key + XADD, scripts.py).

A publish is not confirmed by Redis's reply alone: with `appendfsync everysec` a server
crash or a failover to a replica can lose the last second or so of acknowledged writes.
So the outbox rows of a burst are marked published only once REDIS_CONFIRM_DELAY has
passed and the server still has the `run_id` it had at the publish (a restart or a
failover changes it). Otherwise they stay pending and the relay sends them again; the
de-duplication key, written in the same script as the entry, drops any copy that did
survive. AtMostOnce messages go on pub/sub, fire and forget, and count as sent.
"""

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence

import redis.cluster
from django.db import connections
from redis.exceptions import RedisError

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.messages import QoS
from apps.mediator.core.ports import Outgoing, Transport
from apps.mediator.storage import history
from apps.mediator.storage.hygiene import hygiene
from apps.mediator.transports.redis import connection, entries, scripts, stats, topology

logger = logging.getLogger("catga.redis")

CONSUMER_PENDING_TIMEOUT = 1.0  # seconds the dashboard waits for Redis before showing "n/a"


class RedisTransport(Transport):
    label = "Redis"

    @property
    def url(self) -> str:
        return connection.redacted(catga_settings.REDIS_URL)

    def __init__(self, dispatcher):
        super().__init__(dispatcher)
        connection.check_settings()
        self._lock = threading.Condition()
        self._pid: int | None = None
        self._client = None
        self._quick = None  # for the web's probes and dashboard: short socket timeouts
        self._publish_script = None
        self._provisioned = False
        self._queue: list[Outgoing] = []
        self._sending = 0  # handed to the sender, not yet sent (close() waits for them)
        # (due, run_id, ids): sent, waiting for REDIS_CONFIRM_DELAY before they count as published.
        self._unconfirmed: collections.deque = collections.deque()
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- wiring --------------------------------------------------------------

    def _ensure_sender(self) -> None:
        """This process's sender thread (recreated after fork: neither threads nor sockets are shared)."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._provisioned, self._client, self._quick = os.getpid(), False, None, None
                self._queue, self._unconfirmed, self._sending = [], collections.deque(), 0
                self._thread = threading.Thread(target=self._sender, daemon=True, name="catga-redis-publisher")
                self._thread.start()

    def client(self):
        """The threaded client, made on first use (by the sender thread, not a request)."""
        self._ensure_sender()
        with self._lock:
            if self._client is None:
                self._client = connection.make_client(sync=True)
                self._publish_script = self._client.register_script(scripts.PUBLISH)
            return self._client

    def quick(self):
        """A client with short timeouts, for the web's probes and dashboard."""
        self._ensure_sender()
        with self._lock:
            if self._quick is None:
                self._quick = connection.make_client(
                    sync=True, socket_timeout=CONSUMER_PENDING_TIMEOUT, socket_connect_timeout=CONSUMER_PENDING_TIMEOUT
                )
            return self._quick

    def _provision(self, client) -> None:
        if not self._provisioned:
            topology.ensure_topology_sync(client, self.registry)
            self._provisioned = True

    def connect_in_background(self) -> None:
        self._ensure_sender()

    # -- publishing ----------------------------------------------------------

    def publish(self, batch: Sequence[Outgoing]) -> None:
        now = time.time()
        due = [item for item in batch if item.envelope.not_before is None or item.envelope.not_before <= now]
        if not due:
            return  # scheduled: the relay publishes it when it is due
        self._ensure_sender()
        with self._lock:
            self._queue.extend(due)
            self._sending += len(due)
            self._lock.notify_all()

    def _sender(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            with self._lock:
                while not self._queue:
                    if self._unconfirmed:
                        wait = self._unconfirmed[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                    elif self._closing:
                        connections.close_all()  # this thread's, the one that marked rows published
                        return
                    else:
                        wait = None
                    self._lock.wait(wait)
                batch, self._queue = self._queue, []
            if batch:
                try:
                    sent = self.send(batch)
                except Exception as exc:  # the rows stay pending: the relay publishes them
                    logger.warning(
                        "publishing %d message(s) to Redis failed (%r); the relay will retry", len(batch), exc
                    )
                else:
                    self._confirm_later(*sent)
                finally:
                    with self._lock:
                        self._sending -= len(batch)
                        self._lock.notify_all()
            self._confirm_due(time.monotonic())

    def send(self, batch: Sequence[Outgoing]) -> tuple[str, list[str], list[str]]:
        """Publish now; returns the server's run_id, the ids stored (or already stored) and those fired."""
        client = self.client()
        self._provision(client)
        run_id = self._run_id(client)
        window = int(catga_settings.DUPLICATE_WINDOW)
        max_age = int(catga_settings.STREAM_MAX_AGE * 1000)
        maxlen = int(catga_settings.REDIS_STREAM_MAXLEN)
        durable = [item for item in batch if item.envelope.qos is not QoS.AT_MOST_ONCE]
        once = [item for item in batch if item.envelope.qos is QoS.AT_MOST_ONCE]
        cluster = isinstance(client, redis.cluster.RedisCluster)
        # A cluster pipeline refuses scripts: there each publish is its own round trip.
        target = client if cluster else client.pipeline(transaction=False)
        results = []
        for item in durable:
            keys = [entries.stream_of(item), entries.dedupe_of(item)]
            results.append(
                _call(
                    self._publish_script,
                    keys=keys,
                    args=[window, max_age, maxlen, *entries.fields_of(item)],
                    client=target,
                )
            )
        for item in once:
            channel = topology.at_most_once_channel(entries.subject_of(item))
            results.append(_call(target.publish, channel, entries.payload(item)))
        if not cluster:
            results = target.execute(raise_on_error=False)
        stored, fired = [], []
        for item, result in zip(durable, results, strict=False):
            if isinstance(result, Exception):
                logger.warning("publish of %s failed: %r", item.envelope.id, result)
            else:
                stored.append(item.envelope.id)  # 1 added, 0 a duplicate: either way Redis has it
        for item, result in zip(once, results[len(durable) :], strict=False):
            if not isinstance(result, Exception):
                fired.append(item.envelope.id)
        return run_id, stored, fired

    @staticmethod
    def _run_id(client) -> str:
        """The server's run_id; on a cluster every primary's, so a failover anywhere shows."""
        if isinstance(client, redis.cluster.RedisCluster):
            answers = client.info("server", target_nodes=redis.cluster.RedisCluster.PRIMARIES)
            infos = [answers] if "run_id" in answers else [v for v in answers.values() if isinstance(v, dict)]
            return ",".join(sorted(str(info["run_id"]) for info in infos))
        return str(client.info("server")["run_id"])

    def _confirm_later(self, run_id: str, stored: list[str], fired: list[str]) -> None:
        if fired:
            self._mark(fired)
        if stored:
            with self._lock:
                self._unconfirmed.append((time.monotonic() + catga_settings.REDIS_CONFIRM_DELAY, run_id, stored))

    def _confirm_due(self, now: float) -> None:
        due = []
        with self._lock:
            while self._unconfirmed and self._unconfirmed[0][0] <= now:
                due.append(self._unconfirmed.popleft())
        if not due:
            return
        confirmed = self._confirmed(due)
        if confirmed:
            self._mark(confirmed)
        with self._lock:
            self._lock.notify_all()  # close() waits for the last confirmations

    def _confirmed(self, sent: list[tuple[float, str, list[str]]]) -> list[str]:
        """The ids of bursts the server still has since their publish (same run_id)."""
        try:
            run_id = self._run_id(self.client())
        except (RedisError, OSError) as exc:
            logger.warning(
                "cannot confirm %d publish(es) with Redis (%r); the relay will send them again", len(sent), exc
            )
            return []
        ids = []
        for _, then, burst in sent:
            if then == run_id:
                ids += burst
            else:
                logger.warning(
                    "Redis restarted or failed over after %d publish(es); they stay in the outbox for the relay",
                    len(burst),
                )
        return ids

    @staticmethod
    def _mark(ids: list[str]) -> None:
        try:
            hygiene()
            history.mark_published(ids)
        except Exception:  # PostgreSQL down: the rows stay pending, the relay re-sends (de-duplicated)
            logger.warning("could not mark %d message(s) published", len(ids), exc_info=True)

    def publish_blocking(self, batch: Sequence[Outgoing]) -> list[str]:
        """For the outbox relay: publish, then wait out REDIS_CONFIRM_DELAY and return what the server kept."""
        run_id, stored, fired = self.send(batch)
        if stored:
            time.sleep(catga_settings.REDIS_CONFIRM_DELAY)
            stored = self._confirmed([(0.0, run_id, stored)])
        return stored + fired

    # -- reading -------------------------------------------------------------

    def probe(self, timeout: float) -> list[str]:
        """Readiness of this process's publisher: what is wrong (connection, groups), [] when nothing."""
        try:
            quick = self.quick()
            quick.ping()
            self._provisioned = False  # a Redis that lost its data gets its groups back
            self._provision(quick)
        except (RedisError, OSError) as exc:
            return [f"Redis unreachable: {exc}"]
        return []

    def consumer_pending(self, timeout: float = CONSUMER_PENDING_TIMEOUT) -> dict[str, int]:
        """Entries not yet delivered per consumer group (the dashboard); {} when Redis does not answer."""
        try:
            found = stats.snapshot_sync(self.quick(), topology.durables(self.registry, self.registry.contexts))
        except (RedisError, OSError) as exc:
            logger.info("consumer pending counts unavailable: %r", exc)
            return {}
        # An event group reads one stream per context it hears from: its lag is their sum.
        pending: dict[str, int] = {}
        for lag in found.consumers:
            pending[lag.name] = pending.get(lag.name, 0) + lag.pending
        return pending

    async def backlog(self):
        """Every stream and group of the app, on a connection of its own (catga_status)."""
        client = await connection.connect(attempts=1)
        try:
            return await stats.snapshot(client, topology.durables(self.registry, self.registry.contexts))
        finally:
            await connection.close_quietly(client)

    async def open_receiver(self, contexts, name: str):
        from apps.mediator.transports.redis.subscription import RedisReceiver

        return await RedisReceiver.open(self, contexts, name)

    def close(self) -> None:
        if self._pid != os.getpid():
            return
        # Let publishes handed over just before exit be sent and confirmed (the relay would catch up, later).
        deadline = time.monotonic() + catga_settings.PUBLISH_TIMEOUT + catga_settings.REDIS_CONFIRM_DELAY
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            while (self._sending or self._unconfirmed) and time.monotonic() < deadline:
                self._lock.wait(0.05)
        self._thread.join(max(0.1, deadline - time.monotonic()))
        for client in (self._client, self._quick):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()


def _call(function, *args, **kwargs):
    """The result, or the exception as a result (what a pipeline's execute(raise_on_error=False) gives)."""
    try:
        return function(*args, **kwargs)
    except RedisError as exc:
        return exc
