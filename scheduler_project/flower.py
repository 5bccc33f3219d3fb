"""Start Flower, but never without a strong password: `python -m scheduler_project.flower [flower options]`.

Flower reads FLOWER_BASIC_AUTH (user:password[,user2:password2]) from the environment itself, so the
password never appears on a command line or in `ps`. Listens on SCHEDULER_FLOWER_HOST (127.0.0.1; 0.0.0.0
in a container) and SCHEDULER_FLOWER_PORT (5555).

Flower needs the broker and nothing else: it runs `celery -A scheduler_project.flower` (the small `app`
below, which never loads the Django settings) with an environment holding only CELERY_BROKER_URL,
FLOWER_* and the basics (PATH, HOME, locale), never SECRET_KEY or DATABASE_URL — whatever `make up`,
the Procfile or a container gave this wrapper. This module imports nothing from Django.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from celery import Celery

# Like settings.py's default (and `make up`'s embedded Redis).
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
# What Flower's process keeps of this wrapper's environment: the broker, its own FLOWER_* options, basics.
PASSED_ON = ("CELERY_BROKER_URL", "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
MIN_PASSWORD_LENGTH = 12
COMMON_PASSWORDS = frozenset(
    {"admin", "administrator", "password", "passw0rd", "password1", "password123", "flower", "celery",
     "changeme", "change-me", "secret", "letmein", "welcome", "qwerty", "qwertyuiop", "root", "toor",
     "123456", "1234567890", "123456789012", "000000000000", "default", "guest", "test", "scheduler"}
)  # fmt: skip
RULE = (
    f"every password must have at least {MIN_PASSWORD_LENGTH} characters, differ from its user name "
    "and not be a common one"
)

# Flower's own Celery app: the broker only (no Django settings, no SECRET_KEY or DATABASE_URL needed).
# The Redis transport options Flower reads to count a priority queue's messages match settings.py's.
# Not the current app: importing this module (tests, tools) must leave the project's app current.
app = Celery(
    "scheduler_project.flower", fixups=[], broker=os.environ.get("CELERY_BROKER_URL"), set_as_current=False
)
app.conf.update(
    broker_transport_options={"priority_steps": list(range(10)), "sep": ":"},
    timezone="UTC",
    broker_connection_retry_on_startup=True,
)


def basic_auth_problem(value: str) -> str | None:
    """Why FLOWER_BASIC_AUTH is unusable, or None when every entry is user:password with a strong password."""
    if not value.strip():
        return "FLOWER_BASIC_AUTH is not set"
    for entry in value.split(","):
        user, _, password = entry.partition(":")
        if not user.strip() or not password.strip():
            return "FLOWER_BASIC_AUTH must be user:password (comma-separated for several users)"
        if (
            len(password) < MIN_PASSWORD_LENGTH
            or password.casefold() == user.casefold()
            or password.casefold() in COMMON_PASSWORDS
        ):
            return f"FLOWER_BASIC_AUTH has a weak password for user {user!r}: {RULE}"
    return None


def flower_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment Flower runs with: the broker URL, FLOWER_* (its auth and options), the basics."""
    env = {key: environ[key] for key in PASSED_ON if key in environ}
    env.update({key: value for key, value in environ.items() if key.startswith("FLOWER_")})
    env.setdefault("CELERY_BROKER_URL", DEFAULT_BROKER_URL)
    env.setdefault("PATH", os.defpath)
    return env


def main(argv: list[str]) -> int:
    problem = basic_auth_problem(os.environ.get("FLOWER_BASIC_AUTH", ""))
    if problem:
        print(
            f"flower: refusing to start without a strong password: {problem}. "
            "Set FLOWER_BASIC_AUTH=user:password (`make up` generates one in var/env).",
            file=sys.stderr,
        )
        return 2
    host = os.environ.get("SCHEDULER_FLOWER_HOST", "127.0.0.1")
    port = os.environ.get("SCHEDULER_FLOWER_PORT", "5555")
    command = [sys.executable, "-m", "celery", "-A", "scheduler_project.flower", "flower"]
    args = [*command, f"--address={host}", f"--port={port}", *argv]
    os.execve(sys.executable, args, flower_environment(os.environ))  # noqa: S606
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
