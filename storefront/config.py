"""Every setting declared once: its type, range and default; loaded when the app is built.

The values of `load_settings` are fixed once the factory returns. The business settings the admin
may change (`editable`) are read through `storefront.settings`, which lays the saved values over
these.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from limits import parse_many

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names it."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _decimal(raw: str) -> Decimal:
    try:
        return Decimal(raw.strip())
    except InvalidOperation as exc:
        raise ValueError(f"expected a number, got {raw!r}") from exc


def _resolutions(raw: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in raw.split(",") if part.strip())
    unknown = [value for value in values if value not in ("4x", "8x")]
    if unknown or not values:
        raise ValueError(f"expected a comma-separated subset of 4x,8x, got {raw!r}")
    return values


def _hosts(raw: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in raw.split(",") if part.strip())


def _sender_name(raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 100 or any(ch in value for ch in '<>"\r\n'):
        raise ValueError('a name of 1 to 100 characters, without < > " or line breaks')
    return value


def _rate_limits(raw: str) -> str:
    value = raw.strip()
    try:
        parse_many(value)
    except ValueError as exc:
        raise ValueError(f"expected limits such as 10/minute;30/hour, got {raw!r}") from exc
    return value


def _time_of_day(raw: str) -> str:
    value = raw.strip().lower()
    if value == "off":
        return value
    hours, _, minutes = value.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
        raise ValueError(f"expected HH:MM (UTC) or off, got {raw!r}")
    return f"{int(hours):02d}:{int(minutes):02d}"


def database_uri(url: str) -> str:
    """The SQLAlchemy URL of a DATABASE_URL: `postgresql://` and `postgres://` (as hosts give it)
    name psycopg 3, the driver of the `postgres` extra; SQLAlchemy 2.0 would look for psycopg2."""
    scheme, separator, rest = url.partition("://")
    if separator and scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    return url


@dataclass(frozen=True)
class Setting:
    """One environment setting: its name, how to parse it, its default and its allowed range."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    minimum: Any = None
    maximum: Any = None
    help: str = ""
    editable: bool = False  # the admin may override it (storefront.settings, the settings page)


