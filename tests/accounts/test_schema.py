"""The OpenAPI schema is valid and open; Swagger UI is served from local assets."""

from __future__ import annotations

from drf_spectacular.validation import validate_schema


def test_schema_is_valid_openapi_and_open_without_auth(api, db):
    response = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)  # raises on an invalid OpenAPI 3 document
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/auth/login/" in schema["paths"]
    assert {"/api/v1/auth/logout/", "/api/v1/auth/me/"} <= set(schema["paths"])
    # Login needs no credentials; me does, with the knox token.
    assert schema["paths"]["/api/v1/auth/login/"]["post"].get("security", [{}]) == [{}]
    assert {"knoxApiToken": []} in schema["paths"]["/api/v1/auth/me/"]["get"]["security"]


def test_docs_page_is_served_without_internet_assets(api, db):
    response = api.get("/api/v1/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui" in page
    assert "drf_spectacular_sidecar" in page
    assert "cdn.jsdelivr.net" not in page
    assert "unpkg.com" not in page
