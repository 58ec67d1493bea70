"""`manage.py nats_permissions`: the nats-server users of the app, one per role, generated
from the handler registry (what each context handles, publishes and SENDS).

    manage.py nats_permissions > k8s/base/nats/permissions.conf   # passwords as $NATS_PASSWORD_<ROLE>
    manage.py nats_permissions --format json                     # the same, for other tools
"""

import json

from django.core.management.base import BaseCommand

from apps.mediator.runtime import get_registry
from apps.mediator.transports.nats import permissions


class Command(BaseCommand):
    help = "Print the nats-server configuration (users, permissions, max_payload) the roles need."

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=["conf", "json"], default="conf")

    def handle(self, *args, format, **options):
        registry = get_registry()
        if format == "json":
            users = [{k: v for k, v in u.items() if k != "password"} for u in permissions.users(registry)]
            self.stdout.write(json.dumps({"max_payload": permissions.max_payload(), "users": users}, indent=2))
        else:
            self.stdout.write(permissions.server_config(registry), ending="")
