from django.apps import AppConfig


class NoopConfig(AppConfig):
    name = "bench.noop_app"
    label = "bench_noop"
    verbose_name = "Benchmark no-op context"
