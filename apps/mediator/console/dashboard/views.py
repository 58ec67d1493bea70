"""The dashboard page: staff with view permission on messages, refreshes itself."""

from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from apps.mediator.console import extensions
from apps.mediator.console.dashboard import chart, stats
from apps.mediator.models import Message, SagaState
from apps.mediator.storage import workers

REFRESH_SECONDS = 10


def refresh_seconds(request) -> int:
    """?refresh=N sets the period (0 pauses, for reading or a screenshot); 5 s at least."""
    raw = request.GET.get("refresh", "")
    if not raw.isdigit():
        return REFRESH_SECONDS
    return 0 if int(raw) == 0 else max(int(raw), 5)


def dashboard(request, model_admin):
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    now = timezone.now()
    minutes = stats.throughput(now)
    changelist = reverse("admin:mediator_message_changelist")
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Operations dashboard",
        "opts": Message._meta,
        "now": now,
        "refresh": refresh_seconds(request),
        "window_minutes": stats.WINDOW_MINUTES,
        "chart": chart.stacked_bars(minutes),
        "window_total": sum(m.total for m in minutes),
        "timings": stats.handling_times(now),
        "percentile_sample": stats.PERCENTILE_SAMPLE,
        "waiting": stats.waiting(now),
        "consumers": stats.consumer_pending(),
        "workers": workers.summary(),
        "workers_url": reverse("admin:mediator_workerheartbeat_changelist"),
        "panels": extensions.panels(),
        "changelist_url": changelist,
        "pending_url": f"{changelist}?status=pending",
        "failed_url": f"{changelist}?status=failed",
        "dead_url": reverse("admin:mediator_deadletter_changelist"),
        "stuck_sagas": SagaState.objects.filter(status=SagaState.Status.STUCK).count(),
        "stuck_url": reverse("admin:mediator_sagastate_changelist") + "?status__exact=stuck",
    }
    return TemplateResponse(request, "admin/mediator/dashboard.html", context)
