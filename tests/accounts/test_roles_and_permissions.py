"""Roles exist after migrate, get permissions defined later, and scope every queryset to its owner."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser, Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.utils import timezone

from accounts import roles, services
from accounts.permissions import can_submit, is_operator, scope_to_user
from jobs.models import Execution, Job
from tests.factories import JobFactory


def _perms(group_name: str) -> set[str]:
    group = Group.objects.get(name=group_name)
    return {
        f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")
    }


def test_roles_exist_after_migrate_with_their_permissions(db):
    assert set(Group.objects.filter(name__in=roles.ROLES).values_list("name", flat=True)) == set(roles.ROLES)
    viewer, submitter = _perms("viewer"), _perms("submitter")
    operator, admin = _perms("operator"), _perms("admin")
    assert "jobs.view_job" in viewer
    assert "jobs.add_job" not in viewer
    assert "jobs.add_job" in submitter
    assert "nodes.change_node" not in submitter
    assert {"nodes.change_node", "jobs.change_deadletter"} <= operator
    assert "accounts.change_user" in admin
    assert "accounts.change_user" not in operator
    assert viewer < submitter < operator < admin
    # jobs.run_shell (Job.Meta.permissions) reaches operator and admin on a fresh migrate.
    assert roles.RUN_SHELL in operator
    assert roles.RUN_SHELL in admin
    assert roles.RUN_SHELL not in submitter


def test_run_shell_permission_reaches_operator_and_admin_once_it_exists(db):
    # Stands in for the jobs app defining Job.Meta.permissions = [("run_shell", ...)] in a later migration.
    permission, _ = Permission.objects.get_or_create(
        codename="run_shell", content_type=ContentType.objects.get_for_model(Job), defaults={"name": "Run"}
    )
    Group.objects.get(name="operator").permissions.remove(permission)
    Group.objects.get(name="admin").permissions.remove(permission)
    call_command("migrate", verbosity=0)  # post_migrate syncs the roles
    assert roles.RUN_SHELL in _perms("operator")
    assert roles.RUN_SHELL in _perms("admin")
    assert roles.RUN_SHELL not in _perms("submitter")
    assert services.roles_sync() == {}  # idempotent


def test_roles_sync_keeps_permissions_added_by_hand(db):
    extra = Permission.objects.get(codename="view_user")
    Group.objects.get(name="viewer").permissions.add(extra)
    services.roles_sync()
    assert "accounts.view_user" in _perms("viewer")


@pytest.mark.parametrize(
    ("role", "operator", "submit"),
    [(None, False, False), ("viewer", False, False), ("submitter", False, True), ("operator", True, True),
     ("admin", True, True)],
)  # fmt: skip
def test_role_checks(make_user, role, operator, submit):
    user = make_user("someone", *([role] if role else []))
    assert is_operator(user) is operator
    assert can_submit(user) is submit


def test_superuser_counts_as_admin(make_user):
    root = make_user("root", is_superuser=True)
    assert is_operator(root)
    assert can_submit(root)


def test_scope_to_user_shows_own_rows_to_users_and_all_to_operators(make_user):
    alice, bob = make_user("alice", "submitter"), make_user("bob", "viewer")
    olga = make_user("olga", "operator")
    alice_job, bob_job = JobFactory(owner=alice), JobFactory(owner=bob)
    jobs = Job.objects.all()
    assert list(scope_to_user(jobs, alice)) == [alice_job]
    assert list(scope_to_user(jobs, bob)) == [bob_job]
    assert set(scope_to_user(jobs, olga)) == {alice_job, bob_job}
    assert list(scope_to_user(jobs, AnonymousUser())) == []


def test_scope_to_user_follows_a_related_owner_field(make_user):
    alice, bob = make_user("alice"), make_user("bob")
    olga = make_user("olga", "operator")
    now = timezone.now()
    mine = Execution.objects.create(job=JobFactory(owner=alice), scheduled_for=now)
    theirs = Execution.objects.create(job=JobFactory(owner=bob), scheduled_for=now)
    executions = Execution.objects.all()
    assert list(scope_to_user(executions, alice, owner_field="job__owner")) == [mine]
    assert set(scope_to_user(executions, olga, owner_field="job__owner")) == {mine, theirs}
