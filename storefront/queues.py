"""Redis and the RQ queues (`upscale` holds upscaling only, `samples` the before/after samples of
the image pages, `default` everything else), and the version counters that tell every process
when what it caches changed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from flask import Flask
from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.exceptions import RedisError
from redis.retry import Retry
from rq import Queue

log = logging.getLogger("smi.queues")

UPSCALE_QUEUE = "upscale"
DEFAULT_QUEUE = "default"
# Workers take it last (`python -m worker` listens to upscale, default, samples): paid work first.
SAMPLES_QUEUE = "samples"


def redis_connection(app: Flask) -> Redis:
    """The app's Redis client, made once per app with short timeouts."""
    connection = app.extensions.get("smi_redis")
    if connection is None:
        # One quick retry: a web request must not hang on Redis (the sweeper covers outages).
        connection = Redis.from_url(
            app.config["REDIS_URL"],
            socket_connect_timeout=2,
            socket_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.5), 1),
        )
        app.extensions["smi_redis"] = connection
    return connection


def get_queue(app: Flask, name: str) -> Queue:
    """The RQ queue called `name` on the app's Redis."""
    return Queue(name, connection=redis_connection(app))


# Version counters of what processes cache (settings, the catalog): a change bumps its counter
# after its commit, and every process reads the counters once per request, so that a save in one
# web or RQ worker is seen by the next request in any other.
VERSION_NAMES = ("settings", "catalog")
VERSION_KEY = "smi:version:{}"
# Set by the web app for the length of a request (`pin_versions`): the counters read at its first
# use, so that one request reads Redis once, however many caches it consults.
_pinned: ContextVar[dict[str, dict[str, int] | None] | None] = ContextVar(
    "smi_versions", default=None
)


def pin_versions() -> None:
    """From now until `unpin_versions`, read the counters once (the web app, per request)."""
    _pinned.set({})


def unpin_versions(_error: BaseException | None = None) -> None:
    """Read the counters afresh at each use again."""
    _pinned.set(None)


def versions(app: Flask) -> dict[str, int] | None:
    """The version counters now (once per request), or None while Redis is unreachable."""
    pinned = _pinned.get()
    if pinned is not None and "versions" in pinned:
        return pinned["versions"]
    found: dict[str, int] | None
    down_until = app.extensions.get("smi_versions_down_until", 0.0)
    try:
        if time.monotonic() < down_until:
            raise RedisError("unreachable a moment ago")
        raw = redis_connection(app).mget([VERSION_KEY.format(name) for name in VERSION_NAMES])
    except RedisError:
        # Try again in a second, not on every request: each try may wait for a timeout.
        if time.monotonic() >= down_until:
            app.extensions["smi_versions_down_until"] = time.monotonic() + 1.0
        found = None
    else:
        found = {name: int(value or 0) for name, value in zip(VERSION_NAMES, raw, strict=True)}
    if pinned is not None:
        pinned["versions"] = found
    return found


def versions_with(app: Flask, add: Callable[[Pipeline], Any]) -> list[Any]:
    """Send the commands `add` puts in a pipeline with this request's read of the version
    counters (one round trip instead of two), and pin what was read; the commands' results.

    RedisError if Redis is unreachable: the counters are then unknown for the request, as in
    `versions`, and the commands may or may not have run.
    """
    pinned = _pinned.get()
    known = pinned is not None and "versions" in pinned
    try:
        if not known and time.monotonic() < app.extensions.get("smi_versions_down_until", 0.0):
            raise RedisError("unreachable a moment ago")
        with redis_connection(app).pipeline(transaction=False) as pipe:
            if not known:
                pipe.mget([VERSION_KEY.format(name) for name in VERSION_NAMES])
            add(pipe)
            results = pipe.execute()
    except RedisError:
        if not known:
            app.extensions["smi_versions_down_until"] = time.monotonic() + 1.0
            if pinned is not None:
                pinned["versions"] = None
        raise
    if not known:
        raw = results.pop(0)
        found = {name: int(value or 0) for name, value in zip(VERSION_NAMES, raw, strict=True)}
        if pinned is not None:
            pinned["versions"] = found
    return list(results)


def bump_version(app: Flask, name: str) -> None:
    """Tell every process that what `name` counts changed (after the commit that changed it)."""
    try:
        redis_connection(app).incr(VERSION_KEY.format(name))
    except RedisError:
        # The caches then see the change at their next time-based check of the database.
        log.warning("could not bump the %s version in Redis: other processes see it later", name)
