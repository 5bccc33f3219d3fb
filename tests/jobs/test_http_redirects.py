"""An http job's credentials (Authorization, Cookie, auth-like headers) never follow it to another origin."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobs.executors import http

CREDENTIALS = {
    "Authorization": "Bearer s3cret",
    "Proxy-Authorization": "Basic cHJveHk=",
    "Cookie": "sessionid=abc",
    "X-Api-Key": "k-123",
    "X-Auth-Token": "t-456",
}


class _Server:
    """A loopback HTTP server recording each request's headers; /to?<url> redirects (302) to <url>."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                recorder.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.path.startswith("/to?"):
                    self.send_response(302)
                    self.send_header("Location", self.path.partition("?")[2])
                    self.send_header("Set-Cookie", "first=hop; Path=/")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def servers(settings) -> Iterator[tuple[_Server, _Server]]:
    settings.SCHEDULER_HTTP_ALLOWLIST = ["127.0.0.1", "localhost"]
    first, second = _Server(), _Server()
    yield first, second
    first.close()
    second.close()


def _run(url: str) -> http.Outcome:
    outcome = http.run({"url": url, "headers": {**CREDENTIALS, "X-Trace": "t1"}}, timeout=10)
    assert outcome.status == "succeeded", outcome.error
    return outcome


def test_a_redirect_to_another_port_drops_the_credentials(servers):
    first, second = servers
    _run(f"{first.url}/to?{second.url}/landed")
    assert first.seen[0][1]["authorization"] == "Bearer s3cret"  # the named origin gets them
    path, headers = second.seen[-1]
    assert path == "/landed"
    for name in [*CREDENTIALS, "Cookie"]:
        assert name.lower() not in headers, f"{name} followed the redirect"
    assert headers["x-trace"] == "t1"  # other headers still go


def test_a_redirect_to_another_host_drops_them_even_when_it_comes_back(servers):
    first, _ = servers  # the same server under another host name: 127.0.0.1 -> localhost -> 127.0.0.1
    other_host = first.url.replace("127.0.0.1", "localhost")
    _run(f"{first.url}/to?{other_host}/to?{first.url}/back")
    assert [path for path, _ in first.seen] == [
        f"/to?{other_host}/to?{first.url}/back",
        f"/to?{first.url}/back",
        "/back",
    ]
    for _, headers in first.seen[1:]:
        assert not {"authorization", "x-api-key", "cookie"} & set(headers)


def test_a_same_origin_redirect_keeps_them(servers):
    first, _ = servers
    _run(f"{first.url}/to?/landed")
    path, headers = first.seen[-1]
    assert path == "/landed"
    for name, value in CREDENTIALS.items():
        if name != "Cookie":
            assert headers[name.lower()] == value
    assert "sessionid=abc" in headers["cookie"]


def test_https_to_http_is_another_origin_and_default_ports_are_not():
    assert http.url_origin("https://example.com/a") != http.url_origin("http://example.com/a")
    assert http.url_origin("https://example.com:443/a") != http.url_origin("http://example.com:443/a")
    assert http.url_origin("https://Example.com/a") == http.url_origin("https://example.com:443/b")
    assert http.url_origin("http://example.com/") == http.url_origin("http://example.com:80/x?y")


def test_which_headers_count_as_credentials():
    for name in [
        "Authorization",
        "proxy-authorization",
        "Cookie",
        "X-Api-Key",
        "X-Auth-Token",
        "X-Session-Id",
        "X-Client-Secret",
        "X-Amz-Security-Token",
    ]:
        assert http.is_credential_header(name), name
    for name in ["Accept", "Content-Type", "User-Agent", "X-Trace", "X-Request-Id"]:
        assert not http.is_credential_header(name), name
