"""The history: one Message row per message and one Delivery row per handling.

The same pair is the outbox (Message rows with status `pending` are not yet
published), the inbox (a succeeded Delivery for (message, handler) means a
redelivery is acknowledged without running the handler again) and the audit trail.
"""

from django.db import models
from django.utils import timezone


class Message(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "pending (in outbox)"
        PUBLISHED = "published", "published"
        HANDLED = "handled", "handled"
        FAILED = "failed", "failed (retrying)"
        DEAD = "dead", "dead letter"
        # Settled without being handled: an operator revoked (or purged) it, or its
        # `expires` passed first. The dispatcher acknowledges such a delivery unrun.
        REVOKED = "revoked", "revoked"
        EXPIRED = "expired", "expired"

    id = models.CharField(primary_key=True, max_length=26, editable=False)
    type = models.CharField(max_length=200)
    kind = models.CharField(max_length=10)
    context = models.CharField(max_length=50)
    correlation_id = models.CharField(max_length=26)
    causation_id = models.CharField(max_length=26, blank=True, default="")
    qos = models.CharField(max_length=20)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    payload = models.JSONField()
    headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()
    available_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    publish_attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-id"]
        # Replaying a dead letter re-runs handlers: a permission of its own, apart from
        # viewing the (read-only) history.
        # Revoking (and purging) cancels messages not yet handled: one more of its own.
        permissions = [
            ("replay_message", "Can replay dead letters"),
            ("revoke_message", "Can revoke and purge queued messages"),
        ]
        # Every index here is written by each insert and each status change (a status change
        # is never a HOT update: status is indexed), so each must serve a query: the admin's
        # searches are exact (`=id`), so no varchar_pattern_ops twins (migration 0011), and
        # created_at alone is msg_created_status's leading column.
        indexes = [
            models.Index(fields=["correlation_id"], name="msg_correlation"),
            models.Index(fields=["causation_id"], name="msg_causation"),
            models.Index(fields=["status", "id"], name="msg_status_id"),
            models.Index(fields=["type", "id"], name="msg_type_id"),
            models.Index(fields=["context", "id"], name="msg_context_id"),
            # No index for the admin's kind filter: a stored message is a command or an event,
            # neither rare, so the newest rows of either are found reading the primary key
            # backwards (migration 0013). created/status serves the dashboard's per-minute
            # throughput and prune_messages' sweep without reading the table.
            models.Index(fields=["created_at", "status"], name="msg_created_status"),
            # The outbox relay's sweep reads only unpublished rows.
            models.Index(
                fields=["available_at", "id"],
                name="msg_outbox",
                condition=models.Q(status="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class DeadLetter(Message):
    """The admin's view of dead messages (status "dead"): the same rows, no table of its own."""

    class Meta:
        proxy = True
        verbose_name = "dead letter"
        default_permissions = ()  # viewing is view_message, replaying is replay_message


class Delivery(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        RETRYING = "retrying", "retrying"
        DEAD = "dead", "dead"

    # Not indexed alone: delivery_once_per_handler (message, handler) serves lookups by message.
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    handler = models.CharField(max_length=300)
    context = models.CharField(max_length=50)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    attempts = models.PositiveIntegerField(default=0)
    first_started_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    # One entry per attempt: {"attempt", "started_at", "finished_at", "outcome", "error"}.
    attempt_log = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["message", "handler"], name="delivery_once_per_handler"),
        ]
        indexes = [models.Index(fields=["status", "finished_at"], name="delivery_status_finished")]

    def __str__(self) -> str:
        return f"{self.handler} {self.status}"


class SagaState(models.Model):
    """One running (or finished) saga: where it is, its data, and what happened when."""

    class Status(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        COMPENSATING = "compensating"
        FAILED = "failed"
        CANCELLED = "cancelled"
        STUCK = "stuck"  # a pivot step's command is dead: an operator replays it or compensates

    name = models.CharField(max_length=100)
    correlation_id = models.CharField(max_length=26)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RUNNING)
    current_step = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=100, blank=True, default="")
    data = models.JSONField(default=dict)
    # [{"step", "event": started|completed|failed|timed_out|compensating|cancelled|..., "at", "message_id", "detail"}]
    step_log = models.JSONField(default=list)
    # The current step's timer: when its Timeout command is due (null: none armed) and which
    # re-arm it is. A column swept by the consumers, not a scheduled message in the history,
    # which every settled step would insert and delete (issue 16).
    deadline = models.DateTimeField(null=True, blank=True)
    # db_default: the processes of the previous release, running beside this one in a rolling
    # upgrade, insert sagas without it.
    timer_attempt = models.PositiveSmallIntegerField(default=0, db_default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "saga"
        constraints = [models.UniqueConstraint(fields=["name", "correlation_id"], name="one_saga_per_conversation")]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="saga_status_updated"),
            # The timer sweep's: only armed rows are in it, so it stays the size of the running sagas.
            models.Index(fields=["deadline"], name="saga_deadline", condition=models.Q(deadline__isnull=False)),
            # The admin finds a conversation's sagas by correlation id alone (search, links).
            models.Index(fields=["correlation_id"], name="saga_correlation"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.correlation_id} {self.status}"


class Workflow(models.Model):
    """A Celery-style chain or group, counted in the database rather than in a worker's memory."""

    class Kind(models.TextChoices):
        CHAIN = "chain"
        GROUP = "group"

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    id = models.CharField(primary_key=True, max_length=26, editable=False)
    kind = models.CharField(max_length=5, choices=Kind.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    # [{"type": wire name, "payload": {...}}]; a group's callback is kept apart.
    members = models.JSONField()
    callback = models.JSONField(null=True, blank=True)
    next_index = models.PositiveIntegerField(default=0)
    remaining = models.PositiveIntegerField(default=0)
    results = models.JSONField(default=list)
    error = models.TextField(blank=True, default="")
    correlation_id = models.CharField(max_length=26, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.id} {self.status}"


class WorkerHeartbeat(models.Model):
    """One row per running `manage.py run_consumer` process, upserted on every heartbeat.

    A row is live while its last beat is within 3 of its own intervals (each worker records
    the interval it beats at); a worker that died without a clean shutdown leaves a stale
    row, shown as gone and deleted by any worker's beat after 10 intervals.
    """

    id = models.CharField(primary_key=True, max_length=300, editable=False)  # host:pid:started ulid
    host = models.CharField(max_length=255)  # socket.gethostname(): the pod's name in Kubernetes
    pid = models.PositiveIntegerField()
    contexts = models.JSONField(default=list)
    concurrency = models.PositiveIntegerField()
    interval = models.FloatField()  # seconds between this worker's beats (CATGA["WORKER_HEARTBEAT"])
    started_at = models.DateTimeField()
    last_beat_at = models.DateTimeField(db_index=True)
    handled = models.PositiveBigIntegerField(default=0)
    in_flight = models.PositiveIntegerField(default=0)
    handling = models.JSONField(default=list)  # [{"type", "id"}] of what is in flight, at most 20
    throughput = models.FloatField(default=0.0)  # messages/s over the last interval
    queues = models.JSONField(default=list)  # --queue names; [] for every queue
    # Set by an operator (admin "Drain"): the worker stops fetching at its next beat and
    # finishes what it holds; it stays up, `paused`, until resumed.
    drain = models.BooleanField(default=False)
    paused = models.BooleanField(default=False)  # reported by the worker

    LIVE_INTERVALS = 3
    PRUNE_INTERVALS = 10

    class Meta:
        verbose_name = "worker"
        ordering = ["host", "pid"]
        default_permissions = ("view",)  # written by the workers only
        permissions = [("drain_worker", "Can drain and resume workers")]

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}"

    @property
    def live(self) -> bool:
        age = (timezone.now() - self.last_beat_at).total_seconds()
        return age <= self.LIVE_INTERVALS * self.interval


class Schedule(models.Model):
    """A periodic message (django-celery-beat's PeriodicTask): declared in CATGA["SCHEDULES"]
    or added in the admin, fired by whichever run_consumer claims it when due (storage/schedules.py).

    Either `every` (seconds, ticks anchored on the first) or `cron` (five fields, in
    `timezone`). The target is a command (`message_type` + `payload`) or, for the
    framework's own upkeep (prune_messages), a maintenance `call` by dotted path.
    """

    name = models.CharField(primary_key=True, max_length=200)
    message_type = models.CharField(max_length=200, blank=True, default="", help_text="wire name of the command")
    payload = models.JSONField(default=dict, blank=True)
    call = models.CharField(max_length=300, blank=True, default="", help_text="dotted path of a maintenance call")
    every = models.FloatField(null=True, blank=True, help_text="seconds between ticks")
    cron = models.CharField(max_length=120, blank=True, default="", help_text='e.g. "30 3 * * *"')
    timezone = models.CharField(max_length=64, default="UTC")
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField()
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_message_id = models.CharField(max_length=26, blank=True, default="")
    total_runs = models.PositiveBigIntegerField(default=0)
    skipped_runs = models.PositiveBigIntegerField(default=0)  # missed ticks older than SCHEDULE_CATCHUP
    # Hash of the definition in code: a declared schedule is updated when its code changes,
    # and keeps what the admin edited while it does not.
    declared = models.CharField(max_length=64, blank=True, default="", editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [
            models.Index(fields=["next_run_at"], name="schedule_due", condition=models.Q(enabled=True)),
        ]

    def __str__(self) -> str:
        return self.name


class RateLimit(models.Model):
    """One rate-limited message type's schedule of start slots (storage/rate_limits.py)."""

    key = models.CharField(primary_key=True, max_length=200)
    next_slot_at = models.DateTimeField()  # the earliest start still free

    class Meta:
        default_permissions = ()

    def __str__(self) -> str:
        return self.key


class RateReservation(models.Model):
    """A start slot taken by a message that has to wait for it (redelivered at `slot_at`)."""

    message_id = models.CharField(primary_key=True, max_length=26)
    key = models.CharField(max_length=200)
    slot_at = models.DateTimeField(db_index=True)

    class Meta:
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.key} {self.message_id}"
