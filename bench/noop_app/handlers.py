"""Handlers that do nothing: the cost measured is the mediator's, not the handler's."""

from bench.noop_app.contracts import DoNothing, DoNothingOnce


def do_nothing(command, ctx) -> None:
    return None


COMMANDS = {DoNothing: do_nothing, DoNothingOnce: do_nothing}
