"""Gunicorn settings for the web role: `gunicorn -c catga_site/gunicorn.conf.py catga_site.wsgi:application`.

Every number that an operator may need to change reads an environment variable, with
the value used in Kubernetes as its default. The timing contract with the pod spec:

    preStop sleep (5 s)  +  graceful_timeout (25 s)  <  terminationGracePeriodSeconds (40 s)

so a worker finishing a request after SIGTERM is never killed by the kubelet's SIGKILL.
tests/k8s checks that inequality against the rendered manifests.
"""

import os
from pathlib import Path


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")

# Sized per container, not per node: os.cpu_count() in a pod reports the node's CPUs.
# 2 workers x 4 threads fits the 512Mi limit with room (provisional until RSS is
# measured under load; see docs/operations.md).
workers = _int("WEB_CONCURRENCY", 2)
worker_class = "gthread"
threads = _int("GUNICORN_THREADS", 4)

timeout = _int("GUNICORN_TIMEOUT", 30)  # a worker silent this long is killed and replaced
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 25)  # after SIGTERM, to finish in-flight requests
keepalive = _int("GUNICORN_KEEPALIVE", 5)  # above a load balancer's idle timeout is not needed in-cluster

# Recycle workers now and then so a slow leak cannot reach the memory limit.
max_requests = _int("GUNICORN_MAX_REQUESTS", 1000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 100)

# The heartbeat file goes to tmpfs: on a container's overlay filesystem (or a read-only
# root) gunicorn's default tmp dir makes workers stall on disk or fail to start.
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR", "/dev/shm")  # noqa: S108 (tmpfs on purpose)

# gunicornc's control socket; the default under $HOME is not writable in the pod.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "/tmp/gunicorn/gunicorn.ctl")  # noqa: S108 (emptyDir)

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# Trust X-Forwarded-* only from the local sidecar/ingress hop, never from clients.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")


def _multiproc_dir() -> Path | None:
    raw = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(raw) if raw else None


def on_starting(server) -> None:
    """Start with an empty Prometheus multiprocess dir: files of a previous run would be summed in."""
    directory = _multiproc_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink()


def post_worker_init(worker) -> None:
    """Connect this worker's transport before it serves, so its first request or probe need not wait."""
    from apps.mediator import mediator

    mediator.transport.connect_in_background()


def child_exit(server, worker) -> None:
    """Tell prometheus_client a worker is gone, so its live gauges stop counting."""
    if _multiproc_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
