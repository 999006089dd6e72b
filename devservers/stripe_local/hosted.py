"""The hosted Checkout page a session's `url` points at: Pay, Decline and Cancel, and a promotion
code field when the session allows codes."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template_string, request, url_for
from werkzeug.wrappers import Response

from . import currencies
from .context import runtime
from .errors import StripeApiError
from .store import DEFAULT_CARD, DEFAULT_EMAIL, CardDeclined, Obj

bp = Blueprint("hosted", __name__)

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{{ title }} · Local Stripe Checkout</title>
  <style>
    body { font-family: system-ui, sans-serif; background: #f6f9fc; color: #1a1f36; margin: 0; }
    main { max-width: 28rem; margin: 3rem auto; background: #fff; padding: 2rem;
           border-radius: 8px; box-shadow: 0 2px 8px rgba(0,0,0,.08); }
    .banner { font-size: .8rem; color: #a04100; background: #fff4e5; padding: .4rem .6rem;
              border-radius: 4px; margin-bottom: 1.5rem; }
    table { width: 100%; border-collapse: collapse; margin-bottom: 1.5rem; }
    td { padding: .4rem 0; } td.amount { text-align: right; }
    tr.total td { border-top: 1px solid #e3e8ee; font-weight: 600; }
    label { display: block; margin: .8rem 0 .3rem; font-size: .9rem; }
    input { width: 100%; box-sizing: border-box; padding: .55rem; font-size: 1rem;
            border: 1px solid #cfd7df; border-radius: 4px; }
    .row { display: flex; gap: .8rem; } .row > div { flex: 1; }
    .actions { display: flex; gap: .6rem; margin-top: 1.5rem; }
    button { flex: 1; padding: .7rem; font-size: 1rem; border-radius: 4px; cursor: pointer;
             border: 1px solid #cfd7df; background: #fff; }
    button.primary { background: #635bff; border-color: #635bff; color: #fff; }
    .error { color: #df1b41; background: #fde8ec; padding: .6rem; border-radius: 4px; }
    .notice { padding: .6rem; border-radius: 4px; background: #eef2f7; }
  </style>
</head>
<body>
<main>
  <p class="banner">Test mode — local Stripe server. No real money moves.</p>
  <h1>{{ title }}</h1>
  <table aria-label="Order summary">
    {% for item in items %}
    <tr>
      <td>{{ item.description }}{% if item.quantity > 1 %} × {{ item.quantity }}{% endif %}</td>
      <td class="amount">{{ money(item.amount_total) }}</td>
    </tr>
    {% endfor %}
    {% if session.total_details.amount_discount or session.total_details.amount_tax %}
    <tr>
      <td>Subtotal</td>
      <td class="amount" id="subtotal">{{ money(session.amount_subtotal) }}</td>
    </tr>
    {% endif %}
    {% if session.total_details.amount_discount %}
    <tr>
      <td>Discount{% if promotion %} ({{ promotion.code }}){% endif %}</td>
      <td class="amount" id="discount">−{{ money(session.total_details.amount_discount) }}</td>
    </tr>
    {% endif %}
    {% if session.automatic_tax.enabled %}
    <tr>
      <td>Tax ({{ tax_percent }} %)</td>
      <td class="amount" id="tax">{{ money(session.total_details.amount_tax) }}</td>
    </tr>
    {% endif %}
    <tr class="total">
      <td>Total due</td>
      <td class="amount" id="total">{{ money(session.amount_total) }}</td>
    </tr>
  </table>
  {% if session.status == "open" %}
    {% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
    {% if session.allow_promotion_codes %}
    <form method="post" action="{{ url_for('hosted.submit', session_id=session.id) }}">
      {% if promotion %}
      <p class="notice" role="status">Promotion code {{ promotion.code }} applied.</p>
      <div class="actions"><button type="submit" name="action" value="remove_code">Remove
        code</button></div>
      {% else %}
      <label for="promotion_code">Promotion code</label>
      <div class="row">
        <div><input id="promotion_code" name="promotion_code" autocomplete="off"
                    value="{{ code }}"></div>
        <button type="submit" name="action" value="apply_code">Apply</button>
      </div>
      {% endif %}
    </form>
    {% endif %}
    <form method="post" action="{{ url_for('hosted.submit', session_id=session.id) }}" novalidate>
      <label for="email">Email</label>
      <input id="email" name="email" type="email" autocomplete="email" value="{{ email }}"
             {% if session.customer_email %}readonly{% endif %}>
      <label for="card">Card number</label>
      <input id="card" name="card" inputmode="numeric" autocomplete="cc-number" value="{{ card }}">
      <div class="row">
        <div>
          <label for="expiry">Expiry</label>
          <input id="expiry" name="expiry" value="12 / 34">
        </div>
        <div><label for="cvc">CVC</label><input id="cvc" name="cvc" value="123"></div>
      </div>
      <div class="actions">
        <button type="submit" name="action" value="pay" class="primary">Pay</button>
        <button type="submit" name="action" value="decline">Decline</button>
        {% if session.cancel_url %}
        <button type="submit" name="action" value="cancel">Cancel</button>
        {% endif %}
      </div>
    </form>
  {% elif session.status == "complete" %}
    <p class="notice" role="status">This payment is complete. You have been charged
      {{ money(session.amount_total) }}.</p>
    <p><a href="{{ success_url }}">Return to the merchant</a></p>
  {% else %}
    <p class="notice" role="status">This checkout session has expired. Nothing was charged.</p>
    {% if session.cancel_url %}
    <p><a href="{{ session.cancel_url }}">Return to the merchant</a></p>
    {% endif %}
  {% endif %}
</main>
</body>
</html>
"""

