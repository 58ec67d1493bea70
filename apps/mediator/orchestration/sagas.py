"""Orchestrated sagas: ordered steps, each a command and the events that settle it.

    class OrderSaga(Saga):
        context = "orders"
        steps = [
            Step("reserve_stock", send=lambda d: ReserveStock(...), completes_on=[StockReserved],
                 fails_on=[StockReservationFailed], compensate=lambda d: ReleaseStock(...), timeout=30),
            Step("charge_payment", ...),
            Step("confirm_order", ..., pivot=True),
        ]

        def on_failed(data, reason):       # after the compensations: the last word
            return CancelOrder(order_id=data["order_id"], reason=reason)

The saga's state (a SagaState row per conversation) is advanced by the reply's
handler, in the same transaction as the reply's inbox record: one reply advances a
saga at most once, and a restarted worker simply carries on from the database.
A step's timeout is a deadline on the saga's row, swept by the consumers
(orchestration/deadlines.py): only a deadline that passes writes the saga's Timeout command, in the sweep's
transaction, so a step that settles in time leaves nothing in the history; a Timeout
that arrives after its step settled is ignored. On failure, timeout or cancellation the
compensations of the completed steps are sent in reverse order, then `on_failed`.
A reply that arrives for the in-flight step after the saga gave up is undone with
that step's compensation. Once a `pivot` step has been sent, the saga can no
longer be cancelled (it is the point of no return).

A timer that fires late (the database or the consumers were away when it was due), whose
step's window overlapped a database outage this process saw (storage/outage.py), or
whose step's command waits behind a backlog (orchestration/fairness.py), is re-armed
instead of giving up, up to MAX_REARMS times: the step had no fair time to run. A pivot
step whose command is dead makes the saga `stuck`, visibly, until an operator replays
that dead letter (the reply completes the saga) or compensates it from the admin. A reply
is only taken from the saga's own business key (`key`: the order id) and when
`Step.accepts` it.
"""

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import msgspec
from django.utils import timezone

from apps.mediator.core.context import current_envelope
from apps.mediator.core.errors import Conflict
from apps.mediator.core.messages import Command, Event
from apps.mediator.models import Message as MessageRow
from apps.mediator.models import SagaState
from apps.mediator.observability import metrics
from apps.mediator.orchestration import fairness
from apps.mediator.storage import outage, saga_rows

LATE_TIMER = 5.0  # seconds past due (and half the step's timeout) that say the system was away
MAX_REARMS = 5  # late timers re-armed per step, then it times out as usual

Status = SagaState.Status
_SAGAS: dict[str, type["Saga"]] = {}  # by name: what a due deadline's row names


@dataclass(frozen=True)
class Step:
    name: str
    send: Callable[[dict], Command]
    completes_on: Sequence[type[Event]]
    fails_on: Sequence[type[Event]] = ()
    compensate: Callable[[dict], Command] | None = None
    timeout: float | Callable[[], float] = 30.0
    pivot: bool = False
    # Folds a completing reply into the saga's data (e.g. remember the payment id).
    on_reply: Callable[[dict, Event], dict] | None = None
    failure_reason: Callable[[Event], str] = field(default=lambda event: getattr(event, "reason", "failed"))
    # Whether a completing reply is the one expected (its amount is the order's): others are ignored.
    accepts: Callable[[dict, Event], bool] | None = None

    def timeout_seconds(self) -> float:
        return self.timeout() if callable(self.timeout) else self.timeout


