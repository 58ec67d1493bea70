"""A saga's row, locked and written back with one plain statement each.

This is the reply handler's path, once per step of every saga. Through the ORM the locked
read and `save()` were 23 % of the orders consumer's CPU (bench/README.md): a compiled
query, and every column written back, the whole step log encoded as JSON again each time.
Here the read is one `SELECT … FOR UPDATE`, and `save` sends the columns a step changes,
`data` only when it changed, and only the new log entries (`step_log || new`).
"""

import functools

import msgspec
from django.db import connection
from django.utils import timezone

from apps.mediator.models import SagaState

FIELDS = list(SagaState._meta.concrete_fields)
ATTNAMES = [f.attname for f in FIELDS]
JSON_FIELDS = {"data", "step_log"}


class _Loaded:
    """What a row held when it was read: `save` writes only what differs.

    Copies, not the row's own objects: a caller that appends to `step_log` or sets a key
    of `data` in place must still have it written."""

    __slots__ = ("data", "step_log")

    def __init__(self, state: SagaState):
        self.data, self.step_log = msgspec.json.encode(state.data), tuple(state.step_log)


def locked(**where) -> SagaState | None:
    """The saga row matching `where` (column=value, ANDed), locked FOR UPDATE; None if absent."""
    with connection.cursor() as cursor:
        cursor.execute(_select(tuple(where)), list(where.values()))
        row = cursor.fetchone()
    if row is None:
        return None
    values = [
        f.from_db_value(value, None, connection) if f.name in JSON_FIELDS else value
        for f, value in zip(FIELDS, row, strict=True)
    ]
    state = SagaState.from_db(connection.alias, ATTNAMES, values)
    state._catga_loaded = _Loaded(state)
    return state


@functools.cache
def _select(names: tuple[str, ...]) -> str:
    """The locked read by these fields, built once per shape (it runs at every saga step)."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in FIELDS)
    condition = " AND ".join(f"{quote(SagaState._meta.get_field(name).column)} = %s" for name in names)
    return f"SELECT {columns} FROM {quote(SagaState._meta.db_table)} WHERE {condition} FOR UPDATE"  # noqa: S608


def save(state: SagaState) -> None:
    """Write back a row that `locked` read; any other (new, or read elsewhere) through the ORM."""
    loaded = getattr(state, "_catga_loaded", None)
    kept = len(loaded.step_log) if loaded is not None else 0
    if loaded is None or tuple(state.step_log[:kept]) != loaded.step_log:
        state.save()  # not read by `locked`, or its log was rewritten rather than appended to
        return
    state.updated_at = timezone.now()
    quote = connection.ops.quote_name
    sets = ["status = %s", "current_step = %s", "reason = %s", "deadline = %s", "timer_attempt = %s", "updated_at = %s"]
    params = [state.status, state.current_step, state.reason, state.deadline, state.timer_attempt, state.updated_at]
    data = msgspec.json.encode(state.data)
    if data != loaded.data:
        sets.append("data = %s::jsonb")
        params.append(data.decode())
    if len(state.step_log) > kept:
        sets.append("step_log = step_log || %s::jsonb")
        params.append(msgspec.json.encode(state.step_log[kept:]).decode())
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(SagaState._meta.db_table)} SET {', '.join(sets)} WHERE id = %s",  # noqa: S608
            [*params, state.pk],
        )
    state._catga_loaded = _Loaded(state)
