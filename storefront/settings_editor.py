"""Business settings edited in the admin area: stored in `app_settings`, overriding the environment.

`apply_setting_overrides(app)` copies the stored values into `app.config`. It is cheap enough to run
before every request and every task: one small aggregate query tells whether anything changed since
the values were last copied, and only then are they read again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import formataddr, parseaddr
from typing import Any

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from storefront import transactions
from storefront.accounts.audit import log_action
from storefront.config import SETTINGS, ConfigError, Setting, _bool, _parse
from storefront.extensions import db
from storefront.models import AppSetting, utcnow

log = logging.getLogger("smi.settings")

SENDER_NAME = "MAIL_SENDER_NAME"


def _sender_name(raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 100 or any(ch in value for ch in '<>"\r\n'):
        raise ValueError('a name of 1 to 100 characters, without < > " or line breaks')
    return value


# Settings the admin area adds to storefront.config's, read from the environment (or `.env`) the
# first time the stored settings are applied, unless the app was built with them.
EXTRA_SETTINGS: tuple[Setting, ...] = (
    Setting("CLEANUP_GRACE_HOURS", int, 48, 0, 8760, help="keep expired files this long"),
    Setting("ARCHIVE_AFTER_DAYS", int, 365, 0, 3650, help="archive job records this old"),
    Setting("ARCHIVE_ABANDONED", _bool, False, help="archive abandoned checkouts too"),
    Setting(SENDER_NAME, _sender_name, None, help="the name emails come from"),
    Setting("ARCHIVE_DIR", str, None, help="where scheduled archives go; instance/archives"),
    Setting("MAINTENANCE_AT", str, "03:30", help="time of the daily maintenance (UTC) or off"),
    Setting("ADMIN_SESSION_HOURS", int, 12, 1, 720, help="longest admin session"),
    Setting("ADMIN_UPLOAD_MAX_BYTES", int, 25_000_000, 1000, 30_000_000, help="largest upload"),
    Setting("ADMIN_LOGIN_SLOW_AFTER", int, 3, 1, 100, help="failures before sign-in slows"),
    Setting("ADMIN_LOGIN_DELAY_SECONDS", int, 2, 0, 3600, help="first wait once slowed"),
    Setting("ADMIN_LOGIN_MAX_DELAY_SECONDS", int, 60, 0, 3600, help="longest wait"),
    Setting("ADMIN_LOGIN_LOCK_AFTER", int, 8, 1, 1000, help="failures before a lock"),
    Setting("ADMIN_LOGIN_LOCK_MINUTES", int, 15, 1, 10080, help="length of a lock"),
)


@dataclass(frozen=True)
class Editable:
    """A setting as the settings page shows it: label, input kind, unit and a sentence of help."""

    name: str
    label: str
    kind: str  # decimal, int, resolutions, bool or text
    unit: str = ""
    help: str = ""
    step: str = "1"
    group: str = "Prices"


EDITABLE: tuple[Editable, ...] = (
    Editable(
        "MARKUP_PERCENT",
        "Markup",
        "decimal",
        unit="%",
        help="Added to the provider's cost.",
        step="any",
    ),
    Editable("COST_PER_CREDIT", "Cost per credit", "decimal", help="One credit.", step="any"),
    Editable(
        "CREDITS_PER_MEGAPIXEL",
        "Credits per megapixel",
        "decimal",
        help="Of the output.",
        step="any",
    ),
    Editable("MIN_PRICE", "Minimum price", "decimal", help="No price is lower.", step="0.01"),
    Editable("RESOLUTIONS", "Resolutions offered", "resolutions", help="At least one."),
    Editable(
        "MAX_OUTPUT_MEGAPIXELS",
        "Largest output",
        "int",
        unit="MP",
        help="Larger tiers are shown as unavailable.",
    ),
    Editable(
        "DOWNLOAD_EXPIRY_HOURS",
        "Link life",
        "int",
        unit="hours",
        help="How long a download link works.",
        group="Links",
    ),
    Editable(
        "DOWNLOAD_MAX_COUNT",
        "Downloads per link",
        "int",
        help="Before the link stops working.",
        group="Links",
    ),
    Editable(
        "CLEANUP_GRACE_HOURS",
        "Keep expired files for",
        "int",
        unit="hours",
        help="After a link expires, its file is removed once this has passed.",
        group="Retention",
    ),
    Editable(
        "ARCHIVE_AFTER_DAYS",
        "Archive job records after",
        "int",
        unit="days",
        help="The daily maintenance exports and removes finished jobs this old; 0 turns it off.",
        group="Retention",
    ),
    Editable(
        "ARCHIVE_ABANDONED",
        "Archive abandoned checkouts",
        "bool",
        help="Off keeps them for the funnel's figures.",
        group="Retention",
    ),
    Editable(SENDER_NAME, "Sender name", "text", help="The name emails come from.", group="Email"),
)
EDITABLE_BY_NAME = {item.name: item for item in EDITABLE}
_SPECS: dict[str, Setting] = {s.name: s for s in (*SETTINGS, *EXTRA_SETTINGS)}


def spec(name: str) -> Setting:
    """The parser and allowed range of an editable setting."""
    return _SPECS[name]


def parse_value(name: str, raw: str) -> Any:
    """Parse and range-check a raw value; ValueError with a sentence a person can act on."""
    setting = spec(name)
    item = EDITABLE_BY_NAME[name]
    try:
        value = setting.parse(raw)
    except (ValueError, ArithmeticError) as exc:
        raise ValueError(f"{item.label}: {_expected(item, setting, exc)}") from exc
    low, high = setting.minimum, setting.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{item.label}: {_expected(item, setting)}")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"{item.label}: {_expected(item, setting)}")
    return value


def _expected(item: Editable, setting: Setting, exc: Exception | None = None) -> str:
    if setting.minimum is not None and setting.maximum is not None:
        unit = f" {item.unit}" if item.unit else ""
        return f"enter a number from {setting.minimum} to {setting.maximum}{unit}"
    return str(exc) if exc else "not a valid value"


def serialise(value: Any) -> str:
    """The text stored for a parsed value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def _environment_default(app: Flask, setting: Setting) -> Any:
    if setting.name == SENDER_NAME:
        sender = str(app.config.get("MAIL_DEFAULT_SENDER") or "")
        return parseaddr(sender)[0] or "Sell My Images"
    if setting.name in app.config:
        return app.config[setting.name]
    raw = os.environ.get(setting.name, "")
    if raw:
        try:
            return parse_value(setting.name, raw)
        except ValueError:
            log.warning("ignoring malformed %s in the environment", setting.name)
    return setting.default


