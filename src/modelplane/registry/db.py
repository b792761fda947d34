"""Engine creation and migrations. SQLite gets WAL with ``synchronous=FULL``; PostgreSQL works
through ``MODELPLANE_DATABASE_URL``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from modelplane.errors import Unavailable

MIGRATIONS = Path(__file__).parent / "migrations"
POSTGRES_TIMEOUTS = {
    "connect_timeout": 5,  # seconds
    "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # ms a write may stay unacknowledged
}  # fmt: skip
# what the driver raises while the database cannot be reached (down, restarting, network)
DATABASE_DOWN = (OperationalError, InterfaceError)


def database_unavailable() -> Unavailable:
    """The answer to a call that needs the database while it cannot be reached."""
    return Unavailable(
        "the database cannot be reached right now; modelplane reconnects by itself: try again "
        "in a few seconds (inference of deployed models goes on meanwhile)"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # a database host that stops answering (rather than refusing) costs seconds, not the
    # operating system's minutes: libpq's connect timeout, keepalives and TCP user timeout
    return create_engine(url, pool_pre_ping=True, connect_args=dict(POSTGRES_TIMEOUTS))


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
