"""`manage.py run_consumer`: handle the chosen contexts' messages from the configured transport."""

import asyncio

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from apps.mediator.consumer.worker import Worker
from apps.mediator.core import limits, routing
from apps.mediator.core.conf import catga_settings
from apps.mediator.runtime import get_mediator, get_registry
from apps.mediator.storage import schedules


class Command(BaseCommand):
    help = (
        "Run a worker: fetch the commands and events of the given contexts (all by default) from NATS "
        "JetStream and run their handlers. Stops gracefully on SIGTERM/SIGINT."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--context",
            action="append",
            dest="contexts",
            metavar="NAME",
            help="A context to serve; repeat for several. Default: every context.",
        )
        parser.add_argument(
            "--concurrency", type=int, default=None, help="Handler threads (default CATGA['CONCURRENCY'])."
        )
        parser.add_argument(
            "--health-port", type=int, default=None, help="Serve /health/live, /health/ready and /metrics on this port."
        )
        parser.add_argument(
            "--queue",
            action="append",
            dest="queues",
            metavar="NAME",
            help="Consume only this queue (CATGA['ROUTES'], Meta.queue; 'default' for the rest); repeat for "
            "several. Default: every queue of the contexts.",
        )
        parser.add_argument("--no-relay", action="store_true", help="Do not run the outbox relay in this process.")

    def handle(self, *args, contexts, concurrency, health_port, no_relay, queues=None, **options):
        registry = get_registry()
        known = list(registry.contexts)
        contexts = contexts or known
        unknown = [c for c in contexts if c not in known]
        if unknown:
            raise CommandError(f"unknown context(s): {', '.join(unknown)}; choose from {', '.join(known)}")
        concurrency = concurrency or catga_settings.CONCURRENCY
        if concurrency < 1:
            raise CommandError("--concurrency must be at least 1")
        if health_port is not None and not 0 <= health_port <= 65535:
            raise CommandError("--health-port must be between 0 and 65535")
        problems = limits.check() + routing.check()
        if problems:
            raise CommandError("; ".join(problems))
        if not no_relay:
            try:  # a bad CATGA["SCHEDULES"] entry stops the start, named, not every tick later
                schedules.check_declared()
            except ImproperlyConfigured as exc:
                raise CommandError(str(exc)) from exc
        # The process-wide mediator's transport, so handlers' sends share the worker's connection.
        mediator = get_mediator()
        worker = Worker(
            mediator.dispatcher,
            mediator.transport,
            contexts,
            concurrency=concurrency,
            health_port=health_port,
            relay=not no_relay,
            queues=queues,
        )
        try:
            asyncio.run(worker.run())
        except NotImplementedError as exc:
            raise CommandError(f"run_consumer needs a transport with consumers (CATGA_TRANSPORT): {exc}") from exc
        except ConnectionError as exc:
            raise CommandError(str(exc)) from exc
        except TimeoutError as exc:  # an OSError too: NATS's own (nats.errors.TimeoutError) is one
            raise CommandError(f"NATS did not answer while starting: {exc!r}") from exc
        except OSError as exc:  # the health port is taken
            raise CommandError(f"cannot serve the health port {health_port}: {exc}") from exc
