"""Private servers for the scale-out tests: PostgreSQL primaries and standbys, PgBouncer.

Each runs from a folder of its own under /tmp (not pytest's tmp_path: the unprivileged user must reach it),
as the `postgres` system user when the tests run as root (PostgreSQL and PgBouncer refuse root), on a free
port of 127.0.0.1; each is stopped by its own pid or data folder, never anything else.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVICE_USER = "postgres"
TEST_APP = "scaleout-test"  # application_name of the tests' own connections (told apart in server logs)
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # log_line_prefix starts with %m


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_service_user(argv: list[str]) -> list[str]:
    # setpriv execs the program itself (no parent left between us and it): its pid is the server's.
    setpriv = ["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--init-groups"]
    return [*setpriv, *argv] if os.geteuid() == 0 else argv


def private_folder(prefix: str) -> Path:
    """A new folder under /tmp owned by the service user."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVICE_USER)
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("cwd", tempfile.gettempdir())  # a folder the service user may enter
    done = subprocess.run(as_service_user(argv), capture_output=True, text=True, timeout=120, **kwargs)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


class LogTail:
    """The lines a server appends to its log file after a mark."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def since_mark(self) -> list[str]:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            return handle.read().decode(errors="replace").splitlines()


@dataclass
class Postgres:
    """A private PostgreSQL 15 server (primary or streaming standby)."""

    data: Path
    port: int
    log: LogTail = field(init=False)

    def __post_init__(self) -> None:
        self.log = LogTail(self.data.parent / f"{self.data.name}.log")

    def start(self) -> None:
        run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log.path), "-w", "-t", "60",
             "-o", f"-p {self.port}", "start"])  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                as_service_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
                cwd=tempfile.gettempdir(),
                capture_output=True,
                timeout=60,
            )

    def url(self, dbname: str) -> str:
        return f"postgres://{SERVICE_USER}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=SERVICE_USER, dbname=dbname, autocommit=True,
            connect_timeout=10, application_name=TEST_APP,
        )  # fmt: skip

    def app_statements(self, app: str) -> list[str]:
        """Statements logged (log_statement=all) since the mark by connections named `app`."""
        statements: list[str] = []
        current: list[str] | None = None
        for line in self.log.since_mark():
            if _LOG_LINE.match(line):  # a new entry; lines that do not match continue the last one
                current = None
                if f" app={app} " in line and "statement: " in line:
                    current = [line.partition("statement: ")[2]]
                    statements.append("")
            elif current is not None:
                current.append(line)
            if current is not None:
                statements[-1] = "\n".join(current)
        return statements


# Logged statements carry the application name; fsync off: a test server's data may be lost at no cost.
SERVER_CONF = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sockets}'
fsync = off
full_page_writes = off
log_statement = 'all'
log_line_prefix = '%m [%p] app=%a '
wal_level = replica
max_wal_senders = 5
hot_standby = on
"""


def primary_start(root: Path) -> Postgres:
    """initdb and start a primary that accepts replication from 127.0.0.1 (initdb's pg_hba allows it)."""
    server = Postgres(root / "primary", free_port())
    run([str(PG_BIN / "initdb"), "-D", str(server.data), "-U", SERVICE_USER, "-A", "trust", "-E", "UTF8",
         "--no-sync"])  # fmt: skip
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write(SERVER_CONF.format(sockets=root))
    server.start()
    return server


def standby_start(root: Path, primary: Postgres) -> Postgres:
    """pg_basebackup -R of the primary, started as a streaming hot standby on its own port."""
    server = Postgres(root / "replica", free_port())
    run([str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", SERVICE_USER,
         "-D", str(server.data), "-R", "-X", "stream", "-c", "fast", "--no-sync"])  # fmt: skip
    server.start()
    return server


def wait_replayed(primary: Postgres, standby: Postgres, timeout: float = 30) -> None:
    """Until the standby has replayed everything the primary wrote so far."""
    with primary.connect() as conn:
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + timeout
    with standby.connect() as conn:
        while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() > deadline:
                pytest.fail(f"the standby did not replay up to {lsn} within {timeout:.0f}s")
            time.sleep(0.05)


def folder_remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def pid_stop(pidfile: Path, timeout: float = 20) -> None:
    """SIGTERM the process named in `pidfile` (one we started), then SIGKILL it if it stays."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int(pidfile.read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
