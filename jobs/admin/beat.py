"""django-celery-beat's Clocked / Interval / Crontab admin, refusing a row equal to another one.

Those rows are unique (migration jobs 0008, so that jobs share them safely): saved as is, an equal row
would be an IntegrityError, a 500. Their form says which row to use instead.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.utils.text import capfirst
from django_celery_beat import admin as beat_admin  # registers theirs first: three are replaced here
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule

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


admin.site.unregister([ClockedSchedule, IntervalSchedule, CrontabSchedule])


@admin.register(ClockedSchedule)
class ClockedScheduleAdmin(beat_admin.ClockedScheduleAdmin):
    form = UniqueScheduleForm


@admin.register(IntervalSchedule)
class IntervalScheduleAdmin(beat_admin.IntervalScheduleAdmin):
    form = UniqueScheduleForm


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(beat_admin.CrontabScheduleAdmin):
    form = UniqueScheduleForm
