"""Run a command (the broker-matrix tests) against RabbitMQ in a vhost of its own, created and deleted here.

    python -m tests.broker_matrix -- .venv/bin/pytest -m broker_matrix

The real-worker integration tests marked `broker_matrix` run twice in `make test`: once in the main run on
Redis, once through this on RabbitMQ (127.0.0.1:5672, guest/guest; RABBITMQ_URL names another server).
The vhost (`scheduler-test-<pid>`) is this run's alone and is deleted afterwards, whatever the outcome;
the Redis the product also needs (cache, locks) stays the test Redis database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from urllib.parse import quote, urlsplit, urlunsplit

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print("usage: python -m tests.broker_matrix -- COMMAND...", file=sys.stderr)
        return 2
    if not shutil.which("rabbitmqctl"):
        print("tests.broker_matrix: rabbitmqctl not found (RabbitMQ must run on this host)", file=sys.stderr)
        return 2
    vhost = f"scheduler-test-{os.getpid()}"
    parts = urlsplit(RABBITMQ_URL)
    user = parts.username or "guest"
    url = urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        redis = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
        env = {**os.environ, "CELERY_BROKER_URL": url, "SCHEDULER_REDIS_URL": redis}
        print(f"broker matrix: RabbitMQ vhost {vhost}", flush=True)
        return subprocess.run(argv, env=env).returncode
    finally:
        _ctl("delete_vhost", vhost)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
