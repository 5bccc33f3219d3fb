"""The dashboard in a real headless Chromium (Selenium with Debian's chromium and chromium-driver)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from jobs.models import DeadLetter, Execution
from nodes.models import ResourceAllocation
from tests.factories import JobFactory, NodeFactory

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
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for CSP violations
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def running_cluster(transactional_db, settings, make_user):
    """An operator, a node half allocated, a running execution at 40 %, a day of history, a dead letter."""
    settings.SCHEDULER_METRICS_CACHE_SECONDS = 0
    user = make_user("ops", "operator")
    node = NodeFactory(name="w1@box", cpu_capacity=Decimal(4), memory_mb_capacity=2048, cpu_percent=50.0,
                       memory_used_mb=300, last_heartbeat_at=timezone.now())  # fmt: skip
    job = JobFactory(owner=user, name="nightly-report")
    now = timezone.now()
    running = Execution.objects.create(job=job, scheduled_for=now, status="running", node=node, progress=40.0,
                                       started_at=now - timedelta(seconds=75))  # fmt: skip
    ResourceAllocation.objects.create(node=node, execution=running, cpu=Decimal(2), memory_mb=1024)
    for hours in range(0, 20, 2):
        at = now - timedelta(hours=hours)
        for i, status in enumerate(["succeeded", "succeeded", "failed"]):
            error = "exit 1" if status == "failed" else ""
            Execution.objects.create(
                job=job, scheduled_for=at - timedelta(seconds=i + 1), status=status, error=error,
                started_at=at - timedelta(seconds=5), finished_at=at,
            )  # fmt: skip
    dead = Execution.objects.create(job=job, scheduled_for=now - timedelta(days=1), status="dead",
                                    finished_at=now, error="gave up")  # fmt: skip
    DeadLetter.objects.create(job=job, execution=dead, error="gave up")
    return running


def test_dashboard_after_login_shows_chart_node_bars_and_progress(
    live_server, browser, running_cluster, tmp_path
):
    browser.get(f"{live_server.url}/dashboard/")
    assert "/dashboard/login/" in browser.current_url  # login required
    browser.find_element(By.NAME, "username").send_keys("ops")
    browser.find_element(By.NAME, "password").send_keys("correct horse battery staple")
    browser.find_element(By.ID, "sign-in").click()
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.current_url == f"{live_server.url}/dashboard/")

    chart = browser.find_element(By.CSS_SELECTOR, "svg#throughput-chart")
    assert chart.is_displayed()
    assert len(chart.find_elements(By.CSS_SELECTOR, "rect.failed")) == 24
    assert chart.find_element(By.CSS_SELECTOR, "rect.failed").get_attribute("height") is not None
    cpu = browser.find_element(By.CSS_SELECTOR, ".node-row .cpu-bar .allocated")
    assert cpu.value_of_css_property("width") != "0px"
    assert "width: 50%" in (cpu.get_attribute("style") or "")
    memory = browser.find_element(By.CSS_SELECTOR, ".node-row .memory-bar .allocated")
    assert "width: 50%" in (memory.get_attribute("style") or "")
    progress = browser.find_element(By.CSS_SELECTOR, ".running-row progress.progress")
    assert progress.is_displayed()
    assert float(progress.get_attribute("value") or 0) == 40.0
    row = browser.find_element(By.CSS_SELECTOR, ".running-row").text
    assert "nightly-report" in row
    assert "w1@box" in row
    assert " s" in row
    assert "gave up" in browser.find_element(By.ID, "dead-letters").text
    assert browser.find_element(By.ID, "flower-link").get_attribute("href")

    # The page refreshes itself: a progress report made now shows up without reloading.
    Execution.objects.filter(pk=running_cluster.pk).update(progress=80.0)
    # The refresh replaces the rows: an element found a moment before may be gone when it is read.
    refreshing = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    refreshing.until(
        lambda d: (
            float(d.find_element(By.CSS_SELECTOR, ".running-row progress").get_attribute("value") or 0) == 80
        )
    )
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    # Everything above ran under the Content-Security-Policy (scheduler_project/csp.py): nothing refused.
    console = [entry["message"] for entry in browser.get_log("browser")]
    assert not [m for m in console if "Content Security Policy" in m], console
