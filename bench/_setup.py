"""Shared setup for the benchmarks: a dedicated database and Redis DB, Django configured, tables migrated."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A benchmark never runs against the app's or the tests' data: its own database and Redis DB number.
BENCH_DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/sched_beat_bench"
)
BENCH_BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13")
os.environ.update(
    DJANGO_SETTINGS_MODULE="scheduler_project.settings",
    DATABASE_URL=BENCH_DATABASE_URL,
    CELERY_BROKER_URL=BENCH_BROKER_URL,
    SCHEDULER_ENVIRONMENT="development",
    SCHEDULER_READ_VAR_ENV="0",
    SCHEDULER_LOG_LEVEL=os.environ.get("SCHEDULER_LOG_LEVEL", "WARNING"),
)


def setup() -> None:
    """Create the benchmark database if needed, configure Django and migrate."""
    from urllib.parse import urlsplit

    import django
    import psycopg

    parts = urlsplit(BENCH_DATABASE_URL)
    name = parts.path.lstrip("/")
    with psycopg.connect(
        host=parts.hostname, port=parts.port or 5432, user=parts.username, dbname="postgres", autocommit=True
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def machine() -> str:
    """One line describing the machine, for the table header."""
    import platform

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"
