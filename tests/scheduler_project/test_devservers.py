"""`make up`'s environment step from a fresh clone: with every server and secret configured, var/ is made."""

from __future__ import annotations

import os
import subprocess
import sys

from django.conf import settings

from tests.conftest import ROOT


def test_env_up_with_everything_configured_creates_var_and_its_env_file(tmp_path):
    var = tmp_path / "fresh-clone-var"  # does not exist, as in a fresh clone
    db = settings.DATABASES["default"]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "PYTEST_"))},
        "SCHEDULER_VAR_DIR": str(var),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/postgres",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "SECRET_KEY": "a-secret-key-set-by-the-operator",
        "FLOWER_BASIC_AUTH": "admin:a-long-flower-password",
    }
    result = subprocess.run(
        [sys.executable, "-m", "scheduler_project.devservers", "env", "up"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    written = (var / "env").read_text()
    assert "SECRET_KEY=a-secret-key-set-by-the-operator" in written
    assert oct((var / "env").stat().st_mode & 0o777) == "0o600"
    assert not (var / "postgres").exists()  # nothing embedded was started: the servers were given
    assert "export DATABASE_URL=" in result.stdout
