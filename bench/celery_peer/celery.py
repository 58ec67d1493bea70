"""The peer's Celery app: configured from Django's settings (the CELERY_ namespace), tasks autodiscovered."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.celery_peer.settings")

app = Celery("celery_peer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
