"""Periodic schedules (django-celery-beat's job), with no beat process and no clock in memory.

The clock is the `Schedule` table. Every run_consumer's relay loop calls `fire_due`, which
claims the due rows with SELECT ... FOR UPDATE SKIP LOCKED, sends each tick's command
into the outbox and moves `next_run_at` on, in one transaction: a tick is fired by one
replica, once, whichever replicas run, and a restart forgets nothing. Each tick's message
id is derived from (schedule, tick time) (`ids.stable_id`), so even a tick fired twice by
mistake — two databases restored, a hand edit — is one message: the outbox keeps one row
and the inbox handles it once.

Ticks missed while no consumer ran are fired late, each once, back to SCHEDULE_CATCHUP
seconds; older misses collapse into one (a daily job after a week's outage runs once, not
seven times) and are counted in `skipped_runs`.

Why the database and not JetStream's message schedules (nats-server ≥ 2.12,
`Nats-Schedule`): the table is the same on every transport (NATS and Redis Streams alike),
the admin edits it in one transaction with everything else, and a tick enters the outbox
like any other send — so it has the outbox's guarantees, its history, revoke and expiry.
"""

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Mapping

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from apps.mediator.core import codec, cron, ids
from apps.mediator.core.conf import catga_settings
from apps.mediator.core.errors import UndecodableMessage
from apps.mediator.core.messages import Command, message_type
from apps.mediator.models import Schedule

logger = logging.getLogger("catga.schedules")

PRUNE = "catga.prune-messages"
PRUNE_CALL = "apps.mediator.storage.retention.prune_scheduled"
MAX_CATCHUP_TICKS = 1000  # per schedule and sweep, whatever SCHEDULE_CATCHUP says
Post = Callable[..., object]  # Mediator.post


def validate(*, every, cron_text: str, tz: str, message_type_name: str, call: str, payload) -> None:
    """Raise ValueError (cron.CronError) naming what is wrong with a definition."""
    if bool(every) == bool(cron_text):
        raise ValueError("give either every (seconds) or cron, not both or neither")
    if every is not None and every <= 0:
        raise ValueError(f"every must be more than 0 seconds, not {every}")
    if cron_text:
        cron.Cron.parse(cron_text)
    cron.zone(tz)
    if bool(message_type_name) == bool(call):
        raise ValueError("give either a command (message type) or a maintenance call, not both or neither")
    if message_type_name:
        command(message_type_name, payload)
    else:
        try:
            import_string(call)
        except ImportError as exc:
            raise ValueError(f"call {call!r} cannot be imported: {exc}") from exc


def command(wire_name: str, payload) -> Command:
    cls = message_type(wire_name)
    if cls is None or not issubclass(cls, Command):
        raise ValueError(f"{wire_name!r} is not a known command type")
    try:
        return codec.decode(wire_name, json.dumps(payload or {}).encode())
    except UndecodableMessage as exc:
        raise ValueError(f"payload does not make a {wire_name}: {exc}") from exc


def following(row: Schedule, tick: dt.datetime) -> dt.datetime:
    """The tick after `tick`."""
    if row.every:
        return tick + dt.timedelta(seconds=row.every)
    return cron.Cron.parse(row.cron).next_after(tick, cron.zone(row.timezone))


def first_tick(row: Schedule, now: dt.datetime) -> dt.datetime:
    """An interval schedule fires at once (as beat does), a cron one at its next match."""
    return now if row.every else following(row, now)


# -- declared in code ---------------------------------------------------------


def declared() -> dict[str, dict]:
    """CATGA["SCHEDULES"] plus the framework's own (the daily prune), by name."""
    specs = {}
    if catga_settings.PRUNE_SCHEDULE and catga_settings.HISTORY_RETENTION_DAYS is not None:
        specs[PRUNE] = {"call": PRUNE_CALL, "cron": catga_settings.PRUNE_SCHEDULE}
    specs.update(catga_settings.SCHEDULES)
    return specs


def _row_fields(name: str, spec: Mapping) -> dict:
    unknown = set(spec) - {"message", "payload", "call", "every", "cron", "timezone", "enabled"}
    if unknown:
        raise ImproperlyConfigured(f'CATGA["SCHEDULES"][{name!r}] has unknown key(s): {", ".join(sorted(unknown))}')
    fields = {
        "message_type": spec.get("message", ""),
        "payload": spec.get("payload", {}),
        "call": spec.get("call", ""),
        "every": spec.get("every"),
        "cron": spec.get("cron", ""),
        "timezone": spec.get("timezone", "UTC"),
        "enabled": spec.get("enabled", True),
    }
    try:
        validate(
            every=fields["every"],
            cron_text=fields["cron"],
            tz=fields["timezone"],
            message_type_name=fields["message_type"],
            call=fields["call"],
            payload=fields["payload"],
        )
    except ValueError as exc:
        raise ImproperlyConfigured(f'CATGA["SCHEDULES"][{name!r}]: {exc}') from exc
    return fields


