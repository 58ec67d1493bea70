"""The message history in the admin: a read-only operations console.

- The list stays fast at millions of rows: filters take their choices from code
  (console.filters), search matches ids exactly on indexed columns, the payload is
  never loaded, and the paginator counts at most a few thousand rows.
- A message's page shows its payload, headers, cause, consequences, replay history
  and every delivery with its attempt log, error and traceback.
- `conversation/<id>/` shows everything sharing a correlation id as a causation tree
  with a timeline; `dashboard/` shows throughput, handling times and backlogs.
- Dead letters (console.dead_letters) and sagas (console.sagas) have pages of their own.
- Other apps contribute search resolvers and dashboard panels through console.extensions.
"""

import datetime as dt

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, Q
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from apps.mediator.console import conversation as admin_conversation
from apps.mediator.console import dead_letters as admin_dead_letters
from apps.mediator.console import revocations
from apps.mediator.console import sagas as admin_sagas
from apps.mediator.console.common import (
    ReadOnlyAdmin,
    conversation_url,
    format_ms,
    message_link,
    normalise_id,
    precise,
    pretty_json,
    search_messages,
    two_lines,
)
from apps.mediator.console.dashboard import views as dashboard_views
from apps.mediator.console.filters import ContextFilter, KindFilter, TypeFilter
from apps.mediator.console.style import coloured
from apps.mediator.models import Delivery, Message

# The admin index gains a "Message operations" box (dashboard, history, dead letters,
# sagas); a project that set its own index template keeps it.
if admin.site.index_template is None:
    admin.site.index_template = "admin/mediator/index.html"

HEAVY_MESSAGE_FIELDS = ("payload", "headers", "last_error")
MAX_CONSEQUENCES = 50


class MessageChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        queryset = super().get_queryset(request, exclude_parameters)
        slim_deliveries = Delivery.objects.only("id", "message_id", "attempts", "duration_ms").order_by()
        return queryset.defer(*HEAVY_MESSAGE_FIELDS).prefetch_related(Prefetch("deliveries", slim_deliveries))


