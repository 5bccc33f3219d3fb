"""Start Flower, but never without a password: `python -m scheduler_project.flower [flower options]`.

Flower reads FLOWER_BASIC_AUTH (user:password[,user2:password2]) from the environment itself, so the
password never appears on a command line or in `ps`. Listens on SCHEDULER_FLOWER_HOST (127.0.0.1; 0.0.0.0
in a container) and SCHEDULER_FLOWER_PORT (5555).
"""

from __future__ import annotations

import os
import sys


def basic_auth_problem(value: str) -> str | None:
    """Why FLOWER_BASIC_AUTH is unusable, or None when every entry is user:password with both set."""
    if not value.strip():
        return "FLOWER_BASIC_AUTH is not set"
    for entry in value.split(","):
        user, _, password = entry.partition(":")
        if not user.strip() or not password.strip():
            return "FLOWER_BASIC_AUTH must be user:password (comma-separated for several users)"
    return None


def main(argv: list[str]) -> int:
    problem = basic_auth_problem(os.environ.get("FLOWER_BASIC_AUTH", ""))
    if problem:
        print(
            f"flower: refusing to start without a password: {problem}. "
            "Set FLOWER_BASIC_AUTH=user:password (`make up` generates one in var/env).",
            file=sys.stderr,
        )
        return 2
    host = os.environ.get("SCHEDULER_FLOWER_HOST", "127.0.0.1")
    port = os.environ.get("SCHEDULER_FLOWER_PORT", "5555")
    command = [sys.executable, "-m", "celery", "-A", "scheduler_project", "flower"]
    os.execv(sys.executable, [*command, f"--address={host}", f"--port={port}", *argv])  # noqa: S606
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
