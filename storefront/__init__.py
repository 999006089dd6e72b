"""Sell My Images: the web app and its factory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy import event
from werkzeug.middleware.proxy_fix import ProxyFix

from storefront import error_tracking
from storefront.config import PROJECT_ROOT, environment, load_settings

__all__ = ["PROJECT_ROOT", "create_app"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings, extensions, blueprints, error handlers, CLI and logging.

    With no `config`, the environment (and `.env`) configures it, as in production, for `flask`
    commands and for workers. With a mapping, only the mapping and the defaults do: a test app
    never reads a developer's `.env`.
    """
    app = Flask(
        __name__,
        instance_path=str(PROJECT_ROOT / "instance"),
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    environ = environment() if config is None else {}
    app.config.update(load_settings(app.instance_path, config, environ))
    _send_shared_pages(app)  # the innermost WSGI layer: the ones below see every request
    _trust_proxies(app)
    _configure_logging(app)
    _install_security(app)  # before the extensions' hooks, which read bodies
    _init_extensions(app)
    _register_blueprints(app)
    _install_metrics(app)
    _register_error_handlers(app)
    _register_cli(app)
    _register_template_filters(app)
    error_tracking.install(app)
    _install_alert_checks(app)
    return app


def _configure_logging(app: Flask) -> None:
    """One line per event on stdout (LOG_FORMAT); logs never show tokens or signatures."""
    from storefront import logs, redaction

    redaction.install()
    logs.install(app)


def _init_extensions(app: Flask) -> None:
    from storefront.catalog import library
    from storefront.extensions import csrf, db, mail, migrate

    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    if app.config["STORAGE_BACKEND"] == "local":
        Path(app.config["STORAGE_DIR"]).mkdir(parents=True, exist_ok=True)
    _set_engine_options(app)
    db.init_app(app)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        with app.app_context():
            event.listen(db.engine, "connect", _sqlite_pragmas)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    library.track_changes()
    mail.init_app(app)
    csrf.init_app(app)
    _init_babel(app)
    _init_limiter(app)


def _init_babel(app: Flask) -> None:
    """`_()` in templates and code; the locale is the buyer's choice or their browser's
    (storefront/i18n.py), picked per request and switched by storefront/web/language.py."""
    from storefront.extensions import babel
    from storefront.web import language

    babel.init_app(
        app,
        locale_selector=language.select_locale,
        default_translation_directories=str(PROJECT_ROOT / "translations"),
    )
    language.install(app)


def _set_engine_options(app: Flask) -> None:
    """SQLite waits for a writer's lock; a server database gets a sized pool that tests each
    connection before use, so one the server or a proxy closed is replaced, not handed out."""
    options = app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {})
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # Web, worker and sweeper write at once: wait for a lock rather than fail at once.
        options.setdefault("connect_args", {}).setdefault("timeout", 30)
    else:
        options.setdefault("pool_pre_ping", True)
        options.setdefault("pool_size", int(app.config["DATABASE_POOL_SIZE"]))
        options.setdefault("max_overflow", int(app.config["DATABASE_MAX_OVERFLOW"]))


def _send_shared_pages(app: Flask) -> None:
    """Pages every visitor gets alike go out before Flask (storefront/web/page_cache.py)."""
    from storefront.web import page_cache

    page_cache.install(app)


def _trust_proxies(app: Flask) -> None:
    """Believe X-Forwarded-For, -Proto and -Host from TRUSTED_PROXY_HOPS proxies, from no one else.

    With 0 hops they are ignored, so a client cannot pass for another address.
    """
    hops = int(app.config["TRUSTED_PROXY_HOPS"])
    if hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops
        )


def _init_limiter(app: Flask) -> None:
    """Rate limits count in the app's Redis, and in memory while it is unreachable."""
    from storefront.extensions import limiter

    url = str(app.config["REDIS_URL"])
    # The limits library spells a Redis unix socket `redis+unix://`.
    app.config.setdefault(
        "RATELIMIT_STORAGE_URI", "redis+" + url if url.startswith("unix://") else url
    )
    # Like the app's own Redis client: a request must not hang on Redis.
    app.config.setdefault(
        "RATELIMIT_STORAGE_OPTIONS",
        {
            "key_prefix": "smi:limits",
            "socket_connect_timeout": 1,
            "socket_timeout": 2,
            "retry": Retry(ExponentialBackoff(cap=0.5), 1),
        },
    )
    limiter.init_app(app)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """Write-ahead logging lets readers go on while one writer commits."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _register_blueprints(app: Flask) -> None:
    from storefront.web.admin import bp as admin_bp
    from storefront.web.checkout import bp as checkout_bp
    from storefront.web.downloads import bp as downloads_bp
    from storefront.web.health import bp as health_bp
    from storefront.web.media import bp as media_bp
    from storefront.web.my_orders import bp as my_orders_bp
    from storefront.web.orders import bp as orders_bp
    from storefront.web.seo import bp as seo_bp
    from storefront.web.shop import bp as shop_bp
    from storefront.web.webhooks import bp as webhooks_bp

    app.register_blueprint(admin_bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(shop_bp)
    app.register_blueprint(checkout_bp)
    app.register_blueprint(orders_bp)
    app.register_blueprint(webhooks_bp)
    app.register_blueprint(downloads_bp)
    app.register_blueprint(media_bp)
    app.register_blueprint(seo_bp)
    app.register_blueprint(my_orders_bp)


def _install_metrics(app: Flask) -> None:
    """`GET /metrics` and the HTTP figures (imported here: gunicorn's master sets
    PROMETHEUS_MULTIPROC_DIR before prometheus_client may be imported)."""
    from storefront.web import metrics

    metrics.install(app)


def _register_error_handlers(app: Flask) -> None:
    from storefront.web.errors import register_error_handlers

    register_error_handlers(app)


def _install_security(app: Flask) -> None:
    """Security headers on every response; request body limits per endpoint."""
    from storefront.web import security

    security.install(app)


def _register_cli(app: Flask) -> None:
    from storefront.cli import smi

    app.cli.add_command(smi)


def _register_template_filters(app: Flask) -> None:
    from storefront import queues, settings
    from storefront.formatting import format_bytes, format_moment, format_money, format_number

    app.add_template_filter(format_money, "money")
    app.add_template_filter(format_bytes, "filesize")
    app.add_template_filter(format_moment, "moment")
    app.add_template_filter(format_number, "number")
    # Templates read settings in force (with the admin's saved values) as `settings`.
    app.context_processor(lambda: {"settings": settings.current()})
    # The caches of settings and of the catalog ask Redis for their versions once per request.
    app.before_request(queues.pin_versions)
    app.teardown_request(queues.unpin_versions)


def _install_alert_checks(app: Flask) -> None:
    """Now and then after a response: are the workers still there (storefront/web/alerting.py)."""
    from storefront.web import alerting

    alerting.install(app)
