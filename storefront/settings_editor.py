"""The settings page's service: what it shows of each editable setting, and saving overrides.

Saved values live in `app_settings`; `storefront.settings` lays them over the configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask
from sqlalchemy import select

from storefront import settings, transactions
from storefront.accounts.audit import log_action
from storefront.config import SETTINGS_BY_NAME, ConfigError, Setting, parse_setting
from storefront.extensions import db
from storefront.models import AppSetting, utcnow


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
        "PROMOTION_CODES",
        "Promotion codes",
        "bool",
        help="Buyers may enter a Stripe promotion code at checkout.",
    ),
    Editable(
        "STRIPE_AUTOMATIC_TAX",
        "Automatic tax",
        "bool",
        help="Stripe Tax adds the buyer's tax on top of the price (needs Stripe Tax set up).",
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
    Editable(
        "MAIL_SENDER_NAME", "Sender name", "text", help="The name emails come from.", group="Email"
    ),
)
EDITABLE_BY_NAME = {item.name: item for item in EDITABLE}


def spec(name: str) -> Setting:
    """The parser and allowed range of an editable setting."""
    return SETTINGS_BY_NAME[name]


def parse_value(name: str, raw: str) -> Any:
    """Parse and range-check a raw value; ValueError with a sentence a person can act on."""
    setting = spec(name)
    item = EDITABLE_BY_NAME[name]
    try:
        return parse_setting(setting, raw)
    except (ValueError, ArithmeticError) as exc:
        raise ValueError(f"{item.label}: {_expected(item, setting, exc)}") from exc
    except ConfigError as exc:
        raise ValueError(f"{item.label}: {_expected(item, setting)}") from exc


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


def defaults(app: Flask) -> Mapping[str, Any]:
    """The configuration's value of each editable setting (the environment's or built in)."""
    return {item.name: app.config[item.name] for item in EDITABLE}


def current_value(app: Flask, name: str) -> Any:
    """The value in force now."""
    return settings.get(name, app)


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
    env = defaults(app)
    rows = []
    for item in EDITABLE:
        value = current_value(app, item.name)
        setting = spec(item.name)
        raw = (raw_values or {}).get(item.name)
        rows.append(
            SettingRow(
                item,
                value,
                env[item.name],
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
    transactions.commit(lambda: settings.invalidate(app))
    return {}, changed
