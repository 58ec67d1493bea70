"""The benchmark's messages: commands whose handlers do nothing, so what is measured is the mediator."""

from apps.mediator.core.messages import Command, QoS


class DoNothing(Command):
    """At-least-once (the default QoS)."""

    n: int = 0

    class Meta:
        context = "bench"


class DoNothingOnce(Command):
    """Exactly-once: its handler runs in one transaction with its inbox record."""

    n: int = 0

    class Meta:
        context = "bench"
        qos = QoS.EXACTLY_ONCE
