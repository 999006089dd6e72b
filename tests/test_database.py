"""The database connection: a server database gets a sized pool that tests connections first."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool, QueuePool

from storefront import create_app
from storefront.config import ConfigError, load_settings
from storefront.extensions import db
from tests.conftest import POSTGRES_URL

# Never connected to: the engine is built, and its pool read, without a server.
UNREACHABLE_POSTGRES = "postgresql://smi@/nowhere?host=/nonexistent"


def _pool_of(tmp_path: Path, **settings: object) -> QueuePool:
    app = create_app({"TESTING": True, "STORAGE_DIR": str(tmp_path / "storage"), **settings})
    with app.app_context():
        pool = db.engine.pool
        db.engine.dispose()
    assert isinstance(pool, QueuePool)
    return pool


def test_a_server_database_pool_has_the_configured_size_and_pings_first(tmp_path: Path) -> None:
    pool = _pool_of(
        tmp_path,
        DATABASE_URL=UNREACHABLE_POSTGRES,
        DATABASE_POOL_SIZE="7",
        DATABASE_MAX_OVERFLOW="3",
    )
    assert (pool.size(), pool._max_overflow, pool._pre_ping) == (7, 3, True)


def test_the_pool_defaults_are_five_and_ten_more_under_load(tmp_path: Path) -> None:
    pool = _pool_of(tmp_path, DATABASE_URL=UNREACHABLE_POSTGRES)
    assert (pool.size(), pool._max_overflow, pool._pre_ping) == (5, 10, True)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://shop:pw@db.internal/shop", "postgresql+psycopg://shop:pw@db.internal/shop"),
        ("postgres://shop:pw@db.internal/shop", "postgresql+psycopg://shop:pw@db.internal/shop"),
        ("postgresql+psycopg://shop@/shop?host=/run", "postgresql+psycopg://shop@/shop?host=/run"),
        ("sqlite:////srv/smi.db", "sqlite:////srv/smi.db"),
    ],
)
def test_a_postgres_url_is_driven_by_psycopg_3(tmp_path: Path, given: str, used: str) -> None:
    settings = load_settings(tmp_path, environ={"DATABASE_URL": given})
    assert (settings["DATABASE_URL"], settings["SQLALCHEMY_DATABASE_URI"]) == (given, used)
    app = create_app({"TESTING": True, "DATABASE_URL": given, "STORAGE_DIR": str(tmp_path)})
    with app.app_context():
        assert db.engine.driver == ("psycopg" if "postgres" in given else "pysqlite")
        db.engine.dispose()


def test_pool_settings_out_of_range_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DATABASE_POOL_SIZE"):
        _pool_of(tmp_path, DATABASE_URL=UNREACHABLE_POSTGRES, DATABASE_POOL_SIZE="0")
    with pytest.raises(ConfigError, match="DATABASE_MAX_OVERFLOW"):
        _pool_of(tmp_path, DATABASE_URL=UNREACHABLE_POSTGRES, DATABASE_MAX_OVERFLOW="-1")


def test_sqlite_keeps_its_lock_timeout_and_no_server_pool_options(tmp_path: Path) -> None:
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'smi.db'}",
            "STORAGE_DIR": str(tmp_path / "storage"),
        }
    )
    assert app.config["SQLALCHEMY_ENGINE_OPTIONS"] == {"connect_args": {"timeout": 30}}


@pytest.mark.postgres
@pytest.mark.skipif(
    not POSTGRES_URL, reason="about PostgreSQL connections; needs SMI_TEST_DATABASE_URL"
)
def test_a_connection_the_server_closed_is_replaced_not_handed_out(app: Flask) -> None:
    first = db.session.scalar(text("SELECT pg_backend_pid()"))
    db.session.commit()  # the connection goes back to the pool, open
    killer = create_engine(POSTGRES_URL, poolclass=NullPool)
    with killer.connect() as connection:
        assert connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    killer.dispose()

    # Without the ping, the pool would hand out the dead connection and this would raise.
    second = db.session.scalar(text("SELECT pg_backend_pid()"))
    assert second is not None and second != first
