"""Periodic schedules in the admin (django-celery-beat's page): enable, disable, edit, run now.

Rows declared in CATGA["SCHEDULES"] are created by the consumers at start-up; the admin
may edit them (what it changes stands until the code's declaration changes) or add its
own. Changing the interval, cron or time zone moves the next run to the new timing.
"""

from django import forms
from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html

from apps.mediator.console.common import message_url
from apps.mediator.models import Schedule
from apps.mediator.storage import schedules

TIMING = ("every", "cron", "timezone")


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = ["name", "message_type", "payload", "call", "every", "cron", "timezone", "enabled"]

    def clean(self):
        data = super().clean()
        try:
            schedules.validate(
                every=data.get("every"),
                cron_text=data.get("cron") or "",
                tz=data.get("timezone") or "UTC",
                message_type_name=data.get("message_type") or "",
                call=data.get("call") or "",
                payload=data.get("payload"),
            )
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return data


def _local(moment) -> str:
    return f"{moment.astimezone(timezone.get_current_timezone()):%Y-%m-%d %H:%M:%S %Z}" if moment else "—"


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ["name", "target", "timing", "enabled", "last_run", "next_run", "total_runs", "last_message"]
    list_filter = ["enabled"]
    search_fields = ["name", "message_type", "call"]
    actions = ["enable", "disable", "run_now"]
    readonly_fields = ["next_run_at", "last_run_at", "last_message_id", "total_runs", "skipped_runs", "updated_at"]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "name"] if obj is not None else self.readonly_fields

    @admin.display(description="sends")
    def target(self, obj: Schedule) -> str:
        return obj.message_type or f"call {obj.call}"

    @admin.display(description="when")
    def timing(self, obj: Schedule) -> str:
        return f"every {obj.every:g}s" if obj.every else f"{obj.cron} ({obj.timezone})"

    @admin.display(description="last run", ordering="last_run_at")
    def last_run(self, obj: Schedule) -> str:
        return _local(obj.last_run_at)

    @admin.display(description="next run", ordering="next_run_at")
    def next_run(self, obj: Schedule) -> str:
        return _local(obj.next_run_at) if obj.enabled else "disabled"

    @admin.display(description="last message")
    def last_message(self, obj: Schedule):
        if not obj.last_message_id:
            return "—"
        return format_html('<a href="{}">{}</a>', message_url(obj.last_message_id), obj.last_message_id)

    def save_model(self, request, obj: Schedule, form, change):
        if not change or any(field in form.changed_data for field in TIMING) or obj.next_run_at is None:
            obj.next_run_at = schedules.first_tick(obj, timezone.now())
        super().save_model(request, obj, form, change)

    @admin.action(description="Enable the selected schedules", permissions=["change"])
    def enable(self, request, queryset):
        # Re-enabled from now on: the ticks missed while disabled are not fired late.
        now = timezone.now()
        for row in queryset.filter(enabled=False):
            row.enabled, row.next_run_at = True, schedules.first_tick(row, now)
            row.save(update_fields=["enabled", "next_run_at", "updated_at"])
        self.message_user(request, "Enabled.", messages.SUCCESS)

    @admin.action(description="Disable the selected schedules", permissions=["change"])
    def disable(self, request, queryset):
        count = queryset.update(enabled=False)
        self.message_user(request, f"Disabled {count} schedule(s).", messages.SUCCESS)

    @admin.action(description="Run the selected schedules now", permissions=["change"])
    def run_now(self, request, queryset):
        count = queryset.filter(enabled=True).update(next_run_at=timezone.now())
        self.message_user(request, f"{count} schedule(s) will run within a second or two.", messages.SUCCESS)
