"""Periodic schedules (issue 18): cron timing, one firing per tick across claimers, catch-up,
code declarations against admin edits, and the daily prune as the first user."""

import datetime as dt
import threading

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.mediator import runtime
from apps.mediator.core import cron, ids
from apps.mediator.models import Message, Schedule
from apps.mediator.storage import schedules

UTC = dt.UTC
PARIS = cron.zone("Europe/Paris")


def at(*args, tz=UTC) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz)


def nexts(expression: str, start: dt.datetime, count: int, tz=UTC) -> list[dt.datetime]:
    rule, moments = cron.Cron.parse(expression), []
    for _ in range(count):
        start = rule.next_after(start, tz)
        moments.append(start)
    return moments


# -- cron -------------------------------------------------------------------------------


def test_cron_steps_ranges_and_names():
    # 2026-12-04 is a Friday: working hours every 15 minutes, then Monday morning.
    found = nexts("*/15 9-17 * * mon-fri", at(2026, 12, 4, 17, 20), 3)
    assert found == [at(2026, 12, 4, 17, 30), at(2026, 12, 4, 17, 45), at(2026, 12, 7, 9, 0)]
    assert nexts("@daily", at(2026, 12, 31, 23, 59), 1) == [at(2027, 1, 1)]
    assert nexts("0 12 29 feb *", at(2026, 1, 1), 1) == [at(2028, 2, 29, 12)]


def test_cron_restricted_day_fields_match_either_day_as_vixie_cron_does():
    # The 13th, or any Friday: Fri 4 Dec, Fri 11 Dec, Sun 13 Dec.
    found = nexts("0 0 13 * fri", at(2026, 12, 3), 3)
    assert found == [at(2026, 12, 4), at(2026, 12, 11), at(2026, 12, 13)]


def test_cron_in_a_time_zone_skips_a_time_dst_removes_and_fires_a_repeated_one_once():
    # 02:30 does not exist in Paris on 29 March 2026; it occurs twice on 25 October 2026.
    spring = nexts("30 2 * * *", at(2026, 3, 28, 12, tz=PARIS), 2, PARIS)
    assert [m.astimezone(PARIS).date() for m in spring] == [dt.date(2026, 3, 30), dt.date(2026, 3, 31)]
    autumn = nexts("30 2 * * *", at(2026, 10, 25, 0, tz=PARIS), 2, PARIS)
    assert autumn[0] == at(2026, 10, 25, 0, 30)  # the first 02:30, CEST (UTC+2)
    assert autumn[1].astimezone(PARIS).date() == dt.date(2026, 10, 26)
    assert nexts("0 9 * * *", at(2026, 12, 3, 12), 1, PARIS) == [at(2026, 12, 4, 8)]  # 09:00 CET


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("* * * *", "5 fields"),
        ("60 * * * *", "minute: '60' is not in 0-59"),
        ("* 9-5 * * *", "hour: range '9-5' runs backwards"),
        ("* * * foo *", "month: 'foo'"),
        ("*/0 * * * *", "step '0'"),
        ("0 0 31 2 *", "never matches"),
    ],
)
def test_a_bad_cron_expression_names_its_field(expression, says):
    with pytest.raises(cron.CronError, match=says):
        cron.Cron.parse(expression).next_after(at(2026, 1, 1), UTC)


def test_tick_ids_are_the_same_for_the_same_tick_and_sort_by_time():
    tick = at(2026, 12, 3, 10)
    first = schedules.tick_id("a", tick)
    assert first == schedules.tick_id("a", tick) and len(first) == 26
    assert first != schedules.tick_id("b", tick)
    assert schedules.tick_id("a", tick + dt.timedelta(seconds=2)) > first
    assert ids.id_timestamp_ms(first) == int(tick.timestamp() * 1000)


# -- firing -----------------------------------------------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)


