"""The `/_local` control surface: drive payments, disputes and outages; inspect deliveries."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from werkzeug.wrappers import Response

from .api import error_response, json_response
from .context import runtime
from .errors import StripeApiError
from .promotions import parse_percent
from .store import CardDeclined

bp = Blueprint("control", __name__, url_prefix="/_local")


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if isinstance(data, dict):
        return data
    return dict(request.form.items())


def _int(data: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = data.get(name, default)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StripeApiError(f"{name} must be an integer", param=name) from None


def _flag(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if value in (True, "true", "1", 1):
        return True
    if value in (False, "false", "0", 0):
        return False
    raise StripeApiError(f"{name} must be true or false", param=name)


@bp.errorhandler(StripeApiError)
def _stripe_error(error: StripeApiError) -> Response:
    return error_response(error)


@bp.get("/health")
def health() -> Response:
    """Say that the server is up."""
    return json_response({"ok": True})


@bp.get("/state")
def state_snapshot() -> Response:
    """Return every object, event and delivery."""
    return json_response(runtime().state.snapshot())


@bp.get("/checkout/sessions")
def list_sessions() -> Response:
    """List all Checkout Sessions, oldest first."""
    state = runtime().state
    with state.lock:
        return json_response({"data": list(state.sessions.values())})


@bp.post("/checkout/sessions/<session_id>/pay")
def pay(session_id: str) -> Response:
    """Pay a session as the hosted page's Pay button does (JSON `email`, `card` optional)."""
    data = _body()
    state = runtime().state
    state.expire_due_sessions()
    try:
        session = state.pay(session_id, email=data.get("email"), card=data.get("card"))
    except CardDeclined as declined:
        return error_response(declined)
    return json_response(session)


@bp.post("/checkout/sessions/<session_id>/decline")
def decline(session_id: str) -> Response:
    """Record a declined attempt as the Decline button does; the session stays open."""
    state = runtime().state
    state.expire_due_sessions()
    message = state.decline(session_id)
    with state.lock:
        session = dict(state.sessions[session_id])
    return json_response({"declined": True, "message": message, "session": session})


@bp.post("/checkout/sessions/<session_id>/expire")
def expire(session_id: str) -> Response:
    """Expire an open session on Stripe's side and send `checkout.session.expired`."""
    return json_response(runtime().state.expire_session(session_id))


@bp.post("/checkout/sessions/<session_id>/promotion_code")
def apply_promotion_code(session_id: str) -> Response:
    """Apply JSON `code` to an open session as the pay page's Apply button does."""
    data = _body()
    session = runtime().state.apply_promotion_code(session_id, str(data.get("code") or ""))
    return json_response(session)


@bp.get("/promotion_codes")
def list_promotion_codes() -> Response:
    """List the promotion codes, oldest first."""
    state = runtime().state
    with state.lock:
        return json_response({"data": list(state.promotion_codes.values())})


@bp.post("/promotion_codes")
def create_promotion_code() -> Response:
    """Create a promotion code: JSON `code`, `percent_off` or `amount_off` with `currency`,
    optional `max_redemptions` and `active` (default true)."""
    data = _body()
    percent = data.get("percent_off")
    promotion = runtime().state.create_promotion_code(
        str(data.get("code") or ""),
        percent_off=parse_percent(percent) if percent not in (None, "") else None,
        amount_off=_int(data, "amount_off"),
        currency=str(data["currency"]) if data.get("currency") else None,
        max_redemptions=_int(data, "max_redemptions"),
        active=_flag(data, "active", True),
    )
    return json_response(promotion)


@bp.post("/promotion_codes/<code>")
def update_promotion_code(code: str) -> Response:
    """Turn a code on or off (JSON `active`)."""
    data = _body()
    return json_response(
        runtime().state.set_promotion_code_active(code, _flag(data, "active", True))
    )


@bp.get("/refunds")
def list_refunds() -> Response:
    """List all refunds, newest first."""
    return json_response(runtime().state.list_refunds(None, None))