@admin.register(Message)
class MessageAdmin(revocations.RevokeActions, ReadOnlyAdmin):
    actions = ["revoke_selected"]
    list_display = [
        "message",
        "kind",
        "context",
        "status_badge",
        "attempts",
        "duration",
        "created",
        "conversation",
    ]
    list_filter = [KindFilter, ContextFilter, TypeFilter, "status", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["=id", "=correlation_id", "=causation_id"]
    search_help_text = "A message id, a correlation id, or an id another app resolves (an order id)."
    list_display_links = None  # the message column links itself, with its id beneath
    sortable_by = ["message", "created"]  # the others would sort the whole table
    list_per_page = 50
    fieldsets = [
        (None, {"fields": ["id", "type", "kind", "context", "status_badge", "qos"]}),
        ("Conversation", {"fields": ["conversation_link", "cause", "consequences"]}),
        (
            "Outbox",
            {"fields": ["created_precise", "available", "expires", "published", "publish_attempts", "last_error"]},
        ),
        ("Replays and revocation", {"fields": ["replay_history", "revocation"]}),
        ("Content", {"fields": ["payload_pretty", "headers_pretty"]}),
    ]
    readonly_fields = [
        "status_badge",
        "created_precise",
        "available",
        "published",
        "conversation_link",
        "cause",
        "consequences",
        "payload_pretty",
        "headers_pretty",
        "replay_history",
        "expires",
        "revocation",
    ]

    # -- list --------------------------------------------------------------------

    def get_changelist(self, request, **kwargs):
        return MessageChangeList

    def get_search_results(self, request, queryset, search_term):
        return search_messages(queryset, search_term), False

    @admin.display(description="message (type, id)", ordering="id")
    def message(self, obj):
        url = reverse("admin:mediator_message_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a><br><code class="catga-id">{}</code>', url, obj.type, obj.pk)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return coloured(obj.status)

    @admin.display(description="attempts")
    def attempts(self, obj):
        attempts = [d.attempts for d in obj.deliveries.all()]
        return max(attempts) if attempts else "—"

    @admin.display(description="handling time")
    def duration(self, obj):
        durations = [d.duration_ms for d in obj.deliveries.all() if d.duration_ms is not None]
        return format_ms(max(durations)) if durations else "—"

    @admin.display(description="created (UTC)", ordering="created_at")
    def created(self, obj):
        return two_lines(obj.created_at)

    @admin.display(description="timeline")
    def conversation(self, obj):
        url = conversation_url(obj.correlation_id)
        return format_html('<a href="{}" title="the conversation {}">view&nbsp;&rsaquo;</a>', url, obj.correlation_id)

    @admin.display(description="conversation")
    def conversation_link(self, obj):
        return format_html('<a href="{}">{}</a>', conversation_url(obj.correlation_id), obj.correlation_id)

    @admin.display(description="created (UTC)")
    def created_precise(self, obj):
        return precise(obj.created_at)

    @admin.display(description="available from (UTC)")
    def available(self, obj):
        return precise(obj.available_at) or "immediately"

    @admin.display(description="expires (UTC)")
    def expires(self, obj):
        return precise(obj.expires_at) or "never"

    @admin.display(description="revoked")
    def revocation(self, obj):
        return revocations.revocation(obj)

    @admin.display(description="published (UTC)")
    def published(self, obj):
        delivered = (Message.Status.HANDLED, Message.Status.FAILED, Message.Status.DEAD)
        if obj.published_at is None and obj.status in delivered:
            # Handled before the publisher's mark came (it waits a moment and then skips handled
            # rows): JetStream had it by the time of its first delivery, shown below.
            return "before its first delivery"
        return precise(obj.published_at) or "—"

    # -- one message --------------------------------------------------------------

    @admin.display(description="caused by")
    def cause(self, obj):
        if not obj.causation_id:
            return "— (started the conversation)"
        cause = Message.objects.filter(pk=obj.causation_id).only("id", "type", "status").first()
        if cause is None:
            return f"{obj.causation_id} (no longer in the history)"
        return message_link(cause)

    @admin.display(description="caused")
    def consequences(self, obj):
        effects = Message.objects.filter(causation_id=obj.pk).only("id", "type", "status").order_by("id")
        effects = list(effects[: MAX_CONSEQUENCES + 1])
        if not effects:
            return "—"
        more = ""
        if len(effects) > MAX_CONSEQUENCES:
            effects = effects[:MAX_CONSEQUENCES]
            url = conversation_url(obj.correlation_id)
            more = format_html('<li>… and more: <a href="{}">see the conversation</a></li>', url)
        items = format_html_join("", "<li>{}</li>", ((message_link(m),) for m in effects))
        return format_html('<ul class="catga-links">{}{}</ul>', items, more)

    @admin.display(description="replay history")
    def replay_history(self, obj):
        replays = (obj.headers or {}).get("replays") or []
        if not replays:
            return "never replayed"
        rows = format_html_join(
            "",
            '<tr><td class="catga-num">#{}</td><td>{}</td><td>{}</td><td><code>{}.replay.{}</code></td></tr>',
            ((n, _instant(r.get("at")), r.get("by", "?"), obj.pk, n) for n, r in enumerate(replays, start=1)),
        )
        return format_html(
            '<table class="catga-replays" id="catga-replays"><thead><tr><th>replay</th><th>when (UTC)</th>'
            "<th>by</th><th>JetStream de-duplication id</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return pretty_json(obj.payload)

    @admin.display(description="headers")
    def headers_pretty(self, obj):
        return pretty_json(obj.headers)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        deliveries = [
            DeliveryView(d) for d in Delivery.objects.filter(message_id=object_id).order_by("first_started_at", "id")
        ]
        context = {
            **(extra_context or {}),
            "deliveries": deliveries,
            "can_replay": admin_dead_letters.may_replay(request),
            "can_revoke": revocations.may_revoke(request),
            "revocable_statuses": revocations.REVOCABLE_STATUSES,
        }
        return super().change_view(request, object_id, form_url, context)

    # -- conversation and dashboard -----------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("conversation/", wrap(self.conversation_view), name="mediator_message_conversation_search"),
            path("conversation/<str:key>/", wrap(self.conversation_view), name="mediator_message_conversation"),
            path("dashboard/", wrap(self.dashboard_view), name="mediator_dashboard"),
            *self.revoke_urls(),
            *super().get_urls(),
        ]

    def conversation_view(self, request, key=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        key = normalise_id(key if key is not None else request.GET.get("q", ""))
        correlation_id = admin_conversation.resolve(key) if key else None
        if correlation_id and correlation_id != key:
            return HttpResponseRedirect(conversation_url(correlation_id))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "key": key,
            "title": f"Conversation {correlation_id}" if correlation_id else "Find a conversation",
            "conversation": admin_conversation.load(correlation_id) if correlation_id else None,
            "sagas": admin_sagas.of_conversation(request, correlation_id) if correlation_id else [],
            "max_messages": admin_conversation.MAX_MESSAGES,
        }
        return TemplateResponse(request, "admin/mediator/message/conversation.html", context)

    def dashboard_view(self, request):
        return dashboard_views.dashboard(request, self)


class DeliveryView:
    """A delivery with its attempt log's timestamps parsed, for the message page."""

    def __init__(self, delivery: Delivery):
        self.delivery = delivery
        self.attempt_log = [
            {**entry, "started": _clock(entry.get("started_at")), "finished": _clock(entry.get("finished_at"))}
            for entry in delivery.attempt_log or []
        ]
        self.result = pretty_json(delivery.result) if delivery.result is not None else ""
        self.duration = format_ms(delivery.duration_ms)

    def __getattr__(self, name):
        return getattr(self.delivery, name)


def _instant(value: str | None) -> str:
    """An ISO timestamp (a replay's) as a UTC date and time to the millisecond."""
    try:
        return precise(dt.datetime.fromisoformat(value), digits=3) if value else "—"
    except ValueError:
        return value


def _clock(value: str | None) -> str:
    """An attempt log's ISO timestamp as a wall-clock time with microseconds (UTC)."""
    if not value:
        return "—"
    try:
        return f"{dt.datetime.fromisoformat(value).astimezone(dt.UTC):%H:%M:%S.%f}"
    except ValueError:
        return value


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ["message", "handler", "context", "status_badge", "attempts", "duration_ms", "finished_at"]
    list_filter = ["status", ContextFilter]
    search_fields = ["=message__id", "=message__correlation_id"]
    search_help_text = "A message id or a correlation id."
    list_select_related = ["message"]
    sortable_by = ["finished_at"]

    def get_search_results(self, request, queryset, search_term):
        term = normalise_id(search_term)
        if not term:
            return queryset, False
        return queryset.filter(Q(message_id=term) | Q(message__correlation_id=term)), False

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return coloured(obj.status)

    def get_queryset(self, request):
        return super().get_queryset(request).defer("traceback", "result", "attempt_log", "message__payload")
