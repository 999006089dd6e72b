"""Redis and the RQ queues: `upscale` holds upscaling only, `default` everything else."""

from __future__ import annotations

from flask import Flask
from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue

UPSCALE_QUEUE = "upscale"
DEFAULT_QUEUE = "default"


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
