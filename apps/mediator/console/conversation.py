"""One conversation (every message sharing a correlation id) as a causation tree and a timeline.

Two queries whatever the conversation's size: its messages (payloads left out) and
their deliveries (tracebacks and results left out). The tree follows causation ids;
a message whose cause is not in the conversation (pruned, or from elsewhere) is a
root of its own. Each row carries three instants, drawn as a bar on a shared time
axis: sent (created), picked up (first handler start) and finished (last handler end).
"""

import datetime as dt
from dataclasses import dataclass, field

from apps.mediator.console import extensions
from apps.mediator.models import Delivery, Message

MAX_MESSAGES = 500  # a conversation larger than this is shown in part, and says so

LIST_FIELDS = [
    "id",
    "type",
    "kind",
    "context",
    "status",
    "correlation_id",
    "causation_id",
    "created_at",
    "available_at",
    "published_at",
]


@dataclass
class Row:
    message: Message
    depth: int
    deliveries: list[Delivery]
    children: list["Row"] = field(default_factory=list)
    # Positions on the timeline, in percent of the conversation's span.
    offset: float = 0.0
    wait: float = 0.0
    work: float = 0.0
    # The three instants as milliseconds after the conversation started.
    sent_ms: float | None = None
    picked_up_ms: float | None = None
    finished_ms: float | None = None

    @property
    def work_left(self) -> float:
        return self.offset + self.wait

    @property
    def sent(self) -> dt.datetime:
        return self.message.created_at

    @property
    def picked_up(self) -> dt.datetime | None:
        starts = [d.first_started_at or d.started_at for d in self.deliveries if d.first_started_at or d.started_at]
        return min(starts, default=None)

    @property
    def finished(self) -> dt.datetime | None:
        if not self.deliveries or any(d.finished_at is None for d in self.deliveries):
            return None
        return max(d.finished_at for d in self.deliveries)

    @property
    def attempts(self) -> int:
        return max((d.attempts for d in self.deliveries), default=0)

    @property
    def indent_em(self) -> float:
        return 1.5 * self.depth


@dataclass
class Conversation:
    correlation_id: str
    rows: list[Row]
    truncated: bool
    started: dt.datetime | None
    ended: dt.datetime | None

    @property
    def span_ms(self) -> float:
        if self.started is None or self.ended is None:
            return 0.0
        return (self.ended - self.started).total_seconds() * 1000

    def offset_ms(self, instant: dt.datetime | None) -> float | None:
        if instant is None or self.started is None:
            return None
        return (instant - self.started).total_seconds() * 1000


def resolve(key: str) -> str | None:
    """The correlation id that `key` names: itself, a message's, or a resolver's (an order id)."""
    key = key.strip()
    if not key:
        return None
    if Message.objects.filter(correlation_id=key).exists():
        return key
    message = Message.objects.filter(pk=key).values_list("correlation_id", flat=True).first()
    if message:
        return message
    found = extensions.correlation_ids_for(key)
    return found[0] if found else None


def load(correlation_id: str, *, limit: int = MAX_MESSAGES) -> Conversation:
    messages = list(
        Message.objects.filter(correlation_id=correlation_id).only(*LIST_FIELDS).order_by("id")[: limit + 1]
    )
    truncated = len(messages) > limit
    messages = messages[:limit]
    by_message: dict[str, list[Delivery]] = {m.id: [] for m in messages}
    deliveries = (
        Delivery.objects.filter(message_id__in=list(by_message))
        .defer("traceback", "result", "attempt_log")
        .order_by("first_started_at", "id")
    )
    for delivery in deliveries:
        by_message[delivery.message_id].append(delivery)
    rows = _tree(messages, by_message)
    conversation = Conversation(correlation_id, rows, truncated, *_span(rows))
    _place_on_timeline(conversation)
    return conversation


def _tree(messages: list[Message], by_message: dict[str, list[Delivery]]) -> list[Row]:
    """Rows in depth-first order, each after its cause, siblings in the order they were sent."""
    nodes = {m.id: Row(m, 0, by_message[m.id]) for m in messages}
    roots = []
    for message in sorted(messages, key=lambda m: (m.created_at, m.id)):  # children in the order they were sent
        parent = nodes.get(message.causation_id)
        if parent is None or parent.message.id == message.id:
            roots.append(nodes[message.id])
        else:
            parent.children.append(nodes[message.id])
    ordered: list[Row] = []
    stack = [(root, 0) for root in reversed(roots)]
    seen: set[str] = set()
    while stack:
        row, depth = stack.pop()
        if row.message.id in seen:  # a causation cycle can only come from bad data; show it once
            continue
        seen.add(row.message.id)
        row.depth = depth
        ordered.append(row)
        stack.extend((child, depth + 1) for child in reversed(row.children))
    return ordered


def _span(rows: list[Row]) -> tuple[dt.datetime | None, dt.datetime | None]:
    instants = [i for row in rows for i in (row.sent, row.picked_up, row.finished) if i is not None]
    if not instants:
        return None, None
    return min(instants), max(instants)


def _place_on_timeline(conversation: Conversation) -> None:
    for row in conversation.rows:
        row.sent_ms = conversation.offset_ms(row.sent)
        row.picked_up_ms = conversation.offset_ms(row.picked_up)
        row.finished_ms = conversation.offset_ms(row.finished)
    span = conversation.span_ms
    if span <= 0:
        for row in conversation.rows:
            row.offset, row.wait, row.work = 0.0, 0.0, 100.0 if row.finished else 0.0
        return

    def pct(instant):
        return 100.0 * conversation.offset_ms(instant) / span

    for row in conversation.rows:
        row.offset = pct(row.sent)
        if row.picked_up is not None:
            row.wait = max(pct(row.picked_up) - row.offset, 0.0)
            end = row.finished or conversation.ended
            row.work = max(pct(end) - row.offset - row.wait, 0.0)
