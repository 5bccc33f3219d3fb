"""The four roles (Django groups) and the model permissions each one holds, as "app_label.codename"."""

from __future__ import annotations

VIEWER = "viewer"  # reads their own jobs, executions and logs
SUBMITTER = "submitter"  # creates, runs, pauses and deletes their own jobs
OPERATOR = "operator"  # all jobs and executions, nodes, dead letters
ADMIN = "admin"  # everything, including users

ROLES = (VIEWER, SUBMITTER, OPERATOR, ADMIN)
# Role checks in accounts.permissions use these sets; group permissions serve the Django admin and /auth/me/.
OPERATOR_ROLES = frozenset({OPERATOR, ADMIN})
SUBMIT_ROLES = frozenset({SUBMITTER, OPERATOR, ADMIN})

# Defined by the jobs app (Job.Meta.permissions); granted when it exists, see services.roles_sync.
RUN_SHELL = "jobs.run_shell"

_VIEW = [
    "jobs.view_job",
    "jobs.view_jobschedule",
    "jobs.view_execution",
    "jobs.view_jobretry",
    "jobs.view_deadletter",
    "nodes.view_node",
]
_SUBMIT = [
    *_VIEW,
    "jobs.add_job",
    "jobs.change_job",
    "jobs.delete_job",
    "jobs.add_jobschedule",
    "jobs.change_jobschedule",
    "jobs.delete_jobschedule",
    "jobs.add_execution",
    "jobs.change_execution",
]
_OPERATE = [
    *_SUBMIT,
    "jobs.change_jobretry",
    "jobs.change_deadletter",
    "nodes.add_node",
    "nodes.change_node",
    "nodes.view_resourceallocation",
    RUN_SHELL,
]

# "app_label.*" grants every permission of that app.
ROLE_PERMISSIONS: dict[str, list[str]] = {
    VIEWER: _VIEW,
    SUBMITTER: _SUBMIT,
    OPERATOR: _OPERATE,
    ADMIN: [*_OPERATE, "jobs.*", "nodes.*", "monitoring.*", "accounts.*", "auth.*", "django_celery_beat.*"],
}
