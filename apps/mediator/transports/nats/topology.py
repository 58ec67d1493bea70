"""Streams and durable consumers, provisioned idempotently by every process.

Streams (names from SUBJECT_PREFIX, upper-cased):
  <P>_CMD  <prefix>.<context>.cmd.>   commands, one durable consumer per context
  <P>_EVT  <prefix>.<context>.evt.>   events, one durable consumer per subscribing context
  <P>_DLQ  <prefix>.dlq.>             dead letters, with the reason in headers (bounded by
                                      DLQ_MAX_BYTES, the oldest dropped first)
Subjects are listed per context (not `<prefix>.*.cmd.>`) because JetStream refuses
streams whose subjects could overlap, and `*` would also match `dlq`.
Both the web (publisher) and the consumers create the consumers, so an event
published before any worker ever started is still waiting for it.
"""

import asyncio
import logging
import random
from dataclasses import dataclass

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from apps.mediator.core import routing
from apps.mediator.core.conf import catga_settings
from apps.mediator.core.messages import Kind, subject_for
from apps.mediator.core.registry import Registry

logger = logging.getLogger("catga.nats")
PROVISION_ATTEMPTS = 5


def prefix() -> str:
    return catga_settings.SUBJECT_PREFIX


def stream_name(kind: str) -> str:
    return f"{prefix().upper()}_{kind}"


def at_most_once_subject(subject_without_prefix: str) -> str:
    """Core-NATS subjects outside every stream: nothing stores an AtMostOnce message."""
    return f"{prefix()}.amo.{subject_without_prefix}"


def dlq_subject(original_subject: str) -> str:
    return f"{prefix()}.dlq.{original_subject.removeprefix(prefix() + '.')}"


@dataclass(frozen=True)
class Durable:
    context: str
    stream: str
    name: str
    subjects: tuple[str, ...]
    queue: str = routing.DEFAULT


def durables(registry: Registry, contexts) -> list[Durable]:
    """One durable per (context, kind, queue) with something to consume (core/routing.py)."""
    result = []
    for context in contexts:
        types = registry.subscriptions(context)
        by_kind: dict[tuple[str, str], list[str]] = {}
        for t in types:
            kind = {Kind.COMMAND: "cmd", Kind.EVENT: "evt"}.get(t.kind)
            if kind is not None:
                by_kind.setdefault((kind, routing.queue_for(t.options.wire_name)), []).append(subject_for(t, prefix()))
        for (kind, queue), subjects in sorted(by_kind.items()):
            if kind == "cmd" and queue == routing.DEFAULT:
                # The whole subject space, so a command of no known type is dead-lettered;
                # the worker acknowledges the routed types it sees here unhandled.
                subjects = [f"{prefix()}.{context}.cmd.>"]
            stream = stream_name(kind.upper())
            name = routing.durable_name(context, kind, queue)
            result.append(Durable(context, stream, name, tuple(sorted(subjects)), queue))
        if any(kind == "cmd" for kind, _ in by_kind) and (("cmd", routing.DEFAULT) not in by_kind):
            # Every command routed elsewhere: the default consumer still settles strays.
            name = routing.durable_name(context, "cmd", routing.DEFAULT)
            result.append(Durable(context, stream_name("CMD"), name, (f"{prefix()}.{context}.cmd.>",)))
    return result


def stream_configs(contexts) -> list[StreamConfig]:
    reserved = {"dlq", "amo"} & set(contexts)
    if reserved:
        raise ValueError(f"context names {sorted(reserved)} are reserved for subjects; rename them")

    def stream(kind: str, subjects: list[str], max_age: float, **limits) -> StreamConfig:
        return StreamConfig(
            name=stream_name(kind),
            subjects=subjects,
            retention=RetentionPolicy.LIMITS,
            max_age=max_age,
            duplicate_window=catga_settings.DUPLICATE_WINDOW,
            num_replicas=catga_settings.STREAM_REPLICAS,
            storage=StorageType(catga_settings.STREAM_STORAGE),
            **limits,
        )

    return [
        stream("CMD", [f"{prefix()}.{c}.cmd.>" for c in contexts], catga_settings.STREAM_MAX_AGE),
        stream("EVT", [f"{prefix()}.{c}.evt.>" for c in contexts], catga_settings.STREAM_MAX_AGE),
        # Full, it drops its oldest dead letters rather than refuse new ones: a refused dead
        # letter would leave its message unsettled. The history keeps every dead row (replay
        # reads it), so only the stream's copy of the oldest goes.
        stream(
            "DLQ",
            [f"{prefix()}.dlq.>"],
            catga_settings.DLQ_MAX_AGE,
            max_bytes=catga_settings.DLQ_MAX_BYTES,
            discard=DiscardPolicy.OLD,
        ),
    ]


def consumer_config(durable: Durable) -> ConsumerConfig:
    config = ConsumerConfig(
        name=durable.name,
        durable_name=durable.name,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=catga_settings.ACK_WAIT,
        max_deliver=-1,  # attempts are counted and capped per message type by the dispatcher
        max_ack_pending=max(1000, catga_settings.CONCURRENCY * 16),
        deliver_policy=DeliverPolicy.ALL,
    )
    if len(durable.subjects) == 1:
        config.filter_subject = durable.subjects[0]
    else:
        config.filter_subjects = list(durable.subjects)
    return config


async def ensure_streams(js: JetStreamContext, contexts) -> None:
    for config in stream_configs(contexts):
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            logger.info("created stream %s", config.name)
            continue
        # Widen, never narrow: a process that knows fewer contexts (an older release
        # mid-rollout, a tool) must not cut another's subjects out of the shared stream.
        subjects = sorted(set(info.config.subjects or []) | set(config.subjects))
        config.subjects = subjects
        await js.update_stream(config)


async def ensure_consumers(js: JetStreamContext, registry: Registry, contexts) -> list[Durable]:
    wanted = durables(registry, contexts)
    for durable in wanted:
        # CONSUMER.CREATE is create-or-update on the server: a context that starts
        # handling another event gets its filter widened in place, keeping its ack state.
        await js.add_consumer(durable.stream, consumer_config(durable))
    return wanted


async def ensure_topology(
    js: JetStreamContext, registry: Registry, contexts=None, *, attempts: int = PROVISION_ATTEMPTS
) -> list[Durable]:
    # Processes starting together on a cluster race to create the same replicated streams,
    # and JetStream can leave the losers' requests unanswered: every step is idempotent,
    # so a request that timed out is simply made again (the stream exists by then).
    for attempt in range(1, attempts + 1):
        try:
            await ensure_streams(js, registry.contexts)
            return await ensure_consumers(js, registry, contexts or registry.contexts)
        except NatsTimeoutError:
            if attempt == attempts:
                raise
            logger.warning("JetStream did not answer while provisioning (attempt %d/%d); again", attempt, attempts)
            await asyncio.sleep(random.uniform(0.2, 1.0))  # noqa: S311 (jitter, not crypto)
    raise AssertionError("unreachable")
