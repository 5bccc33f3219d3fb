"""Fixtures of the jobs tests (none autouse: the beat tests in this folder share it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import Permission

from tests.factories import NodeFactory, UserFactory


@pytest.fixture
def shell_user(db):
    """A user allowed to submit shell jobs (jobs.run_shell)."""
    user = UserFactory()
    user.user_permissions.add(Permission.objects.get(codename="run_shell", content_type__app_label="jobs"))
    return type(user).objects.get(pk=user.pk)  # fresh: no stale permission cache


@pytest.fixture
def node(db, monkeypatch):
    """An online node, and this process playing its worker (current_node_name)."""
    node = NodeFactory(name="unit@testhost")
    monkeypatch.setenv("SCHEDULER_NODE_NAME", node.name)
    return node


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/redirect"):
            target = self.path.partition("to=")[2]
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
            return
        status = 500 if self.path.startswith("/fail") else 200
        body = b"x" * 100_000 if self.path.startswith("/big") else f"hello {self.path}".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    """A local HTTP server (loopback: only reachable when allow-listed); yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
