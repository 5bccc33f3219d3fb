"""Query filters of the jobs API (django-filter): ?status=, ?job=, ?since= ..."""

from __future__ import annotations

import django_filters

from jobs.models import DeadLetter, Execution, Job
from scheduler_project.api.filters import IdFilter, StrictFilterSet, UtcDateTimeFilter


class JobFilter(StrictFilterSet):
    """Jobs by status (repeatable), kind, name (contains), owner username (operators see all)."""

    status = django_filters.MultipleChoiceFilter(choices=Job.Status.choices)
    kind = django_filters.ChoiceFilter(choices=Job.Kind.choices)
    name = django_filters.CharFilter(lookup_expr="icontains", max_length=200)
    owner = django_filters.CharFilter(field_name="owner__username", max_length=150)

    class Meta:
        model = Job
        fields = ["status", "kind", "name", "owner"]


class ExecutionFilter(StrictFilterSet):
    """Executions by job, status (repeatable), node, trigger, end cause (repeatable, e.g. oom_killed), and
    created since/until (ISO-8601)."""

    job = IdFilter(field_name="job_id")
    # distinct=False: these are the execution's own columns (no join repeats a row), and SELECT DISTINCT
    # over every column makes PostgreSQL sort the whole filtered history before the page's LIMIT.
    status = django_filters.MultipleChoiceFilter(choices=Execution.Status.choices, distinct=False)
    node = IdFilter(field_name="node_id")
    node_name = django_filters.CharFilter(field_name="node__name", max_length=255)
    trigger = django_filters.ChoiceFilter(choices=Execution.Trigger.choices)
    end_cause = django_filters.MultipleChoiceFilter(choices=Execution.EndCause.choices, distinct=False)
    since = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcDateTimeFilter(field_name="created_at", lookup_expr="lte")

    class Meta:
        model = Execution
        fields = ["job", "status", "node", "node_name", "trigger", "end_cause", "since", "until"]


class DeadLetterFilter(StrictFilterSet):
    """Dead letters by job and status."""

    job = IdFilter(field_name="job_id")
    status = django_filters.MultipleChoiceFilter(choices=DeadLetter.Status.choices)

    class Meta:
        model = DeadLetter
        fields = ["job", "status"]
