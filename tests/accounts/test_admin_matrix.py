"""The admin keeps the API's rules: every registered admin x every role, its pages and its actions.

Each check uses a row owned by the acting user ("mine", for user-owned models) and one owned by another
submitter ("theirs"). An admin registered without a row in EXPECT fails, so none can be forgotten.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

import pytest
from celery.app.task import Task
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.db.models import Model
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from knox.models import AuthToken

from jobs.models import DeadLetter, Execution, Job, JobRetry
from jobs.services import job_create
from monitoring.models import Alert, AlertRule
from nodes.models import Node, ResourceAllocation
from tests.factories import NodeFactory

pytestmark = pytest.mark.django_db

ROLES = ("viewer", "submitter", "operator", "admin", "superuser")
NO, OWN, ALL = "no", "own", "all"  # nobody's rows, the user's own rows, everyone's rows


def by_role(viewer: str, submitter: str, operator: str, admin: str, superuser: str = "") -> dict[str, str]:
    return {
        "viewer": viewer,
        "submitter": submitter,
        "operator": operator,
        "admin": admin,
        "superuser": superuser or admin,
    }


NOBODY = by_role(NO, NO, NO, NO)
EVERYONE = by_role(ALL, ALL, ALL, ALL)
ADMINS = by_role(NO, NO, NO, ALL)
OPERATORS = by_role(NO, NO, ALL, ALL)
SUBMITTERS = by_role(NO, OWN, ALL, ALL)  # their own as the API allows; operators everyone's
READERS = by_role(OWN, OWN, ALL, ALL)
SUPERUSERS = by_role(NO, NO, NO, NO, ALL)


@dataclass(frozen=True)
class Expect:
    """Whose rows a role sees, may add, may change, and may act on with each action."""

    see: dict[str, str]
    add: dict[str, str]
    change: dict[str, str]
    actions: dict[str, dict[str, str]]


_SCHEDULE_ROW = Expect(ADMINS, ADMINS, ADMINS, {"delete_selected": ADMINS})
EXPECT: dict[str, Expect] = {
    "auth.Group": Expect(ADMINS, ADMINS, ADMINS, {"delete_selected": ADMINS}),
    # The admin group holds no knox permission; minting a token (it logs in as its user) is superusers'.
    "knox.AuthToken": Expect(SUPERUSERS, SUPERUSERS, SUPERUSERS, {"delete_selected": SUPERUSERS}),
    # Writing a PeriodicTask runs any task with any arguments, as anyone: admins only.
    "django_celery_beat.PeriodicTask": Expect(
        ADMINS,
        ADMINS,
        ADMINS,
        {
            "delete_selected": ADMINS,
            "enable_tasks": ADMINS,
            "disable_tasks": ADMINS,
            "toggle_tasks": ADMINS,
            "run_tasks": ADMINS,
        },
    ),
    "django_celery_beat.SolarSchedule": _SCHEDULE_ROW,
    "django_celery_beat.ClockedSchedule": _SCHEDULE_ROW,
    "django_celery_beat.IntervalSchedule": _SCHEDULE_ROW,
    "django_celery_beat.CrontabSchedule": _SCHEDULE_ROW,
    "nodes.Node": Expect(
        EVERYONE, NOBODY, OPERATORS, {"delete_selected": ADMINS, "drain": OPERATORS, "undrain": OPERATORS}
    ),
    "nodes.ResourceAllocation": Expect(OPERATORS, NOBODY, NOBODY, {"delete_selected": NOBODY}),
    "jobs.Job": Expect(
        READERS,
        SUBMITTERS,
        SUBMITTERS,
        {
            "delete_selected": SUBMITTERS,
            "run_now": SUBMITTERS,
            "pause": SUBMITTERS,
            "resume": SUBMITTERS,
            "archive": SUBMITTERS,
        },
    ),
    "jobs.JobSchedule": Expect(READERS, NOBODY, NOBODY, {"delete_selected": NOBODY}),
    "jobs.Execution": Expect(READERS, NOBODY, NOBODY, {"delete_selected": NOBODY, "cancel": SUBMITTERS}),
    "jobs.JobRetry": Expect(READERS, NOBODY, NOBODY, {"delete_selected": NOBODY}),
    "jobs.DeadLetter": Expect(
        READERS, NOBODY, NOBODY, {"delete_selected": NOBODY, "replay": SUBMITTERS, "discard": OPERATORS}
    ),
    # The API lets operators manage alerts too, but the operator group holds no monitoring permission.
    "monitoring.AlertRule": Expect(ADMINS, ADMINS, ADMINS, {"delete_selected": ADMINS}),
    "monitoring.Alert": Expect(ADMINS, NOBODY, ADMINS, {"delete_selected": ADMINS}),
}

REGISTERED = sorted(model._meta.label for model in admin.site._registry)
MODELS = {model._meta.label: model for model in admin.site._registry}

# --- rows -------------------------------------------------------------------------------------


def _job(owner: Any) -> Job:
    return job_create(
        owner=owner,
        name=f"job of {owner.username}",
        kind="python",
        payload={"handler": "echo"},
        schedule={"type": "interval", "every_seconds": 3600},
    )


def _execution(owner: Any, status: str = Execution.Status.PENDING) -> Execution:
    return Execution.objects.create(
        job=_job(owner), scheduled_for=timezone.now(), status=status, output=f"output of {owner.username}"
    )


def _retry(owner: Any) -> JobRetry:
    failed = _execution(owner, Execution.Status.FAILED)
    return JobRetry.objects.create(
        job=failed.job, failed_execution=failed, next_attempt=2, retry_at=timezone.now() + timedelta(hours=1)
    )


def _dead_letter(owner: Any) -> DeadLetter:
    dead = _execution(owner, Execution.Status.DEAD)
    return DeadLetter.objects.create(job=dead.job, execution=dead, error="boom")


def _node(owner: Any) -> Node:
    return cast(Node, NodeFactory())


def _allocation(owner: Any) -> ResourceAllocation:
    node = _node(owner)
    execution = _execution(owner, Execution.Status.QUEUED)
    Execution.objects.filter(pk=execution.pk).update(node=node)
    return ResourceAllocation.objects.create(node=node, execution=execution, cpu=Decimal("0.1"), memory_mb=64)


_unique = itertools.count(1)  # schedule rows are unique (migration jobs 0008): each built row differs


def _interval(owner: Any) -> IntervalSchedule:
    return IntervalSchedule.objects.create(every=next(_unique) + 10, period=IntervalSchedule.MINUTES)


def _periodic_task(owner: Any) -> PeriodicTask:
    name = f"made by hand {next(_unique)}"
    return PeriodicTask.objects.create(name=name, task="monitoring.ping", interval=_interval(owner))


def _alert_rule(owner: Any) -> AlertRule:
    return AlertRule.objects.create(name="failures", kind="execution_failed", channel="log", created_by=owner)


BUILD: dict[str, Callable[[Any], Model]] = {
    "auth.Group": lambda owner: Group.objects.create(name=f"group of {owner.username}"),
    "knox.AuthToken": lambda owner: AuthToken.objects.create(user=owner)[0],
    "django_celery_beat.PeriodicTask": _periodic_task,
    "django_celery_beat.SolarSchedule": lambda owner: SolarSchedule.objects.create(
        event="sunrise", latitude=Decimal("48.1"), longitude=Decimal("11.6")
    ),
    "django_celery_beat.ClockedSchedule": lambda owner: ClockedSchedule.objects.create(
        clocked_time=timezone.now() + timedelta(days=3, minutes=next(_unique))
    ),
    "django_celery_beat.IntervalSchedule": _interval,
    "django_celery_beat.CrontabSchedule": lambda owner: CrontabSchedule.objects.create(
        minute=str(next(_unique) % 60), hour="3", timezone="UTC"
    ),
    "nodes.Node": _node,
    "nodes.ResourceAllocation": _allocation,
    "jobs.Job": _job,
    "jobs.JobSchedule": lambda owner: _job(owner).schedule,
    "jobs.Execution": _execution,
    "jobs.JobRetry": _retry,
    "jobs.DeadLetter": _dead_letter,
    "monitoring.AlertRule": _alert_rule,
    "monitoring.Alert": lambda owner: Alert.objects.create(
        rule=_alert_rule(owner), incident_key="job:1", summary="it failed"
    ),
}
# Models whose rows belong to a user (through their job); the others are shared, or nobody's.
OWNED = {
    "jobs.Job",
    "jobs.JobSchedule",
    "jobs.Execution",
    "jobs.JobRetry",
    "jobs.DeadLetter",
    "nodes.ResourceAllocation",
}


def _fresh(obj: Model) -> Any:
    return type(obj)._default_manager.filter(pk=obj.pk).first()


def _gone(obj: Model) -> bool:
    return _fresh(obj) is None


def _field_is(name: str, value: Any) -> Callable[[Model], bool]:
    return lambda obj: getattr(_fresh(obj), name) == value


def _set(name: str, value: Any) -> Callable[[Model], None]:
    def prepare(obj: Model) -> None:
        type(obj)._default_manager.filter(pk=obj.pk).update(**{name: value})

    return prepare


@dataclass(frozen=True)
class Act:
    """What an action changes (`done`), and the state a row needs first (`prepare`)."""

    done: Callable[[Any], bool]
    prepare: Callable[[Any], None] = lambda obj: None


SENT: list[str] = []  # periodic tasks run_tasks sent (Task.apply_async is replaced in these tests)
ACTS: dict[tuple[str, str], Act] = {
    ("jobs.Job", "run_now"): Act(
        lambda job: job.executions.filter(trigger=Execution.Trigger.MANUAL).exists()
    ),
    ("jobs.Job", "pause"): Act(_field_is("status", Job.Status.PAUSED)),
    ("jobs.Job", "resume"): Act(_field_is("status", Job.Status.ACTIVE), _set("status", Job.Status.PAUSED)),
    ("jobs.Job", "archive"): Act(_field_is("status", Job.Status.ARCHIVED)),
    ("jobs.Job", "delete_selected"): Act(_field_is("status", Job.Status.ARCHIVED)),  # archived, kept
    ("jobs.Execution", "cancel"): Act(_field_is("status", Execution.Status.CANCELLED)),
    ("jobs.DeadLetter", "replay"): Act(
        lambda dead: Execution.objects.filter(replay_of_id=dead.execution_id).exists()
    ),
    ("jobs.DeadLetter", "discard"): Act(_field_is("status", DeadLetter.Status.DISCARDED)),
    ("nodes.Node", "drain"): Act(_field_is("status", Node.Status.DRAINING)),
    ("nodes.Node", "undrain"): Act(
        _field_is("status", Node.Status.ONLINE), _set("status", Node.Status.DRAINING)
    ),
    ("django_celery_beat.PeriodicTask", "enable_tasks"): Act(
        _field_is("enabled", True), _set("enabled", False)
    ),
    ("django_celery_beat.PeriodicTask", "disable_tasks"): Act(_field_is("enabled", False)),
    ("django_celery_beat.PeriodicTask", "toggle_tasks"): Act(_field_is("enabled", False)),
    ("django_celery_beat.PeriodicTask", "run_tasks"): Act(lambda task: task.name in SENT),
}
DELETED = Act(_gone)

# --- helpers ----------------------------------------------------------------------------------


def _url(label: str, view: str, *args: Any) -> str:
    app_label, _, model = label.lower().partition(".")
    return reverse(f"admin:{app_label}_{model}_{view}", args=args)


def _action_names(model_admin: admin.ModelAdmin) -> list[str]:
    """Every action the admin defines, whoever may use it (the site's delete_selected included)."""
    if model_admin.actions is None:
        return []
    names = [name for name, _ in model_admin.admin_site.actions]
    names += [action if isinstance(action, str) else action.__name__ for action in model_admin.actions]
    return names


def _user(make_user: Callable[..., Any], role: str) -> Any:
    if role == "superuser":
        return make_user("root", is_staff=True, is_superuser=True)
    return make_user(f"the-{role}", role, is_staff=True)


def _snapshot(obj: Model) -> dict[str, Any]:
    return type(obj)._default_manager.filter(pk=obj.pk).values().get()


def _redirected_to_index(response: Any) -> bool:
    """What the admin answers for an object outside the user's queryset ("does not exist")."""
    return response.status_code == 302 and response.url == reverse("admin:index")


@pytest.fixture
def apply_async_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """PeriodicTask's run_tasks action publishes; record the task name instead of sending it."""
    SENT.clear()

    def record(self: Task, *args: Any, **options: Any) -> None:
        SENT.append((options.get("headers") or {}).get("periodic_task_name", ""))

    monkeypatch.setattr(Task, "apply_async", record)


# --- the matrix -------------------------------------------------------------------------------


def test_every_admin_has_an_expectation_row() -> None:
    assert set(REGISTERED) == set(EXPECT), "each registered admin needs a row in EXPECT (and no stale row)"
    assert set(REGISTERED) == set(BUILD)
    for label in REGISTERED:
        defined = set(_action_names(admin.site._registry[MODELS[label]]))
        assert defined == set(EXPECT[label].actions), f"{label}: actions {sorted(defined)} need expectations"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("label", REGISTERED)
def test_admin_pages(client, make_user, label: str, role: str) -> None:
    """Changelist rows, add page, another user's change page and a POST changing it."""
    expect = EXPECT.get(label)
    if expect is None:
        pytest.fail(f"the admin of {label} has no expectation row in EXPECT")
    user = _user(make_user, role)
    other = make_user("bob", "submitter", is_staff=True)
    theirs = BUILD[label](other)
    mine = BUILD[label](user) if label in OWNED else None
    client.force_login(user)
    see, change = expect.see[role], expect.change[role]

    listing = client.get(_url(label, "changelist"))
    if see == NO:
        assert listing.status_code == 403
    else:
        assert listing.status_code == 200
        shown = {row.pk for row in listing.context["cl"].result_list}
        assert (theirs.pk in shown) is (see == ALL), f"{role} sees {label} {theirs.pk} of another user"
        if mine is not None:
            assert mine.pk in shown

    adding = client.get(_url(label, "add"))
    assert adding.status_code == (403 if expect.add[role] == NO else 200)

    page = client.get(_url(label, "change", theirs.pk))
    if see == NO:
        assert page.status_code == 403
    elif see == OWN:
        assert _redirected_to_index(page), f"{role} opens {label} {theirs.pk} of another user"
    else:
        assert page.status_code == 200
        assert page.context["has_change_permission"] is (change == ALL)
    if mine is not None and see != NO:
        own_page = client.get(_url(label, "change", mine.pk))
        assert own_page.status_code == 200
        assert own_page.context["has_change_permission"] is (change != NO)

    if change != ALL:
        before = _snapshot(theirs)
        response = client.post(_url(label, "change", theirs.pk), {"name": "changed", "_save": "Save"})
        assert response.status_code == 403 or _redirected_to_index(response), response.status_code
        assert _snapshot(theirs) == before


@pytest.mark.usefixtures("apply_async_recorded")
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("label", REGISTERED)
def test_admin_actions(client, make_user, label: str, role: str) -> None:
    """Each action of the admin, on another user's row and on the user's own: works only where allowed."""
    expect = EXPECT.get(label)
    if expect is None:
        pytest.fail(f"the admin of {label} has no expectation row in EXPECT")
    model_admin = admin.site._registry[MODELS[label]]
    user = _user(make_user, role)
    other = make_user("bob", "submitter", is_staff=True)
    client.force_login(user)
    listing = client.get(_url(label, "changelist"))
    form = listing.context["action_form"] if listing.status_code == 200 else None
    offered = {name for name, _ in form.fields["action"].choices if name} if form else set()
    for name in _action_names(model_admin):
        scope = expect.actions[name][role]
        if listing.status_code == 200:
            assert (name in offered) is (scope != NO), f"{role} is offered {label} {name}: {name in offered}"
        act = ACTS.get((label, name), DELETED)
        rows = [("theirs", BUILD[label](other))]
        if label in OWNED:
            rows.append(("mine", BUILD[label](user)))
        for whose, row in rows:
            act.prepare(row)
            client.post(
                _url(label, "changelist"), {"action": name, "_selected_action": [row.pk], "post": "yes"}
            )
            allowed = scope == ALL or (scope == OWN and whose == "mine")
            assert act.done(row) is allowed, f"{role} {name} on {whose} {label}: done={not allowed}"


# --- the attacks, one by one ----------------------------------------------------------


@pytest.fixture
def operator(make_user) -> Any:
    return make_user("olga", "operator", is_staff=True)


@pytest.fixture
def submitter(make_user) -> Any:
    return make_user("sam", "submitter", is_staff=True)


def _job_form(job: Job, **overrides: Any) -> dict[str, Any]:
    """The job's change form as the admin renders it, with `overrides`."""
    data: dict[str, Any] = {
        "owner": job.owner_id,
        "name": job.name,
        "description": job.description,
        "kind": job.kind,
        "payload": json.dumps(job.payload),
        "priority": job.priority,
        "cpu": str(job.cpu),
        "memory_mb": job.memory_mb,
        "node_selector": "{}",
        "timeout_seconds": job.timeout_seconds,
        "max_retries": job.max_retries,
        "retry_backoff_seconds": job.retry_backoff_seconds,
        "retry_backoff_max_seconds": job.retry_backoff_max_seconds,
        "retry_jitter": "on",
        "concurrency_policy": job.concurrency_policy,
        "misfire_policy": job.misfire_policy,
        "schedule_type": "none",
        "timezone": "UTC",
        "executions-TOTAL_FORMS": 0,
        "executions-INITIAL_FORMS": 0,
    }
    data.update(overrides)
    return data


def _http_job(owner: Any) -> Job:
    return job_create(
        owner=owner,
        name="billing hook",
        kind="http",
        payload={"url": "https://billing.example.com/hook", "headers": {"Authorization": "Bearer s3cret"}},
    )


def test_submitter_cannot_read_or_repoint_an_operators_http_job(client, operator, submitter) -> None:
    job = _http_job(operator)
    client.force_login(submitter)
    assert "s3cret" not in client.get(_url("jobs.Job", "changelist")).content.decode()
    assert _redirected_to_index(client.get(_url("jobs.Job", "change", job.pk)))
    payload = {"url": "https://attacker.example.com/", "headers": {"Authorization": "Bearer s3cret"}}
    form = _job_form(job, owner=submitter.pk, payload=json.dumps(payload))
    response = client.post(_url("jobs.Job", "change", job.pk), form)
    assert _redirected_to_index(response)
    assert Job.objects.get(pk=job.pk).payload["url"] == "https://billing.example.com/hook"


def test_operator_may_repoint_another_users_http_job(client, operator, submitter) -> None:
    job = _http_job(submitter)
    client.force_login(operator)
    payload = {"url": "https://billing2.example.com/hook"}
    response = client.post(_url("jobs.Job", "change", job.pk), _job_form(job, payload=json.dumps(payload)))
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert Job.objects.get(pk=job.pk).payload["url"] == "https://billing2.example.com/hook"
    assert Job.objects.get(pk=job.pk).owner == submitter  # the owner stays


def test_viewer_reads_no_other_users_output(client, make_user, submitter) -> None:
    viewer = make_user("vic", "viewer", is_staff=True)
    execution = _execution(submitter)
    Execution.objects.filter(pk=execution.pk).update(output="TOPSECRET-OUTPUT")
    client.force_login(viewer)
    assert "TOPSECRET" not in client.get(_url("jobs.Execution", "changelist")).content.decode()
    assert _redirected_to_index(client.get(_url("jobs.Execution", "change", execution.pk)))
    assert _redirected_to_index(client.get(_url("jobs.Execution", "history", execution.pk)))


def test_execution_job_filter_names_only_visible_jobs(client, make_user, submitter) -> None:
    job = job_create(
        owner=make_user("bob", "submitter"),
        name="bobs-secret-job",
        kind="python",
        payload={"handler": "echo"},
    )
    Execution.objects.create(job=job, scheduled_for=timezone.now())
    _execution(submitter)
    client.force_login(submitter)
    page = client.get(_url("jobs.Execution", "changelist")).content.decode()
    assert "bobs-secret-job" not in page


def _shell_job(owner: Any) -> Job:
    return job_create(owner=owner, name="rotate keys", kind="shell", payload={"command": ["true"]})


def _run_now(client: Any, job: Job) -> Any:
    return client.post(_url("jobs.Job", "changelist"), {"action": "run_now", "_selected_action": [job.pk]})


def test_submitter_cannot_run_an_operators_shell_job(client, make_user, submitter) -> None:
    job = _shell_job(make_user("olga", "operator", is_staff=True))
    client.force_login(submitter)
    _run_now(client, job)
    assert not Execution.objects.filter(job=job).exists()


def test_run_now_rechecks_run_shell_on_each_shell_job(client, make_user) -> None:
    """A submitter whose run_shell was taken away cannot run the shell job they own; others run."""
    owner = make_user("sam", "submitter", is_staff=True, run_shell=True)
    shell, python = _shell_job(owner), _job(owner)
    owner.user_permissions.remove(Permission.objects.get(codename="run_shell"))
    client.force_login(owner)
    response = client.post(
        _url("jobs.Job", "changelist"), {"action": "run_now", "_selected_action": [shell.pk, python.pk]}
    )
    assert not Execution.objects.filter(job=shell).exists()
    assert Execution.objects.filter(job=python).exists()
    assert "jobs.run_shell" in client.get(response.url).content.decode()


def test_operator_runs_another_operators_shell_job(client, make_user, operator) -> None:
    job = _shell_job(make_user("otto", "operator"))
    client.force_login(operator)
    _run_now(client, job)
    assert Execution.objects.filter(job=job).exists()


def test_submitter_cannot_replay_another_users_dead_letter(client, submitter, make_user) -> None:
    dead = _dead_letter(make_user("bob", "submitter"))
    client.force_login(submitter)
    client.post(_url("jobs.DeadLetter", "changelist"), {"action": "replay", "_selected_action": [dead.pk]})
    assert not Execution.objects.filter(replay_of_id=dead.execution_id).exists()
    assert DeadLetter.objects.get(pk=dead.pk).status == DeadLetter.Status.OPEN


def _add_form(**overrides: Any) -> dict[str, Any]:
    data = _job_form(Job(name="added", kind="python", payload={"handler": "echo"}), **overrides)
    return {**data, "timeout_seconds": 60}


def test_submitter_adds_jobs_owned_by_themselves_whatever_the_form_says(client, submitter, operator) -> None:
    client.force_login(submitter)
    page = client.get(_url("jobs.Job", "add"))
    assert "owner" not in page.context["adminform"].form.fields
    response = client.post(_url("jobs.Job", "add"), _add_form(owner=operator.pk))
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert Job.objects.get(name="added").owner == submitter


def test_operator_adds_a_job_for_another_user(client, submitter, operator) -> None:
    client.force_login(operator)
    response = client.post(_url("jobs.Job", "add"), _add_form(owner=submitter.pk))
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert Job.objects.get(name="added").owner == submitter


def test_operator_cannot_give_a_shell_job_to_a_user_without_run_shell(client, submitter, operator) -> None:
    client.force_login(operator)
    form = _add_form(owner=submitter.pk, kind="shell", payload='{"command": ["true"]}')
    response = client.post(_url("jobs.Job", "add"), form)
    assert response.status_code == 200
    assert "jobs.run_shell" in response.content.decode()
    assert not Job.objects.filter(name="added").exists()


def test_owner_is_not_editable_on_a_job(client, submitter, operator) -> None:
    job = _job(submitter)
    client.force_login(operator)
    page = client.get(_url("jobs.Job", "change", job.pk))
    assert "owner" not in page.context["adminform"].form.fields  # job_update keeps the owner


def test_delete_page_archives_a_scheduled_job_of_the_owner(client, submitter) -> None:
    """Deleting archives: the page lists no history rows to delete (JobSchedule's admin deletes none)."""
    job = _job(submitter)
    client.force_login(submitter)
    response = client.post(_url("jobs.Job", "delete", job.pk), {"post": "yes"})
    assert response.status_code == 302
    assert Job.objects.get(pk=job.pk).status == Job.Status.ARCHIVED
