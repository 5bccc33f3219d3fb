"""The `http` executor: one request, redirects followed by hand and every hop checked by the SSRF guard."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import connection as urllib3_connection

from .base import LocalControl, Outcome, OutputTail, RunControl, payload_envelope_errors
from .netguard import ForbiddenAddress, checked_address, url_address_error

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
PAYLOAD_KEYS = {"method", "url", "headers", "body", "expect_status"}
MAX_URL_LENGTH = 2048
MAX_HEADERS = 50
MAX_HEADER_BYTES = 8 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_REDIRECTS = 5
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# A redirect to another origin (scheme, host or port) drops these headers, and any header whose lower-cased
# name contains one of CREDENTIAL_NAME_PARTS (X-Api-Key, X-Auth-Token, X-Session-Id, ...): better to drop a
# harmless header than to hand a credential to a host the job never named.
CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie"}
CREDENTIAL_NAME_PARTS = ("auth", "token", "key", "secret", "session", "cookie", "password")
DEFAULT_PORTS = {"http": 80, "https": 443}


def validate(payload: Any) -> dict[str, str]:
    """Errors in an http payload, keyed by field (empty when valid)."""
    errors = payload_envelope_errors(payload, PAYLOAD_KEYS, "'method' and 'url'")
    if not isinstance(payload, dict):
        return errors
    if str(payload.get("method", "GET")).upper() not in METHODS:
        errors["payload.method"] = f"must be one of {', '.join(sorted(METHODS))}"
    url_error = _url_error(payload.get("url"))
    if url_error:
        errors["payload.url"] = url_error
    headers = payload.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "\n" not in k + v and "\r" not in k + v
        for k, v in headers.items()
    ):
        errors["payload.headers"] = "must be an object of header names to string values (no newlines)"
    elif len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers.items()) > MAX_HEADER_BYTES:
        errors["payload.headers"] = f"at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes"
    body = payload.get("body")
    if body is not None and not isinstance(body, str | dict | list):
        errors["payload.body"] = "must be a string (sent as is) or a JSON object/list"
    elif body is not None and len(_encode_body(body)[0]) > MAX_BODY_BYTES:
        errors["payload.body"] = f"must be at most {MAX_BODY_BYTES} bytes"
    expect = payload.get("expect_status")
    if expect is not None and (
        not isinstance(expect, list)
        or not expect
        or not all(isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in expect)
    ):
        errors["payload.expect_status"] = "must be a non-empty list of HTTP status codes (100-599)"
    return errors


def _url_error(url: Any) -> str | None:
    if not isinstance(url, str) or not url:
        return "is required (an http:// or https:// URL)"
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return str(exc)
    # Names are checked again when the request runs (after DNS resolution); literal IPs right now.
    return url_address_error(url, resolve_names=False)


def _encode_body(body: Any) -> tuple[bytes, str | None]:
    if body is None:
        return b"", None
    if isinstance(body, str):
        return body.encode(), None
    import json

    return json.dumps(body).encode(), "application/json"


class _GuardedConnectionMixin:
    """Resolves, checks and pins the destination address at connect time (no DNS-rebinding window)."""

    def _new_conn(self):  # type: ignore[no-untyped-def]
        ip = checked_address(self._dns_host, self.port)  # type: ignore[attr-defined]
        return urllib3_connection.create_connection(
            (str(ip), self.port),  # type: ignore[attr-defined]
            self.timeout,  # type: ignore[attr-defined]
            source_address=self.source_address,  # type: ignore[attr-defined]
            socket_options=self.socket_options,  # type: ignore[attr-defined]
        )


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections refuse forbidden addresses (see netguard)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


def guarded_session() -> requests.Session:
    """A requests session for untrusted destinations: guarded connections, no proxies from the env."""
    session = requests.Session()
    session.trust_env = False  # an HTTP(S)_PROXY from the environment would bypass the address check
    session.mount("http://", GuardedAdapter())
    session.mount("https://", GuardedAdapter())
    return session


def run(payload: dict[str, Any], *, timeout: float, control: RunControl | None = None, **_: Any) -> Outcome:
    """Send the request; succeeded when the final status is expected (default: any 2xx)."""
    control = control or LocalControl()
    deadline = time.monotonic() + timeout
    method = str(payload.get("method", "GET")).upper()
    url = payload["url"]
    body, content_type = _encode_body(payload.get("body"))
    headers = dict(payload.get("headers", {}))
    if content_type and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = content_type
    tail = OutputTail(kept="first")
    try:
        with guarded_session() as session:
            response = _send(session, method, url, headers, body, deadline)
            with response:
                stopped = _read_body(response, tail, control, deadline)
    except requests.Timeout:
        return Outcome(status="timed_out", error=f"timed out after {timeout:g}s")
    except (ForbiddenAddress, _Refused) as exc:
        return Outcome(status="failed", error=f"refused: {exc}")
    except requests.RequestException as exc:
        return Outcome(status="failed", error=f"request failed: {type(exc).__name__}: {exc}"[:2000])
    expected = payload.get("expect_status")
    ok = response.status_code in expected if expected else 200 <= response.status_code < 300
    outcome = Outcome(
        status="succeeded" if ok else "failed",
        exit_code=response.status_code,
        output=tail.text(),
        output_truncated=tail.truncated,
        result={"status_code": response.status_code, "url": response.url},
    )
    if stopped:
        outcome.status, outcome.error = stopped, stopped
    elif not ok:
        outcome.error = f"unexpected HTTP status {response.status_code}"
    return outcome


class _Refused(Exception):
    pass


def _send(
    session: requests.Session, method: str, url: str, headers: dict[str, str], body: bytes, deadline: float
) -> requests.Response:
    origin = url_origin(url)
    for _hop in range(MAX_REDIRECTS + 1):
        error = url_address_error(url)
        if error:
            raise _Refused(f"{url}: {error}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise requests.Timeout()
        response = session.request(
            method,
            url,
            headers=headers,
            data=body or None,
            timeout=remaining,
            allow_redirects=False,
            stream=True,
        )
        if response.status_code not in REDIRECT_STATUSES or "location" not in response.headers:
            return response
        response.close()
        url = urljoin(url, response.headers["location"])
        if url_origin(url) != origin:  # once dropped, never restored (even by a redirect back)
            headers = _without_credentials(headers)
            session.cookies.clear()  # nor cookies an earlier hop set (a jar does not tell ports apart)
        if response.status_code == 303 or (response.status_code in {301, 302} and method == "POST"):
            method, body = "GET", b""
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    raise _Refused(f"more than {MAX_REDIRECTS} redirects")


def url_origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the port defaulted from the scheme: what a redirect compares."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme)


def is_credential_header(name: str) -> bool:
    """Whether a redirect to another origin drops this header (see CREDENTIAL_NAME_PARTS)."""
    name = name.lower()
    return name in CREDENTIAL_HEADERS or any(part in name for part in CREDENTIAL_NAME_PARTS)


def _without_credentials(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if not is_credential_header(k)}


def _read_body(
    response: requests.Response, tail: OutputTail, control: RunControl, deadline: float
) -> str | None:
    """Keep the first SCHEDULER_OUTPUT_LIMIT_BYTES of the body; return a stop reason if cut short."""
    received = 0
    for chunk in response.iter_content(chunk_size=16384):
        if received >= tail.limit:
            tail.truncated = True
            break
        tail.write(chunk[: tail.limit - received])
        received += len(chunk)
        if received > tail.limit:
            tail.truncated = True
        if time.monotonic() > deadline:
            raise requests.Timeout()
        reason = control.stop_reason()
        if reason:
            return reason
    return None
