"""Job and JobSchedule admin: the form saves through the services; run now, pause, resume actions.

As in the API, a job is its owner's (operators and admins: everyone's); writes need the submitter role,
"Run now" re-checks jobs.run_shell on each shell job, and only operators choose a new job's owner.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts import roles
from accounts.admin_scoping import RoleScopedAdmin
from accounts.permissions import is_operator

from ..models import Execution, Job, JobSchedule
from ..services import job_delete, job_pause, job_resume, job_trigger, shell_permission_check
from .executions import ReadOnlyAdmin
from .forms import JobAdminForm


class ExecutionInline(admin.TabularInline):
    model = Execution
    fields = ["id", "status", "trigger", "scheduled_for", "attempt", "node", "started_at", "finished_at"]
    readonly_fields = [
        "id",
        "status",
        "trigger",
        "scheduled_for",
        "attempt",
        "node",
        "started_at",
        "finished_at",
    ]
    ordering = ["-created_at"]
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[Execution]:
        return super().get_queryset(request).select_related("node")


@admin.register(Job)
class JobAdmin(RoleScopedAdmin):
    owner_field = "owner"
    write_roles = roles.SUBMIT_ROLES
    form = JobAdminForm
    list_display = ["id", "name", "kind", "status", "owner", "priority", "schedule_text", "next_run"]
    list_filter = ["status", "kind", "concurrency_policy"]
    search_fields = ["name", "description", "owner__username"]
    list_select_related = ["owner", "schedule"]
    readonly_fields = ["status", "created_at", "updated_at"]
    actions = ["run_now", "pause", "resume", "archive"]
    inlines = [ExecutionInline]
    fieldsets = [
        (None, {"fields": ["owner", "name", "description", "status", "kind", "payload"]}),
        (
            "Schedule",
            {
                "fields": [
                    "schedule_type",
                    "run_at",
                    "every_seconds",
                    "cron_expression",
                    "timezone",
                    "start_at",
                    "end_at",
                    "max_runs",
                ]
            },
        ),
        ("Resources", {"fields": ["priority", "cpu", "memory_mb", "node_selector", "timeout_seconds"]}),
        (
            "Policies",
            {
                "fields": [
                    "max_retries",
                    "retry_backoff_seconds",
                    "retry_backoff_max_seconds",
                    "retry_jitter",
                    "concurrency_policy",
                    "misfire_policy",
                ]
            },
        ),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Job | None = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        # job_update keeps the owner; on add, anyone but an operator submits for themselves.
        if obj is not None or not is_operator(request.user):
            fields.append("owner")
        return fields

    def get_form(
        self, request: HttpRequest, obj: Job | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.request_user = request.user  # type: ignore[attr-defined]
        return form

    def save_model(self, request: HttpRequest, obj: Job, form: Any, change: bool) -> None:
        pass  # JobAdminForm.save() already saved it through job_create / job_update

    def delete_model(self, request: HttpRequest, obj: Job) -> None:
        job_delete(job=obj)  # archive: the history stays

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        for job in queryset:
            job_delete(job=job)

    def get_deleted_objects(self, objs: Iterable[Job], request: HttpRequest) -> Any:
        # Deleting archives (job_delete): executions and the rest of the history stay, so none is listed
        # and no permission to delete them is needed.
        jobs = list(objs)
        return [str(job) for job in jobs], {Job._meta.verbose_name_plural: len(jobs)}, set(), []

    @admin.display(description="schedule")
    def schedule_text(self, job: Job) -> str:
        schedule = getattr(job, "schedule", None)
        return str(schedule) if schedule else "triggered only"

    @admin.display(description="next run")
    def next_run(self, job: Job) -> Any:
        schedule = getattr(job, "schedule", None)
        return schedule.next_run_at if schedule else None

    @admin.action(description="Run now", permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        for job in queryset:
            if job.status == Job.Status.ARCHIVED:
                self.message_user(request, f"{job} is archived", messages.WARNING)
                continue
            try:
                shell_permission_check(
                    user=request.user, kind=job.kind, payload=job.payload
                )  # job_trigger does not check it
                execution = job_trigger(job=job)
            except (PermissionDenied, ValidationError) as exc:
                self.message_user(request, f"{job}: {_reason(exc)}", messages.ERROR)
                continue
            self.message_user(request, f"{job}: execution {execution.pk} {execution.status}")

    def has_run_permission(self, request: HttpRequest) -> bool:
        return self.allows(request, roles.SUBMIT_ROLES, "jobs.add_execution")

    @admin.action(description="Pause", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(job_pause(job=job) for job in queryset)
        self.message_user(request, f"{done} job(s) paused")

    @admin.action(description="Resume", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(job_resume(job=job) for job in queryset)
        self.message_user(request, f"{done} job(s) resumed")

    @admin.action(description="Archive (delete, keeping history)", permissions=["delete"])
    def archive(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(job_delete(job=job) for job in queryset)
        self.message_user(request, f"{done} job(s) archived")


def _reason(exc: PermissionDenied | ValidationError) -> str:
    return " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)


@admin.register(JobSchedule)
class JobScheduleAdmin(ReadOnlyAdmin):
    """Read-only: schedules are edited on their job (one service keeps beat in sync)."""

    list_display = ["job", "type", "__str__", "next_run_at", "last_run_at", "total_runs", "max_runs"]
    list_filter = ["type"]
    search_fields = ["job__name"]
    list_select_related = ["job"]
