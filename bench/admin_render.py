"""Render times of the message history admin at 200,000 rows (list pages and the dashboard).

    python bench/admin_render.py [--rows 200000] [--repeat 7]

Builds a throw-away embedded PostgreSQL database (or uses DATABASE_URL), fills it with the same
generator as tests/unit/test_admin_scale.py, and renders each page through Django's
test client as a staff user with view permissions, printing the median and best time
and the number of queries. Numbers, not assertions: the tests assert query counts.
"""

import argparse
import atexit
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN_STATIC = "django.contrib.staticfiles.storage.StaticFilesStorage"
PAGES = [
    ("message list", "/admin/mediator/message/"),
    ("list, page 20", "/admin/mediator/message/?p=20"),
    ("list, dead letters", "/admin/mediator/message/?status=dead"),
    ("list, type + kind", "/admin/mediator/message/?type=payments.ChargePayment&kind=command"),
    ("list, kind", "/admin/mediator/message/?kind=event"),
    ("list, context", "/admin/mediator/message/?context=inventory"),
    ("list, search by id", "/admin/mediator/message/?q={correlation_id}"),
    ("conversation", "/admin/mediator/message/conversation/{correlation_id}/"),
    ("message detail", "/admin/mediator/message/{message_id}/change/"),
    ("dashboard", "/admin/mediator/message/dashboard/"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--db", help="a folder for the embedded PostgreSQL, kept (reused when it holds the rows)")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="catga-bench-")
    if not os.environ.get("DATABASE_URL"):
        from apps.mediator.servers.ports import free_port
        from apps.mediator.servers.postgres import EmbeddedPostgres

        folder = Path(args.db or workdir) / "postgres"
        embedded = EmbeddedPostgres(folder, host="127.0.0.1", port=free_port(), database="bench").start()
        os.environ["DATABASE_URL"] = embedded.url()
        atexit.register(embedded.stop)
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-a-secret")
    os.environ.setdefault("CATGA_DATA_DIR", workdir)
    # Nothing is collected; whitenoise wants a folder, one without the database's socket in it.
    static = Path(workdir) / "static"
    static.mkdir()
    os.environ.setdefault("DJANGO_STATIC_ROOT", str(static))
    os.environ["CATGA_TRANSPORT"] = "memory"
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ.setdefault("DJANGO_SECURE_SSL_REDIRECT", "0")  # the test client speaks plain HTTP
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catga_site.settings")

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import Permission, User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings, setup_test_environment

    from apps.mediator.models import Message
    from tests.unit.test_admin_scale import generate_history

    setup_test_environment()  # lets the test client's host through ALLOWED_HOSTS
    # Production settings want collected, hashed static files; the pages only need their URLs.
    override_settings(STORAGES={**settings.STORAGES, "staticfiles": {"BACKEND": PLAIN_STATIC}}).enable()
    call_command("migrate", verbosity=0)
    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}")
    if not Message.objects.exists():
        started = time.perf_counter()
        generate_history(args.rows)
        print(f"generated {args.rows} messages in {time.perf_counter() - started:.1f} s")
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # planner statistics, as autovacuum keeps them in production
    print(f"history: {Message.objects.count()} messages")

    user, _ = User.objects.get_or_create(username="bench", defaults={"is_staff": True})
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_message", "view_delivery", "view_order"]))
    client = Client()
    client.force_login(user)
    sample = Message.objects.filter(type="payments.ChargePayment").only("id", "correlation_id").first()
    ids = {"correlation_id": sample.correlation_id, "message_id": sample.id}

    print(f"\n{'page':<22} {'median ms':>10} {'best ms':>9} {'queries':>8}")
    for name, template in PAGES:
        url = template.format(**ids)
        client.get(url)  # warm caches: templates, the SQLite page cache
        times = []
        for _ in range(args.repeat):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{url} answered {response.status_code}")
        print(f"{name:<22} {statistics.median(times):>10.1f} {min(times):>9.1f} {len(queries):>8}")


if __name__ == "__main__":
    main()