@dataclass
class _Cache:
    """What the app's config holds from the table, and the environment values it replaced."""

    defaults: dict[str, Any]
    signature: tuple[Any, ...] | None = None
    overridden: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    warned: bool = False


def _load_extra_settings(app: Flask) -> None:
    for setting in EXTRA_SETTINGS:
        if setting.name == SENDER_NAME or setting.name in app.config:
            continue
        value = setting.default
        raw = os.environ.get(setting.name, "")
        if raw:
            try:
                value = _parse(setting, raw)
            except (ValueError, ConfigError):
                log.warning("ignoring malformed %s in the environment", setting.name)
        app.config[setting.name] = value


def _cache(app: Flask) -> _Cache:
    cache = app.extensions.get("smi_settings")
    if cache is None:
        _load_extra_settings(app)
        defaults = {item.name: _environment_default(app, spec(item.name)) for item in EDITABLE}
        cache = app.extensions.setdefault("smi_settings", _Cache(defaults))
    return cache


def defaults(app: Flask) -> Mapping[str, Any]:
    """The environment's (or built-in) value of each editable setting."""
    return _cache(app).defaults


def _put(app: Flask, name: str, value: Any) -> None:
    if name == SENDER_NAME:
        address = parseaddr(str(app.config.get("MAIL_DEFAULT_SENDER") or ""))[1] or "shop@localhost"
        sender = formataddr((str(value), address))
        app.config["MAIL_DEFAULT_SENDER"] = sender
        state = app.extensions.get("mail")
        if state is not None:
            state.default_sender = sender
        return
    app.config[name] = value


