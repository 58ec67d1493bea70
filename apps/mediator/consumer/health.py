"""The consumer's small HTTP port: /health/live, /health/ready and /metrics.

Live means the fetch loop has made progress recently — a fetch returned, or a running
handler's heartbeat was sent — within CATGA["LIVENESS_WINDOW"]: a pull that hangs after
a reconnect, or handler threads wedged past their timeout holding every slot, turn it
false, so Kubernetes restarts the pod. Ready means connected, bound to its consumers,
not draining, and the database answered the last delivery or reading (an outage turns it
false until one gets through). /metrics is the process's Prometheus registry (catga_* and
the Python runtime's own).
"""

import asyncio
import json
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from apps.mediator.core.conf import catga_settings


class HealthServer:
    def __init__(self, worker):
        self.worker = worker
        self.server: asyncio.base_events.Server | None = None

    async def start(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 (probes come from the kubelet)
        self.server = await asyncio.start_server(self._serve, host, port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def checks(self) -> dict[str, dict]:
        state = self.worker.state
        stalled_for = time.monotonic() - state.last_progress
        window = catga_settings.LIVENESS_WINDOW  # no fetch returned and no heartbeat sent for this long: stuck
        receiver = getattr(self.worker, "receiver", None)
        connected = bool(receiver is not None and receiver.connected)
        return {
            "live": {"ok": stalled_for < window, "seconds_since_progress": round(stalled_for, 1)},
            "ready": {
                "ok": connected and state.bound and not state.draining and state.database,
                "connected": connected,
                "database": state.database,
                "bound": state.bound,
                "draining": state.draining,
                "in_flight": state.in_flight,
            },
        }

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            status, content_type, body = self._route(path)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _route(self, path: str) -> tuple[str, str, bytes]:
        if path.rstrip("/") in ("/health/live", "/health/ready"):
            check = self.checks()["live" if path.rstrip("/").endswith("live") else "ready"]
            status = "200 OK" if check["ok"] else "503 Service Unavailable"
            return status, "application/json", json.dumps(check).encode()
        if path.rstrip("/") == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest()
        return "404 Not Found", "text/plain", b"not found\n"
