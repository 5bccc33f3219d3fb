"""API throughput through a real web server: single POST jobs/ vs GET auth/me/, and bulk vs single creation.

One gunicorn with the project's config (scheduler_project.gunicorn_conf: SCHEDULER_WEB_WORKERS workers,
default 2), DEBUG off, against the benchmark database; a user logged in through POST auth/login/ (one
token); clients are threads with one requests.Session each. Every job is a python `echo` job every 60 s
(a JobSchedule and a PeriodicTask each). Rows, one after the other on the same server:
  GET auth/me/ and POST jobs/ with --clients threads for --seconds each: requests/s and their ratio;
  --count single POST jobs/ (1 client, then --clients) vs --bulk-runs POST jobs/bulk/ of --count jobs: jobs/s.
The benchmark user's jobs are deleted before and after.

Run: .venv/bin/python bench/api.py [--clients 4] [--seconds 5] [--count 1000] [--bulk-runs 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from _setup import BENCH_BROKER_URL, BENCH_DATABASE_URL, ROOT, machine, setup

USERNAME = "bench-api"
PASSWORD = "bench-api password, not a secret"  # noqa: S105 - a throwaway user of the benchmark database
LOG = Path("/tmp/bench-api-web.log")  # noqa: S108 - the web server's output, for a look after a run

Call = Callable[[requests.Session, int], requests.Response]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        DATABASE_URL=BENCH_DATABASE_URL,
        CELERY_BROKER_URL=BENCH_BROKER_URL,
        SCHEDULER_WEB_HOST="127.0.0.1",
        SCHEDULER_WEB_PORT=str(port),
        DEBUG="false",  # DEBUG keeps every SQL query in memory: not what a deployment runs
        SCHEDULER_LOGIN_THROTTLE="1000/min",  # several runs in a minute log in several times
    )
    argv = [
        str(Path(sys.executable).with_name("gunicorn")), "scheduler_project.wsgi",
        "--config", "python:scheduler_project.gunicorn_conf",
    ]  # fmt: skip
    log = LOG.open("wb")
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_ready(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or its workers still booting
            pass
        time.sleep(0.2)
    raise SystemExit(f"the web server did not answer /healthz in {timeout:.0f} s; see {LOG}")


def bench_user() -> Any:
    """A submitter with a known password (created once in the benchmark database); its old jobs deleted."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from accounts.services import roles_sync

    roles_sync()
    user, _ = get_user_model().objects.get_or_create(username=USERNAME)
    user.set_password(PASSWORD)
    user.save()
    user.groups.add(Group.objects.get(name="submitter"))
    jobs_delete(user)
    return user


def jobs_delete(user: Any) -> None:
    """The user's jobs and beat entries, quickly (in SQL: a PeriodicTask delete signal writes a row each)."""
    from django.db import connection
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    from jobs.models import Job

    ids = list(Job.objects.filter(owner=user).values_list("pk", flat=True))
    Job.objects.filter(pk__in=ids).delete()  # with their schedules (cascade), which point at the tasks
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {PeriodicTask._meta.db_table} WHERE name = ANY(%s)",  # noqa: S608 - a model's table
            [[f"job:{pk}" for pk in ids]],
        )
    PeriodicTasks.update_changed()


def login(base: str) -> str:
    body = {"username": USERNAME, "password": PASSWORD}
    response = requests.post(f"{base}/api/v1/auth/login/", json=body, timeout=60)
    response.raise_for_status()
    return str(response.json()["token"])


def job_body(n: int) -> dict[str, Any]:
    return {
        "name": f"bench-{n}",
        "kind": "python",
        "payload": {"handler": "echo"},
        "schedule": {"type": "interval", "every_seconds": 60},
    }


