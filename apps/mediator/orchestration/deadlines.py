"""The sagas' step deadlines: the consumers' sweep that turns a passed one into a Timeout.

A running step's deadline is a column of its saga's row (`SagaState.deadline`, set and
cleared by the saga engine as steps start and settle). Every `run_consumer` with the relay
calls `fire_due` about once a second (and the in-memory transport's `run_due` in tests);
the Timeout it writes goes through the outbox like any command, to the saga's context.
"""

import datetime as dt
from collections.abc import Collection

from django.db import transaction
from django.utils import timezone

from apps.mediator.models import SagaState
from apps.mediator.orchestration import sagas

BATCH = 100  # due deadlines fired per sweep transaction


def fire_due(post, *, types: Collection[str] | None = None, now: dt.datetime | None = None) -> int:
    """Send the Timeout command of every saga step whose deadline passed; how many were sent.

    The consumers' sweep (and the in-memory transport's `run_due`). Rows are claimed with
    SKIP LOCKED and their deadline cleared in the transaction that writes the command to
    the outbox, so replicas share the work and each deadline fires once. `post` is the
    mediator's; `types`: the wire names this process may publish (None: any).
    """
    known = sagas.known()
    names = [name for name, cls in known.items() if types is None or cls.Timeout.options.wire_name in types]
    if not names:
        return 0
    now = now or timezone.now()
    fired = 0
    while True:
        with transaction.atomic():
            due = SagaState.objects.filter(name__in=names, deadline__lte=now).order_by("deadline")
            fields = ("id", "name", "correlation_id", "current_step", "deadline", "timer_attempt")
            rows = list(due.select_for_update(skip_locked=True).only(*fields)[:BATCH])
            for row in rows:
                timeout = known[row.name].Timeout(
                    saga_id=row.pk, step=row.current_step, attempt=row.timer_attempt, due=row.deadline.timestamp()
                )
                post(timeout, correlation_id=row.correlation_id)
            SagaState.objects.filter(pk__in=[row.pk for row in rows]).update(deadline=None)
        fired += len(rows)
        if len(rows) < BATCH:
            return fired
