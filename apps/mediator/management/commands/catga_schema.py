"""`manage.py catga_schema`: the message contract for services in other languages.

    manage.py catga_schema                                   # AsyncAPI 3.0 (JSON) of the whole bus
    manage.py catga_schema --format jsonschema               # every message's body and headers
    manage.py catga_schema --output docs/asyncapi.json       # to a file instead of stdout

Both are generated from the handler registry (apps.mediator.core.schema and
apps.mediator.transports.nats.asyncapi); docs/wire-format.md explains them.
"""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.mediator.core import schema
from apps.mediator.runtime import get_registry
from apps.mediator.transports.nats import asyncapi

FORMATS = ("asyncapi", "jsonschema")


class Command(BaseCommand):
    help = "Export every message type as JSON Schema, or the whole bus as an AsyncAPI 3.0 document."

    def add_arguments(self, parser):
        parser.add_argument("--format", default="asyncapi", help=f"one of {', '.join(FORMATS)} (default asyncapi)")
        parser.add_argument("--output", help="write to this file instead of stdout")

    def handle(self, *args, format, output, **options):
        # Checked here, not by argparse `choices`, so call_command() raises a CommandError naming it too.
        if format not in FORMATS:
            raise CommandError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
        registry = get_registry()
        document = asyncapi.document(registry) if format == "asyncapi" else schema.json_schema(registry)
        text = json.dumps(document, indent=2, sort_keys=False) + "\n"
        if not output:
            self.stdout.write(text, ending="")
            return
        path = Path(output)
        if not path.parent.is_dir():
            raise CommandError(f"--output {output!r}: folder {str(path.parent)!r} does not exist")
        path.write_text(text, encoding="utf-8")
        self.stderr.write(f"wrote {format} to {output}")
