"""Sagas in the admin, read-only: where each one stands, and its step log as a timeline.

The list shows name, status, current step, reason and times, filtered by status and
name (choices from the Saga classes in code, not a DISTINCT over the table), and
finds a saga by correlation id, by the id of one of its messages, or by an id a
context resolves (an order id, through console.extensions like the history's search).
A saga's page draws its steps as a strip (done, failed, compensated, in progress)
and every step-log event on a timeline, compensations marked, each linked to the
message it sent or received; it links to the conversation.
"""

import datetime as dt
from dataclasses import dataclass

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db import transaction
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from apps.mediator.console import extensions
from apps.mediator.console.common import (
    ReadOnlyAdmin,
    conversation_url,
    masked,
    normalise_id,
    precise,
    pretty_json,
    two_lines,
)
from apps.mediator.models import Message, SagaState
from apps.mediator.orchestration import sagas
from apps.mediator.orchestration.sagas import Saga, timeline

SAGA_COLOURS = {
    SagaState.Status.RUNNING: "#2a6ebb",
    SagaState.Status.COMPLETED: "#1a7f37",
    SagaState.Status.COMPENSATING: "#8250df",
    SagaState.Status.FAILED: "#cf222e",
    SagaState.Status.CANCELLED: "#6e7781",
    SagaState.Status.STUCK: "#bf8700",
}
EVENT_LABELS = {
    "started": "step started (command sent)",
    "completed": "step completed",
    "failed": "step failed",
    "timed_out": "step timed out",
    "cancelled": "cancelled",
    "compensating": "compensation sent",
    "late_reply_compensated": "late reply: compensated",
    "ignored_reply": "reply ignored",
    "refused_reply": "reply refused: not this saga's",
    "timer_rearmed": "timer re-armed (the step could not run in its time)",
    "stuck": "stuck: the pivot step's command is dead",
    "compensated_by_operator": "compensated by an operator",
}
COMPENSATION = {"compensating", "late_reply_compensated"}
LIST_DEFERRED = ("data", "step_log")


def known_sagas() -> dict[str, type[Saga]]:
    """The Saga classes in code by name (the contexts' handler modules import theirs)."""
    extensions.mediator()  # built with its registry, which imports every context's sagas
    return sagas.known()


def step_name(state: SagaState, index: int) -> str:
    saga = known_sagas().get(state.name)
    if saga is not None and 0 <= index < len(saga.steps):
        return saga.steps[index].name
    return ""


def coloured_saga(status: str) -> str:
    return format_html(
        '<b class="catga-saga-status catga-saga-{}" style="color:{}">{}</b>',
        status,
        SAGA_COLOURS.get(status, "#000"),
        status,
    )


def correlation_ids_for(term: str) -> list[str]:
    """What a search term names: a correlation id, a message's conversation, or a resolver's (an order id)."""
    message = Message.objects.filter(pk=term).values_list("correlation_id", flat=True).first()
    return [term, *([message] if message else []), *extensions.correlation_ids_for(term)]


def of_conversation(request, correlation_id: str) -> list[tuple[SagaState, str]]:
    """The sagas of a conversation with their admin URLs, for the conversation page (one query)."""
    if not request.user.has_perm("mediator.view_sagastate"):
        return []
    rows = SagaState.objects.filter(correlation_id=correlation_id).only("id", "name", "status", "reason")
    return [(state, reverse("admin:mediator_sagastate_change", args=[state.pk])) for state in rows.order_by("id")]


class SagaNameFilter(admin.SimpleListFilter):
    title = _("saga")
    parameter_name = "name"

    def lookups(self, request, model_admin):
        return [(name, name) for name in known_sagas()]

    def queryset(self, request, queryset):
        return queryset.filter(name=self.value()) if self.value() else queryset


class SagaChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        return super().get_queryset(request, exclude_parameters).defer(*LIST_DEFERRED)


@dataclass
class TimelineEvent:
    step: int
    step_name: str
    event: str
    at: dt.datetime
    after_ms: float
    message_id: str
    message: Message | None
    detail: str

    @property
    def label(self) -> str:
        return EVENT_LABELS.get(self.event, self.event)

    @property
    def compensation(self) -> bool:
        return self.event in COMPENSATION

    @property
    def message_url(self) -> str:
        return reverse("admin:mediator_message_change", args=[self.message_id]) if self.message_id else ""


@dataclass
class StepState:
    index: int
    name: str
    state: str  # completed, failed, timed_out, compensated, cancelled, running, not_reached, waiting
    pivot: bool

    @property
    def label(self) -> str:
        return {
            "completed": "completed",
            "failed": "failed",
            "timed_out": "timed out",
            "compensated": "completed, then compensated",
            "cancelled": "cancelled",
            "running": "in progress",
            "waiting": "started, no reply",
            "not_reached": "not reached",
        }[self.state]


def load_timeline(state: SagaState) -> list[TimelineEvent]:
    """The step log on a time axis, each event with the message it names (one query)."""
    entries = timeline(state)
    ids = {e["message_id"] for e in entries if e.get("message_id")}
    found = {m.pk: m for m in Message.objects.filter(pk__in=ids).only("id", "type", "status")} if ids else {}
    return [
        TimelineEvent(
            step=e["step"],
            step_name=e.get("name", ""),
            event=e["event"],
            at=dt.datetime.fromisoformat(e["at"]),
            after_ms=e["after_ms"],
            message_id=e.get("message_id", ""),
            message=found.get(e.get("message_id", "")),
            detail=e.get("detail", ""),
        )
        for e in entries
    ]


