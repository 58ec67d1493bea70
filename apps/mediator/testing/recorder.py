"""What a test sent and published, as typed messages, and scheduled work run on demand."""

import time
from dataclasses import dataclass, field

from apps.mediator.core import codec
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.messages import Kind, Message


@dataclass(frozen=True)
class Recorded:
    envelope: Envelope
    message: Message


@dataclass
class MessageRecorder:
    """Every message handed to the transport while recording, in order.

    Wraps the mediator's transport, so it sees what a real worker would receive: the
    outbox's writes once they are published, scheduled ones when they come due.
    """

    transport: object
    all: list[Recorded] = field(default_factory=list)

    def __post_init__(self):
        self._publish = self.transport.publish
        self.transport.publish = self._recording

    def _recording(self, batch):
        batch = list(batch)
        now = time.time()
        for item in batch:
            envelope = item.envelope
            if envelope.not_before is not None and envelope.not_before > now:
                continue  # not published yet: it waits in the outbox
            self.all.append(Recorded(envelope, codec.decode(envelope.type, item.body)))
        return self._publish(batch)

    def stop(self) -> None:
        self.transport.publish = self._publish

    def of_kind(self, kind: Kind) -> list[Message]:
        return [r.message for r in self.all if r.envelope.kind == kind]

    @property
    def sent(self) -> list[Message]:
        """Commands, in the order they were published."""
        return self.of_kind(Kind.COMMAND)

    @property
    def published(self) -> list[Message]:
        """Events, in the order they were published."""
        return self.of_kind(Kind.EVENT)

    def of_type(self, message_type: type[Message]) -> list[Message]:
        return [r.message for r in self.all if isinstance(r.message, message_type)]
