"""The one accessor of settings in force: the app's configuration, with the values the admin saved
in `app_settings` laid over the editable ones.

Web requests, tasks and commands all read settings here (`get(name)`, or `current()` where a
mapping is wanted). The saved values are cached per app: a save in this process clears the cache
at once and bumps the `settings` version in Redis, which every process reads once per request
(`queues.versions`), so that other processes (more web workers, RQ workers) see it at their next
request, without a database query while nothing changed. Without Redis they look at the table at
most every `CACHE_SECONDS`, and a task checks at its start (`refresh()`). `generation()` numbers
the saved values, for caches of what is computed from them (an image's offers). `app.config`
itself never changes once the factory has returned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from storefront.config import EDITABLE_NAMES, SETTINGS_BY_NAME, ConfigError, parse_setting
from storefront.extensions import db
from storefront.models import AppSetting
from storefront.queues import bump_version, versions

log = logging.getLogger("smi.settings")

CACHE_SECONDS = 2.0


@dataclass
class _Saved:
    """The admin's saved values as last read, and when and from which table state."""

    values: dict[str, Any] = field(default_factory=dict)
    signature: tuple[Any, ...] | None = None
    checked_at: float = float("-inf")
    version: int | None = None
    generation: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    warned: bool = False


class Settings(Mapping[str, Any]):
    """A read-only view: the saved value of an editable setting, else the app's configuration."""

    def __init__(self, config: Mapping[str, Any], saved: Mapping[str, Any]) -> None:
        self._config = config
        self._saved = saved

    def __getitem__(self, name: str) -> Any:
        if name in self._saved:
            return self._saved[name]
        return self._config[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._config)

    def __len__(self) -> int:
        return len(self._config)


def _app(app: Flask | None) -> Flask:
    return app or current_app._get_current_object()  # type: ignore[attr-defined]


def _saved(app: Flask) -> _Saved:
    return app.extensions.setdefault("smi_saved_settings", _Saved())


def current(app: Flask | None = None) -> Settings:
    """Every setting in force now, as a mapping."""
    app = _app(app)
    saved = _saved(app)
    found = versions(app)
    version = None if found is None else found["settings"]
    if _due(saved, version):
        _reload_if_changed(app, saved)
        if version is not None:
            saved.version = version
    return Settings(app.config, saved.values)


def _due(saved: _Saved, version: int | None) -> bool:
    """Whether `current()` looks at the table now: a save this process has not seen (by the
    version in Redis, when it is known), or CACHE_SECONDS since it last looked."""
    unseen = version is not None and version != saved.version
    return unseen or time.monotonic() - saved.checked_at > CACHE_SECONDS


def generation(app: Flask | None = None) -> int:
    """A number that changes whenever the saved values in force change (read `current()` first)."""
    return _saved(_app(app)).generation


def settled_generation(app: Flask, found_versions: Mapping[str, int]) -> int | None:
    """The generation `current()` would answer now without looking at the table, given the
    version counters just read; None when it would look (a save this process has not seen, or
    its CACHE_SECONDS are up)."""
    saved = _saved(app)
    return None if _due(saved, found_versions["settings"]) else saved.generation


def get(name: str, app: Flask | None = None) -> Any:
    """One setting's value in force now."""
    return current(app)[name]


def saved_values(app: Flask | None = None) -> Mapping[str, Any]:
    """The values the admin saved, by name (the settings page shows which are overridden)."""
    app = _app(app)
    current(app)
    return dict(_saved(app).values)


def refresh(app: Flask | None = None) -> bool:
    """Look at the table now (a task's start); True if the saved values changed."""
    app = _app(app)
    return _reload_if_changed(app, _saved(app))


def invalidate(app: Flask | None = None) -> None:
    """Forget the cached values: the next read looks at the table (after a save), here and, with
    the version bumped, in every other process."""
    app = _app(app)
    saved = _saved(app)
    with saved.lock:
        saved.checked_at = float("-inf")
        saved.signature = None
    bump_version(app, "settings")


def _reload_if_changed(app: Flask, saved: _Saved) -> bool:
    """Read the saved values again if the table changed since they were last read.

    On a connection of its own, so that it never touches the caller's transaction.
    """
    try:
        with db.engine.connect() as connection:
            count, latest = connection.execute(
                select(func.count(AppSetting.id), func.max(AppSetting.updated_at))
            ).one()
            signature = (count, str(latest))
            rows = None
            if signature != saved.signature:
                rows = connection.execute(select(AppSetting.name, AppSetting.value)).all()
    except SQLAlchemyError:
        # Not migrated yet: the configuration's values stand.
        if not saved.warned:
            log.warning("app_settings is not readable; using the configuration's settings")
            saved.warned = True
        saved.checked_at = time.monotonic()
        return False
    with saved.lock:
        saved.checked_at = time.monotonic()
        if rows is None:
            return False
        saved.values = _parsed(rows)
        saved.signature = signature
        saved.generation += 1
    return True


def _parsed(rows: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, raw in rows:
        if name not in EDITABLE_NAMES:
            continue
        try:
            values[name] = parse_setting(SETTINGS_BY_NAME[name], raw)
        except (ValueError, ArithmeticError, ConfigError) as exc:
            log.warning("ignoring the saved %s: %s", name, exc)
    return values
