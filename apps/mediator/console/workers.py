"""The live workers view (what Flower is opened for): one row per run_consumer process.

The workers write their rows (consumer/heartbeat.py). A worker whose last beat is older
than 3 of its heartbeat intervals is shown as gone (killed, its node lost); its row is
deleted by the other workers' beats after 10. With the drain permission an operator can
drain a worker (it stops fetching at its next beat and finishes what it holds, staying
up) and resume it.
"""

from django.contrib import admin, messages
from django.utils import timezone

from apps.mediator.console.common import ReadOnlyAdmin
from apps.mediator.models import WorkerHeartbeat
from apps.mediator.storage import workers


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdmin):
    list_display = [
        "host",
        "pid",
        "context_list",
        "queue_list",
        "concurrency",
        "started",
        "last_beat",
        "is_live",
        "fetching",
        "in_flight",
        "handled",
        "rate",
    ]
    list_display_links = None
    actions = ["drain", "resume"]
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

    @admin.display(description="queues")
    def queue_list(self, obj: WorkerHeartbeat) -> str:
        return ", ".join(obj.queues) or "all"

    @admin.display(description="fetching")
    def fetching(self, obj: WorkerHeartbeat) -> str:
        if obj.paused:
            return "drained" if obj.in_flight == 0 else f"draining ({obj.in_flight} left)"
        return "drain asked" if obj.drain else "yes"

    def has_drain_permission(self, request) -> bool:
        return request.user.has_perm("mediator.drain_worker")

    @admin.action(description="Drain: stop fetching, finish in-flight", permissions=["drain"])
    def drain(self, request, queryset):
        count = workers.request_drain(queryset.values_list("pk", flat=True), True)
        self.message_user(request, f"{count} worker(s) will stop fetching at their next heartbeat.", messages.SUCCESS)

    @admin.action(description="Resume fetching", permissions=["drain"])
    def resume(self, request, queryset):
        count = workers.request_drain(queryset.values_list("pk", flat=True), False)
        self.message_user(request, f"{count} worker(s) will fetch again at their next heartbeat.", messages.SUCCESS)
