"""Unmatched API URLs answer JSON, not Django's HTML pages."""

import pytest


@pytest.mark.parametrize("path", ["/api/v1/no-such-thing/", "/api/v2/jobs/"])
def test_unmatched_api_urls_are_json_404(client, db, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}


def test_unmatched_pages_outside_the_api_stay_html(client, db):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
