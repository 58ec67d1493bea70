"""Django's PostgreSQL backend, with the outbox writes of a transaction sent as one INSERT.

`send` and `publish` inside a transaction add their outbox rows to the connection's
buffer (`history.store_outgoing`); the buffer is written in one statement before any
other statement runs on the connection (so the transaction reads its own writes and
savepoints keep their meaning) and before the commit. A rollback drops it.
A request or handler that sends several messages makes one round trip, not several.
"""

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.catga_outbox: list = []
        self.execute_wrappers.append(_outbox_first)

    def _commit(self):
        flush_outbox(self)
        return super()._commit()

    def _rollback(self):
        self.catga_outbox.clear()
        return super()._rollback()

    def _close(self):
        self.catga_outbox.clear()
        return super()._close()


def flush_outbox(connection) -> None:
    if connection.catga_outbox:
        from apps.mediator.storage import history

        rows, connection.catga_outbox = connection.catga_outbox, []
        history.insert_outgoing(rows, connection)


def _outbox_first(execute, sql, params, many, context):
    flush_outbox(context["connection"])
    return execute(sql, params, many, context)