@bp.get("/events")
def list_events() -> Response:
    """List events, oldest first (`?type=` filters)."""
    wanted = request.args.get("type")
    state = runtime().state
    with state.lock:
        events = [e for e in state.events.values() if wanted in (None, e["type"])]
        return json_response({"data": events})


@bp.post("/events/<event_id>/resend")
def resend(event_id: str) -> Response:
    """Deliver an existing event once more (same id and payload), as a duplicate."""
    event = runtime().state.resend(event_id)
    return json_response({"queued": event["id"], "type": event["type"]}, 202)


@bp.get("/deliveries")
def list_deliveries() -> Response:
    """List webhook delivery attempts, oldest first (`?event_id=`, `?type=` filter)."""
    event_id = request.args.get("event_id")
    wanted = request.args.get("type")
    state = runtime().state
    with state.lock:
        found = [
            d
            for d in state.deliveries
            if event_id in (None, d["event_id"]) and wanted in (None, d["type"])
        ]
        return json_response({"data": found})


@bp.get("/idle")
def idle() -> Response:
    """Wait (up to `?timeout=` seconds, default 10) until no delivery is queued or in flight."""
    try:
        timeout = float(request.args.get("timeout", "10"))
    except ValueError:
        raise StripeApiError("timeout must be a number", param="timeout") from None
    return json_response({"idle": runtime().dispatcher.wait_idle(min(timeout, 60.0))})


@bp.post("/charges/<object_id>/dispute")
def dispute(object_id: str) -> Response:
    """Open a dispute on a charge or PaymentIntent and send `charge.dispute.created`."""
    data = _body()
    dispute = runtime().state.dispute(
        object_id, reason=str(data.get("reason", "fraudulent")), amount=_int(data, "amount")
    )
    return json_response(dispute)


@bp.post("/fail-next")
def fail_next() -> Response:
    """Make the next `count` API calls (optionally only under `path`) answer `status`."""
    data = _body()
    status = _int(data, "status", 500)
    count = _int(data, "count", 1)
    assert status is not None and count is not None
    if not 400 <= status <= 599:
        raise StripeApiError("status must be an HTTP error status (400-599)", param="status")
    path = data.get("path")
    message = data.get("message")
    rule = runtime().state.arm_failure(
        status,
        count,
        path=str(path) if path else None,
        message=str(message) if message else None,
    )
    return json_response(
        {"status": rule.status, "count": rule.remaining, "path": rule.path, "message": rule.message}
    )


@bp.get("/webhook")
def webhook_config() -> Response:
    """Return where webhooks go (never the secret itself)."""
    url, secret = runtime().state.webhook_config()
    return json_response({"url": url, "secret_set": bool(secret)})


@bp.post("/webhook")
def set_webhook() -> Response:
    """Point webhooks at JSON `url`, signed with `secret`."""
    data = _body()
    url = data.get("url") or None
    secret = data.get("secret") or None
    if url and not secret:
        raise StripeApiError("secret is required with url", param="secret")
    runtime().state.set_webhook(url, secret)
    return json_response({"url": url, "secret_set": bool(secret)})


@bp.post("/webhook/hold")
def hold_deliveries() -> Response:
    """Keep every webhook delivery back (resends too) until `/webhook/release`."""
    dispatcher = runtime().dispatcher
    dispatcher.hold()
    return json_response({"holding": True, "held": len(dispatcher.held())})


@bp.post("/webhook/release")
def release_deliveries() -> Response:
    """Send the held deliveries one after another, shuffled by JSON `seed` if given; keep holding
    later ones when `keep_holding` is true."""
    data = _body()
    keep = data.get("keep_holding") in (True, "true", "1", 1)
    released = runtime().dispatcher.release(_int(data, "seed"), keep_holding=keep)
    return json_response({"released": released, "holding": keep})


@bp.post("/reset")
def reset() -> Response:
    """Forget every object, event, delivery, idempotency key and armed failure."""
    runtime().reset()
    return json_response({"reset": True})
