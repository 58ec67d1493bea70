"""The admin's "Workers" page: one read-only row per run_consumer process, live or gone."""

import datetime as dt
import io

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.utils import timezone

from apps.mediator.models import WorkerHeartbeat

pytestmark = pytest.mark.django_db

WORKERS = "/admin/mediator/workerheartbeat/"


def heartbeat(pid: int, *, age: float, interval: float = 10.0, **fields) -> WorkerHeartbeat:
    now = timezone.now()
    return WorkerHeartbeat.objects.create(
        id=f"pod-{pid}:{pid}:01J",
        host=f"catga-worker-{pid}",
        pid=pid,
        contexts=["inventory", "payments"],
        concurrency=8,
        interval=interval,
        started_at=now - dt.timedelta(hours=1),
        last_beat_at=now - dt.timedelta(seconds=age),
        **fields,
    )


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("ops", password="pw-ops-12345", is_staff=True)


def test_staff_with_view_permission_see_every_worker_live_or_gone(client, staff):
    staff.user_permissions.set(Permission.objects.filter(codename="view_workerheartbeat"))
    client.force_login(staff)
    heartbeat(101, age=2, handled=1234, in_flight=3, throughput=41.5)
    heartbeat(202, age=31)  # silent for more than 3 intervals: gone

    response = client.get(WORKERS)

    assert response.status_code == 200
    html = response.content.decode()
    assert "<title>Workers" in html
    for header in ["Host", "Pid", "Contexts", "Concurrency", "Started", "Last beat", "Live", "In flight", "Handled"]:
        assert f">{header}<" in html, header
    rows = {w.pid: tr for tr in html.split("<tr")[1:] for w in WorkerHeartbeat.objects.all() if w.host in tr}
    assert "inventory, payments" in rows[101] and "1234" in rows[101] and "41.5/s" in rows[101]
    assert 'alt="True"' in rows[101] and 'alt="False"' in rows[202]
    assert "Add worker" not in html


def test_the_page_is_forbidden_without_the_view_permission(client, staff):
    client.force_login(staff)
    assert client.get(WORKERS).status_code == 403


def test_workers_cannot_be_added_changed_or_deleted(admin_client):
    worker = heartbeat(303, age=1)
    assert admin_client.get(WORKERS + "add/").status_code == 403
    assert admin_client.post(WORKERS + f"{quote(worker.pk)}/delete/").status_code == 403
    assert WorkerHeartbeat.objects.filter(pk=worker.pk).exists()


def test_catga_inspect_prints_the_same_table_for_kubectl_exec():
    heartbeat(101, age=2, handled=1234)
    heartbeat(202, age=31)
    out = io.StringIO()

    call_command("catga_inspect", stdout=out)

    lines = {line.split()[0]: line for line in out.getvalue().splitlines() if line.startswith("catga-worker-")}
    assert "yes" in lines["catga-worker-101"] and "1234" in lines["catga-worker-101"]
    assert "GONE" in lines["catga-worker-202"]


def test_drain_and_resume_need_their_permission_and_set_the_flag_the_worker_reads(client, staff):
    from apps.mediator.storage import workers

    row = heartbeat(7, age=1.0)
    staff.user_permissions.set(Permission.objects.filter(codename="view_workerheartbeat"))
    client.force_login(staff)
    page = client.get(WORKERS).content.decode()
    assert "Drain: stop fetching" not in page  # viewing is not draining
    client.post(WORKERS, {"action": "drain", "_selected_action": [row.pk]})
    assert not WorkerHeartbeat.objects.get(pk=row.pk).drain

    staff.user_permissions.add(Permission.objects.get(codename="drain_worker"))
    assert "Drain: stop fetching" in client.get(WORKERS).content.decode()
    client.post(WORKERS, {"action": "drain", "_selected_action": [row.pk]})
    assert WorkerHeartbeat.objects.get(pk=row.pk).drain
    assert workers.beat(row.pk, {"paused": True}) is True  # what the worker's next beat reads
    assert "drained" in client.get(WORKERS).content.decode()
    client.post(WORKERS, {"action": "resume", "_selected_action": [row.pk]})
    assert workers.beat(row.pk, {"paused": False}) is False
