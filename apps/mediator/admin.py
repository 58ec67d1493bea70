"""The operations console in the admin, wired to this process's mediator.

Django's admin autodiscovery imports this module: the console's pages register their
ModelAdmins as they load (apps.mediator.console), and the console is told where the
mediator comes from, so its replays and dashboard use the process's transport.
"""

from apps.mediator import runtime
from apps.mediator.console import dead_letters, extensions, history, sagas, schedules, tokens, workers

extensions.use_mediator(lambda: runtime.get_mediator())  # looked up per call: tests swap it

__all__ = ["dead_letters", "history", "sagas", "schedules", "tokens", "workers"]
