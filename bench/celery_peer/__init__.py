"""The Celery peer: the order saga written the way a Django team writes it with Celery.

A Django project of its own (settings `bench.celery_peer.settings`, its own database), never
imported by the app: `bench/run.py` measures it beside ours (`--only celery_saga`). The app
is loaded with Django, as the Celery docs do it, so `shared_task` binds to it.
"""

from .celery import app as celery_app

__all__ = ["celery_app"]
