"""Streams, consumer groups and the other keys of the Redis transport, provisioned idempotently.

Keys (P is SUBJECT_PREFIX), every key of one context under the hash tag `{P:<context>}`
so that a context's streams, retry set, dead letters and de-duplication keys share one
Redis Cluster slot and every multi-key step is one atomic Lua script:

  {P:<ctx>}:cmd            commands to <ctx>; one group `<ctx>_cmd`
  {P:<ctx>}:evt            events <ctx> publishes; one group `<sub>_evt` per context <sub>
                           that handles one of them (the NATS durable names)
  {P:<ctx>}:cmd:retry      retried entries waiting for their due time (a sorted set; the
  {P:<ctx>}:evt:retry      member is the entry, the score its due time in ms)
  {P:<ctx>}:dlq            dead letters of entries of <ctx>'s streams (same slot as the
                           stream, so burying and acknowledging are one script)
  {P:<ctx>}:dedupe:<id>    a publish's de-duplication key (SET NX EX DUPLICATE_WINDOW)
  {P:<sub>}:amo:<id>       an at-most-once message claimed by one replica of <sub>

Why events live in the *publishing* context's stream: an event has subscribers in several
contexts, each of which must see it once, and its replicas share the load — a consumer
group per subscribing context on the publisher's stream is exactly that. A subscription
`<sub>_evt` therefore reads one stream per publishing context it listens to, one
XREADGROUP per key (on a cluster those keys are in different slots). A stream holds every
event type its context publishes: a group acknowledges the types it does not handle
unread, as JetStream's subject filter would never have delivered them.

Groups are created at id 0 (with MKSTREAM) by the publisher and by every receiver, so an
event published before any worker ever started is still there for its group, and a
context that starts handling a new publisher's events gets a group there too (widened,
never narrowed: no process deletes a group).
"""

import logging
from dataclasses import dataclass

from redis.exceptions import ResponseError

from apps.mediator.core import routing
from apps.mediator.core.conf import catga_settings
from apps.mediator.core.messages import Kind, subject_for
from apps.mediator.core.registry import Registry

logger = logging.getLogger("catga.redis")

RESERVED = {"dlq", "amo"}


def prefix() -> str:
    return catga_settings.SUBJECT_PREFIX


def tag(context: str) -> str:
    return f"{{{prefix()}:{context}}}"


def stream_key(context: str, kind: str) -> str:
    """kind: "cmd" or "evt"."""
    return f"{tag(context)}:{kind}"


def retry_key(stream: str) -> str:
    return f"{stream}:retry"


def dlq_key(stream: str) -> str:
    """The dead letters of `stream`'s entries: its context's, in its slot."""
    return f"{stream.rsplit(':', 1)[0]}:dlq"


def dedupe_key(context: str, dedupe_id: str) -> str:
    return f"{tag(context)}:dedupe:{dedupe_id}"


def claim_key(context: str, message_id: str) -> str:
    return f"{tag(context)}:amo:{message_id}"


def at_most_once_channel(subject: str) -> str:
    """The pub/sub channel of an at-most-once message: `<P>.amo.<ctx>.<kind>.<Name>`, as on NATS."""
    return f"{prefix()}.amo.{subject.removeprefix(prefix() + '.')}"


@dataclass(frozen=True)
class Durable:
    """A consumer group, named like the NATS durable, on one or more streams."""

    context: str
    name: str
    streams: tuple[str, ...]
    subjects: frozenset[str]  # the subjects it handles
    kind: str
    queue: str = routing.DEFAULT

    def wants(self, subject: str) -> bool:
        """A context's default command group takes every command (an unknown type is dead-lettered
        by the worker, a routed one acknowledged there); the others only their subjects."""
        if self.kind == "cmd" and self.queue == routing.DEFAULT:
            return True
        return subject in self.subjects


def durables(registry: Registry, contexts) -> list[Durable]:
    """One group per (context, kind, queue), as on NATS (core/routing.py)."""
    reserved = RESERVED & set(registry.contexts)
    if reserved:
        raise ValueError(f"context names {sorted(reserved)} are reserved for keys; rename them")
    result = []
    for context in contexts:
        by_kind: dict[tuple[str, str], list] = {}
        for t in registry.subscriptions(context):
            kind = {Kind.COMMAND: "cmd", Kind.EVENT: "evt"}.get(t.kind)
            if kind is not None:
                by_kind.setdefault((kind, routing.queue_for(t.options.wire_name)), []).append(t)
        if any(kind == "cmd" for kind, _ in by_kind):
            by_kind.setdefault(("cmd", routing.DEFAULT), [])  # strays still need a group to settle them
        for (kind, queue), types in sorted(by_kind.items()):
            if kind == "cmd":
                streams = (stream_key(context, "cmd"),)
            else:
                streams = tuple(stream_key(c, "evt") for c in sorted({t.options.context for t in types}))
            subjects = frozenset(subject_for(t, prefix()) for t in types)
            name = routing.durable_name(context, kind, queue)
            result.append(Durable(context, name, streams, subjects, kind, queue))
    return result


def stream_keys(registry: Registry) -> list[str]:
    """Every command and event stream of the app (what the probe and catga_status look at)."""
    keys = set()
    for durable in durables(registry, registry.contexts):
        keys.update(durable.streams)
    return sorted(keys)


async def ensure_group(client, stream: str, group: str) -> None:
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        logger.info("created consumer group %s on %s", group, stream)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def ensure_topology(client, registry: Registry, contexts=None) -> list[Durable]:
    """Create every group of the app (all contexts'), return those of `contexts`."""
    for durable in durables(registry, registry.contexts):
        for stream in durable.streams:
            await ensure_group(client, stream, durable.name)
    return durables(registry, contexts or registry.contexts)


def ensure_topology_sync(client, registry: Registry) -> None:
    """The publisher's provisioning (threaded client): the same groups, so nothing sent before
    any worker ever started is missed by its group."""
    for durable in durables(registry, registry.contexts):
        for stream in durable.streams:
            try:
                client.xgroup_create(stream, durable.name, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
