"""Leader lease in Redis: one beat fires at a time, a follower takes over when the leader's lease lapses."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

LEASE_KEY = "scheduler:beat:leader"  # its holder's identity; "<key>:status" keeps the last renewal
# Only the holder may extend or drop the lease (compare-and-set on the holder's identity).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def lease_seconds() -> float:
    """The lease length from settings.SCHEDULER_BEAT_LEASE_SECONDS (default 10)."""
    return float(getattr(settings, "SCHEDULER_BEAT_LEASE_SECONDS", 10.0))


def redis_client() -> redis.Redis:
    """A client for the project's Redis (settings.REDIS_URL), with short timeouts."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


class LeaderLease:
    """`SET key identity NX PX` to acquire, a CAS script to renew and release."""

    def __init__(
        self, *, client: redis.Redis, seconds: float, identity: str | None = None, key: str = LEASE_KEY
    ) -> None:
        self.client = client
        self.key = key
        self.seconds = seconds
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._valid_until = 0.0
        self.held = False

    def hold(self) -> bool:
        """Renew the lease if held, else try to acquire it; True while this process is the leader."""
        started = time.monotonic()
        ttl_ms = int(self.seconds * 1000)
        try:
            ok = self.held and self._renew(keys=[self.key], args=[self.identity, ttl_ms]) == 1
            if not ok:
                ok = bool(self.client.set(self.key, self.identity, nx=True, px=ttl_ms))
            if ok:
                self._record(started)
        except redis.RedisError as exc:
            logger.warning("beat lease: Redis error %r", exc)
            # The lease we hold is still ours until it lapses; after that another beat may hold it.
            ok = self.held and self.valid()
        else:
            if ok:
                # Counted from before the round trip, so we stop before Redis lets the key expire.
                self._valid_until = started + self.seconds * 0.9
        if ok != self.held:
            logger.info("beat lease: %s %s", self.identity, "acquired" if ok else "lost")
        self.held = ok
        return ok

    def valid(self) -> bool:
        """Whether the lease we hold has certainly not lapsed yet (checked before each send)."""
        return self.held and time.monotonic() < self._valid_until

    def release(self) -> None:
        """Drop the lease if we hold it, so a follower takes over at once."""
        if not self.held:
            return
        try:
            self._release(keys=[self.key], args=[self.identity])
        except redis.RedisError as exc:
            logger.warning("beat lease: could not release: %r", exc)
        self.held = False
        self._valid_until = 0.0

    def _record(self, now_monotonic: float) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(
            f"{self.key}:status",
            mapping={
                "leader": self.identity,
                "renewed_at": f"{time.time():.3f}",
                "lease_seconds": self.seconds,
            },
        )
        pipe.expire(f"{self.key}:status", 24 * 3600)
        pipe.execute()


def leader_status(*, client: redis.Redis | None = None, key: str = LEASE_KEY) -> dict[str, Any]:
    """The current beat leader and its last renewal, for monitoring ("a beat leader seen recently")."""
    client = client or redis_client()
    raw = client.hgetall(f"{key}:status")
    holder = client.get(key)
    status: dict[str, Any] = {
        "leader": _text(holder) if holder else None,
        "last_leader": None,
        "renewed_at": None,
        "age_seconds": None,
        "lease_seconds": lease_seconds(),
        "healthy": False,
    }
    if raw:
        renewed = float(raw[b"renewed_at"])
        lease = float(raw.get(b"lease_seconds", status["lease_seconds"]))
        status["last_leader"] = _text(raw[b"leader"])
        status["renewed_at"] = datetime.fromtimestamp(renewed, tz=UTC)
        status["age_seconds"] = max(time.time() - renewed, 0.0)
        status["lease_seconds"] = lease
        status["healthy"] = holder is not None and status["age_seconds"] <= 2 * lease
    return status


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
