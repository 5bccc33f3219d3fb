"""docker-compose.yml runs what the Procfile runs, with healthchecks, a scalable worker and no secrets in it.

No Docker engine runs here: the file is parsed and checked, and the Dockerfile's inputs must exist.
"""

from __future__ import annotations

import re
import secrets
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
    # redis-cli exits 0 on NOAUTH: the check authenticates and wants the PONG itself.
    assert services["redis"]["healthcheck"]["test"] == [
        "CMD-SHELL",
        'REDISCLI_AUTH="$$REDIS_PASSWORD" redis-cli ping | grep -qx PONG',
    ]
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
    for name in ("migrate", "web", "beat", "worker"):
        env = compose["services"][name]["environment"]
        assert env["SCHEDULER_ENVIRONMENT"] == "production"
        assert re.fullmatch(r"\$\{SECRET_KEY:\?[^}]+\}", env["SECRET_KEY"])
        assert "${POSTGRES_PASSWORD:?" in env["DATABASE_URL"]
    assert compose["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith(
        "${FLOWER_BASIC_AUTH:?"
    )


def test_flower_gets_the_broker_and_its_password_only(compose):
    flower = compose["services"]["flower"]
    assert set(flower["environment"]) == {"CELERY_BROKER_URL", "FLOWER_BASIC_AUTH", "SCHEDULER_FLOWER_HOST"}
    assert "SECRET_KEY" not in flower["environment"]
    assert "DATABASE_URL" not in flower["environment"]
    assert "env_file" not in flower
    # Nor through the image: the Dockerfile sets no secret either.
    assert not re.search(
        r"SECRET_KEY=|DATABASE_URL=", (ROOT / "Dockerfile").read_text().split("RUN SECRET_KEY")[0]
    )


def test_only_web_and_flower_are_published_and_on_loopback_only(compose):
    services = compose["services"]
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    assert published == {
        "web": ["127.0.0.1:${SCHEDULER_WEB_PORT:-8000}:8000"],
        "flower": ["127.0.0.1:${SCHEDULER_FLOWER_PORT:-5555}:5555"],
    }
    # The one proxy in front of web is trusted in X-Forwarded-For (the login throttle), no more.
    assert services["web"]["environment"]["SCHEDULER_NUM_PROXIES"] == "${SCHEDULER_NUM_PROXIES:-1}"


def test_redis_requires_the_password_every_broker_url_carries(compose):
    redis = compose["services"]["redis"]
    assert re.fullmatch(r"\$\{REDIS_PASSWORD:\?[^}]+\}", redis["environment"]["REDIS_PASSWORD"])
    script = service_command(redis)
    assert script[:2] == ["sh", "-c"]
    # requirepass goes in on stdin (`redis-server -`), never on the command line `ps` shows.
    assert script[2] == (
        "printf 'requirepass %s\\n' \"$$REDIS_PASSWORD\" | exec redis-server - --appendonly yes"
    )
    assert "--requirepass" not in script[2]
    for name in ("migrate", *PROCESSES):
        url = compose["services"][name]["environment"]["CELERY_BROKER_URL"]
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", url), (name, url)
    assert "REDIS_PASSWORD=" in (ROOT / ".env.example").read_text().splitlines()


def test_flowers_celery_app_needs_no_django_and_counts_priority_queues_like_settings():
    from django.conf import settings

    from scheduler_project.flower import app as flower_app

    assert flower_app.fixups == []  # no Django fixup: Flower never loads the settings
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    assert flower_app.conf.broker_transport_options == {
        "priority_steps": options["priority_steps"],
        "sep": options["sep"],
    }


def test_importing_the_flower_wrapper_leaves_the_projects_celery_app_current():
    # Flower's own app once became current on import: every later send_task in the process used its broker.
    from celery import current_app

    from scheduler_project import flower
    from scheduler_project.celery import app

    assert flower.app is not app
    assert current_app._get_current_object() is app


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
    [("", False), ("admin", False), ("admin:", False), (":pw", False), ("a:1,b", False),
     # weak: short, the user name, a common password (any case)
     ("admin:pw", False), ("a:1,b:2", False), ("admin:Zq8vLm3pR7t", False),
     ("administrator:administrator", False), ("admin:ChangeMe", False), ("admin:password", False),
     ("flower:flower", False), ("admin:123456", False), ("ops:password123", False),
     ("admin:Zq8vLm3pR7tXw", True), ("a:Zq8vLm3pR7tXw,b:0Kd2wXt7Rp3mLv8qZ", True),
     ("a:Zq8vLm3pR7tXw,b:secret", False)],
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
    assert "refusing to start without a strong password" in result.stderr


def test_make_ups_generated_password_passes():
    from scheduler_project.devservers import FLOWER_USER

    for _ in range(50):  # devservers.up_environment: secrets.token_urlsafe(16)
        assert basic_auth_problem(f"{FLOWER_USER}:{secrets.token_urlsafe(16)}") is None


@pytest.mark.parametrize("password", ["changeme", "admin", "Password", "short-pw-11"])
def test_flower_refuses_a_weak_password_in_one_line(password):
    env = {"PATH": "/usr/bin:/bin", "SCHEDULER_READ_VAR_ENV": "0", "FLOWER_BASIC_AUTH": f"admin:{password}"}
    # Started the way the Procfile (and so supervisord and compose) start it.
    result = subprocess.run(
        [sys.executable, *procfile()["flower"][1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert "FLOWER_BASIC_AUTH" in lines[0]
    assert "weak password for user 'admin'" in lines[0]
    assert "at least 12 characters" in lines[0]
    if password != "admin":
        assert password not in lines[0]  # the password itself is never printed
