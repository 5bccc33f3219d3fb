"""Container healthcheck for the web process: `python -m scheduler_project.healthcheck` exits 0 when healthy.

Asks this container's gunicorn for /healthz over plain HTTP (exempt from the HTTPS redirect) with a Host
header from ALLOWED_HOSTS, since production refuses any other host.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe_host(allowed_hosts: str) -> str:
    """A Host header value Django accepts for the first ALLOWED_HOSTS entry."""
    first = allowed_hosts.split(",")[0].strip()
    if not first or first == "*":
        return "localhost"
    return first.lstrip(".")  # ".example.com" also allows example.com itself


def main() -> int:
    port = os.environ.get("SCHEDULER_WEB_PORT", "8000")
    request = urllib.request.Request(  # noqa: S310 - a fixed http URL to ourselves
        f"http://127.0.0.1:{port}/healthz",
        headers={"Host": probe_host(os.environ.get("ALLOWED_HOSTS", ""))},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            body = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
