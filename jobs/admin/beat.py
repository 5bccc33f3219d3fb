"""django-celery-beat's admins, for the admin role only; Clocked / Interval / Crontab refuse a row equal
to another one.

Writing a PeriodicTask (or its "Run" action) sends any task with any arguments, e.g. jobs.fire for
someone else's shell job, and a schedule row is shared by the jobs using it: none of it is scoped to an
owner, so only admins (who may do everything) see these pages, whatever permissions a group holds.

Schedule rows are unique (migration jobs 0008, so that jobs share them safely): saved as is, an equal row
would be an IntegrityError, a 500. Their form says which row to use instead.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.text import capfirst
from django_celery_beat import admin as beat_admin  # registers theirs first: all are replaced here
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from accounts.admin_scoping import ADMIN_ONLY, RoleScopedAdmin

from ..schedules import BEAT_UNIQUE_FIELDS


class UniqueScheduleForm(forms.ModelForm):
    """A schedule row's form: a row equal to another (the unique index's columns) is a form error."""

    def validate_unique(self) -> None:
        super().validate_unique()
        model = self._meta.model
        names = BEAT_UNIQUE_FIELDS[model]
        if not all(name in self.cleaned_data for name in names):
            return  # a field error says what is wrong already
        equal = (
            model._default_manager.filter(**{name: self.cleaned_data[name] for name in names})
            .exclude(pk=self.instance.pk)
            .first()
        )
        if equal is not None:
            name = capfirst(model._meta.verbose_name)
            self.add_error(None, f"{name} {equal} exists already (id {equal.pk}): use that one.")


admin.site.unregister([PeriodicTask, SolarSchedule, ClockedSchedule, IntervalSchedule, CrontabSchedule])


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(RoleScopedAdmin, beat_admin.PeriodicTaskAdmin):
    """django-celery-beat's, for admins; its actions change rows or send tasks: they need "change"."""

    read_roles = ADMIN_ONLY

    @admin.action(description="Enable selected tasks", permissions=["change"])
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        super().enable_tasks(request, queryset)

    @admin.action(description="Disable selected tasks", permissions=["change"])
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        super().disable_tasks(request, queryset)

    @admin.action(description="Toggle activity of selected tasks", permissions=["change"])
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        super().toggle_tasks(request, queryset)

    @admin.action(description="Run selected tasks", permissions=["change"])
    def run_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        super().run_tasks(request, queryset)


@admin.register(SolarSchedule)
class SolarScheduleAdmin(RoleScopedAdmin, beat_admin.SolarScheduleAdmin):
    read_roles = ADMIN_ONLY


@admin.register(ClockedSchedule)
class ClockedScheduleAdmin(RoleScopedAdmin, beat_admin.ClockedScheduleAdmin):
    read_roles = ADMIN_ONLY
    form = UniqueScheduleForm


@admin.register(IntervalSchedule)
class IntervalScheduleAdmin(RoleScopedAdmin, beat_admin.IntervalScheduleAdmin):
    read_roles = ADMIN_ONLY
    form = UniqueScheduleForm


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(RoleScopedAdmin, beat_admin.CrontabScheduleAdmin):
    read_roles = ADMIN_ONLY
    form = UniqueScheduleForm
