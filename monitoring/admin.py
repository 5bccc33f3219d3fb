"""Admin for alert rules and alert history; links the dashboard from the admin's index and "View site".

Alert rules and alerts are not anyone's: as in the API, only operators and admins see them (and only those
whose group holds the monitoring permissions, which accounts.roles grants the admin role). A rule saved here
is checked as the API checks it (monitoring.services.alert_rule_validate): a bad param is a form error
naming it, e.g. "params.end_causes: ...".
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from accounts import roles
from accounts.admin_scoping import RoleScopedAdmin
from monitoring.models import Alert, AlertDelivery, AlertRule
from monitoring.services import alert_rule_validate

# The admin's index shows a link to the dashboard; "View site" on every admin page opens it too.
admin.site.index_template = "monitoring/admin_index.html"
admin.site.site_url = "/dashboard/"


class AlertRuleForm(forms.ModelForm):
    """The API's rule checks on the admin's form; params are stored with their defaults filled in."""

    class Meta:
        model = AlertRule
        fields = ["name", "kind", "params", "channel", "target", "enabled", "job"]
        help_texts = {
            "params": (
                'per kind, e.g. execution_failed {"window_seconds": 3600, "end_causes": ["oom_killed"]}'
                " (end_causes optional: exited, oom_killed, timed_out, cancelled, engine_error,"
                ' start_failed); queue_backlog {"threshold": 100}; see docs/monitoring.md'
            ),
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        rule = AlertRule(**{name: cleaned.get(name) for name in self.fields if name in cleaned})
        try:
            alert_rule_validate(rule)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                target = field.split(".", 1)[0]
                self.add_error(target if target in self.fields else None, f"{field}: {' '.join(messages)}")
        else:
            cleaned["params"] = rule.params  # with the kind's defaults filled in, as the API stores them
        return cleaned


@admin.register(AlertRule)
class AlertRuleAdmin(RoleScopedAdmin):
    read_roles = roles.OPERATOR_ROLES
    form = AlertRuleForm
    list_display = ["name", "kind", "channel", "target", "job", "enabled", "updated_at"]
    list_filter = ["kind", "channel", "enabled"]
    search_fields = ["name", "target"]
    raw_id_fields = ["job"]
    readonly_fields = ["secret", "created_by", "created_at", "updated_at"]

    def save_model(self, request: HttpRequest, obj: AlertRule, form: Any, change: bool) -> None:
        if not change and getattr(request.user, "pk", None):
            obj.created_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)


class AlertDeliveryInline(admin.TabularInline):
    model = AlertDelivery
    extra = 0
    can_delete = False
    readonly_fields = ["event", "status", "attempts", "next_attempt_at", "sent_at", "last_error"]
    fields = ["event", "status", "attempts", "next_attempt_at", "sent_at", "last_error"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(RoleScopedAdmin):
    read_roles = roles.OPERATOR_ROLES
    list_display = ["id", "rule", "incident_key", "state", "summary", "fired_at", "resolved_at"]
    list_filter = ["state", "rule__kind"]
    search_fields = ["incident_key", "summary"]
    readonly_fields = ["rule", "incident_key", "state", "summary", "details", "fired_at", "resolved_at"]
    inlines = [AlertDeliveryInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
