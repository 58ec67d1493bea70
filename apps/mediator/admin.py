"""The message history in the admin: a read-only operations console.

- The list stays fast at millions of rows: filters take their choices from code
  (admin_filters), search matches ids exactly on indexed columns, the payload is
  never loaded, and the paginator counts at most a few thousand rows.
- A message's page shows its payload, headers, cause, consequences and every
  delivery with its attempt log, error and traceback.
- `conversation/<id>/` shows everything sharing a correlation id as a causation tree
  with a timeline; `dashboard/` shows throughput, handling times and backlogs.
- Other apps contribute search resolvers and dashboard panels through admin_console.
"""

import datetime as dt
import json

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, Q
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from apps.mediator import admin_console, admin_conversation
from apps.mediator.admin_filters import ContextFilter, KindFilter, TypeFilter
from apps.mediator.admin_paginator import CappedCountPaginator, horizon_for
from apps.mediator.admin_style import coloured
from apps.mediator.dashboard import views as dashboard_views
from apps.mediator.ids import _ALPHABET
from apps.mediator.models import Delivery, Message

# The admin index gains a "Message operations" box (dashboard, history, dead letters);
# a project that set its own index template keeps it.
if admin.site.index_template is None:
    admin.site.index_template = "admin/mediator/index.html"

HEAVY_MESSAGE_FIELDS = ("payload", "headers", "last_error")
MAX_CONSEQUENCES = 50


def normalise_id(term: str) -> str:
    """Ids are upper-case ULIDs; a pasted lower-case one still matches exactly."""
    term = term.strip()
    upper = term.upper()
    if len(upper) == 26 and all(c in _ALPHABET for c in upper):
        return upper
    return term


def conversation_url(correlation_id: str) -> str:
    return reverse("admin:mediator_message_conversation", args=[correlation_id])


def message_link(message: Message) -> str:
    url = reverse("admin:mediator_message_change", args=[message.pk])
    return format_html('<a href="{}">{}</a> {} {}', url, message.type, message.pk, coloured(message.status))


def pretty_json(value) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="catga-json">{}</pre>', text)


def precise(instant: dt.datetime | None, digits: int = 6) -> str:
    """A timestamp to the microsecond in UTC: ordering messages needs more than the admin's minutes."""
    if instant is None:
        return ""
    text = f"{instant.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S.%f}"
    return text[: len(text) - 6 + digits]


def format_ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms"


class ReadOnlyAdmin(admin.ModelAdmin):
    show_facets = admin.ShowFacets.NEVER  # facet counts are a COUNT per filter choice
    show_full_result_count = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        page = request.GET.get("p", "1")
        horizon = horizon_for(int(page) if page.isdigit() else 1, per_page)
        return CappedCountPaginator(queryset, per_page, orphans, allow_empty_first_page, horizon=horizon)


class MessageChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        queryset = super().get_queryset(request, exclude_parameters)
        slim_deliveries = Delivery.objects.only("id", "message_id", "attempts", "duration_ms").order_by()
        return queryset.defer(*HEAVY_MESSAGE_FIELDS).prefetch_related(Prefetch("deliveries", slim_deliveries))


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
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
        ("Outbox", {"fields": ["created_precise", "available", "published", "publish_attempts", "last_error"]}),
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
    ]

    # -- list --------------------------------------------------------------------

    def get_changelist(self, request, **kwargs):
        return MessageChangeList

    def get_search_results(self, request, queryset, search_term):
        """Exact matches on indexed columns only (the admin's `=` lookups are iexact, which no index serves)."""
        term = normalise_id(search_term)
        if not term:
            return queryset, False
        ids = [term, *admin_console.correlation_ids_for(term)]
        matches = queryset.filter(Q(pk=term) | Q(correlation_id__in=ids) | Q(causation_id=term))
        return matches, False

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
        day, time = precise(obj.created_at, digits=3).split(" ")
        return format_html('{}<br><small class="catga-muted">{}</small>', time, day)

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

    @admin.display(description="published (UTC)")
    def published(self, obj):
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
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "deliveries": deliveries})

    # -- conversation and dashboard -----------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("conversation/", wrap(self.conversation_view), name="mediator_message_conversation_search"),
            path("conversation/<str:key>/", wrap(self.conversation_view), name="mediator_message_conversation"),
            path("dashboard/", wrap(self.dashboard_view), name="mediator_dashboard"),
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
