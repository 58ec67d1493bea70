"""Pipeline behaviors shipped with the mediator."""

import logging
import time

from apps.mediator.core import codec

logger = logging.getLogger("catga.handler")


class LoggingBehavior:
    """One line per handling, with the ids a support person searches by."""

    def __call__(self, message, ctx, call_next):
        env = ctx.envelope
        extra = {
            "message_id": env.id,
            "correlation_id": env.correlation_id,
            "message_type": env.type,
            "handler": ctx.handler.name,
            "attempt": env.attempt,
        }
        start = time.perf_counter()
        try:
            result = call_next(message, ctx)
        except Exception as exc:
            logger.warning(
                "%s failed in %s (attempt %d): %r", env.type, ctx.handler.name, env.attempt, exc, extra=extra
            )
            raise
        if logger.isEnabledFor(logging.DEBUG):
            ms = (time.perf_counter() - start) * 1000
            logger.debug("%s handled by %s in %.1f ms", env.type, ctx.handler.name, ms, extra=extra)
        return result


class ValidationBehavior:
    """Reject a message that breaks its schema before the handler sees it."""

    def __call__(self, message, ctx, call_next):
        codec.validated(message)
        return call_next(message, ctx)
