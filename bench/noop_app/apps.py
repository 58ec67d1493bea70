from django.apps import AppConfig


class NoopConfig(AppConfig):
    name = "bench.noop_app"
    label = "bench_noop"
    catga_context = "bench"  # the name of its messages' context
    verbose_name = "Benchmark no-op context"
