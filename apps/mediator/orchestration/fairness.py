"""Whether a saga step had a fair time to run by its deadline, from the history alone.

Behind a backlog — the consumers catching up after an outage, a burst of orders — a step's
command may wait in its stream longer than the step's timeout, or reach a handler moments
before the deadline, or be handled with its reply still queued for the saga. A punctual
timer would then cancel an order whose step never had its time. The saga engine re-arms
such a timer (up to MAX_REARMS) instead; a command whose handler runs and fails, or hangs
while its stream is idle, times out as before.
"""

import datetime as dt
import time

from django.db.models import Min

from apps.mediator.models import Delivery, Message

WAITING = (Message.Status.PENDING, Message.Status.PUBLISHED)


def assess(message_id: str, seconds: float) -> tuple[str, str]:
    """The step command's status in the history ("" if it is not there) and why it had no
    fair time within the step's `seconds` ("": it had)."""
    row = (
        Message.objects.filter(pk=message_id)
        .annotate(started=Min("deliveries__first_started_at"))
        .values_list("status", "started", "type")
        .first()
    )
    if row is None:
        return "", ""
    status, started, type_ = row
    return status, _why_behind(message_id, status, started, type_, seconds)


def _why_behind(message_id: str, status: str, started: dt.datetime | None, type_: str, seconds: float) -> str:
    if status == Message.Status.HANDLED:
        return "its command was handled; the reply is still on its way"
    if status == Message.Status.FAILED and started and time.time() - started.timestamp() < seconds / 2:
        return "its command reached a handler late in the step's time"
    if status in WAITING and _stream_busy(message_id, type_, seconds):
        # Unhandled, with commands of its type ahead of it or flowing: queued, or just reached
        # a handler. Alone in an idle stream it is running, for longer than the step may.
        return "its command is still waiting to be handled behind others"
    return ""


def _stream_busy(message_id: str, type_: str, seconds: float) -> bool:
    ahead = Message.objects.filter(status__in=WAITING, type=type_, id__lt=message_id)
    since = dt.datetime.fromtimestamp(time.time() - seconds / 2, tz=dt.UTC)
    recent = Delivery.objects.filter(status=Delivery.Status.SUCCEEDED, finished_at__gte=since, message__type=type_)
    return ahead.exists() or recent.exclude(message_id=message_id).exists()
