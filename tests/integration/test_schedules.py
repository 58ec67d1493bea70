"""A periodic schedule over three consumer replicas on real NATS (issue 18): every tick is
sent once and handled once, and killing every consumer mid-run loses and doubles nothing."""

import datetime as dt

from django.utils import timezone

from apps.mediator.models import Delivery, Message, Schedule
from apps.mediator.servers.ports import wait_until
from apps.mediator.storage import schedules

EVERY = 2.0
TICKS = 10  # 20 seconds of a 2-second schedule


def replicas(workers, count=3):
    return [workers.start("inventory") for _ in range(count)]


def runs() -> int:
    return Schedule.objects.values_list("total_runs", flat=True).get(pk="tick")


def test_a_schedule_fires_each_tick_once_across_replicas_killed_and_restarted(workers):
    first = replicas(workers)
    start = timezone.now().replace(microsecond=0) + dt.timedelta(seconds=1)
    Schedule.objects.create(
        name="tick",
        message_type="inventory.ReleaseStock",
        payload={"order_id": "schedule-tick", "reason": "schedule"},
        every=EVERY,
        next_run_at=start,
    )
    wait_until(lambda: runs() >= TICKS // 2 - 1, timeout=30, what="the first ticks fired")
    for proc in first:  # every consumer at once, SIGKILL: nobody left to fire
        proc.kill()
    for proc in first:
        proc.wait()
    # The outage lasts past three ticks: they must be fired late, each once, not lost.
    due = Schedule.objects.get(pk="tick").next_run_at + dt.timedelta(seconds=2 * EVERY)
    wait_until(lambda: timezone.now() > due, timeout=30, what="three ticks missed")
    replicas(workers)
    wait_until(lambda: runs() >= TICKS, timeout=60, what=f"{TICKS} ticks fired")
    Schedule.objects.filter(pk="tick").update(enabled=False)

    fired = runs()
    expected = {schedules.tick_id("tick", start + dt.timedelta(seconds=EVERY * k)) for k in range(fired)}
    messages = Message.objects.filter(type="inventory.ReleaseStock", payload__order_id="schedule-tick")
    wait_until(
        lambda: messages.filter(status=Message.Status.HANDLED).count() == fired,
        timeout=30,
        what="every tick handled",
    )
    assert set(messages.values_list("id", flat=True)) == expected  # none lost, none doubled, no stranger
    handled = Delivery.objects.filter(message__in=messages, status=Delivery.Status.SUCCEEDED)
    assert handled.count() == fired  # one handling per tick
    assert Schedule.objects.get(pk="tick").skipped_runs == 0
