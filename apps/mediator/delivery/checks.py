"""What the dispatcher checks about a delivery: forged ids, whether it keeps an inbox, lock contention."""

from typing import Any

import msgspec
from django.db import OperationalError

from apps.mediator.core import codec
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.messages import Message, QoS
from apps.mediator.models import Message as MessageRow
from apps.mediator.storage import history, inbox


def forged(claim: inbox.Claim, envelope: Envelope, message: Message) -> bool:
    if claim.stored_type == envelope.type and claim.stored_payload == codec.to_payload(message):
        return False  # the common case, without building the stored message
    stored = MessageRow(id=envelope.id, type=claim.stored_type, payload=claim.stored_payload)
    return bool(not_the_stored(stored, envelope, message))


def not_the_stored(stored: MessageRow, envelope: Envelope, message: Message) -> str:
    """Why a message whose id the history already holds is not that message ("" when it is).

    The inbox is keyed by message id, so a copy reusing the id of another message (of
    another type, or with another body) must be neither applied in its place nor
    acknowledged as if it had been.
    """
    if stored.type != envelope.type:
        return f"forged message id: {envelope.id} names a {stored.type}, not a {envelope.type}"
    try:
        original = msgspec.convert(stored.payload, type(message))
    except msgspec.ValidationError:
        return ""  # recorded by another version of the type: the id is all there is to go on
    if original != message:
        return f"forged message id: {envelope.id} names a {stored.type} with another body"
    return ""


def inbox_on(envelope: Envelope, message: Message) -> bool:
    """Whether this delivery writes its history rows (Message + Delivery, the inbox)."""
    return envelope.qos is QoS.EXACTLY_ONCE or message.options.external_effects or history.recording()


def lock_busy(exc: BaseException) -> bool:
    """The inbox lock is held by another copy: InboxBusy, or lock_not_available from FOR UPDATE NOWAIT."""
    if isinstance(exc, inbox.InboxBusy):
        return True
    return isinstance(exc, OperationalError) and getattr(exc.__cause__, "sqlstate", None) == "55P03"


def jsonable(value: Any) -> Any:
    if value is None:
        return None
    try:
        return msgspec.to_builtins(value, str_keys=True, enc_hook=str)
    except TypeError:
        return repr(value)


def lock_conflict(exc: BaseException) -> bool:
    """PostgreSQL broke a lock cycle (deadlock_detected) or a serialization conflict.

    In a group commit the cycle can be of the group's own making (one transaction taking
    several handlers' row locks, in their order), so it says nothing about the handler.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "sqlstate", None) in ("40P01", "40001"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
