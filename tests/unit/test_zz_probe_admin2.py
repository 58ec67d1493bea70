import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from apps.mediator.models import SagaState
from tests.unit.test_admin_dead_letters import stalled_order, undecodable, choose_replay, DEAD

pytestmark = pytest.mark.django_db(transaction=True)

def count(client, method, url, data=None):
    with CaptureQueriesContext(connection) as q:
        r = getattr(client, method)(url, data) if data is not None else getattr(client, method)(url)
    return r.status_code, len(q.captured_queries)

def test_probe_counts(api, catalogue, monkeypatch, client, django_user_model):
    from django.contrib.auth.models import Permission
    u = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    u.user_permissions.set(Permission.objects.filter(codename__in=["view_message","view_delivery","view_order","view_sagastate","replay_message"]))
    client.force_login(u)
    stalled = [stalled_order(api, monkeypatch) for _ in range(20)]
    broken = [undecodable() for _ in range(20)]
    ids = [c.pk for _, c in stalled] + [b.pk for b in broken]
    client.get(DEAD); client.get("/admin/mediator/sagastate/")
    print("RES dead list (40 rows)", count(client, "get", DEAD))
    print("RES dead list search", count(client, "get", DEAD + "?q=" + stalled[0][0].id))
    with CaptureQueriesContext(connection) as q:
        r = choose_replay(client, ids)
    print("RES confirmation (40)", r.status_code, len(q.captured_queries))
    print("RES one confirm page", count(client, "get", f"{DEAD}{ids[0]}/replay/"))
    print("RES saga list (20)", count(client, "get", "/admin/mediator/sagastate/"))
    st = SagaState.objects.first()
    print("RES saga detail", count(client, "get", f"/admin/mediator/sagastate/{st.pk}/change/"))
    print("RES saga search order", count(client, "get", "/admin/mediator/sagastate/?q=" + stalled[0][0].id))
    print("RES conversation", count(client, "get", f"/admin/mediator/message/conversation/{st.correlation_id}/"))
    print("RES message detail", count(client, "get", f"/admin/mediator/message/{ids[0]}/change/"))
