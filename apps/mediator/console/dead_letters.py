"""Dead letters in the admin: what gave up and why, and replaying one or many.

The list is the history narrowed to messages whose status is "dead", with the
reason: the dead delivery's error (for a message that could not be decoded, or that
no handler here takes, the error of its "(decode)" delivery). Replaying goes through
the service behind `manage.py replay` (apps.mediator.storage.replay), with the admin user as
the actor, so who replayed what and when is recorded on the message and in each
reopened delivery's attempt log. A confirmation page lists what will be replayed
first; one message's page has a "Replay" button leading to the same page.

Replaying re-runs handlers, so it takes a permission of its own,
`mediator.replay_message` (Message.Meta.permissions), apart from view_message:
support can read the whole history without being able to replay it. The history is
read-only, so "change message" would be the wrong word for it.
"""

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from apps.mediator.console import extensions
from apps.mediator.console.common import (
    ReadOnlyAdmin,
    conversation_url,
    message_url,
    search_messages,
    two_lines,
)
from apps.mediator.console.filters import ContextFilter, TypeFilter
from apps.mediator.models import DeadLetter, Delivery, Message
from apps.mediator.storage import replay

REPLAY_PERMISSION = "mediator.replay_message"
MAX_AT_ONCE = 500  # more than this is a job for `manage.py replay --dead --context/--type`
MAX_SUCCESS_NOTES = 20  # one note per replayed message up to this, then a count
DEAD_DELIVERY_FIELDS = ("id", "message_id", "handler", "error", "attempts", "finished_at")


def may_replay(request) -> bool:
    return request.user.is_active and request.user.is_staff and request.user.has_perm(REPLAY_PERMISSION)


def actor_of(request) -> str:
    return f"admin:{request.user.get_username()}"


def with_reasons(queryset):
    """Each message with its dead deliveries as `dead_deliveries` (one query for the page), payload left out."""
    dead = Delivery.objects.filter(status=Delivery.Status.DEAD).only(*DEAD_DELIVERY_FIELDS).order_by("id")
    return (
        queryset.defer("payload", "last_error")
        .prefetch_related(None)  # the list's queryset, handed to the action, has it already
        .prefetch_related(Prefetch("deliveries", dead, to_attr="dead_deliveries"))
    )


def short_handler(name: str) -> str:
    """A handler's name as a list shows it: `payments: charge_payment` (the full name is its title)."""
    context, _, path = name.rpartition(":")
    return f"{context}: {path.rpartition('.')[2]}" if context else name


def refused(message) -> bool:
    """Replay refuses what arrived undecodable (or for no handler): there is nothing valid to deliver."""
    return any(d.handler == replay.UNDECODABLE for d in message.dead_deliveries)


def replays_of(message) -> list[dict]:
    return (message.headers or {}).get("replays") or []


class DeadLetterChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        return with_reasons(super().get_queryset(request, exclude_parameters))


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    list_display = ["message", "reason", "attempts", "died", "replays", "conversation"]  # the type names the context
    list_filter = [ContextFilter, TypeFilter, ("created_at", admin.DateFieldListFilter)]
    search_fields = ["=id", "=correlation_id"]  # handled by get_search_results
    search_help_text = "A message id, a correlation id, or an id another app resolves (an order id)."
    list_display_links = None
    sortable_by = ["message"]
    list_per_page = 50
    actions = ["replay_selected"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(status=Message.Status.DEAD)

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Dead letters", **(extra_context or {})})

    def get_changelist(self, request, **kwargs):
        return DeadLetterChangeList

    def get_search_results(self, request, queryset, search_term):
        return search_messages(queryset, search_term), False

    # Viewing dead letters is viewing the history; replaying has its own permission.
    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("mediator.view_message")

    def has_replay_permission(self, request):
        return may_replay(request)

    # -- columns ------------------------------------------------------------------

    @admin.display(description="message (type, id)", ordering="id")
    def message(self, obj):
        return format_html(
            '<a href="{}">{}</a><br><code class="catga-id">{}</code>', message_url(obj.pk), obj.type, obj.pk
        )

    @admin.display(description="reason")
    def reason(self, obj):
        if not obj.dead_deliveries:
            return format_html('<span class="catga-muted">{}</span>', "no dead delivery recorded")
        return format_html_join(
            "",
            '<div class="catga-reason"><span class="catga-handler" title="{}">{}</span> '
            '<span class="catga-error" title="{}">{}</span>{}</div>',
            (
                (
                    d.handler,
                    short_handler(d.handler),
                    d.error,
                    Truncator(d.error).chars(160),
                    format_html(' <em class="catga-refused">{}</em>', "cannot be replayed")
                    if d.handler == replay.UNDECODABLE
                    else "",
                )
                for d in obj.dead_deliveries
            ),
        )

    @admin.display(description="attempts")
    def attempts(self, obj):
        return max((d.attempts for d in obj.dead_deliveries), default="—")

    @admin.display(description="died (UTC)")
    def died(self, obj):
        return two_lines(max((d.finished_at for d in obj.dead_deliveries if d.finished_at), default=None))

    @admin.display(description="replayed")
    def replays(self, obj):
        replays = replays_of(obj)
        if not replays:
            return "never"
        return format_html(
            '{} time{}<br><small class="catga-muted">last by {}</small>',
            len(replays),
            "" if len(replays) == 1 else "s",
            replays[-1].get("by", "?"),
        )

    @admin.display(description="timeline")
    def conversation(self, obj):
        return format_html('<a href="{}">view&nbsp;&rsaquo;</a>', conversation_url(obj.correlation_id))

    # -- one dead letter: its page is the message's ----------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return HttpResponseRedirect(message_url(object_id))

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<str:object_id>/replay/", wrap(self.replay_one_view), name="mediator_deadletter_replay"),
            *super().get_urls(),
        ]

    # -- replay -------------------------------------------------------------------

    @admin.action(description="Replay selected dead letters…", permissions=["replay"])
    def replay_selected(self, request, queryset):
        if request.POST.get("post") == "yes":
            self.replay_confirmed(request, queryset, selected=request.POST.getlist(helpers.ACTION_CHECKBOX_NAME))
            return None  # back to the list, filters kept
        return self.confirmation(request, queryset, action="replay_selected", cancel_url=request.get_full_path())

    def replay_one_view(self, request, object_id):
        if not self.has_replay_permission(request):
            raise PermissionDenied
        queryset = self.get_queryset(request).filter(pk=object_id)
        back = message_url(object_id)
        if request.method == "POST" and request.POST.get("post") == "yes":
            self.replay_confirmed(request, queryset, selected=[object_id])
            return HttpResponseRedirect(back)
        if not queryset.exists():
            self.message_user(request, f"{object_id} is not a dead letter: nothing to replay.", messages.WARNING)
            return HttpResponseRedirect(back)
        return self.confirmation(request, queryset, action=None, cancel_url=back)

    def confirmation(self, request, queryset, *, action: str | None, cancel_url: str):
        rows = list(with_reasons(queryset.order_by("id"))[: MAX_AT_ONCE + 1])
        if len(rows) > MAX_AT_ONCE:
            self.message_user(request, too_many(), messages.ERROR)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Replay dead letters?" if len(rows) != 1 else "Replay this dead letter?",
            "opts": self.opts,
            "rows": [ConfirmRow(row) for row in rows],
            "replayable": sum(not refused(row) for row in rows),
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "cancel_url": cancel_url,
            "actor": actor_of(request),
            "changelist_url": reverse("admin:mediator_deadletter_changelist"),
        }
        return TemplateResponse(request, "admin/mediator/deadletter/replay_confirmation.html", context)

    def replay_confirmed(self, request, queryset, *, selected: list[str]) -> None:
        ids = list(queryset.order_by("id").values_list("pk", flat=True)[: MAX_AT_ONCE + 1])
        if len(ids) > MAX_AT_ONCE:
            self.message_user(request, too_many(), messages.ERROR)
            return
        select_across = request.POST.get("select_across") == "1"
        gone = [] if select_across else sorted(set(selected) - set(ids))
        results = replay.replay(
            ids, actor=actor_of(request), publish=extensions.mediator().transport.publish, only_dead=True
        )
        report(self, request, results, gone)


def too_many() -> str:
    return (
        f"More than {MAX_AT_ONCE} dead letters selected: replay at most {MAX_AT_ONCE} at once here, "
        "or use `manage.py replay --dead --context … --type …` for a batch."
    )


class ConfirmRow:
    """One line of the confirmation page."""

    def __init__(self, message: Message):
        self.message = message
        self.refused = refused(message)
        self.deliveries = message.dead_deliveries
        self.replays = len(replays_of(message))


def report(model_admin, request, results: list[replay.Replayed], gone: list[str]) -> None:
    """One note per message: replayed and where it stands now (died again?), or not replayed and why."""
    now = {
        pk: (type_, status)
        for pk, type_, status in Message.objects.filter(pk__in=[r.message_id for r in results]).values_list(
            "id", "type", "status"
        )
    }
    dead_now = [pk for pk, (_, status) in now.items() if status == Message.Status.DEAD]
    errors = dict(
        Delivery.objects.filter(message_id__in=dead_now, status=Delivery.Status.DEAD)
        .order_by("id")  # the latest wins
        .values_list("message_id", "error")
    )
    notify = model_admin.message_user
    replayed = 0
    for result in results:
        type_, status = now.get(result.message_id, ("", ""))
        name = f"{type_} {result.message_id}".strip()
        if not result.ok:
            notify(request, f"Could not replay {name}: {result.detail}.", messages.ERROR)
            continue
        replayed += 1
        if status == Message.Status.DEAD:
            error = errors.get(result.message_id, "see its page")
            notify(request, f"Replayed {name}, but it died again: {error}", messages.WARNING)
        elif replayed <= MAX_SUCCESS_NOTES:
            notify(request, f"Replayed {name}: {result.detail}; now {status}.", messages.SUCCESS)
    if replayed > MAX_SUCCESS_NOTES:
        notify(request, f"… and {replayed - MAX_SUCCESS_NOTES} more replayed.", messages.SUCCESS)
    for message_id in gone:
        notify(request, f"Skipped {message_id}: no longer a dead letter (replayed meanwhile?).", messages.WARNING)
    if len(results) + len(gone) > 1:
        notify(request, f"Replayed {replayed} of {len(results) + len(gone)} selected dead letters.", messages.INFO)