def apply_setting_overrides(app: Flask, *, force: bool = False) -> bool:
    """Copy the stored settings into `app.config` if the table changed; True if it did.

    Needs an app context. Settings removed from the table get their environment value back.
    """
    cache = _cache(app)
    try:
        count, latest = db.session.execute(
            select(func.count(AppSetting.id), func.max(AppSetting.updated_at))
        ).one()
    except SQLAlchemyError:
        # Not migrated yet: the environment's values stand.
        transactions.rollback()
        if not cache.warned:
            log.warning("app_settings is not readable; using the environment's settings")
            cache.warned = True
        return False
    signature = (count, str(latest))
    if signature == cache.signature and not force:
        return False
    rows = db.session.execute(select(AppSetting.name, AppSetting.value)).all()
    values: dict[str, Any] = {}
    for name, raw in rows:
        if name not in EDITABLE_BY_NAME:
            continue
        try:
            values[name] = parse_value(name, raw)
        except ValueError as exc:
            log.warning("ignoring the stored %s: %s", name, exc)
    with cache.lock:
        for name in cache.overridden - values.keys():
            _put(app, name, cache.defaults[name])
        for name, value in values.items():
            _put(app, name, value)
        cache.overridden = set(values)
        cache.signature = signature
    return True


def current_value(app: Flask, name: str) -> Any:
    """The value in force now."""
    if name == SENDER_NAME:
        return parseaddr(str(app.config.get("MAIL_DEFAULT_SENDER") or ""))[0] or defaults(app)[name]
    return app.config.get(name, defaults(app)[name])


@dataclass
class SettingRow:
    """One line of the settings page."""

    item: Editable
    value: Any
    default: Any
    stored: AppSetting | None
    raw: str
    minimum: Any
    maximum: Any

    @property
    def overridden(self) -> bool:
        """Whether the value comes from the admin area rather than the environment."""
        return self.stored is not None


def setting_rows(app: Flask, raw_values: Mapping[str, str] | None = None) -> list[SettingRow]:
    """Every editable setting with its value in force, default and who changed it last."""
    stored = {row.name: row for row in db.session.scalars(select(AppSetting))}
    rows = []
    for item in EDITABLE:
        value = current_value(app, item.name)
        setting = spec(item.name)
        raw = (raw_values or {}).get(item.name)
        rows.append(
            SettingRow(
                item,
                value,
                defaults(app)[item.name],
                stored.get(item.name),
                serialise(value) if raw is None else raw,
                setting.minimum,
                setting.maximum,
            )
        )
    return rows


def parse_form(form: Mapping[str, Any], getlist: Callable[[str], list[str]]) -> dict[str, str]:
    """The raw text of each editable setting from a submitted settings form."""
    raw: dict[str, str] = {}
    for item in EDITABLE:
        if item.kind == "resolutions":
            raw[item.name] = ",".join(getlist(item.name))
        elif item.kind == "bool":
            raw[item.name] = "true" if form.get(item.name) else "false"
        else:
            raw[item.name] = str(form.get(item.name, "")).strip()
    return raw


def update_settings(
    app: Flask, raw: Mapping[str, str], admin: str, reset: set[str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Validate every value, then store the ones that changed; (errors by name, changed names).

    Nothing is stored when any value is invalid. A value equal to the environment's, or one in
    `reset`, removes the override. Each change is in the audit log. Commits.
    """
    reset = reset or set()
    errors: dict[str, str] = {}
    parsed: dict[str, Any] = {}
    for item in EDITABLE:
        if item.name in reset or item.name not in raw:
            continue
        try:
            parsed[item.name] = parse_value(item.name, raw[item.name])
        except ValueError as exc:
            errors[item.name] = str(exc)
    if errors:
        return errors, []
    stored = {row.name: row for row in db.session.scalars(select(AppSetting))}
    env = defaults(app)
    changed: list[str] = []
    now = utcnow()
    for item in EDITABLE:
        name = item.name
        before = current_value(app, name)
        row = stored.get(name)
        if name in reset or (name in parsed and parsed[name] == env[name]):
            if row is not None:
                db.session.delete(row)
                changed.append(name)
                log_action(admin, "setting_reset", name, f"{serialise(before)} → default")
            continue
        if name not in parsed or (row is not None and parse_value(name, row.value) == parsed[name]):
            continue
        text = serialise(parsed[name])
        if row is None:
            db.session.add(AppSetting(name=name, value=text, updated_at=now, updated_by=admin))
        else:
            row.value, row.updated_at, row.updated_by = text, now, admin
        changed.append(name)
        log_action(admin, "setting_changed", name, f"{serialise(before)} → {text}")
    transactions.commit()
    apply_setting_overrides(app, force=True)
    return {}, changed
