"""Rate limits held across every replica, in PostgreSQL: a schedule of start slots per type.

Each message of a limited type takes the next free slot (1/rate seconds after the one
before) in one UPDATE of its type's row; the row lock orders the replicas, and the database's
clock is the one clock they share. A message whose slot is now starts; one whose slot lies
ahead records the reservation and is redelivered when its slot comes, then starts without
taking another. So the starts are spaced exactly, whichever replica fetches what, a
message over the limit waits its turn (never dropped, no attempt spent), and a replica
killed while holding reservations leaves them to the redeliveries of its messages.
Reservations left by messages that went elsewhere are deleted by prune_messages.
"""

from django.db import connection, transaction

EARLY = 0.01  # seconds: a redelivery this close to its slot starts (the broker's timers are not exact)

# The tables of models.RateLimit and models.RateReservation.
_HELD = "SELECT EXTRACT(EPOCH FROM slot_at - clock_timestamp()) FROM mediator_ratereservation WHERE message_id = %s"
_FORGET = "DELETE FROM mediator_ratereservation WHERE message_id = %s"
_ROW = "INSERT INTO mediator_ratelimit (key, next_slot_at) VALUES (%s, clock_timestamp()) ON CONFLICT (key) DO NOTHING"
_TAKE = (
    "UPDATE mediator_ratelimit SET next_slot_at = GREATEST(next_slot_at, clock_timestamp()) + make_interval(secs => %s)"
    " WHERE key = %s RETURNING next_slot_at - make_interval(secs => %s),"
    " EXTRACT(EPOCH FROM next_slot_at - make_interval(secs => %s) - clock_timestamp())"
)
_RESERVE = "INSERT INTO mediator_ratereservation (message_id, key, slot_at) VALUES (%s, %s, %s)"
STALE = "DELETE FROM mediator_ratereservation WHERE slot_at < clock_timestamp() - interval '1 hour'"


def acquire(key: str, per_second: float, message_id: str) -> float:
    """Seconds `message_id` must wait before it may start (0: start now)."""
    step = 1.0 / per_second
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_HELD, [message_id])
        held = cursor.fetchone()
        if held is not None:  # a redelivery at (or near) the slot it reserved
            wait = float(held[0])
            if wait > EARLY:
                return wait
            cursor.execute(_FORGET, [message_id])
            return 0.0
        cursor.execute(_ROW, [key])
        cursor.execute(_TAKE, [step, key, step, step])
        slot_at, wait = cursor.fetchone()
        if float(wait) <= EARLY:
            return 0.0
        cursor.execute(_RESERVE, [message_id, key, slot_at])
        return float(wait)


def forget_stale() -> int:
    with connection.cursor() as cursor:
        cursor.execute(STALE)
        return cursor.rowcount