def check_declared() -> dict[str, dict]:
    """Every declared schedule's row fields; ImproperlyConfigured names the first bad one."""
    return {name: _row_fields(name, spec) for name, spec in declared().items()}


def sync_declared(now: dt.datetime | None = None) -> None:
    """Make the table hold the schedules declared in code (run_consumer's start, idempotent).

    A declared schedule's row follows its code whenever the code changes; while the code
    stays the same, what the admin edited (enabled, interval, payload) stands. A row whose
    declaration was removed is disabled, not deleted: its history stays readable.
    """
    now = now or timezone.now()
    specs = check_declared()
    for name, fields in specs.items():
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
        with transaction.atomic():
            row = Schedule.objects.select_for_update().filter(pk=name).first()
            if row is not None and row.declared == digest:
                continue
            row = row or Schedule(name=name)
            for key, value in fields.items():
                setattr(row, key, value)
            row.declared = digest
            row.next_run_at = first_tick(row, now)
            try:
                with transaction.atomic():
                    row.save()
            except IntegrityError:  # another replica created it at the same moment: theirs stands
                continue
    gone = Schedule.objects.exclude(declared="").exclude(pk__in=list(specs)).filter(enabled=True)
    for name in gone.values_list("pk", flat=True):
        logger.warning("schedule %s is no longer declared in code: disabled", name)
    gone.update(enabled=False, declared="")


# -- firing ---------------------------------------------------------------------


def _ticks(row: Schedule, now: dt.datetime) -> tuple[list[dt.datetime], int, dt.datetime]:
    """(ticks to fire now, ticks skipped as too old, the next tick after now)."""
    window = now - dt.timedelta(seconds=catga_settings.SCHEDULE_CATCHUP)
    tick, due, skipped = row.next_run_at, [], 0
    if row.every and tick < window:
        # Jump over the misses older than the window without walking them one by one.
        step = dt.timedelta(seconds=row.every)
        skipped = int((window - tick) / step)
        tick += step * skipped
    while tick <= now and len(due) < MAX_CATCHUP_TICKS:
        due.append(tick)
        tick = following(row, tick)
    if tick <= now:  # more than MAX_CATCHUP_TICKS due: resume from now
        tick = following(row, now)
    fire = [t for t in due if t >= window] or due[-1:]  # older misses collapse into the newest
    return fire, skipped + len(due) - len(fire), tick


def tick_id(name: str, tick: dt.datetime) -> str:
    return ids.stable_id(int(tick.timestamp() * 1000), f"schedule:{name}")


def fire_due(post: Post, *, now: dt.datetime | None = None, batch: int = 50) -> int:
    """Fire every due tick of the schedules this replica can claim; returns the ticks fired."""
    now = now or timezone.now()
    fired, calls = 0, []
    with transaction.atomic():
        rows = list(
            Schedule.objects.filter(enabled=True, next_run_at__lte=now)
            .select_for_update(skip_locked=True)
            .order_by("next_run_at")[:batch]
        )
        for row in rows:
            due, skipped, next_tick = _ticks(row, now)
            for tick in due:
                message_id = tick_id(row.name, tick)
                if row.call:
                    calls.append((row.name, row.call))
                else:
                    try:
                        with transaction.atomic():  # a savepoint: an id already stored is that tick, fired
                            post(command(row.message_type, row.payload), message_id=message_id)
                    except IntegrityError:
                        logger.info("tick %s of %s was already sent", message_id, row.name)
                        continue
                    except ValueError as exc:  # the command changed under a stored payload
                        logger.error("schedule %s cannot send %s: %s", row.name, row.message_type, exc)
                        continue
                row.last_message_id = message_id
                fired += 1
            row.last_run_at = due[-1] if due else row.last_run_at
            row.total_runs += len(due)
            row.skipped_runs += skipped
            row.next_run_at = next_tick
            row.save(update_fields=["last_run_at", "last_message_id", "total_runs", "skipped_runs", "next_run_at"])
    # Maintenance runs after the claim committed (a long prune must not hold the row lock);
    # a process dying mid-call leaves it to the next tick, as a missed cron run would.
    for name, path in calls:
        try:
            import_string(path)()
        except Exception:
            logger.exception("schedule %s: %s failed", name, path)
    return fired
