"""The pipeline of behaviors that wraps every handler, like Django's MIDDLEWARE.

A behavior is a callable `behavior(message, ctx, call_next)` that does something
around `call_next(message, ctx)` and returns its result. They are listed in
CATGA["BEHAVIORS"], outermost first.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from apps.mediator.core.envelope import Envelope
    from apps.mediator.core.messages import Message
    from apps.mediator.core.registry import HandlerSpec


@dataclass
class HandlerContext:
    """What a handler knows about the delivery it is running in."""

    envelope: "Envelope"
    handler: "HandlerSpec"
    # The mediator to send, publish and ask through (handlers never import the runtime).
    mediator: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def attempt(self) -> int:
        return self.envelope.attempt

    @property
    def message_id(self) -> str:
        return self.envelope.id

    @property
    def correlation_id(self) -> str:
        return self.envelope.correlation_id


Behavior = Callable[["Message", HandlerContext, Callable], Any]


class Pipeline:
    def __init__(self, behaviors: Sequence[Behavior]):
        self.behaviors = tuple(behaviors)

    @classmethod
    def from_paths(cls, paths: Sequence[str]) -> "Pipeline":
        return cls([import_string(path)() for path in paths])

    def run(self, message: "Message", ctx: HandlerContext) -> Any:
        behaviors = self.behaviors
        handler = ctx.handler.func

        def call(index: int, msg: "Message", c: HandlerContext) -> Any:
            if index == len(behaviors):
                return handler(msg, c)
            return behaviors[index](msg, c, lambda m, cc: call(index + 1, m, cc))

        return call(0, message, ctx)
