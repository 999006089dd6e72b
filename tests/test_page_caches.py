"""The buyer's pages without a database write or a settings query per view: image views buffered
in Redis and folded in exactly once, and copies of settings and the catalog that every process
drops as soon as another one saves a change."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, request
from flask.testing import FlaskClient
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from sqlalchemy import func, select
from werkzeug.datastructures import Headers

from storefront import create_app, funnel, settings, transactions
from storefront.catalog.editing import update_image
from storefront.extensions import db
from storefront.models import Attachment, FunnelEvent
from storefront.queues import redis_connection
from storefront.reports.dashboard import DateRange, funnel_steps
from storefront.settings_editor import update_settings
from storefront.web.metrics import HTTP_REGISTRY
from tests import admin_helpers
from tests.factories import make_attachment

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
ROBOT = "Googlebot/2.1 (+http://www.google.com/bot.html)"


def _view(app: Flask, attachment: Attachment, user_agent: str = BROWSER) -> str:
    response = app.test_client().get(f"/images/{attachment.id}", headers={"User-Agent": user_agent})
    assert response.status_code == 200
    return response.get_data(as_text=True)


def _rows() -> int:
    db.session.rollback()  # see what other sessions committed
    return int(db.session.scalar(select(func.count()).select_from(FunnelEvent)) or 0)


def _dashboard_views() -> int:
    today = DateRange.last_days(1)
    return funnel_steps(today.since, today.until)[0].count


@pytest.fixture
def image(app: Flask) -> Attachment:
    """An image for sale, committed."""
    attachment = make_attachment(app, title="Lighthouse", width=400, height=300)
    db.session.commit()
    return attachment


@pytest.fixture
def other_process(app_config: dict[str, Any]) -> Iterator[Flask]:
    """A second app on the same database and Redis: another gunicorn or RQ worker."""
    other = create_app(app_config)
    yield other
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_view_is_buffered_and_the_dashboard_counts_it_exactly(
    app: Flask, image: Attachment
) -> None:
    db.session.add(FunnelEvent(kind=funnel.IMAGE_VIEWED))  # a view folded earlier
    db.session.commit()
    for _ in range(3):
        _view(app, image)
    _view(app, image, ROBOT)
    redis = redis_connection(app)
    assert _rows() == 1  # no row written by a page view
    assert redis.llen(funnel.BUFFER_KEY) == 3  # the robot is not counted
    assert _dashboard_views() == 4

    assert funnel.fold_buffered_views(redis) == 3
    assert redis.llen(funnel.BUFFER_KEY) == 0 and not redis.exists(funnel.FOLDING_KEY)
    folded = db.session.scalars(select(FunnelEvent).where(FunnelEvent.buffer_id.is_not(None))).all()
    assert [(e.kind, e.attachment_id, e.post_id) for e in folded] == [
        (funnel.IMAGE_VIEWED, image.id, image.post_id)
    ] * 3
    assert all(
        abs(e.created_at - dt.datetime.now(dt.UTC).replace(tzinfo=None)) < dt.timedelta(minutes=1)
        for e in folded
    )
    assert _dashboard_views() == 4
    assert funnel.fold_buffered_views(redis) == 0  # nothing left: nothing added


def test_a_fold_that_stops_after_its_commit_adds_nothing_twice(
    app: Flask, image: Attachment, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(5):
        _view(app, image)
    redis = redis_connection(app)

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise RedisError("connection lost")

    # The rows are committed, then the worker loses Redis before the batch leaves it.
    monkeypatch.setattr(Redis, "ltrim", crash)
    with pytest.raises(RedisError):
        funnel.fold_buffered_views(redis)
    monkeypatch.undo()
    redis.delete(funnel.FOLD_LOCK_KEY)  # the lock's expiry, in a real crash
    assert _rows() == 5
    assert redis.llen(funnel.FOLDING_KEY) == 5  # the batch is still in Redis...
    assert _dashboard_views() == 5  # ...and not counted twice

    _view(app, image)
    assert funnel.fold_buffered_views(redis) == 1  # the next fold adds only the new view
    assert _rows() == 6 and _dashboard_views() == 6
    assert not redis.exists(funnel.FOLDING_KEY) and redis.llen(funnel.BUFFER_KEY) == 0


def test_a_fold_that_stops_before_its_commit_loses_nothing(
    app: Flask, image: Attachment, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(4):
        _view(app, image)
    redis = redis_connection(app)

    def crash(*_args: Any) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(transactions, "commit", crash)
    with pytest.raises(RuntimeError):
        funnel.fold_buffered_views(redis)
    monkeypatch.undo()
    db.session.rollback()
    assert _rows() == 0 and _dashboard_views() == 4
    assert funnel.fold_buffered_views(redis) == 4
    assert _rows() == 4 and _dashboard_views() == 4


def test_a_view_sent_twice_by_a_retry_is_folded_once(app: Flask, image: Attachment) -> None:
    _view(app, image)
    redis = redis_connection(app)
    entry = redis.lindex(funnel.BUFFER_KEY, 0)
    assert entry is not None
    redis.rpush(funnel.BUFFER_KEY, entry)
    assert _dashboard_views() == 1
    assert funnel.fold_buffered_views(redis) == 1
    assert _rows() == 1


def test_the_sweep_folds_the_buffered_views(app: Flask, image: Attachment) -> None:
    _view(app, image)
    _view(app, image)
    result = app.test_cli_runner().invoke(args=["smi", "sweep"])
    assert result.exit_code == 0, result.output
    assert "image views folded 2" in result.output
    assert _rows() == 2


def test_a_view_whose_answer_from_redis_is_lost_is_counted_once(
    app: Flask, image: Attachment, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _view(app, image)  # this process now has a copy: the next view goes with the version read
    execute, rpush = Pipeline.execute, Redis.rpush

    def lost_answer(pipe: Pipeline, *args: Any, **kwargs: Any) -> Any:
        execute(pipe, *args, **kwargs)  # Redis did it, but the answer never came back
        raise RedisError("connection lost")

    def refused(client: Redis, *args: Any) -> Any:
        if isinstance(client, Pipeline):
            return rpush(client, *args)  # queued in the pipeline
        raise RedisError("connection refused")

    monkeypatch.setattr(Pipeline, "execute", lost_answer)
    monkeypatch.setattr(Redis, "rpush", refused)
    with caplog.at_level(logging.WARNING, logger="smi.funnel"):
        assert "Lighthouse" in _view(app, image)
    monkeypatch.undo()
    assert "image view written to the database" in caplog.text
    redis = redis_connection(app)
    assert redis.llen(funnel.BUFFER_KEY) == 2 and _rows() == 1  # in both places...
    assert _dashboard_views() == 2  # ...and counted once
    assert funnel.fold_buffered_views(redis) == 1
    assert _rows() == 2 and _dashboard_views() == 2


def test_with_redis_down_the_page_shows_and_the_view_is_written_at_once(
    app_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    down = create_app({**app_config, "REDIS_URL": "redis://127.0.0.1:1/0"})
    with down.app_context():
        attachment = make_attachment(down, title="Harbour")
        db.session.commit()
        with caplog.at_level(logging.WARNING, logger="smi.funnel"):
            page = _view(down, attachment)
        assert "Harbour" in page and 'name="resolution"' in page
        assert "image view written to the database: Redis is unreachable" in caplog.text
        rows = db.session.scalars(select(FunnelEvent)).all()
        assert [(row.kind, row.attachment_id) for row in rows] == [
            (funnel.IMAGE_VIEWED, attachment.id)
        ]
        db.session.remove()
        db.engine.dispose()


def test_a_settings_save_is_seen_at_once_by_another_process(
    app: Flask, image: Attachment, other_process: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No time-based look at the table: only the version in Redis can tell the other process.
    monkeypatch.setattr(settings, "CACHE_SECONDS", 3600.0)
    assert "$1,234.00" not in _view(other_process, image)
    errors, changed = update_settings(app, {"MIN_PRICE": "1234.00"}, admin="owner@shop.test")
    assert (errors, changed) == ({}, ["MIN_PRICE"])
    assert "$1,234.00" in _view(other_process, image)
    with other_process.app_context():
        assert str(settings.get("MIN_PRICE")) == "1234.00"


def test_an_image_change_is_seen_at_once_by_another_process(
    app: Flask, image: Attachment, other_process: Flask
) -> None:
    before = _view(other_process, image)
    assert "Lighthouse" in before and 'name="resolution"' in before
    assert "Lighthouse" in other_process.test_client().get("/").get_data(as_text=True)
    update_image(image, title="Harbour at dusk", alt_text="", for_sale=False, admin="owner")
    after = _view(other_process, image)
    assert "Harbour at dusk" in after and "Lighthouse" not in after
    assert 'name="resolution"' not in after  # no longer for sale: no Buy form
    catalog = other_process.test_client().get("/").get_data(as_text=True)
    assert "Harbour at dusk" in catalog and "Not for sale" in catalog
    post = other_process.test_client().get(f"/posts/{image.post.slug}")
    assert "Harbour at dusk" in post.get_data(as_text=True)


def test_an_image_removed_is_a_404_at_once_in_another_process(
    app: Flask, image: Attachment, other_process: Flask
) -> None:
    _view(other_process, image)
    db.session.delete(image)
    db.session.commit()
    gone = other_process.test_client().get(f"/images/{image.id}", headers={"User-Agent": BROWSER})
    assert gone.status_code == 404
    assert _dashboard_views() == 1  # the view of the page that was not shown is not counted


csrf_app = admin_helpers.csrf_app

GERMAN = {"User-Agent": BROWSER, "Accept-Language": "de-DE,de;q=0.9"}
ENGLISH = {"User-Agent": BROWSER, "Accept-Language": "en-GB,en;q=0.9"}


def test_a_kept_image_page_carries_each_visitors_own_csrf_token(csrf_app: Flask) -> None:
    with csrf_app.app_context():
        attachment = make_attachment(csrf_app, title="Lighthouse")
        db.session.commit()
        path = f"/images/{attachment.id}"
    first, second = csrf_app.test_client(), csrf_app.test_client()
    pages = [c.get(path, headers=ENGLISH) for c in (first, second, first)]
    assert [page.status_code for page in pages] == [200, 200, 200]
    tokens = [admin_helpers.csrf_token(page.get_data(as_text=True)) for page in pages]
    assert tokens[0] != tokens[1]  # the second visitor's page is not the first one's
    assert pages[0].get_data(as_text=True).replace(tokens[0], "") == pages[1].get_data(
        as_text=True
    ).replace(tokens[1], "")
    # Each token is the one of its visitor's session: accepted from them, refused from the other.
    assert second.post("/language/de", data={"csrf_token": tokens[0]}).status_code == 400
    assert second.post("/language/de", data={"csrf_token": tokens[1]}).status_code == 303
    assert first.post("/language/de", data={"csrf_token": tokens[2]}).status_code == 303


def test_a_kept_page_in_german_is_never_sent_to_an_english_buyer(
    app: Flask, client: FlaskClient, image: Attachment
) -> None:
    post = f"/posts/{image.post.slug}"
    for path in (f"/images/{image.id}", "/", post):
        for headers, language in ((GERMAN, "de"), (ENGLISH, "en"), (GERMAN, "de"), ({}, "en")):
            response = client.get(path, headers=headers)
            page = response.get_data(as_text=True)
            assert f'<html lang="{language}">' in page, (path, language)
            assert response.headers["Content-Language"] == language
    chosen = app.test_client()
    chosen.set_cookie("lang", "de")
    page = chosen.get(f"/images/{image.id}", headers=ENGLISH).get_data(as_text=True)
    assert '<html lang="de">' in page


def test_a_flashed_message_and_a_cancelled_checkout_show_on_a_kept_page(
    app: Flask, client: FlaskClient, image: Attachment
) -> None:
    path = f"/images/{image.id}"
    client.get(path, headers=ENGLISH)  # kept
    cancelled = client.get(path + "?cancelled=1", headers=ENGLISH).get_data(as_text=True)
    assert "Checkout cancelled: nothing was charged." in cancelled
    assert "Checkout cancelled" not in client.get(path, headers=ENGLISH).get_data(as_text=True)
    with client.session_transaction() as session:
        session["_flashes"] = [("info", "Your link is on its way.")]
    assert "Your link is on its way." in client.get(path, headers=ENGLISH).get_data(as_text=True)
    assert "Your link is on its way." not in client.get(path).get_data(as_text=True)


def _flask_sees(app: Flask) -> list[str]:
    """The paths of the requests that reach Flask from now on (not the ones sent before it)."""
    seen: list[str] = []
    app.before_request(lambda: seen.append(request.full_path.rstrip("?")))
    return seen


def _without_request_id(headers: Headers) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers.items() if name.lower() != "x-request-id"]


def _requests_counted(endpoint: str) -> float:
    counted = HTTP_REGISTRY.get_sample_value(
        "smi_http_requests_total", {"endpoint": endpoint, "status": "200"}
    )
    return counted or 0.0


def test_a_shared_page_goes_out_again_before_flask_as_flask_sent_it(
    app: Flask, image: Attachment
) -> None:
    seen = _flask_sees(app)
    post = f"/posts/{image.post.slug}"
    counted = _requests_counted("shop.post")
    visitor = app.test_client()

    first, again = visitor.get(post, headers=ENGLISH), visitor.get(post, headers=ENGLISH)
    head = visitor.head(post, headers=ENGLISH)

    assert seen == [post]  # only the first reached Flask
    assert (again.status_code, again.data) == (200, first.data) and b"Lighthouse" in again.data
    assert _without_request_id(again.headers) == _without_request_id(first.headers)
    assert again.headers["X-Request-ID"] != first.headers["X-Request-ID"]
    assert (head.status_code, head.data) == (200, b"")
    assert head.headers["Content-Length"] == first.headers["Content-Length"]
    assert _requests_counted("shop.post") == counted + 3


def test_a_visitors_own_request_reaches_flask(app: Flask, image: Attachment) -> None:
    seen = _flask_sees(app)
    visitor = app.test_client()
    visitor.get("/", headers=ENGLISH)
    visitor.get("/", headers=ENGLISH)  # shared
    visitor.get("/?cancelled=1", headers=ENGLISH)
    visitor.get(f"/images/{image.id}", headers=ENGLISH)  # counts a view: never shared
    visitor.get(f"/images/{image.id}", headers=ENGLISH)
    with visitor.session_transaction() as session:
        session["_flashes"] = [("info", "Your link is on its way.")]
    flashed = visitor.get("/", headers=ENGLISH)

    assert "Your link is on its way." in flashed.get_data(as_text=True)
    assert seen == ["/", "/?cancelled=1", f"/images/{image.id}", f"/images/{image.id}", "/"]
    assert redis_connection(app).llen(funnel.BUFFER_KEY) == 2


def test_each_language_gets_its_own_shared_page(app: Flask, image: Attachment) -> None:
    seen = _flask_sees(app)
    chose_german = app.test_client()
    chose_german.set_cookie("lang", "de")
    for visitor, headers, language in (
        (app.test_client(), GERMAN, "de"),
        (app.test_client(), ENGLISH, "en"),
        (app.test_client(), GERMAN, "de"),
        (app.test_client(), ENGLISH, "en"),
        (chose_german, ENGLISH, "de"),
        (app.test_client(), {}, "en"),
    ):
        response = visitor.get("/", headers=headers)
        assert f'<html lang="{language}">' in response.get_data(as_text=True), (headers, language)
        assert response.headers["Content-Language"] == language
    assert seen == ["/", "/"]  # one German and one English page rendered, then shared


def test_a_shared_page_is_dropped_at_once_when_the_catalog_or_a_setting_changes(
    app: Flask, image: Attachment, other_process: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "CACHE_SECONDS", 3600.0)  # only Redis's versions can tell
    seen = _flask_sees(other_process)
    visitor = other_process.test_client()
    assert "Lighthouse" in visitor.get("/").get_data(as_text=True)
    visitor.get("/")  # shared

    update_image(image, title="Harbour at dusk", alt_text="", for_sale=True, admin="owner")
    after_edit = visitor.get("/").get_data(as_text=True)
    update_settings(app, {"MIN_PRICE": "1234.00"}, admin="owner@shop.test")
    visitor.get("/")

    assert "Harbour at dusk" in after_edit and "Lighthouse" not in after_edit
    assert seen == ["/", "/", "/"]  # the first, and the one after each change


def test_with_redis_down_no_page_is_shared(app_config: dict[str, Any]) -> None:
    down = create_app({**app_config, "REDIS_URL": "redis://127.0.0.1:1/0"})
    seen = _flask_sees(down)
    with down.app_context():
        make_attachment(down, title="Harbour")
        db.session.commit()
        pages = [down.test_client().get("/") for _ in range(2)]
        db.session.remove()
        db.engine.dispose()
    assert [page.status_code for page in pages] == [200, 200]
    assert all(b"Harbour" in page.data for page in pages)
    assert seen == ["/", "/"]