def release_schedule(name="release", every=2.0, next_run_at=None, **fields) -> Schedule:
    return Schedule.objects.create(
        name=name,
        message_type="inventory.ReleaseStock",
        payload={"order_id": f"sched-{name}", "reason": "schedule"},
        every=every,
        next_run_at=next_run_at or timezone.now(),
        **fields,
    )


def sent(name="release") -> list[Message]:
    return list(Message.objects.filter(type="inventory.ReleaseStock", payload__order_id=f"sched-{name}").order_by("id"))


@pytestmark_db
def test_a_due_tick_is_sent_once_with_its_tick_id_and_handled():
    now = timezone.now()
    release_schedule(next_run_at=now)
    post = runtime.get_mediator().post
    assert schedules.fire_due(post, now=now) == 1
    assert schedules.fire_due(post, now=now) == 0  # the row has moved on
    [message] = sent()
    assert message.id == schedules.tick_id("release", now)
    assert message.status == Message.Status.HANDLED
    row = Schedule.objects.get(pk="release")
    assert (row.total_runs, row.last_message_id) == (1, message.id)
    assert row.next_run_at == now + dt.timedelta(seconds=2)


@pytestmark_db
def test_a_tick_already_stored_is_not_sent_again():
    """Two databases restored, a hand edit of next_run_at: the tick's id makes it one message."""
    now = timezone.now()
    release_schedule(next_run_at=now)
    post = runtime.get_mediator().post
    schedules.fire_due(post, now=now)
    Schedule.objects.filter(pk="release").update(next_run_at=now)
    assert schedules.fire_due(post, now=now) == 0
    assert len(sent()) == 1


@pytestmark_db
def test_a_replica_skips_a_schedule_another_is_firing_and_no_tick_is_sent_twice():
    now = timezone.now()
    release_schedule(next_run_at=now)
    real_post = runtime.get_mediator().post
    inside, go_on = threading.Event(), threading.Event()

    def held_post(*args, **kwargs):
        inside.set()  # replica A holds the row lock, mid-transaction
        assert go_on.wait(10)
        return real_post(*args, **kwargs)

    results = {}
    replica_a = threading.Thread(target=lambda: results.update(a=schedules.fire_due(held_post, now=now)))
    replica_a.start()
    assert inside.wait(10)
    results["b"] = schedules.fire_due(real_post, now=now)  # while A holds the lock: skipped
    go_on.set()
    replica_a.join(10)
    assert results == {"a": 1, "b": 0}
    assert schedules.fire_due(real_post, now=now) == 0  # and after A committed: moved on
    assert len(sent()) == 1


@pytestmark_db
def test_ticks_missed_while_no_consumer_ran_are_fired_late_each_once(settings):
    settings.CATGA = {**settings.CATGA, "SCHEDULE_CATCHUP": 60}
    now = timezone.now()
    release_schedule(next_run_at=now - dt.timedelta(seconds=10))
    assert schedules.fire_due(runtime.get_mediator().post, now=now) == 6  # -10, -8, ..., 0
    assert len({m.id for m in sent()}) == 6
    row = Schedule.objects.get(pk="release")
    assert (row.total_runs, row.skipped_runs) == (6, 0)


@pytestmark_db
def test_misses_older_than_the_catch_up_window_collapse_into_one_run(settings):
    settings.CATGA = {**settings.CATGA, "SCHEDULE_CATCHUP": 60}
    now = at(2026, 12, 3, 12)
    Schedule.objects.create(
        name="nightly",
        message_type="inventory.ReleaseStock",
        payload={"order_id": "sched-nightly"},
        cron="0 3 * * *",
        next_run_at=at(2026, 11, 30, 3),  # four nights missed
    )
    assert schedules.fire_due(runtime.get_mediator().post, now=now) == 1
    row = Schedule.objects.get(pk="nightly")
    assert (row.total_runs, row.skipped_runs) == (1, 3)
    assert row.last_run_at == at(2026, 12, 3, 3)
    assert row.next_run_at == at(2026, 12, 4, 3)


