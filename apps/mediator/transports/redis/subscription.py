"""The receiving side of the Redis transport: consumer groups and their settlement.

The worker asks a `RedisSubscription` for deliveries and settles each `RedisDelivery`:
ack → XACK, retry(delay) → XACK + the entry into the stream's retry set at its due time,
touch → XCLAIM of its own entry (the idle time starts again), dead(reason) → XACK + the
entry with the reason on the context's dead-letter stream, release → the entry made to
look idle, so the next reclaim of any replica takes it. Each settling step is one script.

A fetch takes, in order: entries another replica left idle longer than ACK_WAIT (a
consumer that died: XAUTOCLAIM), then new ones (XREADGROUP, never more than the free
slots asked for). Due retries are moved back into their stream by whichever replica
fetches first. At-most-once messages arrive on pub/sub: every replica hears each one, so
one claim key per message and subscribing context lets a single replica handle it.
"""

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.ports import Backlog, OnceHandler, Receiver
from apps.mediator.transports.redis import connection, entries, scripts, stats, topology

logger = logging.getLogger("catga.redis")

# The dead-letter headers of the wire format (the same names as on NATS, docs/wire-format.md).
H_DEAD_REASON = "Catga-Dead-Reason"
H_DEAD_SUBJECT = "Catga-Original-Subject"
H_DEAD_CONSUMER = "Catga-Dead-Consumer"
H_DEAD_AT = "Catga-Dead-At"
RETRY_POLL = 0.25  # longest blocking read, so a retry that falls due is moved back promptly
MOVE_BATCH = 200  # due retries moved per script call
CLAIM_TTL = 300  # seconds an at-most-once claim is kept (longer than any re-send of one message)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisDelivery:
    __slots__ = ("_sub", "attempt", "body", "fields", "headers", "id", "stream", "subject")

    def __init__(self, sub: "RedisSubscription", stream: str, entry_id: str, fields: dict, attempt: int):
        self._sub, self.stream, self.id, self.fields, self.attempt = sub, stream, entry_id, fields, attempt
        self.headers, self.body, self.subject = entries.parse(fields)

    async def ack(self) -> None:
        await self._sub.client.xack(self.stream, self._sub.name, self.id)

    async def retry(self, delay: float) -> None:
        kept = {k: v for k, v in self.fields.items() if k not in (b"g", b"a", b"o")}
        member = scripts.netstrings(
            [*entries.flat(kept), b"g", self._sub.name.encode(), b"a", b"%d" % self.attempt, b"o", self._origin()]
        )
        keys = [self.stream, topology.retry_key(self.stream)]
        await self._sub.scripts["retry"](keys=keys, args=[self._sub.name, self.id, max(0, int(delay * 1000)), member])
        self._sub.due_in(delay)

    async def touch(self) -> None:
        await self._sub.scripts["claim_own"](keys=[self.stream], args=[self._sub.name, self._sub.consumer, self.id])

    async def release(self) -> None:
        idle = int(catga_settings.ACK_WAIT * 1000) + 1
        args = [self._sub.name, self._sub.consumer, self.id, idle]
        await self._sub.scripts["claim_own"](keys=[self.stream], args=args)

    async def dead(self, reason: str) -> None:
        dead = {
            **self.fields,
            entries.HEADER + H_DEAD_REASON.encode(): reason[:1000].encode(),
            entries.HEADER + H_DEAD_SUBJECT.encode(): self.subject.encode(),
            entries.HEADER + H_DEAD_CONSUMER.encode(): self._sub.name.encode(),
            entries.HEADER + H_DEAD_AT.encode(): repr(time.time()).encode(),
            b"o": self._origin(),
        }
        keys = [self.stream, topology.dlq_key(self.stream)]
        age, length = int(catga_settings.DLQ_MAX_AGE * 1000), max(1000, catga_settings.DLQ_MAX_BYTES // 4096)
        await self._sub.scripts["dead"](keys=keys, args=[self._sub.name, self.id, age, length, *entries.flat(dead)])

    def _origin(self) -> bytes:
        return self.fields.get(b"o") or f"{self.stream}/{self.id}".encode()


class OnceDelivery:
    """An at-most-once message: never acknowledged nor redelivered, so settling it does nothing."""

    __slots__ = ("attempt", "body", "headers", "subject")

    def __init__(self, fields: dict):
        self.headers, self.body, self.subject = entries.parse(fields)
        self.attempt = 1

    async def ack(self) -> None:
        pass

    async def retry(self, delay: float) -> None:
        pass

    async def touch(self) -> None:
        pass

    async def release(self) -> None:
        pass

    async def dead(self, reason: str) -> None:
        logger.warning("at-most-once %s not handled: %s", entries.message_id(self.headers), reason)


class RedisSubscription:
    def __init__(self, receiver: "RedisReceiver", durable: topology.Durable):
        self.durable, self.name, self.context, self.queue = durable, durable.name, durable.context, durable.queue
        self._receiver = receiver
        self.client, self.consumer, self.scripts = receiver.client, receiver.consumer, receiver.scripts
        self._buffer: list[RedisDelivery] = []  # read beyond what a fetch asked for: handed out first
        self._cursor = dict.fromkeys(durable.streams, "0-0")
        self._next_claim = 0.0
        self._next_move = 0.0
        self.delivered = 0  # deliveries handed to the worker, reclaimed ones included

    def due_in(self, delay: float) -> None:
        self._next_move = min(self._next_move, time.monotonic() + delay)

    async def fetch(self, most: int, timeout: float, spawn) -> None:
        """Up to `most` deliveries: reclaimed and new ones at once, else a blocking read of up to `timeout`."""
        out, self._buffer = self._buffer[:most], self._buffer[most:]
        deadline = time.monotonic() + timeout
        try:
            first = True
            while len(out) < most:
                now = time.monotonic()
                if now >= self._next_move:
                    await self._move_due(now)
                if now >= self._next_claim:
                    self._next_claim = now + max(0.2, catga_settings.ACK_WAIT / 4)
                    out += await self._reclaim(most - len(out))
                if first and len(out) < most:
                    out += await self._read(most - len(out), None)
                first = False
                if out or now >= deadline:
                    break
                block = min(deadline - now, RETRY_POLL, max(0.001, self._next_move - now))
                out += await self._read(most, block)
                if out:
                    break
        except (RedisError, OSError):
            self._receiver.ok = False
            raise
        finally:
            if len(out) > most:
                self._buffer, out = out[most:] + self._buffer, out[:most]
            if out:
                spawn(out)
        self._receiver.ok = True

    async def _read(self, count: int, block: float | None) -> list[RedisDelivery]:
        streams = self.durable.streams
        block_ms = None if block is None else max(1, int(block * 1000))
        try:
            if not self._receiver.cluster or len(streams) == 1:
                reply = await self.client.xreadgroup(
                    self.name, self.consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
                )
            else:  # a cluster refuses keys of several slots in one read: one stream at a time
                reply = []
                for stream in streams:
                    part = None if block_ms is None else max(1, block_ms // len(streams))
                    reply += await self.client.xreadgroup(
                        self.name, self.consumer, {stream: ">"}, count=count, block=part
                    )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the groups (a restart without its data, a FLUSHALL): make them again.
            logger.warning("consumer group %s is gone from Redis; creating it again", self.name)
            for stream in streams:
                await topology.ensure_group(self.client, stream, self.name)
            return []
        found = []
        for stream, items in reply or []:
            for entry_id, fields in items:
                found.append((_text(stream), _text(entry_id), fields, 1))
        return await self._accept(found)

    async def _reclaim(self, count: int) -> list[RedisDelivery]:
        """Entries idle longer than ACK_WAIT: their consumer died, or released them at shutdown."""
        found = []
        idle = int(catga_settings.ACK_WAIT * 1000)
        for stream in self.durable.streams:
            try:
                reply = await self.client.xautoclaim(
                    stream, self.name, self.consumer, idle, start_id=self._cursor[stream], count=count
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    continue  # the next read makes the group again
                raise
            self._cursor[stream] = _text(reply[0])
            for entry_id, fields in reply[1]:
                entry_id = _text(entry_id)
                pending = await self.client.xpending_range(stream, self.name, entry_id, entry_id, 1)
                times = int(pending[0]["times_delivered"]) if pending else 2
                found.append((stream, entry_id, fields, times))
        return await self._accept(found)

    async def _accept(self, found) -> list[RedisDelivery]:
        """Deliveries of what this group handles; the rest is acknowledged unread (a JetStream
        filter would never have delivered it): other types on an event stream, another group's
        retried entry, an entry trimmed away while pending."""
        accepted, skipped = [], {}
        for stream, entry_id, fields, times in found:
            group = fields.get(b"g") if fields else None
            if not fields or (group and group.decode() != self.name):
                skipped.setdefault(stream, []).append(entry_id)
                continue
            if not self.durable.wants(fields.get(b"s", b"").decode(errors="replace")):
                skipped.setdefault(stream, []).append(entry_id)
                continue
            before = int(fields.get(b"a", b"0") or 0)
            accepted.append(RedisDelivery(self, stream, entry_id, fields, before + times))
        self.delivered += len(accepted)
        for stream, ids in skipped.items():
            await self.client.xack(stream, self.name, *ids)
        return accepted

    async def _move_due(self, now: float) -> None:
        soonest = 1.0
        max_age = int(catga_settings.STREAM_MAX_AGE * 1000)
        for stream in self.durable.streams:
            moved, next_ms = await self.scripts["move_due"](
                keys=[stream, topology.retry_key(stream)], args=[MOVE_BATCH, max_age]
            )
            if int(moved) == MOVE_BATCH:
                soonest = 0.0
            elif int(next_ms) >= 0:
                soonest = min(soonest, int(next_ms) / 1000)
        self._next_move = now + soonest

    async def close(self) -> None:
        for delivery in self._buffer:
            with contextlib.suppress(RedisError, OSError):
                await delivery.release()
        self._buffer = []
        for stream in self.durable.streams:
            with contextlib.suppress(RedisError, OSError):
                await self.scripts["forget"](keys=[stream], args=[self.name, self.consumer])


class RedisReceiver(Receiver):
    def __init__(self, client, consumer: str, durables: list[topology.Durable]):
        self.client, self.consumer = client, consumer
        self.cluster = isinstance(client, RedisCluster)
        self.scripts = {
            name: client.register_script(source)
            for name, source in (
                ("retry", scripts.RETRY),
                ("move_due", scripts.MOVE_DUE),
                ("dead", scripts.DEAD),
                ("claim_own", scripts.CLAIM_OWN),
                ("forget", scripts.FORGET),
            )
        }
        self.ok = True
        self.subscriptions = [RedisSubscription(self, durable) for durable in durables]
        self._pubsub = None
        self._listener: asyncio.Task | None = None

    @classmethod
    async def open(cls, transport, contexts, name: str) -> "RedisReceiver":
        client = await connection.connect()
        try:
            durables = await topology.ensure_topology(client, transport.registry, contexts)
            await _warn_without_persistence(client)
        except (RedisError, OSError) as exc:
            await connection.close_quietly(client)
            raise ConnectionError(f"cannot provision Redis: {exc!r}") from exc
        # Unique per process: a consumer's pending entries are its own until it dies.
        consumer = f"{name}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        return cls(client, consumer, durables)

    @property
    def connected(self) -> bool:
        return self.ok

    async def listen_at_most_once(self, handler: OnceHandler) -> None:
        channels = {}
        for subscription in self.subscriptions:
            for subject in subscription.durable.subjects:
                channels.setdefault(topology.at_most_once_channel(subject), []).append(subscription)
        if not channels:
            return
        # Pub/sub is per node; a cluster broadcasts PUBLISH to every node, so the one named will do.
        source = Redis.from_url(connection.plain_url(), **connection.client_options()) if self.cluster else self.client
        self._pubsub = source.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(*channels)
        self._listener = asyncio.create_task(self._listen(handler, channels))

    async def _listen(self, handler: OnceHandler, channels: dict) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                logger.warning("at-most-once subscription interrupted (%r); messages meanwhile are lost", exc)
                await asyncio.sleep(0.5)
                continue
            if not message or message.get("type") != "message":
                continue
            try:
                fields = entries.unpayload(message["data"])
            except ValueError:
                logger.warning("at-most-once payload on %s unreadable; dropped", _text(message["channel"]))
                continue
            delivery = OnceDelivery(fields)
            message_id = entries.message_id(delivery.headers)
            for subscription in channels.get(_text(message["channel"]), []):
                claim = topology.claim_key(subscription.context, message_id)
                try:
                    mine = await self.client.set(claim, b"1", nx=True, ex=CLAIM_TTL)
                except (RedisError, OSError):
                    mine = False  # at most once: without a claim, nobody handles it
                if mine:
                    await handler(subscription, delivery)

    async def backlog(self) -> Backlog:
        return await stats.snapshot(self.client, [s.durable for s in self.subscriptions])

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        for subscription in self.subscriptions:
            await subscription.close()
        await connection.close_quietly(self.client)


async def _warn_without_persistence(client) -> None:
    """A Redis that keeps nothing on disk loses every queued message when it restarts: say so once."""
    try:
        info = await client.info("persistence")
    except ResponseError:
        return
    if isinstance(client, RedisCluster):
        info = next((v for v in info.values() if isinstance(v, dict)), info)
    if not int(info.get("aof_enabled", 0)):
        logger.warning(
            "Redis has appendonly off: a restart loses every message not yet handled (set appendonly yes, "
            "appendfsync everysec)"
        )
