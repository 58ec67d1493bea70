"""The live workers view (what Flower is opened for): one row per run_consumer process.

Read-only: the workers write their rows (consumer/heartbeat.py). A worker whose last
beat is older than 3 of its heartbeat intervals is shown as gone (killed, its node
lost); its row is deleted by the other workers' beats after 10.
"""

from django.contrib import admin
from django.utils import timezone

from apps.mediator.console.common import ReadOnlyAdmin
from apps.mediator.models import WorkerHeartbeat


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdmin):
    list_display = [
        "host",
        "pid",
        "context_list",
        "concurrency",
        "started",
        "last_beat",
        "is_live",
        "in_flight",
        "handled",
        "rate",
    ]
    list_display_links = None
    list_per_page = 100
    sortable_by = ["host", "pid"]

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Workers", **(extra_context or {})})

    @admin.display(description="contexts")
    def context_list(self, obj: WorkerHeartbeat) -> str:
        return ", ".join(obj.contexts)

    @admin.display(description="started")
    def started(self, obj: WorkerHeartbeat) -> str:
        return f"{obj.started_at.astimezone(timezone.get_current_timezone()):%Y-%m-%d %H:%M:%S}"

    @admin.display(description="last beat")
    def last_beat(self, obj: WorkerHeartbeat) -> str:
        return f"{(timezone.now() - obj.last_beat_at).total_seconds():.1f}s ago"

    @admin.display(description="live", boolean=True)
    def is_live(self, obj: WorkerHeartbeat) -> bool:
        return obj.live

    @admin.display(description="throughput")
    def rate(self, obj: WorkerHeartbeat) -> str:
        return f"{obj.throughput:.1f}/s"
