"""Who may do what: two submitters, a viewer, an operator and nobody, over every object endpoint and verb.

Another user's object is a 404 on every verb (and absent from lists); a viewer's write is a 403 whatever
the object; without a token every endpoint is a 401.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from jobs.models import DeadLetter, Execution, Job
from tests.api.conftest import token_client

pytestmark = pytest.mark.django_db

# (name, method, url from alice's objects, body, the owner's success status)
ObjectCase = tuple[str, str, Callable[[dict[str, Any]], str], dict[str, Any] | None, int]
CASES: list[ObjectCase] = [
    ("job-get", "get", lambda o: f"/api/v1/jobs/{o['job'].pk}/", None, 200),
    ("job-patch", "patch", lambda o: f"/api/v1/jobs/{o['job'].pk}/", {"priority": 8}, 200),
    ("job-delete", "delete", lambda o: f"/api/v1/jobs/{o['job'].pk}/", None, 204),
    ("job-run", "post", lambda o: f"/api/v1/jobs/{o['job'].pk}/run/", None, 201),
    ("job-pause", "post", lambda o: f"/api/v1/jobs/{o['job'].pk}/pause/", None, 200),
    ("job-resume", "post", lambda o: f"/api/v1/jobs/{o['job'].pk}/resume/", None, 200),
    ("execution-get", "get", lambda o: f"/api/v1/executions/{o['execution'].pk}/", None, 200),
    ("execution-cancel", "post", lambda o: f"/api/v1/executions/{o['execution'].pk}/cancel/", None, 200),
    ("dead-letter-get", "get", lambda o: f"/api/v1/dead-letters/{o['letter'].pk}/", None, 200),
    ("dead-letter-replay", "post", lambda o: f"/api/v1/dead-letters/{o['letter'].pk}/replay/", None, 201),
    ("allocation-get", "get", lambda o: f"/api/v1/allocations/{o['execution'].allocation.pk}/", None, 200),
]
WRITES = {"patch", "delete", "post"}


def _call(client: APIClient, method: str, url: str, body: dict[str, Any] | None) -> Any:
    return getattr(client, method)(url, body, format="json") if body else getattr(client, method)(url)


def _expected(actor: str, method: str, owner_status: int) -> int:
    if actor == "anonymous":
        return 401
    if actor == "vic" and method in WRITES:
        return 403  # the role check runs before any lookup: no hint whether the object exists
    if actor in ("alice", "olga"):
        return owner_status  # the owner, and an operator who acts on everyone's objects
    return 404  # bob (another submitter), vic reading: alice's objects do not exist for them


@pytest.mark.parametrize("actor", ["alice", "bob", "vic", "olga", "anonymous"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_object_matrix_on_alices_objects(world, make_user, actor, case):
    name, method, url_of, body, owner_status = case
    objects = world["alice"]
    users = {
        u.username: u for u in (objects["job"].owner, world["bob"]["job"].owner, world["vic"]["job"].owner)
    }
    users["olga"] = make_user("olga", "operator")
    client = APIClient() if actor == "anonymous" else token_client(users[actor])
    before = _state(objects)
    response = _call(client, method, url_of(objects), body)
    expected = _expected(actor, method, owner_status)
    assert response.status_code == expected, (name, actor, response.content)
    if actor == "anonymous":
        assert response.headers["WWW-Authenticate"].startswith("Token")
    if expected >= 400:
        assert _state(objects) == before, "a refused request changed something"


def _state(objects: dict[str, Any]) -> tuple:
    job = Job.objects.get(pk=objects["job"].pk)
    execution = Execution.objects.get(pk=objects["execution"].pk)
    letter = DeadLetter.objects.get(pk=objects["letter"].pk)
    return (job.status, job.priority, execution.status, letter.status, Execution.objects.count())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_viewer_reads_own_objects_but_cannot_write_them(world, case):
    name, method, url_of, body, owner_status = case
    objects = world["vic"]
    client = token_client(objects["job"].owner)
    response = _call(client, method, url_of(objects), body)
    assert response.status_code == (403 if method in WRITES else owner_status), (name, response.content)


@pytest.mark.parametrize(
    ("actor", "expected"), [("alice", 403), ("vic", 403), ("olga", 200), ("anonymous", 401)]
)
def test_node_matrix(world, make_user, actor, expected):
    node = world["alice"]["execution"].node
    olga = make_user("olga", "operator")
    client = {
        "alice": lambda: token_client(world["alice"]["job"].owner),
        "vic": lambda: token_client(world["vic"]["job"].owner),
        "olga": lambda: token_client(olga),
        "anonymous": APIClient,
    }[actor]()
    url = f"/api/v1/nodes/{node.pk}/"
    assert client.get(url).status_code == (401 if actor == "anonymous" else 200)
    assert client.patch(url, {"status": "draining"}, format="json").status_code == expected
    register = {"name": "x@y", "cpu_capacity": 1, "memory_mb_capacity": 1}
    assert client.post("/api/v1/nodes/", register, format="json").status_code == (
        201 if expected == 200 else expected
    )


LISTS = ["/api/v1/jobs/", "/api/v1/executions/", "/api/v1/dead-letters/", "/api/v1/allocations/"]


@pytest.mark.parametrize("url", LISTS)
def test_lists_hold_only_own_objects_but_all_for_operators(world, make_user, url):
    owners = {name: world[name]["job"].owner for name in ("alice", "bob", "vic")}
    for name, owner in owners.items():
        rows = token_client(owner).get(url).json()["results"]
        job_ids = {row.get("job", row["id"]) for row in rows}
        own = world[name]["job"].pk
        assert job_ids == {own}, (name, url, rows)
    every = token_client(make_user("olga", "operator")).get(url).json()
    assert every["count"] == (3 if url != "/api/v1/executions/" else 6)


def test_filters_cannot_reach_other_users_objects(world):
    alice = token_client(world["alice"]["job"].owner)
    bobs_job = world["bob"]["job"].pk
    assert alice.get(f"/api/v1/executions/?job={bobs_job}").json()["count"] == 0
    assert alice.get(f"/api/v1/dead-letters/?job={bobs_job}").json()["count"] == 0
    assert alice.get("/api/v1/jobs/?owner=bob").json()["count"] == 0


def test_viewer_cannot_create_jobs_and_anonymous_gets_401(world):
    vic = token_client(world["vic"]["job"].owner)
    body = {"name": "x", "kind": "python", "payload": {"handler": "echo"}}
    assert vic.post("/api/v1/jobs/", body, format="json").status_code == 403
    for url in [*LISTS, "/api/v1/nodes/", "/api/v1/resources/usage/"]:
        response = APIClient().get(url)
        assert response.status_code == 401, url
        assert "WWW-Authenticate" in response.headers


def test_revoked_token_is_refused(world):
    from knox.models import AuthToken

    client = token_client(world["alice"]["job"].owner)
    assert client.get("/api/v1/jobs/").status_code == 200
    assert client.post("/api/v1/auth/logout/").status_code == 204
    assert client.get("/api/v1/jobs/").status_code == 401
    assert not AuthToken.objects.filter(user=world["alice"]["job"].owner).exists()
