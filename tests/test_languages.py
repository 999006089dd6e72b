"""Languages: a German buyer reads German pages and mails, an English one what they always read.

The language is the buyer's choice (the switcher's `lang` cookie), else Accept-Language, else
English; the admin area is always English; an order's mails are in the language it was placed in.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from flask_babel import force_locale
from sqlalchemy import select

from devservers.smtp_sink import SinkHandler, text_of
from devservers.stripe_local import LocalStripe
from storefront.extensions import db
from storefront.formatting import format_bytes, format_moment, format_money, local_time
from storefront.jobs.emails import build_message
from storefront.models import Job
from tests.conftest import LiveApp, WorkerProcess
from tests.factories import make_attachment, make_job

GERMAN = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}
ENGLISH = {"Accept-Language": "en-GB,en;q=0.9"}
NBSP = "\xa0"


def _lang(page: str) -> str:
    match = re.search(r'<html lang="([a-z]+)">', page)
    assert match, page[:200]
    return match.group(1)


def test_a_german_browser_gets_the_image_page_in_german(app: Flask, client: FlaskClient) -> None:
    attachment = make_attachment(app, width=2000, height=2000, title="Leuchtturm")
    db.session.commit()
    response = client.get(f"/images/{attachment.id}", headers=GERMAN)
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and _lang(page) == "de"
    assert "Wählen Sie eine Auflösung" in page and ">Kaufen</button>" in page
    assert f"1,92{NBSP}$" in page and "$1.92" not in page
    assert "Original: 2000 × 2000 px" in page and "64,0 MP" in page  # 4x: 8000 × 8000
    assert response.headers["Content-Language"] == "de"
    assert {"Accept-Language", "Cookie"} <= set(response.vary)
    # The switcher offers the page in English, and back to this very page.
    assert f'href="/language/en?next=/images/{attachment.id}"' in page


def test_without_a_choice_the_page_stays_english(app: Flask, client: FlaskClient) -> None:
    attachment = make_attachment(app, width=2000, height=2000)
    db.session.commit()
    for headers in ({}, ENGLISH, {"Accept-Language": "fr-FR,fr;q=0.9"}):
        page = client.get(f"/images/{attachment.id}", headers=headers).get_data(as_text=True)
        assert _lang(page) == "en"
        assert ">Buy</button>" in page and "$1.92" in page and "Choose a resolution" in page
        assert "64.0 MP" in page
        assert f'href="/language/de?next=/images/{attachment.id}"' in page


def test_the_switcher_sets_a_cookie_that_wins_over_accept_language(
    app: Flask, client: FlaskClient
) -> None:
    attachment = make_attachment(app, width=2000, height=2000)
    db.session.commit()
    chosen = client.get(f"/language/de?next=/images/{attachment.id}%3Fcancelled%3D1")
    assert chosen.status_code == 303
    assert chosen.headers["Location"] == f"/images/{attachment.id}?cancelled=1"
    cookie = chosen.headers["Set-Cookie"]
    assert cookie.startswith("lang=de;") and "Max-Age=31536000" in cookie
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie
    page = client.get(f"/images/{attachment.id}?cancelled=1", headers=ENGLISH)
    text = page.get_data(as_text=True)
    assert _lang(text) == "de" and "Kauf abgebrochen: Es wurde nichts berechnet." in text
    # A POST works the same, and English chosen wins over a German browser.
    assert client.post("/language/en", data={"next": "/"}).headers["Location"] == "/"
    again = client.get(f"/images/{attachment.id}", headers=GERMAN).get_data(as_text=True)
    assert _lang(again) == "en" and ">Buy</button>" in again


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/phish",
        "//evil.example/phish",
        "/\\evil.example",
        "javascript:alert(1)",
        "images/1",
        "/%0d%0aSet-Cookie:x=1",
        "",
    ],
)
def test_the_switcher_never_sends_a_buyer_to_another_site(client: FlaskClient, target: str) -> None:
    response = client.get("/language/de", query_string={"next": target})
    assert response.status_code == 303
    location = response.headers["Location"]
    assert location == "/" or (location.startswith("/") and not location.startswith("//"))
    assert "evil.example" not in location and "\n" not in location
    if target != "/%0d%0aSet-Cookie:x=1":
        assert location == "/"


def test_an_unknown_language_is_a_404_and_sets_nothing(client: FlaskClient) -> None:
    response = client.get("/language/xx?next=/")
    assert response.status_code == 404 and "Set-Cookie" not in response.headers


def test_error_pages_and_form_errors_speak_german(app: Flask, client: FlaskClient) -> None:
    missing = client.get("/posts/no-such-post", headers=GERMAN).get_data(as_text=True)
    assert "Diese Seite haben wir nicht gefunden" in missing and "Fehler 404" in missing
    attachment = make_attachment(app, width=2000, height=2000)
    db.session.commit()
    bad = client.post(
        "/checkout",
        data={"attachment_id": attachment.id, "resolution": "4x", "email": "not-an-address"},
        headers=GERMAN,
    )
    assert bad.status_code == 400
    assert "Das sieht nicht nach einer E-Mail-Adresse aus." in bad.get_data(as_text=True)
    # WTForms' own messages too (Flask-WTF translates them).
    data = {"attachment_id": attachment.id, "resolution": "16x", "email": ""}
    unknown = client.post("/checkout", data=data, headers=GERMAN)
    assert "Keine gültige Auswahl." in unknown.get_data(as_text=True)


def test_the_cached_offers_are_shown_in_each_pages_language(
    app: Flask, client: FlaskClient
) -> None:
    attachment = make_attachment(app, width=2000, height=2000, for_sale=False)
    db.session.commit()
    url = f"/images/{attachment.id}"
    assert "This image is not for sale." in client.get(url).get_data(as_text=True)
    german = client.get(url, headers=GERMAN).get_data(as_text=True)
    assert "Dieses Bild steht nicht zum Verkauf." in german
    assert "This image is not for sale." in client.get(url).get_data(as_text=True)


def test_the_admin_area_stays_english_for_a_german_buyer(client: FlaskClient) -> None:
    client.get("/language/de")
    page = client.get("/admin/login", headers=GERMAN)
    assert _lang(page.get_data(as_text=True)) == "en"
    assert "Content-Language" not in page.headers


def test_an_order_placed_in_german_is_followed_in_german(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = make_attachment(app, width=2000, height=2000)
    db.session.commit()
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": "kaeufer@example.com"}
    assert client.post("/checkout", data=data, headers=GERMAN).status_code == 303
    job = db.session.scalars(select(Job)).one()
    assert job.locale == "de"
    assert stripe_local.state.sessions[job.stripe_checkout_session_id]["locale"] == "de"
    page = client.get(f"/orders/{job.job_id}", headers=GERMAN).get_data(as_text=True)
    assert "Ihre Bestellung" in page and "Ihre Zahlung wird bestätigt …" in page
    assert f"1,92{NBSP}$" in page
    status = client.get(f"/orders/{job.job_id}/status", headers=GERMAN)
    assert status.json is not None and status.json["headline"] == "Ihre Zahlung wird bestätigt …"
    assert status.json["steps"][0]["label"] == "Zahlung erhalten"
    english = client.get(f"/orders/{job.job_id}/status", headers=ENGLISH)
    assert english.json is not None and english.json["headline"] == "Confirming your payment…"


def test_amounts_sizes_and_times_follow_the_locale(app: Flask) -> None:
    moment = local_time(dt.datetime(2026, 3, 5, 13, 0), "Europe/Berlin")
    with app.test_request_context("/"):
        assert format_money(Decimal("1234.5"), "usd") == "$1,234.50"
        assert format_money(Decimal("7.68"), "eur") == "€7.68"
        assert format_bytes(12_345_678) == "12.3 MB" and format_bytes(512) == "512 bytes"
        assert format_moment(moment) == "05 March 2026, 14:00 CET"
        with force_locale("de"):
            assert format_money(Decimal("1234.5"), "usd") == f"1.234,50{NBSP}$"
            assert format_money(Decimal("7.68"), "eur") == f"7,68{NBSP}€"
            assert format_bytes(12_345_678) == "12,3 MB"
            assert format_moment(moment) == "5. März 2026, 14:00 CET"


def test_each_mail_of_a_german_order_is_german_and_the_admins_stays_english(app: Flask) -> None:
    attachment = make_attachment(app, width=2000, height=2000, title="Hafen")
    job = make_job(
        attachment,
        locale="de",
        status="failed",
        payment_status="refunded",
        amount_charged=Decimal("1.92"),
        refund_amount=Decimal("1.92"),
        upscaled_file_size=12_345_678,
        download_expires_at=dt.datetime(2026, 3, 5, 13, 0),
    )
    db.session.commit()
    expected = {
        "paid": ("Zahlung erhalten: Wir vergrößern Ihr Bild", f"1,92{NBSP}$ für die 4x-Version"),
        "ready": ("Ihr hochauflösendes Bild ist fertig", "12,3 MB"),
        "link": ("Ein neuer Download-Link für Ihr Bild", "Frühere Links"),
        "failed": ("Wir konnten Ihr Bild nicht bearbeiten", "vollständig erstattet"),
        "refunded": ("Wir haben Ihre Bestellung erstattet", "den gesamten bezahlten Betrag"),
    }
    with app.app_context():
        for kind, (subject, phrase) in expected.items():
            message = build_message(kind, job, download_url="http://shop.test/download/x")
            assert message.subject.startswith(subject), kind
            assert phrase in message.body and phrase.replace(NBSP, " ") in message.html.replace(
                NBSP, " "
            ), kind
            assert '<html lang="de">' in message.html
            assert f"Bestellung {job.job_id}." in message.body
        assert "bis 5. März 2026, 13:00 UTC gültig" in build_message("ready", job).body
        admin = build_message("admin_alert", job)
        assert admin.subject == "[Sell My Images] A paid job failed"
        assert "Charged: $1.92" in admin.body and '<html lang="en">' in admin.html


@pytest.mark.slow
def test_an_order_placed_in_german_gets_german_mails_from_the_worker(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    attachment = make_attachment(live_app.app, width=120, height=90, title="Hafen")
    db.session.commit()
    buyer = live_app.app.test_client()
    buyer.get("/language/de")
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": "kaeufer@example.com"}
    assert buyer.post("/checkout", data=data, headers=ENGLISH).status_code == 303
    job = db.session.scalars(select(Job).order_by(Job.id.desc())).first()
    assert job is not None and job.locale == "de"
    start_worker()
    stripe_local.pay(job.stripe_checkout_session_id)
    paid = smtp_sink.wait_for(
        1, timeout=30, where=lambda m: "Zahlung erhalten" in str(m["Subject"])
    )
    assert paid and "Vielen Dank! Wir haben" in text_of(paid[0])
    ready = smtp_sink.wait_for(1, timeout=60, where=lambda m: "fertig" in str(m["Subject"]))
    assert ready, [str(m["Subject"]) for m in smtp_sink.messages]
    body = text_of(ready[0])
    assert "480 x 360 Pixel" in body and "Bild herunterladen: http://" in body
    link = re.search(r"http://127\.0\.0\.1:\d+/download/[0-9a-f]{64}", body)
    assert link, body
    assert all("Payment received" not in str(m["Subject"]) for m in smtp_sink.messages)
    # The download page follows the buyer's browser, not the order: English without a choice.
    assert "Your high-resolution image is ready" in requests.get(link.group(0), timeout=10).text


@pytest.mark.browser
@pytest.mark.slow
def test_a_buyer_switches_the_image_page_to_german_and_back_in_a_browser(
    live_app: LiveApp,
    new_browser_page,  # type: ignore[no-untyped-def]
) -> None:
    attachment = make_attachment(live_app.app, width=2000, height=2000, title="Leuchtturm")
    db.session.commit()
    page = new_browser_page(1024, 768, locale="en-US")
    page.goto(f"{live_app.url}/images/{attachment.id}")
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.get_by_role("button", name="Buy").is_visible()

    page.get_by_role("link", name="Deutsch").click()
    # Back on the same address: wait for the German page itself.
    page.get_by_role("button", name="Kaufen").wait_for()
    assert page.url == f"{live_app.url}/images/{attachment.id}"
    assert page.locator("html").get_attribute("lang") == "de"
    assert page.get_by_text(f"1,92{NBSP}$").is_visible()
    page.get_by_role("link", name="Katalog").click()  # the choice is remembered
    page.get_by_role("heading", name="Fotos in hoher Auflösung").wait_for()

    page.get_by_role("link", name="English").click()
    page.get_by_role("heading", name="Photos in high resolution").wait_for()
    assert page.locator("html").get_attribute("lang") == "en"
    # A German browser that chose nothing gets German at once.
    german = new_browser_page(1024, 768, locale="de-DE")
    german.goto(f"{live_app.url}/images/{attachment.id}")
    assert german.get_by_role("button", name="Kaufen").is_visible()
    assert german.locator("html").get_attribute("lang") == "de"
