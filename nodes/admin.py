"""Admin for nodes (usage columns, drain/undrain actions) and the read-only allocation history.

As in the API, anyone may look at nodes and only operators drain or undrain them; allocations are scoped
by their execution's job owner (operators and admins: all).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts import roles
from accounts.admin_scoping import RoleScopedAdmin
from nodes.models import Node, ResourceAllocation
from nodes.placement import format_labels
from nodes.selectors import nodes_with_usage
from nodes.services import node_drain, node_undrain


@admin.register(Node)
class NodeAdmin(RoleScopedAdmin):
    write_roles = roles.OPERATOR_ROLES
    list_display = [
        "name",
        "status",
        "hostname",
        "ip_address",
        "labels_text",
        "cpu_column",
        "memory_column",
        "cpu_percent",
        "running_column",
        "last_heartbeat_at",
        "version",
    ]
    list_filter = ["status", "hostname", "version"]
    search_fields = ["name", "hostname", "ip_address"]
    ordering = ["name"]
    actions = ["drain", "undrain"]
    # Nodes describe themselves when their worker starts; people change only the status, by the actions.
    readonly_fields = [
        "name",
        "hostname",
        "ip_address",
        "cpu_capacity",
        "memory_mb_capacity",
        "labels",
        "version",
        "status",
        "registered_at",
        "last_heartbeat_at",
        "cpu_percent",
        "memory_used_mb",
        "running_count",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        return nodes_with_usage()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="labels")
    def labels_text(self, node: Node) -> str:
        return format_labels(node.labels or {})

    @admin.display(description="cpu allocated / capacity", ordering="cpu_reserved")
    def cpu_column(self, node: Any) -> str:
        return f"{node.cpu_reserved} / {node.cpu_capacity}"  # type: ignore[attr-defined]

    @admin.display(description="memory MB allocated / used / capacity", ordering="memory_mb_reserved")
    def memory_column(self, node: Any) -> str:
        return f"{node.memory_mb_reserved} / {node.memory_used_mb} / {node.memory_mb_capacity}"  # type: ignore[attr-defined]

    @admin.display(description="running", ordering="running")
    def running_column(self, node: Any) -> int:
        return node.running

    @admin.action(description="Drain: take no new work, finish what runs", permissions=["change"])
    def drain(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        changed = sum(node_drain(name=name) for name in queryset.values_list("name", flat=True))
        self.message_user(request, f"{changed} node(s) draining (only online nodes can be drained).")

    @admin.action(description="Undrain: take new work again", permissions=["change"])
    def undrain(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        changed = sum(node_undrain(name=name) for name in queryset.values_list("name", flat=True))
        level = messages.SUCCESS if changed else messages.WARNING
        self.message_user(request, f"{changed} node(s) online again (only draining nodes change).", level)


@admin.register(ResourceAllocation)
class ResourceAllocationAdmin(RoleScopedAdmin):
    owner_field = "execution__job__owner"
    list_display = ["id", "node", "execution", "cpu", "memory_mb", "allocated_at", "released_at", "is_active"]
    list_filter = [("released_at", admin.EmptyFieldListFilter), "node"]
    list_select_related = ["node", "execution"]
    search_fields = ["node__name", "=execution__id", "execution__job__name"]
    date_hierarchy = "allocated_at"
    ordering = ["-allocated_at"]

    @admin.display(boolean=True, description="active")
    def is_active(self, allocation: ResourceAllocation) -> bool:
        return allocation.active

    # History: written only by placement and release.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
