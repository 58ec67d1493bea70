"""The one application error hierarchy.

It is mapped to the outside world in exactly two places: the DRF exception handler
(`apps.mediator.api.errors`) turns it into HTTP statuses, and the dispatcher turns
it into a delivery outcome (retry, or dead letter without retries).
"""


class CatgaError(Exception):
    """Base of every error the application raises on purpose."""


class TransientError(CatgaError):
    """Worth retrying: the same message may succeed later (a provider timeout)."""


class PermanentError(CatgaError):
    """Retrying cannot help: the message goes to the dead letters at once."""


class ValidationFailed(PermanentError):
    """The message or request is invalid; `errors` maps field names to messages."""

    def __init__(self, errors: dict | str):
        self.errors = errors if isinstance(errors, dict) else {"non_field_errors": [errors]}
        super().__init__(self.errors)


class NotFound(PermanentError):
    """The thing asked for does not exist."""


class Conflict(PermanentError):
    """The request contradicts the current state (a reused idempotency key, say)."""


class NoHandler(PermanentError):
    """A message type that no registered handler accepts."""


class UndecodableMessage(PermanentError):
    """Bytes or headers that cannot be turned into a known, valid message."""


class AttemptsExhausted(PermanentError):
    """Delivered more often than allowed without ever settling (the worker died handling it)."""
