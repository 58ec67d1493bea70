from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "apps.mediator.observability"
    label = "catga_observability"
    verbose_name = "Observability"

    def ready(self) -> None:
        from apps.mediator.observability import tracing

        tracing.setup()
