"""Django's connection hygiene for the threads that are not requests: the handler threads,
the consumer's sweeps, the publishers' threads that mark rows published."""

import threading
import time

from django.db import close_old_connections, connection

HYGIENE_INTERVAL = 1.0  # seconds between a thread's close_old_connections() while it is busy
_thread = threading.local()


def hygiene() -> None:
    """close_old_connections() at most every HYGIENE_INTERVAL in this thread, at once after a database error.

    It is what Django does around a request, and with CONN_HEALTH_CHECKS it makes the next
    query a health check (a round trip): a thread marking rows published after every
    publish, or a loop sweeping every second, pays it once a second, not per batch.
    """
    now = time.monotonic()
    if connection.errors_occurred or now - getattr(_thread, "at", 0.0) >= HYGIENE_INTERVAL:
        _thread.at = now
        close_old_connections()
