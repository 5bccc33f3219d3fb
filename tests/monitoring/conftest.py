"""Fixtures of the monitoring tests: users by role, a real local webhook receiver, a clean cache."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    """Summaries are cached in Redis: each test starts from fresh numbers."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def operator(make_user) -> Any:
    return make_user("op", "operator")


@pytest.fixture
def client_for() -> Callable[[Any], APIClient]:
    """An APIClient authenticated as `user` (session-less force_authenticate is not used: real login)."""

    def make(user: Any) -> APIClient:
        client = APIClient()
        client.force_login(user)
        return client

    return make


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 recording each POST; `fail_next` answers 500 that many times."""

    url: str
    requests: list[Received] = field(default_factory=list)
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(r.json()["event"], r.json()["alert"]["incident_key"]) for r in self.requests]


@pytest.fixture
def webhook(settings) -> Iterator[Receiver]:
    """The receiver, with 127.0.0.1 allow-listed for outbound requests (SCHEDULER_HTTP_ALLOWLIST)."""
    settings.SCHEDULER_HTTP_ALLOWLIST = ["127.0.0.1"]
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                failing = receiver.fail_next > 0
                if failing:
                    receiver.fail_next -= 1
                else:
                    receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
            self.send_response(500 if failing else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()
