"""The admin blueprint: every route needs a signed-in admin."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    redirect,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from storefront.accounts.admins import admin_for_session, ensure_first_admin
from storefront.models import AdminUser

bp = Blueprint("admin", __name__, url_prefix="/admin")

OPEN_ENDPOINTS = {"admin.login"}


def _bootstrap_once(app: Flask) -> None:
    if not app.extensions.get("smi_admin_bootstrapped"):
        ensure_first_admin(app)
        app.extensions["smi_admin_bootstrapped"] = True


def current_admin() -> AdminUser | None:
    """The admin signed in to this session, if the session is still valid."""
    if "admin" in g:
        return g.admin
    user = admin_for_session(session.get("admin_id"), session.get("admin_key"))
    started = session.get("admin_since")
    hours = int(current_app.config["ADMIN_SESSION_HOURS"])
    if user is not None and (
        not isinstance(started, int | float) or time.time() - started > hours * 3600
    ):
        user = None
    g.admin = user
    return user


def admin_name() -> str:
    """The signed-in admin's name, as actions are logged with it."""
    admin = current_admin()
    return admin.name if admin is not None else "unknown"


@bp.before_request
def require_admin() -> ResponseReturnValue | None:
    """Send anyone not signed in to the sign-in page; a POST from them is refused outright."""
    _bootstrap_once(current_app._get_current_object())  # type: ignore[attr-defined]
    # `g` outlives a request when the app context does (tests, CLI): start from nothing.
    g.pop("admin", None)
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if current_admin() is None:
        if request.method in ("GET", "HEAD"):
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        abort(403)
    return None


@bp.after_request
def _no_caching(response: Response) -> Response:
    # The security headers every page has are storefront/web/security.py's.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_template_filter("admin_time")
def admin_time(value: dt.datetime | None, seconds: bool = False, zone: bool = True) -> str:
    """A stored UTC time as `2026-11-30 09:25 UTC`."""
    if value is None:
        return "—"
    text = value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{text} UTC" if zone else text


@bp.context_processor
def _layout_values() -> dict[str, Any]:
    return {"admin": g.get("admin")}


def new_request_id() -> str:
    """A one-time id for a confirmation form: sending it twice does the action once."""
    return uuid.uuid4().hex


def safe_next(target: str | None) -> str:
    """Where to go after signing in: only a path inside /admin, never another site."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith("/admin"):
            return target
    return url_for("admin.dashboard")
