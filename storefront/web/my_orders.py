"""My orders: a buyer signs in with a one-time link sent to their email, and sees every order
placed with it, without an account."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_babel import get_locale, lazy_gettext
from flask_babel import gettext as _
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.wrappers import Response

from storefront import settings
from storefront.buyers.orders import FreshLink, email_fresh_link, normalise_email, orders_of
from storefront.buyers.sign_in import (
    SESSION_LIFETIME,
    LinkState,
    link_state,
    request_sign_in,
    sign_out,
    signed_in_email,
    use_link,
)
from storefront.extensions import limiter
from storefront.formatting import local_time
from storefront.models import Job
from storefront.web.downloads import email_limit_key
from storefront.web.forms import ButtonForm, FreshLinkForm, MyOrdersForm

bp = Blueprint("my_orders", __name__)

COOKIE = "smi_my_orders"
ENVIRON_KEY = "smi.my_orders_email"
TOO_MANY_LINKS = lazy_gettext(
    "That's a lot of requests for sign-in links. Please wait an hour and try again."
)
TOO_MANY_FRESH_LINKS = lazy_gettext(
    "That's a lot of requests for fresh links. Please wait an hour and try again."
)
LINK_STATUS = {LinkState.UNKNOWN: 404, LinkState.EXPIRED: 410, LinkState.USED: 410}


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="smi-my-orders")


def _session_id() -> int | None:
    """The session this browser's signed cookie names, if its signature holds and it is recent."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        value = _serializer().loads(raw, max_age=int(SESSION_LIFETIME.total_seconds()))
    except BadSignature:  # SignatureExpired too
        return None
    return value if isinstance(value, int) else None


def signed_in_buyer() -> str | None:
    """The email address this browser is signed in to My orders with, if it is (once a request)."""
    # Kept in the request's environ rather than `g`: an app context may outlive one request.
    if ENVIRON_KEY not in request.environ:
        session_id = _session_id()
        email = signed_in_email(session_id) if session_id is not None else None
        request.environ[ENVIRON_KEY] = email
    found: str | None = request.environ[ENVIRON_KEY]
    return found


def may_see(job: Job) -> bool:
    """Whether this browser is signed in to My orders with the address the job was placed with."""
    email = signed_in_buyer()
    return bool(email) and bool(job.email) and normalise_email(job.email) == email


def _private(response: Response, *, token: bool = False) -> Response:
    """Personal pages are never cached; a page whose URL holds a token sends no Referer on."""
    response.headers["Cache-Control"] = "no-store"
    if token:
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _ask_page(form: MyOrdersForm, status: int = 200, **context: Any) -> Response:
    body = render_template("my_orders/ask.html", form=form, **context)
    return _private(make_response(body, status), token="state" in context)


def _hourly(setting: str, times: int = 1) -> Callable[[], str]:
    """A limit of `times` the setting's value per hour, read when a request is counted."""
    return lambda: f"{int(settings.get(setting)) * times}/hour"


@bp.get("/my-orders")
def index() -> ResponseReturnValue:
    """The orders of the signed-in buyer; otherwise the form that asks for a sign-in link."""
    email = signed_in_buyer()
    if email is None:
        ended = COOKIE in request.cookies
        response = _ask_page(MyOrdersForm(), ended=ended)
        if ended:
            response.delete_cookie(COOKIE, path="/")
        return response
    zone = current_app.config["DISPLAY_TIMEZONE"]
    orders = [
        (order, local_time(order.job.paid_at or order.job.created_at, zone))
        for order in orders_of(email)
    ]
    body = render_template(
        "my_orders/list.html",
        email=email,
        orders=orders,
        fresh_link_form=FreshLinkForm(),
        sign_out_form=ButtonForm(),
    )
    return _private(make_response(body))


@bp.post("/my-orders")
@limiter.limit(
    _hourly("MY_ORDERS_PER_HOUR"),
    key_func=lambda: email_limit_key(request.form.get("email") or ""),
    error_message=TOO_MANY_LINKS,
)
# Several buyers can share an address (an office, a phone network): it gets more room.
@limiter.limit(_hourly("MY_ORDERS_PER_HOUR", 4), error_message=TOO_MANY_LINKS)
def ask() -> ResponseReturnValue:
    """Email a sign-in link if orders were placed with the address; the answer is the same either
    way. Limited to MY_ORDERS_PER_HOUR per address asked about, and four times that per client."""
    form = MyOrdersForm()
    if not form.validate():
        return _ask_page(form, 400)
    request_sign_in(form.email.data, str(get_locale()))
    return _ask_page(form, sent=True)


@bp.get("/my-orders/<token>")
def link(token: str) -> ResponseReturnValue:
    """What a sign-in link leads to, with a Sign in button.

    This GET changes nothing: mail scanners and link previews open links before people do, and
    would use up a one-time link.
    """
    state = link_state(token)
    if state is LinkState.USED and signed_in_buyer() is not None:
        return redirect(url_for("my_orders.index"), 303)  # the mail's link opened again
    if state is not LinkState.VALID:
        return _ask_page(MyOrdersForm(), LINK_STATUS[state], state=state.value)
    body = render_template("my_orders/sign_in.html", form=ButtonForm())
    return _private(make_response(body), token=True)


@bp.post("/my-orders/<token>")
def sign_in(token: str) -> ResponseReturnValue:
    """Use the link (once) and keep the buyer signed in for seven days with a signed cookie."""
    session_id = use_link(token)
    if session_id is None:
        state = link_state(token)
        return _ask_page(MyOrdersForm(), LINK_STATUS.get(state, 410), state=state.value)
    response = redirect(url_for("my_orders.index"), 303)
    response.set_cookie(
        COOKIE,
        _serializer().dumps(session_id),
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
        secure=bool(current_app.config["SESSION_COOKIE_SECURE"]) or request.is_secure,
        httponly=True,
        samesite="Lax",
    )
    return _private(response, token=True)


@bp.post("/my-orders/sign-out")
def sign_out_view() -> ResponseReturnValue:
    """Sign out: the session ends on the server too, so a copy of the cookie is worth nothing."""
    session_id = _session_id()
    if session_id is not None:
        sign_out(session_id)
    flash(_("You're signed out of My orders."), "success")
    response = redirect(url_for("my_orders.index"), 303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _fresh_link_email_key() -> str:
    email = signed_in_buyer()
    return email_limit_key(email) if email else "email:signed-out"


@bp.post("/my-orders/fresh-link")
@limiter.limit(
    _hourly("RESEND_PER_HOUR"), key_func=_fresh_link_email_key, error_message=TOO_MANY_FRESH_LINKS
)
@limiter.limit(_hourly("RESEND_PER_HOUR", 4), error_message=TOO_MANY_FRESH_LINKS)
def fresh_link() -> ResponseReturnValue:
    """Mail a fresh download link for one of the signed-in buyer's orders, as the fresh-link form
    does (limited by RESEND_PER_HOUR as it is); another buyer's order is a 404."""
    email = signed_in_buyer()
    if email is None:
        flash(_("Your sign-in has ended. Ask for a new link to see your orders."), "error")
        return redirect(url_for("my_orders.index"), 303)
    form = FreshLinkForm()
    if not form.validate():
        abort(400)
    outcome = email_fresh_link(email, form.job_id.data)
    if outcome is FreshLink.NOT_YOURS:
        abort(404)
    if outcome is FreshLink.UNAVAILABLE:
        flash(_("This order's file is no longer available for a fresh link."), "error")
    else:
        flash(_("We've emailed a fresh link. It can take a minute or two."), "success")
    return redirect(url_for("my_orders.index"), 303)