NOT_FOUND = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Not found · Local Stripe Checkout</title></head>
<body><main><h1>Checkout session not found</h1>
<p>There is no Checkout Session {{ session_id }} on this local Stripe server.</p></main></body>
</html>
"""


def success_url(session: Obj) -> str:
    """Return the session's success URL with `{CHECKOUT_SESSION_ID}` filled in."""
    return str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session["id"])


def _render(
    session: Obj, *, error: str | None = None, email: str = "", card: str = "", code: str = ""
) -> str:
    state = runtime().state
    with state.lock:
        items = [dict(item) for item in state.line_items.get(session["id"], [])]
        view = dict(session)
        promotion = state.applied_promotion_code(session["id"])
        tax_percent = state.tax_percent
    currency = view["currency"]
    title = {
        "open": "Complete your purchase",
        "complete": "Payment complete",
        "expired": "Session expired",
    }.get(view["status"], "Checkout")
    return render_template_string(
        PAGE,
        title=title,
        session=view,
        items=items,
        error=error,
        promotion=promotion,
        code=code,
        tax_percent=f"{tax_percent.normalize():f}",
        email=email or view["customer_email"] or DEFAULT_EMAIL,
        card=card or "4242 4242 4242 4242",
        success_url=success_url(view) if view.get("success_url") else "",
        money=lambda amount: f"{currencies.major_units(amount, currency)} {currency.upper()}",
    )


def _session_or_404(session_id: str) -> Obj | tuple[str, int]:
    state = runtime().state
    state.expire_due_sessions()
    with state.lock:
        session = state.sessions.get(session_id)
        if session is None:
            return render_template_string(NOT_FOUND, session_id=session_id), 404
        return session


@bp.get("/pay/<session_id>")
def page(session_id: str) -> str | tuple[str, int]:
    """Show the payment page (or say that the session is complete or expired)."""
    found = _session_or_404(session_id)
    if isinstance(found, tuple):
        return found
    return _render(found)


@bp.post("/pay/<session_id>")
def submit(session_id: str) -> Response | str | tuple[str, int]:
    """Act on a button: Pay completes and redirects, Decline fails in place, Cancel goes back."""
    found = _session_or_404(session_id)
    if isinstance(found, tuple):
        return found
    session = found
    action = request.form.get("action", "")
    email = request.form.get("email", "").strip()
    card = request.form.get("card", "").strip()
    if session["status"] != "open":
        return _render(session), 409
    if action == "cancel":
        if not session.get("cancel_url"):
            return _render(session, error="This checkout has no cancel URL."), 400
        return redirect(session["cancel_url"], code=303)
    state = runtime().state
    if action in ("apply_code", "remove_code"):
        code = request.form.get("promotion_code", "")
        try:
            if action == "apply_code":
                state.apply_promotion_code(session_id, code)
            else:
                state.remove_promotion_code(session_id)
        except StripeApiError as refused:
            return _render(session, error=refused.message, code=code), 400
        return redirect(url_for("hosted.page", session_id=session_id), code=303)
    if action == "decline":
        message = state.decline(session_id)
        return _render(session, error=message, email=email, card=card)
    if action != "pay":
        return _render(session, error="Unknown action.", email=email, card=card), 400
    try:
        paid = state.pay(session_id, email=email or None, card=card or DEFAULT_CARD)
    except CardDeclined as declined:
        return _render(session, error=declined.message, email=email, card=card)
    except StripeApiError as invalid:
        return _render(session, error=invalid.message, email=email, card=card), 400
    return redirect(success_url(paid), code=303)
