"""Accessibility, checked by a machine: axe-core in Chromium on every kind of page, no serious or
critical violation; and one purchase made with the keyboard alone.

axe-core comes from npm (package.json; `scripts/setup.sh test` runs `npm ci`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from devservers.stripe_local import LocalStripe
from storefront import PROJECT_ROOT
from storefront.buyers.sign_in import request_sign_in, sign_in_token
from storefront.extensions import db
from storefront.jobs.delivery import token_digest
from storefront.models import BuyerSignIn, Job
from tests import admin_helpers
from tests.admin_helpers import ADMIN_EMAIL, ADMIN_PASSWORD, completed_job
from tests.conftest import LiveApp
from tests.factories import make_attachment, make_job, make_post

pytestmark = [pytest.mark.browser, pytest.mark.slow]

admin_user = admin_helpers.admin_user

AXE = PROJECT_ROOT / "node_modules" / "axe-core" / "axe.min.js"
FAILING_IMPACTS = {"serious", "critical"}
READY_TOKEN = "1" * 64
EXPIRED_TOKEN = "2" * 64


@dataclass(frozen=True)
class Shop:
    """The rows the audited pages show."""

    post_slug: str
    image_id: int
    order_ids: dict[str, str]  # state → job id; each job's session id is `cs_test_<state>`
    sign_in_token: str  # a "My orders" link for the orders' address


@dataclass(frozen=True)
class Audited:
    """A page to audit: its address (from the shop's rows), its status, and what to do on it
    before the audit (fill in a form, say), if anything."""

    name: str
    address: Callable[[Shop], str]
    status: int = 200
    before: Callable[[Any], None] | None = None


def _order(state: str) -> Callable[[Shop], str]:
    return lambda shop: f"/orders/{shop.order_ids[state]}?session_id=cs_test_{state}"


def _bad_email(page: Any) -> None:
    page.get_by_label(re.compile("Email for the download link")).fill("not an address")
    page.get_by_role("button", name="Buy").click()
    page.get_by_role("alert").wait_for()


def _ask_fresh_link(page: Any) -> None:
    page.get_by_label("Order number").fill("no-such-order")
    page.get_by_label(re.compile("Email")).fill("buyer@example.com")
    page.get_by_role("button", name="Email me a fresh link").click()
    page.get_by_role("status").wait_for()


def _ask_my_orders(page: Any) -> None:
    page.get_by_label(re.compile("Email")).fill("buyer@example.com")
    page.get_by_role("button", name=re.compile("sign-in link", re.I)).click()
    page.get_by_role("status").wait_for()


def _sign_in(page: Any) -> None:
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()


# One line per page.
BUYER_PAGES = [
    Audited("catalog", lambda shop: "/"),
    Audited("post", lambda shop: f"/posts/{shop.post_slug}"),
    Audited("image", lambda shop: f"/images/{shop.image_id}"),
    Audited("image, checkout cancelled", lambda shop: f"/images/{shop.image_id}?cancelled=1"),
    Audited("image, form errors", lambda shop: f"/images/{shop.image_id}", before=_bad_email),
    Audited("order, upscaling", _order("processing")),
    Audited("order, ready", _order("completed")),
    Audited("order, refunded", _order("failed")),
    Audited("download", lambda shop: f"/download/{READY_TOKEN}"),
    Audited("download, expired link", lambda shop: f"/download/{EXPIRED_TOKEN}", 410),
    Audited("download, unknown link", lambda shop: "/download/" + "3" * 64, 404),
    Audited("fresh link form", lambda shop: "/download/resend"),
    Audited("fresh link sent", lambda shop: "/download/resend", before=_ask_fresh_link),
    Audited("not found", lambda shop: "/no-such-page", 404),
    Audited("my orders", lambda shop: "/my-orders"),
    Audited("my orders, link sent", lambda shop: "/my-orders", before=_ask_my_orders),
    Audited("my orders, sign in", lambda shop: f"/my-orders/{shop.sign_in_token}"),
    Audited("my orders, list", lambda shop: f"/my-orders/{shop.sign_in_token}", before=_sign_in),
]
ADMIN_PAGES = [
    Audited("dashboard", lambda shop: "/admin/"),
    Audited("jobs", lambda shop: "/admin/jobs"),
    Audited("job detail", lambda shop: f"/admin/jobs/{shop.order_ids['completed']}"),
    Audited("catalog", lambda shop: "/admin/catalog"),
    Audited("settings", lambda shop: "/admin/settings"),
    Audited("system", lambda shop: "/admin/system"),
]


def _shop(app: Flask) -> Shop:
    post = make_post(slug="harbours", title="Harbours", body="Boats and quays.")
    image = make_attachment(app, post, width=1600, height=1200, title="Old harbour")
    make_attachment(app, post, title="Not for sale", for_sale=False)
    orders = {
        "processing": make_job(image, status="processing", payment_status="paid").job_id,
        "failed": make_job(
            image, status="failed", payment_status="refunded", refund_amount=1
        ).job_id,
        "completed": completed_job(app, image, download_token=token_digest(READY_TOKEN)).job_id,
    }
    completed_job(
        app,
        image,
        download_token=token_digest(EXPIRED_TOKEN),
        expires_in=-dt.timedelta(hours=1),
    )
    for state, job_id in orders.items():
        job = db.session.scalars(select(Job).where(Job.job_id == job_id)).one()
        job.stripe_checkout_session_id = f"cs_test_{state}"
    db.session.commit()
    request_sign_in("buyer@example.com")
    row = db.session.scalars(select(BuyerSignIn).order_by(BuyerSignIn.id.desc())).first()
    assert row is not None
    token = sign_in_token(row.outbox_id, row.email, row.expires_at)
    return Shop(post.slug, image.id, orders, token)


def axe_violations(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page now, one line each."""
    page.add_script_tag(path=str(AXE))
    results = page.evaluate("async () => await axe.run(document)")
    assert len(results["passes"]) > 10, f"axe checked next to nothing on {page.url}"
    violations = results["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + "; ".join(" ".join(node["target"]) for node in v["nodes"][:5])
        for v in violations
        if v["impact"] in FAILING_IMPACTS
    ]


@pytest.fixture
def audit_page(new_browser_page):  # type: ignore[no-untyped-def]
    """A phone-sized page; the shop's Content-Security-Policy is bypassed to inject axe."""
    if not AXE.exists():
        pytest.fail("axe-core is not installed: run `npm ci` (scripts/setup.sh test does)")
    return new_browser_page(390, 844, bypass_csp=True)


def test_buyer_pages_have_no_serious_accessibility_violations(
    live_app: LiveApp, stripe_local: LocalStripe, audit_page: Any
) -> None:
    shop = _shop(live_app.app)
    found = {}
    for audited in BUYER_PAGES:
        response = audit_page.goto(live_app.url + audited.address(shop))
        assert response is not None and response.status == audited.status, audited.name
        if audited.before is not None:
            audited.before(audit_page)
        found[audited.name] = axe_violations(audit_page)
    assert {name: v for name, v in found.items() if v} == {}
    assert len(found) == len(BUYER_PAGES)


def test_admin_pages_have_no_serious_accessibility_violations(
    live_app: LiveApp, stripe_local: LocalStripe, admin_user: object, audit_page: Any
) -> None:
    shop = _shop(live_app.app)
    page = audit_page
    page.goto(live_app.url + "/admin/login")
    found = {"sign in": axe_violations(page)}
    page.get_by_label("Email").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Dashboard").wait_for()
    for audited in ADMIN_PAGES:
        response = page.goto(live_app.url + audited.address(shop))
        assert response is not None and response.status == audited.status, audited.name
        found[audited.name] = axe_violations(page)
    assert {name: v for name, v in found.items() if v} == {}


# The focused element, and whether a focus ring shows: on the label of a radio button (the
# button itself is visually hidden), on the element otherwise.
FOCUSED = """() => {
  const el = document.activeElement;
  const label = el.labels && el.labels.length ? el.labels[0] : null;
  const style = getComputedStyle(el.matches('input[type=radio]') ? label : el);
  return {
    tag: el.tagName.toLowerCase(), type: el.getAttribute('type') || '',
    name: (el.getAttribute('aria-label') || (label && label.innerText)
           || el.innerText || el.value || '').trim(),
    checked: !!el.checked,
    ring: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2,
  };
}"""


def _tab_to(
    page: Any, wanted: Callable[[dict[str, Any]], bool], *, key: str = "Tab", ours: bool = True
) -> dict[str, Any]:
    """Press Tab (or `key`) until the focused element is `wanted`; on the shop's own pages
    (`ours`), every control passed on the way shows a focus ring."""
    for _ in range(40):
        page.keyboard.press(key)
        focus: dict[str, Any] = page.evaluate(FOCUSED)
        if ours and focus["tag"] != "body":
            assert focus["ring"], f"no visible focus on {focus} at {page.url}"
        if wanted(focus):
            return focus
    raise AssertionError(f"{key} never reached the wanted control on {page.url}")


def test_a_purchase_made_with_the_keyboard_alone(
    live_app: LiveApp, stripe_local: LocalStripe, new_browser_page: Callable[..., Any]
) -> None:
    image = make_attachment(live_app.app, width=160, height=120, title="Lighthouse at dusk")
    db.session.commit()
    page = new_browser_page(1280, 800)
    page.goto(live_app.url + "/")

    _tab_to(page, lambda f: f["name"] == "Download Hi-Res: Lighthouse at dusk")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_app.url}/images/{image.id}")

    # A radio group is one Tab stop whose arrow keys move the choice, in every browser.
    assert _tab_to(page, lambda f: f["type"] == "radio")["name"].startswith("4x")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Space")
    focus = page.evaluate(FOCUSED)
    assert focus["name"].startswith("8x") and focus["checked"] and focus["ring"]

    _tab_to(page, lambda f: f["type"] == "email")
    page.keyboard.type("keys.only@example.com")
    _tab_to(page, lambda f: f["tag"] == "button" and f["name"] == "Buy")
    _tab_to(page, lambda f: f["type"] == "email", key="Shift+Tab")  # back, and on again
    _tab_to(page, lambda f: f["tag"] == "button" and f["name"] == "Buy")
    page.keyboard.press("Enter")

    page.wait_for_url(re.compile(r"/pay/cs_test_"))
    _tab_to(page, lambda f: f["tag"] == "button" and f["name"] == "Pay", ours=False)
    page.keyboard.press("Enter")

    page.wait_for_url(re.compile(r"/orders/[0-9a-f-]{36}$"))
    page.get_by_role("heading", name="Your order").wait_for()
    job = db.session.scalars(select(Job)).one()
    db.session.refresh(job)
    assert (job.resolution, job.email, job.payment_status) == (
        "8x",
        "keys.only@example.com",
        "paid",
    )
