"""Revoking from the admin: the message history's "Revoke selected messages…" action and a
message page's "Revoke…" button, both through a confirmation page, both through the
service behind `manage.py revoke` (apps.mediator.storage.revoke) with the admin user as
the actor, so the message records who revoked it, when and why.

Revoking cancels work, so it takes a permission of its own, `mediator.revoke_message`
(Message.Meta.permissions), apart from viewing and from replaying.
"""

import datetime as dt

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from apps.mediator.console.common import message_url, precise
from apps.mediator.console.dead_letters import actor_of
from apps.mediator.models import Message
from apps.mediator.orchestration import revocation as cancelling
from apps.mediator.storage import history, revoke

REVOKE_PERMISSION = "mediator.revoke_message"
MAX_AT_ONCE = 500  # more than this is a job for `manage.py purge --context … --type …`
MAX_SUCCESS_NOTES = 20
REVOCABLE_STATUSES = [status.value for status in history.UNHANDLED]  # the message page's "Revoke…" button
CONFIRM_FIELDS = ("id", "type", "context", "status", "qos", "available_at", "expires_at", "created_at")


def may_revoke(request) -> bool:
    return request.user.is_active and request.user.is_staff and request.user.has_perm(REVOKE_PERMISSION)


def revocable(message: Message, now: dt.datetime | None = None) -> bool:
    """What the confirmation page offers: not handled yet, and checked where it is delivered."""
    if message.status not in history.UNHANDLED:
        return False
    scheduled = message.available_at is not None and message.available_at > (now or timezone.now())
    return revoke.checked_at_dispatch(message) or (message.status == Message.Status.PENDING and scheduled)


def revocation(message: Message) -> str:
    """The message page's line: who revoked it (or a purge, or its expiry), when and why."""
    record = (message.headers or {}).get("revoked")
    if message.status == Message.Status.EXPIRED and not record:
        return format_html("expired at {} (UTC): not handled", precise(message.expires_at, digits=3) or "—")
    if not record:
        return "not revoked"
    purge = ""
    if record.get("purge"):
        purge = format_html(" in purge <code>{}</code> of {} message(s)", record["purge"], record.get("count", "?"))
    return format_html(
        '<span id="catga-revoked">revoked by <strong>{}</strong> at {} (UTC){}; was {}{}</span>',
        record.get("by", "?"),
        _instant(record.get("at")),
        purge,
        record.get("was", "?"),
        format_html(": “{}”", record["reason"]) if record.get("reason") else "",
    )


def _instant(value: str | None) -> str:
    try:
        return precise(dt.datetime.fromisoformat(value), digits=3) if value else "—"
    except ValueError:
        return value


class RevokeActions:
    """Mixed into the history's MessageAdmin: the action, the per-message view, the confirmation."""

    def has_revoke_permission(self, request):
        return may_revoke(request)

    def revoke_urls(self):
        wrap = self.admin_site.admin_view
        return [path("<str:object_id>/revoke/", wrap(self.revoke_one_view), name="mediator_message_revoke")]

    @admin.action(description="Revoke selected messages…", permissions=["revoke"])
    def revoke_selected(self, request, queryset):
        if request.POST.get("post") == "yes":
            self.revoke_confirmed(request, queryset, request.POST.get("reason", ""))
            return None  # back to the list, filters kept
        return self.revoke_confirmation(request, queryset, action="revoke_selected", cancel=request.get_full_path())

    def revoke_one_view(self, request, object_id):
        if not self.has_revoke_permission(request):
            raise PermissionDenied
        queryset = Message.objects.filter(pk=object_id)
        back = message_url(object_id)
        if request.method == "POST" and request.POST.get("post") == "yes":
            self.revoke_confirmed(request, queryset, request.POST.get("reason", ""))
            return HttpResponseRedirect(back)
        if not queryset.exists():
            self.message_user(request, f"No message {object_id}: nothing to revoke.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:mediator_message_changelist"))
        return self.revoke_confirmation(request, queryset, action=None, cancel=back)

    def revoke_confirmation(self, request, queryset, *, action: str | None, cancel: str):
        rows = list(queryset.only(*CONFIRM_FIELDS).order_by("id")[: MAX_AT_ONCE + 1])
        if len(rows) > MAX_AT_ONCE:
            self.message_user(request, too_many(), messages.ERROR)
            return None
        now = timezone.now()
        lines = [(row, revocable(row, now)) for row in rows]
        context = {
            **self.admin_site.each_context(request),
            "title": "Revoke these messages?" if len(rows) != 1 else "Revoke this message?",
            "opts": self.opts,
            "rows": lines,
            "revocable": sum(ok for _, ok in lines),
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "cancel_url": cancel,
            "actor": actor_of(request),
            "changelist_url": reverse("admin:mediator_message_changelist"),
        }
        return TemplateResponse(request, "admin/mediator/message/revoke_confirmation.html", context)

    def revoke_confirmed(self, request, queryset, reason: str) -> None:
        ids = list(queryset.order_by("id").values_list("pk", flat=True)[: MAX_AT_ONCE + 1])
        if len(ids) > MAX_AT_ONCE:
            self.message_user(request, too_many(), messages.ERROR)
            return
        results = cancelling.revoke(ids, actor=actor_of(request), reason=reason.strip()[:500])
        types = dict(Message.objects.filter(pk__in=ids).values_list("id", "type"))
        done = 0
        for result in results:
            name = f"{types.get(result.message_id, '')} {result.message_id}".strip()
            if not result.ok:
                self.message_user(request, f"Did not revoke {name}: {result.detail}.", messages.WARNING)
                continue
            done += 1
            if done <= MAX_SUCCESS_NOTES:
                self.message_user(request, f"Revoked {name}: {result.detail}.", messages.SUCCESS)
        if done > MAX_SUCCESS_NOTES:
            self.message_user(request, f"… and {done - MAX_SUCCESS_NOTES} more revoked.", messages.SUCCESS)
        if len(results) > 1:
            self.message_user(request, f"Revoked {done} of {len(results)} selected messages.", messages.INFO)


def too_many() -> str:
    return (
        f"More than {MAX_AT_ONCE} messages selected: revoke at most {MAX_AT_ONCE} at once here, "
        "or use `manage.py purge --context … --type …`."
    )