SETTINGS: tuple[Setting, ...] = (
    Setting("SECRET_KEY", str, None, help="Flask session signing; required outside development"),
    Setting("DATABASE_URL", str, None, help="SQLAlchemy URL; default sqlite:///<instance>/smi.db"),
    Setting("DATABASE_POOL_SIZE", int, 5, 1, 100, help="connections kept open per process"),
    Setting("DATABASE_MAX_OVERFLOW", int, 10, 0, 100, help="extra connections under load"),
    Setting("REDIS_URL", str, "redis://127.0.0.1:6379/0", help="Redis for RQ"),
    Setting("PUBLIC_BASE_URL", str, "http://127.0.0.1:5000", help="absolute base for links"),
    Setting("STORAGE_BACKEND", str.lower, "local", help="local (STORAGE_DIR) or s3 (a bucket)"),
    Setting("STORAGE_DIR", str, None, help="root of stored files with the local backend"),
    Setting("S3_BUCKET", str, None, help="the bucket of the s3 backend"),
    Setting("S3_PREFIX", str, "", help="keys under this prefix in the bucket"),
    Setting("S3_ENDPOINT_URL", str, "", help="an S3-compatible endpoint; empty: AWS"),
    Setting("AWS_ACCESS_KEY_ID", str, None, help="empty: boto3's own credential chain"),
    Setting("AWS_SECRET_ACCESS_KEY", str, None, help="the secret of that key"),
    Setting("AWS_DEFAULT_REGION", str, None, help="the bucket's region"),
    Setting("WORK_DIR", str, None, help="this process's temporary files; the system's temp dir"),
    Setting("DOWNLOAD_URL_SECONDS", int, 300, 10, 7 * 24 * 3600, help="presigned URLs live"),
    Setting("STRIPE_SECRET_KEY", str, None, help="Stripe secret API key"),
    Setting("STRIPE_WEBHOOK_SECRET", str, None, help="Stripe webhook signing secret"),
    Setting("STRIPE_API_BASE", str, None, help="base URL of a Stripe-compatible server"),
    Setting("CURRENCY", str.lower, "usd", help="ISO currency of prices"),
    Setting("UPSCALER", str, "local", help="upscaling engine: local, neural or upsampler"),
    Setting("NEURAL_MAX_MINUTES", int, 10, 1, 240, help="longest estimated neural upscale"),
    Setting("NEURAL_OVER_LIMIT", str, "local", help="local or unavailable, past that estimate"),
    Setting("NEURAL_THREADS", int, 0, 0, 256, help="ncnn threads; 0 means one per core"),
    Setting("UPSAMPLER_API_KEY", str, None, help="Upsampler.com API key"),
    Setting("UPSAMPLER_API_BASE", str, "https://upsampler.com/api/v1", help="Upsampler base"),
    Setting("UPSAMPLER_RESULT_HOSTS", _hosts, (), help="hosts results may be fetched from"),
    Setting("UPSAMPLER_TIMEOUT_MINUTES", int, 15, 1, 240, help="give up on a provider job"),
    Setting("UPSAMPLER_POLL_SECONDS", int, 30, 1, 600, help="first wait before asking again"),
    Setting("UPSAMPLER_MAX_RESULT_MB", int, 500, 1, 5000, help="largest result accepted"),
    Setting("UPSAMPLER_INPUT_TYPE", str, "realism", help="realism, anime or universal"),
    Setting("UPSAMPLER_CREATIVITY", int, 0, 0, 10, help="globalCreativity sent to Upsampler"),
    Setting("UPSAMPLER_DETAIL", int, 0, 0, 10, help="detail sent to Upsampler"),
    Setting("MARKUP_PERCENT", _decimal, Decimal("200"), Decimal(0), Decimal(1200), editable=True),
    Setting(
        "COST_PER_CREDIT", _decimal, Decimal("0.04"), Decimal("0.001"), Decimal(100), editable=True
    ),
    Setting(
        "CREDITS_PER_MEGAPIXEL",
        _decimal,
        Decimal("0.25"),
        Decimal("0.001"),
        Decimal(100),
        editable=True,
    ),
    Setting("MIN_PRICE", _decimal, Decimal("0.50"), Decimal("0.50"), Decimal(10000), editable=True),
    Setting("MAX_OUTPUT_MEGAPIXELS", int, 400, 1, 2000, editable=True),
    Setting("RESOLUTIONS", _resolutions, ("4x", "8x"), help="resolutions offered", editable=True),
    Setting("DOWNLOAD_EXPIRY_HOURS", int, 24, 1, 168, editable=True),
    Setting("DOWNLOAD_MAX_COUNT", int, 10, 1, 1000, editable=True),
    Setting("CHECKOUT_EXPIRY_MINUTES", int, 60, 30, 1440),
    Setting("PROCESSING_TIMEOUT_MINUTES", int, 30, 1, 720, help="longest one upscale may run"),
    Setting("PROCESSING_MAX_ATTEMPTS", int, 3, 1, 10, help="upscale attempts before a refund"),
    Setting("SWEEP_INTERVAL_SECONDS", int, 300, 5, 86400, help="how often the sweeper runs"),
    Setting("DOWNLOAD_ACCEL_PREFIX", str, "", help="hand files to nginx under this prefix"),
    Setting("DISPLAY_TIMEZONE", str, "UTC", help="time zone of times shown to buyers"),
    Setting("RESEND_PER_HOUR", int, 5, 1, 1000, help="fresh-link requests per address per hour"),
    Setting(
        "CHECKOUT_RATE_LIMIT",
        _rate_limits,
        "10/minute;30/hour",
        help="Buy presses allowed per client address (Flask-Limiter syntax)",
    ),
    Setting("TRUSTED_PROXY_HOPS", int, 0, 0, 5, help="proxies whose X-Forwarded-* are believed"),
    Setting("MAIL_SERVER", str, "127.0.0.1"),
    Setting("MAIL_PORT", int, 8025, 1, 65535),
    Setting("MAIL_USE_TLS", _bool, False),
    Setting("MAIL_USE_SSL", _bool, False),
    Setting("MAIL_USERNAME", str, None),
    Setting("MAIL_PASSWORD", str, None),
    Setting("MAIL_DEFAULT_SENDER", str, "Sell My Images <shop@localhost>"),
    Setting("ADMIN_EMAIL", str, None, help="first admin account and alert address"),
    Setting("ADMIN_PASSWORD", str, None, help="first admin account's password"),
    Setting("SMI_ENV", str, "development", help="development or production"),
    Setting(
        "MAIL_SENDER_NAME", _sender_name, None, help="the name emails come from", editable=True
    ),
    Setting("CLEANUP_GRACE_HOURS", int, 48, 0, 8760, help="keep expired files", editable=True),
    Setting("ARCHIVE_AFTER_DAYS", int, 365, 0, 3650, help="archive job records", editable=True),
    Setting("ARCHIVE_ABANDONED", _bool, False, help="archive abandoned checkouts", editable=True),
    Setting("ARCHIVE_DIR", str, None, help="where scheduled archives go; instance/archives"),
    Setting("MAINTENANCE_AT", _time_of_day, "03:30", help="daily maintenance (UTC) or off"),
    Setting("ADMIN_SESSION_HOURS", int, 12, 1, 720, help="longest admin session"),
    Setting("ADMIN_UPLOAD_MAX_BYTES", int, 25_000_000, 1000, 30_000_000, help="largest upload"),
    Setting("ADMIN_LOGIN_SLOW_AFTER", int, 3, 1, 100, help="failures before sign-in slows"),
    Setting("ADMIN_LOGIN_DELAY_SECONDS", int, 2, 0, 3600, help="first wait once slowed"),
    Setting("ADMIN_LOGIN_MAX_DELAY_SECONDS", int, 60, 0, 3600, help="longest wait"),
    Setting("ADMIN_LOGIN_LOCK_AFTER", int, 8, 1, 1000, help="failures before a lock"),
    Setting("ADMIN_LOGIN_LOCK_MINUTES", int, 15, 1, 10080, help="length of a lock"),
    # Operable in production (A): Prometheus metrics
    Setting("METRICS_TOKEN", str, None, help="bearer token for GET /metrics; unset: 404"),
    # Operable in production (C): error tracking with Sentry (storefront.error_tracking)
    Setting("SENTRY_DSN", str, None, help="send errors to Sentry; unset: nothing is sent"),
    Setting("SENTRY_ENVIRONMENT", str, None, help="environment of events; default SMI_ENV"),
    Setting("SENTRY_RELEASE", str, None, help="release of events; default the app's version"),
    # Operable in production (B): structured logs
    Setting("LOG_FORMAT", str.lower, "text", help="text, or json: one JSON object per line"),
    # Operable in production (D): the system page's alerts to ADMIN_EMAIL
    Setting("ALERT_QUEUE_MINUTES", int, 30, 1, 1440, help="alert: a paid job waits this long"),
    Setting("ALERT_WORKER_MINUTES", int, 10, 1, 1440, help="alert: no worker heartbeat this long"),
    # For buyers (issue 14, part 3): discounts and tax through Stripe Checkout
    Setting(
        "PROMOTION_CODES",
        _bool,
        False,
        help="buyers may enter Stripe promotion codes",
        editable=True,
    ),
    Setting(
        "STRIPE_AUTOMATIC_TAX", _bool, False, help="Stripe Tax on top of prices", editable=True
    ),
    # For buyers (issue 14, part 2): "My orders" sign-in links
    Setting("MY_ORDERS_PER_HOUR", int, 5, 1, 1000, help="sign-in links per email per hour"),
)
SETTINGS_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
EDITABLE_NAMES: frozenset[str] = frozenset(s.name for s in SETTINGS if s.editable)

