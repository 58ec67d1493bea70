"""The delivery being handled right now, so messages sent from inside a handler
(or from a service it calls) carry the correct causation and correlation ids."""

import contextvars

from apps.mediator.core.envelope import Envelope

current_envelope: contextvars.ContextVar[Envelope | None] = contextvars.ContextVar(
    "catga_current_envelope", default=None
)
