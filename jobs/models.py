"""Jobs, their schedules, executions, retry decisions and dead letters."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class Job(models.Model):
    """A job definition: what to run, where it fits, and how to retry it."""

    class Kind(models.TextChoices):
        SHELL = "shell"  # an argv list, run with no shell
        HTTP = "http"  # one HTTP request
        PYTHON = "python"  # a handler registered in code
        CONTAINER = "container"  # a command in a container of the node's Docker Engine, limits enforced

    class Status(models.TextChoices):
        ACTIVE = "active"  # fires on its schedule
        PAUSED = "paused"  # schedule kept, nothing fires
        COMPLETED = "completed"  # schedule exhausted (once ran, end passed, max runs reached)
        ARCHIVED = "archived"  # deleted by its owner; kept for its history

    class ConcurrencyPolicy(models.TextChoices):
        ALLOW = "allow"  # runs may overlap
        FORBID = "forbid"  # skip a slot while a run is still going
        REPLACE = "replace"  # cancel the running one, start the new one

    class MisfirePolicy(models.TextChoices):
        RUN_ONCE = "run_once"  # missed slots (beat was down) run once, late
        SKIP = "skip"  # missed slots are skipped; wait for the next one

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    payload = models.JSONField(default=dict)
    priority = models.PositiveSmallIntegerField(
        default=5,
        validators=[MaxValueValidator(9)],
        help_text="0 (lowest) to 9 (highest)",
    )
    cpu = models.DecimalField(
        max_digits=7, decimal_places=3, default=Decimal("0.1"), validators=[MinValueValidator(0)]
    )
    memory_mb = models.PositiveIntegerField(default=64)
    node_selector = models.JSONField(default=dict, blank=True, help_text="labels a node must have")
    timeout_seconds = models.PositiveIntegerField(default=3600, validators=[MinValueValidator(1)])
    max_retries = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    retry_backoff_seconds = models.PositiveIntegerField(default=10)
    retry_backoff_max_seconds = models.PositiveIntegerField(default=3600)
    retry_jitter = models.BooleanField(default=True)
    concurrency_policy = models.CharField(
        max_length=16, choices=ConcurrencyPolicy.choices, default=ConcurrencyPolicy.ALLOW
    )
    misfire_policy = models.CharField(
        max_length=16, choices=MisfirePolicy.choices, default=MisfirePolicy.RUN_ONCE
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    idempotency_key = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("run_shell", "Can submit and edit shell jobs")]
        indexes = [models.Index(fields=["owner", "status"]), models.Index(fields=["status"])]
        constraints = [
            models.CheckConstraint(condition=Q(priority__lte=9), name="job_priority_0_9"),
            models.CheckConstraint(condition=Q(cpu__gte=0), name="job_cpu_gte_0"),
            models.CheckConstraint(condition=Q(timeout_seconds__gte=1), name="job_timeout_gte_1"),
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="job_unique_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"


class JobSchedule(models.Model):
    """When a job fires; mirrored by one django-celery-beat PeriodicTask."""

    class Type(models.TextChoices):
        ONCE = "once"  # at one moment
        INTERVAL = "interval"  # every N seconds
        CRON = "cron"  # five-field cron in an IANA time zone

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="schedule")
    type = models.CharField(max_length=16, choices=Type.choices)
    run_at = models.DateTimeField(null=True, blank=True)
    every_seconds = models.PositiveIntegerField(null=True, blank=True)
    cron_expression = models.CharField(max_length=120, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    start_at = models.DateTimeField(null=True, blank=True)
    end_at = models.DateTimeField(null=True, blank=True)
    max_runs = models.PositiveIntegerField(null=True, blank=True)
    total_runs = models.PositiveIntegerField(default=0)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="job_schedule",
    )

    class Meta:
        indexes = [models.Index(fields=["next_run_at"])]
        constraints = [
            models.CheckConstraint(
                condition=~Q(type="once") | Q(run_at__isnull=False), name="schedule_once_has_run_at"
            ),
            models.CheckConstraint(
                condition=~Q(type="interval") | Q(every_seconds__gte=1),
                name="schedule_interval_has_every",
            ),
            models.CheckConstraint(
                condition=~Q(type="cron") | ~Q(cron_expression=""), name="schedule_cron_has_expr"
            ),
        ]

    def __str__(self) -> str:
        if self.type == self.Type.ONCE:
            return f"once at {self.run_at:%Y-%m-%d %H:%M:%S%z}"
        if self.type == self.Type.INTERVAL:
            return f"every {self.every_seconds}s"
        return f"cron '{self.cron_expression}' {self.timezone}"


class Execution(models.Model):
    """One attempt of one firing (slot) of a job, on one node.

    The table is partitioned by month on `scheduled_for` (jobs/migrations/0010_partitioned_history.py,
    scheduler_project/partitions.py): its primary key in PostgreSQL is (id, scheduled_for), and no foreign
    key constraint can point into it, so the references to an execution below and in other apps are
    `db_constraint=False` (Django's on_delete still cascades; retention, which drops whole partitions,
    clears them: monitoring.services.history).
    """

    class Status(models.TextChoices):
        PENDING = "pending"  # created, waiting for a node with room
        QUEUED = "queued"  # placed on a node and published to its queue
        RUNNING = "running"  # claimed by the node's worker
        SUCCEEDED = "succeeded"  # finished, exit code 0 / expected HTTP status
        FAILED = "failed"  # finished with an error
        RETRYING = "retrying"  # failed; a JobRetry will start the next attempt
        TIMED_OUT = "timed_out"  # killed at the job's timeout
        CANCELLED = "cancelled"  # cancelled by a person or by the replace policy
        SKIPPED = "skipped"  # a slot the concurrency or misfire policy declined
        LOST = "lost"  # its node died while it ran
        DEAD = "dead"  # failed with no attempts left; see its DeadLetter

    TERMINAL = frozenset(
        {
            Status.SUCCEEDED,
            Status.FAILED,
            Status.RETRYING,
            Status.TIMED_OUT,
            Status.CANCELLED,
            Status.SKIPPED,
            Status.LOST,
            Status.DEAD,
        }
    )
    ACTIVE = frozenset({Status.PENDING, Status.QUEUED, Status.RUNNING})

    class EndCause(models.TextChoices):
        # Why a run that started ended, as its executor saw it ("" before it ends, or when nothing ran).
        EXITED = "exited", "exited"  # the command ended by itself (any exit code)
        OOM_KILLED = "oom_killed", "out of memory"  # killed by the kernel: it went over its memory_mb
        TIMED_OUT = "timed_out", "timed out"  # killed at the job's timeout
        CANCELLED = "cancelled", "cancelled"  # killed because it was cancelled
        ENGINE_ERROR = "engine_error", "engine error"  # the container engine failed (or went away) mid-run
        START_FAILED = "start_failed", "did not start"  # missing program or image, refused by the engine

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"  # fired by beat for a slot
        MANUAL = "manual"  # "run now"
        RETRY = "retry"  # a retry of a failed attempt
        REPLAY = "replay"  # replay of a dead letter

    # Indexes are few on purpose: every status change rewrites the row into each index it matches (status
    # is indexed, so no change is a HOT update). job_id is served by the unique (job, slot, attempt) index.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="executions", db_index=False)
    scheduled_for = models.DateTimeField(help_text="the slot this execution serves")
    attempt = models.PositiveSmallIntegerField(default=1)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.SCHEDULE)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    node = models.ForeignKey(
        "nodes.Node",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="executions",
        db_index=False,  # what a node holds is the partial index below; a node is rarely deleted
    )
    claim_token = models.UUIDField(null=True, blank=True, help_text="fencing token of the claim")
    worker_pid = models.PositiveIntegerField(
        null=True, blank=True, help_text="pid of the worker process that claimed it (on its node's host)"
    )
    worker_incarnation = models.UUIDField(
        null=True, blank=True, help_text="the incarnation (boot id) of the worker start that claimed it"
    )
    pending_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    output = models.TextField(blank=True, help_text="the tail of stdout and stderr")
    output_truncated = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    progress = models.FloatField(null=True, blank=True, help_text="0..100 as reported by the job")
    end_cause = models.CharField(
        # db_default too: executions are inserted by SQL of their own (jobs.services.executions).
        max_length=16,
        choices=EndCause.choices,
        blank=True,
        default="",
        db_default="",
        help_text="why the run ended",
    )
    memory_peak_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="the most memory the run used (container jobs, as the engine saw it)"
    )
    cpu_seconds = models.FloatField(
        null=True, blank=True, help_text="CPU time the run used (container jobs, as the engine saw it)"
    )
    retry_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="retries",
        db_index=False,
        db_constraint=False,
    )
    replay_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="replays",
        db_index=False,
        db_constraint=False,
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "scheduled_for", "attempt"], name="execution_unique_slot_attempt"
            ),
        ]
        indexes = [
            # What a node holds (heartbeat's running count, recovery of an offline node, usage).
            models.Index(
                fields=["node", "status"],
                condition=Q(status__in=["queued", "running"]),
                name="execution_held_by_node",
            ),
            # Metrics, dashboard and retention read executions finished in a time window.
            models.Index(
                fields=["finished_at"], condition=Q(finished_at__isnull=False), name="execution_finished_at"
            ),
            # Pending placement, queued reconciling, running sweeps: the few active rows, by age.
            models.Index(
                fields=["created_at"],
                condition=Q(status__in=["pending", "queued", "running"]),
                name="execution_active",
            ),
            # The history's lists, newest first (the API's default order, since/until, a status or node walk,
            # the lateness histogram), and one job's list without sorting all its history: bounded reads at a
            # million rows (bench/history_scale.py; tests/monitoring/test_history_plans.py checks the plans).
            models.Index(fields=["created_at", "id"], name="execution_created"),
            models.Index(fields=["job", "created_at", "id"], name="execution_job_created"),
            # The rare outcomes, for ?status= filters and their counts; a succeeded run adds nothing to it.
            models.Index(
                fields=["status", "created_at"],
                condition=Q(
                    status__in=["failed", "retrying", "timed_out", "cancelled", "skipped", "lost", "dead"]
                ),
                name="execution_unsuccessful",
            ),
            # One job's rare outcomes (?job=&status=, and a user's ?status= over their jobs): partial, so a
            # succeeded run adds nothing to it either.
            models.Index(
                fields=["job", "status", "created_at"],
                condition=Q(
                    status__in=["failed", "retrying", "timed_out", "cancelled", "skipped", "lost", "dead"]
                ),
                name="execution_job_unsuccessful",
            ),
            models.Index(fields=["retry_of"], condition=Q(retry_of__isnull=False), name="execution_retry_of"),
            models.Index(
                fields=["replay_of"], condition=Q(replay_of__isnull=False), name="execution_replay_of"
            ),
        ]

    def __str__(self) -> str:
        return f"execution {self.pk} of job {self.job_id} ({self.status})"

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class JobRetry(models.Model):
    """A decision to retry a failed execution, waiting in the database until retry_at."""

    class Status(models.TextChoices):
        WAITING = "waiting"  # retry_at not reached yet
        ENQUEUED = "enqueued"  # the next attempt was created
        CANCELLED = "cancelled"  # the job was paused, cancelled or deleted first

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="retries")
    failed_execution = models.OneToOneField(
        Execution, on_delete=models.CASCADE, related_name="retry_decision", db_constraint=False
    )
    next_attempt = models.PositiveSmallIntegerField()
    retry_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.WAITING)
    new_execution = models.OneToOneField(
        Execution,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="retry_source",
        db_constraint=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["retry_at"]
        indexes = [
            models.Index(fields=["retry_at"], condition=Q(status="waiting"), name="jobretry_due_waiting"),
        ]

    def __str__(self) -> str:
        return f"retry {self.next_attempt} of job {self.job_id} at {self.retry_at}"


class DeadLetter(models.Model):
    """An execution whose retries are exhausted, kept for inspection and replay."""

    class Status(models.TextChoices):
        OPEN = "open"  # waiting for a person
        REPLAYED = "replayed"  # replayed at least once
        DISCARDED = "discarded"  # looked at and dropped

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dead_letters")
    execution = models.OneToOneField(
        Execution, on_delete=models.CASCADE, related_name="dead_letter", db_constraint=False
    )
    error = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    replay_count = models.PositiveIntegerField(default=0)
    last_replayed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "-created_at"]),
            models.Index(fields=["created_at", "id"], name="deadletter_created"),  # the list, newest first
        ]

    def __str__(self) -> str:
        return f"dead letter {self.pk} of job {self.job_id}"
