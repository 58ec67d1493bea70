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
    """The process's NATS connection is up and the app's streams exist (nothing to check in memory)."""

    timeout = datetime.timedelta(seconds=2)

    def run(self) -> None:
        from apps.mediator.runtime import get_mediator

        probe = getattr(get_mediator().transport, "probe", None)
        if probe is None:
            return  # the in-memory transport has no server to lose
        problems = probe(self.timeout.total_seconds() * 0.75)
        if problems:
            raise ServiceUnavailable("; ".join(problems))
