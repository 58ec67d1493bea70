"""Telling a database outage from a handler's own failure.

A delivery that cannot reach PostgreSQL has not been tried: its handler never ran, or
ran into the same wall. Such a failure must cost no attempt, write nothing (nothing can
be written) and be retried for as long as the outage lasts, so a managed database's
failover delays work instead of dead-lettering it and cancelling orders.

Each process also remembers when it last found the database away (`last_seen`): a saga
step whose window overlapped an outage had no fair chance to run, and its timer re-arms
instead of cancelling (orchestration/sagas.py). The memory is the process's own; after a
restart only a timer's lateness tells.
"""

import time

from django.db import InterfaceError, OperationalError

# SQLSTATE classes and codes that mean "the server is not there (yet)", not "your query is wrong".
_UNAVAILABLE_CLASSES = ("08",)  # connection exception
_UNAVAILABLE_CODES = {
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, recovering)
    "53300",  # too_many_connections
    "25006",  # read_only_sql_transaction: a failover's old primary, or a standby promoted late
}


_last_seen = 0.0


def last_seen() -> float:
    """When (epoch seconds) this process last found the database unreachable; 0.0: never."""
    return _last_seen


def unavailable(exc: BaseException) -> bool:
    """Whether `exc`, or what caused it, says the database could not be reached or used at all
    (and, when it does, remembers the time for `last_seen`)."""
    global _last_seen
    if _classify(exc):
        _last_seen = time.time()
        return True
    return False


def _classify(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, InterfaceError):  # a connection already closed under us
            return True
        if isinstance(exc, OperationalError):
            sqlstate = getattr(exc.__cause__, "sqlstate", None)
            if sqlstate is None:  # psycopg gives none when no server answered (refused, reset, timed out)
                return True
            return sqlstate.startswith(_UNAVAILABLE_CLASSES) or sqlstate in _UNAVAILABLE_CODES
        exc = exc.__cause__ or exc.__context__
    return False
