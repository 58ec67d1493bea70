"""A saga row read with saga_rows.locked and written back with saga_rows.save."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import OperationalError, connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.mediator.models import SagaState
from apps.mediator.storage import saga_rows

pytestmark = pytest.mark.django_db(transaction=True)

ENTRY = {"step": 0, "name": "reserve_stock", "event": "started", "at": "2026-12-07T00:00:00+00:00"}


def saga(**fields) -> SagaState:
    defaults = {"name": "OrderSaga", "correlation_id": "c1", "data": {"order_id": "o1"}, "step_log": [ENTRY]}
    return SagaState.objects.create(**(defaults | fields))


def test_a_step_appends_its_log_entries_and_writes_what_changed():
    row = saga()
    with transaction.atomic():
        state = saga_rows.locked(name="OrderSaga", correlation_id="c1")
        assert (state.pk, state.data, state.step_log) == (row.pk, {"order_id": "o1"}, [ENTRY])
        state.step_log = [*state.step_log, {**ENTRY, "event": "completed"}]
        state.data = {**state.data, "payment_id": 7}
        state.status, state.current_step = SagaState.Status.COMPLETED, 2
        saga_rows.save(state)

    stored = SagaState.objects.get(pk=row.pk)
    assert [e["event"] for e in stored.step_log] == ["started", "completed"]
    assert stored.data == {"order_id": "o1", "payment_id": 7}
    assert (stored.status, stored.current_step) == ("completed", 2)
    assert stored.updated_at > row.updated_at


def test_the_save_sends_only_the_new_entries_and_leaves_unchanged_data_alone():
    saga(step_log=[ENTRY] * 50)  # a long log: rewriting it each step is what this avoids
    with transaction.atomic():
        state = saga_rows.locked(name="OrderSaga", correlation_id="c1")
        state.step_log = [*state.step_log, {**ENTRY, "event": "completed"}]
        with CaptureQueriesContext(connection) as queries:
            saga_rows.save(state)

    [update] = [q["sql"] for q in queries.captured_queries]
    assert "step_log = step_log ||" in update and "data =" not in update
    assert update.count('"reserve_stock"') == 1  # the new entry only
    assert len(SagaState.objects.get().step_log) == 51


def test_changes_made_in_place_are_written_too():
    saga()
    with transaction.atomic():
        state = saga_rows.locked(name="OrderSaga", correlation_id="c1")
        state.step_log.append({**ENTRY, "event": "completed"})
        state.data["payment_id"] = 7
        saga_rows.save(state)

    stored = SagaState.objects.get()
    assert ([e["event"] for e in stored.step_log], stored.data) == (
        ["started", "completed"],
        {"order_id": "o1", "payment_id": 7},
    )


def test_a_rewritten_log_is_written_whole():
    saga(step_log=[ENTRY, {**ENTRY, "event": "completed"}])
    with transaction.atomic():
        state = saga_rows.locked(name="OrderSaga", correlation_id="c1")
        state.step_log = [{**ENTRY, "event": "cancelled"}]
        saga_rows.save(state)

    assert [e["event"] for e in SagaState.objects.get().step_log] == ["cancelled"]


def test_a_missing_row_is_none_and_a_found_row_stays_locked_until_the_transaction_ends():
    assert saga_rows.locked(name="OrderSaga", correlation_id="absent") is None
    row = saga()

    def try_lock() -> str:
        """From another connection (another thread): lock the row without waiting."""
        from django.db import connections

        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM mediator_sagastate WHERE id = %s FOR UPDATE NOWAIT", [row.pk])
            return "locked it"
        except OperationalError:
            return "busy"
        finally:
            connections.close_all()

    with transaction.atomic():
        saga_rows.locked(id=row.pk, name="OrderSaga")
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(try_lock).result() == "busy"
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(try_lock).result() == "locked it"
