"""Role classes and object scoping as API views use them, through APIClient with real tokens."""

from __future__ import annotations

import pytest

from tests.factories import JobFactory

pytestmark = pytest.mark.urls("tests.accounts.urls_probe")


@pytest.fixture
def clients(token_client):
    return {
        "alice": token_client("alice", "submitter"),
        "victor": token_client("victor", "viewer"),
        "olga": token_client("olga", "operator"),
    }


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_another_users_object_is_404_on_every_verb(clients, method):
    victors_job = JobFactory(owner=type(JobFactory().owner).objects.get(username="victor"))
    response = getattr(clients["alice"], method)(
        f"/probe/jobs/{victors_job.pk}/", {"name": "x"}, format="json"
    )
    assert response.status_code == 404


def test_lists_hold_only_own_objects_but_operators_see_all(clients):
    from django.contrib.auth import get_user_model

    users = get_user_model().objects
    alice_job = JobFactory(owner=users.get(username="alice"))
    victor_job = JobFactory(owner=users.get(username="victor"))
    ids = lambda client: [row["id"] for row in client.get("/probe/jobs/").json()["results"]]  # noqa: E731
    assert ids(clients["alice"]) == [alice_job.pk]
    assert ids(clients["victor"]) == [victor_job.pk]
    assert ids(clients["olga"]) == [alice_job.pk, victor_job.pk]
    assert clients["olga"].get(f"/probe/jobs/{alice_job.pk}/").status_code == 200


def test_viewer_reads_own_but_cannot_change_it(clients):
    from django.contrib.auth import get_user_model

    job = JobFactory(owner=get_user_model().objects.get(username="victor"))
    assert clients["victor"].get(f"/probe/jobs/{job.pk}/").status_code == 200
    assert clients["victor"].patch(f"/probe/jobs/{job.pk}/", {"name": "x"}, format="json").status_code == 403
    assert clients["victor"].delete(f"/probe/jobs/{job.pk}/").status_code == 403


def test_submitter_changes_own(clients):
    from django.contrib.auth import get_user_model

    job = JobFactory(owner=get_user_model().objects.get(username="alice"))
    response = clients["alice"].patch(f"/probe/jobs/{job.pk}/", {"name": "renamed"}, format="json")
    assert response.status_code == 200
    assert response.json()["name"] == "renamed"


def test_is_operator_and_operator_or_read_only(clients, api):
    assert clients["alice"].get("/probe/operator/").status_code == 403
    assert clients["olga"].get("/probe/operator/").status_code == 200
    assert clients["victor"].get("/probe/nodes/").status_code == 200
    assert clients["alice"].post("/probe/nodes/", {}, format="json").status_code == 403
    assert clients["olga"].post("/probe/nodes/", {}, format="json").status_code == 201
    response = api.get("/probe/nodes/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
