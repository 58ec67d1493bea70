"""The transport interface: how envelopes leave a process and reach handlers.

A transport is chosen by CATGA["TRANSPORT"], never by code. Senders call
`publish` after their transaction commits; it must not block a request on the
network (a transport that talks to a server hands the batch to its own thread and
leaves anything it could not send to the outbox relay).
"""

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from apps.mediator.envelope import Envelope


@dataclass(frozen=True)
class Outgoing:
    envelope: Envelope
    body: bytes
    # JetStream de-duplication key when it must differ from the message id (a replay).
    dedupe_id: str | None = None

    def headers(self) -> dict[str, str]:
        headers = self.envelope.to_headers()
        if self.dedupe_id:
            headers["Nats-Msg-Id"] = self.dedupe_id
        return headers


class Transport(abc.ABC):
    @abc.abstractmethod
    def publish(self, batch: Sequence[Outgoing]) -> None:
        """Hand committed messages over for delivery."""

    def close(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Release connections; called at process exit."""
