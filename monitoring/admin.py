"""Admin for alert rules and alert history; links the dashboard from the admin's index and "View site".

Alert rules and alerts are not anyone's: as in the API, only operators and admins see them (and only those
whose group holds the monitoring permissions, which accounts.roles grants the admin role).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from accounts import roles
from accounts.admin_scoping import RoleScopedAdmin
from monitoring.models import Alert, AlertDelivery, AlertRule

# The admin's index shows a link to the dashboard; "View site" on every admin page opens it too.
admin.site.index_template = "monitoring/admin_index.html"
admin.site.site_url = "/dashboard/"


@admin.register(AlertRule)
class AlertRuleAdmin(RoleScopedAdmin):
    read_roles = roles.OPERATOR_ROLES
    list_display = ["name", "kind", "channel", "target", "job", "enabled", "updated_at"]
    list_filter = ["kind", "channel", "enabled"]
    search_fields = ["name", "target"]
    raw_id_fields = ["job"]
    readonly_fields = ["secret", "created_by", "created_at", "updated_at"]


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