@pytestmark_db
def test_a_disabled_schedule_does_not_fire():
    now = timezone.now()
    release_schedule(next_run_at=now, enabled=False)
    assert schedules.fire_due(runtime.get_mediator().post, now=now) == 0
    assert sent() == []


# -- declared in code -------------------------------------------------------------------


@pytestmark_db
def test_declared_schedules_are_created_keep_admin_edits_and_follow_code_changes(settings):
    spec = {"message": "inventory.ReleaseStock", "payload": {"order_id": "x"}, "every": 30}
    settings.CATGA = {**settings.CATGA, "SCHEDULES": {"release": spec}}
    schedules.sync_declared()
    row = Schedule.objects.get(pk="release")
    assert (row.every, row.enabled) == (30, True)
    assert Schedule.objects.filter(pk=schedules.PRUNE, call=schedules.PRUNE_CALL, cron="30 3 * * *").exists()

    Schedule.objects.filter(pk="release").update(enabled=False, every=45)  # the admin's edit
    schedules.sync_declared()
    assert Schedule.objects.filter(pk="release", enabled=False, every=45).exists()

    settings.CATGA = {**settings.CATGA, "SCHEDULES": {"release": {**spec, "every": 10}}}  # the code's change
    schedules.sync_declared()
    assert Schedule.objects.filter(pk="release", enabled=True, every=10).exists()

    settings.CATGA = {**settings.CATGA, "SCHEDULES": {}}
    schedules.sync_declared()
    assert Schedule.objects.filter(pk="release", enabled=False).exists()  # kept, disabled


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"message": "inventory.ReleaseStock", "payload": {"order_id": "x"}}, "either every"),
        ({"message": "inventory.Nope", "every": 5}, "not a known command"),
        ({"message": "inventory.StockReleased", "payload": {"order_id": "x"}, "every": 5}, "not a known command"),
        ({"message": "inventory.ReleaseStock", "payload": {}, "every": 5}, "order_id"),
        ({"message": "inventory.ReleaseStock", "payload": {"order_id": "x"}, "cron": "* * *"}, "5 fields"),
        (
            {"message": "inventory.ReleaseStock", "payload": {"order_id": "x"}, "every": 5, "timezone": "Mars/Base"},
            "unknown time zone",
        ),
        ({"message": "inventory.ReleaseStock", "every": 5, "evry": 5}, "unknown key"),
    ],
)
def test_a_bad_declaration_is_refused_at_start_naming_the_schedule(settings, spec, says):
    settings.CATGA = {**settings.CATGA, "SCHEDULES": {"bad-one": spec}}
    with pytest.raises(ImproperlyConfigured, match=rf"SCHEDULES.*'bad-one'.*{says}"):
        schedules.check_declared()


def test_run_consumer_refuses_a_bad_schedule_before_connecting(settings):
    settings.CATGA = {**settings.CATGA, "SCHEDULES": {"bad-one": {"message": "inventory.Nope", "every": 5}}}
    with pytest.raises(CommandError, match="bad-one"):
        call_command("run_consumer")


# -- the first user: the daily prune -----------------------------------------------------


@pytestmark_db
def test_the_daily_prune_schedule_prunes_with_the_configured_retention(settings):
    settings.CATGA = {**settings.CATGA, "HISTORY_RETENTION_DAYS": 7}
    post = runtime.get_mediator().post
    release_schedule(next_run_at=timezone.now())
    schedules.fire_due(post)
    old = timezone.now() - dt.timedelta(days=8)
    Message.objects.update(created_at=old)  # the handled tick is now older than the retention
    schedules.sync_declared()
    Schedule.objects.filter(pk=schedules.PRUNE).update(next_run_at=timezone.now())
    Schedule.objects.filter(pk="release").update(enabled=False)
    assert schedules.fire_due(post) == 1
    assert sent() == []
    assert Schedule.objects.get(pk=schedules.PRUNE).total_runs == 1
