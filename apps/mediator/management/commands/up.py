"""`manage.py up`: the whole stack on a laptop, in one command (what `make run` runs)."""

import contextlib
import os
import subprocess
import sys

from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Migrate, load demo data and serve the API and admin (single process, in-memory transport)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--host", default="127.0.0.1")

    def handle(self, *args, port, host, **options):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_demo")
        self.stdout.write(f"Serving on http://{host}:{port}/  (API under /api/, admin at /admin/)")
        # runserver in a child keeps Ctrl-C handling and autoreload out of this process.
        with contextlib.suppress(KeyboardInterrupt):
            subprocess.run([sys.executable, "manage.py", "runserver", f"{host}:{port}", "--noreload"], check=False)
