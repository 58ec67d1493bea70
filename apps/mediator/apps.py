from django.apps import AppConfig


class MediatorConfig(AppConfig):
    name = "apps.mediator"
    label = "mediator"
    verbose_name = "Messages"

    def ready(self) -> None:
        # Build the handler registry now so that a command with no handler, or two,
        # stops start-up with a clear list instead of failing on first use.
        from apps.mediator import runtime

        runtime.get_registry()