class Saga:
    name: ClassVar[str]
    context: ClassVar[str]
    steps: ClassVar[Sequence[Step]]
    Timeout: ClassVar[type[Command]]
    # The data key every reply must carry with the same value (the order id): a reply
    # with this conversation's correlation id but another business key is not ours.
    key: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.name = getattr(cls, "name", None) or cls.__name__
        _SAGAS.setdefault(cls.name, cls)
        # The step timeout is a command of the saga's own context; `due` is when its deadline was.
        cls.Timeout = msgspec.defstruct(
            f"{cls.__name__}Timeout",
            [("saga_id", int), ("step", int), ("attempt", int, 0), ("due", float, 0.0)],
            bases=(Command,),
            module=cls.__module__,
            namespace={"Meta": type("Meta", (), {"context": cls.context, "name": f"{cls.__name__}Timeout"})},
        )

    # -- what the context registers --------------------------------------------

    @classmethod
    def event_handlers(cls) -> dict[type[Event], list]:
        handlers: dict[type[Event], list] = {}
        for step in cls.steps:
            for event_type in (*step.completes_on, *step.fails_on):
                handlers.setdefault(event_type, [])
                if not handlers[event_type]:
                    handlers[event_type].append(_reply_handler(cls))
        return handlers

    @classmethod
    def command_handlers(cls) -> dict[type[Command], Callable]:
        def on_timeout(command, ctx):
            cls._timed_out(command, ctx.mediator)

        on_timeout.__qualname__ = f"{cls.__name__}.on_timeout"
        return {cls.Timeout: on_timeout}

    # -- the engine -----------------------------------------------------------------

    @staticmethod
    def on_completed(data: dict) -> Command | None:
        return None

    @staticmethod
    def on_failed(data: dict, reason: str) -> Command | None:
        return None

    @classmethod
    def start(cls, data: dict, *, mediator) -> SagaState:
        """Begin a saga for the conversation being handled (call it from a handler, with `ctx.mediator`)."""
        envelope = current_envelope.get()
        if envelope is None:
            raise RuntimeError("start a saga from a handler: it belongs to the conversation being handled")
        state = SagaState(name=cls.name, correlation_id=envelope.correlation_id, data=data)
        cls._start_step(state, 0, mediator)
        state.save()  # one INSERT: neither the first command nor its deadline needs the row's id
        return state

    @classmethod
    def state_for(cls, correlation_id: str, *, lock: bool = False) -> SagaState | None:
        if lock:  # the engine's own read, written back with saga_rows.save
            return saga_rows.locked(name=cls.name, correlation_id=correlation_id)
        return SagaState.objects.filter(name=cls.name, correlation_id=correlation_id).first()

    @classmethod
    def cancel(cls, correlation_id: str, reason: str = "cancelled", *, mediator) -> SagaState:
        """Stop the saga and undo what it did; refused once its pivot step was sent."""
        state = cls.state_for(correlation_id, lock=True)
        if state is None:
            raise Conflict("nothing to cancel: no saga for this conversation")
        if state.status != Status.RUNNING:
            raise Conflict(f"the saga is already {state.status}")
        if cls.steps[state.current_step].pivot:
            raise Conflict(f"too late to cancel: step {cls.steps[state.current_step].name!r} is under way")
        cls._log(state, state.current_step, "cancelled", detail=reason)
        cls._stop_timer(state)
        cls._give_up(state, reason, mediator, status=Status.CANCELLED)
        saga_rows.save(state)
        return state

    @classmethod
    def compensate(cls, correlation_id: str, reason: str = "compensated by an operator", *, mediator) -> SagaState:
        """Undo a stuck saga's completed steps and send its last word (the operator's way out)."""
        state = cls.state_for(correlation_id, lock=True)
        if state is None or state.status != Status.STUCK:
            raise Conflict(f"only a stuck saga can be compensated; this one is {state.status if state else 'absent'}")
        cls._log(state, state.current_step, "compensated_by_operator", detail=reason)
        cls._give_up(state, reason, mediator, status=Status.FAILED)
        saga_rows.save(state)
        return state

    @classmethod
    def _start_step(cls, state: SagaState, index: int, mediator) -> None:
        step = cls.steps[index]
        state.current_step = index
        handle = mediator.send(step.send(state.data))
        cls._log(state, index, "started", message_id=handle.message_id)
        cls._arm(state, index)

    @classmethod
    def _arm(cls, state: SagaState, index: int, *, attempt: int = 0) -> None:
        """Set the step's deadline (the step being the saga's current one); saved with the row."""
        state.deadline = timezone.now() + dt.timedelta(seconds=cls.steps[index].timeout_seconds())
        state.timer_attempt = attempt

    @staticmethod
    def _armed_at(state: SagaState, index: int) -> float:
        """When the step's current window began: its start, or its timer's last re-arm."""
        marks = [e["at"] for e in state.step_log if e["step"] == index and e["event"] in ("started", "timer_rearmed")]
        return dt.datetime.fromisoformat(marks[-1]).timestamp() if marks else 0.0

    @staticmethod
    def _step_command(state: SagaState, index: int) -> str:
        """The id of the step's last command ("" if none was sent)."""
        sent = [e["message_id"] for e in state.step_log if e["step"] == index and e["event"] == "started"]
        return sent[-1] if sent else ""

    @staticmethod
    def _stop_timer(state: SagaState) -> None:
        """The step settled: its deadline goes (a Timeout already fired will find nothing to do)."""
        state.deadline = None

    @classmethod
    def _on_reply(cls, event: Event, ctx) -> None:
        state = cls.state_for(ctx.correlation_id, lock=True)
        if state is None:
            return  # a reply of a conversation this saga is not part of
        index = cls._step_of(event, state)
        if index is None:
            return
        step = cls.steps[index]
        completed = type(event) in step.completes_on
        foreign = cls.key is not None and str(getattr(event, cls.key, None)) != str(state.data.get(cls.key))
        if foreign or (completed and step.accepts is not None and not step.accepts(state.data, event)):
            cls._log(
                state, index, "refused_reply", message_id=ctx.message_id, detail=f"{type(event).__name__}: not ours"
            )
            saga_rows.save(state)
            return
        if state.status in (Status.RUNNING, Status.STUCK) and index == state.current_step:
            cls._stop_timer(state)
            if completed:
                cls._log(state, index, "completed", message_id=ctx.message_id)
                if step.on_reply:
                    state.data = {**state.data, **step.on_reply(state.data, event)}
                if index + 1 < len(cls.steps):
                    cls._start_step(state, index + 1, ctx.mediator)
                else:
                    state.status = Status.COMPLETED
                    follow_up = cls.on_completed(state.data)
                    if follow_up is not None:
                        ctx.mediator.send(follow_up)
            else:
                reason = step.failure_reason(event)
                cls._log(state, index, "failed", message_id=ctx.message_id, detail=reason)
                cls._give_up(state, reason, ctx.mediator, status=Status.FAILED)
        elif completed and index == state.current_step and state.status in (Status.FAILED, Status.CANCELLED):
            # The step succeeded after the saga gave up on it (timeout, cancel): undo it.
            if step.compensate and not cls._compensated(state, index):
                cls._log(state, index, "late_reply_compensated", message_id=ctx.message_id)
                ctx.mediator.send(step.compensate(state.data))
        else:
            cls._log(state, index, "ignored_reply", message_id=ctx.message_id, detail=type(event).__name__)
        saga_rows.save(state)

    @classmethod
    def _timed_out(cls, command, mediator) -> None:
        state = saga_rows.locked(id=command.saga_id, name=cls.name)
        if state is None or state.status != Status.RUNNING or state.current_step != command.step:
            return  # the step settled first: nothing to do
        step = cls.steps[command.step]
        seconds = step.timeout_seconds()
        envelope = current_envelope.get()
        # When the deadline was: the command says; a Timeout scheduled before deadlines were
        # columns was due when its envelope was.
        due = command.due or (envelope.not_before if envelope and envelope.not_before else 0.0)
        late = time.time() - due if due else 0.0
        # This process found the database away since the step was started (or re-armed): the
        # step (its command, its reply) could not run for part of it, however punctual the timer.
        away = outage.last_seen() >= cls._armed_at(state, command.step)
        # Behind a backlog the step's command may not have reached a handler in its time, or
        # its reply may still be queued for this saga (fairness.py): re-armed too.
        sent = cls._step_command(state, command.step)
        sent_status, behind = fairness.assess(sent, seconds) if sent else ("", "")
        fired_late = late > max(LATE_TIMER, seconds / 2)
        if (fired_late or away or behind) and command.attempt < MAX_REARMS:
            if away:
                why = "the database was away during the step"
            elif fired_late:
                why = f"fired {late:.0f}s late"
            else:
                why = behind
            cls._log(state, command.step, "timer_rearmed", message_id=sent, detail=f"{why}: the step could not run")
            cls._arm(state, command.step, attempt=command.attempt + 1)
            saga_rows.save(state)
            return
        if step.pivot:
            # Past the point of no return the saga cannot undo. Its command still being
            # retried: keep waiting. Dead: stuck, for an operator (replay, or compensate).
            dead = sent if sent_status == MessageRow.Status.DEAD else ""
            if dead:
                state.status, state.reason = Status.STUCK, f"{step.name} is dead"
                cls._log(state, command.step, "stuck", message_id=dead, detail="its command is a dead letter")
                metrics.count_saga_stuck(cls.name)
            else:
                cls._log(state, command.step, "timed_out", detail=f"no reply within {seconds:g}s; pivot, still waiting")
                cls._arm(state, command.step, attempt=command.attempt)
            saga_rows.save(state)
            return
        cls._log(state, command.step, "timed_out", detail=f"no reply within {seconds:g}s")
        cls._give_up(state, "timeout", mediator, status=Status.FAILED)
        saga_rows.save(state)

    @classmethod
    def _give_up(cls, state: SagaState, reason: str, mediator, *, status: str) -> None:
        state.status = Status.COMPENSATING
        done = [i for i in range(state.current_step) if cls._has(state, i, "completed")]
        for index in reversed(done):
            step = cls.steps[index]
            if step.compensate:
                handle = mediator.send(step.compensate(state.data))
                cls._log(state, index, "compensating", message_id=handle.message_id)
        last_word = cls.on_failed(state.data, reason)
        if last_word is not None:
            mediator.send(last_word)
        state.status = status
        state.reason = reason

    @classmethod
    def _step_of(cls, event: Event, state: SagaState) -> int | None:
        candidates = [i for i, s in enumerate(cls.steps) if type(event) in (*s.completes_on, *s.fails_on)]
        if state.current_step in candidates:
            return state.current_step
        return candidates[0] if candidates else None

    @staticmethod
    def _has(state: SagaState, index: int, event: str) -> bool:
        return any(e["step"] == index and e["event"] == event for e in state.step_log)

    @classmethod
    def _compensated(cls, state: SagaState, index: int) -> bool:
        return cls._has(state, index, "compensating") or cls._has(state, index, "late_reply_compensated")

    @classmethod
    def _log(cls, state: SagaState, index: int, event: str, *, message_id: str = "", detail: str = "") -> None:
        state.step_log = [
            *state.step_log,
            {
                "step": index,
                "name": cls.steps[index].name,
                "event": event,
                "at": timezone.now().isoformat(),
                "message_id": message_id,
                "detail": detail,
            },
        ]


def _reply_handler(cls: type[Saga]):
    def on_reply(event, ctx):
        cls._on_reply(event, ctx)

    on_reply.__qualname__ = f"{cls.__name__}.on_reply"
    return on_reply


def known() -> dict[str, type[Saga]]:
    """The Saga classes defined so far, by name (the first of a name)."""
    return dict(sorted(_SAGAS.items()))


def timeline(state: SagaState) -> list[dict]:
    """The step log with the time since the saga started, for the API and the admin."""
    start = state.created_at
    out = []
    for entry in state.step_log:
        at = dt.datetime.fromisoformat(entry["at"])
        # The first step is logged just before the row's INSERT stamps created_at.
        out.append({**entry, "after_ms": max(0.0, round((at - start).total_seconds() * 1000, 1))})
    return out