def step_strip(state: SagaState, events: list[TimelineEvent]) -> list[StepState]:
    """Each step of the saga (its class's, or those its log names) and how far it got."""
    saga = known_sagas().get(state.name)
    if saga is not None:
        steps = [(i, s.name, s.pivot) for i, s in enumerate(saga.steps)]
    else:
        names = {e.step: e.step_name for e in events}
        steps = [(i, names[i], False) for i in sorted(names)]
    strip = []
    for index, name, pivot in steps:
        seen = {e.event for e in events if e.step == index}
        if seen & COMPENSATION:
            where = "compensated"
        elif "failed" in seen:
            where = "failed"
        elif "completed" in seen:
            where = "completed"
        elif "cancelled" in seen:
            where = "cancelled"
        elif "timed_out" in seen and state.status != SagaState.Status.RUNNING:
            where = "timed_out"
        elif index == state.current_step and state.status == SagaState.Status.RUNNING:
            where = "running"
        elif "started" in seen:
            where = "waiting"
        else:
            where = "not_reached"
        strip.append(StepState(index, name, where, pivot))
    return strip


@admin.register(SagaState)
class SagaStateAdmin(ReadOnlyAdmin):
    list_display = ["saga", "status_badge", "step", "reason", "created", "updated", "conversation"]
    list_filter = ["status", SagaNameFilter]
    search_fields = ["=correlation_id"]  # handled by get_search_results
    search_help_text = "A correlation id, the id of one of its messages, or an id another app resolves (an order id)."
    list_display_links = None
    sortable_by = ["saga", "created"]
    ordering = ["-id"]
    list_per_page = 50
    actions = ["compensate_stuck"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "name",
                    "status_badge",
                    "step",
                    "reason",
                    "deadline_precise",
                    "created_precise",
                    "updated_precise",
                ]
            },
        ),
        ("Conversation", {"fields": ["conversation_link"]}),
        ("Data", {"fields": ["data_pretty"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        "status_badge",
        "step",
        "deadline_precise",
        "created_precise",
        "updated_precise",
        "conversation_link",
        "data_pretty",
    ]

    def get_changelist(self, request, **kwargs):
        return SagaChangeList

    def has_compensate_permission(self, request) -> bool:
        return request.user.has_perm("mediator.change_sagastate")

    @admin.action(
        description="Compensate the selected stuck sagas (undo their steps, cancel)", permissions=["compensate"]
    )
    def compensate_stuck(self, request, queryset):
        sagas, mediator = known_sagas(), extensions.mediator()
        actor = f"admin:{request.user.get_username()}"
        done, refused = [], []
        for state in queryset.order_by("id"):
            saga = sagas.get(state.name)
            try:
                with transaction.atomic():
                    if saga is None:
                        raise LookupError(f"no saga {state.name} in code")
                    saga.compensate(state.correlation_id, reason=f"compensated by {actor}", mediator=mediator)
                done.append(state.correlation_id)
            except Exception as exc:  # Conflict (not stuck), LookupError: said, not raised
                refused.append(f"{state.correlation_id}: {exc}")
        if done:
            self.message_user(request, f"Compensating {len(done)} saga(s): {', '.join(done)}.", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not compensated: " + "; ".join(refused), messages.WARNING)

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Sagas", **(extra_context or {})})

    def get_search_results(self, request, queryset, search_term):
        term = normalise_id(search_term)
        if not term:
            return queryset, False
        return queryset.filter(correlation_id__in=correlation_ids_for(term)), False

    # -- columns ------------------------------------------------------------------

    @admin.display(description="saga (name, correlation id)", ordering="id")
    def saga(self, obj):
        url = reverse("admin:mediator_sagastate_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a><br><code class="catga-id">{}</code>', url, obj.name, obj.correlation_id)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return coloured_saga(obj.status)

    @admin.display(description="current step")
    def step(self, obj):
        saga = known_sagas().get(obj.name)
        of = f"/{len(saga.steps)}" if saga else ""
        return format_html(
            '{}{} <span class="catga-step-name">{}</span>', obj.current_step + 1, of, step_name(obj, obj.current_step)
        )

    @admin.display(description="created (UTC)", ordering="id")
    def created(self, obj):
        return two_lines(obj.created_at)

    @admin.display(description="updated (UTC)")
    def updated(self, obj):
        return two_lines(obj.updated_at)

    @admin.display(description="timeline")
    def conversation(self, obj):
        return format_html('<a href="{}">conversation&nbsp;&rsaquo;</a>', conversation_url(obj.correlation_id))

    # -- one saga -----------------------------------------------------------------

    @admin.display(description="step times out (UTC)")
    def deadline_precise(self, obj):
        return precise(obj.deadline) if obj.deadline else "—"

    @admin.display(description="created (UTC)")
    def created_precise(self, obj):
        return precise(obj.created_at)

    @admin.display(description="updated (UTC)")
    def updated_precise(self, obj):
        return precise(obj.updated_at)

    @admin.display(description="conversation")
    def conversation_link(self, obj):
        return format_html(
            '<a href="{}">{}</a> <span class="catga-muted">every message of this saga, as a causation tree</span>',
            conversation_url(obj.correlation_id),
            obj.correlation_id,
        )

    @admin.display(description="data")
    def data_pretty(self, obj):
        return pretty_json(masked(obj.data))

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            events = load_timeline(obj)
            context = {**context, "saga": obj, "events": events, "steps": step_strip(obj, events)}
        return super().render_change_form(request, context, add, change, form_url, obj)
