"""What the console's admin pages share: read-only admins, id search, links, formatting."""

import datetime as dt
import json

from django.contrib import admin
from django.db.models import Q
from django.urls import reverse
from django.utils.html import format_html

from apps.mediator.console import extensions
from apps.mediator.console.paginator import CappedCountPaginator, horizon_for
from apps.mediator.console.style import coloured
from apps.mediator.core.ids import _ALPHABET
from apps.mediator.models import Message


def normalise_id(term: str) -> str:
    """Ids are upper-case ULIDs; a pasted lower-case one still matches exactly."""
    term = term.strip()
    upper = term.upper()
    if len(upper) == 26 and all(c in _ALPHABET for c in upper):
        return upper
    return term


def search_messages(queryset, search_term: str):
    """Messages named by a message id, a correlation id, or an id a resolver knows (an order id).

    Exact matches on indexed columns only (the admin's `=` lookups are iexact, which no index serves).
    """
    term = normalise_id(search_term)
    if not term:
        return queryset
    ids = [term, *extensions.correlation_ids_for(term)]
    return queryset.filter(Q(pk=term) | Q(correlation_id__in=ids) | Q(causation_id=term))


def conversation_url(correlation_id: str) -> str:
    return reverse("admin:mediator_message_conversation", args=[correlation_id])


def message_url(message_id: str) -> str:
    return reverse("admin:mediator_message_change", args=[message_id])


def message_link(message: Message) -> str:
    return format_html(
        '<a href="{}">{}</a> {} {}', message_url(message.pk), message.type, message.pk, coloured(message.status)
    )


SECRET_WORDS = ("token", "secret", "password", "card")


def masked(value):
    """JSON with anything that looks like a credential (a payment token) hidden."""
    if isinstance(value, dict):
        return {
            k: "•••• (hidden)" if any(w in str(k).lower() for w in SECRET_WORDS) else masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def pretty_json(value) -> str:
    """JSON for a console page, credentials masked (payloads carry payment tokens)."""
    text = json.dumps(masked(value), indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="catga-json">{}</pre>', text)


def precise(instant: dt.datetime | None, digits: int = 6) -> str:
    """A timestamp to the microsecond in UTC: ordering messages needs more than the admin's minutes."""
    if instant is None:
        return ""
    text = f"{instant.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S.%f}"
    return text[: len(text) - 6 + digits]


def two_lines(instant: dt.datetime | None) -> str:
    """A list cell: the time to the millisecond, the day beneath it."""
    if instant is None:
        return "—"
    day, time = precise(instant, digits=3).split(" ")
    return format_html('{}<br><small class="catga-muted">{}</small>', time, day)


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
