"""The web's probes, with django-health-check.

    /health/live    the process answers (a database or NATS outage must not restart the pod)
    /health/ready   the database answers, NATS is connected and the app's streams exist

Both answer 200 or 503; HTML by default, JSON with `?format=json` or
`Accept: application/json`, plain text with `?format=text`. `ProbeMiddleware`,
first in MIDDLEWARE, answers these two paths and /metrics before anything looks at
the Host header: the kubelet and Prometheus call the pod IP, which ALLOWED_HOSTS
need not list.
"""

import contextlib
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import async_to_sync, iscoroutinefunction
from django_prometheus.exports import ExportToDjangoView
from health_check.views import HealthCheckView

# Checks that block (SQL, NATS round trips) run here, not in the event loop's default
# executor: asyncio.run() waits for that one to finish at exit, which would hold the
# request until a hung connect gave up instead of until the check's timeout.
_checks_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="catga-health")


class _Probe(HealthCheckView):
    def get_executor(self):
        return contextlib.nullcontext(_checks_pool)

    async def get(self, request, *args, **kwargs):
        response = await super().get(request, *args, **kwargs)
        if response.status_code == 500:  # django-health-check's "a check failed"
            response.status_code = 503  # what a load balancer and a kubelet read as "not now"
        return response


class LiveView(_Probe):
    checks = ("apps.mediator.checks.Process",)


class ReadyView(_Probe):
    checks = (
        "apps.mediator.checks.Database",
        "apps.mediator.checks.Nats",
    )


live = LiveView.as_view()
ready = ReadyView.as_view()
# Prometheus scrapes the pod IP too: /metrics is answered here as well.
PROBES = {"/health/live": live, "/health/ready": ready, "/metrics": ExportToDjangoView}


class ProbeMiddleware:
    """Serve the probe paths and /metrics ahead of host validation, HTTPS redirects and sessions."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        view = PROBES.get(request.path_info.rstrip("/") or "/")
        if view is None or request.method not in ("GET", "HEAD"):
            return self.get_response(request)
        response = async_to_sync(view)(request) if iscoroutinefunction(view) else view(request)
        if hasattr(response, "render"):
            response = response.render()  # a TemplateResponse (the HTML page)
        return response
