"""Execution, JobRetry and DeadLetter admin: read-only history, cancel and replay actions.

An execution shows why it ended (its end cause, e.g. "out of memory"; filterable) and, when its executor
measured them (container jobs), its peak memory against the job's memory_mb and its CPU seconds.

Rows are scoped by their job's owner (accounts.admin_scoping), as the API scopes them; each action needs
what the API needs: cancel and replay the submitter role (on their own rows), discard an operator.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from accounts import roles
from accounts.admin_scoping import RoleScopedAdmin

from ..models import DeadLetter, Execution, JobRetry
from ..services import dead_letter_discard, dead_letter_replay, execution_cancel
from .display import END_CAUSE_TEXT, cpu_text, end_cause_text, memory_text


class ReadOnlyAdmin(RoleScopedAdmin):
    """A job's history: seen by its owner (and operators), changed only through actions (services)."""

    owner_field = "job__owner"
    write_roles = roles.SUBMIT_ROLES

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EndCauseFilter(admin.SimpleListFilter):
    """?end_cause=oom_killed, as the API's filter is named; the choices in words ("out of memory")."""

    title = "end cause"
    parameter_name = "end_cause"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("none", "none (not ended, or not said)"), *END_CAUSE_TEXT.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Execution]) -> QuerySet[Execution]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(end_cause="" if value == "none" else value)


@admin.register(Execution)
class ExecutionAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "job",
        "status",
        "trigger",
        "scheduled_for",
        "attempt",
        "node",
        "started_at",
        "finished_at",
        "exit_code",
        "end_cause_label",
        "progress",
    ]
    list_filter = ["status", EndCauseFilter, "trigger", "node", ("job", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["job__name", "error", "=id"]
    list_select_related = ["job", "node"]
    date_hierarchy = "created_at"
    actions = ["cancel"]
    # Raw bytes and float seconds are shown as MB and seconds (memory_used, cpu_used) instead.
    exclude = ["output", "end_cause", "memory_peak_bytes", "cpu_seconds"]
    readonly_fields = ["end_cause_label", "memory_used", "cpu_used", "output_text"]

    @admin.display(description="end cause", ordering="end_cause")
    def end_cause_label(self, execution: Execution) -> str:
        return end_cause_text(execution.end_cause) or "-"

    @admin.display(description="peak memory")
    def memory_used(self, execution: Execution) -> str:
        return memory_text(execution.memory_peak_bytes, execution.job.memory_mb) or "-"

    @admin.display(description="CPU seconds")
    def cpu_used(self, execution: Execution) -> str:
        return cpu_text(execution.cpu_seconds) or "-"

    @admin.display(description="output")
    def output_text(self, execution: Execution) -> str:
        note = "(truncated) " if execution.output_truncated else ""
        return format_html(
            "{}<pre style='white-space: pre-wrap'>{}</pre>", note, execution.output or "(none)"
        )

    @admin.action(description="Cancel (a running one is killed)", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Execution]) -> None:
        done = sum(
            execution_cancel(execution_id=pk, reason=f"cancelled by {request.user} in the admin")
            for pk in queryset.values_list("pk", flat=True)
        )
        self.message_user(request, f"{done} execution(s) cancelled")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super(ReadOnlyAdmin, self).has_change_permission(request, obj)


@admin.register(JobRetry)
class JobRetryAdmin(ReadOnlyAdmin):
    list_display = ["id", "job", "failed_execution", "next_attempt", "retry_at", "status", "new_execution"]
    list_filter = ["status"]
    search_fields = ["job__name"]
    list_select_related = ["job"]


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    list_display = ["id", "job", "execution", "status", "replay_count", "last_replayed_at", "created_at"]
    list_filter = ["status"]
    search_fields = ["job__name", "error"]
    list_select_related = ["job", "execution"]
    actions = ["replay", "discard"]

    @admin.action(description="Replay (a fresh execution)", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        for dead in queryset:
            try:
                execution = dead_letter_replay(dead_letter_id=dead.pk)
            except ValidationError as exc:
                self.message_user(request, " ".join(exc.messages), messages.ERROR)
                continue
            self.message_user(request, f"dead letter {dead.pk} replayed as execution {execution.pk}")

    @admin.action(description="Discard", permissions=["discard"])
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        done = sum(dead_letter_discard(dead_letter_id=pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"{done} dead letter(s) discarded")

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return self.allows(request, roles.SUBMIT_ROLES, "jobs.add_execution")

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return self.allows(request, roles.OPERATOR_ROLES, "jobs.change_deadletter")
