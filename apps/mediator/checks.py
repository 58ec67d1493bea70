"""django-health-check checks of the mediator, for the web's /health/live and /health/ready.

Each check has its own short timeout: a readiness probe must answer before the
kubelet gives up on it (timeoutSeconds 3), never hang a request thread on a
broken dependency.
"""

import dataclasses
import datetime

from health_check import HealthCheck
from health_check import checks as builtin
from health_check.exceptions import ServiceUnavailable

from apps.mediator.runtime import get_mediator


@dataclasses.dataclass
class Process(HealthCheck):
    """Liveness: the process answers. Nothing else, so a database or NATS outage never restarts a pod."""

    async def run(self) -> None:
        return None


@dataclasses.dataclass
class Database(builtin.Database):
    """SELECT 1 on the database, within the probe's budget."""

    timeout = datetime.timedelta(seconds=2)


@dataclasses.dataclass
class Nats(HealthCheck):
    """The process's transport is connected and its topology exists (NATS: the streams; nothing in memory)."""

    timeout = datetime.timedelta(seconds=2)

    def run(self) -> None:
        # The in-memory transport has no server to lose: its probe finds nothing wrong.
        problems = get_mediator().transport.probe(self.timeout.total_seconds() * 0.75)
        if problems:
            raise ServiceUnavailable("; ".join(problems))