SECRET_SETTINGS = ("SECRET_KEY", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET")


def parse_setting(setting: Setting, raw: Any) -> Any:
    """A raw value (text from the environment or a form) parsed and range-checked.

    ValueError when it does not parse; ConfigError, naming the setting, when out of range.
    """
    value = setting.parse(raw) if isinstance(raw, str) else raw
    if isinstance(value, Decimal) and not value.is_finite():
        raise ConfigError(f"{setting.name} must be a finite number, got {value}")
    if setting.minimum is not None and value < setting.minimum:
        raise ConfigError(f"{setting.name} must be at least {setting.minimum}, got {value}")
    if setting.maximum is not None and value > setting.maximum:
        raise ConfigError(f"{setting.name} must be at most {setting.maximum}, got {value}")
    return value


def environment() -> dict[str, str]:
    """The process's settings as the environment gives them: `.env` at the top, then the
    environment itself, which wins."""
    dotenv = {k: v for k, v in dotenv_values(PROJECT_ROOT / ".env").items() if v is not None}
    return {**dotenv, **os.environ}


def load_settings(
    instance_path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return the app's settings: defaults, then `environ`, then `overrides`."""
    environ = environment() if environ is None else environ
    overrides = dict(overrides or {})
    instance = Path(instance_path)
    settings: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in overrides:
            raw = overrides.pop(setting.name)
        elif environ.get(setting.name, "") != "":
            raw = environ[setting.name]
        else:
            settings[setting.name] = setting.default
            continue
        try:
            settings[setting.name] = None if raw is None else parse_setting(setting, raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.name}: {exc}") from exc

    if settings["UPSCALER"] not in ("local", "neural", "upsampler"):
        raise ConfigError(f"UPSCALER must be local, neural or upsampler: {settings['UPSCALER']}")
    if settings["STORAGE_BACKEND"] not in ("local", "s3"):
        raise ConfigError(f"STORAGE_BACKEND must be local or s3: {settings['STORAGE_BACKEND']}")
    if settings["STORAGE_BACKEND"] == "s3" and not settings["S3_BUCKET"]:
        raise ConfigError("STORAGE_BACKEND=s3 needs S3_BUCKET")
    if settings["NEURAL_OVER_LIMIT"] not in ("local", "unavailable"):
        raise ConfigError("NEURAL_OVER_LIMIT must be local or unavailable")
    development = settings["SMI_ENV"] == "development"
    if not development:
        missing = [name for name in SECRET_SETTINGS if not settings.get(name)]
        if missing:
            raise ConfigError(f"required outside development: {', '.join(missing)}")
    if not settings["SECRET_KEY"]:
        settings["SECRET_KEY"] = secrets.token_hex(32)
    if settings["DATABASE_URL"] is None:
        settings["DATABASE_URL"] = f"sqlite:///{instance / 'smi.db'}"
    if settings["STORAGE_DIR"] is None:
        settings["STORAGE_DIR"] = str(instance / "storage")
    if settings["ARCHIVE_DIR"] is None:
        settings["ARCHIVE_DIR"] = str(instance / "archives")
    if settings["MAIL_SENDER_NAME"] is None:
        settings["MAIL_SENDER_NAME"] = (
            parseaddr(settings["MAIL_DEFAULT_SENDER"])[0] or "Sell My Images"
        )
    if not settings["UPSAMPLER_RESULT_HOSTS"]:
        settings["UPSAMPLER_RESULT_HOSTS"] = ("upsampler.com",)
    settings["PUBLIC_BASE_URL"] = settings["PUBLIC_BASE_URL"].rstrip("/")

    settings["SQLALCHEMY_DATABASE_URI"] = database_uri(settings["DATABASE_URL"])
    settings["SESSION_COOKIE_HTTPONLY"] = True
    settings["SESSION_COOKIE_SAMESITE"] = "Lax"
    settings["SESSION_COOKIE_SECURE"] = not development
    settings["MAX_CONTENT_LENGTH"] = 32 * 1024 * 1024
    settings.update(overrides)
    return settings
