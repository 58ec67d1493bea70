"""Observability of the mediator: Prometheus metrics, OpenTelemetry tracing, JSON logs, health checks.

The two pipeline behaviors are importable from here for CATGA["BEHAVIORS"]:

    "apps.mediator.observability.TracingBehavior"   a span per handler run (outermost)
    "apps.mediator.observability.MetricsBehavior"   counts, duration and in-flight per handler run

Add "apps.mediator.observability" to INSTALLED_APPS: its ready() installs tracing
when the settings ask for it.
"""

from apps.mediator.observability.metrics import MetricsBehavior
from apps.mediator.observability.tracing import TracingBehavior

__all__ = ["MetricsBehavior", "TracingBehavior"]
