"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from storefront.extensions import db
from storefront.queues import redis_connection
from storefront.storage import StorageError, backend

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The process is up."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """The database, Redis and storage answer; 503 naming what is down otherwise."""
    checks: dict[str, str] = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "not ready"
        db.session.rollback()
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        redis_connection(current_app).ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"down: {type(exc).__name__}"
    try:
        backend(current_app._get_current_object()).check()  # type: ignore[attr-defined]
        checks["storage"] = "ok"
    except StorageError as exc:
        checks["storage"] = f"down: {exc}"
    ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ready" if ready else "unavailable", checks=checks), 200 if ready else 503
