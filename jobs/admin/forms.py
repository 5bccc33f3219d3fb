"""The admin's job form: job and schedule fields in one form, saved through job_create / job_update."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import PermissionDenied, ValidationError

from ..models import Job, JobSchedule
from ..services import job_create, job_update, shell_permission_check
from ..validation import job_input_clean

SCHEDULE_FIELDS = ("run_at", "every_seconds", "cron_expression", "timezone", "start_at", "end_at", "max_runs")
JOB_FORM_FIELDS = (
    "owner",
    "name",
    "description",
    "kind",
    "payload",
    "priority",
    "cpu",
    "memory_mb",
    "node_selector",
    "timeout_seconds",
    "max_retries",
    "retry_backoff_seconds",
    "retry_backoff_max_seconds",
    "retry_jitter",
    "concurrency_policy",
    "misfire_policy",
)


class JobAdminForm(forms.ModelForm):
    """Validated by the services' own validation; save() calls job_create / job_update."""

    request_user: Any = None  # set by JobAdmin.get_form

    schedule_type = forms.ChoiceField(
        choices=[("none", "none (run only when triggered)"), *JobSchedule.Type.choices], initial="none"
    )
    run_at = forms.DateTimeField(required=False, help_text="once: when")
    every_seconds = forms.IntegerField(required=False, help_text="interval: every N seconds")
    cron_expression = forms.CharField(required=False, help_text="cron: 5 fields, e.g. '30 2 * * *'")
    timezone = forms.CharField(required=False, initial="UTC", help_text="cron: IANA time zone")
    start_at = forms.DateTimeField(required=False)
    end_at = forms.DateTimeField(required=False)
    max_runs = forms.IntegerField(required=False)

    class Meta:
        model = Job
        fields = JOB_FORM_FIELDS
        help_texts = {
            "payload": (
                'per kind, as in the API: shell {"command": [argv]}; http {"method", "url", ...}; python'
                ' {"handler", "kwargs"}; container {"image", "command": [argv], "env", "workdir",'
                ' "network": "none"|"bridge", "pull": "never"|"if-missing", "user"} (runs only on nodes'
                " labelled runtime=docker, with cpu and memory_mb enforced)"
            ),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        schedule = JobSchedule.objects.filter(job_id=self.instance.pk).first() if self.instance.pk else None
        if schedule is not None:
            self.initial["schedule_type"] = schedule.type
            for name in SCHEDULE_FIELDS:
                self.initial[name] = getattr(schedule, name)
        if "owner" in self.fields and self.request_user is not None and not self.instance.pk:
            self.initial.setdefault("owner", self.request_user.pk)

    def _schedule_data(self) -> dict[str, Any] | None:
        data = self.cleaned_data
        if data.get("schedule_type") in (None, "", "none"):
            return None
        values = {name: data.get(name) for name in SCHEDULE_FIELDS if data.get(name) not in (None, "")}
        return {"type": data["schedule_type"], **values}

    def _job_data(self) -> dict[str, Any]:
        return {name: self.cleaned_data.get(name) for name in JOB_FORM_FIELDS if name != "owner"}

    def _schedule_changed(self) -> bool:
        return not self.instance.pk or any(
            name in self.changed_data for name in ("schedule_type", *SCHEDULE_FIELDS)
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        try:
            job_input_clean(
                self._job_data(), schedule=self._schedule_data(), check_schedule=self._schedule_changed()
            )
            kind, payload = cleaned.get("kind", ""), cleaned.get("payload")
            shell_permission_check(user=self.request_user, kind=kind, payload=payload)
            if not self.instance.pk:  # job_create checks the owner: say so on the form, not with a 403
                shell_permission_check(user=self._owner(), kind=kind, payload=payload)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                target = field.split(".", 1)[-1] if field.startswith("schedule.") else field.split(".", 1)[0]
                if target == "type":
                    target = "schedule_type"
                self.add_error(target if target in self.fields else None, f"{field}: {' '.join(messages)}")
        except PermissionDenied as exc:
            self.add_error("kind", str(exc))
        return cleaned

    def _owner(self) -> Any:
        # JobAdmin shows the owner as a field to operators only; everyone else submits for themselves.
        return self.cleaned_data.get("owner") if "owner" in self.fields else self.request_user

    def save(self, commit: bool = True) -> Job:
        data = self._job_data()
        if self.instance.pk:
            changes = dict(data)
            if self._schedule_changed():
                changes["schedule"] = self._schedule_data()
            job = job_update(job=self.instance, actor=self.request_user, **changes)
        else:
            job = job_create(owner=self._owner(), schedule=self._schedule_data(), **data)
        self.instance = job
        self.save_m2m = lambda: None  # type: ignore[method-assign]  # no m2m fields; the admin calls it
        return job
