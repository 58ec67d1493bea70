"""What the dashboard shows, read from the history in a fixed number of queries.

Each function costs one query whatever the size of the tables, and touches only
rows of the last hour or rows still waiting (pending, retrying, dead), through the
indexes declared on Message and Delivery.
"""

import datetime as dt
import logging
import math
from collections import defaultdict
from dataclasses import dataclass

from django.db.models import Count, Min, Q
from django.db.models.functions import TruncMinute

from apps.mediator.console import extensions
from apps.mediator.models import Delivery, Message

log = logging.getLogger(__name__)

WINDOW_MINUTES = 60
# Handling-time percentiles are computed over at most this many of the latest
# deliveries of the window, so a very busy hour costs a bounded read.
PERCENTILE_SAMPLE = 20_000
# Bottom to top in the stacked chart: the normal outcomes first, trouble on top.
OUTCOMES = [
    Message.Status.HANDLED,
    Message.Status.PUBLISHED,
    Message.Status.PENDING,
    Message.Status.FAILED,
    Message.Status.DEAD,
]


@dataclass
class Minute:
    start: dt.datetime
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Timing:
    type: str
    count: int
    p50_ms: float
    p95_ms: float


@dataclass
class Waiting:
    count: int = 0  # due now (for pending: not scheduled for later)
    oldest: dt.datetime | None = None  # the oldest of those
    scheduled: int = 0  # pending with a countdown/eta still in the future (saga timeouts, say)


class MinuteOf(TruncMinute):
    """TruncMinute in UTC."""

    def __init__(self, expression, **extra):
        super().__init__(expression, tzinfo=dt.UTC, **extra)


def floor_minute(instant: dt.datetime) -> dt.datetime:
    return instant.replace(second=0, microsecond=0)


def throughput(now: dt.datetime, minutes: int = WINDOW_MINUTES) -> list[Minute]:
    """Messages created per minute over the last `minutes`, by their outcome (current status)."""
    first = floor_minute(now) - dt.timedelta(minutes=minutes - 1)
    buckets = [Minute(first + dt.timedelta(minutes=i), dict.fromkeys(OUTCOMES, 0)) for i in range(minutes)]
    rows = (
        Message.objects.filter(created_at__gte=first, created_at__lt=first + dt.timedelta(minutes=minutes))
        .annotate(minute=MinuteOf("created_at"))
        .values("minute", "status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for row in rows:
        index = int((row["minute"] - first).total_seconds() // 60)
        if 0 <= index < minutes:
            counts = buckets[index].counts
            counts[row["status"]] = counts.get(row["status"], 0) + row["n"]
    return buckets


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of an ascending list."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def handling_times(now: dt.datetime, minutes: int = WINDOW_MINUTES, sample: int = PERCENTILE_SAMPLE) -> list[Timing]:
    """p50/p95 handling time by message type, over the deliveries that succeeded in the window."""
    since = now - dt.timedelta(minutes=minutes)
    rows = (
        Delivery.objects.filter(status=Delivery.Status.SUCCEEDED, finished_at__gte=since, duration_ms__isnull=False)
        .order_by("-finished_at")
        .values_list("message__type", "duration_ms")[:sample]
    )
    by_type: dict[str, list[float]] = defaultdict(list)
    for message_type, duration in rows:
        by_type[message_type].append(duration)
    timings = []
    for message_type, durations in sorted(by_type.items()):
        durations.sort()
        timings.append(Timing(message_type, len(durations), percentile(durations, 0.5), percentile(durations, 0.95)))
    return timings


def waiting(now: dt.datetime) -> dict[str, Waiting]:
    """Outbox backlog (pending and due), retrying (failed) and dead letters: how many, and since when.

    A pending message with a countdown or eta in the future is scheduled, not late:
    it is counted apart so the backlog means "should have gone out and has not".
    """
    result = {status: Waiting() for status in (Message.Status.PENDING, Message.Status.FAILED, Message.Status.DEAD)}
    due = Q(available_at__isnull=True) | Q(available_at__lte=now)
    rows = (
        Message.objects.filter(status__in=list(result))
        .values("status")
        .annotate(
            n=Count("pk", filter=due),
            oldest=Min("created_at", filter=due),
            scheduled=Count("pk", filter=~due),
        )
        .order_by()
    )
    for row in rows:
        result[row["status"]] = Waiting(row["n"], row["oldest"], row["scheduled"])
    return result


def consumer_pending() -> dict[str, int] | None:
    """Messages waiting per durable consumer, or None ("n/a") while nobody can tell.

    A broker-backed transport's `consumer_pending() -> dict[str, int]`
    mapping each durable consumer's name to its pending count (NatsTransport reads
    JetStream's ConsumerInfo.num_pending on its own loop, within a second, and
    answers {} when NATS is unreachable: this runs in a web request on every
    dashboard refresh). The in-memory transport handles everything before `send`
    returns, so it has nothing pending and no such method. No method, an error or
    an empty answer all show as "n/a".
    """
    try:
        pending = extensions.mediator().transport.consumer_pending()
        if pending is None:
            return None
    except Exception:
        log.exception("the transport could not report consumer pending counts")
        return None
    return dict(sorted(pending.items())) or None
