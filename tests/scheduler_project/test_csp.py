"""Admin, dashboard and API docs pages carry a strict Content-Security-Policy, and still work under it."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.template.loader import get_template
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from scheduler_project.csp import INLINE_SCRIPT_HASHES

STRICT = [
    "default-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "img-src 'self' data:",
]


def _directives(response) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return {d.split(" ", 1)[0]: d for d in (part.strip() for part in header.split(";")) if d}


@pytest.mark.parametrize("path", ["/admin/login/", "/dashboard/login/", "/api/v1/docs/", "/no-such-page/"])
def test_html_pages_carry_the_strict_policy(client, db, path):
    response = client.get(path)
    assert response["Content-Type"].startswith("text/html")
    directives = _directives(response)
    for directive in STRICT:
        assert directives[directive.split(" ", 1)[0]] == directive, path
    assert "'unsafe-eval'" not in response["Content-Security-Policy"]


def test_inline_scripts_only_on_the_api_docs(client, db):
    assert "'unsafe-inline'" not in _directives(client.get("/admin/login/"))["script-src"]
    assert "'unsafe-inline'" not in _directives(client.get("/dashboard/login/"))["script-src"]
    assert _directives(client.get("/api/v1/docs/"))["script-src"] == "script-src 'self' 'unsafe-inline'"


def test_the_dashboard_inline_script_is_allowed_by_its_hash(client, make_user):
    make_user("ops", "operator")
    client.login(username="ops", password="correct horse battery staple")
    response = client.get("/dashboard/")
    assert response.status_code == 200
    scripts = re.findall(r"<script>(.*?)</script>", response.content.decode(), re.S)
    assert scripts, "the dashboard has no inline script any more: drop its hash from scheduler_project/csp.py"
    script_src = _directives(response)["script-src"]
    for script in scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in script_src, "update INLINE_SCRIPT_HASHES in scheduler_project/csp.py"


def test_every_hashed_template_exists():
    for name in INLINE_SCRIPT_HASHES:
        get_template(name)


def test_non_html_responses_carry_no_policy(client, db):
    assert "Content-Security-Policy" not in client.get("/api/v1/schema/?format=json")
    assert "Content-Security-Policy" not in client.get("/healthz")


# In a real Chromium: the pages render and the console reports no CSP violation.

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1400",
]  # fmt: skip


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        pytest.fail("chromium and chromium-driver are not installed: run `make browser`")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _csp_errors(browser: webdriver.Chrome) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]


def test_swagger_ui_renders_under_the_policy(live_server, browser, transactional_db):
    browser.get(f"{live_server.url}/api/v1/docs/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    assert browser.find_element(By.CSS_SELECTOR, "#swagger-ui .info .title").is_displayed()
    assert _csp_errors(browser) == []


def test_admin_login_and_index_work_under_the_policy(live_server, browser, transactional_db, make_user):
    make_user("ada", "admin", is_staff=True, is_superuser=True)
    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("ada")
    browser.find_element(By.NAME, "password").send_keys("correct horse battery staple")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url == f"{live_server.url}/admin/")
    assert browser.find_element(By.ID, "scheduler-dashboard-link").is_displayed()
    browser.get(f"{live_server.url}/admin/jobs/job/add/")  # the admin's own scripts (forms, widgets)
    assert browser.find_element(By.NAME, "name").is_displayed()
    assert _csp_errors(browser) == []