class Load:
    """Client threads, each with its own requests.Session carrying the token."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token
        self.serial = 0
        self.lock = threading.Lock()

    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.token}"
        return session

    def next_serial(self) -> int:
        with self.lock:
            self.serial += 1
            return self.serial

    def run(
        self, call: Call, expect: int, clients: int, *, seconds: float = 0, total: int = 0
    ) -> tuple[int, float]:
        """Run `call` from `clients` threads for `seconds`, or `total` calls in all; (calls, elapsed)."""
        done = [0] * clients
        failures: list[str] = []
        start = threading.Barrier(clients + 1)

        def client(slot: int) -> None:
            session = self.session()
            call(session, self.next_serial())  # warm: connection open, server worker awake (not counted)
            start.wait()
            deadline = time.monotonic() + seconds
            quota = total // clients + (1 if slot < total % clients else 0)
            while (time.monotonic() < deadline) if seconds else (done[slot] < quota):
                response = call(session, self.next_serial())
                if response.status_code != expect:
                    failures.append(f"{response.status_code}: {response.text[:300]}")
                    return
                done[slot] += 1

        threads = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
        for thread in threads:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        if failures:
            raise SystemExit(f"unexpected answer: {failures[0]}")
        return sum(done), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--bulk-runs", type=int, default=5)
    args = parser.parse_args()
    setup()
    user = bench_user()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port)
    try:
        wait_ready(base)
        load = Load(base, login(base))
        rows = measure(load, args)
    finally:
        server.terminate()
        server.wait(timeout=60)
        jobs_delete(user)
    workers = os.environ.get("SCHEDULER_WEB_WORKERS", "2")
    print(f"machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"gunicorn, {workers} workers (scheduler_project.gunicorn_conf), DEBUG off; {BENCH_DATABASE_URL}")
    print()
    print("| what | clients | requests | jobs | seconds | requests/s | jobs/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def measure(load: Load, args: argparse.Namespace) -> list[list[str]]:
    base, clients, count = load.base, args.clients, args.count

    def me(session: requests.Session, n: int) -> requests.Response:
        return session.get(f"{base}/api/v1/auth/me/")

    def create(session: requests.Session, n: int) -> requests.Response:
        return session.post(f"{base}/api/v1/jobs/", json=job_body(n))

    def create_bulk(session: requests.Session, n: int) -> requests.Response:
        return session.post(
            f"{base}/api/v1/jobs/bulk/", json={"jobs": [job_body(n * count + i) for i in range(count)]}
        )

    me_calls, me_s = load.run(me, 200, clients, seconds=args.seconds)
    post_calls, post_s = load.run(create, 201, clients, seconds=args.seconds)
    one_calls, one_s = load.run(create, 201, 1, total=count)
    many_calls, many_s = load.run(create, 201, clients, total=count)
    bulk_times = []
    for _ in range(args.bulk_runs):
        _, seconds = load.run(create_bulk, 201, 1, total=1)
        bulk_times.append(seconds)
    me_rate, post_rate = me_calls / me_s, post_calls / post_s
    one_rate, many_rate = one_calls / one_s, many_calls / many_s
    bulk_s = sum(bulk_times)
    bulk_rate = count * len(bulk_times) / bulk_s
    spread = f"each {min(bulk_times):.2f}-{max(bulk_times):.2f}, median {statistics.median(bulk_times):.2f}"
    versus = (
        f"**{bulk_rate / one_rate:.1f} x** single (1 client), **{bulk_rate / many_rate:.1f} x** ({clients})"
    )
    return [
        _row("GET auth/me/", clients, me_calls, 0, me_s, "1 (base)"),
        _row(
            "POST jobs/ (one job each)",
            clients,
            post_calls,
            post_calls,
            post_s,
            f"{post_rate / me_rate:.2f} x auth/me/",
        ),
        _row(f"{count:,} x POST jobs/", 1, one_calls, one_calls, one_s, "1 (base)"),
        _row(
            f"{count:,} x POST jobs/",
            clients,
            many_calls,
            many_calls,
            many_s,
            f"{many_rate / one_rate:.2f} x 1 client",
        ),
        _row(
            f"POST jobs/bulk/, {count:,} jobs each",
            1,
            len(bulk_times),
            count * len(bulk_times),
            bulk_s,
            versus,
            spread,
        ),
    ]


def _row(
    what: str, clients: int, calls: int, jobs: int, seconds: float, ratio: str, note: str = ""
) -> list[str]:
    seconds_text = f"{seconds:.2f}" + (f" ({note})" if note else "")
    jobs_rate = f"{jobs / seconds:.1f}" if jobs else "-"
    return [
        what,
        str(clients),
        f"{calls:,}",
        f"{jobs:,}" if jobs else "-",
        seconds_text,
        f"{calls / seconds:.1f}",
        jobs_rate,
        ratio,
    ]


if __name__ == "__main__":
    main()
