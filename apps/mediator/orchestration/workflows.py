"""Celery-style chains and groups, for ad-hoc workflows where a saga is too much.

    from apps.mediator import chain, group    # bound to the process's mediator

    handle = chain(ReserveStock(...), ChargePayment(...), ConfirmOrder(...))
    handle = group([ReserveStock(...) for ...], callback=NotifyWarehouse(...))
    handle.wait(timeout=30)      # the members' results, or WorkflowFailed

A chain sends each command when the previous one's handler succeeded; the first
member that ends dead fails the chain and nothing after it is sent. A group sends
all members at once and its callback when the last one succeeded; its counter
lives in the database (a Workflow row locked per member), not in a worker's memory,
so members handled by different processes — or a worker restart — cannot lose a
count. Progress is made in the member handler's own transaction.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from django.db import transaction

from apps.mediator.core import codec
from apps.mediator.core.context import current_envelope
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.ids import new_id
from apps.mediator.core.messages import Command
from apps.mediator.models import Message as MessageRow
from apps.mediator.models import Workflow

Status = Workflow.Status


class WorkflowFailed(Exception):
    def __init__(self, workflow_id: str, error: str):
        self.workflow_id, self.error = workflow_id, error
        super().__init__(f"workflow {workflow_id} failed: {error}")


@dataclass(frozen=True)
class WorkflowHandle:
    id: str

    def status(self) -> str:
        return Workflow.objects.values_list("status", flat=True).get(pk=self.id)

    def wait(self, timeout: float = 30.0, *, interval: float = 0.05) -> list:
        deadline = time.monotonic() + timeout
        while True:
            row = Workflow.objects.get(pk=self.id)
            if row.status == Status.SUCCEEDED:
                return row.results
            if row.status == Status.FAILED:
                raise WorkflowFailed(self.id, row.error)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"workflow {self.id} still {row.status} after {timeout}s")
            time.sleep(interval)

    def result(self, timeout: float = 30.0) -> list:
        return self.wait(timeout)


def _stored(command: Command) -> dict:
    return {"type": command.options.wire_name, "payload": codec.to_payload(command)}


def _loaded(member: dict) -> Command:
    return codec.decode(member["type"], msgspec.json.encode(member["payload"]))


def _send(mediator, row: Workflow, index: int, member: dict) -> None:
    # Every member joins the workflow's conversation, so the history shows it as one.
    mediator.post(_loaded(member), workflow=f"{row.pk}:{index}", correlation_id=row.correlation_id)


def _conversation(workflow_id: str) -> str:
    envelope = current_envelope.get()
    return envelope.correlation_id if envelope else workflow_id


def _create(kind: str, commands: Sequence[Command], **fields) -> Workflow:
    if not commands:
        raise ValueError(f"a {kind} needs at least one command")
    workflow_id = new_id()
    return Workflow.objects.create(
        id=workflow_id,
        kind=kind,
        members=[_stored(c) for c in commands],
        correlation_id=_conversation(workflow_id),
        **fields,
    )


@transaction.atomic
def chain(*commands: Command, mediator) -> WorkflowHandle:
    row = _create(Workflow.Kind.CHAIN, commands, next_index=1)
    _send(mediator, row, 0, row.members[0])
    return WorkflowHandle(row.pk)


@transaction.atomic
def group(commands: Sequence[Command], *, callback: Command | None = None, mediator) -> WorkflowHandle:
    row = _create(
        Workflow.Kind.GROUP,
        commands,
        callback=_stored(callback) if callback is not None else None,
        remaining=len(commands),
        results=[None] * len(commands),
    )
    for index, member in enumerate(row.members):
        _send(mediator, row, index, member)
    return WorkflowHandle(row.pk)


def _locked(envelope: Envelope) -> tuple[Workflow | None, int]:
    workflow_id, _, index = (envelope.workflow or "").partition(":")
    row = Workflow.objects.select_for_update().filter(pk=workflow_id).first()
    return row, int(index or 0)


def member_succeeded(envelope: Envelope, result, mediator) -> None:
    """Called by the dispatcher inside the member handler's transaction."""
    row, index = _locked(envelope)
    if row is None or row.status != Status.RUNNING:
        return
    if row.kind == Workflow.Kind.CHAIN:
        row.results = [*row.results, result]
        if row.next_index < len(row.members):
            _send(mediator, row, row.next_index, row.members[row.next_index])
            row.next_index += 1
        else:
            row.status = Status.SUCCEEDED
    elif index >= len(row.members):  # the group's callback
        row.status = Status.SUCCEEDED
    else:
        results = list(row.results)
        results[index] = result
        row.results = results
        row.remaining -= 1
        if row.remaining == 0:
            if row.callback:
                _send(mediator, row, len(row.members), row.callback)
            else:
                row.status = Status.SUCCEEDED
    row.save()


def member_failed(envelope: Envelope, error: str) -> None:
    """Called by the dispatcher when a member ends dead, or is settled unrun (revoked, purged,
    expired): the workflow fails with its error, and nothing after it is sent."""
    _fail(envelope.workflow, envelope.type, envelope.id, error)


def members_cancelled(message_ids, status: str) -> None:
    """Members revoked or purged before any worker saw them (still in the outbox), or expired
    there: their workflows fail now rather than wait for a message that will never run."""
    rows = MessageRow.objects.filter(pk__in=list(message_ids), headers__has_key="workflow")
    for message_id, type_, headers in rows.values_list("id", "type", "headers"):
        with transaction.atomic():
            _fail(headers["workflow"], type_, message_id, f"{status}: it will not be handled")


def _fail(workflow: str | None, type_: str, message_id: str, error: str) -> None:
    workflow_id, _, index = (workflow or "").partition(":")
    row = Workflow.objects.select_for_update().filter(pk=workflow_id).first()
    if row is None or row.status != Status.RUNNING:
        return
    row.status = Status.FAILED
    row.error = f"member {index or 0} ({type_}, message {message_id}): {error}"
    row.save(update_fields=["status", "error", "updated_at"])
