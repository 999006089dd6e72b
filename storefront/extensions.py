"""Extension instances, initialised in the app factory."""

import flask_limiter
from flask import Flask
from flask_babel import Babel
from flask_limiter.util import get_remote_address
from flask_mail import Mail
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Named constraints, so migrations are the same on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base whose metadata names every constraint."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
mail = Mail()
csrf = CSRFProtect()
# Translations of buyer pages and mails (storefront/i18n.py picks the locale).
babel = Babel()


class Limiter(flask_limiter.Limiter):
    """Flask-Limiter's limiter. Its storage is the last initialised app's (one app per process;
    tests build one after another), and each app starts with its storage taken as reachable."""

    def init_app(self, app: Flask) -> None:
        """Count in `app`'s storage (RATELIMIT_STORAGE_URI), forgetting an earlier app's outage."""
        self._storage_dead = False
        super().init_app(app)

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        """Flask-Limiter's check. Its before_request hook (`in_middleware`) only applies the
        application, default, meta and fallback limits (a route's own limits are checked by its
        decorator): with none set, as here, it has nothing to check, and a page without limits
        skips the work of finding that out (about 3 % of an image page)."""
        if in_middleware and not self._middleware_limits():
            return
        super()._check_request_limit(callable_name, in_middleware)

    def _middleware_limits(self) -> bool:
        manager = self.limit_manager
        return bool(
            manager.application_limits
            or manager.default_limits
            or self._meta_limits
            or self._in_memory_fallback
        )


# Limits count per client address (`request.remote_addr`, which ProxyFix corrects behind trusted
# proxies). While the storage is unreachable they count in this process's memory, never not at all.
limiter = Limiter(key_func=get_remote_address, in_memory_fallback_enabled=True)
