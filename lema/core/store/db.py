"""Opening a store: SQLite (WAL) as the embedded default, PostgreSQL by URL; schema by Alembic migrations."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x6C656D61  # "lema": the PostgreSQL advisory lock key that serialises migrations


def normalize_url(url: str) -> str:
    """A bare path means an SQLite file; postgresql:// URLs use psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class StoreError(ValueError):
    """A store that cannot be opened; the message says which and why, with no password and no traceback."""


def _check_sqlite_folder(url: str) -> None:
    from sqlalchemy.engine import make_url

    database = make_url(url).database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    folder = Path(database).expanduser().resolve().parent
    if not folder.is_dir():
        raise StoreError(f"store: {url} is the SQLite file {Path(database).expanduser().resolve()}, and its folder "
                         f"does not exist (sqlite:///a/b.db is relative to the working directory, "
                         f"sqlite:////a/b.db absolute; a plain file path works too)")


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        _check_sqlite_folder(url)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            # WAL: readers never block the writer; a killed writer loses only its open transaction.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # A fleet of `lema collect --follow` workers started together would otherwise upgrade one schema at
            # once (two ALTER TABLEs of one column, one fails). The lock lasts until this transaction ends; the
            # next worker then finds the schema at head and does nothing. SQLite serialises writers itself.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_store(url: str) -> sessionmaker[Session]:
    """Open (and migrate) a store; StoreError when it cannot be reached."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    engine = make_engine(url)
    try:
        migrate(engine)
    except OperationalError as exc:
        shown = make_url(normalize_url(url)).render_as_string(hide_password=True)
        raise StoreError(f"store: cannot open {shown}: {str(exc.orig)[:300]}") from None
    return sessionmaker(engine, expire_on_commit=False)
