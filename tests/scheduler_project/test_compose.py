"""docker-compose.yml runs what the Procfile runs, with healthchecks, a scalable worker and no secrets in it.

No Docker engine runs here: the file is parsed and checked, and the Dockerfile's inputs must exist.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
import yaml

from scheduler_project.flower import basic_auth_problem
from tests.conftest import ROOT

PROCESSES = ("web", "beat", "worker", "flower")


def procfile() -> dict[str, list[str]]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and not line.startswith("#"):
            processes[name.strip()] = shlex.split(command)
    return processes


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def service_command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_procfile_has_the_four_processes():
    assert set(procfile()) == set(PROCESSES)


@pytest.mark.parametrize("name", PROCESSES)
def test_each_service_runs_the_procfile_command(compose, name):
    assert service_command(compose["services"][name]) == procfile()[name]


def test_the_commands_are_the_designed_ones():
    processes = procfile()
    assert processes["web"][:2] == ["gunicorn", "scheduler_project.wsgi"]
    assert processes["beat"][:4] == ["celery", "-A", "scheduler_project", "beat"]
    assert "-S" not in processes["beat"]  # the settings choose the scheduler class
    assert processes["worker"][:4] == ["celery", "-A", "scheduler_project", "worker"]
    assert processes["worker"][processes["worker"].index("-n") + 1].endswith("@%h")
    assert "-E" in processes["worker"]
    assert processes["flower"] == ["python", "-m", "scheduler_project.flower"]


def test_every_service_has_a_healthcheck_where_required(compose):
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "scheduler_project.healthcheck" in " ".join(services["web"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])


def test_app_services_wait_for_healthy_dependencies_and_migrations(compose):
    services = compose["services"]
    assert services["migrate"]["command"][:3] == ["python", "manage.py", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "beat", "worker"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_worker_is_scalable(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker  # each replica keeps its own container hostname for %h


def test_app_services_run_in_production_with_required_secrets(compose):
    for name in ("migrate", *PROCESSES):
        env = compose["services"][name]["environment"]
        assert env["SCHEDULER_ENVIRONMENT"] == "production"
        assert re.fullmatch(r"\$\{SECRET_KEY:\?[^}]+\}", env["SECRET_KEY"])
        assert "${POSTGRES_PASSWORD:?" in env["DATABASE_URL"]
    assert compose["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith(
        "${FLOWER_BASIC_AUTH:?"
    )


def test_no_secret_is_hard_coded(compose):
    secret_names = re.compile(r"(SECRET|PASSWORD|BASIC_AUTH|TOKEN)", re.IGNORECASE)

    def walk(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for value in node:
                yield from walk(value, path)
        else:
            yield path, str(node)

    for path, value in walk(compose):
        if secret_names.search(path.rsplit(".", 1)[-1]):
            assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", value), f"{path} must come from .env, not {value!r}"
        # A password inside a URL must be a required variable too: nothing is left once those are removed.
        literal = re.sub(r"\$\{[^}]*\}", "", value)
        assert not re.search(r"://[^/@\s:]+:[^/@\s]+@", literal), f"{path} embeds a password"


def test_dockerfile_inputs_exist_and_it_runs_as_non_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.splitlines()[1] == "FROM python:3.11-slim"
    for source in re.findall(r"^COPY\s+(\S+)\s", dockerfile, re.MULTILINE):
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert "pip install -r requirements.txt" in dockerfile
    assert "collectstatic" in dockerfile
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users
    assert users[-1] not in {"root", "0"}
    # Every app in INSTALLED_APPS that lives in this repository is copied into the image.
    from django.conf import settings

    local_apps = {app for app in settings.INSTALLED_APPS if (ROOT / app).is_dir()}
    copied = set(re.findall(r"^COPY\s+(\w+)\s", dockerfile, re.MULTILINE))
    assert local_apps <= copied


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", "var", ".git"} <= set(ignored)


@pytest.mark.parametrize(
    ("value", "ok"),
    [("", False), ("admin", False), ("admin:", False), (":pw", False), ("admin:pw", True),
     ("a:1,b:2", True), ("a:1,b", False)],
)  # fmt: skip
def test_flower_basic_auth_validation(value, ok):
    assert (basic_auth_problem(value) is None) is ok


def test_flower_refuses_to_start_without_a_password():
    env = {"PATH": "/usr/bin:/bin", "SCHEDULER_READ_VAR_ENV": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "scheduler_project.flower"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to start without a password" in result.stderr
