"""The node's Docker Engine: the client, whether it answers, and the containers this product started.

Every container a run starts carries labels naming its execution, its node and its run key (derived from
the claim token, as the run key of a shell job's processes is), so that the worker can find and remove
what a run left behind whatever happened to the process that started it (worker/containers.py).
The engine is the one `DOCKER_HOST` names (also DOCKER_TLS_VERIFY / DOCKER_CERT_PATH), else the default
socket, as the docker CLI does.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import docker
import docker.errors
import requests.exceptions

logger = logging.getLogger(__name__)
API_TIMEOUT_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 3.0
LABEL_EXECUTION = "io.scheduler.execution"
LABEL_NODE = "io.scheduler.node"
LABEL_RUN_KEY = "io.scheduler.run-key"
# What a failing engine raises through docker-py: its own errors and the transport's.
ENGINE_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    ConnectionError,
    OSError,
)


def engine_client(timeout: float = API_TIMEOUT_SECONDS) -> docker.DockerClient:
    """A client of the node's engine (raises one of ENGINE_ERRORS when none is configured or reachable)."""
    return docker.from_env(timeout=int(max(timeout, 1)))


def engine_version() -> str | None:
    """The engine's version if it answers now (a ping within a few seconds), else None."""
    try:
        client = engine_client(PROBE_TIMEOUT_SECONDS)
    except ENGINE_ERRORS:
        return None
    try:
        version = client.version()
        return str(version.get("Version") or "unknown")
    except ENGINE_ERRORS as exc:
        logger.info("no Docker Engine answers here (%s): this node runs no container jobs", exc)
        return None
    finally:
        client.close()


def engine_error_text(exc: BaseException) -> str:
    """One line of what the engine (or the way to it) said."""
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return f"{type(exc).__name__}: {exc}"


def run_containers(
    client: docker.DockerClient, *, node: str | None = None, run_key: str | None = None
) -> list[Any]:
    """The containers (running or not) this product started on the engine, of one node or one run."""
    wanted = [LABEL_EXECUTION]
    if node is not None:
        wanted.append(f"{LABEL_NODE}={node}")
    if run_key is not None:
        wanted.append(f"{LABEL_RUN_KEY}={run_key}")
    return list(client.containers.list(all=True, filters={"label": wanted}))


def container_remove(container: Any) -> bool:
    """Kill (if running) and remove a container; True once it is gone."""
    try:
        container.remove(force=True)  # SIGKILL, then remove, in one engine call
        return True
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError as exc:
        if exc.status_code == 409 and "already in progress" in str(exc.explanation or ""):
            return True  # another call removes it
        logger.warning("cannot remove container %s: %s", getattr(container, "short_id", "?"), exc)
        return False
    except ENGINE_ERRORS as exc:
        logger.warning("cannot remove container %s: %s", getattr(container, "short_id", "?"), exc)
        return False


def run_containers_remove(run_key: str) -> bool:
    """Remove every container of one run; True once none is left (or no engine is configured here)."""
    try:
        client = engine_client()
    except ENGINE_ERRORS:
        return True  # no engine is configured on this host: the run started no container here
    try:
        found = run_containers(client, run_key=run_key)
        gone = all([container_remove(container) for container in found])
    except ENGINE_ERRORS as exc:
        # The engine does not answer now: its containers are removed by the worker's janitor once it does
        # (their execution is over by then).
        logger.warning("cannot list the containers of a lost run (%s); the janitor removes them later", exc)
        return True
    finally:
        with contextlib.suppress(Exception):
            client.close()
    if found:
        logger.warning("removed %d container(s) of a lost run", len(found))
    return gone
